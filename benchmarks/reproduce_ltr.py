"""Re-measure the paper's ranking claims with one command per seed (issues 5, 10, 13).

Run from the repository root, one seed per process (finished runs in --out are reused, interrupted ones resumed):
    python benchmarks/reproduce_ltr.py --seed 0 --out runs/paper/seed0 --threads 1              # every part
    python benchmarks/reproduce_ltr.py --seed 1 --out runs/paper/seed1 --threads 1 --parts compare
    python benchmarks/reproduce_ltr.py --seed 2 --out runs/paper/seed2 --parts compare --methods wcos,soup  # some rows
    python benchmarks/reproduce_ltr.py --summarize runs/paper/seed0,runs/paper/seed1,runs/paper/seed2
    python benchmarks/reproduce_ltr.py --dataset mslr --data-dir PATH --out runs/mslr/seed0   # MSLR-WEB10K (hours)

Budgets: every run is train_ltr.py with the --dataset preset (epochs, learning rate, batch budget) and its
defaults (alpha 0.5, beta 1, width 64, 2 layers, the paper's raw labels, penalty 0): the same for every method
and fixed in train_ltr.py before these comparisons were run. Each part writes its tables to OUT/RESULTS.md;
--summarize prints the same tables as mean +/- std over several seeds' folders.

Parts (all W-COS-DPO runs of a seed share its base model, OUT/base.pt):
  compare  DPO-LS, DPO Soup, MO-DPO, W-COS-DPO (the paper's network and sampling), W-COS-DPO + FiLM + vertex
           0.25 (issue 13: --film --vertex-prob 0.25), W-COS-DPO with --label-transform log1p-zscore, and the
           --dropout 0.2 rows (issue 13: W-COS-DPO, + FiLM + vertex, and DPO Soup with the same dropout), on
           I, II (Fig. 2a), IV, V (Fig. 2b) and I-V (Table 1): aux hypervolume, main NDCG@10 (mean over the 11
           weights), end points at e_j against the unit models (the Soup's ingredients), front shape, time, size.
  penalty  App. A.2: W-COS-DPO with --penalty in {-0.2, -0.05, 0, 0.05, 0.2} on I, II and IV, V.
  depth    App. A.6.2: W-COS-DPO with 1-5 layers on I, II.     augment  App. A.6.3: scratch vs augment on I, II.
  linear   App. A.7 / Fig. 12: W-COS-DPO trained at beta in {0.8, ..., 1.2} x (1, 1) (penalty 0.05), moved to
           beta = (1, 1) with Eq. 14 (c = 1 / scale), against the beta = (1, 1) front and a second seed of it.
  tcos     Fig. 3b / App. A.8: one T-COS-DPO model on IV, V at beta in {0.9, 1.1}^2.
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

SETS = (("I_II", "I,II", "Fig. 2a"), ("IV_V", "IV,V", "Fig. 2b"), ("m5", "I,II,III,IV,V", "Table 1"))
# run folder, row name, train_ltr.py arguments beyond --method (the method is the folder's first word)
METHODS = (("ls", "DPO-LS", []), ("soup", "DPO Soup", []), ("modpo", "MO-DPO", []),
           ("wcos", "W-COS-DPO (paper)", []),
           ("wcos_film_vertex", "W-COS-DPO + FiLM + vertex 0.25", ["--film", "--vertex-prob", "0.25"]),
           ("wcos_log1p", "W-COS-DPO (log1p-zscore labels)", ["--label-transform", "log1p-zscore"]),
           ("wcos_film_vertex_dropout", "W-COS-DPO + FiLM + vertex 0.25 + dropout 0.2",
            ["--film", "--vertex-prob", "0.25", "--dropout", "0.2"]),
           ("soup_dropout", "DPO Soup + dropout 0.2", ["--dropout", "0.2"]),
           ("wcos_dropout", "W-COS-DPO + dropout 0.2", ["--dropout", "0.2"]))
BASELINES = ("ls", "soup", "modpo", "soup_dropout")
VARIANTS = ("wcos", "wcos_film_vertex", "wcos_film_vertex_dropout", "wcos_dropout")  # rows checked against BASELINES
PENALTIES = (-0.2, -0.05, 0.0, 0.05, 0.2)
DEPTHS = (1, 2, 3, 4, 5)
SCALES = (0.8, 0.9, 1.0, 1.1, 1.2)
BETAS = ((0.9, 0.9), (1.1, 0.9), (0.9, 1.1), (1.1, 1.1))
PAPER_TABLE1 = {"ls": ("1.648e-3", "0.355 +/- 0.029", "14649", "551,232"),
                "soup": ("1.468e-3", "0.382 +/- 0.032", "6062", "250,615"),
                "modpo": ("1.263e-3", "0.360 +/- 0.024", "27060", "801,792"),
                "wcos": ("2.039e-3", "0.432 +/- 0.028", "4043", "50,432")}


# ---- training (one train_ltr.py run per folder, reused when finished) -----------------------------------------
def train(common, out, *extra):
    """A finished run (results.json) is reused, an interrupted one (model.pt only) continued with --resume."""
    if os.path.exists(os.path.join(out, "results.json")):
        print(f"--- reusing {out}", flush=True)
        return
    resume = ["--resume"] if os.path.exists(os.path.join(out, "model.pt")) else []
    print(f"--- train_ltr.py {' '.join(extra + tuple(resume))} --out {out}", flush=True)
    if train_ltr.main(common + ["--out", out] + list(extra) + resume) != 0:
        raise SystemExit(f"training failed for {out}")


def run_compare(common, out, methods):
    """The one-model methods and the Soup on every set first, then DPO-LS, then MO-DPO (the costly ones)."""
    order = [f for f, _, _ in METHODS if f not in ("ls", "modpo")] + ["ls", "modpo"]
    for folder in [f for f in order if f in methods]:
        for tag, objectives, _ in SETS:
            extra = dict((f, e) for f, _, e in METHODS)[folder]
            train(common, os.path.join(out, "compare", tag, folder), "--method", folder.split("_")[0],
                  "--objectives", objectives, *extra)
    for tag, _, _ in SETS:
        paths = [os.path.join(out, "compare", tag, folder) for folder, _, _ in METHODS if folder in methods]
        plot = ["--objectives", "1,2" if tag != "m5" else "4,5", "--out", os.path.join(out, f"compare_{tag}.png")]
        pareto.main(paths + plot + ["--labels", ",".join(name for f, name, _ in METHODS if f in methods)])


def run_penalty(common, out):
    for tag, objectives, _ in SETS[:2]:
        for lam in PENALTIES:  # 0 is the compare part's W-COS run
            if lam:
                train(common, penalty_dir(out, tag, lam), "--objectives", objectives, "--penalty", str(lam))


def penalty_dir(out, tag, lam):
    return os.path.join(out, "compare", tag, "wcos") if lam == 0 else os.path.join(out, "penalty", tag, f"p{lam:g}")


def depth_dir(out, layers):
    return os.path.join(out, "compare", "I_II", "wcos") if layers == 2 else os.path.join(out, "depth", f"L{layers}")


def run_depth(common, out):
    for layers in DEPTHS:
        if layers != 2:
            train(common, depth_dir(out, layers), "--objectives", "I,II", "--layers", str(layers))


def run_augment(common, out):
    train(common, os.path.join(out, "augment"), "--objectives", "I,II", "--parametrization", "augment")


def other_seed(common, seed):
    i = common.index("--seed")
    return common[:i] + ["--seed", str(seed)] + common[i + 2:]


def linear_dir(out, scale):  # beta = (1, 1) with penalty 0.05 is also a run of the penalty part
    return penalty_dir(out, "I_II", 0.05) if scale == 1.0 else os.path.join(out, "linear", f"beta{scale}")


def run_linear(common, out):
    for s in SCALES:
        train(common, linear_dir(out, s), "--objectives", "I,II", "--beta", str(s), "--penalty", "0.05")
    seed = int(common[common.index("--seed") + 1]) + 1  # the noise floor: beta = (1, 1) again with another seed
    train(other_seed(common, seed), os.path.join(out, "linear", f"beta1.0_seed{seed}"), "--objectives", "I,II",
          "--penalty", "0.05")  # the same base model, so only the fine-tuning seed differs


def run_tcos(common, out):
    train(common, os.path.join(out, "tcos"), "--method", "tcos", "--objectives", "IV,V")


# ---- measures of one run (results.json) -------------------------------------------------------------------
def load(path):
    try:
        with open(os.path.join(path, "results.json")) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def end_points(res):
    """aux NDCG@10 of objective j at w = e_j (every evaluation grid holds the unit vectors), (m,)."""
    w, aux = np.array(res["weights"]), np.array(res["aux_ndcg"])
    return np.array([aux[np.argmin(np.abs(w - e).sum(1)), j] for j, e in enumerate(np.eye(w.shape[1]))])


def front_shape(res):
    """(points of the 11 not dominated by another point of the same front, largest distance between points of
    neighbouring weights; m = 2 only, None otherwise) on the aux NDCG@10 plane."""
    aux = np.array(res["aux_ndcg"])
    kept = int(pareto.non_dominated(aux).sum())
    if aux.shape[1] != 2:
        return kept, None
    return kept, float(np.linalg.norm(np.diff(aux, axis=0), axis=1).max())  # the m = 2 grid is ordered by w


def measures(res, units):
    """One row's numbers; units: the Soup's results of the same seed and objectives (its e_j are unit models)."""
    kept, gap = front_shape(res)
    ends = end_points(res) - end_points(units) if units else None
    return dict(hv=res["hypervolume"], main=res["main_ndcg_mean"], main_spread=res["main_ndcg_std"],
                secs=res["train_seconds"], params=res["num_params"], kept=kept, gap=gap,
                end_worst=None if ends is None else float(ends.min()), ends=ends)


# ---- tables: mean +/- std over the seeds that have the run ---------------------------------------------------
def stat(values, fmt):
    """"mean +/- std" over seeds (std over the seeds, ddof 0; two significant digits for a "g" format)."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    mean, std = format(float(np.mean(values)), fmt), float(np.std(values))
    return mean if len(values) == 1 else f"{mean} +/- {format(std, '#.2g' if fmt.endswith('g') else fmt.lstrip('+'))}"


def gather(dirs, rel, tag="I_II"):
    """{seed folder: measures} of run folder `rel` where it finished (unit models from compare/tag/soup)."""
    found = {d: load(os.path.join(d, rel)) for d in dirs}
    return {d: measures(res, load(os.path.join(d, "compare", tag, "soup"))) for d, res in found.items() if res}


def col(rows, key, fmt):
    return stat([r[key] for r in rows], fmt)


def end_cell(rows):
    """End gaps to the unit models: per objective for m = 2, the worst objective's for m > 2; "-" without units."""
    rows = [r for r in rows if r["ends"] is not None]  # the seeds whose Soup has finished
    if not rows:
        return "-"
    if len(rows[0]["ends"]) == 2:
        return ", ".join(stat([r["ends"][j] for r in rows], "+.3f") for j in range(2))
    return col(rows, "end_worst", "+.3f")


def mean(rows, key):
    return float(np.mean([r[key] for r in rows]))


def compare_tables(dirs):
    out = []
    for tag, objectives, figure in SETS:
        by_seed = {folder: gather(dirs, os.path.join("compare", tag, folder), tag) for folder, _, _ in METHODS}
        runs = {folder: list(found.values()) for folder, found in by_seed.items()}
        if not any(runs.values()):
            continue
        ls_secs = mean(runs["ls"], "secs") if runs["ls"] else None
        head = "end gap to unit models" + (" (e_1, e_2)" if tag != "m5" else " (worst j)")
        out += [f"### {figure} shape: objectives {objectives.replace(',', ', ')}", "",
                f"| method | seeds | aux HV | main NDCG@10 (spread over w) | {head} | non-dominated / 11 | "
                "largest gap | train time (s) | time / DPO-LS | parameters |", "|---" * 10 + "|"]
        for folder, name, _ in METHODS:
            rows = runs[folder]
            if not rows:
                continue
            ends = "-" if folder == "soup" else end_cell(rows)
            ratio = "-" if ls_secs is None else f"{mean(rows, 'secs') / ls_secs:.3f}"
            out.append(f"| {name} | {len(rows)} | {col(rows, 'hv', '#.4g')} | {col(rows, 'main', '.3f')} "
                       f"({np.mean([r['main_spread'] for r in rows]):.3f}) | {ends} | {col(rows, 'kept', '.1f')} | "
                       f"{col(rows, 'gap', '.3f')} | {col(rows, 'secs', '.0f')} | {ratio} | {rows[0]['params']:,} |")
        if tag == "m5":
            out += ["", "Paper, Table 1 (MSLR-WEB10K, GPU): aux HV, main NDCG@10, time (s), parameters: "
                    + "; ".join(f"{name} {', '.join(PAPER_TABLE1[f])}" for f, name, _ in METHODS if f in PAPER_TABLE1)]
        out += ["", claims(by_seed), ""]
    return "\n".join(out)


def verdict(ok):
    return "holds" if ok else "does not hold"


def claims(by_seed):
    """Issue 10's claims for the W-COS rows (VARIANTS) against each baseline, on the seeds both finished: seed
    means, and on how many seeds the claim holds."""
    lines, names = [], {f: n for f, n, _ in METHODS}
    for folder in VARIANTS:
        parts = []
        for b in BASELINES:
            seeds = [d for d in by_seed[folder] if d in by_seed[b]]
            if not seeds:
                continue
            me, them = [by_seed[folder][d] for d in seeds], [by_seed[b][d] for d in seeds]
            hv_wins = sum(x["hv"] >= y["hv"] for x, y in zip(me, them))
            main_wins = sum(x["main"] >= y["main"] for x, y in zip(me, them))
            parts.append(f"HV >= {names[b]}: {verdict(mean(me, 'hv') >= mean(them, 'hv'))} "
                         f"({mean(me, 'hv'):#.4g} vs {mean(them, 'hv'):#.4g}, {hv_wins}/{len(seeds)} seeds); "
                         f"main NDCG@10 >= {names[b]}: {verdict(mean(me, 'main') >= mean(them, 'main'))} "
                         f"({mean(me, 'main'):.3f} vs {mean(them, 'main'):.3f}, {main_wins}/{len(seeds)} seeds)")
            if b == "ls":
                ratio = mean(me, "secs") / mean(them, "secs")
                parts.append(f"time <= 1/3 of DPO-LS: {verdict(ratio <= 1 / 3)} ({ratio:.3f})")
        if parts:
            lines.append(f"- {names[folder]}: " + "; ".join(parts))
    return "\n".join(lines)


def simple_table(dirs, title, header, entries, tag="I_II"):
    """entries: (label, folder relative to a seed folder); over the seed folders where every entry finished
    (so that the rows compare the same seeds), else the first folder's finished entries."""
    complete = [d for d in dirs if all(load(os.path.join(d, rel)) for _, rel in entries)]
    dirs = complete or dirs[:1]
    out = [title, "", f"| {header} | seeds | aux HV | main NDCG@10 | non-dominated / 11 | largest gap | "
           "end gap e_1, e_2 | train time (s) | parameters |", "|---" * 9 + "|"]
    for label, rel in entries:
        rows = list(gather(dirs, rel, tag).values())
        if rows:
            out.append(f"| {label} | {len(rows)} | {col(rows, 'hv', '#.4g')} | {col(rows, 'main', '.3f')} | "
                       f"{col(rows, 'kept', '.1f')} | {col(rows, 'gap', '.3f')} | {end_cell(rows)} | "
                       f"{col(rows, 'secs', '.0f')} | {rows[0]['params']:,} |")
    return "\n".join(out) if len(out) > 4 else ""


def ablation_tables(dirs, out):
    sections = [simple_table(dirs, f"### Penalty (App. A.2), W-COS-DPO on {objectives.replace(',', ', ')}: "
                             "minimise L_w - lambda cos(w, L); lambda < 0 = the sign printed in Eq. 18", "lambda",
                             [(f"{lam:g}", os.path.relpath(penalty_dir(out, tag, lam), out)) for lam in PENALTIES], tag)
                for tag, objectives, _ in SETS[:2]]
    sections.append(simple_table(dirs, "### Depth of the conditioned model (App. A.6.2), W-COS-DPO on I, II", "layers",
                                 [(str(k), os.path.relpath(depth_dir(out, k), out)) for k in DEPTHS]))
    sections.append(simple_table(dirs, "### Scratch vs augmentation (App. A.6.3), W-COS-DPO on I, II",
                                 "parametrization", [("scratch", os.path.join("compare", "I_II", "wcos")),
                                                     ("augment", "augment")]))
    return "\n\n".join(s for s in sections if s)


def linear_table(out):
    """App. A.7 on one seed folder: how far each moved front lies from the beta = (1, 1) front."""
    paths = [linear_dir(out, s) for s in SCALES]
    if not all(load(p) for p in paths):
        return ""
    noise_seed = load(paths[SCALES.index(1.0)])["seed"] + 1
    other = load(os.path.join(out, "linear", f"beta1.0_seed{noise_seed}"))
    if not other:
        return ""
    fig = os.path.join(out, "linear.png")
    fronts = []
    for s, path in zip(SCALES, paths):
        moved = pareto.load_fronts(os.path.join(path, "model.pt"), scales=[1.0 / s])[0]
        moved["label"] = f"from beta=({s}, {s})"
        fronts.append(moved)
    pareto.plot_fronts(fronts, [(0, 1)], fig)
    pareto.write_csv(fronts, os.path.splitext(fig)[0] + ".csv")
    ref = np.array(fronts[SCALES.index(1.0)]["aux"])
    lines = [f"### Linear transformation (App. A.7, Fig. 12; figure `{fig}`)", "",
             "Mean distance over the 11 weights between each model's front and the beta = (1, 1) model's front, "
             "before and after Eq. 14 (c = 1 / scale):", "",
             "| trained at beta | HV moved to (1, 1) | distance unmoved | distance moved |", "|---|---|---|---|"]
    for s, f, path in zip(SCALES, fronts, paths):
        raw = np.array(load(path)["aux_ndcg"])
        lines.append(f"| ({s}, {s}) | {f['hv']:.4g} | {np.linalg.norm(raw - ref, axis=1).mean():.4f} | "
                     f"{np.linalg.norm(np.array(f['aux']) - ref, axis=1).mean():.4f} |")
    noise = np.linalg.norm(np.array(other["aux_ndcg"]) - ref, axis=1).mean()
    lines.append(f"| (1.0, 1.0), seed {noise_seed} (noise floor) | {other['hypervolume']:.4g} | {noise:.4f} | "
                 f"{noise:.4f} |")
    return "\n".join(lines)


def tcos_table(out):
    path = os.path.join(out, "tcos")
    if not load(path):
        return ""
    fig = os.path.join(out, "tcos.png")
    pareto.main([path, "--betas", ";".join(f"{a},{b}" for a, b in BETAS), "--out", fig])
    lines = [f"### Temperature-COS control (Fig. 3b; one T-COS-DPO model on IV, V, figure `{fig}`)", "",
             "| beta | aux HV | NDCG IV at w=(1,0) | NDCG V at w=(0,1) | main NDCG@10 mean |", "|---|---|---|---|---|"]
    for f in pareto.load_fronts(path, betas=[list(b) for b in BETAS]):
        aux, w = np.array(f["aux"]), np.array(f["weights"])
        lines.append(f"| {f['label'].split('beta=')[1]} | {f['hv']:.4g} | {aux[np.argmax(w[:, 0]), 0]:.4f} | "
                     f"{aux[np.argmax(w[:, 1]), 1]:.4f} | {np.mean(f['main']):.4f} |")
    return "\n".join(lines)


def variant_table(dirs):
    """Issue 13 before / after: W-COS-DPO (paper), + FiLM + vertex 0.25, + dropout 0.2, with the Soup and DPO-LS."""
    cols = (("wcos", "paper"), ("wcos_film_vertex", "FiLM + vertex"), ("wcos_film_vertex_dropout", "+ dropout"))
    refs = (("soup", "DPO Soup"), ("soup_dropout", "DPO Soup + dropout"), ("ls", "DPO-LS"))
    out = ["### Issue 13: W-COS-DPO (paper) before, + FiLM + vertex 0.25 (+ dropout 0.2) after", "",
           "| objectives | seeds | " + " | ".join(f"HV {n}" for _, n in cols + refs) + " | "
           + " | ".join(f"worst end gap {n}" for _, n in cols) + " | " + " | ".join(f"main {n}" for _, n in cols)
           + " | time + dropout / DPO-LS |", "|---" * (3 + 3 * len(cols) + len(refs)) + "|"]
    for tag, objectives, _ in SETS:
        runs = {f: gather(dirs, os.path.join("compare", tag, f), tag) for f, _ in cols + refs}
        seeds = [d for d in runs["wcos"] if all(d in runs[f] for f, _ in cols)]
        if not seeds:
            continue
        rows = {f: [found[d] for d in seeds if d in found] for f, found in runs.items()}
        last = cols[-1][0]
        ratio = f"{mean(rows[last], 'secs') / mean(rows['ls'], 'secs'):.3f}" if rows["ls"] else "-"
        out.append(f"| {objectives.replace(',', ', ')} | {len(seeds)} | "
                   + " | ".join(col(rows[f], "hv", "#.4g") for f, _ in cols + refs) + " | "
                   + " | ".join(col(rows[f], "end_worst", "+.3f") for f, _ in cols) + " | "
                   + " | ".join(col(rows[f], "main", ".3f") for f, _ in cols) + f" | {ratio} |")
    return "\n".join(out) if len(out) > 4 else ""


def report(dirs):
    """Every table the folders hold: compare and ablations over all seeds, linear and tcos of the first."""
    return "\n\n".join(s for s in (compare_tables(dirs), variant_table(dirs), ablation_tables(dirs, dirs[0]),
                                    linear_table(dirs[0]), tcos_table(dirs[0])) if s) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/paper/seed0")
    p.add_argument("--parts", default="compare,penalty,depth,augment,linear,tcos")
    p.add_argument("--dataset", default="synthetic", choices=sorted(train_ltr.PRESETS))
    p.add_argument("--data-dir", default=None)
    p.add_argument("--epochs", type=int, default=None, help="per-model epochs (default: the preset's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", default=",".join(f for f, _, _ in METHODS), help="the compare part's rows (run "
                   "folders), e.g. wcos,soup to fill a table in several sittings")
    p.add_argument("--label-transform", default="none", help="auxiliary labels before Eq. 8 (train_ltr.py's option; "
                   "none = the paper's raw labels)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--summarize", default=None, help="only print the tables over finished seed folders, e.g. "
                   "runs/paper/seed0,runs/paper/seed1,runs/paper/seed2")
    args = p.parse_args()
    if args.summarize:
        print(report(args.summarize.split(",")))
        return
    os.makedirs(args.out, exist_ok=True)
    common = ["--dataset", args.dataset, "--seed", str(args.seed), "--base", os.path.join(args.out, "base.pt"),
              "--quiet", "--log-every", "1000000", "--eval-every", "1000000", "--label-transform", args.label_transform]
    common += ["--data-dir", args.data_dir] if args.data_dir else []
    common += ["--epochs", str(args.epochs)] if args.epochs else []
    common += ["--threads", str(args.threads)] if args.threads else []
    parts = {"compare": lambda c, o: run_compare(c, o, args.methods.split(",")), "penalty": run_penalty,
             "depth": run_depth, "augment": run_augment, "linear": run_linear, "tcos": run_tcos}
    unknown = set(args.parts.split(",")) - set(parts) or set(args.methods.split(",")) - {f for f, _, _ in METHODS}
    if unknown:
        raise SystemExit(f"unknown part or method {sorted(unknown)}; parts: {','.join(parts)}; methods: "
                         f"{','.join(f for f, _, _ in METHODS)}")
    for name in args.parts.split(","):
        parts[name](common, args.out)
    text = report([args.out])
    with open(os.path.join(args.out, "RESULTS.md"), "w") as f:
        f.write(text)
    print("\n" + text)


if __name__ == "__main__":
    main()
