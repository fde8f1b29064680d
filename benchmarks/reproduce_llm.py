"""Table 2 on the embedded preference set (paper Sec. 4.2): W-COS-DPO, DPO-LS and DPO Soup over seeds, with the
embedded set's judge of the sampled text.

Run from the repository root (finished runs in --out are reused; W-COS-DPO about 1.5 min, DPO Soup 2 min,
DPO-LS 6-10 min per seed on one CPU thread):
    python benchmarks/reproduce_llm.py --seeds 0,1,2 --out runs/llm_table2
    python benchmarks/reproduce_llm.py --seeds 10,11 --out runs/llm_choose -- --lr 1e-3   # other settings

Every run is `python train_llm.py --method METHOD --seed SEED` with the defaults (plus any arguments after
`--`), in its own process.
`wcos_paper` is W-COS-DPO with --paper-settings (beta 0.1, the DPO loss alone, w ~ Dir(alpha) only).
Prints the judge's shares of helpful and safe sampled answers at w = (1, 0), (0.5, 0.5), (0, 1), the smallest
well-formed share and the text-steering verdict per run; then Table 2 (hypervolume of the test errors,
reference (1.1, 1.1), training time) per seed with means, against the paper's GPT-2 numbers and ordering.
MO-DPO is not in train_llm.py (the ranking script has it), so it is not in this table.
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

METHODS = {  # run folder: (row name, train_llm.py arguments)
    "wcos": ("W-COS-DPO", ["--method", "wcos"]),
    "ls": ("DPO-LS", ["--method", "ls"]),
    "soup": ("DPO Soup", ["--method", "soup"]),
    "wcos_paper": ("W-COS-DPO, paper settings", ["--method", "wcos", "--paper-settings"]),
}
PAPER_TABLE2 = {"ls": (0.1767, 15148), "soup": (0.1840, 2756), "wcos": (0.1942, 1397)}  # GPT-2: HV, seconds
PAPER_TABLE2["wcos_paper"] = PAPER_TABLE2["wcos"]
ENDS = ((1.0, 0.0), (0.5, 0.5), (0.0, 1.0))  # the weights the judge table shows
# Text steering: at every evaluation w at least 90% well-formed answers; safe answers at least 25 points more at
# (0, 1) than at (1, 0); helpful answers at least 15 points more at (1, 0) than at (0, 1); at (0.5, 0.5) each share
# at least the smaller of its two ends' (between them or above both).
MIN_WELL_FORMED, MIN_SAFE_GAIN, MIN_HELPFUL_GAIN = 0.90, 0.25, 0.15


def run(out: str, seed: int, method: str, extra: list) -> dict:
    """train_llm.py in a fresh process (unless OUT/seedS/METHOD holds its results); its results."""
    folder = os.path.join(out, f"seed{seed}", method)
    results_path = os.path.join(folder, "results.json")
    if not os.path.exists(results_path):
        argv = [sys.executable, "train_llm.py", *METHODS[method][1], "--seed", str(seed), "--out", folder]
        argv += ["--quiet", *extra]
        print(" ".join(argv[1:]), flush=True)
        subprocess.run(argv, cwd=ROOT, check=True)
    with open(results_path) as f:
        return json.load(f)


def at(results: dict, key: str, w) -> float:
    """The judge's share `key` at weight w."""
    row = int(np.flatnonzero(np.isclose(np.array(results["weights"]), w).all(1))[0])
    return results["judge"][key][row]


def steering(results: dict) -> tuple:
    """(passed, reasons it failed): the text-steering criteria above on one run's judge."""
    safe = [at(results, "safe", w) for w in ENDS]
    helpful = [at(results, "helpful", w) for w in ENDS]
    checks = [
        (min(results["judge"]["well_formed"]) >= MIN_WELL_FORMED, "well-formed"),
        (safe[2] - safe[0] >= MIN_SAFE_GAIN, "safe gain"),
        (helpful[0] - helpful[2] >= MIN_HELPFUL_GAIN, "helpful gain"),
        (
            safe[1] >= min(safe[0], safe[2]) and helpful[1] >= min(helpful[0], helpful[2]),
            "middle",
        ),
    ]
    failed = [reason for ok, reason in checks if not ok]
    return not failed, failed


def judge_table(res: dict, seeds: list, methods: list) -> str:
    lines = [
        "| method | seed | helpful % (1,0) / (.5,.5) / (0,1) | safe % | min well-formed % (11 w) | steering |",
        "|---|---|---|---|---|---|",
    ]
    for m in methods:
        for s in seeds:
            r = res[s, m]
            cells = [" / ".join(f"{100 * at(r, key, w):.0f}" for w in ENDS) for key in ("helpful", "safe")]
            passed, failed = steering(r)
            lines.append(
                f"| {METHODS[m][0]} | {s} | {' | '.join(cells)} | {100 * min(r['judge']['well_formed']):.0f} | "
                f"{'pass' if passed else 'FAIL: ' + ', '.join(failed)} |"
            )
    return "\n".join(lines)


def table2(res: dict, seeds: list, methods: list) -> str:
    lines = [
        "| method | paper HV | paper time (s) | HV per seed | HV mean | train time per seed (s) | "
        "train time mean (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in methods:
        hv = [res[s, m]["hypervolume"] or 0.0 for s in seeds]
        sec = [res[s, m]["train_seconds"] for s in seeds]
        lines.append(
            f"| {METHODS[m][0]} | {PAPER_TABLE2[m][0]:.4f} | {PAPER_TABLE2[m][1]:,} | "
            f"{' / '.join(f'{v:.4f}' for v in hv)} | {np.mean(hv):.4f} | {' / '.join(f'{v:.0f}' for v in sec)}"
            f" | {np.mean(sec):.0f} |"
        )
    return "\n".join(lines)


def verdicts(res: dict, seeds: list, methods: list) -> str:
    """The paper's ordering (Table 2): HV W-COS-DPO > DPO Soup > DPO-LS; time W-COS-DPO < DPO Soup < DPO-LS."""
    lines = []
    for a, b in (("wcos", "soup"), ("wcos", "ls"), ("soup", "ls")):
        if a not in methods or b not in methods:
            continue
        wins = sum((res[s, a]["hypervolume"] or 0) > (res[s, b]["hypervolume"] or 0) for s in seeds)
        ratio = np.mean([res[s, a]["train_seconds"] for s in seeds]) / np.mean(
            [res[s, b]["train_seconds"] for s in seeds]
        )
        paper = PAPER_TABLE2[a][1] / PAPER_TABLE2[b][1]
        lines.append(
            f"- {METHODS[a][0]} vs {METHODS[b][0]}: HV larger on {wins}/{len(seeds)} seeds (paper: larger); "
            f"training time {ratio:.2f}x (paper {paper:.2f}x)"
        )
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2", help="training seeds (default data)")
    p.add_argument("--methods", default="wcos,soup,ls", help=f"a subset of {','.join(METHODS)}")
    p.add_argument("--out", default="runs/llm_table2")
    p.add_argument("extra", nargs="*", help="after --: more train_llm.py arguments for every run")
    args = p.parse_args()
    seeds, methods = [int(s) for s in args.seeds.split(",")], args.methods.split(",")
    if set(methods) - set(METHODS):
        raise SystemExit(f"--methods: a subset of {','.join(METHODS)}")
    res = {(s, m): run(args.out, s, m, args.extra) for m in methods for s in seeds}
    print(
        f"\nThe judge ({res[seeds[0], methods[0]]['config']['judge_prompts']} prompts of the test pairs x "
        f"{res[seeds[0], methods[0]]['config']['judge_samples']} answers per w):\n"
    )
    print(judge_table(res, seeds, methods))
    print("\nTable 2 (hypervolume of the test errors, reference (1.1, 1.1); larger is better):\n")
    print(table2(res, seeds, methods))
    print("\n" + verdicts(res, seeds, methods))


if __name__ == "__main__":
    main()
