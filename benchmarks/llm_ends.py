"""Issue 13 on the LLM: W-COS-DPO's front ends against the unit models (DPO Soup's ingredients: the Soup at e_j
is the model trained for objective j alone), with and without vertex mixing, on the embedded preference set
(the tiny default run of train_llm.py, every method with its defaults and the same --max-steps), over seeds.
wcos_steps3x is the one row with another budget: W-COS-DPO with 3x the steps of every other trained model.

Run from the repository root (finished runs are reused; one run is about 5 min on one CPU thread):
    python benchmarks/llm_ends.py --seeds 0,1,2 --out runs/llm_ends --threads 1
    python benchmarks/llm_ends.py --seeds 0 --methods wcos,wcos_vertex,soup,ls   # DPO-LS: 11 models, ~20-45 min
    python benchmarks/llm_ends.py --seeds 0,1,2 --methods wcos,wcos_steps3x,soup   # W-COS-DPO trained 3x longer
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np  # noqa: E402

import train_llm  # noqa: E402

METHODS = {"wcos": ("W-COS-DPO (paper)", ["--method", "wcos"]),
           "wcos_vertex": ("W-COS-DPO + vertex 0.25", ["--method", "wcos", "--vertex-prob", "0.25"]),
           "wcos_steps3x": ("W-COS-DPO, 3x the steps", ["--method", "wcos", "--max-steps", "1500"]),
           "soup": ("DPO Soup", ["--method", "soup"]), "ls": ("DPO-LS", ["--method", "ls"])}


def run(out, seed, method, threads):
    folder = os.path.join(out, f"seed{seed}", method)
    if not os.path.exists(os.path.join(folder, "results.json")):
        argv = METHODS[method][1] + ["--seed", str(seed), "--out", folder, "--quiet"]
        if train_llm.main(argv + (["--threads", str(threads)] if threads else [])) != 0:
            raise SystemExit(f"training failed for {folder}")
    with open(os.path.join(folder, "results.json")) as f:
        return json.load(f)


def ends(res):
    """Test error of objective j at w = e_j, j = 1, 2 (lower is better)."""
    w, err = np.array(res["weights"]), np.array(res["aux_error"])
    return [err[np.flatnonzero(np.isclose(w[:, j], 1))[0], j] for j in range(w.shape[1])]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--methods", default="wcos,wcos_vertex,soup")
    p.add_argument("--out", default="runs/llm_ends")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    methods, seeds = args.methods.split(","), [int(s) for s in args.seeds.split(",")]
    if "soup" not in methods or set(methods) - set(METHODS):
        raise SystemExit(f"--methods: a subset of {','.join(METHODS)} that includes soup (the unit models)")
    res = {(s, m): run(args.out, s, m, args.threads) for s in seeds for m in methods}
    print(f"\n| method | seeds | HV (ref 1.1, 1.1) | end error e_1, e_2 | end gap to the unit models (e_1, e_2; "
          f"+ = worse) | train time (s) |\n|---|---|---|---|---|---|")
    def sd(x):
        return f" +/- {np.std(x):.3f}" if len(seeds) > 1 else ""
    for m in methods:
        hv = [res[s, m]["hypervolume"] for s in seeds]
        e = np.array([ends(res[s, m]) for s in seeds])
        gap = e - np.array([ends(res[s, "soup"]) for s in seeds])
        print(f"| {METHODS[m][0]} | {len(seeds)} | {np.mean(hv):.4f}{sd(hv)} | {e[:, 0].mean():.3f}, "
              f"{e[:, 1].mean():.3f} | {gap[:, 0].mean():+.3f}{sd(gap[:, 0])}, {gap[:, 1].mean():+.3f}{sd(gap[:, 1])}"
              f" | {np.mean([res[s, m]['train_seconds'] for s in seeds]):.0f} |")


if __name__ == "__main__":
    main()
