"""The networks of COS-DPO (paper Sec. 4): a weight-conditioned listwise ranker and Hyper Prompt Tuning.

    RankerConfig, Ranker   Sec. 4.1 and App. A.6: a transformer encoder over the documents of one list
                           (self-attention across the list, padding mask), an input projection and a
                           per-document score head. The base model s0 (paper: 2 layers, width 128) has no
                           extra input; the Weight-COS model (paper: 2 layers, width 64) gets the weight
                           vector w concatenated to every document's features before the first layer, and
                           the Temperature-COS model also gets beta_bar = beta / ||beta||_1 (Sec. 3.3).
    HyperPrompt & co.      Sec. 4.2, Fig. 4: further below (LLM alignment).

The models only map inputs to scores (or log-probs); `losses.py` maps scores to losses. The
temperature composition of Eq. 15 is applied to the scores with `losses.compose_temperature`.
Everything here needs only torch (transformers is imported by the LLM code that needs it, lazily).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import torch
import torch.nn as nn

PARAMETRIZATIONS = ("scratch", "augment")


@dataclass
class RankerConfig:
    """Shape of a Ranker; saved in every checkpoint so that the model can be rebuilt from the file alone."""
    num_features: int = 131       # MSLR-WEB10K: features 1..131 are the inputs (App. A.4)
    hidden: int = 64              # paper: 128 for the base model, 64 for the conditioned model
    layers: int = 2               # paper: 2 (depth 1-5 studied in App. A.6.2; T-COS uses 5, App. A.8)
    heads: int = 4
    ff_mult: int = 2              # feed-forward width = ff_mult * hidden (not given in the paper)
    dropout: float = 0.0
    num_objectives: int = 0       # m: length of w fed to the network (0 = unconditioned, e.g. the base model)
    temperature_input: bool = False  # Temperature-COS: beta_bar (length m) is fed to the network too
    parametrization: str = "scratch"  # "scratch": s = net(y, w); "augment": s = s0(y) + net(y, w) (App. A.6.3)

    def __post_init__(self):
        if self.parametrization not in PARAMETRIZATIONS:
            raise ValueError(f"parametrization must be one of {PARAMETRIZATIONS}, got {self.parametrization!r}")
        if self.temperature_input and self.num_objectives < 1:
            raise ValueError("temperature_input needs num_objectives >= 1 (beta_bar has one entry per objective)")
        for name in ("num_features", "hidden", "layers", "heads", "ff_mult"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")

    @property
    def input_dim(self) -> int:
        """Features plus the conditioning inputs concatenated to every document (Sec. 4.1)."""
        return self.num_features + self.num_objectives * (2 if self.temperature_input else 1)

    def to_dict(self) -> dict:
        return asdict(self)


class Ranker(nn.Module):
    """Listwise transformer ranker: features (B, n, d) -> scores (B, n).

    Documents of one list attend to each other (padding masked out), so a document's score depends on its
    list, as in allRank's context-aware rankers.
    """

    def __init__(self, config: RankerConfig):
        super().__init__()
        self.config = config
        self.input = nn.Linear(config.input_dim, config.hidden)
        layer = nn.TransformerEncoderLayer(config.hidden, config.heads, config.ff_mult * config.hidden,
                                           config.dropout, batch_first=True, norm_first=True)
        # enable_nested_tensor=False: the nested-tensor fast path only applies at inference and warns with norm_first
        self.encoder = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.hidden)
        self.head = nn.Linear(config.hidden, 1)

    def forward(self, features: torch.Tensor, mask: torch.Tensor, w: Optional[torch.Tensor] = None,
                beta_bar: Optional[torch.Tensor] = None, ref_scores: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Scores s_theta(y, w | x) for every document; padded positions hold 0.

        features: (B, n, num_features); mask: (B, n) bool, True = real document.
        w: (m,) one weight for the batch, or (B, m) one per list (required iff num_objectives > 0).
        beta_bar: (m,) or (B, m) normalised temperature (required iff temperature_input).
        ref_scores: (B, n) frozen base scores s0 (required iff parametrization == "augment").
        """
        cfg = self.config
        B, n, d = features.shape
        if d != cfg.num_features or mask.shape != (B, n):
            raise ValueError(f"features must be (B, n, {cfg.num_features}) with mask (B, n); "
                             f"got {tuple(features.shape)} and {tuple(mask.shape)}")
        inputs = [features]
        for name, value, wanted in (("w", w, cfg.num_objectives > 0), ("beta_bar", beta_bar, cfg.temperature_input)):
            if not wanted:
                if value is not None:
                    raise ValueError(f"this ranker takes no {name} (config: {cfg})")
                continue
            if value is None or value.shape not in ((cfg.num_objectives,), (B, cfg.num_objectives)):
                raise ValueError(f"{name} must have shape ({cfg.num_objectives},) or ({B}, {cfg.num_objectives}), "
                                 f"got {None if value is None else tuple(value.shape)}")
            # the same conditioning vector is concatenated to every document of the list (Sec. 4.1)
            inputs.append(value.to(features.dtype).expand(B, cfg.num_objectives)[:, None, :].expand(B, n, -1))
        x = self.input(torch.cat(inputs, -1))  # (B, n, hidden)
        x = self.encoder(x, src_key_padding_mask=~mask)  # (B, n, hidden); True in the key mask = ignore
        scores = self.head(self.norm(x)).squeeze(-1)  # (B, n)
        if cfg.parametrization == "augment":
            if ref_scores is None or ref_scores.shape != (B, n):
                raise ValueError(f'parametrization="augment" needs ref_scores of shape ({B}, {n}) '
                                 f"(the frozen base model's scores), got "
                                 f"{None if ref_scores is None else tuple(ref_scores.shape)}")
            scores = ref_scores + scores  # s = s0 + delta_s_theta(y, w), s0 frozen (App. A.6.3)
        return scores.masked_fill(~mask, 0.0)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (Table 1 "# Params.")."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ==== LLM: Hyper Prompt Tuning, LoRA and sequence log-probs (Sec. 4.2) ====
