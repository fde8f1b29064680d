"""Tests for the ranking part of models.py: padding, list equivariance, conditioning on w and beta_bar,
augmentation, FiLM on w (a variant), post-training control (Eq. 14-15), checkpoint loading."""

import pytest
import torch

from models import (
    CHECKPOINT_VERSION,
    Ranker,
    RankerConfig,
    TrainedRanker,
    count_parameters,
    interpolate_states,
    load_checkpoint,
    ranker_from,
    resolve_device,
    steered_scores,
)


def tiny(**kw):
    torch.manual_seed(0)
    cfg = RankerConfig(num_features=5, hidden=8, layers=2, heads=2, **kw)
    return Ranker(cfg).eval()


def batch(B=3, n=6, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, n, d, generator=g)
    mask = torch.arange(n) < torch.tensor([n, 4, 2])[:B, None]
    return x, mask


def test_padding_does_not_change_real_scores():
    model = tiny()
    x, mask = batch()
    s = model(x, mask)
    assert (s[~mask] == 0).all()
    # change whatever sits at padded positions, and add more padding: real scores stay the same
    x2 = x.clone()
    x2[~mask] = 1e3
    x2 = torch.cat([x2, torch.randn(3, 4, 5)], 1)
    mask2 = torch.cat([mask, torch.zeros(3, 4, dtype=torch.bool)], 1)
    torch.testing.assert_close(model(x2, mask2)[:, :6][mask], s[mask])
    # a list scored alone equals the same list inside a padded batch
    torch.testing.assert_close(model(x[1:2, :4], mask[1:2, :4])[0], s[1, :4])


def test_scores_are_permutation_equivariant_within_a_list():
    model = tiny()
    x, mask = batch()
    perm = torch.randperm(6)
    s = model(x[:1], mask[:1])
    torch.testing.assert_close(model(x[:1, perm], mask[:1, perm]), s[:, perm])


def test_documents_see_their_list_context():
    model = tiny()
    x, mask = batch()
    x2 = x.clone()
    x2[0, 5] += 3.0  # change another document of the same list
    assert not torch.allclose(model(x2, mask)[0, 0], model(x, mask)[0, 0])


def test_conditioning_on_w_and_beta_bar():
    model = tiny(num_objectives=2, temperature_input=True)
    x, mask = batch()
    bb = torch.tensor([0.5, 0.5])
    s1 = model(x, mask, w=torch.tensor([1.0, 0.0]), beta_bar=bb)
    s2 = model(x, mask, w=torch.tensor([0.0, 1.0]), beta_bar=bb)
    s3 = model(x, mask, w=torch.tensor([1.0, 0.0]), beta_bar=torch.tensor([0.3, 0.7]))
    assert not torch.allclose(s1[mask], s2[mask]) and not torch.allclose(s1[mask], s3[mask])
    # one w for the batch equals the same w repeated per list; per-list w differs row by row
    w_rows = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    s_rows = model(x, mask, w=w_rows, beta_bar=bb.expand(3, 2))
    torch.testing.assert_close(s_rows[:2], s1[:2])
    torch.testing.assert_close(s_rows[2], s2[2])


def test_w_is_concatenated_to_the_input_features():
    """Sec. 4.1: the network input is [features, w]; check against an explicit concatenation."""
    model = tiny(num_objectives=2)
    x, mask = batch()
    w = torch.tensor([0.2, 0.8])
    weight, bias = model.input.weight, model.input.bias  # (hidden, 5 + 2)
    cat = torch.cat([x, w.expand(3, 6, 2)], -1)
    torch.testing.assert_close(model.input(cat), x @ weight[:, :5].T + w @ weight[:, 5:].T + bias)


def test_augment_adds_the_frozen_base_scores():
    model = tiny(num_objectives=2, parametrization="augment")
    x, mask = batch()
    w = torch.tensor([0.5, 0.5])
    ref = torch.randn(3, 6)
    delta = model(x, mask, w=w, ref_scores=torch.zeros(3, 6))
    torch.testing.assert_close(model(x, mask, w=w, ref_scores=ref)[mask], (ref + delta)[mask])


def test_conditioning_inputs_must_match_the_config():
    """The one check left in Ranker.forward: the conditioning inputs given are the ones the config asks for."""
    x, mask = batch()
    with pytest.raises(AssertionError):
        tiny(num_objectives=2)(x, mask)  # w missing
    with pytest.raises(AssertionError):
        tiny(num_objectives=2)(x, mask, w=torch.ones(3))  # w of the wrong length
    with pytest.raises(AssertionError):
        tiny()(x, mask, w=torch.ones(2) / 2)  # an unconditioned model given w


def test_interpolate_states_is_the_weighted_sum():
    a, b = {"p": torch.tensor([1.0, 2.0])}, {"p": torch.tensor([3.0, 6.0])}
    torch.testing.assert_close(interpolate_states([a, b], [0.25, 0.75])["p"], torch.tensor([2.5, 5.0]))


def test_steered_scores_follow_eq_14_and_15():
    x, mask = batch()
    ref = torch.randn(3, 6).masked_fill(~mask, 0.0)
    model = tiny(num_objectives=2)
    w = [0.3, 0.7]
    s = steered_scores(model, x, mask, ref, w)
    torch.testing.assert_close(steered_scores(model, x, mask, ref, w, c=2.0), 0.5 * ref + 0.5 * s)  # Eq. 14
    tcos = tiny(num_objectives=2, temperature_input=True, parametrization="augment")
    net = tcos(x, mask, w=torch.tensor(w), beta_bar=torch.tensor([0.25, 0.75]), ref_scores=ref)
    # Eq. 15
    torch.testing.assert_close(steered_scores(tcos, x, mask, ref, w, beta=[0.5, 1.5]), net / 2 + ref / 2)


def test_load_checkpoint_gives_one_line_errors(tmp_path):
    good = tmp_path / "model.pt"
    torch.save({"kind": "cosdpo-ltr", "x": torch.ones(100)}, good)
    assert load_checkpoint(str(good), "cosdpo-ltr")["kind"] == "cosdpo-ltr"
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    foreign = tmp_path / "foreign.pt"
    torch.save({"kind": "something else"}, foreign)
    for path, message in (
        (truncated, "cannot be read"),
        (tmp_path / "missing.pt", "no such file"),
        (foreign, "found 'something else'"),
        (good, "expected a 'cosdpo-ltr-base' checkpoint"),
    ):
        with pytest.raises(ValueError, match=message) as err:
            load_checkpoint(str(path), "cosdpo-ltr-base" if path == good else "cosdpo-ltr")
        assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_trained_ranker_refuses_an_older_or_unfinished_model_pt(tmp_path):
    path = str(tmp_path / "model.pt")
    for ckpt, message in (
        (dict(kind="cosdpo-ltr", version=1, complete=True), "older train_ltr.py"),
        (dict(kind="cosdpo-ltr", version=CHECKPOINT_VERSION, complete=False), "unfinished run"),
    ):
        torch.save(ckpt, path)
        with pytest.raises(ValueError, match=message):
            TrainedRanker.load(path)


def test_resolve_device():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")


def test_parameter_count():
    model = tiny(num_objectives=2)
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())
    # w adds one input column per objective
    assert count_parameters(model) - count_parameters(tiny()) == 2 * 8


def test_zero_initialised_film_is_exactly_the_paper_network():
    """FiLM starts at the identity, so with the same other weights the outputs are the paper's."""
    paper, film = tiny(num_objectives=2), tiny(num_objectives=2, film=True)
    film.load_state_dict(paper.state_dict(), strict=False)  # film.film stays zero
    x, mask = batch()
    for w in (torch.tensor([0.3, 0.7]), torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])):
        assert torch.equal(film(x, mask, w=w), paper(x, mask, w=w))
    # m -> 2 * hidden * (L + 1)
    assert count_parameters(film) - count_parameters(paper) == (2 + 1) * 2 * 8 * 3


def test_film_conditions_every_site_on_w():
    """With w cut from the input concatenation, w reaches the scores through any one FiLM site alone:
    after the input projection, after encoder layer 1 (of 2), after the final LayerNorm."""
    x, mask = batch()
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    hidden, sites = 8, 3
    for site in range(sites):
        model = tiny(num_objectives=2, film=True)
        with torch.no_grad():
            model.input.weight[:, 5:] = 0.0  # w no longer enters through the inputs
            rows = slice(site * 2 * hidden, (site + 1) * 2 * hidden)
            model.film.weight[rows] = torch.randn(2 * hidden, 2)
        s1, s2 = model(x, mask, w=e1), model(x, mask, w=e2)
        assert not torch.allclose(s1[mask], s2[mask]), f"site {site} does not carry w"
        # one w for the batch equals the same w repeated per list
        torch.testing.assert_close(model(x, mask, w=torch.stack([e1, e1, e2]))[:2], s1[:2])


def test_film_config_rebuilds_from_a_checkpoint_entry():
    model = tiny(num_objectives=2, film=True)
    with torch.no_grad():
        model.film.weight.normal_()
    x, mask = batch()
    w = torch.tensor([0.4, 0.6])
    rebuilt = ranker_from({"model_config": model.config.to_dict(), "model_state": model.state_dict()})
    assert rebuilt.config.film and torch.equal(rebuilt(x, mask, w=w), model(x, mask, w=w))


def test_dropout_acts_in_training_only():
    """The --dropout regulariser: random in train mode, off in the evaluation model ranker_from rebuilds."""
    model = tiny(num_objectives=2, dropout=0.5).train()
    x, mask = batch()
    w = torch.tensor([0.4, 0.6])
    assert not torch.equal(model(x, mask, w=w), model(x, mask, w=w))
    rebuilt = ranker_from({"model_config": model.config.to_dict(), "model_state": model.state_dict()})
    assert rebuilt.config.dropout == 0.5 and torch.equal(rebuilt(x, mask, w=w), model.eval()(x, mask, w=w))
