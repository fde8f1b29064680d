"""The COS-DPO losses and transforms as small pure tensor functions (paper Sec. 2-3, App. A.1-A.2).

Every function here needs only `torch` and its arguments, so any one of them can be copied into another
project. Losses return one value per group (per list / per preference pair); the caller reduces.

    score-level       dpo_loss (Eq. 5), lipo_loss (Eq. 8), listnet_loss (Eq. 7), lipo_losses (Eq. 11),
                      modpo_loss (Eq. 17)
    vector-level      scalarize (L_w = w . L), cosine_penalty (G_w, Eq. 18-19), mean_over_lists
    temperature       rescale_temperature (Eq. 13-14), normalize_temperature / compose_temperature (Eq. 15)
    sampling          sample_weights (w ~ Dir(alpha), Alg. 1-4)

"Scores" are s_theta(y|x) of the model being trained and "ref_scores" are s0(y|x) of the frozen base
model. For an LLM both are sequence log-probabilities log p(y|x); for a ranker they are the ranker's
outputs. The same functions serve both: that shared use is the point of LiPO (Sec. 2.2).

Shapes: B groups (lists / pairs), n items per group (padded), m auxiliary objectives.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

LABEL_NORMS = ("l1", "softmax")
_SIMPLEX_TOL = 1e-4  # |sum(w) - 1| allowed for a weight vector (float32 round-off of user input)


# ----------------------------------------------------------------------------------------------------
# argument checks (shared by the functions below; kept tiny so a copied function stays readable)
# ----------------------------------------------------------------------------------------------------
def _as_tensor(x, like: torch.Tensor, name: str) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=like.dtype, device=like.device)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite, got {x}")
    return t


def _check_positive(x, like: torch.Tensor, name: str) -> torch.Tensor:
    t = _as_tensor(x, like, name)
    if (t <= 0).any():
        raise ValueError(f"{name} must be > 0, got {x}")
    return t


def _check_same_shape(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_b} must have the shape of {name_a} {tuple(a.shape)}, got {tuple(b.shape)}")


def _check_mask(mask: Optional[torch.Tensor], shape: torch.Size, device) -> torch.Tensor:
    if mask is None:
        return torch.ones(shape, dtype=torch.bool, device=device)
    if mask.shape != shape:
        raise ValueError(f"mask must have shape {tuple(shape)} (True = real item), got {tuple(mask.shape)}")
    return mask.to(torch.bool)


def _check_simplex(w, like: torch.Tensor, m: int, name: str = "w", rows: Optional[int] = None) -> torch.Tensor:
    """w must be (m,) -- or (rows, m), one weight per list, when `rows` is given -- with rows on the simplex."""
    w = _as_tensor(w, like, name)
    if w.shape != (m,) and (rows is None or w.shape != (rows, m)):
        expected = f"({m},)" + ("" if rows is None else f" or ({rows}, {m})")
        raise ValueError(f"{name} must have shape {expected} to match the {m} objectives, got {tuple(w.shape)}")
    if (w < 0).any() or ((w.sum(-1) - 1.0).abs() > _SIMPLEX_TOL).any():
        raise ValueError(f"{name} must lie on the simplex (entries >= 0 summing to 1), got {w.tolist()}")
    return w


# ----------------------------------------------------------------------------------------------------
# DPO and listwise DPO (LiPO)
# ----------------------------------------------------------------------------------------------------
def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor,
             beta: Union[float, torch.Tensor]) -> torch.Tensor:
    """Pairwise DPO loss, Eq. 5: -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))).

    All four inputs are (B,) sequence log-probs (or scores); beta > 0 is a float or a (B,) tensor.
    Returns (B,). Equals `lipo_loss` with n = 2, labels (1, 0) and label_norm="l1" (a test shows it).
    """
    _check_same_shape("policy_chosen_logps", policy_chosen_logps, "policy_rejected_logps", policy_rejected_logps)
    _check_same_shape("policy_chosen_logps", policy_chosen_logps, "ref_chosen_logps", ref_chosen_logps)
    _check_same_shape("policy_chosen_logps", policy_chosen_logps, "ref_rejected_logps", ref_rejected_logps)
    beta = _check_positive(beta, policy_chosen_logps, "beta")
    if beta.dim() > 0 and beta.shape != policy_chosen_logps.shape:
        raise ValueError(f"beta must be a float or have shape {tuple(policy_chosen_logps.shape)}, got {tuple(beta.shape)}")
    margin = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)  # (B,)
    return -F.logsigmoid(beta * margin)


def normalize_labels(labels: torch.Tensor, mask: Optional[torch.Tensor] = None,
                     label_norm: str = "l1") -> tuple[torch.Tensor, torch.Tensor]:
    """Label normalisation z -> zhat over the valid items of each list (Sec. 2.2, Eq. 7-8).

    labels: (B, n); mask: (B, n) bool, True = real item. label_norm:
      "l1"      zhat = z / sum(z)   for sparse labels (clicks, binary preferences); labels must be >= 0.
      "softmax" zhat = softmax(z)   for dense labels.
    Returns (zhat (B, n) with exactly 0 at padding, has_pref (B,) bool). has_pref is False for a list that
    states no preference: all-zero labels under "l1", or fewer than two real items (nothing to order;
    this second rule is our choice, such a list's loss is 0 anyway). Such lists get zhat = 0, hence
    zero loss and zero gradient, and `mean_over_lists` leaves them out of the mean.
    """
    if label_norm not in LABEL_NORMS:
        raise ValueError(f"label_norm must be one of {LABEL_NORMS}, got {label_norm!r}")
    mask = _check_mask(mask, labels.shape, labels.device)
    if not torch.isfinite(labels[mask]).all():
        raise ValueError("labels must be finite at real (unmasked) items")
    enough_items = mask.sum(-1) >= 2  # (B,)
    if label_norm == "l1":
        if (labels[mask] < 0).any():
            raise ValueError('labels must be >= 0 for label_norm="l1" (use "softmax" for signed labels)')
        z = labels.masked_fill(~mask, 0.0)
        total = z.sum(-1, keepdim=True)  # (B, 1)
        has_pref = (total.squeeze(-1) > 0) & enough_items
        zhat = torch.where(has_pref.unsqueeze(-1), z / total.clamp_min(torch.finfo(z.dtype).tiny), 0.0)
    else:
        logits = labels.masked_fill(~mask, float("-inf"))
        # a list with no real item would give softmax(-inf, ..., -inf) = nan: give it zeros instead
        logits = torch.where(mask.any(-1, keepdim=True), logits, 0.0)
        has_pref = enough_items
        zhat = torch.where(has_pref.unsqueeze(-1), torch.softmax(logits, -1), 0.0)
    return zhat, has_pref


def _masked_log_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log softmax over the real items of each list; exactly 0 (not -inf) at padding so that 0 * logp = 0.

    Padded items get probability exp(-inf) = 0 and zero gradient. A list with no real item gives all zeros.
    """
    logits = logits.masked_fill(~mask, float("-inf"))
    logits = torch.where(mask.any(-1, keepdim=True), logits, 0.0)  # all-padding list: avoid nan
    return torch.log_softmax(logits, -1).masked_fill(~mask, 0.0)


def lipo_loss(scores: torch.Tensor, ref_scores: torch.Tensor, labels: torch.Tensor,
              beta: Union[float, torch.Tensor], mask: Optional[torch.Tensor] = None,
              label_norm: str = "l1") -> torch.Tensor:
    """Listwise DPO (LiPO) loss for one objective, Eq. 8, per list:

        L = - sum_i zhat_i * log softmax_i( beta * (s_theta(y_i) - s0(y_i)) )    over real items i.

    scores, ref_scores, labels: (B, n); mask: (B, n) bool (True = real item); beta > 0: float or (B,).
    Returns (B,); 0 for lists without a preference (see `normalize_labels`).
    """
    _check_same_shape("scores", scores, "ref_scores", ref_scores)
    _check_same_shape("scores", scores, "labels", labels)
    beta = _check_positive(beta, scores, "beta")
    if beta.dim() == 1:
        if beta.shape[0] != scores.shape[0]:
            raise ValueError(f"beta must be a float or have shape ({scores.shape[0]},), got {tuple(beta.shape)}")
        beta = beta.unsqueeze(-1)  # (B, 1)
    elif beta.dim() > 1:
        raise ValueError(f"beta must be a float or a (B,) tensor, got shape {tuple(beta.shape)}")
    mask = _check_mask(mask, scores.shape, scores.device)
    zhat, _ = normalize_labels(labels, mask, label_norm)  # (B, n)
    logp = _masked_log_softmax(beta * (scores - ref_scores), mask)  # (B, n)
    return -(zhat * logp).sum(-1)


def listnet_loss(scores: torch.Tensor, labels: torch.Tensor, mask: Optional[torch.Tensor] = None,
                 label_norm: str = "softmax") -> torch.Tensor:
    """ListNet loss, Eq. 7: Eq. 8 with s0 = 0 and beta = 1. Trains the base ranker on the main label.

    scores, labels: (B, n); mask: (B, n) bool. Returns (B,). The default "softmax" label normalisation is
    allRank's ListNet convention for graded relevance (the paper leaves it open).
    """
    return lipo_loss(scores, torch.zeros_like(scores), labels, 1.0, mask, label_norm)


def _per_objective(option: Union[str, Sequence[str]], m: int) -> list[str]:
    if isinstance(option, str):
        return [option] * m
    option = list(option)
    if len(option) != m:
        raise ValueError(f"label_norm must be a string or one string per objective ({m}), got {option}")
    return option


def lipo_losses(scores: torch.Tensor, ref_scores: torch.Tensor, labels: torch.Tensor,
                beta: Union[float, Sequence[float], torch.Tensor], mask: Optional[torch.Tensor] = None,
                label_norm: Union[str, Sequence[str]] = "l1") -> torch.Tensor:
    """The vector of per-objective LiPO losses L_LiPO = (L^1, ..., L^m), Eq. 11, per list.

    scores, ref_scores: (B, n); labels: (B, n, m) with labels[..., j] = z^j; mask: (B, n) bool.
    beta: float, or (m,) with objective j at its own temperature beta_j, or (B, m) (one row per list).
    label_norm: a string, or one string per objective (e.g. ("l1", "softmax")).
    Returns (B, m); column j equals lipo_loss(scores, ref_scores, labels[..., j], beta_j, mask, label_norm[j]).
    """
    _check_same_shape("scores", scores, "ref_scores", ref_scores)
    if labels.dim() != 3 or labels.shape[:2] != scores.shape:
        raise ValueError(f"labels must have shape {tuple(scores.shape)} + (m,), got {tuple(labels.shape)}")
    B, n, m = labels.shape
    beta = _check_positive(beta, scores, "beta")
    if beta.dim() == 0:
        beta = beta.expand(m)
    if beta.shape not in ((m,), (B, m)):
        raise ValueError(f"beta must be a float, ({m},) or ({B}, {m}), got shape {tuple(beta.shape)}")
    norms = _per_objective(label_norm, m)
    mask = _check_mask(mask, scores.shape, scores.device)

    # all objectives at once: move the objective axis next to the batch axis -> (B, m, n)
    z = labels.transpose(1, 2)
    mask_m = mask.unsqueeze(1).expand(B, m, n)
    zhat = torch.empty_like(z)
    for norm in set(norms):  # at most two passes (one per normalisation), never a loop over lists
        cols = [j for j in range(m) if norms[j] == norm]
        zhat[:, cols] = normalize_labels(z[:, cols], mask_m[:, cols], norm)[0]
    logits = beta.unsqueeze(-1) * (scores - ref_scores).unsqueeze(1)  # (B, m, n)
    logp = _masked_log_softmax(logits, mask_m)  # (B, m, n)
    return -(zhat * logp).sum(-1)  # (B, m)


def has_preference(labels: torch.Tensor, mask: Optional[torch.Tensor] = None,
                   label_norm: Union[str, Sequence[str]] = "l1") -> torch.Tensor:
    """Which lists state a preference for each objective: (B, m) bool for labels (B, n, m).

    Use it with `mean_over_lists` so that lists without a preference (SPEC 2.1) are not counted.
    """
    B, n, m = labels.shape
    norms = _per_objective(label_norm, m)
    return torch.stack([normalize_labels(labels[..., j], mask, norms[j])[1] for j in range(m)], -1)


def mean_over_lists(losses: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-objective mean over the lists that carry a preference: (B, m), (B, m) bool -> (m,).

    An objective with no valid list in the batch gets 0 (no signal, no gradient).
    """
    _check_same_shape("losses", losses, "valid", valid)
    valid = valid.to(losses.dtype)
    return (losses * valid).sum(0) / valid.sum(0).clamp_min(1.0)


# ----------------------------------------------------------------------------------------------------
# combining objectives: linear scalarisation and the cosine penalty
# ----------------------------------------------------------------------------------------------------
def scalarize(losses: torch.Tensor, w) -> torch.Tensor:
    """Linear scalarisation L_w = w . L_LiPO (Sec. 3, "Linear Scalarization").

    losses: (m,) or (B, m); w: (m,) on the simplex, or (B, m) (one weight per list, for the per-list
    sampling variant). Returns () or (B,).
    """
    w = _check_simplex(w, losses, losses.shape[-1], rows=losses.shape[0] if losses.dim() == 2 else None)
    return (losses * w).sum(-1)


def cosine_penalty(losses: torch.Tensor, w, eps: float = 1e-12) -> torch.Tensor:
    """Cosine penalty G_w of App. A.2, Eq. 18: G_w = (w . L) / (||w|| ||L||) = cos(w, L).

    Sign convention, from Eq. 18 as printed: -G_w = cos<w, -L> = -(w . L) / (||w|| ||L||), so
    G_w = +cos(w, L), and the penalised loss of Eq. 19 / Alg. 3 is  L_w + lambda * G_w  (minimised).
    In words: minimising G_w maximises the cosine between w and the performance vector -L, so the
    penalty lowers the loss most where the weight is largest (a test checks the gradient's direction).
    COSMOS (Ruchte & Grabocka 2021), which the paper cites, subtracts lambda * cos(w, L) instead, i.e.
    aligns L itself with w; we follow the paper's printed math.
    losses: (m,) or (B, m); w: (m,) or (B, m) on the simplex. Returns () or (B,).
    """
    w = _check_simplex(w, losses, losses.shape[-1], rows=losses.shape[0] if losses.dim() == 2 else None)
    return (losses * w).sum(-1) / (w.norm(dim=-1) * losses.norm(dim=-1)).clamp_min(eps)


# ----------------------------------------------------------------------------------------------------
# MO-DPO baseline (App. A.1)
# ----------------------------------------------------------------------------------------------------
def modpo_loss(scores: torch.Tensor, ref_scores: torch.Tensor, unit_scores: torch.Tensor, labels: torch.Tensor,
               w, objective: int, beta: Union[float, torch.Tensor], mask: Optional[torch.Tensor] = None,
               label_norm: str = "l1", min_weight: float = 0.05) -> torch.Tensor:
    """MO-DPO loss (Zhou et al. 2023) in listwise form, App. A.1, Eq. 17, for the objective i = `objective`:

        r_i = (1 / w_i) * ( s_theta - s0 - sum_{i' != i} w_i' * (s_{theta, e_i'} - s0) )
        L   = - sum_items zhat^i * log softmax( beta_i * r_i )

    scores, ref_scores: (B, n); unit_scores: (B, n, m), column i' the scores of the model trained at the unit
    weight e_i' (column i itself is ignored); labels: (B, n) labels z^i of objective i; w: (m,) on the simplex.
    Guard: 1/w_i blows up as w_i -> 0, the instability the paper reports; we refuse w_i < min_weight. Pick
    the objective with the largest weight (`w.argmax()`, so w_i >= 1/m) as the trainer does. Returns (B,).
    """
    if unit_scores.dim() != 3 or unit_scores.shape[:2] != scores.shape:
        raise ValueError(f"unit_scores must have shape {tuple(scores.shape)} + (m,), got {tuple(unit_scores.shape)}")
    m = unit_scores.shape[-1]
    w = _check_simplex(w, scores, m)
    if not 0 <= objective < m:
        raise ValueError(f"objective must be an index in [0, {m}), got {objective}")
    if w[objective] < min_weight:
        raise ValueError(f"MO-DPO needs w[objective] >= {min_weight} (1/w_i diverges), got w = {w.tolist()}; "
                         f"use objective = w.argmax()")
    others = w.clone()
    others[objective] = 0.0
    margin = ((unit_scores - ref_scores.unsqueeze(-1)) * others).sum(-1)  # (B, n)
    reward = (scores - ref_scores - margin) / w[objective]  # (B, n)
    return lipo_loss(reward, torch.zeros_like(reward), labels, beta, mask, label_norm)


# ----------------------------------------------------------------------------------------------------
# temperature: post-training rescaling (W-COS) and the temperature-conditioned composition (T-COS)
# ----------------------------------------------------------------------------------------------------
def rescale_temperature(scores: torch.Tensor, ref_scores: torch.Tensor, c: float) -> torch.Tensor:
    """Linear transformation property, Prop. 3.1, Eq. 13-14: the model for temperature c * beta is

        s_{theta, c beta} = (1 - 1/c) * s0 + (1/c) * s_{theta, beta}.

    No retraining: c > 1 moves the model towards the base model s0 (main objective), c < 1 away from it.
    scores, ref_scores: same shape. Returns that shape.
    """
    _check_same_shape("scores", scores, "ref_scores", ref_scores)
    c = float(_check_positive(c, scores, "c"))
    return (1.0 - 1.0 / c) * ref_scores + scores / c


def normalize_temperature(beta: torch.Tensor) -> torch.Tensor:
    """beta_bar = beta / ||beta||_1 (Sec. 3.3): the network input of a Temperature-COS model.

    beta: (m,) or (B, m), entries > 0. Returns the same shape, rows on the simplex.
    """
    beta = torch.as_tensor(beta, dtype=torch.get_default_dtype()) if not torch.is_tensor(beta) else beta
    beta = _check_positive(beta, beta, "beta")
    if beta.dim() not in (1, 2):
        raise ValueError(f"beta must be (m,) or (B, m), got shape {tuple(beta.shape)}")
    return beta / beta.sum(-1, keepdim=True)


def compose_temperature(net_scores: torch.Tensor, ref_scores: torch.Tensor, beta) -> torch.Tensor:
    """Temperature-COS output, Eq. 15:  s = (1 - 1/||beta||_1) * s0 + (1/||beta||_1) * net(y, w, beta_bar).

    net_scores, ref_scores: (B, n); beta: (m,) (one temperature vector for the batch) or (B, m) (one per list).
    Identity used in the tests: beta_j * (s - s0) = beta_bar_j * (net - s0).
    """
    _check_same_shape("net_scores", net_scores, "ref_scores", ref_scores)
    beta = _check_positive(beta, net_scores, "beta")
    norm1 = beta.sum(-1)  # () or (B,)
    if norm1.dim() == 1:
        if norm1.shape[0] != net_scores.shape[0]:
            raise ValueError(f"beta must be (m,) or ({net_scores.shape[0]}, m), got {tuple(beta.shape)}")
        norm1 = norm1.unsqueeze(-1)  # (B, 1)
    elif beta.dim() != 1:
        raise ValueError(f"beta must be (m,) or (B, m), got shape {tuple(beta.shape)}")
    return (1.0 - 1.0 / norm1) * ref_scores + net_scores / norm1


# ----------------------------------------------------------------------------------------------------
# sampling w ~ Dir(alpha)
# ----------------------------------------------------------------------------------------------------
def sample_weights(alpha, num: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Draw `num` weight vectors w ~ Dir(alpha) (Alg. 1-4, line 2). Returns (num, m) float32 rows on the simplex.

    alpha: length-m sequence or tensor of concentrations > 0 (paper: robust for 0.2-1.0, App. A.6.1).
    generator: an optional torch.Generator, for reproducible draws (torch.distributions.Dirichlet takes none).
    Method: w = normalise(g), g_j ~ Gamma(alpha_j, 1), with Gamma drawn by Marsaglia-Tsang (2000) and, for
    alpha < 1, the boost Gamma(a) = Gamma(a + 1) * U^(1/a). Working with log g keeps tiny alphas (where
    U^(1/a) underflows to 0) exact: w = softmax(log g).
    """
    alpha = torch.as_tensor(alpha, dtype=torch.float64)
    if alpha.dim() != 1 or alpha.numel() < 1 or not torch.isfinite(alpha).all() or (alpha <= 0).any():
        raise ValueError(f"alpha must be a non-empty 1-D sequence of finite values > 0, got {alpha.tolist()}")
    if int(num) != num or num < 1:
        raise ValueError(f"num must be a positive integer, got {num}")
    a = alpha.expand(int(num), -1)  # (num, m)
    log_g = _log_standard_gamma(a + (a < 1).double(), generator)
    log_u = torch.log(torch.rand(a.shape, dtype=torch.float64, generator=generator).clamp_min(1e-300))
    log_g = log_g + torch.where(a < 1, log_u / a, 0.0)  # boost for alpha < 1
    return torch.softmax(log_g, -1).float()


def _log_standard_gamma(a: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    """log of Gamma(a, 1) draws for a >= 1, Marsaglia & Tsang (2000), vectorised rejection sampling."""
    d = a - 1.0 / 3.0
    c = 1.0 / torch.sqrt(9.0 * d)
    out = torch.empty_like(a)
    todo = torch.ones_like(a, dtype=torch.bool)
    while todo.any():  # each round accepts > 95% of the remaining draws
        x = torch.randn(a.shape, dtype=a.dtype, generator=generator)
        u = torch.rand(a.shape, dtype=a.dtype, generator=generator)
        v = (1.0 + c * x) ** 3
        ok = (v > 0) & (torch.log(u) < 0.5 * x**2 + d - d * v + d * torch.log(v.clamp_min(1e-300)))
        new = todo & ok
        out[new] = (torch.log(d) + torch.log(v.clamp_min(1e-300)))[new]
        todo &= ~ok
    return out
