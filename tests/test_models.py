"""Tests for the ranker in models.py: padding, list equivariance, conditioning on w and beta_bar, augmentation."""
import pytest
import torch

from models import Ranker, RankerConfig, count_parameters


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


def test_bad_input():
    with pytest.raises(ValueError, match="parametrization"):
        RankerConfig(parametrization="hyper")
    with pytest.raises(ValueError, match="temperature_input needs"):
        RankerConfig(temperature_input=True)
    with pytest.raises(ValueError, match="divisible"):
        RankerConfig(hidden=10, heads=4)
    x, mask = batch()
    with pytest.raises(ValueError, match="w must have shape"):
        tiny(num_objectives=2)(x, mask)
    with pytest.raises(ValueError, match="w must have shape"):
        tiny(num_objectives=2)(x, mask, w=torch.ones(3))
    with pytest.raises(ValueError, match="takes no w"):
        tiny()(x, mask, w=torch.ones(2) / 2)
    with pytest.raises(ValueError, match="features must be"):
        tiny()(x[..., :4], mask)
    with pytest.raises(ValueError, match="augment"):
        tiny(num_objectives=1, parametrization="augment")(x, mask, w=torch.ones(1))


def test_parameter_count():
    model = tiny(num_objectives=2)
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())
    assert count_parameters(model) - count_parameters(tiny()) == 2 * 8  # w adds one input column per objective
