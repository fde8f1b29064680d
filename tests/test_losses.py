"""Tests that teach the losses of losses.py: each equation against a naive loop or a hand computation.

Run: python -m pytest tests/test_losses.py -q
"""

import json
import math

import numpy as np
import pytest
import torch

from losses import (
    compose_temperature,
    cosine_penalty,
    dpo_loss,
    has_preference,
    lipo_loss,
    lipo_losses,
    listnet_loss,
    mean_over_lists,
    modpo_loss,
    normalize_labels,
    normalize_temperature,
    rescale_temperature,
    sample_weights,
    scalarize,
)


@pytest.fixture(autouse=True)
def float64():
    """Exact comparisons against the naive loops below; restored afterwards so other test files see float32."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def random_lists(B=6, n=7, m=3, seed=0):
    """Random scores, reference scores, non-negative sparse labels and a ragged padding mask."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, n, generator=g)
    s0 = torch.randn(B, n, generator=g)
    labels = torch.randint(0, 4, (B, n, m), generator=g).double() * (torch.rand(B, n, m, generator=g) < 0.6)
    lengths = torch.randint(1, n + 1, (B,), generator=g)
    lengths[0] = n  # one full list
    mask = torch.arange(n) < lengths[:, None]
    return s, s0, labels, mask


def naive_lipo(s, s0, z, beta, mask, label_norm):
    """Eq. 8 written as plain Python loops over lists and items."""
    out = []
    for b in range(s.shape[0]):
        idx = [i for i in range(s.shape[1]) if mask[b, i]]
        zz = [float(z[b, i]) for i in idx]
        if label_norm == "l1":
            total = sum(zz)
            if total == 0 or len(idx) < 2:
                out.append(0.0)
                continue
            zhat = [v / total for v in zz]
        else:
            if len(idx) < 2:
                out.append(0.0)
                continue
            e = [math.exp(v) for v in zz]
            zhat = [v / sum(e) for v in e]
        logits = [beta * (float(s[b, i]) - float(s0[b, i])) for i in idx]
        lse = math.log(sum(math.exp(v) for v in logits))
        out.append(-sum(zh * (lg - lse) for zh, lg in zip(zhat, logits)))
    return torch.tensor(out)


# ------------------------------------------------------------------------------------------- Eq. 5 / 8
@pytest.mark.parametrize("label_norm", ["l1", "softmax"])
@pytest.mark.parametrize("beta", [0.1, 1.0, 3.0])
def test_lipo_matches_naive_loop(label_norm, beta):
    s, s0, labels, mask = random_lists()
    got = lipo_loss(s, s0, labels[..., 0], beta, mask, label_norm)
    torch.testing.assert_close(got, naive_lipo(s, s0, labels[..., 0], beta, mask, label_norm))


def test_dpo_hand_value_and_ln2_at_reference():
    # margin = (2 - 1) - (0 - 0.5) = 1.5; beta = 0.1  ->  -log sigmoid(0.15)
    got = dpo_loss(torch.tensor([2.0]), torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([0.5]), 0.1)
    assert got.item() == pytest.approx(math.log1p(math.exp(-0.15)))
    # policy == reference: every pair is a coin flip, loss ln 2 whatever beta
    x = torch.randn(5)
    y = torch.randn(5)
    torch.testing.assert_close(dpo_loss(x, y, x, y, 7.0), torch.full((5,), math.log(2.0)))


def test_pairwise_dpo_equals_listwise_with_two_items():
    g = torch.Generator().manual_seed(1)
    pc, pr, rc, rr = torch.randn(4, 10, generator=g)
    listwise = lipo_loss(
        torch.stack([pc, pr], 1),
        torch.stack([rc, rr], 1),
        torch.tensor([[1.0, 0.0]]).expand(10, 2),
        0.3,
        label_norm="l1",
    )
    torch.testing.assert_close(listwise, dpo_loss(pc, pr, rc, rr, 0.3))


def test_listnet_is_lipo_with_zero_reference_and_unit_beta():
    s, _, labels, mask = random_lists(seed=2)
    torch.testing.assert_close(
        listnet_loss(s, labels[..., 1], mask),
        naive_lipo(s, torch.zeros_like(s), labels[..., 1], 1.0, mask, "softmax"),
    )


def test_lipo_hand_computation_three_items():
    # scores - ref = (1, 0, 0), beta = 1, labels (2, 1, 1) -> zhat = (.5, .25, .25)
    # log softmax = (1 - lse, -lse, -lse), lse = log(e + 2)
    lse = math.log(math.e + 2)
    expected = -(0.5 * (1 - lse) + 0.25 * (-lse) + 0.25 * (-lse))
    got = lipo_loss(torch.tensor([[1.0, 0.0, 0.0]]), torch.zeros(1, 3), torch.tensor([[2.0, 1.0, 1.0]]), 1.0)
    assert got.item() == pytest.approx(expected)


# ------------------------------------------------------------------------------------------- padding
def test_padded_items_get_zero_probability_and_zero_gradient():
    s = torch.tensor([[0.3, -1.0, 5.0, 9.0]], requires_grad=True)
    s0 = torch.zeros(1, 4)
    labels = torch.tensor([[1.0, 0.0, 2.0, 100.0]])
    mask = torch.tensor([[True, True, True, False]])
    loss = lipo_loss(s, s0, labels, 1.0, mask)
    # same as the list without its padded item
    short = lipo_loss(s[:, :3].detach(), s0[:, :3], labels[:, :3], 1.0)
    torch.testing.assert_close(loss.detach(), short)
    loss.sum().backward()
    assert s.grad[0, 3] == 0.0
    assert (s.grad[0, :3] != 0).any()
    zhat, _ = normalize_labels(labels, mask, "softmax")
    assert zhat[0, 3] == 0.0 and zhat[0, :3].sum().item() == pytest.approx(1.0)


def test_padding_values_do_not_matter():
    s, s0, labels, mask = random_lists(seed=3)
    s2, s02, labels2 = s.clone(), s0.clone(), labels.clone()
    s2[~mask], s02[~mask] = 1e6, -1e6
    labels2[~mask] = 50.0
    s2.requires_grad_(True)
    losses = lipo_losses(s2, s02, labels2, 0.5, mask, ("l1", "softmax", "l1"))
    torch.testing.assert_close(losses, lipo_losses(s, s0, labels, 0.5, mask, ("l1", "softmax", "l1")))
    losses.sum().backward()
    assert (s2.grad[~mask] == 0).all() and torch.isfinite(s2.grad).all()


def test_all_padding_and_huge_gaps_stay_finite():
    s = torch.tensor([[1e4, -1e4, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
    labels = torch.tensor([[0.0, 1.0, 0.0], [1.0, 2.0, 3.0]])
    mask = torch.tensor([[True, True, True], [False, False, False]])
    for norm in ("l1", "softmax"):
        loss = lipo_loss(s, torch.zeros(2, 3), labels, 1.0, mask, norm)
        assert torch.isfinite(loss).all()
        assert loss[1] == 0.0  # an all-padding list has no loss
        # log softmax(1e4, -1e4, 0) = (0, -2e4, -1e4) up to exp(-1e4); zhat = (a, b, a)
        a, b = (0.0, 1.0) if norm == "l1" else torch.softmax(labels[0], 0)[:2].tolist()
        assert loss[0].item() == pytest.approx(2e4 * b + 1e4 * a, rel=1e-9)
        s.grad = None
        loss.sum().backward()
        assert torch.isfinite(s.grad).all() and (s.grad[1] == 0).all()


def test_all_zero_labels_carry_no_preference_under_l1():
    s, s0 = torch.randn(3, 4), torch.randn(3, 4)
    labels = torch.tensor([[0.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 3]]).unsqueeze(-1).repeat(1, 1, 2)
    labels[2, :, 1] = 0.0
    mask = torch.ones(3, 4, dtype=torch.bool)
    losses = lipo_losses(s, s0, labels, 1.0, mask)
    valid = has_preference(labels, mask)
    assert valid.tolist() == [[False, False], [True, True], [True, False]]
    # under "softmax" every list with two real items orders its items, even with all-zero labels
    assert has_preference(labels, mask, ("softmax", "l1")).tolist() == [
        [True, False],
        [True, True],
        [True, False],
    ]
    assert losses[0].abs().sum() == 0 and losses[2, 1] == 0
    # the mean counts only lists with a preference
    torch.testing.assert_close(
        mean_over_lists(losses, valid), torch.stack([losses[1:, 0].mean(), losses[1, 1]])
    )


def test_single_item_list_has_no_preference():
    labels = torch.tensor([[3.0, 0.0]])
    mask = torch.tensor([[True, False]])
    for norm in ("l1", "softmax"):
        assert not normalize_labels(labels, mask, norm)[1].item()


# ------------------------------------------------------------------------------------------- Eq. 11
def test_lipo_losses_columns_equal_single_objective_losses():
    s, s0, labels, mask = random_lists(m=3, seed=4)
    beta = torch.tensor([0.5, 1.0, 2.0])
    norms = ("l1", "softmax", "l1")
    got = lipo_losses(s, s0, labels, beta, mask, norms)
    for j in range(3):
        torch.testing.assert_close(
            got[:, j], naive_lipo(s, s0, labels[..., j], beta[j].item(), mask, norms[j])
        )
    # one beta row per list
    beta_rows = torch.rand(s.shape[0], 3) + 0.5
    got = lipo_losses(s, s0, labels, beta_rows, mask, "softmax")
    for b in range(s.shape[0]):
        for j in range(3):
            torch.testing.assert_close(
                got[b, j],
                lipo_loss(
                    s[b : b + 1],
                    s0[b : b + 1],
                    labels[b : b + 1, :, j],
                    beta_rows[b, j].item(),
                    mask[b : b + 1],
                    "softmax",
                )[0],
            )


def test_one_hot_w_reduces_to_single_objective_dpo():
    s, s0, labels, mask = random_lists(m=3, seed=5)
    L = lipo_losses(s, s0, labels, 0.7, mask)
    for j in range(3):
        e = torch.zeros(3)
        e[j] = 1.0
        torch.testing.assert_close(scalarize(L, e), lipo_loss(s, s0, labels[..., j], 0.7, mask))


def test_scalarize_and_cosine_penalty_by_hand():
    L = torch.tensor([1.0, 3.0])
    w = torch.tensor([0.25, 0.75])
    assert scalarize(L, w).item() == pytest.approx(0.25 + 2.25)
    # G_w = w.L / (|w| |L|) = 2.5 / (sqrt(0.625) * sqrt(10)) = 1.0 (L is parallel to w)
    assert cosine_penalty(L, w).item() == pytest.approx(1.0)
    # G_w = +cos(w, L): L = (3, 1) points away from w, smaller G_w
    assert cosine_penalty(torch.tensor([3.0, 1.0]), w).item() == pytest.approx(
        (0.75 + 0.75) / (math.sqrt(0.625) * math.sqrt(10))
    )
    # batched, with per-list weights
    Lb = torch.tensor([[1.0, 3.0], [2.0, 0.0]])
    wb = torch.tensor([[0.25, 0.75], [1.0, 0.0]])
    torch.testing.assert_close(scalarize(Lb, wb), torch.tensor([2.5, 2.0]))
    torch.testing.assert_close(cosine_penalty(Lb, wb), torch.tensor([1.0, 1.0]))
    # L parallel to w is a stationary point of G_w
    Lg = torch.tensor([1.0, 3.0], requires_grad=True)
    cosine_penalty(Lg, w).backward()
    torch.testing.assert_close(Lg.grad, torch.zeros(2), atol=1e-12, rtol=0)
    # the direction the sign gives: at L = (2, 2), dG/dL = w / (|w||L|) - (w.L) L / (|w||L|^3)
    #   = (1/|w|) ((.25, .75) / 2.828 - 2 (2, 2) / 22.63) = (1/|w|) (-0.0884, +0.0884),
    # so gradient descent on lambda G_w raises L_1 (weight .25) and lowers L_2 (weight .75)
    Lg = torch.tensor([2.0, 2.0], requires_grad=True)
    cosine_penalty(Lg, w).backward()
    torch.testing.assert_close(
        Lg.grad, torch.tensor([-1.0, 1.0]) * 0.25 / (2 * math.sqrt(2) * math.sqrt(0.625))
    )


@pytest.mark.parametrize("w", [(0.25, 0.75), (0.5, 0.5), (0.9, 0.1)])
def test_penalty_with_positive_lambda_brings_L_along_w(w):
    """Training minimises L_w - lambda * cos(w, L). One gradient step on L from a point off the
    ray of w raises cos(w, L) (lambda > 0 large enough to beat L_w's own pull, or the penalty alone); the
    sign printed in Eq. 18 (L_w + lambda * G_w, i.e. a negative lambda here) lowers it."""
    w = torch.tensor(w)
    L0 = torch.tensor([2.0, 2.0]) if w[0] != w[1] else torch.tensor([1.0, 3.0])

    def cos_after_step(objective):
        L = L0.clone().requires_grad_(True)
        objective(L).backward()
        return cosine_penalty((L - 0.01 * L.grad).detach(), w)

    before = cosine_penalty(L0, w)
    assert cos_after_step(lambda L: -cosine_penalty(L, w)) > before
    assert cos_after_step(lambda L: scalarize(L, w) - 20.0 * cosine_penalty(L, w)) > before
    assert cos_after_step(lambda L: cosine_penalty(L, w)) < before
    assert cos_after_step(lambda L: scalarize(L, w) + 20.0 * cosine_penalty(L, w)) < before


# ------------------------------------------------------------------------------------------- Eq. 14 / 15
@pytest.mark.parametrize("c", [0.5, 1.0, 2.0, 3.7])
def test_rescaled_model_at_c_beta_has_the_same_loss(c):
    s, s0, labels, mask = random_lists(seed=6)
    beta = 0.8
    moved = rescale_temperature(s, s0, c)
    torch.testing.assert_close(
        lipo_loss(moved, s0, labels[..., 0], c * beta, mask), lipo_loss(s, s0, labels[..., 0], beta, mask)
    )
    assert rescale_temperature(s, s0, 1.0).equal(s)


def test_compose_temperature_identity():
    s, s0, labels, mask = random_lists(m=2, seed=7)
    net = torch.randn_like(s)
    beta = torch.tensor([0.7, 1.4])
    beta_bar = normalize_temperature(beta)
    composed = compose_temperature(net, s0, beta)
    # beta_j * (s - s0) = beta_bar_j * (net - s0), so the losses agree objective by objective
    for j in range(2):
        torch.testing.assert_close(beta[j] * (composed - s0), beta_bar[j] * (net - s0))
    torch.testing.assert_close(
        lipo_losses(composed, s0, labels, beta, mask), lipo_losses(net, s0, labels, beta_bar, mask)
    )
    # per-list temperatures
    beta_rows = torch.tensor([[0.7, 1.4], [1.0, 1.0], [0.67, 1.5], [1.2, 0.9], [1, 1], [2, 1]])
    composed = compose_temperature(net, s0, beta_rows)
    torch.testing.assert_close(composed[2], (1 - 1 / 2.17) * s0[2] + net[2] / 2.17)
    # ||beta||_1 = 1 leaves the network's output as it is
    torch.testing.assert_close(compose_temperature(net, s0, torch.tensor([0.25, 0.75])), net)


# ------------------------------------------------------------------------------------------- Eq. 17
def test_modpo_hand_formula_and_reduction():
    s, s0, labels, mask = random_lists(m=3, seed=8)
    unit = torch.randn(*s.shape, 3)
    w = torch.tensor([0.5, 0.3, 0.2])
    got = modpo_loss(s, s0, unit, labels[..., 0], w, 0, 0.9, mask)
    r = (s - s0 - 0.3 * (unit[..., 1] - s0) - 0.2 * (unit[..., 2] - s0)) / 0.5
    torch.testing.assert_close(got, lipo_loss(r, torch.zeros_like(r), labels[..., 0], 0.9, mask))
    # at a unit weight MO-DPO is plain DPO on that objective
    torch.testing.assert_close(
        modpo_loss(s, s0, unit, labels[..., 1], torch.tensor([0.0, 1.0, 0.0]), 1, 0.9, mask),
        lipo_loss(s, s0, labels[..., 1], 0.9, mask),
    )


def test_modpo_guards_vanishing_weight():
    s, s0, labels, mask = random_lists(m=2, seed=9)
    with pytest.raises(ValueError, match="w\\[objective\\]"):
        modpo_loss(
            s, s0, torch.randn(*s.shape, 2), labels[..., 0], torch.tensor([0.001, 0.999]), 0, 1.0, mask
        )


# ------------------------------------------------------------------------------------------- Dirichlet
def test_sample_weights_moments_match_dirichlet():
    alpha = torch.tensor([0.3, 1.0, 2.5])
    w = sample_weights(alpha, 200_000, generator=0)
    assert w.dtype == torch.float32 and w.shape == (200_000, 3) and (w >= 0).all()
    w = w.double()
    torch.testing.assert_close(w.sum(-1), torch.ones(200_000), atol=1e-6, rtol=0)
    a0 = alpha.sum()
    mean = alpha / a0
    var = mean * (1 - mean) / (a0 + 1)  # App. A.6.1
    torch.testing.assert_close(w.mean(0), mean, atol=4e-3, rtol=0)
    torch.testing.assert_close(w.var(0), var, atol=2e-3, rtol=0)
    # E[log w_j] = digamma(alpha_j) - digamma(alpha_0): checks the shape of the law, not only moments
    torch.testing.assert_close(
        w.clamp_min(1e-300).log().mean(0), torch.digamma(alpha) - torch.digamma(a0), atol=3e-2, rtol=0
    )


def test_sample_weights_reproducible_and_tiny_alpha():
    assert sample_weights([0.5, 0.5], 5, generator=3).equal(sample_weights([0.5, 0.5], 5, generator=3))
    assert sample_weights([0.5, 0.5], 5, np.random.default_rng(3)).equal(sample_weights([0.5, 0.5], 5, 3))
    assert not sample_weights([0.5, 0.5], 5, generator=3).equal(sample_weights([0.5, 0.5], 5, generator=4))
    w = sample_weights([0.01, 0.01, 0.01], 1000, generator=0)
    assert torch.isfinite(w).all() and (w.sum(-1) - 1).abs().max() < 1e-5
    assert (w.max(-1).values > 0.99).float().mean() > 0.9  # tiny alpha -> near the simplex corners


def test_sample_weights_resume_continues_the_same_draws():
    rng = np.random.default_rng(7)
    sample_weights([0.5, 0.5], 3, rng)  # the steps before the checkpoint
    state = json.loads(json.dumps(rng.bit_generator.state))  # what a checkpoint stores: plain Python values
    uninterrupted = torch.cat([sample_weights([0.5, 0.5], 1, rng) for _ in range(4)])
    resumed = np.random.default_rng()
    resumed.bit_generator.state = state
    assert torch.cat([sample_weights([0.5, 0.5], 1, resumed) for _ in range(4)]).equal(uninterrupted)


def test_vertex_prob_draws_unit_vectors_at_that_rate():
    """The --vertex-prob variant: with vertex_prob p a call's rows are one e_j (j uniform) with probability p, else
    Dir(alpha); p = 0 leaves the paper's draws untouched (same Generator stream)."""

    def draws(p, num=4000, rows=1):
        rng = np.random.default_rng(0)
        return torch.stack([sample_weights([0.5, 0.5, 0.5], rows, rng, vertex_prob=p) for _ in range(num)])

    def is_vertex(w):
        return (w == 1).any(-1)

    assert not is_vertex(draws(0.0)).any()  # Dir(alpha) never draws a vertex exactly
    assert abs(is_vertex(draws(0.25)).float().mean() - 0.25) < 0.03
    ones = draws(1.0, rows=2)
    assert is_vertex(ones).all() and ones[:, 0].equal(ones[:, 1])  # every row of a call: the same e_j
    torch.testing.assert_close(ones[:, 0].mean(0), torch.full((3,), 1 / 3), atol=0.03, rtol=0)  # j uniform
    torch.testing.assert_close(draws(0.0, 5)[:, 0], sample_weights([0.5] * 3, 5, np.random.default_rng(0)))


def test_lipo_losses_returns_the_has_preference_mask_of_its_own_normalisation():
    """return_valid gives has_preference's mask from the one normalisation the losses used, and the same losses."""
    s, s0, labels, mask = random_lists(B=8, m=3, seed=5)
    labels[1] = 0.0  # a list with all-zero labels: no preference under "l1"
    mask[2, 1:] = False  # a single-item list: nothing to order
    norms = ("l1", "softmax", "l1")
    losses, valid = lipo_losses(s, s0, labels, 0.7, mask, norms, return_valid=True)
    torch.testing.assert_close(losses, lipo_losses(s, s0, labels, 0.7, mask, norms), rtol=0, atol=0)
    assert torch.equal(valid, has_preference(labels, mask, norms))
    assert not valid[1, 0] and valid[1, 1] and not valid[2].any()
