"""Tests for the metrics in pareto.py: NDCG@k (Eq. 22), non-domination, hypervolume (Eq. 20-21),
and the evaluation weight grid. Hand computations are written out in comments; the vectorised code is
compared with naive Python loops (NDCG), brute-force inclusion-exclusion and Monte Carlo (hypervolume).

Run: python -m pytest tests/test_pareto_metrics.py -q
"""

import ast
import itertools
import math
import os

import numpy as np
import pytest
import torch

import data
from pareto import EvalSplit, hypervolume, ndcg_at_k, non_dominated, weight_grid

L3 = math.log2(3)  # discount of rank 2 is 1 / log2(3) = 0.6309...


def ndcg1(scores, gains, **kw):
    """NDCG of a single list given as Python lists (numpy in, numpy out)."""
    out = ndcg_at_k(np.array([scores], dtype=float), np.array([gains], dtype=float), **kw)
    assert isinstance(out, np.ndarray) and out.shape == (1,)
    return float(out[0])


# ---------------------------------------------------------------- ndcg_at_k: hand computations


def test_ndcg_simple_list():
    # ranking by score: gains 0, 1, 2 at ranks 1, 2, 3
    # DCG  = 0/1 + 1/log2(3) + 2/log2(4) = 0.6309 + 1.0
    # IDCG = 2/1 + 1/log2(3) + 0/log2(4) = 2.0 + 0.6309
    expected = (1 / L3 + 2 / 2) / (2 + 1 / L3)  # 0.61991
    assert ndcg1([3, 2, 1], [0, 1, 2]) == pytest.approx(expected, rel=1e-12)
    assert ndcg1([1, 2, 3], [0, 1, 2]) == pytest.approx(1.0)  # perfect order


def test_ndcg_linear_gains_and_ties_in_gains():
    # gains 1, 2, 2, 0 at ranks 1..4 (linear gains: a label of 2 counts 2, not 2^2 - 1 = 3)
    # DCG  = 1 + 2/log2(3) + 2/2 + 0           = 2 + 2/log2(3)
    # IDCG = 2 + 2/log2(3) + 1/2 + 0 (tied gains: either 2 first, same value)
    expected = (2 + 2 / L3) / (2.5 + 2 / L3)  # 0.86709
    assert ndcg1([4, 3, 2, 1], [1, 2, 2, 0]) == pytest.approx(expected, rel=1e-12)


def test_ndcg_cutoff_k_smaller_and_larger_than_n():
    scores, gains = [4, 3, 2, 1], [1, 0, 3, 2]
    # k = 2: DCG@2 = 1/1 + 0 = 1; IDCG@2 = 3/1 + 2/log2(3)
    assert ndcg1(scores, gains, k=2) == pytest.approx(1 / (3 + 2 / L3), rel=1e-12)  # 0.23464
    # k = 4 (whole list): DCG = 1 + 0 + 3/2 + 2/log2(5); IDCG = 3 + 2/log2(3) + 1/2 + 0
    full = (1 + 1.5 + 2 / math.log2(5)) / (3.5 + 2 / L3)  # 0.70589
    assert ndcg1(scores, gains, k=4) == pytest.approx(full, rel=1e-12)
    assert ndcg1(scores, gains, k=100) == pytest.approx(full, rel=1e-12)  # k > n: whole list


def test_ndcg_ties_in_scores_average_and_first():
    # items 0 and 1 tie at the top (score 1), item 2 below; gains 2, 0, 1.
    # order (0, 1, 2): DCG = 2/1 + 0/log2(3) + 1/2 = 2.5
    # order (1, 0, 2): DCG = 0/1 + 2/log2(3) + 1/2 = 2/log2(3) + 0.5
    # IDCG = 2 + 1/log2(3)
    idcg = 2 + 1 / L3
    average = ((2.5) + (2 / L3 + 0.5)) / 2 / idcg  # 0.80996: mean over both orders
    assert ndcg1([1, 1, 0], [2, 0, 1]) == pytest.approx(average, rel=1e-12)
    assert ndcg1([1, 1, 0], [2, 0, 1], ties="first") == pytest.approx(2.5 / idcg, rel=1e-12)
    # "first" breaks ties by item index: swapping the two tied items changes the value ...
    assert ndcg1([1, 1, 0], [0, 2, 1], ties="first") == pytest.approx((2 / L3 + 0.5) / idcg)
    # ... while "average" does not depend on the order of the tied items
    assert ndcg1([1, 1, 0], [0, 2, 1]) == pytest.approx(average, rel=1e-12)


def test_ndcg_tie_group_straddling_the_cutoff():
    # item 0 (gain 0) alone at rank 1; items 1-3 tie for ranks 2-4, only item 1 has gain 3; k = 2.
    # average: item 1 lands on rank 2 with probability 1/3 -> DCG@2 = 3 * (1/log2(3)) / 3 = 1/log2(3)
    #          (ranks 3, 4 have discount 0 at k = 2); IDCG@2 = 3/1 = 3
    assert ndcg1([5, 1, 1, 1], [0, 3, 0, 0], k=2) == pytest.approx((1 / L3) / 3, rel=1e-12)
    # first: item 1 is at rank 2 -> DCG@2 = 3/log2(3)
    assert ndcg1([5, 1, 1, 1], [0, 3, 0, 0], k=2, ties="first") == pytest.approx(1 / L3, rel=1e-12)


def test_ndcg_padding_is_not_part_of_the_list():
    base = ndcg1([3, 2, 1], [0, 1, 2])
    mask = np.array([[True, True, True, False]])
    # a padded item with a huge score and a huge gain would dominate both DCG and IDCG if counted
    out = ndcg_at_k(np.array([[3.0, 2, 1, 1e9]]), np.array([[0.0, 1, 2, 1e9]]), mask=mask)
    assert out[0] == pytest.approx(base, rel=1e-12)
    # NaN padding is fine too: padded values are never looked at
    out = ndcg_at_k(np.array([[3.0, 2, 1, np.nan]]), np.array([[0.0, 1, 2, np.nan]]), mask=mask)
    assert out[0] == pytest.approx(base, rel=1e-12)


def test_ndcg_padded_item_does_not_join_a_tie_group():
    # real items 0, 1 tie (score 1), gains 1, 0; a padded item also has score 1.
    # average over the two real orders: DCG = (1/1 + 1/log2(3)) / 2; IDCG = 1
    # (if the pad joined the group, item 0's discount would be averaged over 3 ranks instead)
    out = ndcg_at_k(
        np.array([[1.0, 1.0, 1.0]]), np.array([[1.0, 0.0, 5.0]]), mask=np.array([[True, True, False]])
    )
    assert out[0] == pytest.approx((1 + 1 / L3) / 2, rel=1e-12)


def test_ndcg_idcg_zero_convention():
    scores = np.array([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0], [3.0, 2.0, 1.0]])
    gains = np.array([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 4.0]])
    mask = np.array([[True, True, True], [True, True, True], [True, True, False]])
    # row 0: no positive gain; row 2: its only positive gain is padded -> both have IDCG = 0
    out = ndcg_at_k(scores, gains, mask=mask)
    np.testing.assert_allclose(out, [0.0, 1 / L3, 0.0], rtol=1e-12)  # default idcg_zero = 0.0
    out = ndcg_at_k(scores, gains, mask=mask, idcg_zero=float("nan"))
    assert np.isnan(out[0]) and np.isnan(out[2]) and out[1] == pytest.approx(1 / L3)
    assert np.nanmean(out) == pytest.approx(1 / L3)  # "skip" convention
    out = ndcg_at_k(scores, gains, mask=mask, idcg_zero=1.0)  # LightGBM's convention
    np.testing.assert_allclose(out, [1.0, 1 / L3, 1.0], rtol=1e-12)


def test_ndcg_returns_the_kind_it_was_given():
    s, g = [[3.0, 2.0, 1.0]], [[0.0, 1.0, 2.0]]
    out_np = ndcg_at_k(np.array(s), np.array(g))
    out_t = ndcg_at_k(torch.tensor(s, dtype=torch.float32, requires_grad=True), torch.tensor(g))
    assert isinstance(out_np, np.ndarray) and out_np.shape == (1,)
    assert isinstance(out_t, torch.Tensor) and out_t.shape == (1,) and out_t.dtype == torch.float64
    assert out_t.item() == pytest.approx(out_np[0], rel=1e-12)
    # torch scores with numpy gains and a torch mask also work
    out_mix = ndcg_at_k(torch.tensor(s), np.array(g), mask=torch.ones(1, 3, dtype=torch.bool))
    assert isinstance(out_mix, torch.Tensor) and out_mix.item() == pytest.approx(out_np[0])


# ---------------------------------------------------------------- ndcg_at_k: vectorised vs naive


def naive_ndcg(scores, gains, length, k, ties, idcg_zero):
    """One query in plain Python: the first `length` items are real.

    ties="first": sort by (-score, index). ties="average": enumerate every permutation of the items
    and average the DCG over those whose scores are non-increasing (each tie-breaking order is one
    of them, all equally likely).
    """
    items = list(range(length))

    def dcg(order):
        return sum(gains[i] / math.log2(rank + 2) for rank, i in enumerate(order) if rank < k)

    ideal = dcg(sorted(items, key=lambda i: -gains[i]))
    if ideal == 0:
        return idcg_zero
    if ties == "first":
        return dcg(sorted(items, key=lambda i: (-scores[i], i))) / ideal
    valid = [
        p
        for p in itertools.permutations(items)
        if all(scores[p[r]] >= scores[p[r + 1]] for r in range(len(p) - 1))
    ]
    return sum(dcg(p) for p in valid) / len(valid) / ideal


@pytest.mark.parametrize("ties", ["average", "first"])
def test_ndcg_vectorised_matches_naive_loop(ties):
    rng = np.random.default_rng(0)
    B, n = 40, 6
    scores = rng.integers(0, 3, size=(B, n)).astype(float)  # few values -> many ties
    gains = rng.integers(0, 4, size=(B, n)).astype(float)
    lengths = rng.integers(0, n + 1, size=B)  # includes empty lists
    mask = np.arange(n)[None, :] < lengths[:, None]  # (B, n) real items first
    scores[~mask] = 99.0  # padding that would win if counted
    gains[~mask] = 7.0
    for k in (1, 3, 10):
        out = ndcg_at_k(scores, gains, k=k, mask=mask, ties=ties, idcg_zero=-1.0)
        expected = [naive_ndcg(scores[b], gains[b], lengths[b], k, ties, -1.0) for b in range(B)]
        np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
        # the torch path gives the same numbers
        out_t = ndcg_at_k(
            torch.tensor(scores), torch.tensor(gains), k=k, mask=torch.tensor(mask), ties=ties, idcg_zero=-1.0
        )
        np.testing.assert_allclose(out_t.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_ndcg_several_objectives_share_one_sort_and_evalsplit_is_the_per_query_mean():
    rng = np.random.default_rng(1)
    B, n, m = 30, 6, 3
    scores = rng.integers(0, 3, size=(B, n)).astype(float)
    gains = rng.integers(0, 4, size=(B, n, m)).astype(float)
    mask = np.arange(n)[None, :] < rng.integers(1, n + 1, size=B)[:, None]
    out = ndcg_at_k(scores, gains, k=3, mask=mask)  # (B, m): one sort of the scores for all m columns
    assert out.shape == (B, m)
    for j in range(m):
        np.testing.assert_allclose(out[:, j], ndcg_at_k(scores, gains[..., j], k=3, mask=mask), atol=1e-12)
    # EvalSplit (batches, gains and ideal DCGs built once) = the mean over queries of the per-query NDCG@10
    lengths = mask.sum(1)
    split = data.RankingSplit(
        features=np.zeros((lengths.sum(), data.NUM_INPUTS), np.float32),
        relevance=gains[mask][:, 0].astype(np.float32),
        aux=gains[mask][:, 1:].astype(np.float32),
        aux_raw=gains[mask][:, 1:].astype(np.float32),
        offsets=np.concatenate([[0], np.cumsum(lengths)]),
        qids=np.arange(B),
    )
    doc_scores = torch.from_numpy(scores[mask]).float()
    for max_docs in (6, 64, 1 << 16):  # any batching gives the same means
        aux, main = EvalSplit(split, max_docs).ndcg(doc_scores)
        np.testing.assert_allclose(aux, ndcg_at_k(scores, gains[..., 1:], mask=mask).mean(0), atol=1e-12)
        assert main == pytest.approx(ndcg_at_k(scores, gains[..., 0], mask=mask).mean(), abs=1e-12)


# ---------------------------------------------------------------- non_dominated


def test_non_dominated_simple_front():
    pts = np.array([[1, 3], [2, 2], [3, 1], [1, 1], [2, 1]], dtype=float)
    # (1,1) and (2,1) are dominated by (2,2); the first three trade off
    np.testing.assert_array_equal(non_dominated(pts), [True, True, True, False, False])
    # minimisation: (1,1) dominates everything else
    np.testing.assert_array_equal(non_dominated(pts, maximize=False), [False, False, False, True, False])
    np.testing.assert_array_equal(non_dominated(pts, maximize=False), non_dominated(-pts))


def test_non_dominated_duplicates():
    # an exact duplicate does not dominate its twin: both stay
    np.testing.assert_array_equal(non_dominated([[1, 2], [1, 2], [2, 1]]), [True, True, True])
    # a duplicated pair that a third point dominates: both go
    np.testing.assert_array_equal(non_dominated([[1, 1], [1, 1], [2, 2]]), [False, False, True])


def test_non_dominated_m1_and_m3():
    np.testing.assert_array_equal(non_dominated([[3], [1], [3], [2]]), [True, False, True, False])
    pts = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 0.5, 0.5], [0.4, 0.4, 0.4], [1, 0, 0], [1, 0, -1]]
    # (.4,.4,.4) < (.5,.5,.5); (1,0,-1) is worse than (1,0,0) in the last coordinate only
    np.testing.assert_array_equal(non_dominated(pts), [True, True, True, True, False, True, False])


def test_non_dominated_matches_naive_loop_and_kinds():
    rng = np.random.default_rng(1)
    pts = rng.integers(0, 4, size=(30, 3)).astype(float)  # small ints: ties and duplicates
    naive = [not any(all(q >= p) and any(q > p) for q in pts) for p in pts]
    np.testing.assert_array_equal(non_dominated(pts), naive)
    out_t = non_dominated(torch.tensor(pts))
    assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.bool
    np.testing.assert_array_equal(out_t.numpy(), naive)


# ---------------------------------------------------------------- hypervolume: hand computations


def test_hypervolume_2d_by_hand():
    # boxes from ref (0,0) to (1,3), (2,2), (3,1); sweep over x:
    # x in [0,1]: height 3 -> 3;  x in [1,2]: height 2 -> 2;  x in [2,3]: height 1 -> 1;  total 6
    pts = [[1, 3], [2, 2], [3, 1]]
    assert hypervolume(pts, [0, 0]) == pytest.approx(6.0)
    # same boxes with the reference moved to (0.5, 0.5): x in [.5,1]: .5*2.5, [1,2]: 1*1.5, [2,3]: 1*.5
    assert hypervolume(pts, [0.5, 0.5]) == pytest.approx(0.5 * 2.5 + 1.5 + 0.5)


def test_hypervolume_3d_by_hand():
    # boxes from the origin: a = (3,1,2) vol 6, b = (1,3,1) vol 3, c = (2,2,2) vol 8
    # pairwise intersections (coordinate-wise min): a^b = (1,1,1) 1, a^c = (2,1,2) 4, b^c = (1,2,1) 2
    # triple a^b^c = (1,1,1) 1; union = 17 - 7 + 1 = 11
    assert hypervolume([[3, 1, 2], [1, 3, 1], [2, 2, 2]], [0, 0, 0]) == pytest.approx(11.0)
    # symmetric case: (2,1,1), (1,2,1), (1,1,2): 3*2 - 3*1 + 1 = 4
    assert hypervolume([[2, 1, 1], [1, 2, 1], [1, 1, 2]], [0, 0, 0]) == pytest.approx(4.0)


def test_hypervolume_minimisation_as_in_the_llm_task():
    # errors (lower is better), ref (1.1, 1.1) as in the paper's Table 2 (Eq. 21):
    # box of (0.2, 0.6): 0.9 * 0.5 = 0.45; box of (0.5, 0.3): 0.6 * 0.8 = 0.48;
    # overlap [0.5, 1.1] x [0.6, 1.1] = 0.6 * 0.5 = 0.30; union 0.63
    pts, ref = np.array([[0.2, 0.6], [0.5, 0.3]]), np.array([1.1, 1.1])
    assert hypervolume(pts, ref, maximize=False) == pytest.approx(0.63)
    assert hypervolume(pts, ref, maximize=False) == pytest.approx(hypervolume(-pts, -ref))


def test_hypervolume_m1():
    assert hypervolume([[3.0], [1.0]], [0.0]) == pytest.approx(3.0)
    assert hypervolume([[0.2], [0.7]], [1.1], maximize=False) == pytest.approx(0.9)


def test_hypervolume_ignores_dominated_duplicate_and_outside_points():
    base = hypervolume([[1, 3], [2, 2], [3, 1]], [0, 0])
    extra = [[1, 3], [2, 2], [3, 1], [2, 2], [1, 1], [2, 1.5], [5, -1], [-1, 5], [4, 0]]
    # duplicate (2,2); dominated (1,1), (2,1.5); outside the ref box (5,-1), (-1,5); zero-width (4,0)
    assert hypervolume(extra, [0, 0]) == pytest.approx(base)
    rng = np.random.default_rng(2)
    pts = rng.random((9, 4))
    assert hypervolume(np.vstack([pts, pts]), np.zeros(4)) == pytest.approx(hypervolume(pts, np.zeros(4)))


def test_hypervolume_accepts_torch_and_minimise_mirrors_maximise():
    rng = np.random.default_rng(3)
    pts, ref = rng.random((8, 3)), np.full(3, 1.2)
    mine = hypervolume(pts, ref, maximize=False)
    assert mine == pytest.approx(hypervolume(-pts, -ref, maximize=True), rel=1e-12)
    assert hypervolume(torch.tensor(pts), torch.tensor(ref), maximize=False) == pytest.approx(mine)
    assert mine > 0


def test_hypervolume_without_a_point_dominating_ref_raises():
    with pytest.raises(ValueError, match="reference point"):
        hypervolume([[1.0, -1.0], [-1.0, 1.0]], [0.0, 0.0])  # no point dominates ref
    with pytest.raises(ValueError, match="reference point"):
        hypervolume([[0.5, 0.5]], [1.1, 1.1], maximize=True)  # wrong direction
    with pytest.raises(ValueError, match="reference point"):
        hypervolume(np.zeros((0, 2)), [0.0, 0.0])  # empty front


# ---------------------------------------------------------------- hypervolume: brute force, Monte Carlo


def inclusion_exclusion_hv(pts, ref):
    """Exact union volume of the boxes [ref, p] by inclusion-exclusion over all subsets (max)."""
    sides = np.clip(np.asarray(pts, float) - ref, 0, None)  # (P, m) box sides, 0 if outside
    total = 0.0
    for size in range(1, len(sides) + 1):
        for subset in itertools.combinations(range(len(sides)), size):
            total += (-1) ** (size + 1) * np.prod(sides[list(subset)].min(axis=0))
    return total


@pytest.mark.parametrize("m", [2, 3, 4, 5])
def test_hypervolume_matches_inclusion_exclusion(m):
    rng = np.random.default_rng(m)
    for P in (4, 7, 10):
        pts = rng.random((P, m))  # dominated points included
        ref = rng.random(m) * 0.3
        pts[0] = ref + 0.5  # at least one point dominates ref
        assert hypervolume(pts, ref) == pytest.approx(inclusion_exclusion_hv(pts, ref), rel=1e-10)


def test_hypervolume_monte_carlo_5d():
    rng = np.random.default_rng(4)
    pts = np.abs(rng.normal(size=(11, 5)))
    pts /= np.linalg.norm(pts, axis=1, keepdims=True)  # on the unit sphere: a real front
    assert non_dominated(pts).all()
    ref = np.zeros(5)
    hi = pts.max(axis=0)  # the dominated region lies in [ref, hi]
    n = 200_000
    x = ref + rng.random((n, 5)) * (hi - ref)  # (n, 5) uniform samples in the box
    covered = np.zeros(n, dtype=bool)
    for p in pts:  # x is dominated if some p >= x
        covered |= np.all(x <= p, axis=1)
    frac, box = covered.mean(), np.prod(hi - ref)
    stderr = box * math.sqrt(frac * (1 - frac) / n)
    assert abs(hypervolume(pts, ref) - frac * box) < 4 * stderr


# ---------------------------------------------------------------- weight_grid


def test_weight_grid_m2_is_the_paper_grid():
    t = np.arange(11) / 10  # 0, 0.1, ..., 1
    np.testing.assert_allclose(weight_grid(2), np.stack([t, 1 - t], axis=1), atol=1e-15)
    assert weight_grid(2, num=3).tolist() == [[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]]


@pytest.mark.parametrize("m", [2, 3, 5, 6])
def test_weight_grid_rows_on_the_simplex(m):
    w = weight_grid(m, num=max(11, m + 1))
    assert w.dtype == np.float64 and w.shape == (max(11, m + 1), m)
    assert (w >= 0).all()
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)


def test_weight_grid_m5_fixed_set():
    w = weight_grid(5)
    np.testing.assert_array_equal(w, weight_grid(5))  # deterministic across calls
    np.testing.assert_array_equal(w[:5], np.eye(5))  # unit vectors first
    np.testing.assert_array_equal(w[5], np.full(5, 0.2))  # then the centroid
    assert len(np.unique(w, axis=0)) == 11  # the Dirichlet draws are new points
    other = weight_grid(5, seed=1)
    np.testing.assert_array_equal(other[:6], w[:6])  # fixed part does not depend on seed
    assert not np.allclose(other[6:], w[6:])  # random part does
    np.testing.assert_array_equal(weight_grid(5, num=8), w[:8])  # a smaller grid is a prefix


def test_weight_grid_m1_and_too_few_weights():
    assert weight_grid(1, num=1).tolist() == weight_grid(1).tolist() == [[1.0]]  # the simplex is one point
    for kwargs in (dict(m=2, num=1), dict(m=5, num=5), dict(m=3, num=0)):  # end points / e_j and centroid
        with pytest.raises(ValueError, match="num must be at least"):
            weight_grid(**kwargs)


# ---------------------------------------------------------------- module hygiene


def test_pareto_imports_no_training_script_and_matplotlib_only_to_plot():
    """One-way imports: pareto sits below train_ltr / train_llm; importing it stays light."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pareto.py")
    tree = ast.parse(open(path).read())

    def imported(nodes):
        names = set()
        for node in nodes:
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                names.add(node.module.split(".")[0])
        return names

    assert not imported(ast.walk(tree)) & {"train_ltr", "train_llm"}
    assert imported(tree.body) <= {
        "argparse",
        "contextlib",
        "csv",
        "functools",
        "itertools",
        "json",
        "os",
        "sys",
        "numpy",
        "torch",
        "data",
        "models",
        "losses",
    }, imported(tree.body)
