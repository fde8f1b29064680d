"""Check the paper's ranking claims with one command (issue 5): all methods side by side, Eq. 14, T-COS control.

Run from the repository root (about 10-15 minutes on a 2-core CPU with the embedded data):
    python benchmarks/reproduce_ltr.py                    # everything, outputs in runs/paper
    python benchmarks/reproduce_ltr.py --parts compare    # only the Table 1 / Fig. 2 comparison
    python benchmarks/reproduce_ltr.py --dataset mslr --data-dir PATH   # the same on MSLR-WEB10K (hours)
    python benchmarks/reproduce_ltr.py --parts compare --seed 1 --out runs/paper_seed1   # another seed
    python benchmarks/reproduce_ltr.py --summarize runs/paper,runs/paper_seed1           # mean +/- std
    python benchmarks/reproduce_ltr.py --parts compare --label-transform log1p-zscore --out runs/paper_log1p

Parts (each writes its runs, figures and a Markdown table under --out; RESULTS.md collects the tables):
  compare  DPO-LS, DPO Soup, MO-DPO and W-COS-DPO with the same base model, data, evaluation weights and
           per-model epochs: m = 2 on objectives I, II (Fig. 2a, "l1" labels) and IV, V (Fig. 2b, "softmax"
           labels), and m = 5 (Table 1: aux hypervolume, main NDCG@10 mean +/- std over the 11 weights,
           total training seconds of all models a method trains, parameters of all models it keeps).
  linear   App. A.7 / Fig. 12: W-COS-DPO trained at beta in {0.8, 0.9, 1.0, 1.1, 1.2} x (1, 1) (penalty 0.05 as in
           the paper), each moved to beta = (1, 1) with Eq. 14 (c = 1 / scale); fronts overlaid, and how far the
           moved fronts lie from the beta = (1, 1) model's front compared with the unmoved ones.
  tcos     Fig. 3b / App. A.8: one T-COS-DPO model (augmentation network, depth 5, beta ~ Unif([0.67, 1.5]^2),
           objectives IV, V) evaluated at beta in {(0.9, 0.9), (1.1, 0.9), (0.9, 1.1), (1.1, 1.1)}.
Every training goes through train_ltr.main and every figure through pareto.py, exactly as a user would.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np  # noqa: E402

import pareto  # noqa: E402
import train_ltr  # noqa: E402

METHODS = (("ls", "DPO-LS"), ("soup", "DPO Soup"), ("modpo", "MO-DPO"), ("wcos", "W-COS-DPO"))
PAPER_TABLE1 = {"ls": ("1.648e-3", "0.355 +/- 0.029", "14649", "551,232"),
                "soup": ("1.468e-3", "0.382 +/- 0.032", "6062", "250,615"),
                "modpo": ("1.263e-3", "0.360 +/- 0.024", "27060", "801,792"),
                "wcos": ("2.039e-3", "0.432 +/- 0.028", "4043", "50,432")}


def train(common, out, *extra):
    """One train_ltr.py run; reuses a finished run in `out` (delete the folder to redo it)."""
    if os.path.exists(os.path.join(out, "results.json")):
        print(f"--- reusing {out}")
    else:
        print(f"--- train_ltr.py {' '.join(extra)} --out {out}", flush=True)
        if train_ltr.main(common + ["--out", out] + list(extra)) != 0:
            raise SystemExit(f"training failed for {out}")
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)


def compare(common, out, objectives, tag):
    """All four methods on one set of objectives; a Table 1-shaped Markdown table and a Fig. 2-shaped plot."""
    runs = {meth: train(common, os.path.join(out, tag, meth), "--method", meth, "--objectives", objectives)
            for meth, _ in METHODS}
    paths = [os.path.join(out, tag, meth) for meth, _ in METHODS]
    labels = ",".join(name for _, name in METHODS)
    fig = os.path.join(out, f"{tag}.png")
    pairs = ["--objectives", "1,2"] if len(objectives.split(",")) == 2 else ["--objectives", "4,5"]
    pareto.main(paths + ["--out", fig, "--labels", labels] + pairs)
    lines = [f"**{tag}** (objectives {objectives}; figure `{fig}`)", "",
             "| method | aux HV | main NDCG@10 (mean +/- std) | train time (s) | parameters | HV ratio to W-COS |",
             "|---|---|---|---|---|---|"]
    hv_w = runs["wcos"]["hypervolume"]
    for meth, name in METHODS:
        r = runs[meth]
        lines.append(f"| {name} | {r['hypervolume']:.4e} | {r['main_ndcg_mean']:.3f} +/- {r['main_ndcg_std']:.3f} | "
                     f"{r['train_seconds']:.1f} | {r['num_params']:,} | {r['hypervolume'] / hv_w:.3f} |")
    if len(objectives.split(",")) == 5:
        lines += ["", "Paper, Table 1 (MSLR-WEB10K, GPU):", "", "| method | aux HV | main NDCG@10 | time (s) | parameters |",
                  "|---|---|---|---|---|"]
        lines += [f"| {name} | " + " | ".join(PAPER_TABLE1[meth]) + " |" for meth, name in METHODS]
    best_main = max(runs[m]["main_ndcg_mean"] for m, _ in METHODS if m != "wcos")
    w = runs["wcos"]
    lines += ["", f"Targets: W-COS HV >= DPO-LS HV: {hv_w >= runs['ls']['hypervolume']}; "
              f"W-COS HV >= Soup HV: {hv_w >= runs['soup']['hypervolume']}; "
              f"W-COS time <= 1/3 of DPO-LS: {w['train_seconds'] <= runs['ls']['train_seconds'] / 3} "
              f"({w['train_seconds'] / runs['ls']['train_seconds']:.3f}); "
              f"W-COS main >= best baseline - 0.01: {w['main_ndcg_mean'] >= best_main - 0.01} "
              f"({w['main_ndcg_mean']:.3f} vs {best_main:.3f})"]
    return "\n".join(lines)


def linear(common, out):
    """App. A.7: models trained at beta = s * (1, 1), moved to beta = (1, 1) by Eq. 14 with c = 1 / s."""
    scales = (0.8, 0.9, 1.0, 1.1, 1.2)
    fronts, raw = [], []
    for s in scales:
        path = os.path.join(out, "linear", f"beta{s}")
        train(common, path, "--method", "wcos", "--objectives", "I,II", "--beta", str(s), "--penalty", "0.05")
        moved = pareto.load_fronts(os.path.join(path, "model.pt"), scales=[1.0 / s])[0]
        moved["label"] = f"from beta=({s}, {s})"
        fronts.append(moved)
        raw.append(np.array(pareto.load_fronts(path)[0]["aux"]))
    fig = os.path.join(out, "linear.png")
    pareto.plot_fronts(fronts, [(0, 1)], fig)
    pareto.write_csv(fronts, os.path.splitext(fig)[0] + ".csv")
    ref = np.array(fronts[scales.index(1.0)]["aux"])
    # the noise floor: the same beta = (1, 1) training with another seed
    seed = int(common[common.index("--seed") + 1]) + 1
    other = train(common[:common.index("--seed")] + ["--seed", str(seed)] + common[common.index("--seed") + 2:],
                  os.path.join(out, "linear", f"beta1.0_seed{seed}"), "--method", "wcos", "--objectives", "I,II",
                  "--penalty", "0.05")
    lines = [f"**linear transformation** (App. A.7, Fig. 12; figure `{fig}`): mean distance, over the 11 weights,",
             "between each model's front and the beta = (1, 1) model's front, before and after Eq. 14", "",
             "| trained at beta | HV moved to (1, 1) | distance unmoved | distance moved |", "|---|---|---|---|"]
    for s, f, r in zip(scales, fronts, raw):
        moved = np.array(f["aux"])
        lines.append(f"| ({s}, {s}) | {f['hv']:.4e} | {np.linalg.norm(r - ref, axis=1).mean():.4f} | "
                     f"{np.linalg.norm(moved - ref, axis=1).mean():.4f} |")
    noise = np.linalg.norm(np.array(other["aux_ndcg"]) - ref, axis=1).mean()
    lines.append(f"| (1.0, 1.0), seed {seed} (noise floor) | {other['hypervolume']:.4e} | {noise:.4f} | {noise:.4f} |")
    return "\n".join(lines)


def tcos(common, out):
    path = os.path.join(out, "tcos")
    train(common, path, "--method", "tcos", "--objectives", "IV,V")
    fig = os.path.join(out, "tcos.png")
    betas = "0.9,0.9;1.1,0.9;0.9,1.1;1.1,1.1"
    pareto.main([path, "--betas", betas, "--out", fig])
    fronts = pareto.load_fronts(path, betas=[[0.9, 0.9], [1.1, 0.9], [0.9, 1.1], [1.1, 1.1]])
    lines = [f"**Temperature-COS control** (Fig. 3b; one model, figure `{fig}`)", "",
             "| beta | HV | NDCG IV at w=(1,0) | NDCG V at w=(0,1) | main NDCG@10 mean |", "|---|---|---|---|---|"]
    for f in fronts:
        aux, w = np.array(f["aux"]), np.array(f["weights"])
        lines.append(f"| {f['label'].split('beta=')[1]} | {f['hv']:.4e} | {aux[np.argmax(w[:, 0]), 0]:.4f} | "
                     f"{aux[np.argmax(w[:, 1]), 1]:.4f} | {np.mean(f['main']):.4f} |")
    return "\n".join(lines)


def summarize(dirs):
    """Mean +/- std over several seeds' compare runs (one --out folder per seed)."""
    lines = [f"**Across {len(dirs)} seeds** ({', '.join(dirs)}): mean +/- std; wins = seeds where W-COS-DPO's HV "
             "is at least the method's", "",
             "| objectives | method | aux HV | main NDCG@10 | train time (s) | W-COS HV >= it |", "|---|---|---|---|---|---|"]
    for tag, objectives in (("m2_I_II", "I, II"), ("m2_IV_V", "IV, V"), ("m5", "I-V")):
        runs = {}
        for meth, _ in METHODS:
            runs[meth] = []
            for d in dirs:
                with open(os.path.join(d, tag, meth, "results.json")) as f:
                    runs[meth].append(json.load(f))
        for meth, name in METHODS:
            hv = np.array([r["hypervolume"] for r in runs[meth]])
            main = np.array([r["main_ndcg_mean"] for r in runs[meth]])
            secs = np.array([r["train_seconds"] for r in runs[meth]])
            wins = sum(w["hypervolume"] >= r["hypervolume"] for w, r in zip(runs["wcos"], runs[meth]))
            lines.append(f"| {objectives} | {name} | {hv.mean():.3e} +/- {hv.std():.1e} | {main.mean():.3f} +/- "
                         f"{main.std():.3f} | {secs.mean():.0f} | {'-' if meth == 'wcos' else f'{wins}/{len(dirs)}'} |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/paper")
    p.add_argument("--parts", default="compare,linear,tcos")
    p.add_argument("--dataset", default="synthetic", choices=sorted(train_ltr.PRESETS))
    p.add_argument("--data-dir", default=None)
    p.add_argument("--epochs", type=int, default=None, help="per-model epochs (default: the preset's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--label-transform", default="none", help="auxiliary labels before Eq. 8 (train_ltr.py's option; "
                   "none = the paper's raw labels)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--summarize", default=None, help="only print mean +/- std over finished compare runs, "
                   "e.g. runs/paper,runs/paper_seed1,runs/paper_seed2")
    args = p.parse_args()
    if args.summarize:
        print(summarize(args.summarize.split(",")))
        return
    os.makedirs(args.out, exist_ok=True)
    # one base model for every run: trained by the first run, reused by the others (--base)
    common = ["--dataset", args.dataset, "--seed", str(args.seed), "--base", os.path.join(args.out, "base.pt"),
              "--quiet", "--log-every", "1000000", "--eval-every", "1000000"]
    common += ["--label-transform", args.label_transform]
    common += ["--data-dir", args.data_dir] if args.data_dir else []
    common += ["--epochs", str(args.epochs)] if args.epochs else []
    common += ["--threads", str(args.threads)] if args.threads else []
    sections = []
    parts = args.parts.split(",")
    if "compare" in parts:
        sections += [compare(common, args.out, "I,II", "m2_I_II"), compare(common, args.out, "IV,V", "m2_IV_V"),
                     compare(common, args.out, "I,II,III,IV,V", "m5")]
    if "linear" in parts:
        sections.append(linear(common, args.out))
    if "tcos" in parts:
        sections.append(tcos(common, args.out))
    text = "\n\n".join(sections) + "\n"
    with open(os.path.join(args.out, "RESULTS.md"), "w") as f:
        f.write(text)
    print("\n" + text)


if __name__ == "__main__":
    main()
