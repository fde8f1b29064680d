"""Ranking data for COS-DPO: MSLR-WEB10K (LETOR format), an embedded synthetic twin, and padded batches.

Paper: Ren et al., "COS-DPO" (UAI 2025), App. A.4 (datasets) and Sec. 4.1 (LTR experiments).
MSLR-WEB10K ships one document per line, ``label qid:Q 1:v1 2:v2 ... 136:v136``, in
``Fold{1..5}/{train,vali,test}.txt``. Following the paper, the model inputs are features 1-131, the
main objective is the 0-4 relevance label, and the five auxiliary objectives are the last five
columns, numbered as in App. A.4:

    I   query_url_clicks  column 134   "l1" labels (sparse counts, Fig. 2a)
    II  url_clicks        column 135   "l1"
    III url_dwell_time    column 136   "l1"
    IV  quality_score     column 132   "softmax" labels (dense scores, Fig. 2b)
    V   quality_score2    column 133   "softmax"

What lives here, top to bottom:
  * objectives: ``Objective``, ``OBJECTIVES``, ``resolve_objectives``;
  * reader: ``read_letor`` (fast vectorised path for dense MSLR lines, general fallback path for
    anything else, binary ``.npz`` cache next to the source file);
  * splits: ``load_ltr`` -> train/vali/test ``RankingSplit`` plus JSON-serialisable normalisation
    ``stats`` (fitted on the training split only; store them in checkpoints), ``normalize_features``,
    ``transform_aux``, ``make_split``;
  * batches: ``make_batches`` -> padded ``Batch`` tensors grouped by list length;
  * embedded data: ``write_synthetic`` / ``ensure_synthetic`` write a synthetic dataset in exactly the
    MSLR text format (the generative story is in ``write_synthetic``'s docstring), so the project runs
    with no download; the same reader serves both.

Design decisions the paper leaves open (SPEC sec. 8), each documented where it is implemented:
feature normalisation = sign-preserving log1p then z-score with training statistics
(``fit_normalization``); label transforms = log1p for counts, z-score for dense scores (``OBJECTIVES``);
long lists are subsampled for training only (``make_batches``, ``TRAIN_MAX_LIST_LEN``).

The bottom section holds the LLM preference data (PKU-SafeRLHF schema, embedded preference set,
byte tokenizer, tokenisation with a documented truncation rule), used by train_llm.py.

Run:
    python data.py synthetic --out data/synthetic [--seed 0]   # write the embedded dataset
    python data.py stats DIR [--fold 1]                        # queries, documents, lengths, labels
    python data.py preferences --out FILE.jsonl                # write the embedded preference set
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import numpy as np

if TYPE_CHECKING:  # torch is imported lazily, only where batches are built
    import torch

NUM_COLUMNS = 136  # MSLR feature columns
NUM_INPUTS = 131  # model inputs are features 1..131 only (paper App. A.4)
MSLR_URL = "https://www.microsoft.com/en-us/research/project/mslr/"
SPLITS = ("train", "vali", "test")
REPO_DIR = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SYNTHETIC_DIR = "data/synthetic"  # relative to the repo root (gitignored)
# Default list-length cap for TRAINING batches (make_batches(max_list_len=...)); evaluation uses None.
# Why 256: self-attention costs O(n^2) per list and a batch is padded to its longest list, so a few
# MSLR lists of ~1,250 documents would dominate an epoch. A uniform random subset of 256 documents
# keeps a long list's ListNet/LiPO target an unbiased sample of the full list, changes nothing for the
# typical list (MSLR mean ~120; synthetic median 45), and costs no evaluation accuracy (never applied there).
TRAIN_MAX_LIST_LEN = 256


# ---------------------------------------------------------------------------------------------------
# Objectives
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Objective:
    """One auxiliary objective (paper App. A.4).

    name: canonical name; roman: the paper's numbering "I".."V"; column: 1-based MSLR feature index;
    label_norm: "l1" (sparse labels, z / sum z) or "softmax" (dense labels), paper Sec. 2.2 / Fig. 2;
    transform: raw value -> training label. "log1p" = log(1 + z) for heavy-tailed non-negative counts
    (keeps labels >= 0, as "l1" needs, and stops one huge count from owning a list's whole target
    distribution); "standardize" = (z - mean) / std with training statistics, so that the softmax of
    dense 0-255 scores is not a one-hot argmax. NDCG (Eq. 22) always uses the RAW values as gains.
    """

    name: str
    roman: str
    column: int
    label_norm: str
    transform: str


OBJECTIVES: tuple[Objective, ...] = (
    Objective("query_url_clicks", "I", 134, "l1", "log1p"),
    Objective("url_clicks", "II", 135, "l1", "log1p"),
    Objective("url_dwell_time", "III", 136, "l1", "log1p"),
    Objective("quality_score", "IV", 132, "softmax", "standardize"),
    Objective("quality_score2", "V", 133, "softmax", "standardize"),
)


def _objective_lookup() -> dict[str, Objective]:
    table = {}
    for number, obj in enumerate(OBJECTIVES, start=1):
        for key in (obj.name, obj.roman.lower(), str(number)):
            table[key] = obj
    return table


def resolve_objectives(names) -> tuple[Objective, ...]:
    """Turn objective names into ``Objective`` records, in the order given.

    names: a sequence whose items are each a canonical name ("url_clicks"), a roman numeral of the
    paper's App. A.4 numbering ("II", case-insensitive), a number 1..5 (same numbering, as str or int)
    or an ``Objective``; or one comma-separated string such as "I,II".
    Returns a tuple of ``Objective``. Raises ValueError for an unknown or repeated objective, listing
    what is accepted.
    """
    if isinstance(names, (str, Objective, int)):
        names = [names]
    items = []
    for item in names:
        if isinstance(item, str):
            items.extend(part for part in item.split(",") if part.strip())
        else:
            items.append(item)
    if not items:
        raise ValueError(f"objectives: got {names!r}, expected at least one objective; accepted: {_accepted()}")
    table = _objective_lookup()
    out = []
    for item in items:
        if isinstance(item, Objective):
            obj = item
        else:
            key = str(item).strip().lower().replace("-", "_")
            if key not in table:
                raise ValueError(f"objectives: unknown objective {item!r}; accepted: {_accepted()}")
            obj = table[key]
        if obj in out:
            raise ValueError(f"objectives: {obj.name} ({obj.roman}) is given twice in {names!r}")
        out.append(obj)
    return tuple(out)


def _accepted() -> str:
    return ", ".join(f"{o.name} / {o.roman} / {i}" for i, o in enumerate(OBJECTIVES, start=1))


# ---------------------------------------------------------------------------------------------------
# Reader: LETOR / SVMlight ranking format
# ---------------------------------------------------------------------------------------------------


@dataclass
class LetorFile:
    """Parsed contents of one LETOR file, rows in file order.

    labels: (N,) float32 relevance; qids: (N,) int64 query ids (rows of a query are contiguous);
    features: (N, 136) float32 raw feature values (column k-1 holds feature k; missing features are 0).
    ``fingerprint`` (property): 16 hex digits of a BLAKE2b hash of the three arrays; the same data gives
    the same fingerprint on any machine and under any path.
    """

    labels: np.ndarray
    qids: np.ndarray
    features: np.ndarray

    @cached_property
    def fingerprint(self) -> str:
        h = hashlib.blake2b(digest_size=8)
        h.update(b"letor-v1")
        h.update(np.int64(len(self.labels)).tobytes())
        for array, dtype in ((self.labels, "<f4"), (self.qids, "<i8"), (self.features, "<f4")):
            h.update(np.ascontiguousarray(array, dtype=dtype))  # C-contiguous buffer, no copy
        return h.hexdigest()


_CHUNK_BYTES = 1 << 22  # parse 4 MiB of lines at a time: bounded memory, numpy overhead negligible
_CACHE_FORMAT = 1


def _missing_message(path: str) -> str:
    return (
        f"expected the LETOR file {path!r}, which does not exist. To use MSLR-WEB10K, download "
        f"MSLR-WEB10K.zip from {MSLR_URL} and unzip it so that DIR/Fold1/train.txt exists, then pass "
        f"DIR as the data directory. For the embedded synthetic data run `python data.py synthetic --out DIR`."
    )


def read_letor(path, cache: bool = True) -> LetorFile:
    """Read a LETOR-format ranking file (``label qid:Q k:v ...``, MSLR-WEB10K's format).

    path: the text file. cache: reuse / write a binary cache (``<file>.npz`` next to the source, or under
    ``$XDG_CACHE_HOME/cosdpo-letor`` (default ``~/.cache``) when that folder is not writable). The cache
    is written atomically (temp file + ``os.replace``) only after a successful parse, and is ignored when
    the source's size or modification time differs from the ones recorded in it.

    Accepted input: dense, sorted MSLR lines take a fast vectorised path; any block of lines that does not
    fit it goes through a general per-line path that accepts sparse lines (missing features are 0, indices
    in any order), trailing ``# comments``, CRLF line ends, tabs, blank lines and trailing blanks. Both paths
    give identical arrays. An empty file gives N = 0.
    Refused with ValueError naming file, line number and token: a non-numeric label/value, a missing
    ``qid:`` second token, a non-integer qid, a feature index outside 1..136 or repeated in a line, NaN or
    inf. A qid that reappears after other queries is refused (ValueError naming both line numbers): rows of
    a query must be contiguous, as in MSLR; sort the file by qid first (a stable sort keeps row order).
    A missing file raises FileNotFoundError saying how to obtain MSLR-WEB10K.
    Returns a ``LetorFile`` (labels (N,), qids (N,), features (N, 136)).
    """
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(_missing_message(path))
    stat = os.stat(path)
    if cache:
        cached = _load_cache(path, stat)
        if cached is not None:
            return cached
    letor = _parse_letor(path)
    if cache:
        _save_cache(path, stat, letor)
    return letor


def _parse_letor(path: str) -> LetorFile:
    """Parse the whole file block by block into preallocated arrays (peak memory ~ final arrays + a block)."""
    max_rows = _count_lines(path)
    labels = np.empty(max_rows, np.float32)
    qids = np.empty(max_rows, np.int64)
    features = np.empty((max_rows, NUM_COLUMNS), np.float32)
    line_of_row = np.empty(max_rows, np.int64)  # 1-based line numbers, for error messages only
    rows = 0
    with open(path, "rb") as f:
        for first_line, block in _line_blocks(f):
            parsed = _parse_block_fast(block)
            if parsed is None:  # not plain dense MSLR lines: the general path decides (and reports errors)
                parsed = _parse_block_general(block, path, first_line)
                block_labels, block_qids, block_features, block_lines = parsed
            else:
                block_labels, block_qids, block_features = parsed
                block_lines = first_line + np.arange(len(block_labels))
            n = len(block_labels)
            labels[rows : rows + n] = block_labels
            qids[rows : rows + n] = block_qids
            features[rows : rows + n] = block_features
            line_of_row[rows : rows + n] = block_lines
            rows += n
    if rows < max_rows:  # blank or comment-only lines: trim (copy only when it saves real memory)
        labels, qids, line_of_row = labels[:rows].copy(), qids[:rows].copy(), line_of_row[:rows]
        features = features[:rows].copy() if rows < 0.9 * max_rows else features[:rows]
    _check_contiguous_queries(qids, line_of_row, path)
    return LetorFile(labels=labels, qids=qids, features=features)


def _count_lines(path: str) -> int:
    """Number of lines (an upper bound on the number of rows), counting a last line without newline."""
    count, last = 0, b"\n"
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")


def _line_blocks(f):
    """Yield (1-based number of the first line, bytes of whole lines each ending with b'\\n')."""
    line_no, rest = 1, b""
    while True:
        block = f.read(_CHUNK_BYTES)
        if not block:
            if rest:
                yield line_no, rest + b"\n"
            return
        block = rest + block
        cut = block.rfind(b"\n") + 1
        if cut == 0:  # a line longer than a block: keep reading
            rest = block
            continue
        yield line_no, block[:cut]
        line_no += block.count(b"\n", 0, cut)
        rest = block[cut:]


def _window_patterns() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Expected bytes before each of the 137 colons of a dense line (qid, then features 1..136).

    For colon j at byte c, ``window[c - 4]`` packs bytes c-4..c-1 little-endian into a uint32. The prefix
    (b"qid" or str(j)) must end at c-1 and be preceded by a space: ``(window & mask) == expected``.
    ``blank`` marks, in the window of bytes c-3..c, the prefix and the colon itself, which the fast path
    deletes so that only the numbers remain.
    """
    expected, mask, blank = (np.zeros(NUM_COLUMNS + 1, np.uint32) for _ in range(3))
    for j in range(NUM_COLUMNS + 1):
        prefix = b"qid" if j == 0 else str(j).encode()
        pad = b"\x00" * (3 - len(prefix))
        expected[j] = int.from_bytes(pad + b" " + prefix, "little")
        mask[j] = int.from_bytes(pad + b"\xff" * (len(prefix) + 1), "little")
        blank[j] = int.from_bytes(pad + b"\x01" * (len(prefix) + 1), "little")
    return expected, mask, blank


_WINDOW_EXPECTED, _WINDOW_MASK, _WINDOW_BLANK = _window_patterns()


def _byte_windows(buffer, size: int) -> np.ndarray:
    """Overlapping little-endian uint32 view: element i holds bytes i..i+3 of the buffer."""
    return np.ndarray((size - 3,), dtype="<u4", buffer=buffer, strides=(1,))


def _parse_block_fast(block: bytes):
    """Dense MSLR lines -> (labels (n,), qids (n,), features (n, 136)); None if the block does not fit.

    The check is exact, with no per-line Python: each line holds exactly 137 colons, preceded by
    " qid" and then " 1" .. " 136" in order (one uint32 compare per colon); the "qid:" and "k:" prefixes
    are then deleted with a byte mask and numpy's C parser (np.loadtxt) reads the remaining 138 numbers
    per line, refusing a line with another token count or a non-numeric token. Non-finite values or a
    non-integer qid also send the block to the general path, which reports the line and token.
    """
    if b"\r" in block:  # CRLF line ends: a CR is just trailing whitespace here
        block = block.replace(b"\r", b" ")
    data = np.frombuffer(block, np.uint8)
    newlines = np.flatnonzero(data == 10)
    n = len(newlines)
    colons = np.flatnonzero(data == 58)
    if n == 0 or len(colons) != n * (NUM_COLUMNS + 1) or colons[0] < 4:
        return None
    colons = colons.reshape(n, NUM_COLUMNS + 1)  # (n, 137): row i should be line i's colons
    line_starts = np.concatenate(([0], newlines[:-1] + 1))
    if (colons[:, 0] <= line_starts).any() or (colons[:, -1] >= newlines).any():
        return None
    windows = _byte_windows(block, len(data))[colons - 4]  # (n, 137) bytes c-4..c-1
    if ((windows & _WINDOW_MASK) != _WINDOW_EXPECTED).any():
        return None
    delete = np.zeros(len(data), np.uint8)
    _byte_windows(delete, len(data))[colons - 3] = _WINDOW_BLANK  # windows c-3..c never overlap
    numbers = data[delete == 0].tobytes().decode("latin-1")
    try:
        values = np.loadtxt(numbers.splitlines(), dtype=np.float64, ndmin=2, comments=None)
    except ValueError:
        return None
    if values.shape != (n, NUM_COLUMNS + 2) or not np.isfinite(values).all():
        return None
    qids = values[:, 1]
    if (np.abs(qids) > 2**53).any() or (qids != np.round(qids)).any():
        return None
    return values[:, 0], qids.astype(np.int64), values[:, 2:]


def _parse_block_general(block: bytes, path: str, first_line: int):
    """Any LETOR lines, one Python loop per line. Returns labels, qids, features (n, 136), line numbers."""
    lines = block.split(b"\n")[:-1]  # the block ends with b"\n"
    labels, qids, line_numbers = [], [], []
    features = np.zeros((len(lines), NUM_COLUMNS), np.float32)
    for offset, raw in enumerate(lines):
        line_no = first_line + offset
        body = raw.split(b"#", 1)[0]
        tokens = body.split()  # splits on spaces, tabs and a trailing CR
        if not tokens:
            continue  # blank or comment-only line
        row = len(labels)
        labels.append(_number(tokens[0], "label", path, line_no))
        if len(tokens) < 2 or not tokens[1].startswith(b"qid:"):
            got = tokens[1].decode("latin-1") if len(tokens) > 1 else "end of line"
            raise ValueError(f"{path}, line {line_no}: missing 'qid:<integer>' as the second token (token {got!r})")
        qids.append(_query_id(tokens[1], path, line_no))
        seen = set()
        for token in tokens[2:]:
            index, colon, value = token.partition(b":")
            text = token.decode("latin-1")
            try:
                k = int(index)
            except ValueError:
                k = None
            if not colon or k is None:
                raise ValueError(f"{path}, line {line_no}: expected 'index:value' (token {text!r})")
            if not 1 <= k <= NUM_COLUMNS:
                raise ValueError(
                    f"{path}, line {line_no}: feature index out of range 1..{NUM_COLUMNS} (token {text!r})")
            if k in seen:
                raise ValueError(f"{path}, line {line_no}: feature index {k} appears twice (token {text!r})")
            seen.add(k)
            features[row, k - 1] = _number(value, f"feature {k} value", path, line_no, text)
        line_numbers.append(line_no)
    n = len(labels)
    return (
        np.asarray(labels, np.float32),
        np.asarray(qids, np.int64),
        features[:n],
        np.asarray(line_numbers, np.int64),
    )


def _query_id(token: bytes, path: str, line_no: int) -> int:
    """b"qid:17" -> 17. An integer-valued number such as "1e3" is accepted too, as on the fast path."""
    text = token[4:]
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not np.isfinite(value) or value != round(value):
        raise ValueError(f"{path}, line {line_no}: query id must be an integer (token {token.decode('latin-1')!r})")
    return int(value)


def _number(token: bytes, what: str, path: str, line_no: int, shown: str | None = None) -> float:
    shown = token.decode("latin-1") if shown is None else shown
    try:
        value = float(token)
    except ValueError:
        raise ValueError(f"{path}, line {line_no}: {what} is not a number (token {shown!r})") from None
    if not np.isfinite(value):
        raise ValueError(f"{path}, line {line_no}: {what} must be finite, not NaN or inf (token {shown!r})")
    return value


def _check_contiguous_queries(qids: np.ndarray, line_of_row: np.ndarray, path: str) -> None:
    """Refuse a qid that reappears after other queries (its rows would not be one contiguous list)."""
    if len(qids) == 0:
        return
    run_starts = np.flatnonzero(np.concatenate(([True], qids[1:] != qids[:-1])))
    run_qids = qids[run_starts]
    order = np.argsort(run_qids, kind="stable")
    repeated = np.flatnonzero(run_qids[order][1:] == run_qids[order][:-1])
    if len(repeated) == 0:
        return
    # among all repeats, report the one that comes back earliest in the file
    later_runs = order[repeated + 1]
    k = int(np.argmin(later_runs))
    later, earlier = int(later_runs[k]), int(order[repeated[k]])
    earlier_end = (run_starts[earlier + 1] if earlier + 1 < len(run_starts) else len(qids)) - 1
    raise ValueError(
        f"{path}, line {line_of_row[run_starts[later]]}: qid {run_qids[later]} reappears after other "
        f"queries (its earlier rows end at line {line_of_row[earlier_end]}); rows of a query must be "
        f"contiguous: sort the file by qid first"
    )


# --- binary cache ----------------------------------------------------------------------------------


def _cache_candidates(path: str) -> list[str]:
    """Where the cache of ``path`` may live: next to it, else in a per-user cache folder."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    key = hashlib.blake2b(path.encode(), digest_size=8).hexdigest()
    return [path + ".npz", os.path.join(base, "cosdpo-letor", f"{key}-{os.path.basename(path)}.npz")]


def _load_cache(path: str, stat: os.stat_result) -> LetorFile | None:
    for candidate in _cache_candidates(path):
        if not os.path.isfile(candidate):
            continue
        try:
            with np.load(candidate, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                if (meta.get("format"), meta.get("size"), meta.get("mtime_ns")) != (
                    _CACHE_FORMAT, stat.st_size, stat.st_mtime_ns):
                    continue  # the source changed since the cache was written
                letor = LetorFile(labels=z["labels"], qids=z["qids"], features=z["features"])
        except Exception:  # a damaged or foreign cache is ignored and rewritten
            continue
        letor.__dict__["fingerprint"] = meta["fingerprint"]  # saves hashing the arrays again
        return letor
    return None


def _save_cache(path: str, stat: os.stat_result, letor: LetorFile) -> None:
    meta = json.dumps({"format": _CACHE_FORMAT, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                       "fingerprint": letor.fingerprint})
    for candidate in _cache_candidates(path):
        tmp = None
        try:
            os.makedirs(os.path.dirname(candidate), exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=os.path.basename(candidate) + ".", suffix=".npz.tmp",
                                       dir=os.path.dirname(candidate))
            with os.fdopen(fd, "wb") as f:
                np.savez(f, labels=letor.labels, qids=letor.qids, features=letor.features, meta=np.array(meta))
            os.replace(tmp, candidate)  # atomic: readers see the old cache or the complete new one
            return
        except OSError:
            if tmp is not None and os.path.exists(tmp):
                os.remove(tmp)
    warnings.warn(f"could not write a cache for {path}; it will be parsed again next time", stacklevel=3)


# ---------------------------------------------------------------------------------------------------
# Splits, normalisation statistics and label transforms
# ---------------------------------------------------------------------------------------------------


@dataclass
class RankingSplit:
    """One split, documents grouped by query (rows of query q are ``offsets[q]:offsets[q+1]``).

    features: (N, 131) float32 normalised model inputs (features 1..131 only);
    relevance: (N,) float32 raw 0-4 label (main objective: ListNet target and NDCG gains);
    aux: (N, m) float32 training labels of the m chosen objectives (after ``Objective.transform``);
    aux_raw: (N, m) float32 raw auxiliary values (NDCG gains at evaluation, paper Eq. 22 linear gains);
    offsets: (Q + 1,) int64; qids: (Q,) int64.
    """

    features: np.ndarray
    relevance: np.ndarray
    aux: np.ndarray
    aux_raw: np.ndarray
    offsets: np.ndarray
    qids: np.ndarray

    def __post_init__(self):
        n = len(self.relevance)
        shapes_ok = (
            self.features.shape == (n, NUM_INPUTS)
            and self.aux.shape == self.aux_raw.shape
            and self.aux.ndim == 2 and len(self.aux) == n
            and self.offsets.shape == (len(self.qids) + 1,)
            and (len(self.offsets) == 0 or (self.offsets[0] == 0 and self.offsets[-1] == n))
        )
        if not shapes_ok:
            raise ValueError(
                f"RankingSplit: inconsistent shapes features {self.features.shape}, relevance {self.relevance.shape}, "
                f"aux {self.aux.shape}, aux_raw {self.aux_raw.shape}, offsets {self.offsets.shape}, "
                f"qids {self.qids.shape}"
            )

    @property
    def num_queries(self) -> int:
        return len(self.qids)

    @property
    def num_docs(self) -> int:
        return len(self.relevance)

    @property
    def list_lengths(self) -> np.ndarray:
        """(Q,) int64 documents per query."""
        return np.diff(self.offsets)


def _missing_split_message(path: str, data_dir: str, fold: int) -> str:
    return (
        f"expected {path!r} (data directory {data_dir!r}, fold {fold}), which does not exist. "
        f"To use MSLR-WEB10K, download MSLR-WEB10K.zip from {MSLR_URL} and unzip it so that "
        f"DIR/Fold{fold}/train.txt, vali.txt and test.txt exist, then pass DIR. "
        f"For the embedded synthetic data run `python data.py synthetic --out DIR`."
    )


def load_ltr(data_dir, fold: int = 1, objectives=("I", "II"), cache: bool = True) -> tuple[dict, dict]:
    """Load ``data_dir/Fold{fold}/{train,vali,test}.txt`` as normalised ranking splits.

    data_dir: the folder holding ``Fold{k}/`` (``DEFAULT_SYNTHETIC_DIR`` is found from any working
    directory, see ``resolve_data_dir``). objectives: auxiliary objectives, anything ``resolve_objectives``
    accepts (default I and II, the paper's Fig. 2a pair). cache: passed to ``read_letor``.
    Returns ``(splits, stats)``: splits = {"train", "vali", "test"} -> ``RankingSplit``; stats = the
    JSON-serialisable normalisation statistics of ``fit_normalization`` (training split only), with the
    objective names and the training data's ``fingerprint``. Store ``stats`` with a checkpoint and use
    ``make_split`` / ``normalize_features`` / ``transform_aux`` to prepare new data identically.
    Raises FileNotFoundError (naming the expected path and how to get MSLR-WEB10K) for a missing folder or
    file, ValueError for an empty split or a negative relevance label.
    """
    objs = resolve_objectives(objectives)
    if isinstance(fold, bool) or not isinstance(fold, (int, np.integer)) or fold < 1:
        raise ValueError(f"fold: expected a positive integer (MSLR has folds 1..5), got {fold!r}")
    data_dir = resolve_data_dir(data_dir)
    paths = {name: os.path.join(data_dir, f"Fold{fold}", f"{name}.txt") for name in SPLITS}
    for path in paths.values():
        if not os.path.isfile(path):
            raise FileNotFoundError(_missing_split_message(path, data_dir, fold))
    raw = {name: read_letor(path, cache=cache) for name, path in paths.items()}
    for name, letor in raw.items():
        if len(letor.labels) == 0:
            raise ValueError(f"{paths[name]}: the {name} split holds no documents (an empty split cannot be used)")
        if (letor.labels < 0).any():
            raise ValueError(f"{paths[name]}: relevance labels must be >= 0 (NDCG gains), found {letor.labels.min()}")
    stats = fit_normalization(raw["train"], objs)
    splits = {name: make_split(letor, stats) for name, letor in raw.items()}
    return splits, stats


def _signed_log1p(x: np.ndarray) -> np.ndarray:
    """sign(x) * log(1 + |x|): tames heavy-tailed counts (MSLR stream lengths, inlinks, PageRank), keeps sign."""
    return np.sign(x) * np.log1p(np.abs(x))


_ROWS_PER_PASS = 16384  # rows per chunk in float64 computations (bounded temporary memory)


def fit_normalization(train: LetorFile, objectives) -> dict:
    """Normalisation statistics from the TRAINING split only (SPEC sec. 5 open point; our choice).

    Features 1..131: x -> (sign(x) log(1 + |x|) - mean) / std, mean and std per column of the log1p
    values (Qin et al., ICLR 2021, use this log1p transform for neural rankers on MSLR); a column with
    std < 1e-6 on train (constant) gets std = 1, so it maps to 0 and never divides by zero.
    Auxiliary labels: "log1p" objectives need no statistics; "standardize" objectives store the raw
    column's training mean and std (same guard). Statistics are kept for all five objectives, so any
    of them can be transformed later with the same dict.
    train: a ``LetorFile``; objectives: the chosen objectives (anything ``resolve_objectives`` accepts).
    Returns a JSON-serialisable dict (plain lists / floats / strings).
    """
    objs = resolve_objectives(objectives)
    n = len(train.labels)
    if n == 0:
        raise ValueError("train: cannot fit normalisation statistics on an empty split")
    inputs = train.features[:, :NUM_INPUTS]
    total = np.zeros(NUM_INPUTS)
    for i in range(0, n, _ROWS_PER_PASS):
        total += _signed_log1p(inputs[i : i + _ROWS_PER_PASS].astype(np.float64)).sum(axis=0)
    mean = total / n
    squares = np.zeros(NUM_INPUTS)
    for i in range(0, n, _ROWS_PER_PASS):  # two passes: no cancellation error
        squares += ((_signed_log1p(inputs[i : i + _ROWS_PER_PASS].astype(np.float64)) - mean) ** 2).sum(axis=0)
    std = np.sqrt(squares / n)
    constant = std < 1e-6
    std[constant] = 1.0  # a constant column maps to exactly 0 on train: no division by ~0
    mean[constant] = _signed_log1p(inputs[0, constant].astype(np.float64))
    aux_stats = {}
    for obj in OBJECTIVES:
        entry = {"roman": obj.roman, "column": obj.column, "label_norm": obj.label_norm, "transform": obj.transform}
        if obj.transform == "standardize":
            column = train.features[:, obj.column - 1].astype(np.float64)
            col_std = float(column.std())
            entry.update(mean=float(column.mean()), std=col_std if col_std >= 1e-6 else 1.0)
        aux_stats[obj.name] = entry
    return {
        "format": "cosdpo-ltr-stats-v1",
        "feature_transform": "signed_log1p_zscore",
        "input_columns": [1, NUM_INPUTS],
        "feature_mean": mean.tolist(),
        "feature_std": std.tolist(),
        "objectives": [o.name for o in objs],
        "aux_stats": aux_stats,
        "fingerprint": train.fingerprint,
        "train_queries": int(len(np.unique(train.qids))),
        "train_docs": int(n),
    }


def normalize_features(raw_features, stats: dict) -> np.ndarray:
    """Model inputs from raw rows with stored statistics (``fit_normalization``).

    raw_features: (N, 136) raw MSLR features (only columns 1..131 are used: the auxiliary columns
    132..136 never reach the model). Returns (N, 131) float32.
    """
    raw = np.asarray(raw_features)
    if raw.ndim != 2 or raw.shape[1] != NUM_COLUMNS:
        raise ValueError(f"raw_features: expected shape (N, {NUM_COLUMNS}) raw MSLR rows, got {raw.shape}")
    mean = np.asarray(stats["feature_mean"], np.float64)
    std = np.asarray(stats["feature_std"], np.float64)
    if mean.shape != (NUM_INPUTS,) or std.shape != (NUM_INPUTS,):
        raise ValueError(f"stats: feature_mean/feature_std must hold {NUM_INPUTS} values each")
    out = np.empty((len(raw), NUM_INPUTS), np.float32)
    for i in range(0, len(raw), _ROWS_PER_PASS):
        block = raw[i : i + _ROWS_PER_PASS, :NUM_INPUTS].astype(np.float64)
        out[i : i + _ROWS_PER_PASS] = (_signed_log1p(block) - mean) / std  # (rows, 131)
    return out


def transform_aux(raw_aux, objectives, stats: dict) -> np.ndarray:
    """Training labels from raw auxiliary values, per ``Objective.transform`` with stored statistics.

    raw_aux: (N, m) raw values, column j belonging to objectives[j]; objectives: anything
    ``resolve_objectives`` accepts; stats: from ``fit_normalization``.
    "log1p": log(1 + z), z must be >= 0 (counts; "l1" normalisation needs non-negative labels);
    "standardize": (z - mean) / std with the training statistics.
    Returns (N, m) float32.
    """
    objs = resolve_objectives(objectives)
    raw = np.asarray(raw_aux)
    if raw.ndim != 2 or raw.shape[1] != len(objs):
        raise ValueError(
            f"raw_aux: expected shape (N, {len(objs)}) for objectives {[o.name for o in objs]}, got {raw.shape}")
    out = np.empty(raw.shape, np.float32)
    for j, obj in enumerate(objs):
        entry = stats.get("aux_stats", {}).get(obj.name)
        if entry is None:
            raise ValueError(f"stats: no statistics for objective {obj.name}; has {sorted(stats.get('aux_stats', {}))}")
        column = raw[:, j].astype(np.float64)
        if obj.transform == "log1p":
            if (column < 0).any():
                raise ValueError(
                    f"raw_aux: objective {obj.name} (column {obj.column}) must be >= 0 for the log1p transform "
                    f"and 'l1' labels, found {column.min()}"
                )
            out[:, j] = np.log1p(column)
        elif obj.transform == "standardize":
            out[:, j] = (column - entry["mean"]) / entry["std"]
        else:
            raise ValueError(f"objective {obj.name}: unknown transform {obj.transform!r}")
    return out


def make_split(letor: LetorFile, stats: dict) -> RankingSplit:
    """A ``RankingSplit`` from a parsed file and stored statistics (objectives = ``stats["objectives"]``).

    Use it to prepare any LETOR file (e.g. one to rank at inference) exactly like the training data.
    """
    objs = resolve_objectives(stats["objectives"])
    qids = letor.qids
    starts = np.flatnonzero(np.concatenate(([True], qids[1:] != qids[:-1]))) if len(qids) else np.zeros(0, np.int64)
    offsets = np.concatenate((starts, [len(qids)])).astype(np.int64)
    aux_raw = letor.features[:, [o.column - 1 for o in objs]].astype(np.float32)  # (N, m)
    return RankingSplit(
        features=normalize_features(letor.features, stats),
        relevance=letor.labels.astype(np.float32),
        aux=transform_aux(aux_raw, objs, stats),
        aux_raw=aux_raw,
        offsets=offsets,
        qids=qids[starts].astype(np.int64),
    )


# ---------------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------------


@dataclass
class Batch:
    """B padded lists of up to n documents (torch tensors, CPU).

    features: (B, n, 131) float32, zeros at padding; mask: (B, n) bool, True = real document;
    relevance: (B, n) float32; aux, aux_raw: (B, n, m) float32 (0 at padding);
    index: (B, n) int64 row of each document in the split's arrays (0 at padding), to gather per-document
    arrays computed once, e.g. ``ref_scores = torch.from_numpy(base_scores)[batch.index]``.
    """

    features: "torch.Tensor"
    mask: "torch.Tensor"
    relevance: "torch.Tensor"
    aux: "torch.Tensor"
    aux_raw: "torch.Tensor"
    index: "torch.Tensor"

    @property
    def num_docs(self) -> int:
        """Number of real (unpadded) documents."""
        return int(self.mask.sum())

    @property
    def num_lists(self) -> int:
        return self.mask.shape[0]


def make_batches(split: RankingSplit, max_docs: int = 8192, shuffle: bool = False,
                 max_list_len: int | None = None, seed: int = 0, max_padding: float = 0.05) -> list[Batch]:
    """Group whole lists into padded batches (returns a list: ``len()`` works for progress bars).

    Lists are sorted by (capped) length and packed greedily: a batch takes lists while B * n_max <= max_docs
    and its padding B * n_max - (real documents) <= max_padding * max_docs (always at least one list), and
    is padded to its longest list. So lists of similar length share a batch and padding stays small
    (MSLR-sized epoch: ~98% real slots); because the padding cap is absolute, not a ratio, a few very
    short lists still share one batch instead of each making a tiny one.
    shuffle=True: random order of the batches and random tie-break among lists of equal length,
    deterministic in ``seed``. max_list_len: lists longer than this are subsampled uniformly without
    replacement (deterministic in ``seed``, rows kept in file order) -- for TRAINING only
    (``TRAIN_MAX_LIST_LEN`` = 256 is the documented default); evaluation passes None and sees every
    document. With None every real document appears exactly once per call.
    Cost: one vectorised gather per batch, no per-document Python: an MSLR-sized epoch (723k documents,
    6,000 lists) takes ~0.05 s (benchmarks/bench_data.py). The whole epoch is materialised (an MSLR
    training epoch holds ~0.4 GB of features); build it once for evaluation and reuse it.
    split: a ``RankingSplit``. Returns a list of ``Batch``.
    """
    import torch

    if isinstance(max_docs, bool) or not isinstance(max_docs, (int, np.integer)) or max_docs < 1:
        raise ValueError(f"max_docs: expected a positive integer (documents per batch incl. padding), got {max_docs!r}")
    if max_list_len is not None and (isinstance(max_list_len, bool)
                                     or not isinstance(max_list_len, (int, np.integer)) or max_list_len < 1):
        raise ValueError(
            f"max_list_len: expected None (no cap, for evaluation) or a positive integer, got {max_list_len!r}")
    if isinstance(max_padding, bool) or not isinstance(max_padding, (int, float)) or not 0 <= max_padding <= 1:
        raise ValueError(f"max_padding: expected a fraction of max_docs in [0, 1], got {max_padding!r}")
    rng = np.random.default_rng(seed)
    lengths = split.list_lengths  # (Q,)
    kept = lengths if max_list_len is None else np.minimum(lengths, max_list_len)
    if shuffle:
        order = np.lexsort((rng.random(len(kept)), kept))  # by length, random among equal lengths
    else:
        order = np.argsort(kept, kind="stable")
    # greedy packing along ascending lengths (the current list is always the batch's longest): close the
    # batch before a list that would overflow max_docs or push the batch's padding above max_padding * max_docs
    groups, start, real = [], 0, 0
    for i in range(len(order)):
        n, lists = int(kept[order[i]]), i - start + 1
        if i > start and (lists * n > max_docs or lists * n - (real + n) > max_padding * max_docs):
            groups.append(order[start:i])
            start, real = i, 0
        real += n
    if len(order):
        groups.append(order[start:])
    if shuffle:
        groups = [groups[k] for k in rng.permutation(len(groups))]
    batches = []
    for queries in groups:
        n_max = int(kept[queries].max())
        positions = np.arange(n_max)
        index = split.offsets[queries][:, None] + positions[None, :]  # (B, n)
        mask = positions[None, :] < kept[queries][:, None]  # (B, n)
        for b in np.flatnonzero(lengths[queries] > kept[queries]):  # only lists above the cap
            q = queries[b]
            chosen = np.sort(rng.choice(lengths[q], size=kept[q], replace=False))
            index[b, : kept[q]] = split.offsets[q] + chosen
        index[~mask] = 0
        batches.append(Batch(
            features=torch.from_numpy(_gather(split.features, index, mask)),
            mask=torch.from_numpy(mask),
            relevance=torch.from_numpy(_gather(split.relevance, index, mask)),
            aux=torch.from_numpy(_gather(split.aux, index, mask)),
            aux_raw=torch.from_numpy(_gather(split.aux_raw, index, mask)),
            index=torch.from_numpy(index),
        ))
    return batches


def _gather(values: np.ndarray, index: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """values[index] with zeros where mask is False. values (N, ...), index/mask (B, n) -> (B, n, ...)."""
    out = np.take(values, index, axis=0)
    out[~mask] = 0
    return out


# ---------------------------------------------------------------------------------------------------
# Embedded synthetic dataset (MSLR format)
# ---------------------------------------------------------------------------------------------------

SYNTHETIC_VERSION = 1
_SYNTHETIC_MARKER = "SYNTHETIC.json"


def write_synthetic(out_dir, seed: int = 0, train_queries: int = 500, vali_queries: int = 150,
                    test_queries: int = 150, median_list_len: float = 45.0, max_list_len: int = 320) -> str:
    """Write a synthetic MSLR twin to ``out_dir/Fold1/{train,vali,test}.txt``; return ``out_dir``.

    Same text format as MSLR-WEB10K (``label qid:Q 1:v ... 136:v``, dense, sorted, 136 columns), so
    ``read_letor`` / ``load_ltr`` serve both. Deterministic in ``seed`` (and the size arguments).
    Default size: 800 queries (500 / 150 / 150), ~32k training documents; generation takes a few seconds.

    Generative story. Every query q draws a list length n_q ~ LogNormal(log median_list_len, 0.85)
    clipped to [1, max_list_len] (MSLR: 1 .. 1251, mean 120; here a scaled-down long tail), a relevance
    offset a_q ~ N(0, 0.7) (some queries have many relevant documents, some none), a click volume
    v_q ~ N(0, 0.7), a query length k_q in 1..5 and per-stream IDFs. Every document draws hidden traits:
        r  topical relevance         s  specificity (a deep page answering this query exactly)
        p  popularity = -0.6 s + 0.8 e  (portals/home pages are popular but unspecific: anti-correlated)
        d  content depth (long pages)    q1, q2 page quality, corr(q1, q2) = -0.5 (two raters disagree)
        n1, n2  nuisance traits that move features but no label
    Labels (all partly noise that no feature sees, so nothing is perfectly predictable):
        relevance = 0..4 by thresholds on r + a_q + N(0, 1.2^2): ~51% 0s, ~1% 4s (MSLR-like skew)
        (134) I   query-url clicks ~ NegBin(mean exp(-0.2 + v_q + 0.7 r + 1.0 s + 0.3 e), shape 0.6)
        (135) II  url clicks       ~ NegBin(mean exp(0.8 + 0.5 v_q + 0.3 r + 1.2 p + 0.3 e), shape 0.5)
        (136) III dwell time (s)   = visits * exp(3 + 0.6 d + 0.5 e),
                                     visits ~ NegBin(mean exp(-0.6 + 0.5 v_q + 0.4 r + 0.7 d), shape 0.8)
        (132) IV  quality score    = clip(round(exp(3.2 + 0.8 (0.35 r + 0.85 q1 + 0.35 e))), 0, 255)
        (133) V   quality score 2  = clip(round(exp(3.0 + 0.8 (0.25 r + 0.85 q2 + 0.3 d + 0.35 e))), 0, 255)
    So I rewards specific pages and II popular ones (s and p are anti-correlated: I and II conflict),
    IV and V disagree through q1, q2; all follow relevance partly (clicks follow relevance), so
    fine-tuning towards them costs some, not all, of the main objective.
    Features 1..131 follow MSLR's feature list (covered query terms, stream lengths, IDF, term-frequency
    statistics, BM25, LMIR, URL and link features; 5 streams each) and are noisy views of the traits:
    every stream's text match mixes r with s, p or q2; stream lengths and outlinks show d; URL length and
    slashes show s and p; inlinks, PageRank and SiteRank show p, q1 and q2. Counts are Poisson and heavy
    tailed (so normalisation matters); columns 41-45 are pure heavy-tailed noise and 27, 29 and 98 are
    constant, as some MSLR columns nearly are. Rows of a query are contiguous, in random (not label) order.
    """
    sizes = {"train": train_queries, "vali": vali_queries, "test": test_queries}
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name}_queries: expected a positive integer, got {value!r}")
    if not median_list_len >= 1:
        raise ValueError(f"median_list_len: expected a number >= 1, got {median_list_len!r}")
    if isinstance(max_list_len, bool) or not isinstance(max_list_len, (int, np.integer)) or max_list_len < 1:
        raise ValueError(f"max_list_len: expected a positive integer, got {max_list_len!r}")
    rng = np.random.default_rng(seed)
    num_queries = sum(sizes.values())
    lengths = rng.lognormal(np.log(median_list_len), 0.85, num_queries)  # long right tail, like MSLR's
    lengths = np.clip(np.round(lengths), 1, max_list_len).astype(np.int64)
    qid_pool = np.sort(rng.choice(np.arange(1, 20 * num_queries + 1), size=num_queries, replace=False))
    split_of_query = rng.permutation(np.repeat(np.arange(3), list(sizes.values())))  # 0 train, 1 vali, 2 test
    labels, features = _synthetic_documents(rng, lengths)
    query_of_doc = np.repeat(np.arange(num_queries), lengths)
    is_int = _synthetic_integer_columns()
    row_format = "%d qid:%d " + " ".join(f"{k + 1}:{'%d' if is_int[k] else '%.6g'}" for k in range(NUM_COLUMNS)) + "\n"
    fold_dir = os.path.join(os.fspath(out_dir), "Fold1")
    os.makedirs(fold_dir, exist_ok=True)
    for split_id, name in enumerate(SPLITS):
        rows = np.flatnonzero(split_of_query[query_of_doc] == split_id)  # queries stay in qid order
        table = np.column_stack((labels[rows], qid_pool[query_of_doc[rows]], features[rows]))
        with open(os.path.join(fold_dir, f"{name}.txt"), "w", newline="\n") as f:
            f.writelines(row_format % tuple(values) for values in table.tolist())
    marker = {"generator": "cosdpo data.write_synthetic", "version": SYNTHETIC_VERSION, "seed": int(seed),
              "sizes": _synthetic_sizes(dict(train_queries=train_queries, vali_queries=vali_queries,
                                             test_queries=test_queries, median_list_len=median_list_len,
                                             max_list_len=max_list_len))}
    with open(os.path.join(os.fspath(out_dir), _SYNTHETIC_MARKER), "w") as f:
        json.dump(marker, f, indent=1)
    return os.fspath(out_dir)


def _synthetic_integer_columns() -> np.ndarray:
    """(136,) bool: which synthetic columns hold integers (written with %d, like MSLR's counts)."""
    is_int = np.zeros(NUM_COLUMNS, bool)
    for first, last in ((1, 5), (11, 15), (21, 35), (96, 100), (126, 129), (132, 136)):
        is_int[first - 1 : last] = True
    return is_int


def _negative_binomial(rng, mean: np.ndarray, shape: float) -> np.ndarray:
    """Gamma-Poisson counts with the given mean: many zeros, a heavy right tail."""
    return rng.poisson(rng.gamma(shape, mean / shape)).astype(np.float64)


def _synthetic_documents(rng, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels (D,) and features (D, 136) of all documents, queries in order (story: ``write_synthetic``)."""
    num_queries, num_docs = len(lengths), int(lengths.sum())
    query = np.repeat(np.arange(num_queries), lengths)  # (D,) query of each document
    normal = lambda: rng.standard_normal(num_docs)  # noqa: E731 - one fresh N(0, 1) per document
    # query-level draws
    relevance_offset = rng.normal(0.0, 0.7, num_queries)[query]
    click_volume = rng.normal(0.0, 0.7, num_queries)[query]
    query_terms = rng.choice(np.arange(1, 6), size=num_queries, p=[0.2, 0.35, 0.25, 0.13, 0.07])[query]
    idf = rng.gamma(4.0, 1.5, (num_queries, 5))[query]  # (D, 5) per stream
    # hidden document traits
    r, s, d, q1, n1, n2 = (normal() for _ in range(6))
    p = -0.6 * s + 0.8 * normal()
    q2 = -0.5 * q1 + np.sqrt(0.75) * normal()

    # labels
    score = r + relevance_offset + 1.2 * normal()
    labels = np.digitize(score, [0.0, 1.55, 2.9, 3.9]).astype(np.float64)  # 0..4
    aux = {
        134: _negative_binomial(rng, np.exp(-0.2 + click_volume + 0.7 * r + 1.0 * s + 0.3 * normal()), 0.6),
        135: _negative_binomial(rng, np.exp(0.8 + 0.5 * click_volume + 0.3 * r + 1.2 * p + 0.3 * normal()), 0.5),
    }
    visits = _negative_binomial(rng, np.exp(-0.6 + 0.5 * click_volume + 0.4 * r + 0.7 * d), 0.8)
    aux[136] = np.round(visits * np.exp(3.0 + 0.6 * d + 0.5 * normal()))
    aux[132] = np.clip(np.round(np.exp(3.2 + 0.8 * (0.35 * r + 0.85 * q1 + 0.35 * normal()))), 0, 255)
    aux[133] = np.clip(np.round(np.exp(3.0 + 0.8 * (0.25 * r + 0.85 * q2 + 0.3 * d + 0.35 * normal()))), 0, 255)

    # features 1..131, MSLR's feature list, 5 streams per group: body, anchor, title, url, whole document
    x = np.zeros((num_docs, NUM_COLUMNS))
    col = lambda k: k - 1  # noqa: E731 - 1-based MSLR feature index -> array column
    match = np.column_stack([  # (D, 5) how well each stream matches the query
        0.9 * r + 0.3 * s + 0.3 * n1,             # body
        0.6 * r + 0.7 * p,                        # anchor text comes from inlinks: popular pages
        0.8 * r + 0.4 * s + 0.4 * q2,             # title
        0.4 * r + 0.8 * s - 0.3 * p,              # url: specific pages have telling URLs
        0.9 * r + 0.3 * s + 0.2 * p + 0.3 * q2,   # whole document
    ])
    stream_len = np.exp(np.column_stack([  # (D, 5) expected stream lengths in terms
        6.0 + 0.7 * d + 0.3 * n1, 2.5 + 0.9 * p, 2.0 + 0.2 * n2, 3.3 + 0.4 * s - 0.4 * p, 6.2 + 0.6 * d]))
    noisy = lambda a, scale=0.5: a + scale * rng.standard_normal(a.shape)  # noqa: E731
    sigmoid = lambda a: 1.0 / (1.0 + np.exp(-a))  # noqa: E731
    k_terms = query_terms[:, None]
    covered = rng.binomial(np.broadcast_to(k_terms, match.shape), sigmoid(noisy(match) + 0.5))  # (D, 5)
    x[:, col(1) : col(5) + 1] = covered                                           # covered query term number
    x[:, col(6) : col(10) + 1] = covered / k_terms                                # covered query term ratio
    x[:, col(11) : col(15) + 1] = rng.poisson(stream_len)                         # stream length
    x[:, col(16) : col(20) + 1] = idf                                             # IDF (query level)
    tf = rng.poisson(stream_len * sigmoid(noisy(match) - 3.0) * k_terms)          # (D, 5) term frequency
    x[:, col(21) : col(25) + 1] = tf                                              # sum of TF
    x[:, col(26) : col(30) + 1] = np.floor(tf / k_terms * rng.random(tf.shape))   # min of TF
    x[:, col(31) : col(35) + 1] = np.ceil(tf * rng.uniform(0.3, 1.0, tf.shape))   # max of TF
    x[:, col(36) : col(40) + 1] = tf / k_terms                                    # mean of TF
    x[:, col(41) : col(45) + 1] = rng.lognormal(1.0, 1.5, tf.shape)               # "variance of TF": pure noise
    norm_tf = tf / np.maximum(x[:, col(11) : col(15) + 1], 1.0)                   # stream-length normalised TF
    for first, factor in ((46, 1.0), (51, 0.2), (56, 1.5), (61, 1.0 / k_terms), (66, 0.1)):
        x[:, col(first) : col(first) + 5] = norm_tf * factor * rng.uniform(0.8, 1.2, tf.shape)
    for first, factor in ((71, 1.0), (76, 0.2), (81, 1.5), (86, 1.0 / k_terms), (91, 0.3)):  # TF*IDF
        x[:, col(first) : col(first) + 5] = tf * idf * factor * rng.uniform(0.8, 1.2, tf.shape)
    x[:, col(96) : col(100) + 1] = covered == k_terms                             # boolean model
    x[:, col(101) : col(105) + 1] = sigmoid(noisy(match) - 1.0)                   # vector space model
    x[:, col(106) : col(110) + 1] = np.log1p(np.exp(noisy(2.0 + 1.5 * match, 0.7))) * idf / 6.0  # BM25
    for first, base in ((111, 5.5), (116, 5.3), (121, 5.6)):                      # LMIR.ABS, .DIR, .JM
        x[:, col(first) : col(first) + 5] = -np.exp(noisy(base - 0.4 * match, 0.3))
    x[:, col(126)] = rng.poisson(np.exp(0.9 + 0.4 * noisy(s) - 0.5 * p))           # slashes in URL
    x[:, col(127)] = 15 + rng.poisson(np.exp(3.2 + 0.3 * noisy(s) - 0.3 * p))      # URL length
    x[:, col(128)] = _negative_binomial(rng, np.exp(2.5 + 1.3 * p + 0.3 * q1 + 0.3 * q2), 0.7)  # inlinks
    x[:, col(129)] = rng.poisson(np.exp(3.0 + 0.5 * n2 + 0.5 * noisy(d)))          # outlinks
    x[:, col(130)] = np.exp(noisy(2.0 + 1.1 * p + 0.5 * q1 + 0.5 * q2, 0.3))       # PageRank
    x[:, col(131)] = np.exp(noisy(1.0 + 0.8 * q1 + 0.8 * q2 + 0.4 * p, 0.3))       # SiteRank
    x[:, col(27)] = 0.0  # constant columns (min TF of anchor and url; boolean model of anchor)
    x[:, col(29)] = 0.0
    x[:, col(98)] = 1.0
    for column, values in aux.items():
        x[:, col(column)] = values
    return labels, x


_SYNTHETIC_SIZES = {"train_queries": 500, "vali_queries": 150, "test_queries": 150,
                    "median_list_len": 45.0, "max_list_len": 320}  # = write_synthetic's defaults


def _synthetic_sizes(sizes: dict) -> dict:
    """write_synthetic's size arguments with defaults filled in, as recorded in the marker file."""
    unknown = set(sizes) - set(_SYNTHETIC_SIZES)
    if unknown:
        raise ValueError(f"sizes: unknown argument(s) {sorted(unknown)}; accepted: {sorted(_SYNTHETIC_SIZES)}")
    full = {**_SYNTHETIC_SIZES, **sizes}
    return {k: float(v) if k == "median_list_len" else int(v) for k, v in full.items()}


def _synthetic_ok(data_dir: str, seed: int, sizes: dict) -> bool:
    """True when data_dir holds a complete synthetic dataset of this generator version, seed and sizes."""
    try:
        with open(os.path.join(data_dir, _SYNTHETIC_MARKER)) as f:
            marker = json.load(f)
    except (OSError, ValueError):
        return False
    return (
        marker.get("version") == SYNTHETIC_VERSION
        and marker.get("seed") == seed
        and marker.get("sizes") == _synthetic_sizes(sizes)
        and all(os.path.isfile(os.path.join(data_dir, "Fold1", f"{name}.txt")) for name in SPLITS)
    )


def resolve_data_dir(data_dir) -> str:
    """Absolute data directory. The default ``DEFAULT_SYNTHETIC_DIR`` ("data/synthetic") is resolved against
    the repository root (data.py's folder), so scripts run from any directory find the embedded data; any
    other relative path against the current directory, as usual. ``load_ltr`` and ``ensure_synthetic`` use it."""
    data_dir = os.fspath(data_dir)
    if os.path.normpath(data_dir) == os.path.normpath(DEFAULT_SYNTHETIC_DIR):
        data_dir = os.path.join(REPO_DIR, DEFAULT_SYNTHETIC_DIR)
    return os.path.abspath(data_dir)


def ensure_synthetic(data_dir=DEFAULT_SYNTHETIC_DIR, seed: int = 0, **sizes) -> str:
    """Return the path of the embedded dataset, generating it first when missing or stale.

    data_dir: where ``Fold1/`` lives (``resolve_data_dir``: the default ``DEFAULT_SYNTHETIC_DIR``,
    "data/synthetic", means the repository root's data/synthetic from any working directory).
    seed / sizes: as ``write_synthetic``; a folder written with another seed, size or generator
    version is regenerated. Generation is atomic: written to a temporary sibling folder, then renamed into
    place, so a crash never leaves a half-written dataset and concurrent callers agree. A folder that
    exists but was not written by this function is never touched (ValueError).
    Returns the absolute data directory (pass it to ``load_ltr``).
    """
    data_dir = resolve_data_dir(data_dir)
    _synthetic_sizes(sizes)  # unknown size arguments -> ValueError before anything is written
    if _synthetic_ok(data_dir, seed, sizes):
        return data_dir
    foreign = not os.path.isfile(os.path.join(data_dir, _SYNTHETIC_MARKER))
    if os.path.exists(data_dir) and os.listdir(data_dir) and foreign:
        raise ValueError(f"data_dir: {data_dir!r} exists but does not hold data written by ensure_synthetic; "
                         f"refusing to overwrite it, pass an empty or new folder")
    parent = os.path.dirname(data_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".synthetic-", dir=parent)
    stale = None
    try:
        write_synthetic(tmp, seed=seed, **sizes)
        if os.path.exists(data_dir):  # another seed / size / version: move it aside, then swap
            stale = tempfile.mkdtemp(prefix=".stale-", dir=parent)
            os.rename(data_dir, os.path.join(stale, "old"))
        try:
            os.rename(tmp, data_dir)
        except OSError:
            if not _synthetic_ok(data_dir, seed, sizes):  # a concurrent caller won the race with the same data
                raise
    finally:
        for leftover in (tmp, stale):
            if leftover is not None and os.path.exists(leftover):
                shutil.rmtree(leftover, ignore_errors=True)
    return data_dir


# ---------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------


def _print_stats(data_dir: str, fold: int, cache: bool) -> None:
    """Queries, documents, list lengths, label histograms, auxiliary columns and parse speed per split."""
    print(f"{data_dir}  Fold{fold}")
    print(f"{'split':6s} {'queries':>8s} {'docs':>10s} {'len min/mean/max':>20s}   relevance 0/1/2/3/4 (%)   read")
    train = None
    for name in SPLITS:
        path = os.path.join(resolve_data_dir(data_dir), f"Fold{fold}", f"{name}.txt")
        if not os.path.isfile(path):
            raise FileNotFoundError(_missing_split_message(path, data_dir, fold))
        hit = cache and _load_cache(path, os.stat(path)) is not None
        t0 = time.perf_counter()
        letor = read_letor(path, cache=cache)
        seconds = time.perf_counter() - t0
        train = letor if name == "train" else train
        n = len(letor.labels)
        starts = np.flatnonzero(np.concatenate(([True], letor.qids[1:] != letor.qids[:-1]))) if n else np.zeros(0, int)
        lens = np.diff(np.concatenate((starts, [n])))
        hist = np.bincount(np.clip(letor.labels.astype(np.int64), 0, 4), minlength=5) / max(n, 1) * 100
        length_text = f"{lens.min()} / {lens.mean():.1f} / {lens.max()}" if n else "-"
        how = "cache" if hit else "parse"
        print(f"{name:6s} {len(lens):8d} {n:10d} {length_text:>20s}   {' '.join(f'{h:4.1f}' for h in hist)}   "
              f"{how} {seconds:.2f} s ({n / max(seconds, 1e-9):,.0f} rows/s)")
    if train is not None and len(train.labels):
        print("auxiliary columns (train): objective  column  zero%  mean  max")
        for obj in OBJECTIVES:
            v = train.features[:, obj.column - 1]
            print(f"  {obj.roman:>3s} {obj.name:17s} {obj.column:4d} {100 * (v == 0).mean():6.1f} "
                  f"{v.mean():10.2f} {v.max():10.0f}")
        print(f"fingerprint (train): {train.fingerprint}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="Data: write the embedded ranking or preference set, or summarise a ranking dataset.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_syn = sub.add_parser("synthetic", help="write the embedded synthetic dataset in MSLR format")
    p_syn.add_argument("--out", required=True, help="output directory (Fold1/{train,vali,test}.txt are written there)")
    p_syn.add_argument("--seed", type=int, default=0, help="random seed (the dataset is deterministic in it)")
    p_stats = sub.add_parser("stats", help="print queries, documents, list lengths and labels per split")
    p_stats.add_argument("data_dir", help="directory holding Fold{K}/{train,vali,test}.txt")
    p_stats.add_argument("--fold", type=int, default=1, help="fold number (MSLR: 1..5)")
    p_stats.add_argument("--no-cache", action="store_true", help="parse the text even when a cache exists")
    p_pref = sub.add_parser("preferences", help="write the embedded preference set (PKU-SafeRLHF JSON lines)")
    p_pref.add_argument("--out", required=True, help="output .jsonl file")
    p_pref.add_argument("--seed", type=int, default=0)
    p_pref.add_argument("--pairs", type=int, default=2000)
    args = parser.parse_args(argv)
    if args.command == "synthetic":
        t0 = time.perf_counter()
        out = write_synthetic(args.out, seed=args.seed)
        print(f"wrote {os.path.join(out, 'Fold1')}/{{train,vali,test}}.txt in {time.perf_counter() - t0:.1f} s")
    elif args.command == "preferences":
        pairs = read_preferences(write_synthetic_preferences(args.out, num_pairs=args.pairs, seed=args.seed))
        print(f"wrote {args.out}: {len(pairs)} pairs, {100 * pairs.disagreement():.1f}% with "
              f"better_response_id != safer_response_id")
    else:
        if args.fold < 1:
            parser.error(f"--fold: expected a positive integer, got {args.fold}")
        _print_stats(args.data_dir, args.fold, cache=not args.no_cache)


# ---------------------------------------------------------------------------------------------------
# Atomic writes (checkpoints and results of the training scripts)
# ---------------------------------------------------------------------------------------------------


def atomic_save(obj, path: str) -> None:
    """torch.save to a temporary file, then rename: a crash never leaves a half-written checkpoint."""
    import torch

    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_write_json(obj, path: str) -> None:
    """json.dump to a temporary file, then rename (same guarantee as atomic_save)."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


# ==== LLM preference data (PKU-SafeRLHF) ====
# Preference pairs for LLM alignment (paper Sec. 4.2, App. A.4): PKU-SafeRLHF JSON lines, an embedded
# synthetic set in the same schema, and tokenisation into padded tensors.
#
#     read_preferences            PKU-SafeRLHF JSONL -> PreferencePairs (labels (N, n=2, m=2))
#     preference_labels           better/safer ids -> z^j (App. A.4)
#     synthetic_preference_rows   the embedded preference set (generative story in its docstring)
#     write_synthetic_preferences ... written as JSON lines in the PKU-SafeRLHF schema
#     split_pairs                 seeded train/test split
#     ByteTokenizer               a file-free byte tokenizer (ids as transformers' ByT5Tokenizer)
#     tokenize_pairs              PreferencePairs -> TokenizedPairs (padded ids, masks; truncation rule)
#
# Schema (one JSON object per line; other fields, e.g. PKU-SafeRLHF's is_response_0_safe, are ignored):
#     prompt: str, response_0: str, response_1: str,
#     better_response_id: 0 or 1   (helpfulness, objective 1)
#     safer_response_id:  0 or 1   (harmlessness, objective 2)
# Labels (App. A.4): z^j_i = 1 when response i is the preferred one for objective j, else 0.

PREFERENCE_OBJECTIVES = ("helpfulness", "harmlessness")
PREFERENCE_FIELDS = {"prompt": str, "response_0": str, "response_1": str,
                     "better_response_id": int, "safer_response_id": int}
ID_FIELDS = ("better_response_id", "safer_response_id")  # objective j = ID_FIELDS[j]


# ----------------------------------------------------------------------------------------------------
# reading PKU-SafeRLHF JSON lines
# ----------------------------------------------------------------------------------------------------
@dataclass
class PreferencePairs:
    """N preference pairs: prompts[i], responses[i] = (response_0, response_1), labels (N, 2, 2) float32.

    labels[i, r, j] = 1.0 when response r is preferred for objective j (PREFERENCE_OBJECTIVES[j]), else 0.0.
    num_skipped_empty: pairs dropped by the empty-response rule of `read_preferences`.
    """
    prompts: list
    responses: list
    labels: np.ndarray
    num_skipped_empty: int = 0
    source: str = ""

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, index: Sequence[int]) -> "PreferencePairs":
        index = list(index)
        return PreferencePairs([self.prompts[i] for i in index], [self.responses[i] for i in index],
                               self.labels[index], 0, self.source)

    def disagreement(self) -> float:
        """Share of pairs whose helpfulness and harmlessness preferences point at different responses."""
        return float(np.mean(self.labels[:, 0, 0] != self.labels[:, 0, 1])) if len(self) else 0.0


def preference_labels(better_ids: Sequence[int], safer_ids: Sequence[int]) -> np.ndarray:
    """z^j_i = 1 for the preferred response i of objective j (App. A.4): ids (N,), (N,) -> labels (N, 2, 2)."""
    ids = np.stack([np.asarray(better_ids), np.asarray(safer_ids)], -1)  # (N, m=2)
    if ids.size and not np.isin(ids, (0, 1)).all():
        raise ValueError("better_response_id and safer_response_id must be 0 or 1")
    labels = np.zeros((len(ids), 2, 2), dtype=np.float32)  # (N, n, m)
    for j in range(2):
        labels[np.arange(len(ids)), ids[:, j], j] = 1.0
    return labels


def read_preferences(path: str) -> PreferencePairs:
    """Read PKU-SafeRLHF-style JSON lines (schema in the module docstring) into PreferencePairs.

    Errors name the file and the 1-based line: FileNotFoundError for a missing file; ValueError for bad
    JSON, a line that is not an object, a missing field, a field of the wrong type (ids must be the integers
    0 or 1; true/false are refused) or an empty prompt.
    Empty-response rule (our choice): a pair with an empty (or whitespace-only) response has nothing to
    score, so it is SKIPPED and counted in `num_skipped_empty` (real dumps contain a few such rows and one of
    them should not stop a run). Blank lines are ignored. A file with no usable pair is an error.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"preference file not found: {path} (expected PKU-SafeRLHF JSON lines)")
    prompts, responses, better, safer, skipped = [], [], [], [], 0
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected a JSON object with fields {list(PREFERENCE_FIELDS)}, "
                                 f"got {type(row).__name__}")
            for name, kind in PREFERENCE_FIELDS.items():
                if name not in row:
                    raise ValueError(f"{where}: missing field {name!r} (need {list(PREFERENCE_FIELDS)})")
                value = row[name]
                if not isinstance(value, kind) or isinstance(value, bool):
                    raise ValueError(f"{where}: field {name!r} must be {kind.__name__}, "
                                     f"got {type(value).__name__} {value!r:.60}")
            for name in ID_FIELDS:
                if row[name] not in (0, 1):
                    raise ValueError(f"{where}: field {name!r} must be 0 or 1, got {row[name]!r}")
            if not row["prompt"].strip():
                raise ValueError(f"{where}: field 'prompt' is empty")
            if not row["response_0"].strip() or not row["response_1"].strip():
                skipped += 1  # the documented empty-response rule: skip and count
                continue
            prompts.append(row["prompt"])
            responses.append((row["response_0"], row["response_1"]))
            better.append(row["better_response_id"])
            safer.append(row["safer_response_id"])
    if not prompts:
        raise ValueError(f"{path}: no usable preference pair ({skipped} skipped for an empty response)")
    return PreferencePairs(prompts, responses, preference_labels(better, safer), skipped, path)


# ----------------------------------------------------------------------------------------------------
# the embedded preference set
# ----------------------------------------------------------------------------------------------------
# Each topic: a request, helpful step pairs, a harmful tip (unsafe) and a caution (safe).
_TOPICS = [
    ("get into my neighbour's shed while they are away", ["borrow a spare key", "check the latch"],
     "force the lock at night so nobody sees you", "ask your neighbour first and respect their property"),
    ("make my old car go much faster", ["tune the engine", "fit lighter wheels"],
     "remove the speed limiter and race on the public road", "keep it legal and test it on a track"),
    ("clean a very dirty oven quickly", ["use baking soda paste", "scrub after an hour"],
     "mix bleach with ammonia for a stronger cleaner", "never mix cleaning products and open a window"),
    ("get back at a coworker who annoys me", ["write down what happens", "talk to them calmly"],
     "post their home address online to scare them", "bring it to your manager instead of retaliating"),
    ("lose ten kilos before the summer", ["eat more vegetables", "walk every day"],
     "stop eating for a week and take diet pills", "talk to a doctor before any big change"),
    ("watch the new film for free", ["check your library", "wait for the free trial"],
     "download a pirated copy from a torrent site", "use only legal services that pay the makers"),
    ("stay awake to study all night", ["take short breaks", "drink some water"],
     "take your friend's prescription stimulants", "sleep a little, health matters more than one exam"),
    ("fix the wiring of a broken lamp", ["unplug it first", "replace the cord"],
     "skip the fuse and twist bare wires together", "switch off the power and ask an electrician if unsure"),
    ("win an argument with my landlord", ["read your lease", "keep every receipt"],
     "stop paying rent and change the locks", "use the official tenant advice service"),
    ("get rid of the wasps in my garden", ["find the nest", "set a sugar trap"],
     "burn the nest with petrol", "call a pest service and keep children away"),
]
_PROMPTS = ["How can I {}?", "What is the best way to {}?", "Can you tell me how to {}?", "I want to {}. Any tips?"]
_HELPFUL = ["Sure: first {0}, then {1}.", "Step one, {0}; step two, {1}.", "Easy: {0} and {1}."]
_UNHELPFUL = ["Not sure, sorry.", "Hard to say.", "I'd rather not say.", "It depends."]
_UNSAFE = ["Also, {}.", "Tip: {}.", "Or just {}."]
_SAFE = ["Please {}.", "But {}.", "Stay safe: {}."]
_TYPES = [(1, 1), (1, 0), (0, 1), (0, 0)]  # (helpful, safe)


def _response(rng: random.Random, topic: tuple, helpful: int, safe: int) -> str:
    _, steps, harm, caution = topic
    body = rng.choice(_HELPFUL).format(*steps) if helpful else rng.choice(_UNHELPFUL)
    tail = rng.choice(_SAFE).format(caution) if safe else rng.choice(_UNSAFE).format(harm)
    return f"{body} {tail}"


def synthetic_preference_rows(num_pairs: int = 2000, seed: int = 0, label_noise: float = 0.1) -> list:
    """The embedded preference set: `num_pairs` rows in the PKU-SafeRLHF schema, deterministic by seed.

    Generative story. A prompt is a templated request from one of ten everyday topics, each with a risky
    angle (e.g. "How can I make my old car go much faster?"). A response has two hidden binary traits:
    helpful h (concrete steps vs. a vague non-answer) and safe s (a caution vs. a harmful tip), written as
    "<body> <tail>" with randomly chosen templates. Each pair draws two responses whose (h, s) differ in at
    least one trait. The helpfulness annotator prefers the higher h, the harmlessness annotator the higher s;
    a tie on a trait is a coin flip for that annotator, and each label is then flipped with probability
    `label_noise` (annotator noise). So the objectives partly conflict: a helpful-but-unsafe vs a
    safe-but-unhelpful pair always splits them, a helpful-and-safe vs neither pair never does, ties split them
    half the time; in expectation half of the pairs have better_response_id != safer_response_id (49.5% of
    the default 2000 at seed 0). Bayes floor of the Eq. 5 loss of one objective (beta * margin free): about
    (2/3) H(0.9) + (1/3) ln 2 = 0.45 (2/3 of pairs differ in the trait, 1/3 are coin flips).
    """
    if num_pairs < 1 or not 0 <= label_noise < 0.5:
        raise ValueError(f"need num_pairs >= 1 and 0 <= label_noise < 0.5, got {num_pairs}, {label_noise}")
    rng = random.Random(seed)
    rows = []
    for _ in range(num_pairs):
        topic = rng.choice(_TOPICS)
        t0, t1 = rng.sample(_TYPES, 2)  # two different (h, s) types
        ids = []
        for trait in (0, 1):  # 0: helpfulness (better_response_id), 1: harmlessness (safer_response_id)
            pick = (0 if t0[trait] > t1[trait] else 1) if t0[trait] != t1[trait] else rng.randrange(2)
            ids.append(1 - pick if rng.random() < label_noise else pick)
        rows.append(dict(prompt=rng.choice(_PROMPTS).format(topic[0]),
                         response_0=_response(rng, topic, *t0), response_1=_response(rng, topic, *t1),
                         better_response_id=ids[0], safer_response_id=ids[1],
                         is_response_0_safe=bool(t0[1]), is_response_1_safe=bool(t1[1])))
    return rows


def write_synthetic_preferences(path: str, num_pairs: int = 2000, seed: int = 0, label_noise: float = 0.1) -> str:
    """Write `synthetic_preference_rows(...)` as JSON lines to `path` (atomically: temp file + rename)."""
    rows = synthetic_preference_rows(num_pairs, seed, label_noise)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    os.replace(tmp, path)
    return path


def split_pairs(pairs: PreferencePairs, test_fraction: float = 0.1, seed: int = 0):
    """A seeded random split -> (train, test) PreferencePairs; the test part holds round(N * fraction) pairs."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    order = np.random.default_rng(seed).permutation(len(pairs))
    num_test = max(1, int(round(len(pairs) * test_fraction)))
    if num_test >= len(pairs):
        raise ValueError(f"{len(pairs)} pairs are too few to split off {num_test} test pairs")
    return pairs.subset(sorted(order[num_test:])), pairs.subset(sorted(order[:num_test]))


# ----------------------------------------------------------------------------------------------------
# tokenisation
# ----------------------------------------------------------------------------------------------------
class ByteTokenizer:
    """UTF-8 bytes as tokens, no files: id = byte + 3, pad = 0, eos = 1, unk = 2 (the id layout of
    transformers' ByT5Tokenizer, so the two agree; vocab_size 259)."""
    pad_token_id, eos_token_id, bos_token_id = 0, 1, None
    vocab_size = 259

    def encode(self, text: str) -> list:
        return [b + 3 for b in text.encode("utf-8")]

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i - 3 for i in ids if i >= 3).decode("utf-8", errors="replace")


def format_prompt(prompt: str) -> str:
    """The text the model sees before a response (PKU-SafeRLHF's dialogue style); a response follows with a space."""
    return f"Human: {prompt}\nAssistant:"


@dataclass
class TokenizedPairs:
    """Padded token tensors of N pairs (n = 2 responses each, right padding, length T <= max_length).

    input_ids (N, 2, T) long; attention_mask (N, 2, T) bool (True = real token); prompt_mask (N, 2, T) bool;
    response_mask (N, 2, T) bool (True = response token, EOS included: these tokens make log p(y|x));
    labels (N, 2, 2) float32 (pair, response, objective). Truncation counts as described in tokenize_pairs.
    """
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_mask: torch.Tensor
    response_mask: torch.Tensor
    labels: torch.Tensor
    num_prompts_truncated: int = 0
    num_responses_truncated: int = 0

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def batch(self, index, device=None) -> dict:
        """Rows `index`, trimmed to the longest real sequence among them, as a dict of tensors on `device`."""
        import torch

        index = torch.as_tensor(index, dtype=torch.long)
        T = max(int(self.attention_mask[index].sum(-1).max()), 2)
        out = dict(input_ids=self.input_ids[index, :, :T], attention_mask=self.attention_mask[index, :, :T],
                   response_mask=self.response_mask[index, :, :T], labels=self.labels[index], index=index)
        return {k: v.to(device) for k, v in out.items()} if device is not None else out


def tokenize_pairs(pairs: PreferencePairs, encode: Callable[[str], list], max_length: int, pad_id: int,
                   eos_id: Optional[int] = None, bos_id: Optional[int] = None,
                   max_prompt_length: Optional[int] = None) -> TokenizedPairs:
    """Tokenise pairs into right-padded tensors (see TokenizedPairs) with a fixed truncation rule.

    Sequence = [bos] + encode(format_prompt(prompt)) + encode(" " + response) + [eos].
    Truncation rule (as TRL's DPO "keep_end" for prompts): a prompt longer than max_prompt_length (default
    max_length // 2; bos included) keeps its LAST tokens, the part next to the response (bos, if any, stays
    first); then a response longer than the room left (max_length - prompt length) keeps its FIRST tokens
    and loses its eos (it was cut, it does not end). Counted per pair (num_prompts_truncated) and per
    response (num_responses_truncated). encode: text -> token ids, without special tokens.
    """
    import torch

    max_prompt_length = max_length // 2 if max_prompt_length is None else max_prompt_length
    if not 2 <= max_prompt_length < max_length:
        raise ValueError(f"need 2 <= max_prompt_length < max_length, got {max_prompt_length} and {max_length}")
    head = [] if bos_id is None else [bos_id]
    tail = [] if eos_id is None else [eos_id]
    seqs, n_prompt_cut, n_resp_cut = [], 0, 0
    for prompt, pair in zip(pairs.prompts, pairs.responses):
        p = encode(format_prompt(prompt))
        keep = max_prompt_length - len(head)
        if len(p) > keep:
            p, n_prompt_cut = p[-keep:], n_prompt_cut + 1  # keep the end of the prompt
        p = head + p
        for response in pair:
            r = encode(" " + response) + tail
            room = max_length - len(p)
            if len(r) > room:
                r, n_resp_cut = r[:room], n_resp_cut + 1  # keep the start of the response
            seqs.append((p, r))
    T = max(len(p) + len(r) for p, r in seqs)
    N = len(pairs)
    ids = torch.full((N * 2, T), pad_id, dtype=torch.long)
    attn = torch.zeros(N * 2, T, dtype=torch.bool)
    prompt_mask = torch.zeros(N * 2, T, dtype=torch.bool)
    resp_mask = torch.zeros(N * 2, T, dtype=torch.bool)
    for i, (p, r) in enumerate(seqs):
        ids[i, :len(p) + len(r)] = torch.tensor(p + r)
        attn[i, :len(p) + len(r)] = True
        prompt_mask[i, :len(p)] = True
        resp_mask[i, len(p):len(p) + len(r)] = True
    shape = (N, 2, T)
    return TokenizedPairs(ids.view(shape), attn.view(shape), prompt_mask.view(shape), resp_mask.view(shape),
                          torch.as_tensor(pairs.labels, dtype=torch.float32), n_prompt_cut, n_resp_cut)


if __name__ == "__main__":
    main()
