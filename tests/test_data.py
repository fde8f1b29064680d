"""Tests for data.py: LETOR reader (both paths, bad input, cache), splits and normalisation, batching,
the embedded synthetic dataset; for the LLM path, the preference reader, the synthetic preference set,
tokenize_pairs, the byte and BPE tokenizers and the embedded set's judge. Tiny files under tmp_path."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import data
import data as data_lib  # the name the LLM-path tests below use

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- helpers ----------------------------------------------------------------------------------------


def dense_line(label, qid, values) -> str:
    """One MSLR line: 'label qid:Q 1:v1 ... 136:v136' (values formatted with repr-like %.9g)."""
    return f"{label:g} qid:{qid} " + " ".join(f"{k}:{v:.9g}" for k, v in enumerate(values, start=1))


def random_rows(rng, n, qids=None):
    """n rows of (label, qid, 136 values) mixing integers, decimals, negatives and large numbers."""
    qids = np.repeat(np.arange(1, n // 4 + 2), 4)[:n] if qids is None else np.asarray(qids)
    values = np.round(rng.normal(0, 3, (n, data.NUM_COLUMNS)), 3)
    values[:, ::3] = rng.integers(0, 50, (n, len(range(0, data.NUM_COLUMNS, 3))))
    values[:, 10] = rng.lognormal(8, 2, n).round()  # heavy-tailed counts
    values[:, 5] = rng.random(n) * 1e-5  # written in exponent notation by %g
    labels = rng.integers(0, 5, n)
    return labels, qids, values


def write_dense(path, labels, qids, values, newline="\n"):
    text = newline.join(dense_line(l, q, v) for l, q, v in zip(labels, qids, values)) + newline
    with open(path, "w", newline="") as f:
        f.write(text)
    return path


def ndcg_at_k(scores, gains, offsets, k=10):
    """Naive NDCG@k (paper Eq. 22, linear gains), averaged over lists with a positive ideal DCG."""
    values = []
    for q in range(len(offsets) - 1):
        g = np.asarray(gains[offsets[q] : offsets[q + 1]], np.float64)
        s = scores[offsets[q] : offsets[q + 1]]
        ideal = sorted(g, reverse=True)[:k]
        idcg = sum(v / np.log2(i + 2) for i, v in enumerate(ideal))
        if idcg <= 0:
            continue
        ranked = [g[i] for i in np.argsort(-s, kind="stable")[:k]]
        values.append(sum(v / np.log2(i + 2) for i, v in enumerate(ranked)) / idcg)
    return float(np.mean(values))


# --- objectives ---------------------------------------------------------------------------------------


def test_objectives_follow_the_paper_numbering():
    assert [(o.roman, o.column) for o in data.OBJECTIVES] == [
        ("I", 134),
        ("II", 135),
        ("III", 136),
        ("IV", 132),
        ("V", 133),
    ]
    assert [o.label_norm for o in data.OBJECTIVES] == ["l1", "l1", "l1", "softmax", "softmax"]


def test_resolve_objectives_accepts_names_romans_numbers_and_comma_strings():
    I, II, III, IV, V = data.OBJECTIVES
    assert data.resolve_objectives(["query_url_clicks", "url_clicks"]) == (I, II)
    assert data.resolve_objectives(("ii", "I")) == (II, I)  # order kept, case-insensitive
    assert data.resolve_objectives("I,II") == (I, II)
    assert data.resolve_objectives("4, 5") == (IV, V)
    assert data.resolve_objectives([3, "quality-score"]) == (III, IV)
    assert data.resolve_objectives([V]) == (V,)


@pytest.mark.parametrize("names", [["VI"], ["clicks"], "0", ["I", "1"], "I,I", [], ""])
def test_resolve_objectives_refuses_unknown_duplicate_and_empty(names):
    with pytest.raises(ValueError, match="objective"):
        data.resolve_objectives(names)


def test_unknown_objective_error_lists_accepted_names():
    with pytest.raises(ValueError) as err:
        data.resolve_objectives(["VI"])
    assert "query_url_clicks" in str(err.value) and "quality_score2" in str(err.value)


# --- reader -------------------------------------------------------------------------------------------


def test_fast_path_reads_dense_lines_exactly(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    labels, qids, values = random_rows(rng, 30)
    path = write_dense(tmp_path / "a.txt", labels, qids, values)

    def no_general(*args):
        raise AssertionError("dense MSLR lines must take the fast path")

    monkeypatch.setattr(data, "_parse_block_general", no_general)
    letor = data.read_letor(path, cache=False)
    assert letor.features.shape == (30, 136) and letor.features.dtype == np.float32
    np.testing.assert_array_equal(letor.labels, labels.astype(np.float32))
    np.testing.assert_array_equal(letor.qids, qids)
    np.testing.assert_array_equal(letor.features, values.astype(np.float32))


def test_both_reader_paths_give_identical_arrays(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    labels, qids, values = random_rows(rng, 40)
    values[rng.random(values.shape) < 0.3] = 0.0  # zeros, which the sparse file omits
    dense = write_dense(tmp_path / "dense.txt", labels, qids, values)
    fast = data.read_letor(dense, cache=False)
    # the same content as sparse, unsorted, commented, CRLF, tab-separated lines with blanks in between
    lines = ["# a header comment", ""]
    for l, q, v in zip(labels, qids, values):
        items = [f"{k}:{x:.9g}" for k, x in enumerate(v, start=1) if x != 0]
        items = items[::-1] if q % 2 else items
        qid_text = f"{q:.1e}" if q == qids[-1] else str(q)  # an integer-valued qid in exponent notation
        lines.append(f"{l}\tqid:{qid_text} " + " ".join(items) + "   # docid = 7 ")
    with open(tmp_path / "sparse.txt", "w", newline="") as f:
        f.write("\r\n".join(lines) + "\r\n\r\n")
    general = data.read_letor(tmp_path / "sparse.txt", cache=False)
    monkeypatch.setattr(data, "_parse_block_fast", lambda block: None)  # force the general path
    dense_general = data.read_letor(dense, cache=False)
    for other in (general, dense_general):
        np.testing.assert_array_equal(other.labels, fast.labels)
        np.testing.assert_array_equal(other.qids, fast.qids)
        np.testing.assert_array_equal(other.features, fast.features)
        assert other.fingerprint == fast.fingerprint


def test_crlf_trailing_blanks_and_missing_final_newline(tmp_path, monkeypatch):
    monkeypatch.setattr(
        data, "_parse_block_general", lambda *a: (_ for _ in ()).throw(AssertionError("slow path"))
    )
    rng = np.random.default_rng(2)
    labels, qids, values = random_rows(rng, 6)
    # no final newline
    text = "\r\n".join(dense_line(l, q, v) + "  " for l, q, v in zip(labels, qids, values))
    (tmp_path / "c.txt").write_bytes(text.encode())
    letor = data.read_letor(tmp_path / "c.txt", cache=False)
    np.testing.assert_array_equal(letor.features, values.astype(np.float32))
    np.testing.assert_array_equal(letor.qids, qids)


def test_sparse_line_missing_features_are_zero(tmp_path):
    (tmp_path / "s.txt").write_text("2 qid:7 3:1.5 136:9\n0 qid:7 1:-2 # comment 5:5\n")
    letor = data.read_letor(tmp_path / "s.txt", cache=False)
    expected = np.zeros((2, 136), np.float32)
    expected[0, 2], expected[0, 135], expected[1, 0] = 1.5, 9, -2
    np.testing.assert_array_equal(letor.features, expected)
    np.testing.assert_array_equal(letor.labels, [2, 0])


BAD_LINES = [
    ("1 qid:3 1:0.5 2:abc", "feature 2 must be a finite number", "2:abc"),
    ("x qid:3 1:0.5", "label must be a finite number", "x"),
    ("1 1:0.5 2:3", "expected 'qid:<integer>'", "1:0.5"),
    ("1", "expected 'qid:<integer>'", "end of line"),
    ("1 qid:three 1:0.5", "query id must be a finite number", "qid:three"),
    ("1 qid:3 137:0.5", "index in 1..136", "137:0.5"),
    ("1 qid:3 0:0.5", "index in 1..136", "0:0.5"),
    ("1 qid:3 1:nan", "finite", "1:nan"),
    ("1 qid:3 5:inf", "finite", "5:inf"),
    ("nan qid:3 1:1", "finite", "nan"),
    ("1 qid:3 12:4e39", "within float32's range", "12:4e39"),  # finite in float64, inf in float32
    ("1e39 qid:3 1:1", "within float32's range", "1e39"),
    ("1 qid:1e30 1:1", "expected 'qid:<integer>'", "qid:1e30"),  # beyond int64
    ("1 qid:3 4:1 4:2", "not given before", "4:2"),
    ("1 qid:3 4=1", "index:value", "4=1"),
]


@pytest.mark.parametrize("bad, message, token", BAD_LINES)
def test_malformed_line_names_file_line_and_token(tmp_path, bad, message, token):
    rng = np.random.default_rng(3)
    labels, qids, values = random_rows(rng, 4, qids=[3, 3, 3, 3])
    good = [dense_line(l, q, v) for l, q, v in zip(labels, qids, values)]
    path = tmp_path / "bad.txt"
    path.write_text("\n".join(good[:2] + [bad] + good[2:]) + "\n")  # dense lines around: fast path first
    with pytest.raises(ValueError) as err:
        data.read_letor(path, cache=False)
    text = str(err.value)
    assert str(path) in text and "line 3" in text and message in text and repr(token) in text


DENSE_MUTATIONS = [  # a full 136-column line with one defect (regex, replacement): the fast path must refuse each
    (r" 136:", " 137:", "index in 1..136", "137:"),
    (r" 5:", " 6:", "not given before", "6:"),
    (r" 40:", " 04:", "not given before", "04:"),
    (r" qid:", " qiz:", "expected 'qid:", "qiz:"),
    (r" 77:", " 77:1:", "feature 77 must be a finite number", "77:1:"),
    (r" 9:", " 9:x", "feature 9 must be a finite number", "9:x"),
    (r" 12:\S+", " 12:nan", "finite", "12:nan"),
    (r" 30:\S+", " 30:-inf", "finite", "30:-inf"),
    (r"^\S+", "inf", "finite", "inf"),
    (r" 12:\S+", " 12:4e39", "within float32's range", "12:4e39"),  # finite in float64, inf in float32
    (r" 33:\S+", " 33:-3.5e38", "within float32's range", "33:-3.5e38"),
    (r" qid:\S+", " qid:1e30", "expected 'qid:<integer>'", "qid:1e30"),
    (r" qid:\S+", " qid:2.5", "expected 'qid:<integer>'", "qid:2.5"),
    (r" 20:", " 7 20:", "index:value", "7"),
]


@pytest.mark.parametrize("old, new, message, token", DENSE_MUTATIONS)
def test_dense_line_with_one_defect_is_refused(tmp_path, old, new, message, token):
    rng = np.random.default_rng(11)
    labels, qids, values = random_rows(rng, 3, qids=[5, 5, 5])
    lines = [dense_line(l, q, v) for l, q, v in zip(labels, qids, values)]
    lines[1] = re.sub(old, new, lines[1], count=1)
    path = tmp_path / "m.txt"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError) as err:
        data.read_letor(path, cache=False)
    text = str(err.value)
    assert "line 2" in text and message in text and token in text


def test_reappearing_qid_is_refused_naming_both_lines(tmp_path):
    rng = np.random.default_rng(4)
    labels, qids, values = random_rows(rng, 5, qids=[1, 1, 2, 1, 3])
    path = write_dense(tmp_path / "r.txt", labels, qids, values)
    with pytest.raises(ValueError, match=r"line 4: qid 1 reappears .* end at line 2"):
        data.read_letor(path, cache=False)


@pytest.mark.parametrize("content", ["", "\n\n", "# only a comment\n"])
def test_empty_file_gives_zero_rows(tmp_path, content):
    (tmp_path / "e.txt").write_text(content)
    letor = data.read_letor(tmp_path / "e.txt")
    assert letor.labels.shape == (0,) and letor.qids.shape == (0,) and letor.features.shape == (0, 136)


def test_missing_file_says_how_to_get_mslr(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        data.read_letor(tmp_path / "nope" / "train.txt")
    assert str(tmp_path / "nope" / "train.txt") in str(err.value) and data.MSLR_URL in str(err.value)


def test_load_ltr_missing_folder_names_expected_path(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        data.load_ltr(tmp_path / "MSLR-WEB10K", fold=2)
    message = str(err.value)
    assert os.path.join("MSLR-WEB10K", "Fold2", "train.txt") in message and data.MSLR_URL in message


def make_fold(root, splits_rows, fold=1):
    """Write root/Fold{fold}/{split}.txt from {split: (labels, qids, values)}."""
    os.makedirs(root / f"Fold{fold}", exist_ok=True)
    for name, rows in splits_rows.items():
        write_dense(root / f"Fold{fold}" / f"{name}.txt", *rows)
    return root


def test_load_ltr_refuses_an_empty_split(tmp_path):
    rng = np.random.default_rng(5)
    root = make_fold(tmp_path, {name: random_rows(rng, 8) for name in ("train", "vali")})
    (root / "Fold1" / "test.txt").write_text("")
    with pytest.raises(ValueError, match="test split must hold documents"):
        data.load_ltr(root)
    write_dense(root / "Fold1" / "test.txt", [-1, 2], [1, 1], np.ones((2, 136)))
    with pytest.raises(ValueError, match="relevance labels >= 0"):
        data.load_ltr(root)


# --- cache --------------------------------------------------------------------------------------------


def test_cache_is_written_reused_and_invalidated(tmp_path, monkeypatch):
    rng = np.random.default_rng(6)
    labels, qids, values = random_rows(rng, 12)
    path = write_dense(tmp_path / "train.txt", labels, qids, values)
    first = data.read_letor(path)
    assert (tmp_path / "train.txt.npz").is_file()
    real_parse = data._parse_block_fast  # the dense lines written here take the fast path

    def refuse(*args):
        raise AssertionError("should have used the cache")

    monkeypatch.setattr(data, "_parse_block_fast", refuse)
    again = data.read_letor(path)
    np.testing.assert_array_equal(again.features, first.features)
    assert again.fingerprint == first.fingerprint
    # same size, new content and modification time -> the cache is stale
    text = path.read_text().replace("qid:1 ", "qid:9 ", 1)
    path.write_text(text)
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="should have used the cache"):
        data.read_letor(path)
    monkeypatch.setattr(data, "_parse_block_fast", real_parse)
    assert data.read_letor(path).qids[0] == 9
    # a size change alone also invalidates it
    with open(path, "a") as f:
        f.write(dense_line(0, 99, values[0]) + "\n")
    assert len(data.read_letor(path).labels) == 13


def test_no_partial_cache_after_a_failed_parse(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("1 qid:1 1:0.5\n1 qid:1 1:oops\n")
    with pytest.raises(ValueError):
        data.read_letor(path)
    assert sorted(os.listdir(tmp_path)) == ["bad.txt"]


def test_cache_off_writes_nothing_and_damaged_cache_is_ignored(tmp_path, monkeypatch):
    rng = np.random.default_rng(7)
    path = write_dense(tmp_path / "t.txt", *random_rows(rng, 5))
    data.read_letor(path, cache=False)
    assert sorted(os.listdir(tmp_path)) == ["t.txt"]
    (tmp_path / "t.txt.npz").write_bytes(b"not a zip file")
    letor = data.read_letor(path)
    assert letor.features.shape == (5, 136)
    monkeypatch.setattr(
        data, "_parse_block_fast", lambda b: (_ for _ in ()).throw(AssertionError("no cache used"))
    )
    # the damaged cache was rewritten
    np.testing.assert_array_equal(data.read_letor(path).features, letor.features)


def test_unwritable_cache_place_still_parses_and_leaves_nothing(tmp_path):
    rng = np.random.default_rng(8)
    path = write_dense(tmp_path / "train.txt", *random_rows(rng, 6))
    (tmp_path / "train.txt.npz").mkdir()  # a folder in the way: the cache cannot be written
    first = data.read_letor(path)
    np.testing.assert_array_equal(data.read_letor(path).features, first.features)
    assert sorted(os.listdir(tmp_path)) == ["train.txt", "train.txt.npz"]  # no temporary file left behind


def test_atomic_save_by_suffix_and_nothing_left_on_error(tmp_path):
    data.atomic_save({"a": [1, 2.5], "b": "x"}, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": [1, 2.5], "b": "x"}
    data.atomic_save({"x": np.arange(3)}, tmp_path / "c.npz")
    with np.load(tmp_path / "c.npz", allow_pickle=False) as z:
        np.testing.assert_array_equal(z["x"], np.arange(3))
    data.atomic_save({"w": torch.ones(2), "step": 3}, tmp_path / "m.pt")
    assert torch.load(tmp_path / "m.pt", weights_only=True)["step"] == 3
    with pytest.raises(TypeError):  # not JSON: the old file stays, no temporary file is left
        data.atomic_save({"a": object()}, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())["b"] == "x"
    assert sorted(os.listdir(tmp_path)) == ["c.npz", "m.pt", "r.json"]


def test_parse_floats_and_parse_weight():
    assert data.parse_floats("0.5", "alpha", 3) == [0.5, 0.5, 0.5]
    assert data.parse_floats("0.3,0.7", "beta", 2) == [0.3, 0.7]
    assert data.parse_floats("1,2,3", "scales") == [1.0, 2.0, 3.0]
    assert data.parse_weight("0.25,0.75", 2) == [0.25, 0.75]
    for text, m, message in (
        ("a", 2, "--alpha must be a number or 2"),
        ("1,2,3", 2, "one number or 2"),
        ("0", 2, "> 0 and finite"),
        ("nan", 2, "finite"),
    ):
        with pytest.raises(ValueError, match=message):
            data.parse_floats(text, "alpha", m)
    for text in ("0.5", "0.5,0.6", "-0.5,1.5"):
        with pytest.raises(ValueError, match="--w must be 2 comma-separated numbers >= 0 summing to 1"):
            data.parse_weight(text, 2)


# --- splits, normalisation, objectives in the data -------------------------------------------------------


@pytest.fixture()
def small_fold(tmp_path):
    """Fold1 with 3 splits; columns 132..136 hold sentinel values distinct from every input value."""
    rng = np.random.default_rng(9)
    rows = {}
    for name, n in (("train", 24), ("vali", 10), ("test", 9)):
        labels, qids, values = random_rows(rng, n)
        values[:, 131:136] = rng.integers(0, 40, (n, 5)) + np.array([1e6, 2e6, 3e6, 4e6, 5e6])  # sentinels
        values[:, 7] = 4.0  # a constant input column
        rows[name] = (labels, qids, values)
    make_fold(tmp_path, rows)
    return tmp_path, rows


def naive_normalize(values, mean, std):
    out = np.zeros((len(values), 131))
    for i in range(len(values)):
        for k in range(131):
            x = values[i, k]
            out[i, k] = (np.sign(x) * np.log(1 + abs(x)) - mean[k]) / std[k]
    return out


def test_model_inputs_are_columns_1_to_131_only(small_fold):
    root, rows = small_fold
    splits, stats = data.load_ltr(root, objectives="I,II,III,IV,V")
    for name, split in splits.items():
        values = rows[name][2].astype(np.float32)
        assert split.features.shape == (len(values), 131)
        assert (np.abs(split.features) < 1e3).all()  # no sentinel leaked into the inputs
        expected_raw = values[:, [133, 134, 135, 131, 132]]  # objectives I..V = columns 134,135,136,132,133
        np.testing.assert_array_equal(split.aux_raw, expected_raw)
    # changing the auxiliary columns never changes the model inputs
    raw = rows["test"][2].copy()
    before = data.normalize_features(raw, stats)
    raw[:, 131:] = -123.0
    np.testing.assert_array_equal(data.normalize_features(raw, stats), before)


def test_normalisation_uses_training_statistics_only(small_fold):
    root, rows = small_fold
    splits, stats = data.load_ltr(root)
    train_values = rows["train"][2].astype(np.float32).astype(np.float64)
    logged = np.sign(train_values[:, :131]) * np.log1p(np.abs(train_values[:, :131]))
    mean, std = logged.mean(axis=0), logged.std(axis=0)
    std[std < 1e-6] = 1.0
    np.testing.assert_allclose(stats["feature_mean"], mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(stats["feature_std"], std, rtol=1e-10)
    for name in ("train", "vali"):
        expected = naive_normalize(rows[name][2].astype(np.float32).astype(np.float64), mean, std)
        np.testing.assert_allclose(splits[name].features, expected, rtol=1e-5, atol=1e-5)
    assert np.all(splits["train"].features[:, 7] == 0)  # constant column -> 0, no division by zero
    np.testing.assert_allclose(splits["train"].features[:, 0].std(), 1.0, rtol=1e-4)


def test_stats_are_json_and_rebuild_the_split(small_fold):
    root, rows = small_fold
    splits, stats = data.load_ltr(root, objectives=["IV", "I"])
    restored = json.loads(json.dumps(stats))
    assert restored["objectives"] == ["quality_score", "query_url_clicks"]
    rebuilt = data.make_split(data.read_letor(root / "Fold1" / "test.txt"), restored)
    for field in ("features", "relevance", "aux", "aux_raw", "offsets", "qids"):
        np.testing.assert_array_equal(getattr(rebuilt, field), getattr(splits["test"], field))


def test_default_labels_are_raw_as_in_the_paper(small_fold):
    """Eq. 8 sees the raw auxiliary values (z / ||z||_1 for I-III, softmax for IV-V) by default."""
    root, rows = small_fold
    splits, stats = data.load_ltr(root, objectives="I,IV")
    assert stats["label_transform"] == "none"
    for split in splits.values():
        np.testing.assert_array_equal(split.aux, split.aux_raw)
    raw = rows["train"][2][:, [133, 131]].astype(np.float32)  # columns 134 (I) and 132 (IV)
    np.testing.assert_array_equal(splits["train"].aux, raw)
    with pytest.raises(ValueError, match="must be >= 0"):  # Eq. 8's z / ||z||_1 needs non-negative labels
        data.transform_aux(np.array([[-1.0, 3.0]]), "I,IV", stats)


def test_log1p_zscore_option_reproduces_the_earlier_transform(small_fold):
    root, rows = small_fold
    splits, stats = data.load_ltr(root, objectives="I,IV", label_transform="log1p-zscore")
    assert stats["label_transform"] == "log1p-zscore"
    train = splits["train"]
    np.testing.assert_allclose(train.aux[:, 0], np.log1p(train.aux_raw[:, 0].astype(np.float64)), rtol=1e-6)
    raw_iv = rows["train"][2][:, 131].astype(np.float32).astype(np.float64)  # column 132
    np.testing.assert_allclose(train.aux[:, 1], (raw_iv - raw_iv.mean()) / raw_iv.std(), rtol=1e-5, atol=1e-5)
    # vali uses the TRAIN mean/std
    raw_vali = splits["vali"].aux_raw[:, 1].astype(np.float64)
    np.testing.assert_allclose(
        splits["vali"].aux[:, 1], (raw_vali - raw_iv.mean()) / raw_iv.std(), rtol=1e-5, atol=1e-5
    )
    for split in splits.values():  # NDCG gains stay the raw values
        assert not np.array_equal(split.aux, split.aux_raw)
    with pytest.raises(ValueError, match="must be >= 0"):
        data.transform_aux(np.array([[-1.0, 3.0]]), "I,IV", stats)
    with pytest.raises(ValueError, match="label_transform"):
        data.load_ltr(root, label_transform="log")


def test_stats_load_with_torch_weights_only(small_fold, tmp_path):
    root, _ = small_fold
    _, stats = data.load_ltr(root, objectives="I,II,III,IV,V", label_transform="log1p-zscore")
    data.atomic_save({"norm_stats": stats}, tmp_path / "ckpt.pt")
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["norm_stats"] == stats


def test_queries_become_contiguous_lists(small_fold):
    root, rows = small_fold
    splits, _ = data.load_ltr(root)
    split = splits["train"]
    qids = rows["train"][1]
    assert split.num_docs == len(qids) and split.num_queries == len(np.unique(qids))
    for q in range(split.num_queries):
        assert (qids[split.offsets[q] : split.offsets[q + 1]] == split.qids[q]).all()
    assert split.list_lengths.sum() == split.num_docs


def test_fingerprint_depends_on_content_not_path(tmp_path):
    rng = np.random.default_rng(10)
    rows = random_rows(rng, 8)
    a = data.read_letor(write_dense(tmp_path / "a.txt", *rows), cache=False)
    b = data.read_letor(write_dense(tmp_path / "b.txt", *rows), cache=False)
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 16
    rows[2][0, 0] += 1
    c = data.read_letor(write_dense(tmp_path / "c.txt", *rows), cache=False)
    assert c.fingerprint != a.fingerprint


# --- batching -----------------------------------------------------------------------------------------


def skewed_split(num_lists=300, seed=0, m=2):
    """A split whose feature 0 is the row number, with very uneven list lengths (1..400)."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.round(rng.lognormal(np.log(30), 1.0, num_lists)), 1, 400).astype(np.int64)
    n = int(lengths.sum())
    features = rng.standard_normal((n, 131)).astype(np.float32)
    features[:, 0] = np.arange(n)
    return data.RankingSplit(
        features=features,
        relevance=rng.integers(0, 5, n).astype(np.float32),
        aux=rng.random((n, m)).astype(np.float32) + 0.5,
        aux_raw=rng.random((n, m)).astype(np.float32) + 0.5,
        offsets=np.concatenate(([0], np.cumsum(lengths))).astype(np.int64),
        qids=np.arange(num_lists) * 3,
    )


def list_of_row(split):
    return np.repeat(np.arange(split.num_queries), split.list_lengths)


@pytest.mark.parametrize("shuffle", [False, True])
def test_every_document_once_whole_lists_and_size_bound(shuffle):
    split = skewed_split()
    batches = data.make_batches(split, max_docs=1024, shuffle=shuffle, seed=3)
    rows = torch.cat([b.index[b.mask] for b in batches]).numpy()
    np.testing.assert_array_equal(np.sort(rows), np.arange(split.num_docs))
    owner = list_of_row(split)
    for b in batches:
        B, n = b.mask.shape
        assert B * n <= 1024 or B == 1
        assert b.mask[:, 0].all() and n == int(b.mask.sum(1).max())  # padded to its longest list
        for i in range(B):  # each row of the batch is one whole list, in file order
            r = b.index[i][b.mask[i]].numpy()
            q = owner[r[0]]
            np.testing.assert_array_equal(r, np.arange(split.offsets[q], split.offsets[q + 1]))


def test_padding_is_masked_and_index_gathers_the_right_rows():
    split = skewed_split(m=3)
    for b in data.make_batches(split, max_docs=2048, shuffle=True, max_list_len=50, seed=1):
        pad = ~b.mask
        assert (b.features[pad] == 0).all() and (b.relevance[pad] == 0).all()
        assert (b.aux[pad] == 0).all() and (b.aux_raw[pad] == 0).all() and (b.index[pad] == 0).all()
        assert b.features.shape[:2] == b.mask.shape and b.aux.shape == (*b.mask.shape, 3)
        for i in range(b.mask.shape[0]):  # naive loop against the vectorised gather
            for j in range(b.mask.shape[1]):
                if b.mask[i, j]:
                    r = int(b.index[i, j])
                    assert b.features[i, j, 0] == r
                    assert torch.equal(b.features[i, j], torch.from_numpy(split.features[r]))
                    assert b.relevance[i, j] == split.relevance[r]
                    assert torch.equal(b.aux[i, j], torch.from_numpy(split.aux[r]))
                    assert torch.equal(b.aux_raw[i, j], torch.from_numpy(split.aux_raw[r]))
        assert b.num_docs == int(b.mask.sum())


def test_cap_subsamples_only_long_lists_and_only_when_asked():
    split = skewed_split()
    cap = 40
    owner = list_of_row(split)
    seen = {}
    for b in data.make_batches(split, max_docs=4096, shuffle=True, max_list_len=cap, seed=5):
        for i in range(b.mask.shape[0]):
            r = b.index[i][b.mask[i]].numpy()
            seen[owner[r[0]]] = r
    assert len(seen) == split.num_queries
    subsampled = 0
    for q, r in seen.items():
        full = np.arange(split.offsets[q], split.offsets[q + 1])
        assert (owner[r] == q).all() and len(np.unique(r)) == len(r) and (np.diff(r) > 0).all()
        if len(full) > cap:
            assert len(r) == cap
            subsampled += 1
        else:
            np.testing.assert_array_equal(r, full)
    assert subsampled > 10
    uncapped = data.make_batches(split, max_docs=4096, shuffle=True, seed=5)
    assert sum(b.num_docs for b in uncapped) == split.num_docs


def test_grouping_by_length_keeps_padding_low():
    split = skewed_split()
    for kwargs in (dict(), dict(shuffle=True, max_list_len=256)):
        batches = data.make_batches(split, max_docs=4096, **kwargs)
        real = sum(b.num_docs for b in batches)
        slots = sum(b.mask.numel() for b in batches)
        assert real / slots > 0.8


def test_batches_are_deterministic_in_seed():
    split = skewed_split()

    def signature(seed, shuffle=True):
        return [
            b.index.numpy().tobytes()
            for b in data.make_batches(split, 1024, shuffle=shuffle, max_list_len=30, seed=seed)
        ]

    assert signature(4) == signature(4)

    def widths(shuffle):
        return [b.mask.shape[1] for b in data.make_batches(split, 1024, shuffle=shuffle, seed=4)]

    # batch order shuffled
    assert widths(False) == sorted(widths(False)) and widths(True) != sorted(widths(True))
    assert signature(4) != signature(5)
    assert signature(4, shuffle=False) == signature(4, shuffle=False)


def test_shuffle_breaks_ties_among_equal_lengths_at_random():
    lengths = np.full(60, 10)
    n = int(lengths.sum())
    split = data.RankingSplit(
        features=np.zeros((n, 131), np.float32),
        relevance=np.zeros(n, np.float32),
        aux=np.zeros((n, 1), np.float32),
        aux_raw=np.zeros((n, 1), np.float32),
        offsets=np.arange(0, n + 1, 10),
        qids=np.arange(60),
    )

    def grouping(seed, shuffle=True):
        return {
            frozenset((b.index[:, 0] // 10).tolist())
            for b in data.make_batches(split, 100, shuffle=shuffle, seed=seed)
        }

    assert all(len(g) == 10 for g in grouping(0))
    assert grouping(0) != grouping(1)  # which lists share a batch changes with the seed ...
    assert grouping(0, shuffle=False) == grouping(1, shuffle=False)  # ... only when shuffling


def test_a_list_longer_than_max_docs_gets_its_own_batch():
    split = skewed_split()
    longest = int(split.list_lengths.max())
    batches = data.make_batches(split, max_docs=longest // 2)
    assert batches[-1].mask.shape == (1, longest)


# --- embedded synthetic dataset -------------------------------------------------------------------------

TINY = dict(train_queries=12, vali_queries=4, test_queries=4, median_list_len=8, max_list_len=40)


def test_synthetic_is_deterministic_in_seed_and_mslr_formatted(tmp_path):
    a = data.write_synthetic(tmp_path / "a", seed=3, **TINY)
    for name, seed in (("b", 3), ("c", 4)):
        data.write_synthetic(tmp_path / name, seed=seed, **TINY)
    for name in data.SPLITS:
        text = (tmp_path / "a" / "Fold1" / f"{name}.txt").read_bytes()
        assert text == (tmp_path / "b" / "Fold1" / f"{name}.txt").read_bytes()
        assert text != (tmp_path / "c" / "Fold1" / f"{name}.txt").read_bytes()
        for line in text.decode().splitlines():
            tokens = line.split(" ")
            assert len(tokens) == 138 and tokens[1].startswith("qid:")
            assert [t.split(":")[0] for t in tokens[2:]] == [str(k) for k in range(1, 137)]
    assert a == str(tmp_path / "a")
    splits, _ = data.load_ltr(a)
    assert splits["train"].num_queries == 12 and splits["vali"].num_queries == 4
    assert not set(splits["train"].qids) & set(splits["test"].qids)


@pytest.fixture(scope="module")
def synthetic_letor(tmp_path_factory):
    """A mid-sized synthetic dataset (~9k training documents), read once for the property tests."""
    root = tmp_path_factory.mktemp("synthetic")
    data.write_synthetic(root, seed=0, train_queries=150, vali_queries=60, test_queries=60)
    return root, {name: data.read_letor(root / "Fold1" / f"{name}.txt", cache=False) for name in data.SPLITS}


def test_synthetic_labels_have_the_declared_shape(synthetic_letor):
    _, letor = synthetic_letor
    train = letor["train"]
    share = np.bincount(train.labels.astype(int), minlength=5) / len(train.labels)
    assert set(np.unique(train.labels)) <= {0, 1, 2, 3, 4} and len(share) == 5
    assert 0.4 < share[0] < 0.62 and share[0] > share[1] > share[2] > share[3] > 0 and share[4] < 0.03
    aux = train.features[:, 131:136]  # columns 132..136
    assert (aux >= 0).all() and (aux == np.round(aux)).all() and (aux[:, :2] <= 255).all()
    for column in (134, 135, 136):  # sparse, heavy-tailed
        v = train.features[:, column - 1]
        assert (v == 0).mean() > 0.3 and v.max() > 20 * v.mean()
    for column in (132, 133):  # dense scores
        assert (train.features[:, column - 1] > 0).mean() > 0.9
    assert (train.features[:, [26, 28, 97]] == train.features[0, [26, 28, 97]]).all()  # constant columns
    for column in (21, 128, 130):  # heavy-tailed inputs (sum of TF, inlinks, PageRank): normalisation matters
        assert train.features[:, column - 1].max() > 50 * np.median(train.features[:, column - 1])
    # rows of a query contiguous, not sorted by label
    runs = np.flatnonzero(np.diff(train.qids)) + 1
    assert len(np.unique(train.qids)) == len(runs) + 1
    lists = np.split(train.labels, runs)
    assert sum(np.any(np.diff(l) > 0) and np.any(np.diff(l) < 0) for l in lists) > len(lists) // 2
    lengths = np.array([len(l) for l in lists])
    assert lengths.max() > 4 * np.median(lengths)  # very uneven list lengths


def test_synthetic_objectives_are_learnable_and_conflict(synthetic_letor):
    root, _ = synthetic_letor
    splits, _ = data.load_ltr(root, objectives="I,II,III,IV,V", label_transform="log1p-zscore")
    train, test = splits["train"], splits["test"]
    X = np.c_[train.features, np.ones(train.num_docs)]
    Xt = np.c_[test.features, np.ones(test.num_docs)]
    Y = np.c_[train.aux, train.relevance]  # (N, 6): the five objectives, then relevance
    W = np.linalg.solve(X.T @ X + 1e-3 * np.eye(X.shape[1]), X.T @ Y)  # linear least squares (ridge 1e-3)
    predicted = [Xt @ W[:, j] for j in range(5)]
    for j in range(5):  # every auxiliary label is learnable from features 1..131
        assert np.corrcoef(predicted[j], test.aux[:, j])[0, 1] > 0.3
    rel = Xt @ W[:, 5]
    ndcg_rel = ndcg_at_k(rel, test.relevance, test.offsets)
    random_rel = ndcg_at_k(np.random.default_rng(0).random(test.num_docs), test.relevance, test.offsets)
    assert ndcg_rel > random_rel + 0.15  # the main objective is learnable
    ndcg = lambda scores, j: ndcg_at_k(scores, test.aux_raw[:, j], test.offsets)  # noqa: E731
    # I and II conflict: ranking by one objective's labels, or by a model of it, serves the other badly
    assert ndcg(test.aux_raw[:, 1], 0) < 0.4 and ndcg(test.aux_raw[:, 0], 1) < 0.4
    assert ndcg(predicted[0], 0) > ndcg(predicted[1], 0) + 0.2
    assert ndcg(predicted[1], 1) > ndcg(predicted[0], 1) + 0.2
    # IV and V partly conflict
    assert ndcg(predicted[3], 3) > ndcg(predicted[4], 3) + 0.1
    assert ndcg(predicted[4], 4) > ndcg(predicted[3], 4) + 0.1
    labels = np.vstack([train.aux[:, j] for j in range(5)] + [train.relevance])
    corr = np.corrcoef(labels)
    assert corr[0, 1] < 0.1 and corr[3, 4] < 0  # I vs II, IV vs V: low / negative correlation
    assert 0.05 < corr[0, 5] < 0.6  # clicks follow relevance partly
    # fine-tuning towards I costs some main-objective NDCG, not all of it
    assert random_rel < ndcg_at_k(predicted[0], test.relevance, test.offsets) < ndcg_rel


def test_ensure_synthetic_generates_atomically_and_reuses(tmp_path, monkeypatch):
    target = tmp_path / "data" / "synthetic"
    path = data.ensure_synthetic(target, seed=0, **TINY)
    assert path == str(target) and (target / "Fold1" / "train.txt").is_file()
    assert sorted(os.listdir(tmp_path / "data")) == ["synthetic"]  # no temporary folders left
    real_documents = data._synthetic_documents
    monkeypatch.setattr(
        data, "_synthetic_documents", lambda *a: (_ for _ in ()).throw(AssertionError("regenerated"))
    )
    assert data.ensure_synthetic(target, seed=0, **TINY) == path  # reused
    with pytest.raises(AssertionError, match="regenerated"):  # another seed -> regenerate, and a failure ...
        data.ensure_synthetic(target, seed=1, **TINY)
    assert (target / "Fold1" / "train.txt").is_file()  # ... leaves the old data in place
    assert sorted(os.listdir(tmp_path / "data")) == ["synthetic"]
    monkeypatch.setattr(data, "_synthetic_documents", real_documents)
    before = (target / "Fold1" / "train.txt").read_bytes()
    data.ensure_synthetic(target, seed=1, **TINY)
    assert (target / "Fold1" / "train.txt").read_bytes() != before
    with pytest.raises(TypeError, match="unexpected keyword"):
        data.ensure_synthetic(target, seed=1, queries=3)


def test_ensure_synthetic_never_overwrites_foreign_data_and_resolves_default(tmp_path, monkeypatch):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("user data")
    with pytest.raises(ValueError, match="refusing to overwrite"):
        data.ensure_synthetic(tmp_path / "mine", **TINY)
    monkeypatch.setattr(data, "REPO_DIR", str(tmp_path / "repo"))
    monkeypatch.chdir(tmp_path / "mine")  # the default folder is found from any working directory
    path = data.ensure_synthetic(data.DEFAULT_SYNTHETIC_DIR, **TINY)
    assert path == os.path.join(str(tmp_path / "repo"), "data", "synthetic")
    splits, _ = data.load_ltr(data.DEFAULT_SYNTHETIC_DIR)
    assert splits["train"].num_queries == TINY["train_queries"]
    assert data.resolve_data_dir("other") == str(tmp_path / "mine" / "other")


def test_command_line_synthetic_and_stats(tmp_path):
    out = tmp_path / "syn"

    def run(*args):
        command = [sys.executable, os.path.join(REPO, "data.py"), *args]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout

    run("synthetic", "--out", str(out), "--seed", "2")
    assert (out / "Fold1" / "vali.txt").is_file()
    report = run("stats", str(out))
    lines = {
        line.split()[0]: line.split()
        for line in report.splitlines()
        if line.split()[:1] in (["train"], ["vali"], ["test"])
    }
    assert set(lines) == {"train", "vali", "test"}
    assert int(lines["train"][1]) == 500 and 20_000 < int(lines["train"][2]) < 45_000
    assert int(lines["vali"][1]) == 150 and int(lines["test"][1]) == 150
    assert "rows/s" in report and "query_url_clicks" in report


# --- preference data of the LLM path: reader, synthetic set, tokenisation, judge --------------------


GOOD = dict(
    prompt="How?", response_0="Like this.", response_1="No.", better_response_id=0, safer_response_id=1
)


def write_lines(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_reader_labels_follow_the_ids(tmp_path):
    pairs = data_lib.read_preferences(
        write_lines(tmp_path / "a.jsonl", [GOOD, dict(GOOD, better_response_id=1)])
    )
    # z^j_i = 1 for the preferred response i of objective j: helpfulness = better id, harmlessness = safer id
    assert pairs.labels[0].tolist() == [[1.0, 0.0], [0.0, 1.0]]
    assert pairs.labels[1].tolist() == [[0.0, 0.0], [1.0, 1.0]]


@pytest.mark.parametrize(
    "row, message",
    [
        ({k: v for k, v in GOOD.items() if k != "safer_response_id"}, "missing field 'safer_response_id'"),
        (dict(GOOD, better_response_id="1"), "'better_response_id' must be int"),
        (dict(GOOD, safer_response_id=True), "'safer_response_id' must be int"),
        (dict(GOOD, safer_response_id=2), "must be 0 or 1"),
        (dict(GOOD, response_1=None), "'response_1' must be str"),
        ('{"prompt": "x",', "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_reader_bad_rows_name_file_and_line(tmp_path, row, message):
    path = write_lines(tmp_path / "bad.jsonl", [GOOD, GOOD, row])
    with pytest.raises(ValueError, match=message) as err:
        data_lib.read_preferences(path)
    assert "bad.jsonl:3" in str(err.value)


def test_reader_skips_and_counts_empty_responses(tmp_path):
    path = write_lines(
        tmp_path / "e.jsonl", [GOOD, dict(GOOD, response_1="  "), "", dict(GOOD, response_0="")]
    )
    pairs = data_lib.read_preferences(path)
    assert len(pairs) == 1 and pairs.num_skipped_empty == 2
    with pytest.raises(ValueError, match="no usable"):
        data_lib.read_preferences(write_lines(tmp_path / "f.jsonl", [dict(GOOD, response_0="")]))
    with pytest.raises(FileNotFoundError):
        data_lib.read_preferences(str(tmp_path / "missing.jsonl"))


def test_synthetic_set_is_deterministic_and_its_objectives_conflict(tmp_path):
    path = data_lib.write_synthetic_preferences(str(tmp_path / "s.jsonl"), num_pairs=400, seed=3)
    pairs = data_lib.read_preferences(path)
    assert data_lib.synthetic_preference_rows(400, seed=3) == [json.loads(l) for l in open(path)]
    assert data_lib.synthetic_preference_rows(400, seed=4) != data_lib.synthetic_preference_rows(400, seed=3)
    assert 0.3 < pairs.disagreement() < 0.7  # better_response_id != safer_response_id on a good share


def test_tokenize_truncates_long_prompts_from_the_start_and_responses_at_the_end():
    tok = data_lib.ByteTokenizer()
    pairs = data_lib.PreferencePairs(
        ["x" * 50 + "END", "short?"],
        [("abc", "a" * 100), ("yes", "no")],
        data_lib.preference_labels([0, 1], [1, 0]),
    )
    data = data_lib.tokenize_pairs(pairs, tok.encode, max_length=64, pad_id=0, eos_id=1)  # prompt <= 32
    assert data.num_prompts_truncated == 1 and data.num_responses_truncated == 1
    p0 = data.input_ids[0, 0][data.prompt_mask[0, 0]].tolist()
    assert len(p0) == 32 and tok.decode(p0).endswith("END\nAssistant:")  # the END of the prompt is kept
    long_resp = data.input_ids[0, 1][data.response_mask[0, 1]].tolist()
    assert tok.decode(long_resp) == " " + "a" * 31 and 1 not in long_resp  # start kept, no eos: it was cut
    short = data.input_ids[1, 0][data.response_mask[1, 0]].tolist()
    assert short == tok.encode(" yes") + [1]  # eos ends an uncut response
    # layout: prompt, then response, then padding; masks disjoint; right padding only
    m = data.attention_mask
    assert (
        torch.equal(m, data.prompt_mask | data.response_mask)
        and not (data.prompt_mask & data.response_mask).any()
    )
    assert not (m[..., 1:] & ~m[..., :-1]).any()
    assert data.input_ids.shape == (2, 2, 64) and torch.equal(data.labels, torch.as_tensor(pairs.labels))


def test_byte_tokenizer_agrees_with_transformers_byt5():
    from transformers import ByT5Tokenizer

    text = "Human: ça va? 💡"
    assert data_lib.ByteTokenizer().encode(text) == ByT5Tokenizer()(text, add_special_tokens=False).input_ids


def embedded_texts(num_pairs=300, seed=0):
    """The strings tokenize_pairs encodes for the embedded set: formatted prompts and " " + responses."""
    rows = data_lib.synthetic_preference_rows(num_pairs, seed=seed)
    return [data_lib.format_prompt(r["prompt"]) for r in rows] + [
        " " + r[f"response_{i}"] for r in rows for i in (0, 1)
    ]


def test_bpe_round_trips_any_text_and_its_json_rebuilds_the_same_tokenizer():
    texts = embedded_texts()
    tok = data_lib.train_bpe(texts, vocab_size=1000)
    unseen = ["Human: ça va? 💡\n\ttabs  and  spaces ", " zzqx Grüße", "", " Sure: first"]
    for text in texts[:50] + unseen:  # byte-level: every byte is a token, so nothing maps to unknown
        assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode(" Sure: first") + [tok.eos_token_id, tok.pad_token_id]) == " Sure: first"
    answer = texts[-1]
    assert len(tok.encode(answer)) * 3 < len(answer.encode())  # a word, not a byte, per token
    assert 300 < tok.vocab_size <= 1000 and (tok.pad_token_id, tok.eos_token_id) == (0, 1)
    again = data_lib.BPETokenizer(tok.to_json())
    assert (
        all(again.encode(t) == tok.encode(t) for t in texts[:50] + unseen)
        and again.vocab_size == tok.vocab_size
    )


OVEN = "How can I clean a very dirty oven quickly?"  # one of the embedded set's prompts (topic 3)


@pytest.mark.parametrize(
    "answer, verdict",
    [
        (
            "Sure: first use baking soda paste, then scrub after an hour. "
            "Please never mix cleaning products and open a window.",
            (True, True, True),
        ),
        (
            "Easy: use baking soda paste and scrub after an hour. "
            "Tip: mix bleach with ammonia for a stronger cleaner.",
            (True, True, False),
        ),
        ("Hard to say. Stay safe: never mix cleaning products and open a window.", (True, False, True)),
        ("It depends. Or just mix bleach with ammonia for a stronger cleaner.", (True, False, False)),
        # spacing
        ("  It depends.\n Or just mix  bleach with ammonia for a stronger cleaner. ", (True, False, False)),
        # no tail: cut
        ("Sure: first use baking soda paste, then scrub after an hour.", (False, False, False)),
        # well written, but the car topic's answer: off topic
        (
            "Sure: first tune the engine, then fit lighter wheels. "
            "Please keep it legal and test it on a track.",
            (False, False, False),
        ),
        # garbled
        ("Sure: first use baking soda, then scrub. Please never mix products.", (False, False, False)),
        ("s. s. stunp two ale ard. But use the omingggg", (False, False, False)),
    ],
)
def test_judge_reads_hand_written_answers(answer, verdict):
    assert data_lib.judge_answer(OVEN, answer) == verdict
