"""Judging Pareto fronts (Sec. 4, App. A.3-A.4): NDCG@k (Eq. 22), non_dominated, exact hypervolume (Eq. 20-21),
the evaluation weight_grid, and `evaluate`: test NDCG@10 of a saved ranker (models.TrainedRanker) at each weight.
The bottom plots fronts from runs (results.json) and model.pt files: `python pareto.py RUN_OR_MODEL.pt ...`
(matplotlib is imported only there). Tests: tests/test_pareto_metrics.py; benchmark: benchmarks/bench_pareto.py.
"""

import argparse
import contextlib
import csv
import functools
import itertools
import json
import os
import sys

import numpy as np
import torch

import data
from models import TrainedRanker


# ---- NDCG@k (Eq. 22) ----
def ndcg_at_k(scores, gains, k=10, mask=None, idcg_zero=0.0, ties="average"):
    """Per-query NDCG@k = DCG@k / DCG@k of the ideal order, DCG@k = sum_{rank<=k} gain / log2(rank + 1) (Eq. 22).
    scores: (B, n), torch or numpy; gains: (B, n), or (B, n, m): m objectives ranked by one sort of the scores, giving
    (B, m); gains are linear (the labels, not 2^z - 1); mask: (B, n) bool, True = real item (padding takes no rank).
    idcg_zero: the value of a query without positive gain (0 as TF-Ranking; allRank and LightGBM count 1; nan skips it).
    ties="average": expected DCG over random orders of equal scores (as sklearn), "first": by item index. Returns
    float64, a tensor on scores' device if scores is one."""
    s = torch.as_tensor(scores).detach().double()
    g = torch.as_tensor(gains, device=s.device).double()
    valid = torch.ones_like(s, dtype=torch.bool) if mask is None else torch.as_tensor(mask, device=s.device)
    g3 = g.reshape(*s.shape, -1).masked_fill(~valid[..., None], 0.0)  # (B, n, m); padding: no gain
    out = _ndcg(s, valid, g3, ideal_dcg(g3, k), k, idcg_zero, ties)  # (B, m)
    out = out.reshape(g.shape[:1] + g.shape[2:])  # (B,) for gains (B, n)
    return out if isinstance(scores, torch.Tensor) else out.cpu().numpy()


def _discounts(n, k, device=None):
    """(n,) discount 1 / log2(rank + 1) at ranks 1..k, 0 past k (Eq. 22)."""
    pos = torch.arange(n, device=device, dtype=torch.float64)  # 0-based rank
    return torch.where(pos < k, 1.0 / torch.log2(pos + 2.0), 0.0)


def ideal_dcg(gains, k=10):
    """(B, m) DCG@k of the ideal order of gains (B, n, m) (padding 0): the NDCG denominator."""
    ideal = gains.sort(1, descending=True).values  # (B, n, m)
    return (ideal * _discounts(gains.shape[1], k, gains.device)[:, None]).sum(1)


def _ndcg(s, valid, gains, idcg, k, idcg_zero, ties):
    """(B, m) NDCG@k of scores s (B, n) against gains (B, n, m) whose ideal DCG is idcg (B, m)."""
    s = s.masked_fill(~valid, -torch.inf)  # padding ranked last
    disc = _discounts(s.shape[1], k, s.device)
    # (B, n) best item first, ties by index
    order = torch.sort(s, dim=1, descending=True, stable=True).indices
    d = _tie_averaged_discounts(s.gather(1, order), disc) if ties == "average" else disc.expand_as(s)
    dcg = (gains.gather(1, order[..., None].expand_as(gains)) * d[..., None]).sum(1)  # (B, m)
    return torch.where(idcg > 0, dcg / torch.where(idcg > 0, idcg, 1.0), float(idcg_zero))


def _tie_averaged_discounts(s_ranked, disc):
    """Each rank's discount -> the mean over the ranks its tie group occupies (expected under random order)."""
    new_score = (s_ranked[:, 1:] != s_ranked[:, :-1]).long()
    starts = torch.nn.functional.pad(new_score, (1, 0))  # (B, n) 1: a new score
    group = starts.cumsum(1)  # (B, n) group id of each rank
    # (B, n) per group id: the sum of its discounts and its size
    disc_sum = torch.zeros_like(s_ranked).scatter_add_(1, group, disc.expand_as(s_ranked))
    size = torch.zeros_like(s_ranked).scatter_add_(1, group, torch.ones_like(s_ranked))
    return (disc_sum / size.clamp_min(1.0)).gather(1, group)  # (B, n) per rank


# ---- Pareto dominance and hypervolume (App. A.3, Eq. 20-21) ----
def non_dominated(points, maximize=True):
    """(P,) bool, True = no other point dominates it (at least as good everywhere, better somewhere); exact
    duplicates do not dominate each other. points: (P, m) array-like (a CPU tensor gives a tensor). O(P^2 m)."""
    keep = ~_dominated(np.asarray(points, dtype=np.float64) * (1.0 if maximize else -1.0))
    return torch.from_numpy(keep).to(points.device) if isinstance(points, torch.Tensor) else keep


def hypervolume(points, ref, maximize=True):
    """Exact volume dominated by `points` (P, m) and bounded by `ref` (m,) (Eq. 20; minimise: Eq. 21). The paper:
    ref = 0 for NDCG, ref = (1.1, 1.1) for LLM errors. WFG-style recursion (While et al., IEEE TEC 2012)."""
    pts, r = np.asarray(points, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    q = (pts - r) if maximize else (r - pts)  # (P, m): ref at the origin, larger = better
    if not np.all(q >= 0, axis=1).any():
        raise ValueError(f"no point weakly dominates the reference point {r.tolist()}; choose a worse ref")
    q = q[np.all(q > 0, axis=1)]  # a zero-width box has no volume
    return float(_hv_wfg(_unique_front(q) if q.shape[1] > 2 else q))  # 2-D needs no filter: O(P log P)


def _dominated(pts):
    """(P,) bool: dominated by some other point, larger = better; duplicates do not dominate."""
    ge = np.all(pts[None, :, :] >= pts[:, None, :], axis=2)  # (P, P) [i, j]: p_j >= p_i everywhere
    return np.any(ge & ~ge.T, axis=1)  # ... and p_i >= p_j fails somewhere


def _unique_front(q):
    """Non-dominated rows of q (larger = better), exact duplicates kept once."""
    if len(q) < 2:  # the recursion's many tiny sets: nothing to filter
        return q
    ge = np.all(q[None, :, :] >= q[:, None, :], axis=2)  # (P, P) as in _dominated
    repeat = np.any(np.tril(ge & ge.T, -1), axis=1)  # equal to an earlier row
    return q[~(np.any(ge & ~ge.T, axis=1) | repeat)]


def _hv_wfg(q):
    """Hypervolume of positive points q (P, m) w.r.t. the origin. Sorted by increasing last objective, HV is
    the sum of exclusive volumes p_i[-1] * (vol(p_i[:-1]) - HV_{m-1}(later points clipped to p_i's box))."""
    P, m = q.shape
    if P <= 1 or m == 1:  # one box, or the longest segment
        return float(np.prod(q[0]) if P == 1 else q.max(initial=0.0))
    if m == 2:  # sweep by x descending: each x-slice is covered up to the best y so far
        q = q[np.argsort(-q[:, 0], kind="stable")]
        return float(np.sum((q[:, 0] - np.append(q[1:, 0], 0.0)) * np.maximum.accumulate(q[:, 1])))
    q = q[np.argsort(q[:, -1], kind="stable")]  # worst in the last objective first
    total = 0.0
    for i in range(P):
        later = np.minimum(q[i + 1 :, :-1], q[i, :-1])  # the later boxes clipped to p_i's
        total += q[i, -1] * (float(np.prod(q[i, :-1])) - _hv_wfg(_unique_front(later)))
    return total


# ---- evaluation weights and the evaluation of a trained ranker (Sec. 4) ----
def weight_grid(m, num=11, seed=0):
    """(num, m) evaluation weights on the simplex. m == 2: the paper's grid (t, 1 - t), t = 0, 0.1, ..., 1.
    m > 2 (our choice, the paper does not list them): e_1..e_m, the centroid, then Dirichlet(1) draws with
    np.random.default_rng(seed); a smaller grid is a prefix of a larger one. m == 1: [[1.0]]."""
    if m == 1:
        return np.ones((1, 1))
    if num < (2 if m == 2 else m + 1):  # both end points; every unit vector and the centroid
        raise ValueError(f"num must be at least {2 if m == 2 else m + 1} for m = {m} objectives, got {num}")
    if m == 2:
        return np.linspace([0.0, 1.0], [1.0, 0.0], num)  # rows (t, 1 - t)
    draws = np.random.default_rng(seed).dirichlet(np.ones(m), size=num - m - 1)  # (num - m - 1, m)
    return np.concatenate([np.eye(m), np.full((1, m), 1.0 / m), draws])


class EvalSplit:
    """A split prepared once for scoring and repeated evaluation (validation lines, the test weights): its
    batches (make_batches without shuffle is deterministic) and, on first use, per batch the gains (B, n, m + 1)
    of the auxiliary objectives and of relevance (last) with their ideal DCG@k, so that each evaluation only
    scores and sorts."""

    def __init__(self, split, max_docs=8192, k=10, idcg_zero=0.0):
        self.k = k
        self.idcg_zero = idcg_zero
        self.batches = data.make_batches(split, max_docs)

    @functools.cached_property
    def targets(self):
        gains = [torch.cat([b.aux_raw, b.relevance[..., None]], -1).double() for b in self.batches]
        return [(g, ideal_dcg(g, self.k)) for g in gains]  # (B, n, m + 1), (B, m + 1) per batch

    @torch.no_grad()
    def scores(self, score_fn):
        """(N,) scores of every document in row order; score_fn(batch) -> (B, n) over whole lists."""
        out = torch.zeros(sum(b.num_docs for b in self.batches))
        for b in self.batches:
            out[b.index[b.mask]] = score_fn(b).float().cpu()[b.mask]
        return out

    def ndcg(self, scores):
        """Mean NDCG@k over the queries from (N,) document scores: ([per objective (raw gains)], main)."""
        per_query = []
        for b, (gains, idcg) in zip(self.batches, self.targets):
            s = scores[b.index].double()
            per_query.append(_ndcg(s, b.mask, gains, idcg, self.k, self.idcg_zero, "average"))  # (B, m + 1)
        mean = torch.cat(per_query).nanmean(0)  # (m + 1,)
        return mean[:-1].tolist(), float(mean[-1])


def evaluate(trained, ev, weights, c=None, beta=None):
    """NDCG@10 of a TrainedRanker on an EvalSplit per auxiliary objective and of the main one at each weight (c:
    Eq. 14, beta: Eq. 15), and the hypervolume of the auxiliary front (ref 0; None if NaN)."""
    device = trained.device
    ref = ev.scores(lambda b: trained.base(b.features.to(device), b.mask.to(device)))  # s0, once
    aux, main = [], []
    for w in weights:
        scores = ev.scores(lambda b, w=w: trained.scores(b, w, ref[b.index], c, beta))
        aux_w, main_w = ev.ndcg(scores)
        aux.append(aux_w)
        main.append(main_w)
    hv = hypervolume(np.array(aux), np.zeros(len(aux[0]))) if np.isfinite(aux).all() else None
    return dict(
        aux_ndcg=aux,
        main_ndcg=main,
        hypervolume=hv,
        main_ndcg_mean=float(np.mean(main)),
        main_ndcg_std=float(np.std(main)),
    )


def checkpoint_splits(trained, path, data_dir=None):
    """The splits a checkpoint was trained on (its data folder unless data_dir), prepared as in training."""
    cfg = trained.ckpt["run_config"]
    data_dir = data_dir or cfg["data_dir"]
    splits, stats = data.load_ltr(
        data_dir, cfg["fold"], trained.objectives, label_transform=trained.label_transform
    )
    if stats["fingerprint"] != trained.ckpt["data_fingerprint"]:
        raise ValueError(
            f"{path} was trained on other data than {data_dir} (fingerprint "
            f"{trained.ckpt['data_fingerprint']} vs {stats['fingerprint']})"
        )
    return splits


# ---- plotting and command line: fronts from results.json (train_ltr.py, train_llm.py) or a model.pt ----
def load_fronts(path, scales=None, betas=None):
    """The fronts of a run folder (results.json), or of a train_ltr.py model.pt evaluated on its test split at
    each scale c in scales (Eq. 14) and T-COS beta in betas (Eq. 15): dicts {label, weights, aux, main, hv, ...}."""
    results = os.path.join(path, "results.json")
    if not scales and not betas and os.path.isfile(results):
        with open(results) as f:
            res = json.load(f)
        maximize = "aux_ndcg" in res
        if not maximize and "aux_error" not in res:
            raise ValueError(f"{results} has neither aux_ndcg (ranking) nor aux_error (LLM)")
        return [
            dict(
                label=res["method"],
                weights=res["weights"],
                aux=res["aux_ndcg" if maximize else "aux_error"],
                main=res.get("main_ndcg", res.get("logp_dev_iqr")),
                hv=res.get("hypervolume"),
                maximize=maximize,
                objectives=res["objectives"],
                hv_ref=res.get("hv_ref", [0.0] * len(res["objectives"])),
                main_name="main NDCG@10" if maximize else "IQR of log p - log p0",
            )
        ]
    ckpt = path if path.endswith(".pt") else os.path.join(path, "model.pt")
    trained = TrainedRanker.load(ckpt)
    if betas and trained.method != "tcos":
        raise ValueError(
            f"--betas needs a T-COS checkpoint (Eq. 15); {ckpt} is {trained.method}: use --scales (Eq. 14)"
        )
    test_split = checkpoint_splits(trained, ckpt)["test"]
    test = EvalSplit(test_split, trained.max_docs, idcg_zero=trained.ckpt["run_config"]["idcg_zero"])
    settings = [dict(c=c, label=f"{trained.method} c={c:g}") for c in scales or []]
    settings += [dict(beta=b, label=f"{trained.method} beta={tuple(b)}") for b in betas or []]
    fronts = []
    for s in settings or [dict(label=trained.method)]:
        res = evaluate(trained, test, trained.weights, s.get("c"), s.get("beta"))
        fronts.append(
            dict(
                label=s["label"],
                weights=trained.weights,
                aux=res["aux_ndcg"],
                main=res["main_ndcg"],
                hv=res["hypervolume"],
                maximize=True,
                objectives=trained.objectives,
                hv_ref=[0.0] * len(trained.objectives),
                main_name="main NDCG@10",
            )
        )
    return fronts


def plot_fronts(fronts, pairs, out_path):
    """Scatter each front on each pair of objectives, main objective as colour, non-dominated points joined."""
    import matplotlib.pyplot as plt

    plt.switch_backend("Agg")
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.2 * len(pairs), 4.4), squeeze=False)
    mains = np.concatenate(
        [np.asarray(f["main"], float) for f in fronts if f["main"] is not None] or [np.zeros(1)]
    )
    norm = plt.Normalize(vmin=mains.min(), vmax=max(mains.max(), mains.min() + 1e-9))
    for ax, (a, b) in zip(axes[0], pairs):
        for i, f in enumerate(fronts):
            pts = np.asarray(f["aux"], float)[:, [a, b]]
            keep = non_dominated(pts, maximize=f["maximize"])
            order = np.argsort(pts[keep, 0])
            (line,) = ax.plot(pts[keep][order, 0], pts[keep][order, 1], "-", lw=1, alpha=0.7)
            hv = "n/a" if f["hv"] is None else f"{f['hv']:.4g}"
            colour = line.get_color() if f["main"] is None else np.asarray(f["main"], float)
            ax.scatter(
                pts[:, 0],
                pts[:, 1],
                c=colour,
                cmap="viridis",
                norm=norm,
                marker="os^DvP*Xh<>"[i % 11],
                edgecolors=line.get_color(),
                linewidths=1.2,
                s=46,
                label=f"{f['label']} (HV {hv})",
                zorder=3,
            )
        metric = "NDCG@10 (higher is better)" if fronts[0]["maximize"] else "error (lower is better)"
        ax.set(
            xlabel=f"{fronts[0]['objectives'][a]} {metric}",
            ylabel=f"{fronts[0]['objectives'][b]} {metric.split()[0]}",
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if any(f["main"] is not None for f in fronts):
        fig.colorbar(
            plt.cm.ScalarMappable(norm=norm, cmap="viridis"),
            ax=axes[0].tolist(),
            label=fronts[0]["main_name"],
        )
    fig.savefig(out_path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def write_csv(fronts, path):
    """The plotted numbers: one row per (front, weight), with the non-dominated flag over all objectives."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        names = fronts[0]["objectives"]
        writer.writerow(
            ["front"]
            + [f"{kind}_{n}" for kind in ("w", "aux") for n in names]
            + ["main", "non_dominated", "front_hypervolume"]
        )
        for fr in fronts:
            keep = non_dominated(np.asarray(fr["aux"], float), maximize=fr["maximize"])
            for w, aux, main, nd in zip(fr["weights"], fr["aux"], fr["main"] or itertools.repeat(""), keep):
                writer.writerow([fr["label"]] + list(w) + list(aux) + [main, bool(nd), fr["hv"]])


def objective_index(token, names):
    """0-based index of an objective given by 1-based number, name or (ranking) the paper's numeral."""
    token = token.strip()
    if token.isdigit() and 1 <= int(token) <= len(names):
        return int(token) - 1
    with contextlib.suppress(ValueError):  # a name, or the paper's numeral ("IV") as train_ltr takes it
        return names.index(token if token in names else data.resolve_objectives([token])[0].name)
    raise ValueError(f"unknown objective {token!r}; this run has {names} (or 1..{len(names)})")


def main(argv=None):
    p = argparse.ArgumentParser(description="Plot Pareto fronts from train_ltr.py / train_llm.py runs.")
    p.add_argument("runs", nargs="+", help="run folders (with results.json) or train_ltr.py model.pt files")
    p.add_argument(
        "--out", default="front.png", help="figure path; the numbers go to the same name with .csv"
    )
    p.add_argument("--objectives", default="1,2", help="the two objectives to plot, by name or 1-based index")
    p.add_argument("--all-pairs", action="store_true", help="one panel per pair of objectives (m > 2)")
    p.add_argument(
        "--scales", default=None, help="W-COS: fronts at these temperature scales c (Eq. 14), e.g. 0.5,1,2"
    )
    p.add_argument(
        "--betas", default=None, help="T-COS: fronts at these temperatures (Eq. 15), e.g. '0.9,0.9;1.1,0.9'"
    )
    p.add_argument("--labels", default=None, help="comma-separated legend names, one per run")
    args = p.parse_args(argv)
    # PyTorch's inference fast path: slower on padded CPU lists
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        scales = args.scales and data.parse_floats(args.scales, "scales")
        betas = args.betas and [data.parse_floats(b, "betas") for b in args.betas.split(";") if b.strip()]
        fronts = [f for path in args.runs for f in load_fronts(path, scales, betas)]
        labels = args.labels.split(",") if args.labels else [f["label"] for f in fronts]
        if len(labels) != len(fronts):
            raise ValueError(f"--labels needs one name per front ({len(fronts)}), got {len(labels)}")
        fronts = [dict(f, label=name) for f, name in zip(fronts, labels)]
        names = fronts[0]["objectives"]
        if any(f["objectives"] != names or f["maximize"] != fronts[0]["maximize"] for f in fronts):
            raise ValueError(
                "all runs must have the same objectives (and task) to share a plot: "
                + "; ".join(f"{f['label']}: {f['objectives']}" for f in fronts)
            )
        if len(names) < 2:
            raise ValueError("a front needs at least two objectives")
        pairs = [tuple(objective_index(t, names) for t in args.objectives.split(","))]
        if len(pairs[0]) != 2 or pairs[0][0] == pairs[0][1]:
            raise ValueError(f"--objectives must name two different objectives, got {args.objectives!r}")
        if args.all_pairs:
            pairs = list(itertools.combinations(range(len(names)), 2))
        plot_fronts(fronts, pairs, args.out)
        csv_path = os.path.splitext(args.out)[0] + ".csv"
        write_csv(fronts, csv_path)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for f in fronts:
        hv = "n/a" if f["hv"] is None else f"{f['hv']:.4e}"
        line = f"{f['label']}: hypervolume {hv} (ref {f['hv_ref']})"
        if f["main"] is not None:
            line += f" | {f['main_name']} {np.mean(f['main']):.4f} +/- {np.std(f['main']):.4f}"
        print(line)
    print(f"wrote {args.out} and {csv_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
