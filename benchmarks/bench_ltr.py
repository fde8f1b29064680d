"""Benchmark the ranking training loop at MSLR-WEB10K scale (issue 4 speed targets).

Run from the repository root:  python benchmarks/bench_ltr.py [--lists 6000] [--docs 723000] [--threads 2]

It builds an in-memory training split the size of MSLR-WEB10K Fold1/train (about 723,000 documents in
6,000 lists, log-normal list lengths 1..1251 like MSLR's very uneven ones; random features and labels:
the speed does not depend on their values) and measures, on the paper's conditioned model (2 layers,
width 64, w concatenated to the input):
  1. one full W-COS-DPO epoch exactly as train_ltr.py runs it (batching with the 256 cap, gathering
     the precomputed reference scores, w ~ Dir(alpha), forward, Eq. 11 losses, backward, Adam step),
     in real documents per second (padding not counted);
  2. the cost of a W-COS-DPO step against a single-objective DPO step on the same model and batch
     (paper App. A.5 says there is no extra cost; target <= 1.1x); --film / --vertex-prob: the issue 13 variant;
  3. for scale, a bare nn.TransformerEncoder training step on full, unpadded lists of 128 items;
  4. one validation pass (scores of a 2,000-list, ~240,000-document split at one w, NDCG@10 of every objective)
     as train_ltr.py ran it before issue 11 (PyTorch's inference fast path on, batches and gains rebuilt per
     call) and as it runs now (fast path off, pareto.EvalSplit built once);
  5. torch.autocast(bfloat16) against float32: the W-COS training step of 2. and the validation pass of 4.
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np  # noqa: E402
import torch  # noqa: E402

import data as data_lib  # noqa: E402
import pareto  # noqa: E402
import train_ltr  # noqa: E402
from losses import lipo_loss  # noqa: E402
from models import Ranker, RankerConfig  # noqa: E402


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


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lists", type=int, default=6000)
    p.add_argument("--docs", type=int, default=723_000)
    p.add_argument("--objectives", type=int, default=2)
    p.add_argument("--max-docs", type=int, default=train_ltr.PRESETS["mslr"]["max_docs"])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--film", action="store_true", help="the W-COS model with train_ltr.py --film (issue 13)")
    p.add_argument("--vertex-prob", default="0", help="train_ltr.py --vertex-prob for the W-COS draws")
    args = p.parse_args()
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

    # 1. one W-COS-DPO epoch, the loop of train_ltr.fine_tune
    ns = train_ltr.resolve_args(
        train_ltr.build_parser().parse_args(
            [
                "--dataset",
                "mslr",
                "--data-dir",
                ".",
                "--objectives",
                ",".join(["I", "II", "III", "IV", "V"][:m]),
                "--max-docs",
                str(args.max_docs),
                "--quiet",
                "--vertex-prob",
                args.vertex_prob,
            ]
            + ["--film"] * args.film
        )
    )
    ns.label_norms = ["l1"] * m
    job = train_ltr.Job("wcos", RankerConfig(num_objectives=m, film=args.film), steps=1)
    model = Ranker(job.config)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)  # the w draws, as train_ltr.seeded
    base = Ranker(RankerConfig(hidden=128)).eval()  # the paper's base ranker: 2 layers, width 128
    # s0 on whole lists, computed once
    frozen = train_ltr.Frozen(base, {"train": torch.randn(split.num_docs)})

    def epoch(seed):
        t0 = time.perf_counter()
        batches = data_lib.make_batches(
            split, args.max_docs, shuffle=True, max_list_len=ns.max_list_len, seed=seed
        )
        t_batches = time.perf_counter() - t0
        docs, t_ref = 0, 0.0
        for batch in batches:
            t1 = time.perf_counter()
            ref, _ = train_ltr.frozen_scores(frozen, batch)  # s0 of the lists cut to 256 scored as cut
            t_ref += time.perf_counter() - t1
            loss, _ = train_ltr.step_loss(ns, model, batch, ref, job, rng)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            docs += batch.num_docs
        return time.perf_counter() - t0, t_batches, t_ref, docs, len(batches)

    epoch(0)  # warm-up: first calls at each shape are slower
    seconds, t_batches, t_ref, docs, steps = epoch(1)
    print(
        f"1. W-COS-DPO epoch: {seconds:.1f} s ({t_batches:.2f} s batching, {t_ref:.1f} s s0 of the cut "
        f"lists), {steps} steps, {docs} real documents seen (lists above 256 subsampled) -> "
        f"{docs / seconds:,.0f} documents/s; all {split.num_docs} documents at this rate: "
        f"{split.num_docs / (docs / seconds):.1f} s"
    )

    # 2. W-COS-DPO step vs single-objective DPO step, same model size and batch
    batch = max(
        data_lib.make_batches(split, args.max_docs, max_list_len=ns.max_list_len), key=lambda b: b.num_docs
    )
    single = Ranker(RankerConfig(num_objectives=0))
    opt1 = torch.optim.Adam(single.parameters(), lr=1e-3)
    ref_b = frozen.ref["train"][batch.index]

    def wcos_step():
        loss, _ = train_ltr.step_loss(ns, model, batch, ref_b, job, rng)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def dpo_step():
        loss = lipo_loss(single(batch.features, batch.mask), ref_b, batch.aux[..., 0], 1.0, batch.mask).mean()
        opt1.zero_grad(set_to_none=True)
        loss.backward()
        opt1.step()

    times = {"wcos": [], "dpo": []}
    for _ in range(2):
        wcos_step(), dpo_step()
    for _ in range(args.repeats):  # interleaved, so that machine noise hits both alike
        for name, fn in (("wcos", wcos_step), ("dpo", dpo_step)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    wc, dp = statistics.median(times["wcos"]), statistics.median(times["dpo"])
    print(
        f"2. one batch of {batch.num_docs} documents ({tuple(batch.mask.shape)}): W-COS-DPO step "
        f"{1e3 * wc:.1f} ms, single-objective DPO step {1e3 * dp:.1f} ms -> ratio {wc / dp:.3f}"
    )

    # 3. for scale: a bare nn.TransformerEncoder step on full lists of 128 items
    layer = torch.nn.TransformerEncoderLayer(64, 4, 128, 0.0, batch_first=True, norm_first=True)
    enc = torch.nn.Sequential(
        torch.nn.Linear(data_lib.NUM_INPUTS + m, 64),
        torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False),
        torch.nn.Linear(64, 1),
    )
    opt3 = torch.optim.Adam(enc.parameters(), lr=1e-3)
    x = torch.randn(args.max_docs // 128, 128, data_lib.NUM_INPUTS + m)
    t = []
    for i in range(args.repeats + 2):
        t0 = time.perf_counter()
        loss = enc(x).square().mean()
        opt3.zero_grad(set_to_none=True)
        loss.backward()
        opt3.step()
        t.append(time.perf_counter() - t0)
    bare = statistics.median(t[2:])
    print(
        f"3. bare nn.TransformerEncoder step, {x.shape[0]} full lists of 128: {1e3 * bare:.1f} ms -> "
        f"{x.shape[0] * 128 / bare:,.0f} documents/s"
    )

    # 4. a validation pass before and after issue 11 (same scores; the model is in eval mode as in train_ltr)
    vali = mslr_sized_split(2000, 240_000, m, seed=1)
    ref_vali, w = torch.randn(vali.num_docs), torch.full((m,), 1.0 / m)
    model.eval()

    def validate(ev, bf16=False):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return ev.ndcg(ev.scores(lambda b: model(b.features, b.mask, w=w, ref_scores=ref_vali[b.index])))

    def timed(fn, repeats=3):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    t0 = time.perf_counter()
    ev = pareto.EvalSplit(vali, args.max_docs)
    ev.targets  # the gains and ideal DCGs, built on first use
    t_build = time.perf_counter() - t0
    torch.backends.mha.set_fastpath_enabled(True)
    before = timed(lambda: validate(pareto.EvalSplit(vali, args.max_docs)))
    torch.backends.mha.set_fastpath_enabled(False)
    after = timed(lambda: validate(ev))
    print(
        f"4. validation pass at one w over {vali.num_docs} documents: before {before:.2f} s (fast path on, "
        f"rebuilt per call), now {after:.2f} s (fast path off, EvalSplit built once in {t_build:.2f} s) -> "
        f"{before / after:.1f}x"
    )

    # 5. bfloat16 autocast of the network's forward pass (the losses stay float32) against float32, interleaved
    model.train()
    forward = model.forward

    def forward_bf16(*a, **kw):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return forward(*a, **kw).float()

    times = {False: [], True: []}
    for i in range(args.repeats + 2):
        for bf16 in (False, True):
            model.forward = forward_bf16 if bf16 else forward
            t0 = time.perf_counter()
            wcos_step()
            times[bf16].append(time.perf_counter() - t0)
    model.forward = forward
    fp, bf = statistics.median(times[False][2:]), statistics.median(times[True][2:])
    model.eval()
    fp_val, bf_val = timed(lambda: validate(ev)), timed(lambda: validate(ev, bf16=True))
    (fp_aux, fp_main), (bf_aux, bf_main) = validate(ev), validate(ev, bf16=True)
    gap = np.abs(np.array(fp_aux + [fp_main]) - np.array(bf_aux + [bf_main])).max()
    print(
        f"5. bf16 autocast: training step {1e3 * fp:.1f} ms fp32 vs {1e3 * bf:.1f} ms bf16 ({fp / bf:.2f}x); "
        f"validation pass {fp_val:.2f} s fp32 vs {bf_val:.2f} s bf16 ({fp_val / bf_val:.2f}x), NDCG@10 of "
        f"the same model differs by up to {gap:.4f} (bf16 scores tie more often)"
    )


if __name__ == "__main__":
    main()
