"""Benchmark the metrics of pareto.py: hypervolume of the 11 evaluation points in 5-D, NDCG@10 of a batch.

Run from the repository root:  python benchmarks/bench_pareto.py [--repeats 50] [--threads 2]
Prints one line per case with the median time over repeats:
- hypervolume of 11 and of 50 mutually non-dominated points in 5-D (on the positive unit sphere,
  reference point 0, as the LTR task's NDCG fronts);
- ndcg_at_k (k = 10) on a (256, 200) batch with a ragged padding mask, both tie modes, torch and numpy.
If scikit-learn is installed, its ndcg_score on the same (unpadded) batch is timed too and the mean
NDCG is checked to agree (comparison only; scikit-learn is not a dependency).
"""

import argparse
import os
import statistics
import sys
import timeit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np  # noqa: E402
import torch  # noqa: E402

from pareto import hypervolume, ndcg_at_k, non_dominated  # noqa: E402


def median_ms(fn, repeats):
    """Median milliseconds of one call, after a warm-up call."""
    fn()
    return 1e3 * statistics.median(timeit.repeat(fn, number=1, repeat=repeats))


def sphere_front(num, m, rng):
    """num points on the positive unit sphere in m-D: mutually non-dominated (almost surely)."""
    pts = np.abs(rng.normal(size=(num, m)))
    return pts / np.linalg.norm(pts, axis=1, keepdims=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(f"pareto.py metrics, {torch.get_num_threads()} torch threads, median of {args.repeats} repeats")

    for num in (11, 50):
        pts = sphere_front(num, 5, rng)
        assert non_dominated(pts).all()
        ms = median_ms(lambda pts=pts: hypervolume(pts, np.zeros(5)), args.repeats)
        hv = hypervolume(pts, np.zeros(5))
        print(f"  hypervolume {num:3d} points in 5-D: {ms:8.2f} ms   (HV = {hv:.6f})")

    B, n = 256, 200
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(B, n, generator=g)
    gains = torch.poisson(torch.rand(B, n, generator=g) * 2, generator=g)  # integer labels: tied gains
    mask = torch.arange(n) < torch.randint(20, n + 1, (B, 1), generator=g)  # ragged, 20..200 items
    for ties in ("average", "first"):
        ms = median_ms(lambda ties=ties: ndcg_at_k(scores, gains, k=10, mask=mask, ties=ties), args.repeats)
        print(f"  ndcg_at_k torch ({B}, {n}) k=10 ties={ties:7s}: {ms:8.2f} ms")
    s_np, g_np, m_np = scores.numpy(), gains.numpy(), mask.numpy()
    ms = median_ms(lambda: ndcg_at_k(s_np, g_np, k=10, mask=m_np), args.repeats)
    print(f"  ndcg_at_k numpy ({B}, {n}) k=10 ties=average: {ms:8.2f} ms")

    try:
        from sklearn.metrics import ndcg_score
    except ImportError:
        print("  scikit-learn not installed: comparison skipped")
        return
    coarse = torch.round(scores * 2) / 2  # coarse scores: many ties
    ours = ndcg_at_k(coarse, gains, k=10).mean().item()  # no mask: sklearn has none
    theirs = ndcg_score(gains.numpy(), coarse.numpy(), k=10)  # ties averaged too
    ms = median_ms(lambda: ndcg_score(gains.numpy(), coarse.numpy(), k=10), max(args.repeats // 5, 3))
    print(
        f"  sklearn ndcg_score ({B}, {n}) k=10 (ties averaged): {ms:8.2f} ms   mean NDCG ours {ours:.10f} "
        f"sklearn {theirs:.10f}"
    )
    assert abs(ours - theirs) < 1e-9, "mean NDCG disagrees with scikit-learn"


if __name__ == "__main__":
    main()
