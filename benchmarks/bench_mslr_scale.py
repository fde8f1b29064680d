"""The m = 5 ranking protocol at MSLR-WEB10K's real size, end to end, as a user runs it (issue 11).

Run from the repository root:  python benchmarks/bench_mslr_scale.py [--data-dir data/mslr_scale] [-- TRAIN_LTR_ARGS]

1. Writes an MSLR-WEB10K-sized dataset in the MSLR text format with the data generator (10,000 queries, about
   1.2 million documents, lists of 1 to 1,251, 136 float-valued columns; ~100 s and 1.5 GB on disk), or reuses
   the one in --data-dir. Its parse caches (*.txt.npz) are removed first, so the parse is timed (--keep-cache:
   keep them, as a second run of the user would).
2. Runs `python train_ltr.py --dataset mslr --data-dir DIR --objectives I,II,III,IV,V --out OUT` in a fresh
   OUT (the base ranker is trained too) and prints the wall time of each stage, read from OUT/train.log
   (parse, base ranker, reference scores, fine-tuning and its validation lines, the final 11-weight evaluation),
   the hypervolume and main NDCG@10 of results.json, and the peak resident memory of the run
   (getrusage(RUSAGE_CHILDREN).ru_maxrss). The load average is printed too: other processes slow every stage.
"""

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import data as data_lib  # noqa: E402

MSLR_SIZE = dict(
    train_queries=6000, vali_queries=2000, test_queries=2000, median_list_len=84, max_list_len=1251
)


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


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--data-dir", default=os.path.join(ROOT, "data", "mslr_scale"), help="dataset folder (gitignored)"
    )
    p.add_argument(
        "--out", default=os.path.join(ROOT, "runs", "mslr_scale"), help="run folder, emptied first"
    )
    p.add_argument(
        "--keep-cache", action="store_true", help="keep the parse caches (time a second run's parse)"
    )
    p.add_argument("train_args", nargs="*", help="more train_ltr.py arguments, after --")
    args = p.parse_args()
    files = [os.path.join(args.data_dir, "Fold1", f"{name}.txt") for name in ("train", "vali", "test")]
    if all(map(os.path.exists, files)):
        print(f"reusing {args.data_dir}")
    else:
        t0 = time.perf_counter()
        data_lib.write_synthetic(args.data_dir, seed=0, **MSLR_SIZE)
        print(f"wrote {args.data_dir} in {time.perf_counter() - t0:.0f} s")
    print(f"data: {sum(map(os.path.getsize, files)) / 1e9:.2f} GB of text")
    for path in files if not args.keep_cache else []:
        if os.path.exists(path + ".npz"):
            os.remove(path + ".npz")
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
    stages = stage_seconds(log)
    best, ran = (
        re.search(r"saved .*: epoch (\d+)", log).group(1),
        len(re.findall(r"^\[base\] epoch ", log, re.M)),
    )
    with open(os.path.join(args.out, "results.json")) as f:
        res = json.load(f)
    stages["other (start-up, checkpoints, batching)"] = wall - sum(stages.values())
    print(f"load average after: {os.getloadavg()[0]:.2f} (1 min), {os.getloadavg()[1]:.2f} (5 min)")
    print(f"\n{'stage':42s} {'seconds':>8s}")
    for name, seconds in stages.items():
        print(f"{name:42s} {seconds:8.1f}")
    print(f"{'total wall':42s} {wall:8.1f}  ({wall // 60:.0f} min {wall % 60:.0f} s)")
    print(
        f"peak resident memory {peak_gb:.2f} GB | hypervolume {res['hypervolume']:.4e} | main NDCG@10 "
        f"{res['main_ndcg_mean']:.4f} +/- {res['main_ndcg_std']:.4f} | base: best epoch {best} of {ran} | "
        f"fine-tuning steps {[job['steps'] for job in res['jobs']]}"
    )


if __name__ == "__main__":
    main()
