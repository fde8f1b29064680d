"""train_ltr.py with the w sampler of the code before the restructure (issue 11's "same method?" check).

Run from the repository root:
    python benchmarks/old_sampler_run.py OLD/losses.py [train_ltr.py arguments ...]

OLD/losses.py: losses.py of commit 079b477 (e.g. `git show 079b477:losses.py > /tmp/old_losses.py`). That code drew
w ~ Dir(alpha) with its own Marsaglia-Tsang sampler from a torch.Generator seeded with seed + 1; numpy's
Generator.dirichlet replaced it. With the old draws the new code retraces an old run (docs/RESULTS.md, "MSLR-WEB10K
scale"), so a difference between the two codes' results is a difference of random draws, not of the method.
--resume and --vertex-prob are refused (the generator is not saved; the old code has no vertex draws).
"""
import importlib.util
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train_ltr  # noqa: E402


def main(argv):
    if not argv or not os.path.isfile(argv[0]):
        sys.exit(f"usage: python benchmarks/old_sampler_run.py OLD/losses.py [train_ltr.py arguments]; got {argv[:1]}")
    spec = importlib.util.spec_from_file_location("old_losses", argv[0])
    old = importlib.util.module_from_spec(spec)
    sys.modules["old_losses"] = old
    spec.loader.exec_module(old)
    args = train_ltr.build_parser().parse_args(argv[1:])
    if args.resume or args.vertex_prob:
        sys.exit("old_sampler_run.py: --resume and --vertex-prob are not supported (the old sampler's generator is "
                 "not saved; the old code has no vertex draws)")
    gen = torch.Generator().manual_seed(args.seed + 1)  # as the old train_ltr.fine_tune seeded it
    train_ltr.sample_weights = lambda alpha, num, rng, vertex_prob=0.0: old.sample_weights(alpha, num, generator=gen)
    return train_ltr.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
