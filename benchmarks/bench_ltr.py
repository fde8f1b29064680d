"""Benchmark the ranking training of train_ltr.py at MSLR-WEB10K's size.

    python benchmarks/bench_ltr.py steps [--threads 2] [--film] [--vertex-prob 0.25]
    python benchmarks/bench_ltr.py scale [--data-dir data/mslr_scale] [-- TRAIN_LTR_ARGS]

`steps` builds an in-memory training split the size of MSLR-WEB10K Fold1/train (about 723,000 documents in
6,000 lists, log-normal lengths 1..1,251 like MSLR's; random features and labels: the speed does not depend on
their values) and measures on the paper's conditioned model (2 layers, width 64, w joined to the input):
  1. one W-COS-DPO epoch as train_ltr.py runs it (batching with the 256 cap, s0 looked up or, for a cut list,
     recomputed by the base ranker, w ~ Dir(alpha), forward, Eq. 11, backward, Adam), in documents per second;
  2. a W-COS-DPO step against a single-objective DPO step on the same batch (App. A.5: no extra cost);
  3. for scale, a bare nn.TransformerEncoder training step on full, unpadded lists of 128 items;
  4. a validation pass (a 240,000-document split at one w, NDCG@10 of every objective) with PyTorch's inference
     fast path on and the batches rebuilt per call, against train_ltr.py's way (fast path off, EvalSplit once);
  5. torch.autocast(bfloat16) against float32 on the step of 2. and the pass of 4.

`scale` runs the m = 5 protocol end to end as a user does: it writes an MSLR-WEB10K-sized dataset with the data
generator (10,000 queries, 1.2 million documents, ~100 s and 1.5 GB on disk; reused when it exists; its parse
caches are removed so that the parse is timed, unless --keep-cache), runs `python train_ltr.py --dataset mslr
--objectives I,II,III,IV,V` in a fresh folder and prints the wall time of each stage from its train.log, the
peak resident memory, the hypervolume and main NDCG@10.
"""

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
import timeit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import numpy as np  # noqa: E402
import torch  # noqa: E402

import data as data_lib  # noqa: E402
import pareto  # noqa: E402
import train_ltr  # noqa: E402
from losses import lipo_loss  # noqa: E402
from models import Ranker, RankerConfig  # noqa: E402

MSLR_SIZE = dict(
    train_queries=6000, vali_queries=2000, test_queries=2000, median_list_len=84, max_list_len=1251
)


def median_seconds(fn, repeats):
    """Median seconds of one call, after a warm-up call (first calls at each shape are slower)."""
    fn()
    return statistics.median(timeit.repeat(fn, number=1, repeat=repeats))


def alternating_medians(fns: dict, repeats: int) -> dict:
    """{name: median seconds of one call}, the calls alternating, so that machine noise hits every fn alike."""
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(median_seconds(fn, 1))
    return {name: statistics.median(t) for name, t in times.items()}


def mslr_sized_split(num_lists: int, num_docs: int, m: int, seed: int = 0) -> data_lib.RankingSplit:
    """Random data with MSLR-like list lengths: log-normal (sigma 0.9), clipped to 1..1251, total ~num_docs."""
    rng = np.random.default_rng(seed)
    raw = rng.lognormal(0.0, 0.9, num_lists)
    lengths = np.clip(np.round(raw / raw.mean() * num_docs / num_lists), 1, 1251).astype(np.int64)
    n = int(lengths.sum())
    aux_raw = rng.poisson(0.5, (n, m)).astype(np.float32)
    return data_lib.RankingSplit(
        features=rng.standard_normal((n, data_lib.NUM_INPUTS), dtype=np.float32),
        relevance=rng.integers(0, 5, n).astype(np.float32),
        aux=np.log1p(aux_raw),
        aux_raw=aux_raw,
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        qids=np.arange(num_lists),
    )


class WcosTrainer:
    """The W-COS-DPO model, its optimiser and w draws, and a frozen base ranker, trained as train_ltr.py does."""

    def __init__(self, args, m: int, num_docs: int):
        objectives = ",".join(["I", "II", "III", "IV", "V"][:m])
        argv = [
            "--dataset",
            "mslr",
            "--data-dir",
            ".",
            "--objectives",
            objectives,
            "--max-docs",
            str(args.max_docs),
        ]
        argv += ["--quiet", "--vertex-prob", args.vertex_prob] + ["--film"] * args.film
        self.args = train_ltr.resolve_args(train_ltr.build_parser().parse_args(argv))
        self.args.label_norms = ["l1"] * m
        self.job = train_ltr.Job("wcos", RankerConfig(num_objectives=m, film=args.film), steps=1)
        self.model = Ranker(self.job.config)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.rng = np.random.default_rng(0)
        base = Ranker(RankerConfig(hidden=128)).eval()  # the paper's base ranker: 2 layers, width 128
        self.frozen = train_ltr.Frozen(base, {"train": torch.randn(num_docs)})  # s0 on whole lists

    def step(self, batch, ref):
        loss, _ = train_ltr.step_loss(self.args, self.model, batch, ref, self.job, self.rng)
        train_ltr.optimizer_step(self.model, self.opt, loss)


def epoch_benchmark(trainer: WcosTrainer, split, seed: int) -> str:
    """1. One W-COS-DPO epoch; the share of it spent on s0 of the cut lists."""
    t0 = time.perf_counter()
    batches = data_lib.make_batches(split, trainer.args.max_docs, shuffle=True, max_list_len=256, seed=seed)
    t_batches = time.perf_counter() - t0
    docs, t_ref = 0, 0.0
    for batch in batches:
        t1 = time.perf_counter()
        ref, _ = train_ltr.frozen_scores(trainer.frozen, batch)
        t_ref += time.perf_counter() - t1
        trainer.step(batch, ref)
        docs += batch.num_docs
    seconds = time.perf_counter() - t0
    return (
        f"1. W-COS-DPO epoch: {seconds:.1f} s ({t_batches:.2f} s batching, {t_ref:.1f} s s0 of the cut "
        f"lists), {len(batches)} steps, {docs} real documents seen (lists above 256 subsampled) -> "
        f"{docs / seconds:,.0f} documents/s"
    )


def step_cost(trainer: WcosTrainer, batch, repeats: int) -> str:
    """2. A W-COS-DPO step against a single-objective DPO step on the same batch, timed alternately."""
    ref = trainer.frozen.ref["train"][batch.index]
    single = Ranker(RankerConfig(num_objectives=0))
    opt = torch.optim.Adam(single.parameters(), lr=1e-3)

    def dpo_step():
        loss = lipo_loss(single(batch.features, batch.mask), ref, batch.aux[..., 0], 1.0, batch.mask).mean()
        train_ltr.optimizer_step(single, opt, loss)

    times = alternating_medians({"wcos": lambda: trainer.step(batch, ref), "dpo": dpo_step}, repeats)
    wcos, dpo = times["wcos"], times["dpo"]
    return (
        f"2. one batch of {batch.num_docs} documents ({tuple(batch.mask.shape)}): W-COS-DPO step "
        f"{1e3 * wcos:.1f} ms, single-objective DPO step {1e3 * dpo:.1f} ms -> ratio {wcos / dpo:.3f}"
    )


def bare_encoder(m: int, max_docs: int, repeats: int) -> str:
    """3. For scale: nn.TransformerEncoder alone, full lists of 128 items, no padding."""
    layer = torch.nn.TransformerEncoderLayer(64, 4, 128, 0.0, batch_first=True, norm_first=True)
    encoder = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    net = torch.nn.Sequential(torch.nn.Linear(data_lib.NUM_INPUTS + m, 64), encoder, torch.nn.Linear(64, 1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.randn(max_docs // 128, 128, data_lib.NUM_INPUTS + m)
    seconds = median_seconds(lambda: train_ltr.optimizer_step(net, opt, net(x).square().mean()), repeats)
    return (
        f"3. bare nn.TransformerEncoder step, {x.shape[0]} full lists of 128: {1e3 * seconds:.1f} ms -> "
        f"{x.shape[0] * 128 / seconds:,.0f} documents/s"
    )


def validation_pass(model: Ranker, m: int, max_docs: int) -> str:
    """4. Validation NDCG@10 at one w: fast path on and batches rebuilt per call, against train_ltr.py's way."""
    vali = mslr_sized_split(2000, 240_000, m, seed=1)
    ref, w = torch.randn(vali.num_docs), torch.full((m,), 1.0 / m)
    model.eval()

    def validate(ev):
        return ev.ndcg(ev.scores(lambda b: model(b.features, b.mask, w=w, ref_scores=ref[b.index])))

    t0 = time.perf_counter()
    ev = pareto.EvalSplit(vali, max_docs)
    ev.targets  # noqa: B018 - the gains and ideal DCGs, built on first use
    t_build = time.perf_counter() - t0
    torch.backends.mha.set_fastpath_enabled(True)
    rebuilt = median_seconds(lambda: validate(pareto.EvalSplit(vali, max_docs)), 3)
    torch.backends.mha.set_fastpath_enabled(False)
    once = median_seconds(lambda: validate(ev), 3)
    return (
        f"4. validation pass at one w over {vali.num_docs} documents: fast path on, rebuilt per call "
        f"{rebuilt:.2f} s; fast path off, EvalSplit built once ({t_build:.2f} s) {once:.2f} s -> "
        f"{rebuilt / once:.1f}x"
    )


def bf16_step(trainer: WcosTrainer, batch, repeats: int) -> str:
    """5. The step of 2. with the network's forward pass under bfloat16 autocast (the losses stay float32)."""
    ref = trainer.frozen.ref["train"][batch.index]
    forward = trainer.model.forward

    def forward_bf16(*a, **kw):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return forward(*a, **kw).float()

    def step_with(forward_fn):
        trainer.model.forward = forward_fn
        trainer.step(batch, ref)

    trainer.model.train()
    times = alternating_medians(
        {"fp32": lambda: step_with(forward), "bf16": lambda: step_with(forward_bf16)}, repeats
    )
    trainer.model.forward = forward
    fp32, bf16 = times["fp32"], times["bf16"]
    return f"5. bf16 autocast: training step {1e3 * fp32:.1f} ms fp32 vs {1e3 * bf16:.1f} ms bf16 ({fp32 / bf16:.2f}x)"


def steps(args) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    m = args.objectives
    split = mslr_sized_split(args.lists, args.docs, m)
    lengths = split.list_lengths
    print(
        f"MSLR-sized split: {split.num_queries} lists, {split.num_docs} documents, lengths min "
        f"{lengths.min()} mean {lengths.mean():.0f} max {lengths.max()}; {torch.get_num_threads()} threads; "
        f"max_docs {args.max_docs}"
    )
    trainer = WcosTrainer(args, m, split.num_docs)
    epoch_benchmark(trainer, split, seed=0)  # warm-up
    print(epoch_benchmark(trainer, split, seed=1))
    batches = data_lib.make_batches(split, args.max_docs, max_list_len=256)
    batch = max(batches, key=lambda b: b.num_docs)
    print(step_cost(trainer, batch, args.repeats))
    print(bare_encoder(m, args.max_docs, args.repeats))
    print(validation_pass(trainer.model, m, args.max_docs))
    print(bf16_step(trainer, batch, args.repeats))


# ---- scale: the m = 5 protocol at MSLR-WEB10K's size, end to end ---------------------------------------------
def stage_seconds(log: str) -> dict:
    """Seconds per stage from a train_ltr.py train.log (the numbers its lines report)."""

    def total(pattern):
        return sum(float(x) for x in re.findall(pattern, log, re.M))

    return {
        "parse": total(r"^data: .* \| ([0-9.]+) s$"),
        "base ranker": total(r"^\[base\] saved .*, ([0-9.]+) s$"),
        "reference scores": total(r"^\[base\] reference scores .* \(([0-9.]+) s\)$"),
        "fine-tuning (training)": total(r"^\[\w+\] epoch +\d+ \| mean loss [0-9.]+ \| +([0-9.]+) s"),
        "fine-tuning (validation)": total(r"^\[\w+\] epoch .* \(([0-9.]+) s\)$"),
        "evaluation (11 weights)": total(r"^\[eval\] .*: ([0-9.]+) s$"),
    }


def prepare_scale_data(data_dir: str, keep_cache: bool) -> None:
    files = [os.path.join(data_dir, "Fold1", f"{name}.txt") for name in data_lib.SPLITS]
    if all(map(os.path.exists, files)):
        print(f"reusing {data_dir}")
    else:
        t0 = time.perf_counter()
        data_lib.write_synthetic(data_dir, seed=0, **MSLR_SIZE)
        print(f"wrote {data_dir} in {time.perf_counter() - t0:.0f} s")
    print(f"data: {sum(map(os.path.getsize, files)) / 1e9:.2f} GB of text")
    for path in files if not keep_cache else []:
        if os.path.exists(path + ".npz"):
            os.remove(path + ".npz")


def scale(args) -> None:
    prepare_scale_data(args.data_dir, args.keep_cache)
    shutil.rmtree(args.out, ignore_errors=True)
    command = [
        sys.executable,
        "train_ltr.py",
        "--dataset",
        "mslr",
        "--data-dir",
        args.data_dir,
        "--objectives",
        "I,II,III,IV,V",
        "--out",
        args.out,
        "--quiet",
    ] + args.train_args
    print("$ " + " ".join(command) + f"\nload average before: {os.getloadavg()[0]:.2f}", flush=True)
    t0 = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2  # KiB on Linux
    with open(os.path.join(args.out, "train.log")) as f:
        log = f.read()
    with open(os.path.join(args.out, "results.json")) as f:
        res = json.load(f)
    stages = stage_seconds(log)
    stages["other (start-up, checkpoints, batching)"] = wall - sum(stages.values())
    print(f"load average after: {os.getloadavg()[0]:.2f} (1 min), {os.getloadavg()[1]:.2f} (5 min)")
    print(f"\n{'stage':42s} {'seconds':>8s}")
    for name, seconds in stages.items():
        print(f"{name:42s} {seconds:8.1f}")
    print(f"{'total wall':42s} {wall:8.1f}  ({wall // 60:.0f} min {wall % 60:.0f} s)")
    best = re.search(r"saved .*: epoch (\d+)", log).group(1)
    ran = len(re.findall(r"^\[base\] epoch ", log, re.M))
    print(
        f"peak resident memory {peak_gb:.2f} GB | hypervolume {res['hypervolume']:.4e} | main NDCG@10 "
        f"{res['main_ndcg_mean']:.4f} +/- {res['main_ndcg_std']:.4f} | base: best epoch {best} of {ran} | "
        f"fine-tuning steps {[job['steps'] for job in res['jobs']]}"
    )


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("steps", help="the training step, epoch and validation pass at MSLR size")
    s.add_argument("--lists", type=int, default=6000)
    s.add_argument("--docs", type=int, default=723_000)
    s.add_argument("--objectives", type=int, default=2)
    s.add_argument("--max-docs", type=int, default=train_ltr.PRESETS["mslr"]["max_docs"])
    s.add_argument("--threads", type=int, default=torch.get_num_threads())
    s.add_argument("--repeats", type=int, default=15)
    s.add_argument("--film", action="store_true", help="the W-COS model with train_ltr.py --film")
    s.add_argument("--vertex-prob", default="0", help="train_ltr.py --vertex-prob for the W-COS draws")
    s = sub.add_parser("scale", help="the m = 5 protocol end to end on an MSLR-sized dataset")
    s.add_argument("--data-dir", default=os.path.join(ROOT, "data", "mslr_scale"), help="dataset folder")
    s.add_argument(
        "--out", default=os.path.join(ROOT, "runs", "mslr_scale"), help="run folder, emptied first"
    )
    s.add_argument(
        "--keep-cache", action="store_true", help="keep the parse caches (time a second run's parse)"
    )
    s.add_argument("train_args", nargs="*", help="more train_ltr.py arguments, after --")
    args = p.parse_args()
    if args.command == "steps":
        steps(args)
    else:
        scale(args)


if __name__ == "__main__":
    main()
