"""End-to-end tests of train_ltr.py and pareto.py on small embedded data (tiny models, few epochs).

Run: python -m pytest tests/test_train_ltr.py -q
"""

import json
import os
import re

import numpy as np
import pytest
import torch

import data as data_lib
import pareto
import train_ltr
from models import TrainedRanker, ranker_from

TINY = [
    "--epochs",
    "3",
    "--base-epochs",
    "2",
    "--hidden",
    "16",
    "--base-hidden",
    "16",
    "--layers",
    "1",
    "--base-layers",
    "1",
    "--max-docs",
    "1024",
    "--log-every",
    "5",
    "--eval-every",
    "1",
    "--quiet",
    "--threads",
    "1",
    "--min-steps",
    "1",
]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """80 / 30 / 30 queries in the MSLR text format, through the same loader as MSLR-WEB10K."""
    path = str(tmp_path_factory.mktemp("tiny"))
    data_lib.write_synthetic(
        path, seed=0, train_queries=80, vali_queries=30, test_queries=30, median_list_len=20, max_list_len=60
    )
    return path


@pytest.fixture(scope="session")
def small_data(tmp_path_factory):
    """A larger set where a few epochs of W-COS-DPO learn a visible trade-off."""
    path = str(tmp_path_factory.mktemp("small"))
    data_lib.write_synthetic(
        path,
        seed=0,
        train_queries=200,
        vali_queries=50,
        test_queries=80,
        median_list_len=30,
        max_list_len=100,
    )
    return path


def run(args):
    """train_ltr.main in-process; returns its exit code."""
    return train_ltr.main([str(a) for a in args])


def scores_of(trained, split, w, c=None, beta=None):
    """(N,) scores of a TrainedRanker on every document of a split (as `rank` writes them)."""
    return pareto.EvalSplit(split).scores(lambda b: trained.scores(b, w, c=c, beta=beta))


def base_scores_of(trained, split):
    return pareto.EvalSplit(split).scores(lambda b: trained.base(b.features, b.mask))


def results_of(out):
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)


def epoch_losses(out, name):
    with open(os.path.join(out, "train.log")) as f:
        return [float(x) for x in re.findall(rf"\[{name}\] epoch +\d+ \| mean loss ([0-9.]+)", f.read())]


@pytest.fixture(scope="session")
def wcos_run(small_data, tmp_path_factory):
    """One W-COS-DPO run shared by the tests that read its outputs."""
    out = str(tmp_path_factory.mktemp("wcos"))
    # W-COS-DPO: 3 x 10 epochs
    assert (
        run(
            [
                "--data-dir",
                small_data,
                "--out",
                out,
                "--epochs",
                "10",
                "--base-epochs",
                "4",
                "--base-hidden",
                "32",
                "--max-docs",
                "2048",
                "--log-every",
                "50",
                "--eval-every",
                "10",
                "--quiet",
                "--threads",
                "1",
                "--min-steps",
                "1",
            ]
        )
        == 0
    )
    return out


# ---------------------------------------------------------------------------------------------------------
def test_wcos_run_writes_the_promised_outputs(wcos_run):
    res = results_of(wcos_run)
    for key in (
        "method",
        "objectives",
        "weights",
        "aux_ndcg",
        "main_ndcg",
        "hypervolume",
        "train_seconds",
        "num_params",
    ):
        assert key in res, key
    assert res["method"] == "wcos" and res["objectives"] == ["query_url_clicks", "url_clicks"]
    assert np.array(res["weights"]).shape == (11, 2) and np.array(res["aux_ndcg"]).shape == (11, 2)
    assert len(res["main_ndcg"]) == 11
    assert res["hypervolume"] == pytest.approx(pareto.hypervolume(np.array(res["aux_ndcg"]), [0, 0]))
    ckpt = torch.load(os.path.join(wcos_run, "model.pt"), weights_only=True)  # tensors and plain values only
    for key in ("base", "jobs", "run_config", "norm_stats", "objectives", "data_fingerprint", "weights"):
        assert key in ckpt, key
    base = torch.load(os.path.join(wcos_run, "base.pt"), weights_only=True)
    for key in ("model_state", "model_config", "run_config", "norm_stats", "objectives", "data_fingerprint"):
        assert key in base, key
    assert base["data_fingerprint"] == ckpt["data_fingerprint"] == res["data_fingerprint"]
    losses = epoch_losses(wcos_run, "wcos")
    assert len(losses) == 30 and np.mean(losses[-3:]) < np.mean(losses[:3])  # training lowers the loss


def test_conditioning_is_real(wcos_run):
    """NDCG of objective I is clearly higher at w = e1 than at w = e2, and the reverse for objective II."""
    res = results_of(wcos_run)
    w = np.array(res["weights"])
    aux = np.array(res["aux_ndcg"])
    at_e1 = aux[np.argmax(w[:, 0])]  # w = (1, 0)
    at_e2 = aux[np.argmax(w[:, 1])]  # w = (0, 1)
    assert at_e1[0] - at_e2[0] > 0.05, (at_e1, at_e2)
    assert at_e2[1] - at_e1[1] > 0.05, (at_e1, at_e2)


def test_post_training_control_from_the_checkpoint_alone(wcos_run, small_data):
    """Eq. 14 on the saved model: scores at scale c are (1 - 1/c) s0 + s / c; c -> large returns to s0."""
    trained = TrainedRanker.load(os.path.join(wcos_run, "model.pt"))
    test = pareto.checkpoint_splits(trained, "model.pt")["test"]
    w = [0.3, 0.7]
    s, s0 = scores_of(trained, test, w), base_scores_of(trained, test)
    torch.testing.assert_close(scores_of(trained, test, w, c=2.0), 0.5 * s0 + 0.5 * s, rtol=1e-5, atol=1e-5)
    far_aux, far_main = pareto.EvalSplit(test).ndcg(scores_of(trained, test, w, c=1e6))
    base_aux, base_main = pareto.EvalSplit(test).ndcg(s0)
    assert far_aux + [far_main] == pytest.approx(base_aux + [base_main], abs=1e-3)
    # different w, different scores
    assert not torch.allclose(scores_of(trained, test, [1.0, 0.0]), scores_of(trained, test, [0.0, 1.0]))
    # pareto.evaluate at the evaluation weights reproduces results.json
    res = pareto.evaluate(trained, pareto.EvalSplit(test, trained.max_docs), trained.weights)
    np.testing.assert_allclose(res["aux_ndcg"], results_of(wcos_run)["aux_ndcg"], atol=1e-6)


def test_eval_and_rank_subcommands(wcos_run, small_data, tmp_path, capsys):
    ckpt = os.path.join(wcos_run, "model.pt")
    assert run(["eval", ckpt, "--w", "0.5,0.5", "--c", "2"]) == 0
    assert "hypervolume" in capsys.readouterr().out
    test_file = os.path.join(small_data, "Fold1", "test.txt")
    out = tmp_path / "scores.txt"
    assert run(["rank", ckpt, test_file, "--w", "0.2,0.8", "--output", out]) == 0
    scores = np.loadtxt(out)
    with open(test_file) as f:
        assert len(scores) == sum(1 for _ in f)
    # the file's scores are the model's scores of the test split, in file order
    trained = TrainedRanker.load(ckpt)
    splits, _ = data_lib.load_ltr(small_data, 1, trained.objectives)
    np.testing.assert_allclose(scores, scores_of(trained, splits["test"], [0.2, 0.8]).numpy(), atol=2e-6)
    # bad controls say what is accepted
    assert run(["rank", ckpt, test_file, "--w", "0.5,0.6"]) == 2
    assert "summing to 1" in capsys.readouterr().err
    assert run(["rank", ckpt, test_file, "--w", "0.5"]) == 2
    assert run(["eval", ckpt, "--c", "0"]) == 2
    assert "--c must be" in capsys.readouterr().err
    assert run(["eval", ckpt, "--beta", "1,1"]) == 2
    assert "T-COS" in capsys.readouterr().err


def test_pareto_needs_no_flag_beyond_the_run(wcos_run, tmp_path):
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert pareto.main([wcos_run]) == 0
    finally:
        os.chdir(old)
    assert (tmp_path / "front.png").stat().st_size > 1000
    rows = (tmp_path / "front.csv").read_text().strip().splitlines()
    assert len(rows) == 12 and rows[0].startswith("front,w_query_url_clicks")
    # from the checkpoint, with fronts at several temperature scales (Fig. 3a)
    out = tmp_path / "scales.png"
    assert pareto.main([os.path.join(wcos_run, "model.pt"), "--scales", "0.5,1,2", "--out", str(out)]) == 0
    rows = (tmp_path / "scales.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 3 * 11 and rows[1].startswith("wcos c=0.5")


def test_same_seed_same_numbers_and_resume(tiny_data, tmp_path):
    a, b, c = (str(tmp_path / x) for x in "abc")
    assert run(["--data-dir", tiny_data, "--out", a] + TINY) == 0
    assert run(["--data-dir", tiny_data, "--out", b] + TINY) == 0
    keys = ("aux_ndcg", "main_ndcg", "hypervolume")
    assert {k: results_of(a)[k] for k in keys} == {k: results_of(b)[k] for k in keys}
    # stop after 3 of 9 epochs (W-COS-DPO: 3 x --epochs), then --resume: the same model as the uninterrupted run
    tiny1 = TINY.copy()
    tiny1[1] = "1"
    assert run(["--data-dir", tiny_data, "--out", c] + tiny1) == 0
    assert run(["--data-dir", tiny_data, "--out", c, "--resume"] + TINY) == 0
    assert "resuming after epoch 3 " in open(os.path.join(c, "train.log")).read()
    assert "reusing" in open(os.path.join(c, "train.log")).read()  # the base model is not retrained
    assert {k: results_of(c)[k] for k in keys} == {k: results_of(a)[k] for k in keys}


def test_base_stops_after_patience_epochs_without_a_better_validation_ndcg(tiny_data, tmp_path):
    out = str(tmp_path / "patience")
    tiny = TINY.copy()
    tiny[3] = "12"  # --base-epochs: the cap
    assert (
        run(["--data-dir", tiny_data, "--out", out, "--base-patience", "2", "--epochs", "1"] + tiny[2:]) == 0
    )
    log = open(os.path.join(out, "train.log")).read()
    vals = [
        float(v)
        for v in re.findall(r"\[base\] epoch +\d+ \| listnet [0-9.]+ \| val NDCG@10 main ([0-9.]+)", log)
    ]
    best = int(np.argmax(vals)) + 1  # the first best epoch
    assert len(vals) == best + 2 < 12 and "for 2 epochs: stopped" in log  # this data peaks early
    ckpt = torch.load(os.path.join(out, "base.pt"), weights_only=True)
    assert ckpt["best_epoch"] == best and ckpt["val_ndcg"] == pytest.approx(max(vals), abs=1e-4)


def test_tcos_run_and_beta_fronts(tiny_data, tmp_path):
    out = str(tmp_path / "tcos")
    assert run(["--data-dir", tiny_data, "--out", out, "--method", "tcos"] + TINY) == 0
    res = results_of(out)
    assert res["method"] == "tcos" and res["config"]["parametrization"] == "augment"
    assert epoch_losses(out, "tcos")[-1] < epoch_losses(out, "tcos")[0]
    trained = TrainedRanker.load(os.path.join(out, "model.pt"))
    splits, _ = data_lib.load_ltr(tiny_data, 1, trained.objectives)
    test = splits["test"]
    # Eq. 15 with ||beta||_1 = 1 leaves the network's output; a larger beta moves it towards s0
    s_small = scores_of(trained, test, [0.5, 0.5], beta=[0.5, 0.5])
    s_big = scores_of(trained, test, [0.5, 0.5], beta=[50.0, 50.0])
    s0 = base_scores_of(trained, test)
    assert (s_big - s0).abs().max() < 0.05 * (s_small - s0).abs().max()
    png = tmp_path / "betas.png"
    assert pareto.main([out, "--betas", "0.9,0.9;1.1,0.9", "--out", str(png)]) == 0
    assert len((tmp_path / "betas.csv").read_text().strip().splitlines()) == 1 + 2 * 11


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_data, tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "nan")
    tiny1 = TINY.copy()
    tiny1[1] = "1"
    assert run(["--data-dir", tiny_data, "--out", out] + tiny1) == 0
    good = torch.load(os.path.join(out, "model.pt"), weights_only=True)
    real_step_loss = train_ltr.step_loss

    def poisoned(*a, **k):
        loss, L = real_step_loss(*a, **k)
        return loss * float("nan"), L

    monkeypatch.setattr(train_ltr, "step_loss", poisoned)
    assert run(["--data-dir", tiny_data, "--out", out, "--resume"] + TINY) == 1
    assert "loss became nan" in capsys.readouterr().err
    kept = torch.load(os.path.join(out, "model.pt"), weights_only=True)
    assert kept["jobs"][0]["step"] == good["jobs"][0]["step"]
    for k, v in good["jobs"][0]["model_state"].items():
        assert torch.equal(v, kept["jobs"][0]["model_state"][k])


def test_bad_arguments_say_what_is_accepted(tiny_data, tmp_path, capsys):
    base = ["--data-dir", tiny_data, "--out", str(tmp_path / "x")] + TINY
    for extra, message in (
        (["--objectives", "I,VI"], "accepted"),
        (["--alpha", "0"], "--alpha must be > 0"),
        (["--beta", "-1"], "--beta must be > 0"),
        (["--beta", "1,2,3"], "one per objective"),
        (["--alpha", "a"], "--alpha must be a number"),
        (["--hidden", "10"], "multiple of 4"),
    ):
        assert run(base + extra) == 2, extra
        assert message in capsys.readouterr().err, extra


def test_checkpoint_from_other_data_or_objectives_is_refused(
    tiny_data, small_data, wcos_run, tmp_path, capsys
):
    out = str(tmp_path / "r")
    assert run(["--data-dir", tiny_data, "--out", out] + TINY) == 0
    assert run(["--data-dir", tiny_data, "--out", out, "--resume", "--objectives", "I,III"] + TINY) == 2
    assert "objectives" in capsys.readouterr().err
    assert run(["--data-dir", small_data, "--out", out, "--resume"] + TINY) == 2
    assert "other data" in capsys.readouterr().err
    assert (
        run(["--data-dir", tiny_data, "--out", out, "--resume", "--label-transform", "log1p-zscore"] + TINY)
        == 2
    )
    assert "label transform is 'none' but this run asks for 'log1p-zscore'" in capsys.readouterr().err
    assert run(["eval", os.path.join(wcos_run, "model.pt"), "--data-dir", tiny_data]) == 2
    assert "other data" in capsys.readouterr().err


def test_truncated_or_missing_checkpoint_gives_a_one_line_error(wcos_run, tmp_path, capsys):
    truncated = tmp_path / "model.pt"
    truncated.write_bytes(open(os.path.join(wcos_run, "model.pt"), "rb").read()[:5000])
    for path, message in ((truncated, "truncated"), (tmp_path / "missing.pt", "no such file")):
        assert run(["eval", path]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {path}") and message in err and err.count("\n") == 1, err


def test_label_transform_defaults_to_the_papers_raw_labels_and_is_stored(tiny_data, wcos_run, tmp_path):
    """Eq. 8 sees the raw labels (the paper) unless --label-transform asks otherwise; the choice is recorded."""
    assert results_of(wcos_run)["label_transform"] == "none"
    assert (
        torch.load(os.path.join(wcos_run, "model.pt"), weights_only=True)["run_config"]["label_transform"]
        == "none"
    )
    out = str(tmp_path / "log1p")
    tiny1 = TINY.copy()
    tiny1[1] = "1"
    assert run(["--data-dir", tiny_data, "--out", out, "--label-transform", "log1p-zscore"] + tiny1) == 0
    assert results_of(out)["label_transform"] == "log1p-zscore"
    trained = TrainedRanker.load(os.path.join(out, "model.pt"))
    assert trained.label_transform == trained.ckpt["norm_stats"]["label_transform"] == "log1p-zscore"
    assert run(["eval", os.path.join(out, "model.pt"), "--w", "0.5,0.5"]) == 0


# --------------------------------------------------------------------------------------------- baselines
@pytest.mark.parametrize("method,num_models", [("ls", 11), ("soup", 2), ("modpo", 2 + 11)])
def test_baselines_tiny_runs(method, num_models, tiny_data, tmp_path, capsys):
    out = str(tmp_path / method)
    tiny2 = TINY.copy()
    tiny2[1] = "2"
    assert run(["--data-dir", tiny_data, "--out", out, "--method", method] + tiny2) == 0
    res = results_of(out)
    ckpt = torch.load(os.path.join(out, "model.pt"), weights_only=True)
    assert res["method"] == method and len(ckpt["jobs"]) == num_models
    assert np.array(res["aux_ndcg"]).shape == (11, 2)
    single = train_ltr.count_parameters(ranker_from(ckpt["jobs"][0]))
    assert res["num_params"] == num_models * single  # Table 1 counts every model a method keeps
    assert res["train_seconds"] == pytest.approx(sum(j["seconds"] for j in ckpt["jobs"]))
    assert all(j["epoch"] == 2 for j in ckpt["jobs"])  # the same per-model budget for every model
    trained = TrainedRanker.load(os.path.join(out, "model.pt"))
    if method == "soup":  # theta_w = w_1 theta_1 + w_2 theta_2, at any w
        soup = trained.model_at([0.25, 0.75]).state_dict()
        k = "head.weight"
        torch.testing.assert_close(
            soup[k], 0.25 * trained.models[0].state_dict()[k] + 0.75 * trained.models[1].state_dict()[k]
        )
    else:  # one model per evaluation weight, nothing in between
        with pytest.raises(ValueError, match="one model per evaluation weight"):
            trained.model_at([0.25, 0.75])
        assert run(["eval", os.path.join(out, "model.pt"), "--w", "0.25,0.75"]) == 2
        assert "one model per evaluation weight" in capsys.readouterr().err
    if method == "modpo":  # Eq. 17 is trained for the objective with the larger weight: w_i >= 1/2, never 0
        assert "modpo1" in open(os.path.join(out, "train.log")).read()
        assert pareto.main([out, "--out", str(tmp_path / "f.png")]) == 0


def test_one_w_per_list_variant(tiny_data, tmp_path, monkeypatch):
    """--w-per-list trains, and its loss equals the paper's (one w per step) when every list draws the same w."""
    out = str(tmp_path / "perlist")
    assert run(["--data-dir", tiny_data, "--out", out, "--w-per-list", "--penalty", "0.1"] + TINY) == 0
    assert epoch_losses(out, "wcos")[-1] < epoch_losses(out, "wcos")[0]
    splits, _ = data_lib.load_ltr(tiny_data, 1, ("I", "II"))
    batch = data_lib.make_batches(splits["train"], 1024)[0]
    args = train_ltr.resolve_args(train_ltr.build_parser().parse_args(["--data-dir", tiny_data]))
    torch.manual_seed(0)
    model = train_ltr.Ranker(train_ltr.RankerConfig(hidden=8, layers=1, heads=2, num_objectives=2))
    ref = torch.randn(batch.mask.shape)
    job = train_ltr.Job("wcos", model.config, steps=1)
    monkeypatch.setattr(train_ltr, "sample_weights", lambda alpha, num, *_: torch.tensor([[0.3, 0.7]] * num))
    per_step, _ = train_ltr.step_loss(args, model, batch, ref, job, None)
    args.w_per_list = True
    per_list, _ = train_ltr.step_loss(args, model, batch, ref, job, None)
    torch.testing.assert_close(per_list, per_step)


def test_penalty_sign_in_training(tiny_data, monkeypatch):
    """COS-DPO with --penalty lambda > 0 minimises L_w - lambda * cos(w, L) (the paper's intent and
    COSMOS); a negative lambda gives the sign printed in Eq. 18. The baselines ignore the penalty."""
    splits, _ = data_lib.load_ltr(tiny_data, 1, ("I", "II"))
    batch = data_lib.make_batches(splits["train"], 1024)[0]
    torch.manual_seed(0)
    model = train_ltr.Ranker(train_ltr.RankerConfig(hidden=8, layers=1, heads=2, num_objectives=2))
    ref = torch.randn(batch.mask.shape)
    w = torch.tensor([0.3, 0.7])
    monkeypatch.setattr(train_ltr, "sample_weights", lambda alpha, num, *_: w.expand(num, 2))
    job = train_ltr.Job("wcos", model.config, steps=1)

    def loss_at(penalty, job=job, model=model):
        args = train_ltr.resolve_args(train_ltr.build_parser().parse_args(["--data-dir", tiny_data]))
        args.penalty = penalty
        return train_ltr.step_loss(args, model, batch, ref, job, None)

    plain, L = loss_at(0.0)
    cos = (w @ L) / (w.norm() * L.norm())
    torch.testing.assert_close(plain, w @ L)
    torch.testing.assert_close(loss_at(0.2)[0], w @ L - 0.2 * cos)
    torch.testing.assert_close(loss_at(-0.2)[0], w @ L + 0.2 * cos)
    # a baseline's model: no w input
    single = train_ltr.Ranker(train_ltr.RankerConfig(hidden=8, layers=1, heads=2))
    unit = train_ltr.Job("unit1", single.config, steps=1, fixed_w=[0.3, 0.7])  # ... and no penalty
    unit_plain, unit_L = loss_at(0.0, unit, single)
    torch.testing.assert_close(unit_plain, w @ unit_L)
    torch.testing.assert_close(loss_at(0.2, unit, single)[0], unit_plain)


def test_penalty_is_for_cos_dpo_only_and_betas_for_tcos_only(tiny_data, tmp_path, wcos_run, capsys):
    """App. A.1 baselines minimise L_w alone: --penalty leaves a Soup unchanged; --betas refuses a W-COS model."""
    tiny1 = TINY.copy()
    tiny1[1] = "1"
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert run(["--data-dir", tiny_data, "--out", a, "--method", "soup"] + tiny1) == 0
    assert run(["--data-dir", tiny_data, "--out", b, "--method", "soup", "--penalty", "0.5"] + tiny1) == 0
    assert results_of(a)["aux_ndcg"] == results_of(b)["aux_ndcg"]
    assert (
        pareto.main([os.path.join(wcos_run, "model.pt"), "--betas", "1,1", "--out", str(tmp_path / "x.png")])
        == 2
    )
    assert "T-COS" in capsys.readouterr().err


def test_film_and_vertex_prob_train_resume_and_are_checked(tiny_data, tmp_path, capsys):
    """--film --vertex-prob: the run's model carries FiLM, --resume continues the same draws, and the flags are
    refused where they mean nothing (per-list w, baselines, p outside [0, 1], a resume without --film)."""
    variant = ["--film", "--vertex-prob", "0.25"]
    a, c = str(tmp_path / "a"), str(tmp_path / "c")
    assert run(["--data-dir", tiny_data, "--out", a] + variant + TINY) == 0
    trained = TrainedRanker.load(os.path.join(a, "model.pt"))
    assert trained.models[0].config.film and trained.models[0].film.weight.abs().sum() > 0  # FiLM was trained
    tiny1 = TINY.copy()
    tiny1[1] = "1"
    assert run(["--data-dir", tiny_data, "--out", c] + variant + tiny1) == 0
    assert run(["--data-dir", tiny_data, "--out", c, "--resume"] + TINY) == 2
    assert "film is True but this run asks for False" in capsys.readouterr().err
    assert run(["--data-dir", tiny_data, "--out", c, "--resume"] + variant + TINY) == 0
    keys = ("aux_ndcg", "main_ndcg", "hypervolume")
    assert {k: results_of(c)[k] for k in keys} == {k: results_of(a)[k] for k in keys}
    base = ["--data-dir", tiny_data, "--out", str(tmp_path / "x")] + TINY
    for extra, message in (
        (["--vertex-prob", "0.25", "--w-per-list"], "cannot be combined with --w-per-list"),
        (["--vertex-prob", "1.5"], "--vertex-prob must be a probability"),
        (["--film", "--method", "soup"], "--method soup has none"),
    ):
        assert run(base + extra) == 2, extra
        assert message in capsys.readouterr().err, extra


@pytest.mark.parametrize("method", ["wcos", "modpo"])
def test_frozen_scores_come_from_the_list_the_model_scores(method, tiny_data, tmp_path, monkeypatch):
    """beta * (s_theta - s0) in Eq. 8 compares two scores of one document in one list. A training list longer than
    --max-list-len is cut to a random subset; the ranker attends across the list, so s0 (and MO-DPO's unit-model
    scores, Eq. 17) must be the frozen models' scores on the cut list, not on the whole one."""
    events = []
    make_batches = data_lib.make_batches

    def spy_batches(*args, **kwargs):
        batches = make_batches(*args, **kwargs)
        if kwargs.get("shuffle"):
            events.append(("batches", batches))
        return batches

    def spy(name, real):
        def wrapped(*args, **kwargs):
            events.append((name, [a.detach().clone() if torch.is_tensor(a) else a for a in args]))
            return real(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(data_lib, "make_batches", spy_batches)
    monkeypatch.setattr(train_ltr, "lipo_losses", spy("lipo", train_ltr.lipo_losses))
    monkeypatch.setattr(train_ltr, "modpo_loss", spy("modpo", train_ltr.modpo_loss))
    out = str(tmp_path / method)
    args = ["--data-dir", tiny_data, "--out", out, "--method", method, "--max-list-len", "8", *TINY]
    assert run(args + ["--epochs", "1", "--num-weights", "3"]) == 0
    ckpt = torch.load(os.path.join(out, "model.pt"), weights_only=True)
    base = ranker_from(ckpt["base"])
    splits, _ = data_lib.load_ltr(tiny_data, objectives=("I", "II"))
    whole = pareto.EvalSplit(splits["train"]).scores(lambda b: base(b.features, b.mask))  # s0 on whole lists

    kind = "modpo" if method == "modpo" else "lipo"
    at = next(i for i, (name, _) in enumerate(events) if name == kind)
    batch = [b for name, b in events[:at] if name == "batches"][-1][0]  # the batch of that first step
    used = events[at][1]
    assert (batch.mask.sum(1) == 8).any()  # some list of the batch was cut to 8 documents
    with torch.no_grad():
        cut = base(batch.features, batch.mask)  # s0 on the lists as the model sees them
        if method == "wcos":
            ref = used[1]  # lipo_losses(scores, ref_scores, ...)
            torch.testing.assert_close(ref[batch.mask], cut[batch.mask])
            # a real difference
            assert not torch.allclose(whole[batch.index][batch.mask], cut[batch.mask], atol=1e-4)
        else:
            units = used[2]  # modpo_loss(scores, ref_scores, unit_scores, ...)
            expected = torch.stack(
                [ranker_from(job)(batch.features, batch.mask) for job in ckpt["jobs"][:2]], -1
            )
            torch.testing.assert_close(used[1][batch.mask], cut[batch.mask])
            torch.testing.assert_close(units[batch.mask], expected[batch.mask])


def test_budget_cos_dpo_trains_three_baseline_models_and_small_data_gets_a_floor(tiny_data, tmp_path):
    """Table 1's times: one W-COS-DPO model trains about 3x one baseline model. A baseline model trains --epochs
    epochs, but at least --min-steps steps; results.json records the budget and the steps each model took."""
    per_epoch = len(data_lib.make_batches(data_lib.load_ltr(tiny_data)[0]["train"], 1024, max_list_len=256))
    for min_steps, baseline in (("1", 2 * per_epoch), ("40", 40)):
        runs = {}
        for method in ("soup", "wcos"):
            out = str(tmp_path / f"{method}{min_steps}")
            assert (
                run(
                    [
                        "--data-dir",
                        tiny_data,
                        "--out",
                        out,
                        "--method",
                        method,
                        *TINY,
                        "--epochs",
                        "2",
                        "--min-steps",
                        min_steps,
                    ]
                )
                == 0
            )
            runs[method] = results_of(out)
        assert runs["soup"]["budget"]["baseline_steps"] == baseline
        assert [j["steps"] for j in runs["soup"]["jobs"]] == [baseline, baseline]
        assert [j["steps"] for j in runs["wcos"]["jobs"]] == [3 * baseline]
        assert runs["wcos"]["budget"]["cos_budget"] == 3.0
        # the last epoch may be partial
        assert runs["wcos"]["jobs"][0]["epochs"] == -(-3 * baseline // per_epoch)
