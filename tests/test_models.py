"""Tests for models.py.

Ranking: padding, list equivariance, conditioning on w and beta_bar, augmentation, FiLM on w (a variant),
post-training control (Eq. 14-15), checkpoint loading.
LLM path (tiny GPT-2, 2 layers, width 32): sequence log-probs, PrefixLM (prefix outputs dropped, PEFT's
positions), HyperPrompt, LoRA and apply_lora, the soup's state interpolation.
"""

import pytest
import torch
import torch.nn as nn
from tiny_llm import flat, tiny_batch, tiny_lm, tiny_policy

from models import (
    CHECKPOINT_VERSION,
    HyperPrompt,
    HyperPromptConfig,
    LoRA,
    LoRAConfig,
    PrefixLM,
    Ranker,
    RankerConfig,
    TrainedRanker,
    apply_lora,
    count_parameters,
    interpolate_states,
    load_checkpoint,
    lora_disabled,
    ranker_from,
    resolve_device,
    sequence_logps,
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


# --- LLM path: sequence log-probs, PrefixLM, HyperPrompt, LoRA ----------------------------------------


def test_sequence_logps_equals_hand_sum_over_response_tokens():
    torch.manual_seed(0)
    B, T, V = 3, 7, 11
    logits, labels = torch.randn(B, T, V), torch.randint(V, (B, T))
    resp = torch.zeros(B, T, dtype=torch.bool)
    resp[0, 3:6], resp[1, 1:7], resp[2, 5] = True, True, True  # prompt before, padding after
    expected = torch.zeros(B)
    for b in range(B):
        for t in range(1, T):  # token t is predicted by position t - 1
            if resp[b, t]:
                expected[b] += torch.log_softmax(logits[b, t - 1], -1)[labels[b, t]]
    assert torch.allclose(sequence_logps(logits, labels, resp), expected, atol=1e-5)


def test_sequence_logps_ignores_prompt_and_padding_logits():
    torch.manual_seed(0)
    logits, labels = torch.randn(1, 6, 5), torch.randint(5, (1, 6))
    resp = torch.tensor([[False, False, True, True, False, False]])
    base = sequence_logps(logits, labels, resp)
    logits2 = logits.clone()
    logits2[0, 0] += 100.0  # predicts token 1 (prompt): not counted
    logits2[0, 3:] = float(
        "nan"
    )  # predicts tokens 4, 5 (padding) and nothing: not counted, nan must not leak
    labels2 = labels.clone()
    labels2[0, 4:] = 0
    assert torch.equal(sequence_logps(logits2, labels2, resp), base)


def test_sequence_logps_ignores_position_zero_which_has_no_prediction():
    logits, labels = torch.randn(1, 3, 4), torch.tensor([[1, 2, 3]])
    every, no_first = torch.ones(1, 3, dtype=torch.bool), torch.tensor([[False, True, True]])
    assert torch.equal(sequence_logps(logits, labels, every), sequence_logps(logits, labels, no_first))


def assert_float32_close(actual, expected):
    """Equal up to float32 rounding. transformers may compute the same logits through another code path (input
    ids or embeddings, all positions or the last few), which sums in another order: observed differences are
    about 1e-7 on logits of order 1, a few float32 ulps (eps 1.2e-7). The bound, torch's float32 default
    (rtol 1.3e-6, atol 1e-5), is ten times that and a hundred times below the 1e-3 that wrong positions give."""
    torch.testing.assert_close(actual, expected, rtol=1.3e-6, atol=1e-5)


class PoisonedLM(nn.Module):
    """A stand-in causal LM whose logits are a per-position linear map of the inputs, except at the first
    `k` positions, which it fills with nan: if any prefix output reached the caller, the log-probs would be nan.
    logits_to_keep as in transformers: the logits of the last positions only."""

    def __init__(self, k, vocab=13, d=6):
        super().__init__()
        self.k, self.emb, self.head = k, nn.Embedding(vocab, d), nn.Linear(d, vocab)

    def get_input_embeddings(self):
        return self.emb

    def forward(self, inputs_embeds, attention_mask, position_ids=None, logits_to_keep=0):
        logits = self.head(inputs_embeds)
        if inputs_embeds.shape[1] > self.k and position_ids is not None:
            logits = torch.cat([torch.full_like(logits[:, : self.k], float("nan")), logits[:, self.k :]], 1)
        return type("Out", (), {"logits": logits[:, -logits_to_keep:]})()


@pytest.mark.parametrize("k", [1, 3, 8])
def test_prefix_outputs_never_reach_the_logps(k):
    torch.manual_seed(0)
    lm = PoisonedLM(k)
    policy = PrefixLM(lm, HyperPrompt(HyperPromptConfig(embed_dim=6, num_objectives=2, num_virtual_tokens=k)))
    ids = torch.randint(13, (2, 5))
    mask = torch.ones(2, 5, dtype=torch.bool)
    resp = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 1, 0]], dtype=torch.bool)
    mask[1, 4] = False
    logits = policy(ids, mask, w=torch.tensor([0.3, 0.7]))
    assert logits.shape == (2, 5, 13)  # aligned with input_ids whatever k is
    manual = lm.head(lm.emb(ids))  # the token positions' logits, computed by hand
    assert_float32_close(logits, manual)  # (a longer matmul may sum in another order)
    assert torch.allclose(sequence_logps(logits, ids, resp), sequence_logps(manual, ids, resp))


def test_prefix_positions_follow_peft_and_the_reference_keeps_its_own():
    """PrefixLM = GPT-2 on [prefix; token embeddings] with PEFT's positions: prefix 0..k-1, tokens k..k+T-1,
    k outputs dropped. The reference (no prefix) sees the tokens at 0..T-1, i.e. the plain LM."""
    policy, k = tiny_policy(k=4), 4
    ids, attn, _ = flat(tiny_batch(2).batch([0, 1]))
    (B, T), w = ids.shape, torch.tensor([0.2, 0.8])
    with torch.no_grad():
        embeds = torch.cat([policy.prompt(w, batch_size=B), policy.lm.get_input_embeddings()(ids)], 1)
        mask = torch.cat([torch.ones(B, k, dtype=torch.long), attn.long()], 1)

        def manual(positions):
            positions = positions.expand(B, -1)
            return policy.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits[:, k:]

        got = policy(ids, attn, w=w)
        assert torch.allclose(got, manual(torch.arange(k + T)), atol=1e-6)
        restarted = manual(
            torch.cat([torch.arange(k), torch.arange(T)])
        )  # the tokens at 0..T-1 after the prefix
        assert not torch.allclose(got, restarted, atol=1e-3)
        plain = policy.lm(input_ids=ids, attention_mask=attn.long()).logits  # default positions 0..T-1
        assert_float32_close(policy(ids, attn, use_prefix=False), plain)
        assert_float32_close(
            policy(ids, attn, w=w, keep=3), got[:, -3:]
        )  # logits_to_keep: the last positions


def test_lora_on_linear_and_gpt2_conv1d_match_the_formula():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    x = torch.randn(3, 5)
    lin = nn.Linear(5, 7)
    conv = Conv1D(7, 5)  # weight (in=5, out=7): y = x W + b
    with torch.no_grad():
        conv.weight.copy_(lin.weight.t())
        conv.bias.copy_(lin.bias)
    for base in (lin, conv):
        lora = LoRA(base, rank=2, alpha=8.0)
        assert torch.equal(lora(x), base(x))  # B = 0: the adapted map starts equal to the base
        with torch.no_grad():
            lora.lora_B.normal_()
        want = x @ lin.weight.t() + lin.bias + 4.0 * (x @ lora.lora_A.t() @ lora.lora_B.t())  # alpha / r = 4
        assert torch.allclose(lora(x), want, atol=1e-5)
        with lora_disabled(lora):
            assert torch.allclose(lora(x), base(x))
        assert lora.enabled


def test_apply_lora_freezes_everything_and_names_the_layers_when_nothing_matches():
    lm = tiny_lm()
    wrapped = apply_lora(lm, LoRAConfig())
    assert wrapped == ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]
    assert all(n.endswith(("lora_A", "lora_B")) for n, p in lm.named_parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="c_fc"):
        apply_lora(tiny_lm(), LoRAConfig(targets=("nope",)))


def test_hyperprompt_is_the_masked_prefix_of_fig4():
    hp = HyperPrompt(HyperPromptConfig(embed_dim=6, num_objectives=2, num_virtual_tokens=3, rank=2))
    assert hp(torch.tensor([0.5, 0.5]), batch_size=4).shape == (4, 3, 6)
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    out = hp(w, batch_size=2)
    for b in range(2):  # prefix(w) = (A(w) @ B(w)) * P, A (k, r) and B (r, d) from the two MLPs
        a, bb = hp.mlp_a(w[b]).view(3, 2), hp.mlp_b(w[b]).view(2, 6)
        assert torch.allclose(out[b], (a @ bb) * hp.prefix)
    plain = HyperPrompt(HyperPromptConfig(embed_dim=6, num_objectives=0, num_virtual_tokens=3))
    assert torch.equal(plain(None, 2)[0], plain.prefix)


def test_interpolate_states_is_the_soup():
    a, b = {"x": torch.tensor([1.0, 2.0])}, {"x": torch.tensor([3.0, 6.0])}
    assert torch.allclose(interpolate_states([a, b], [0.25, 0.75])["x"], torch.tensor([2.5, 5.0]))
