"""Benchmark the losses of losses.py on a batch of 256 lists x 200 items (an MSLR-sized training batch).

Run from the repository root:  python benchmarks/bench_losses.py [--threads 2]
Prints the median over repeats of forward, and forward + backward, for m = 2 and m = 5 objectives,
with a ragged padding mask (lengths uniform in 20..200), beta per objective and the cosine penalty.
"""

import argparse
import os
import statistics
import sys
import timeit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402

from losses import cosine_penalty, dpo_loss, lipo_losses, mean_over_lists, sample_weights, scalarize  # noqa: E402


def median_ms(fn, repeats):
    """Median milliseconds of one call, after a warm-up call."""
    fn()
    return 1e3 * statistics.median(timeit.repeat(fn, number=1, repeat=repeats))


def time_objective(m, mask, g, repeats):
    """Median ms of Eq. 11's loss vector, scalarised with the cosine penalty, forward and forward + backward."""
    B, n = mask.shape
    scores = torch.randn(B, n, generator=g, requires_grad=True)
    ref = torch.randn(B, n, generator=g)
    labels = torch.poisson(torch.rand(B, n, m, generator=g), generator=g)
    w = sample_weights(torch.ones(m), 1, generator=0)[0]

    def forward():
        per_list, valid = lipo_losses(scores, ref, labels, torch.ones(m), mask, return_valid=True)
        L = mean_over_lists(per_list, valid)
        return scalarize(L, w) - 0.1 * cosine_penalty(L, w)

    def forward_backward():
        scores.grad = None
        forward().backward()

    return median_ms(forward, repeats), median_ms(forward_backward, repeats)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--items", type=int, default=200)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    B, n = args.batch, args.items
    mask = torch.arange(n) < torch.randint(20, n + 1, (B, 1), generator=g)
    print(f"losses on B={B} lists x n={n} items, {torch.get_num_threads()} threads, median of {args.repeats}")
    for m in (2, 5):
        forward_ms, both_ms = time_objective(m, mask, g, args.repeats)
        print(f"  m={m}: forward {forward_ms:6.2f} ms   forward+backward {both_ms:6.2f} ms")
    x = torch.randn(4, B * 16, generator=g)
    print(f"  dpo_loss on {B * 16} pairs: {median_ms(lambda: dpo_loss(*x, 0.1), args.repeats):6.2f} ms")


if __name__ == "__main__":
    main()
