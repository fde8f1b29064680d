"""The paper's ranking claims, measured over several datasets rather than one.

Datasets: the embedded set (data seed 0, training seeds 0, 1, 2) and four more from the same generator with
other latent structure (data seeds 1-4, training seed 0): `python data.py synthetic --seed S` writes each.
Every run is `train_ltr.py` with the `synthetic` preset and its defaults, exactly as a user runs it; the runs
of one dataset and training seed share one base model. Outputs go to runs/paper/data{S}/seed{T}/ (finished
runs are reused, interrupted ones resumed).

    python benchmarks/reproduce_ltr.py run --data-seed 1 --seed 0 --threads 1   # one dataset and seed
    python benchmarks/reproduce_ltr.py all --threads 1                          # every dataset and seed
    python benchmarks/reproduce_ltr.py report                                   # tables and verdicts
    python benchmarks/reproduce_ltr.py figures                                  # docs/*.png of data 0, seed 0

Parts of a run:
  compare  Fig. 2a (objectives I, II), Fig. 2b (IV, V), Table 1 (I-V): DPO-LS, DPO Soup, MO-DPO, W-COS-DPO,
           W-COS-DPO at one baseline model's budget (--cos-budget 1) and the variant
           --film --vertex-prob 0.25 --dropout 0.2.
  linear   Fig. 12, App. A.7: W-COS-DPO trained at beta = s (1, 1), s in {0.8, ..., 1.2}, penalty 0.05, moved
           to beta = (1, 1) by Eq. 14 (c = 1 / s), against the (1, 1) front and a second training seed of it.
  tcos     Fig. 3b, App. A.8: one T-COS-DPO model on IV, V evaluated at beta in {0.9, 1.1}^2.
  ablation App. A.2 penalty in {-0.2, -0.05, 0.05, 0.2} (I, II and IV, V), App. A.6.2 depth 1-5 and App. A.6.3
           the augmentation parametrisation (I, II).
The embedded set's training seeds 1 and 2 run the compare part only.
"""

import argparse
import itertools
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import numpy as np  # noqa: E402

import data  # noqa: E402
import pareto  # noqa: E402
import train_ltr  # noqa: E402

RUNS = os.path.join(ROOT, "runs", "paper")
DATASETS = {0: (0, 1, 2), 1: (0,), 2: (0,), 3: (0,), 4: (0,)}  # data seed: training seeds
SETS = (("I_II", "I,II", "Fig. 2a"), ("IV_V", "IV,V", "Fig. 2b"), ("m5", "I,II,III,IV,V", "Table 1"))
VARIANT = ["--film", "--vertex-prob", "0.25", "--dropout", "0.2"]
METHODS = {  # run folder: (row name, train_ltr.py arguments)
    "ls": ("DPO-LS", ["--method", "ls"]),
    "soup": ("DPO Soup", ["--method", "soup"]),
    "modpo": ("MO-DPO", ["--method", "modpo"]),
    "wcos": ("W-COS-DPO", ["--method", "wcos"]),
    "wcos_budget1": ("W-COS-DPO, 1x budget", ["--method", "wcos", "--cos-budget", "1"]),
    "variant": ("variant (FiLM, vertex 0.25, dropout 0.2)", ["--method", "wcos", *VARIANT]),
}
BASELINES = ("ls", "soup", "modpo")
SHORT = {"wcos": "W-COS-DPO", "variant": "the variant"}
SCALES = (0.8, 0.9, 1.0, 1.1, 1.2)
BETAS = ((0.9, 0.9), (1.1, 0.9), (0.9, 1.1), (1.1, 1.1))
PENALTIES = (-0.2, -0.05, 0.05, 0.2)
DEPTHS = (1, 3, 4, 5)
PAPER_TABLE1 = {
    "ls": (1.648e-3, 0.355),
    "soup": (1.468e-3, 0.382),
    "modpo": (1.263e-3, 0.360),
    "wcos": (2.039e-3, 0.432),
}


# ---- training: one train_ltr.py run per folder ------------------------------------------------------------------
def data_dir(data_seed):
    """The dataset of a data seed, written on first use (seed 0 is the embedded set)."""
    if data_seed == 0:
        return data.ensure_synthetic()
    return data.ensure_synthetic(os.path.join(ROOT, "data", f"synthetic_seed{data_seed}"), seed=data_seed)


def run_dir(data_seed, seed, *parts):
    return os.path.join(RUNS, f"data{data_seed}", f"seed{seed}", *parts)


def train(common, out, extra):
    """A finished run (results.json) is reused, an interrupted one (model.pt only) continued with --resume."""
    if os.path.exists(os.path.join(out, "results.json")):
        return
    resume = ["--resume"] if os.path.exists(os.path.join(out, "model.pt")) else []
    print(f"--- train_ltr.py {' '.join(extra + resume)} --out {out}", flush=True)
    if train_ltr.main(common + ["--out", out] + extra + resume) != 0:
        raise SystemExit(f"training failed for {out}")


def runs_of(data_seed, seed, parts):
    """(folder, train_ltr.py arguments) of every run of the parts asked for."""
    runs = []
    if "compare" in parts:
        for (tag, objectives, _), (folder, (_, extra)) in itertools.product(SETS, METHODS.items()):
            runs.append(
                (run_dir(data_seed, seed, "compare", tag, folder), extra + ["--objectives", objectives])
            )
    if "linear" in parts:
        for s in SCALES:
            runs.append((linear_dir(data_seed, seed, s), ["--beta", str(s), "--penalty", "0.05"]))
        runs.append((linear_dir(data_seed, seed, "noise"), ["--penalty", "0.05", "--seed", str(seed + 1)]))
    if "tcos" in parts:
        runs.append((run_dir(data_seed, seed, "tcos"), ["--method", "tcos", "--objectives", "IV,V"]))
    if "ablation" in parts:
        for (tag, objectives, _), lam in itertools.product(SETS[:2], PENALTIES):
            runs.append(
                (
                    run_dir(data_seed, seed, "penalty", tag, f"{lam:g}"),
                    ["--objectives", objectives, "--penalty", str(lam)],
                )
            )
        for layers in DEPTHS:
            runs.append((run_dir(data_seed, seed, "depth", str(layers)), ["--layers", str(layers)]))
        runs.append((run_dir(data_seed, seed, "augment"), ["--parametrization", "augment"]))
    return runs


def linear_dir(data_seed, seed, scale):
    return run_dir(data_seed, seed, "linear", str(scale))


def run(data_seed, seed, parts, threads):
    common = [
        "--data-dir",
        data_dir(data_seed),
        "--seed",
        str(seed),
        "--base",
        run_dir(data_seed, seed, "base.pt"),
        "--quiet",
        "--log-every",
        "1000000",
        "--eval-every",
        "1000000",
    ]
    common += ["--threads", str(threads)] if threads else []
    os.makedirs(run_dir(data_seed, seed), exist_ok=True)
    for out, extra in runs_of(data_seed, seed, parts):
        train(common, out, extra)  # a later --seed in extra overrides the common one


def parts_of(data_seed, seed):
    return ("compare", "linear", "tcos", "ablation") if seed == 0 else ("compare",)


# ---- reading the runs ---------------------------------------------------------------------------------------------
def load(path):
    try:
        with open(os.path.join(path, "results.json")) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def per_dataset(rel, key, seeds=None):
    """{data seed: mean over its training seeds of results[key]} for the runs at folder `rel` that finished."""
    out = {}
    for data_seed, train_seeds in DATASETS.items():
        found = [load(run_dir(data_seed, s, *rel)) for s in (seeds or train_seeds)]
        values = [r[key] for r in found if r is not None]
        if values:
            out[data_seed] = float(np.mean(values))
    return out


def cells(values, fmt):
    """One table cell per dataset, "-" where it did not finish, then their mean."""
    row = [format(values[d], fmt) if d in values else "-" for d in DATASETS]
    mean = format(np.mean(list(values.values())), fmt) if values else "-"
    return " | ".join(row + [mean])


def holds(mine, theirs, better=np.greater_equal):
    """A claims-table cell pair: "k of n" datasets where mine is `better` than theirs, and the differences' range."""
    common = [d for d in mine if d in theirs]
    if not common:
        return "not measured | -"
    diff = np.array([mine[d] - theirs[d] for d in common])
    wins = sum(bool(better(mine[d], theirs[d])) for d in common)
    return f"{wins} of {len(common)} | {diff.min():+.4f} .. {diff.max():+.4f}"


# ---- report -------------------------------------------------------------------------------------------------------
def header(first, all_seeds=False):
    """A table head: one column per dataset (the embedded set's with its training seeds when all_seeds), the mean."""
    names = [
        f"data {d}" + (f" ({len(DATASETS[d])} seeds)" if all_seeds and len(DATASETS[d]) > 1 else "")
        for d in DATASETS
    ]
    return [f"| {first} | " + " | ".join(names) + " | mean |", "|---" * (len(DATASETS) + 2) + "|"]


def claims_table(rows):
    """rows: (claim, holds(...)) -> a markdown table."""
    lines = ["| claim | holds on (datasets) | difference, min .. max |", "|---|---|---|"]
    return lines + [f"| {claim} | {cell} |" for claim, cell in rows]


def compare_section(tag, objectives, figure):
    hv = {f: per_dataset(("compare", tag, f), "hypervolume") for f in METHODS}
    main = {f: per_dataset(("compare", tag, f), "main_ndcg_mean") for f in METHODS}
    secs = {f: per_dataset(("compare", tag, f), "train_seconds") for f in METHODS}
    ratio = {f: {d: secs[f][d] / secs["ls"][d] for d in secs[f] if d in secs["ls"]} for f in METHODS}
    lines = [
        f"### {figure}: objectives {objectives.replace(',', ', ')}",
        "",
        "Hypervolume of the test NDCG@10 front:",
    ]
    lines += ["", *header("method", all_seeds=True)]
    lines += [f"| {name} | {cells(hv[f], '.4f')} |" for f, (name, _) in METHODS.items()]
    lines += [
        "",
        "Main NDCG@10 (mean over the 11 weights) and training time / DPO-LS's (mean over datasets):",
        "",
    ]
    lines += ["| method | main NDCG@10 | time / DPO-LS |", "|---|---|---|"]
    for f, (name, _) in METHODS.items():
        lines.append(
            f"| {name} | {np.mean(list(main[f].values())):.3f} | {np.mean(list(ratio[f].values())):.2f} |"
        )
    rows = []
    for f in ("wcos", "variant"):
        for b in BASELINES:
            rows.append((f"{SHORT[f]}: HV >= {METHODS[b][0]}", holds(hv[f], hv[b])))
        for b in BASELINES:
            rows.append((f"{SHORT[f]}: main NDCG@10 >= {METHODS[b][0]}", holds(main[f], main[b])))
    rows.append(("the variant's HV >= W-COS-DPO's", holds(hv["variant"], hv["wcos"])))
    rows.append(("W-COS-DPO's HV at 3x budget >= at 1x", holds(hv["wcos"], hv["wcos_budget1"])))
    return "\n".join(lines + ["", *claims_table(rows)])


def seed_spread():
    """The embedded set's three training seeds: the standard deviation of each compare row's HV."""
    lines = [
        "### Seed noise on the embedded set (training seeds 0, 1, 2)",
        "",
        "| method | " + " | ".join(f"{figure} HV" for _, _, figure in SETS) + " |",
        "|---" * 4 + "|",
    ]
    for f, (name, _) in METHODS.items():
        row = []
        for tag, _, _ in SETS:
            found = [load(run_dir(0, s, "compare", tag, f)) for s in DATASETS[0]]
            hv = [r["hypervolume"] for r in found if r]
            row.append(f"{np.mean(hv):.4f} +/- {np.std(hv):.4f}" if hv else "-")
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def linear_section():
    """Fig. 12: mean distance over the 11 weights from the beta = (1, 1) front, before and after Eq. 14."""
    unmoved = {s: {} for s in SCALES if s != 1.0}
    moved = {s: {} for s in SCALES if s != 1.0}
    floor = {}
    for data_seed in DATASETS:
        runs = {s: load(linear_dir(data_seed, 0, s)) for s in (*SCALES, "noise")}
        if not all(runs.values()):
            continue
        ref = np.array(runs[1.0]["aux_ndcg"])
        floor[data_seed] = np.linalg.norm(np.array(runs["noise"]["aux_ndcg"]) - ref, axis=1).mean()
        for s in unmoved:
            front = pareto.load_fronts(
                os.path.join(linear_dir(data_seed, 0, s), "model.pt"), scales=[1.0 / s]
            )[0]
            unmoved[s][data_seed] = np.linalg.norm(np.array(runs[s]["aux_ndcg"]) - ref, axis=1).mean()
            moved[s][data_seed] = np.linalg.norm(np.array(front["aux"]) - ref, axis=1).mean()
    lines = [
        "### Fig. 12 (App. A.7): Eq. 14 moves a front trained at beta = s (1, 1) onto the (1, 1) front",
        "",
    ]
    lines += [
        "Mean distance over the 11 weights to the (1, 1) front of the model trained at s (1, 1), as trained "
        "and moved by Eq. 14 (c = 1 / s); the noise floor: a second training seed of the (1, 1) model.",
        "",
    ]
    lines += header("distance")
    for s in unmoved:
        lines.append(f"| s = {s}, as trained | {cells(unmoved[s], '.4f')} |")
        lines.append(f"| s = {s}, moved by Eq. 14 | {cells(moved[s], '.4f')} |")
    lines += [f"| noise floor | {cells(floor, '.4f')} |", ""]
    rows = [
        (f"s = {s}: the moved front is closer than the trained one", holds(moved[s], unmoved[s], np.less))
        for s in unmoved
    ]
    rows += [
        (f"s = {s}: the moved front is within the noise floor", holds(moved[s], floor, np.less))
        for s in moved
    ]
    return "\n".join(lines + claims_table(rows))


def tcos_section():
    """Fig. 3b: one T-COS-DPO model at four temperatures."""
    hv = {b: {} for b in BETAS}
    main = {b: {} for b in BETAS}
    for data_seed in DATASETS:
        path = run_dir(data_seed, 0, "tcos")
        if load(path):
            for b, front in zip(BETAS, pareto.load_fronts(path, betas=[list(b) for b in BETAS])):
                hv[b][data_seed] = front["hv"]
                main[b][data_seed] = float(np.mean(front["main"]))
    lines = [
        "### Fig. 3b (App. A.8): one T-COS-DPO model on IV, V moved by beta (Eq. 15)",
        "",
        *header("beta"),
    ]
    lines += [f"| {b}: HV | {cells(hv[b], '.4f')} |" for b in BETAS]
    lines += [f"| {b}: main NDCG@10 | {cells(main[b], '.3f')} |" for b in BETAS]
    low, high = BETAS[0], BETAS[-1]
    rows = [
        (
            f"main NDCG@10 at beta {high} > at {low} (a larger ||beta||_1 stays nearer s0)",
            holds(main[high], main[low], np.greater),
        )
    ]
    rows.append((f"HV at beta {low} >= at {high}", holds(hv[low], hv[high])))
    return "\n".join(lines + ["", *claims_table(rows)])


def ablation_section():
    """App. A.2, A.6.2, A.6.3 against the default W-COS-DPO run of the same dataset (training seed 0)."""
    settings = [
        (f"penalty {lam:g}, {tag}", ("penalty", tag, f"{lam:g}"), tag)
        for tag, _, _ in SETS[:2]
        for lam in PENALTIES
    ]
    settings += [(f"depth {k}, I_II", ("depth", str(k)), "I_II") for k in DEPTHS]
    settings += [("augmentation, I_II", ("augment",), "I_II")]
    default = {tag: per_dataset(("compare", tag, "wcos"), "hypervolume", (0,)) for tag, _, _ in SETS[:2]}
    lines = [
        "### Ablations (App. A.2, A.6.2, A.6.3): W-COS-DPO's HV against its default (penalty 0, 2 layers, "
        "scratch), training seed 0",
        "",
        *header("setting"),
    ]
    lines += [f"| default, {tag} | {cells(hv, '.4f')} |" for tag, hv in default.items()]
    rows = []
    for name, rel, tag in settings:
        hv = per_dataset(rel, "hypervolume", (0,))
        lines.append(f"| {name} | {cells(hv, '.4f')} |")
        rows.append((f"{name}: HV >= default", holds(hv, default[tag])))
    return "\n".join(lines + ["", *claims_table(rows)])


def figures():
    """The fronts of the embedded set, training seed 0, drawn by pareto.py into docs/ (Table 1 on IV, V)."""
    docs = os.path.join(ROOT, "docs")
    for (tag, _, _), name, pair in zip(
        SETS, ("fig2a_I_II", "fig2b_IV_V", "table1_m5_IV_V"), ("1,2", "1,2", "4,5")
    ):
        runs = [run_dir(0, 0, "compare", tag, f) for f in METHODS]
        labels = ",".join(name for name, _ in METHODS.values())
        pareto.main(
            runs + ["--objectives", pair, "--labels", labels, "--out", os.path.join(docs, f"{name}.png")]
        )
    fronts = pareto.load_fronts(linear_dir(0, 0, 1.0))
    for s in (0.8, 1.2):  # trained at s (1, 1), as trained and moved to (1, 1) by Eq. 14
        fronts += pareto.load_fronts(linear_dir(0, 0, s))
        fronts += pareto.load_fronts(os.path.join(linear_dir(0, 0, s), "model.pt"), scales=[1.0 / s])
    labels = [
        "beta (1, 1)",
        "beta 0.8 (1, 1)",
        "beta 0.8 (1, 1), Eq. 14",
        "beta 1.2 (1, 1)",
        "beta 1.2 (1, 1), Eq. 14",
    ]
    fronts = [dict(front, label=label) for front, label in zip(fronts, labels)]
    pareto.plot_fronts(fronts, [(0, 1)], os.path.join(docs, "fig12_linear.png"))
    betas = ";".join(f"{a},{b}" for a, b in BETAS)
    pareto.main([run_dir(0, 0, "tcos"), "--betas", betas, "--out", os.path.join(docs, "fig3b_tcos.png")])


def report():
    sections = [compare_section(*s) for s in SETS]
    sections += [seed_spread(), linear_section(), tcos_section(), ablation_section()]
    return "\n\n".join(sections) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=("run", "all", "report", "figures"))
    p.add_argument("--data-seed", type=int, default=0, choices=sorted(DATASETS))
    p.add_argument("--seed", type=int, default=0, help="training seed (run)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per run")
    args = p.parse_args()
    if args.command == "run":
        run(args.data_seed, args.seed, parts_of(args.data_seed, args.seed), args.threads)
    elif args.command == "all":
        for data_seed, seeds in DATASETS.items():
            for seed in seeds:
                run(data_seed, seed, parts_of(data_seed, seed), args.threads)
    if args.command in ("all", "report"):
        print(report())
    if args.command == "figures":
        figures()


if __name__ == "__main__":
    main()
