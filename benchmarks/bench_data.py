"""Benchmark of the ranking-data path in data.py: parsing MSLR-format text, its cache, batching.

Measures, side by side in one run, on a generated MSLR-format file (the synthetic generator, sized to
at least --rows lines):
  1. first parse with ``read_letor`` (cache off) vs ``sklearn.datasets.load_svmlight_file(query_id=True)``
     (skipped when scikit-learn is not installed; install it only for this: ``pip install scikit-learn``);
  2. cached reload (``read_letor`` with the ``.npz`` cache) vs first parse;
  3. peak memory of one parse (tracemalloc, in a fresh subprocess) / bytes of the final arrays;
  4. ``make_batches`` for an MSLR-WEB10K-sized training epoch (~723k documents in 6,000 lists of very
     uneven lengths, synthesised in memory): training setting (shuffle, cap 256) and evaluation setting.
Targets: parse >= 3x sklearn's rows/s, reload >= 20x faster than the parse, peak <= 3x final arrays,
an epoch of batches well under 1 s. Timings are medians of --repeats runs (this machine is shared).
--versus OTHER/data.py times that module's first parse alternately with ours on the same file (a before/after
comparison on a shared machine: the ratio is taken pair by pair); --file PATH parses an existing file instead.

Run:  python benchmarks/bench_data.py [--rows 100000] [--repeats 3] [--versus ../before/data.py] [--file PATH]
"""

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
import timeit

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402

_MEMORY_PROBE = """
import sys, tracemalloc
sys.path.insert(0, {repo!r})
import data
tracemalloc.start()
letor = data.read_letor({path!r}, cache=False)
current, peak = tracemalloc.get_traced_memory()
final = letor.labels.nbytes + letor.qids.nbytes + letor.features.nbytes
print(peak, final)
"""


def median_seconds(fn, repeats: int) -> float:
    return statistics.median(timeit.repeat(fn, number=1, repeat=repeats))


def mslr_sized_split(seed: int = 0) -> data.RankingSplit:
    """In-memory split with MSLR-WEB10K Fold1 training scale: 6,000 lists, ~723k documents, lengths 1..~1,250."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.round(rng.lognormal(np.log(95), 0.75, 6000)), 1, 1251)
    lengths = np.maximum(1, np.round(lengths * 723_412 / lengths.sum())).astype(np.int64)
    n = int(lengths.sum())
    return data.RankingSplit(
        features=rng.standard_normal((n, data.NUM_INPUTS), dtype=np.float32),
        relevance=rng.integers(0, 5, n).astype(np.float32),
        aux=rng.random((n, 2), dtype=np.float32),
        aux_raw=rng.random((n, 2), dtype=np.float32),
        offsets=np.concatenate(([0], np.cumsum(lengths))).astype(np.int64),
        qids=np.arange(len(lengths), dtype=np.int64),
    )


def load_other(path: str):
    """Another version of data.py as a module (e.g. the code before a change), for --versus."""
    spec = importlib.util.spec_from_file_location("data_versus", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--rows", type=int, default=100_000, help="minimum number of lines in the generated file"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (the median is reported)")
    parser.add_argument("--versus", help="another data.py whose first parse is timed alternately with ours")
    parser.add_argument("--file", help="an existing LETOR file to parse instead of a generated one")
    args = parser.parse_args()
    if args.rows < 1 or args.repeats < 1:
        parser.error("--rows and --repeats must be positive")

    with tempfile.TemporaryDirectory() as tmp:
        # synthetic lists average ~62 documents; ask for enough queries to pass --rows lines
        t0 = time.perf_counter()
        if args.file:
            path = os.path.join(tmp, "train.txt")
            os.symlink(os.path.abspath(args.file), path)  # the cache is written to tmp, never beside the file
        else:
            data.write_synthetic(
                tmp, seed=0, train_queries=args.rows // 55 + 1, vali_queries=1, test_queries=1
            )
            path = os.path.join(tmp, "Fold1", "train.txt")
        rows = len(data.read_letor(path, cache=False).labels)
        size_mb = os.path.getsize(path) / 1e6
        print(f"file: {rows:,} lines, {size_mb:.1f} MB (ready in {time.perf_counter() - t0:.1f} s)")

        ours = median_seconds(lambda: data.read_letor(path, cache=False), args.repeats)
        print(f"read_letor first parse      {ours:7.3f} s  {rows / ours:12,.0f} rows/s")
        if args.versus:
            other = load_other(args.versus)
            times = []
            for i in range(args.repeats):  # alternate which one runs first
                order = (data, other) if i % 2 == 0 else (other, data)
                seconds = {m: median_seconds(lambda m=m: m.read_letor(path, cache=False), 1) for m in order}
                times.append((seconds[data], seconds[other]))
            ours_v, theirs_v = np.median(times, axis=0)
            ratios = [a / b for a, b in times]
            print(
                f"versus {args.versus}: ours {ours_v:.3f} s, theirs {theirs_v:.3f} s (medians); ours/theirs "
                f"per pair {', '.join(f'{r:.3f}' for r in ratios)}, median {np.median(ratios):.3f}"
            )
        try:
            from sklearn.datasets import load_svmlight_file
        except ImportError:
            print("sklearn load_svmlight_file   skipped (scikit-learn not installed)")
        else:
            theirs = median_seconds(
                lambda: load_svmlight_file(path, query_id=True, n_features=data.NUM_COLUMNS), args.repeats
            )
            print(
                f"sklearn load_svmlight_file  {theirs:7.3f} s  {rows / theirs:12,.0f} rows/s   -> ours is "
                f"{theirs / ours:.1f}x faster (target >= 3x)"
            )

        data.read_letor(path, cache=True)  # writes the cache
        reload = median_seconds(lambda: data.read_letor(path, cache=True), max(args.repeats, 5))
        print(
            f"read_letor cached reload    {reload:7.3f} s  {rows / reload:12,.0f} rows/s   -> "
            f"{ours / reload:.0f}x faster than the parse (target >= 20x)"
        )

        probe = subprocess.run(
            [sys.executable, "-c", _MEMORY_PROBE.format(repo=os.path.dirname(data.__file__), path=path)],
            capture_output=True,
            text=True,
            check=True,
        )
        peak, final = map(int, probe.stdout.split())
        print(
            f"parse peak memory (tracemalloc) {peak / 1e6:.1f} MB / final arrays {final / 1e6:.1f} MB = "
            f"{peak / final:.2f}x (target <= 3x)"
        )

    split = mslr_sized_split()
    print(
        f"make_batches on an MSLR-sized split: {split.num_docs:,} documents, {split.num_queries:,} lists, "
        f"lengths {split.list_lengths.min()}..{split.list_lengths.max()} (mean "
        f"{split.list_lengths.mean():.0f})"
    )
    data.make_batches(split, shuffle=True, max_list_len=256)  # first touch of fresh memory
    for label, kwargs in (
        ("train: shuffle, cap 256", dict(shuffle=True, max_list_len=256)),  # train_ltr's cap
        ("eval: no shuffle, no cap", dict(shuffle=False, max_list_len=None)),
    ):
        seconds = median_seconds(
            lambda kwargs=kwargs: data.make_batches(split, **kwargs), max(args.repeats, 3)
        )
        batches = data.make_batches(split, **kwargs)
        real = sum(b.num_docs for b in batches)
        slots = sum(b.mask.numel() for b in batches)
        print(
            f"  {label:26s} {seconds:6.3f} s/epoch, {len(batches)} batches, {real:,} real documents, "
            f"real/padded slots {real / slots:.3f}"
        )


if __name__ == "__main__":
    main()
