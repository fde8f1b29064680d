"""Judging Pareto fronts: NDCG@k, non-domination, exact hypervolume, evaluation weights.

This module holds the metrics that turn a set of trained models (or one COS-DPO model queried at
several weights w) into numbers a reader can compare with the paper:

- `ndcg_at_k`      per-query NDCG@k with linear gains (Eq. 22, App. A.4), vectorised over the batch.
- `non_dominated`  which points of a front no other point dominates.
- `hypervolume`    exact dominated hypervolume for any number of objectives (Eq. 20-21, App. A.3).
- `weight_grid`    the evaluation weights: the paper's 11-point grid for m = 2 (Sec. 4) and a fixed,
                   seeded set for m > 2 (our choice; the paper does not list its 5-objective weights).

Train scripts import these; the bottom of the file plots fronts from saved runs and checkpoints and has
a small command line (`python pareto.py RUN_DIR_OR_CHECKPOINT ...`). Only numpy and torch are imported here; matplotlib is imported lazily by the
plotting part.

Tests:     python -m pytest tests/test_pareto_metrics.py -q
Benchmark: python benchmarks/bench_pareto.py
"""
import numpy as np
import torch


# ---- NDCG@k (Eq. 22) ----

def ndcg_at_k(scores, gains, k=10, mask=None, idcg_zero=0.0, ties="average"):
    """Per-query NDCG@k with linear gains (paper Eq. 22, App. A.4).

    DCG@k = sum_{rank=1..k} gain_(rank) / log2(rank + 1), items ordered by decreasing score;
    NDCG@k = DCG@k / DCG@k of the ideal ordering (items sorted by gain). Gains are LINEAR: the label
    values themselves (not 2^z - 1 as in allRank's default). The paper then averages over queries; this
    function returns the per-query values so the caller can choose how (mean, or nanmean, see below).

    Args:
        scores: (B, n) model scores, higher = ranked earlier; torch tensor or numpy array.
        gains:  (B, n) non-negative labels z^j of one objective (same kind or any array-like).
        k:      cut-off, int >= 1; k > n is fine (the whole list counts).
        mask:   optional (B, n) bool, True = real item. Padded items are not part of the list at all:
                their scores and gains are ignored and they take no rank.
        idcg_zero: value for queries whose ideal DCG is 0 (no item with positive gain; NDCG undefined).
                Default 0.0, as allRank's current metrics.py and TF-Ranking; pass float("nan") to mark
                such queries and skip them with nanmean; LightGBM instead counts them as 1.0.
        ties:   how to rank items with equal scores. "average" (default): the expected DCG over a
                uniformly random order inside each tie group (as sklearn's ndcg_score with
                ignore_ties=False), so a constant scorer is not rewarded for the data's item order.
                "first": ties broken by item index (stable sort), cheaper to explain, order-dependent.
                Ties are exact float equality.

    Returns:
        (B,) float64 NDCG values, a torch tensor on scores' device if `scores` is a tensor, else numpy.
        Not differentiable (inputs are detached).
    """
    s, g, valid = _check_ndcg_inputs(scores, gains, k, mask, ties)     # (B, n) f64, f64, bool
    B, n = s.shape
    pos = torch.arange(n, device=s.device, dtype=torch.float64)        # (n,) 0-based rank
    disc = torch.where(pos < k, 1.0 / torch.log2(pos + 2.0), torch.zeros_like(pos))  # (n,) 0 past k

    order = _rank_order(s, valid)                                        # (B, n) best item first
    g_ranked = g.gather(1, order)                                        # (B, n)
    if ties == "average":
        d = _tie_averaged_discounts(s.gather(1, order), valid.gather(1, order), disc)  # (B, n)
    else:
        d = disc.expand(B, n)
    dcg = (g_ranked * d).sum(dim=1)                                      # (B,)
    idcg = (g.sort(dim=1, descending=True).values * disc).sum(dim=1)    # (B,) ideal ordering
    has_gain = idcg > 0
    out = torch.where(has_gain, dcg / torch.where(has_gain, idcg, torch.ones_like(idcg)),
                      torch.full_like(idcg, float(idcg_zero)))
    return out if isinstance(scores, torch.Tensor) else out.cpu().numpy()


def _check_ndcg_inputs(scores, gains, k, mask, ties):
    """Validate ndcg_at_k's arguments; return float64 scores, gains (0 on padding) and bool mask."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    if ties not in ("average", "first"):
        raise ValueError(f"ties must be 'average' or 'first', got {ties!r}")
    device = scores.device if isinstance(scores, torch.Tensor) else None
    s = _as_tensor(scores, torch.float64, device)
    if s.ndim != 2:
        raise ValueError(f"scores must be 2-D (B, n) (one row per query), got shape {tuple(s.shape)}")
    g = _as_tensor(gains, torch.float64, s.device)
    if g.shape != s.shape:
        raise ValueError(f"gains must have the shape of scores {tuple(s.shape)}, got {tuple(g.shape)}")
    if mask is None:
        valid = torch.ones_like(s, dtype=torch.bool)
    else:
        valid = _as_tensor(mask, None, s.device)
        if valid.dtype != torch.bool or valid.shape != s.shape:
            raise ValueError(f"mask must be a bool array of shape {tuple(s.shape)} (True = real item), "
                             f"got dtype {valid.dtype} and shape {tuple(valid.shape)}")
    if torch.isnan(s[valid]).any():
        raise ValueError("scores must not be NaN on real (unmasked) items")
    real_g = g[valid]
    if not torch.isfinite(real_g).all() or (real_g < 0).any():
        raise ValueError("gains must be finite and non-negative on real items (linear gains, Eq. 22)")
    # padded items: zero gain, and a harmless score so that NaN padding cannot upset the sort
    return torch.where(valid, s, torch.zeros_like(s)), torch.where(valid, g, torch.zeros_like(g)), valid


def _as_tensor(x, dtype, device):
    """torch.as_tensor that also accepts numpy arrays and nested lists; detaches tensors."""
    if isinstance(x, torch.Tensor):
        x = x.detach()
    else:
        x = torch.as_tensor(np.ascontiguousarray(x))                   # also lists, reversed views
    return x.to(device=device, dtype=dtype) if dtype is not None else x.to(device=device)


def _rank_order(s, valid):
    """(B, n) item indices by decreasing score, ties by index, padded items last."""
    order = torch.sort(s, dim=1, descending=True, stable=True).indices       # (B, n)
    is_pad = (~valid.gather(1, order)).to(torch.uint8)                        # (B, n) 1 = padding
    return order.gather(1, torch.sort(is_pad, dim=1, stable=True).indices)    # stable: keeps score order


def _tie_averaged_discounts(s_ranked, valid_ranked, disc):
    """Replace each rank's discount by the mean discount over the ranks its tie group occupies.

    The expected discount of an item placed uniformly at random among its group's positions is that
    mean, so sum(gain * mean discount) is the expected DCG over random tie-breaking. Discounts past k
    are 0, so a group straddling rank k gets the fraction of it that lands in the top k.
    """
    B, n = s_ranked.shape
    starts = torch.ones_like(valid_ranked)                                    # (B, n) new group here?
    starts[:, 1:] = (s_ranked[:, 1:] != s_ranked[:, :-1]) | (valid_ranked[:, 1:] != valid_ranked[:, :-1])
    group = starts.long().cumsum(dim=1) - 1                                   # (B, n) group id per rank
    d = disc.expand(B, n)
    disc_sum = torch.zeros_like(d).scatter_add_(1, group, d)                  # (B, n) per group id
    size = torch.zeros_like(d).scatter_add_(1, group, torch.ones_like(d))     # (B, n) per group id
    return (disc_sum / size.clamp_min(1.0)).gather(1, group)                  # (B, n) per rank


# ---- Pareto dominance and hypervolume (App. A.3, Eq. 20-21) ----

def non_dominated(points, maximize=True):
    """Which points of a front are not dominated by any other point.

    p dominates q when p is at least as good in every objective and strictly better in one
    (maximize=True: "good" = larger). Exact duplicates do not dominate each other, so both stay True.

    Args:
        points: (P, m) numpy array, torch tensor or nested list; no NaN.
        maximize: True if larger is better in every objective, False if smaller is.
    Returns:
        (P,) bool, True = non-dominated; a torch tensor on points' device if points is a tensor,
        else a numpy array. All pairs are compared at once: O(P^2 m) time and memory, fine for fronts
        of up to a few thousand points.
    """
    pts = _check_points(points, allow_inf=True)
    keep = ~_dominated(pts if maximize else -pts)
    return torch.from_numpy(keep).to(points.device) if isinstance(points, torch.Tensor) else keep


def hypervolume(points, ref, maximize=True):
    """Exact hypervolume of the region dominated by `points` and bounded by `ref` (Eq. 20 / Eq. 21).

    Maximisation (Eq. 20): volume of {x >= ref : some p >= x}; minimisation (Eq. 21) mirrors it.
    Points with a coordinate worse than ref add nothing and are dropped, so are dominated points.
    The paper uses ref = 0 with NDCG (maximise) and ref = (1.1, 1.1) with LLM errors (minimise).

    Algorithm: WFG-style exclusive-volume recursion (While, Bradstreet & Barone, IEEE TEC 2012).
    With the points sorted by increasing last objective, HV(S) = sum_i vol(p_i excluding later points),
    and p_i's exclusive volume is p_i[-1] * (vol(p_i[:-1]) - HV_{m-1}(later points clipped to p_i's
    box, non-dominated ones only)); 2-D is a direct sweep. Cost: polynomial, O(m P^m) numpy work in
    the worst case (P points, m objectives); clipping and non-dominated filtering shrink the sets fast
    in practice: on the project's 2-core CPU, 11 points in 5-D take about 0.7 ms, 50 points in 5-D
    about 11 ms, 100 in 5-D about 45 ms (benchmarks/bench_pareto.py). Memory O(P^2 m) per step.

    Args:
        points: (P, m) array-like (numpy, torch, nested list), m >= 1, finite.
        ref: (m,) reference point, finite; at least one point must weakly dominate it.
        maximize: True if larger is better (Eq. 20), False if smaller is better (Eq. 21).
    Returns:
        Python float.
    """
    pts = _check_points(points, allow_inf=False)                    # (P, m)
    r = _check_ref(ref, pts.shape[1])                               # (m,)
    q = (pts - r) if maximize else (r - pts)                        # (P, m) ref at origin, larger better
    if not np.all(q >= 0, axis=1).any():
        raise ValueError(f"no point weakly dominates the reference point ref={r.tolist()} "
                         f"({'maximize' if maximize else 'minimize'}); choose a worse ref")
    q = q[np.all(q > 0, axis=1)]                                    # a zero-width box has no volume
    if q.shape[1] > 2:                                              # the 1-D/2-D sweeps need no filter,
        q = _unique_front(q)                                        # so big 2-D fronts stay O(P log P)
    return float(_hv_wfg(q))


def _check_points(points, allow_inf):
    """(P, m) float64 numpy array from an array-like; ValueError on bad shape or values."""
    if isinstance(points, torch.Tensor):
        points = points.detach().cpu().numpy()
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] < 1:
        raise ValueError(f"points must be 2-D (P, m) with m >= 1, got shape {pts.shape}")
    bad = np.isnan(pts) if allow_inf else ~np.isfinite(pts)
    if bad.any():
        raise ValueError(f"points must be {'free of NaN' if allow_inf else 'finite'}, "
                         f"got {int(bad.sum())} bad entries")
    return pts


def _check_ref(ref, m):
    """(m,) float64 numpy reference point; ValueError on wrong shape or non-finite values."""
    if isinstance(ref, torch.Tensor):
        ref = ref.detach().cpu().numpy()
    r = np.asarray(ref, dtype=np.float64)
    if r.shape != (m,):
        raise ValueError(f"ref must have shape ({m},) to match points (P, {m}), got {r.shape}")
    if not np.isfinite(r).all():
        raise ValueError(f"ref must be finite, got {r.tolist()}")
    return r


def _dominated(pts):
    """(P,) bool: dominated by some other point, larger = better; duplicates don't dominate."""
    ge = np.all(pts[None, :, :] >= pts[:, None, :], axis=2)        # (P, P) [i, j]: p_j >= p_i everywhere
    return np.any(ge & ~ge.T, axis=1)                               # ... and p_i >= p_j fails somewhere


def _unique_front(q):
    """Non-dominated rows of q (larger = better), exact duplicates kept once."""
    if len(q) < 2:
        return q
    ge = np.all(q[None, :, :] >= q[:, None, :], axis=2)            # (P, P) as in _dominated
    dominated = np.any(ge & ~ge.T, axis=1)
    repeat = np.any(np.tril(ge & ge.T, -1), axis=1)                # equal to an earlier row
    return q[~(dominated | repeat)]


def _hv_wfg(q):
    """Hypervolume of positive points q (P, m) w.r.t. the origin (WFG-style recursion).

    Any set gives the right value; removing dominated and repeated points first (as the callers do
    for m > 2) only saves time.

    HV(S) = sum_i exclusive volume of p_i w.r.t. the points after it, with the points sorted by
    INCREASING last objective. Then every later point, clipped to p_i's box, has last coordinate
    exactly p_i[-1], so the volume p_i covers and no later point does is
    p_i[-1] * (vol(p_i[:-1]) - HV_{m-1}(clipped later points[:, :-1])): one dimension less.
    """
    P, m = q.shape
    if P == 0:
        return 0.0
    if P == 1:
        return float(np.prod(q[0]))
    if m == 1:
        return float(q.max())
    if m == 2:
        return _hv_2d(q)
    q = q[np.argsort(q[:, -1], kind="stable")]                      # worst in last objective first
    total = 0.0
    for i in range(P):
        limited = np.minimum(q[i + 1:, :-1], q[i, :-1])             # (P-i-1, m-1) later boxes, clipped
        exclusive = float(np.prod(q[i, :-1])) - _hv_wfg(_unique_front(limited))
        total += q[i, -1] * exclusive
    return total


def _hv_2d(q):
    """2-D sweep: sort by x descending; each x-slice (x_k+1, x_k] is covered up to the best y so far."""
    q = q[np.argsort(-q[:, 0], kind="stable")]                      # (P, 2)
    widths = q[:, 0] - np.append(q[1:, 0], 0.0)                     # (P,) slice widths
    return float(np.sum(widths * np.maximum.accumulate(q[:, 1])))


# ---- evaluation weights (Sec. 4) ----

def weight_grid(m, num=11, seed=0):
    """The evaluation weights w, one per row, each on the simplex (sum 1, entries >= 0).

    m == 2: the paper's grid w = (t, 1 - t), t = 0, 1/(num-1), ..., 1 (Sec. 4: t = 0, 0.1, ..., 1),
            rows in order of increasing t; needs num >= 2 (both end points).
    m > 2:  our choice, the paper does not say which 11 weights it used: the unit vectors e_1..e_m,
            then the centroid (1/m, ..., 1/m), then num - m - 1 draws from Dirichlet(1, ..., 1) with
            np.random.default_rng(seed). Needs num >= m + 1 (ValueError otherwise). A smaller grid is
            a prefix of a larger one with the same seed. numpy does not promise its random streams
            across versions, so save the grid with the results (SPEC section 6).
    m == 1: the simplex is the single point [1.0]; returns [[1.0]] and needs num == 1.

    Returns:
        (num, m) float64 numpy array.
    """
    for name, value, low in (("m", m, 1), ("num", num, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if m == 1:
        if num != 1:
            raise ValueError(f"num must be 1 for m = 1 (the simplex is the single point [1.0]), got {num}")
        return np.ones((1, 1))
    need = 2 if m == 2 else m + 1                                    # m == 2: both end points
    if num < need:
        raise ValueError(f"num must be at least {need} for m = {m} (see weight_grid's docstring), got {num}")
    if m == 2:
        t = np.linspace(0.0, 1.0, num)                               # (num,)
        return np.stack([t, 1.0 - t], axis=1)
    rng = np.random.default_rng(seed)
    draws = rng.dirichlet(np.ones(m), size=num - m - 1)              # (num - m - 1, m)
    return np.concatenate([np.eye(m), np.full((1, m), 1.0 / m), draws], axis=0)


# ---- plotting and command line ----
#
#   python pareto.py RUN_DIR_OR_CHECKPOINT [...] [--out front.png] [--objectives I,II] [--all-pairs]
#                    [--scales 0.5,1,2] [--betas "0.9,0.9;1.1,0.9"] [--labels a,b]
#
# A run folder is read from its results.json (train_ltr.py or train_llm.py); a model.pt of train_ltr.py
# (or --scales / --betas, which need new evaluations) is evaluated on its test split. The plotted numbers
# are also written as CSV next to the figure.

def load_fronts(path, scales=None, betas=None):
    """The fronts of one run: a list of dicts {label, weights, aux, main, hv, maximize, objectives, hv_ref}.

    path: a run folder with results.json, or a train_ltr.py model.pt (evaluated on its test split).
    scales: temperature scales c (Eq. 14) and betas: T-COS temperatures (Eq. 15), each one front.
    """
    import json
    import os

    folder = path if os.path.isdir(path) else os.path.dirname(path)
    results_path = os.path.join(folder, "results.json")
    if not scales and not betas and os.path.isdir(path) and os.path.exists(results_path):
        with open(results_path) as f:
            res = json.load(f)
        maximize = "aux_ndcg" in res
        if not maximize and "aux_error" not in res:
            raise ValueError(f"{results_path} has neither aux_ndcg (ranking) nor aux_error (LLM)")
        return [dict(label=res["method"], weights=res["weights"], aux=res["aux_ndcg" if maximize else "aux_error"],
                     main=res.get("main_ndcg", res.get("logp_dev_iqr")), hv=res.get("hypervolume"),
                     maximize=maximize, objectives=res["objectives"],
                     hv_ref=res.get("hv_ref", [0.0] * len(res["objectives"])),
                     main_name="main NDCG@10" if maximize else "IQR of log p - log p0")]
    ckpt = path if path.endswith(".pt") else os.path.join(path, "model.pt")
    import train_ltr  # lazy: the metrics above must not depend on the training code

    trained = train_ltr.TrainedRanker.load(ckpt)
    if betas and trained.method != "tcos":
        raise ValueError(f"--betas needs a T-COS checkpoint (Eq. 15); {ckpt} is {trained.method}: use --scales (Eq. 14)")
    cfg = trained.ckpt["run_config"]
    splits, stats = train_ltr.data_lib.load_ltr(cfg["data_dir"], cfg["fold"], trained.objectives)
    if stats["fingerprint"] != trained.ckpt["data_fingerprint"]:
        raise ValueError(f"{ckpt} was trained on other data than {cfg['data_dir']}")
    m = len(trained.objectives)
    settings = [dict(c=c, label=f"{trained.method} c={c:g}") for c in (scales or [])]
    settings += [dict(beta=b, label=f"{trained.method} beta={tuple(b)}") for b in (betas or [])]
    fronts = []
    for s in settings or [dict(label=trained.method)]:
        res = train_ltr.evaluate(trained, splits["test"], trained.ckpt["weights"], c=s.get("c"), beta=s.get("beta"),
                                 idcg_zero=cfg["idcg_zero"])
        fronts.append(dict(label=s["label"], weights=trained.ckpt["weights"], aux=res["aux_ndcg"],
                           main=res["main_ndcg"], hv=res["hypervolume"], maximize=True,
                           objectives=trained.objectives, hv_ref=[0.0] * m, main_name="main NDCG@10"))
    return fronts


def plot_fronts(fronts, pairs, out_path):
    """Scatter each front on each pair of objectives, main objective as colour, non-dominated points joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = fronts[0]["objectives"]
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.2 * len(pairs), 4.4), squeeze=False)
    mains = np.concatenate([np.asarray(f["main"], float) for f in fronts if f["main"] is not None] or [np.zeros(1)])
    norm = matplotlib.colors.Normalize(vmin=mains.min(), vmax=max(mains.max(), mains.min() + 1e-9))
    markers = "os^DvP*Xh<>"
    for ax, (a, b) in zip(axes[0], pairs):
        for i, f in enumerate(fronts):
            pts = np.asarray(f["aux"], float)[:, [a, b]]
            keep = non_dominated(pts, maximize=f["maximize"])
            order = np.argsort(pts[keep, 0])
            line, = ax.plot(pts[keep][order, 0], pts[keep][order, 1], "-", lw=1, alpha=0.7)
            hv = "n/a" if f["hv"] is None else f"{f['hv']:.4g}"
            colour = None if f["main"] is None else np.asarray(f["main"], float)
            ax.scatter(pts[:, 0], pts[:, 1], c=colour if colour is not None else line.get_color(), cmap="viridis",
                       norm=norm, marker=markers[i % len(markers)], edgecolors=line.get_color(), linewidths=1.2,
                       s=46, label=f"{f['label']} (HV {hv})", zorder=3)
        arrow = "higher is better" if fronts[0]["maximize"] else "lower is better"
        metric = "NDCG@10" if fronts[0]["maximize"] else "error"
        ax.set_xlabel(f"{names[a]} {metric} ({arrow})")
        ax.set_ylabel(f"{names[b]} {metric}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if any(f["main"] is not None for f in fronts):
        fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap="viridis"), ax=axes[0].tolist(),
                     label=fronts[0]["main_name"])
    fig.savefig(out_path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def write_csv(fronts, path):
    """The plotted numbers: one row per (front, weight), with the non-dominated flag over all objectives."""
    import csv
    import os

    names = fronts[0]["objectives"]
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["front"] + [f"w_{n}" for n in names] + [f"aux_{n}" for n in names]
                        + ["main", "non_dominated", "front_hypervolume"])
        for fr in fronts:
            keep = non_dominated(np.asarray(fr["aux"], float), maximize=fr["maximize"])
            for i, (w, aux) in enumerate(zip(fr["weights"], fr["aux"])):
                main = "" if fr["main"] is None else fr["main"][i]
                writer.writerow([fr["label"]] + list(w) + list(aux) + [main, bool(keep[i]), fr["hv"]])
    os.replace(tmp, path)


def _parse_vectors(text, name):
    try:
        return [[float(v) for v in part.split(",")] for part in text.split(";") if part.strip()]
    except ValueError:
        raise ValueError(f"--{name} must look like 0.5,1,2 (scales) or '0.9,0.9;1.1,0.9' (betas), got {text!r}") from None


def main(argv=None):
    import argparse
    import itertools
    import os
    import sys

    p = argparse.ArgumentParser(description="Plot Pareto fronts from train_ltr.py / train_llm.py runs.")
    p.add_argument("runs", nargs="+", help="run folders (with results.json) or train_ltr.py model.pt files")
    p.add_argument("--out", default="front.png", help="figure path; the numbers go to the same name with .csv")
    p.add_argument("--objectives", default=None, help="the two objectives to plot, by name or 1-based index "
                   "(default: the first two)")
    p.add_argument("--all-pairs", action="store_true", help="one panel per pair of objectives (m > 2)")
    p.add_argument("--scales", default=None, help="W-COS: fronts at these temperature scales c (Eq. 14), e.g. 0.5,1,2")
    p.add_argument("--betas", default=None, help="T-COS: fronts at these temperatures (Eq. 15), e.g. '0.9,0.9;1.1,0.9'")
    p.add_argument("--labels", default=None, help="comma-separated legend names, one per run")
    args = p.parse_args(argv)
    try:
        scales = None if args.scales is None else [v for row in _parse_vectors(args.scales, "scales") for v in row]
        betas = None if args.betas is None else _parse_vectors(args.betas, "betas")
        if scales is not None and any(not (c > 0) for c in scales):
            raise ValueError(f"--scales must be > 0, got {args.scales}")
        if betas is not None and any(not (b > 0) for row in betas for b in row):
            raise ValueError(f"--betas must be > 0, got {args.betas}")
        fronts = []
        for path in args.runs:
            if not os.path.exists(path):
                raise FileNotFoundError(f"{path} does not exist (expected a run folder or a model.pt)")
            fronts += load_fronts(path, scales, betas)
        if args.labels:
            labels = args.labels.split(",")
            if len(labels) != len(args.runs) or len(fronts) != len(args.runs):
                raise ValueError(f"--labels needs one name per run ({len(args.runs)}), got {len(labels)}")
            for f, name in zip(fronts, labels):
                f["label"] = name
        names = fronts[0]["objectives"]
        if any(f["objectives"] != names or f["maximize"] != fronts[0]["maximize"] for f in fronts):
            raise ValueError("all runs must have the same objectives (and task) to share a plot: "
                             + "; ".join(f"{f['label']}: {f['objectives']}" for f in fronts))
        m = len(names)
        if m < 2:
            raise ValueError("a front needs at least two objectives")
        if args.all_pairs:
            pairs = list(itertools.combinations(range(m), 2))
        elif args.objectives:
            pairs = [tuple(_objective_index(t, names) for t in args.objectives.split(","))]
            if len(pairs[0]) != 2 or pairs[0][0] == pairs[0][1]:
                raise ValueError(f"--objectives must name two different objectives, got {args.objectives!r}")
        else:
            pairs = [(0, 1)]
        plot_fronts(fronts, pairs, args.out)
        csv_path = os.path.splitext(args.out)[0] + ".csv"
        write_csv(fronts, csv_path)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for f in fronts:
        hv = "n/a" if f["hv"] is None else f"{f['hv']:.4e}"
        main = "" if f["main"] is None else f" | {f['main_name']} {np.mean(f['main']):.4f} +/- {np.std(f['main']):.4f}"
        print(f"{f['label']}: hypervolume {hv} (ref {f['hv_ref']}){main}")
    print(f"wrote {args.out} and {csv_path}")
    return 0


def _objective_index(token, names):
    token = token.strip()
    if token.isdigit() and 1 <= int(token) <= len(names):
        return int(token) - 1
    if token in names:
        return names.index(token)
    try:  # a ranking objective by the paper's numbering ("IV"), as train_ltr.py --objectives takes it
        import data

        name = data.resolve_objectives([token])[0].name
    except ValueError:
        name = None
    if name in names:
        return names.index(name)
    raise ValueError(f"unknown objective {token!r}; this run has {names} (or 1..{len(names)})")


if __name__ == "__main__":
    raise SystemExit(main())
