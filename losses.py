"""The COS-DPO losses and transforms as small pure tensor functions (paper Sec. 2-3, App. A.1-A.2).

Each function needs only torch and its arguments (sample_weights: numpy), so it can be copied alone.
Losses return one value per group (per list / per preference pair); the caller reduces.
"scores" are s_theta(y|x) of the model being trained, "ref_scores" s0(y|x) of the frozen base model: for
an LLM both are sequence log-probs log p(y|x), for a ranker its outputs. The same functions serve both.
Shapes: B groups (lists / pairs), n items per group (padded; mask True = real item), m objectives.
The functions trust their caller: the command line and the file readers validate.
"""

import numpy as np
import torch
import torch.nn.functional as F


# DPO and listwise DPO (LiPO) ---------------------------------------------------------------------------
def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    """Pairwise DPO loss, Eq. 5: -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))).

    The four log-prob inputs are (B,); beta > 0 a float or (B,). Returns (B,).
    Equals `lipo_loss` with n = 2, labels (1, 0) and label_norm="l1".
    """
    margin = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    return -F.logsigmoid(beta * margin)


def normalize_labels(labels, mask=None, label_norm="l1"):
    """Label normalisation z -> zhat over the real items of each list (Sec. 2.2, Eq. 7-8).

    labels: (..., n); mask: (..., n) bool or None (all real), broadcastable to labels.
      "l1"      zhat = z / sum(z)   sparse labels (clicks, binary preferences); labels >= 0 (data.transform_aux checks).
      "softmax" zhat = softmax(z)   dense labels.
    Returns zhat (..., n), exactly 0 at padding, and has_pref (...) bool: False for a list that states no
    preference (all-zero labels under "l1", or fewer than two real items: nothing to order, our choice).
    Such a list gets zhat = 0, hence zero loss and gradient; `mean_over_lists` leaves it out.
    """
    if mask is None:
        mask = torch.ones_like(labels, dtype=torch.bool)
    has_pref = mask.sum(-1) >= 2
    if label_norm == "l1":
        z = labels.masked_fill(~mask, 0.0)
        total = z.sum(-1, keepdim=True)
        has_pref = has_pref & (total.squeeze(-1) > 0)
        zhat = z / total.clamp_min(torch.finfo(z.dtype).tiny)
    else:  # "softmax"
        zhat = torch.softmax(_fill_padding(labels, mask), -1)
    return zhat * has_pref.unsqueeze(-1), has_pref.expand(labels.shape[:-1])


def _fill_padding(logits, mask):
    """Padding -> the lowest finite value: probability exp(min - max) = 0 exactly, no nan for an
    all-padding list (as -inf would give), and masked_fill passes no gradient to padded items."""
    return logits.masked_fill(~mask, torch.finfo(logits.dtype).min)


def _listwise_cross_entropy(zhat, logits, mask):
    """- sum_i zhat_i log softmax_i(logits) over the real items; zhat = 0 at padding, so the finite log p there
    never counts."""
    return -(zhat * torch.log_softmax(_fill_padding(logits, mask), -1)).sum(-1)


def lipo_loss(scores, ref_scores, labels, beta, mask=None, label_norm="l1"):
    """Listwise DPO (LiPO) loss for one objective, Eq. 8, per list:

        L = - sum_i zhat_i * log softmax_i( beta * (s_theta(y_i) - s0(y_i)) )    over real items i.

    scores, ref_scores, labels: (B, n) (any leading shape works); mask: (B, n) bool or None;
    beta > 0: float or (B,). Returns (B,); 0 for a list without a preference (see `normalize_labels`).
    With n = 2, labels (1, 0) and "l1" it is the pairwise DPO loss of Eq. 5 (`dpo_loss`; a test shows it).
    """
    if mask is None:
        mask = torch.ones_like(scores, dtype=torch.bool)
    beta = torch.as_tensor(beta, dtype=scores.dtype, device=scores.device).unsqueeze(-1)  # (1,) or (B, 1)
    zhat, _ = normalize_labels(labels, mask, label_norm)
    return _listwise_cross_entropy(zhat, beta * (scores - ref_scores), mask)


def listnet_loss(scores, labels, mask=None, label_norm="softmax"):
    """ListNet loss, Eq. 7: Eq. 8 with s0 = 0 and beta = 1. Trains the base ranker on the main label.

    scores, labels: (B, n); mask: (B, n) bool. Returns (B,). The "softmax" default is allRank's
    convention for graded relevance (the paper leaves it open).
    """
    return lipo_loss(scores, torch.zeros_like(scores), labels, 1.0, mask, label_norm)


def _by_norm(label_norm, m):
    """{label_norm: [objective indices]}: a string for all m objectives or one string per objective."""
    norms = [label_norm] * m if isinstance(label_norm, str) else list(label_norm)
    return {norm: [j for j in range(m) if norms[j] == norm] for norm in norms}


def lipo_losses(scores, ref_scores, labels, beta, mask=None, label_norm="l1", return_valid=False):
    """The vector of per-objective LiPO losses L_LiPO = (L^1, ..., L^m), Eq. 11, per list.

    scores, ref_scores: (B, n); labels: (B, n, m), labels[..., j] = z^j; mask: (B, n) bool or None.
    beta: float, (m,) (objective j at its own beta_j) or (B, m) (one row per list).
    label_norm: a string, or one per objective (e.g. ("l1", "softmax")).
    Returns (B, m); column j = lipo_loss(scores, ref_scores, labels[..., j], beta_j, mask, label_norm[j]).
    return_valid=True: also `has_preference`'s (B, m) mask, from the same label normalisation.
    """
    B, n, m = labels.shape
    beta = torch.as_tensor(beta, dtype=scores.dtype, device=scores.device).expand(B, m)
    z = labels.movedim(-1, 1)  # (B, m, n): all objectives of a list in one log-softmax, no loop over lists
    mask = torch.ones_like(scores, dtype=torch.bool) if mask is None else mask
    margin = (scores - ref_scores).unsqueeze(1)  # (B, 1, n)
    out = scores.new_empty(B, m)
    valid = torch.empty(B, m, dtype=torch.bool, device=scores.device)
    for norm, js in _by_norm(label_norm, m).items():  # one pass per normalisation (at most two)
        zhat, valid[:, js] = normalize_labels(z[:, js], mask.unsqueeze(1), norm)
        out[:, js] = _listwise_cross_entropy(zhat, beta[:, js, None] * margin, mask.unsqueeze(1))
    return (out, valid) if return_valid else out


def has_preference(labels, mask=None, label_norm="l1"):
    """Which lists state a preference for each objective: labels (B, n, m) -> (B, m) bool.

    Use it with `mean_over_lists` so that lists without a preference are not counted.
    """
    B, n, m = labels.shape
    z, mask = labels.movedim(-1, 1), None if mask is None else mask.unsqueeze(1)  # (B, m, n), (B, 1, n)
    valid = torch.empty(B, m, dtype=torch.bool, device=labels.device)
    for norm, js in _by_norm(label_norm, m).items():
        valid[:, js] = normalize_labels(z[:, js], mask, norm)[1]
    return valid


def mean_over_lists(losses, valid):
    """Per-objective mean over the lists that carry a preference: (B, m), (B, m) bool -> (m,).

    An objective with no valid list in the batch gets 0 (no signal, no gradient).
    """
    valid = valid.to(losses.dtype)
    return (losses * valid).sum(0) / valid.sum(0).clamp_min(1.0)


# combining objectives: linear scalarisation and the cosine penalty -------------------------------------
def scalarize(losses, w):
    """Linear scalarisation L_w = w . L_LiPO (Sec. 3). losses: (m,) or (B, m); w: (m,) or (B, m) on the
    simplex (one row per list for the per-list sampling variant). Returns () or (B,)."""
    return (losses * w).sum(-1)


def cosine_penalty(losses, w, eps=1e-12):
    """G_w = cos(w, L) = (w . L) / (||w|| ||L||), App. A.2, Eq. 18. losses, w: (m,) or (B, m). Returns () or (B,).

    Training minimises L_w - lambda * cos(w, L) for lambda > 0: that brings L along the ray of w, the
    stated intent of App. A.2 ("confines the loss vector L to converging along the direction of w") and
    what COSMOS (Ruchte & Grabocka 2021), the method it cites, does. Eq. 18 as printed adds the term
    (-G_w = cos<w, -L>, minimise L_w + lambda * G_w), which pushes L away from w: a negative lambda gives
    the printed sign. A test pins the direction.
    """
    return (losses * w).sum(-1) / (w.norm(dim=-1) * losses.norm(dim=-1)).clamp_min(eps)


# MO-DPO baseline (App. A.1) ----------------------------------------------------------------------------
def modpo_loss(
    scores, ref_scores, unit_scores, labels, w, objective, beta, mask=None, label_norm="l1", min_weight=0.05
):
    """MO-DPO loss (Zhou et al. 2023) in listwise form, App. A.1, Eq. 17, for objective i = `objective`:

        r_i = (1 / w_i) * ( s_theta - s0 - sum_{i' != i} w_i' * (s_{theta, e_i'} - s0) )
        L   = - sum_items zhat^i * log softmax( beta_i * r_i )

    scores, ref_scores: (B, n); unit_scores: (B, n, m), column i' the scores of the model trained at the
    unit weight e_i' (column i is ignored); labels: (B, n) = z^i; w: (m,) on the simplex. Returns (B,).
    1/w_i blows up as w_i -> 0 (the instability the paper reports): w_i < min_weight is refused; the
    trainer uses objective = w.argmax(), so w_i >= 1/m.
    """
    if w[objective] < min_weight:
        raise ValueError(
            f"MO-DPO needs w[objective] >= {min_weight} (1/w_i diverges), got w = {w.tolist()}; use "
            f"objective = w.argmax()"
        )
    others = w.clone()
    others[objective] = 0.0
    margin = ((unit_scores - ref_scores.unsqueeze(-1)) * others).sum(-1)  # (B, n)
    reward = (scores - ref_scores - margin) / w[objective]  # (B, n)
    return lipo_loss(reward, torch.zeros_like(reward), labels, beta, mask, label_norm)


# temperature: post-training rescaling (W-COS) and the temperature-conditioned composition (T-COS) ------
def rescale_temperature(scores, ref_scores, c):
    """Linear transformation property, Prop. 3.1, Eq. 13-14: the model for temperature c * beta is

        s_{theta, c beta} = (1 - 1/c) * s0 + (1/c) * s_{theta, beta}.

    No retraining: c > 1 moves the model towards the base model s0 (main objective), c < 1 away from it.
    scores, ref_scores: same shape; c > 0. Returns that shape.
    """
    return (1.0 - 1.0 / c) * ref_scores + scores / c


def normalize_temperature(beta):
    """beta_bar = beta / ||beta||_1 (Sec. 3.3), the network input of a Temperature-COS model.

    beta: (m,) or (B, m), entries > 0. Returns the same shape, rows on the simplex.
    """
    return beta / beta.sum(-1, keepdim=True)


def compose_temperature(net_scores, ref_scores, beta):
    """Temperature-COS output, Eq. 15:  s = (1 - 1/||beta||_1) * s0 + (1/||beta||_1) * net(y, w, beta_bar).

    net_scores, ref_scores: (B, n); beta > 0: (m,) for the batch or (B, m) one row per list.
    Identity used in the tests: beta_j * (s - s0) = beta_bar_j * (net - s0).
    """
    norm1 = beta.sum(-1, keepdim=True)  # (1,) or (B, 1)
    return (1.0 - 1.0 / norm1) * ref_scores + net_scores / norm1


# sampling w ~ Dir(alpha) -------------------------------------------------------------------------------
def sample_weights(alpha, num, generator=None, vertex_prob=0.0):
    """Draw `num` weight vectors w ~ Dir(alpha) (Alg. 1-4, line 2). Returns (num, m) float32 rows on the simplex.

    alpha: length-m concentrations > 0 (paper: robust for 0.2-1.0, App. A.6.1). generator: a
    numpy.random.Generator (continued in place; to resume, save and restore rng.bit_generator.state),
    an int seed, or None (fresh entropy). vertex_prob (a variant, paper 0): with this probability
    every row is replaced by one unit vector e_j, j uniform, so that more steps train the front's ends.
    """
    rng = np.random.default_rng(generator)  # returns a Generator unchanged
    w = torch.from_numpy(rng.dirichlet(np.asarray(alpha, dtype=np.float64), size=num)).float()
    if vertex_prob and rng.random() < vertex_prob:
        w = torch.eye(len(alpha))[[rng.integers(len(alpha))] * num]
    return w
