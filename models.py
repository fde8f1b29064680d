"""The networks of COS-DPO (paper Sec. 4): a weight-conditioned listwise ranker and Hyper Prompt Tuning.

    Ranker          Sec. 4.1: a transformer over the documents of one list; the COS models also see w
                    (and T-COS beta_bar = beta / ||beta||_1, Sec. 3.3) concatenated to every document.
    steered_scores  post-training control of a trained ranker: any w, Eq. 14 (c) or Eq. 15 (beta).
    load_checkpoint, TrainedRanker   a checkpoint loaded safely; a model.pt rebuilt from the file alone.
    HyperPrompt & co.  Sec. 4.2, Fig. 4: further below (LLM alignment).

The models map inputs to scores (or log-probs); `losses.py` maps scores to losses (and holds Eq. 14-15).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass
from typing import Iterator, Optional, Sequence

import torch
import torch.nn as nn

from losses import compose_temperature, normalize_temperature, rescale_temperature

CHECKPOINT_VERSION = 2  # train_ltr.py's base.pt / model.pt (2: plain values only, numpy Generator state)


@dataclass
class RankerConfig:
    """Shape of a Ranker; saved in every checkpoint so that the model can be rebuilt from the file alone."""
    num_features: int = 131       # MSLR-WEB10K: features 1..131 are the inputs (App. A.4)
    hidden: int = 64              # paper: 128 for the base model, 64 for the conditioned model
    layers: int = 2               # paper: 2 (depth 1-5 studied in App. A.6.2; T-COS uses 5, App. A.8)
    heads: int = 4                # hidden must be a multiple of heads
    ff_mult: int = 2              # feed-forward width = ff_mult * hidden (not given in the paper)
    dropout: float = 0.0
    num_objectives: int = 0       # m: length of w fed to the network (0 = unconditioned, e.g. the base model)
    temperature_input: bool = False  # Temperature-COS: beta_bar (length m) is fed to the network too
    parametrization: str = "scratch"  # "scratch": s = net(y, w); "augment": s = s0(y) + net(y, w) (App. A.6.3)

    @property
    def input_dim(self) -> int:  # features plus the conditioning inputs concatenated to every document (Sec. 4.1)
        return self.num_features + self.num_objectives * (2 if self.temperature_input else 1)

    def to_dict(self) -> dict:
        return asdict(self)


class Ranker(nn.Module):
    """Listwise transformer ranker: features (B, n, d) -> scores (B, n). Documents of one list attend to each
    other (padding masked out), so a score depends on its list, as in allRank's context-aware rankers."""

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
        """Scores s_theta(y, w | x) (B, n), 0 at padding. features: (B, n, num_features); mask: (B, n) bool,
        True = real document; w, beta_bar: (m,) or (B, m), iff the config conditions on them; ref_scores: (B, n)
        frozen base scores s0, iff parametrization == "augment"."""
        B, n, _ = features.shape
        # the same conditioning vectors are concatenated to every document of the list (Sec. 4.1)
        cond = [v.to(features.dtype).expand(B, -1)[:, None, :].expand(B, n, -1) for v in (w, beta_bar) if v is not None]
        x = torch.cat([features, *cond], -1)  # (B, n, input_dim)
        assert x.shape[-1] == self.config.input_dim, f"got {x.shape[-1]} input columns for {self.config}"
        x = self.encoder(self.input(x), src_key_padding_mask=~mask)  # (B, n, hidden); True in the key mask = ignore
        scores = self.head(self.norm(x)).squeeze(-1)  # (B, n)
        if self.config.parametrization == "augment":
            scores = ref_scores + scores  # s = s0 + delta_s_theta(y, w), s0 frozen (App. A.6.3)
        return scores.masked_fill(~mask, 0.0)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (Table 1 "# Params.")."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def interpolate_states(states: Sequence[dict], w: Sequence[float]) -> dict:
    """DPO Soup (App. A.1): theta_w = sum_j w_j theta_j, parameter by parameter; states: m dicts, same keys.
    (LoRA's A and B are interpolated separately: the soup's B A is not the average of the updates.)"""
    return {k: sum(float(wj) * s[k].float() for wj, s in zip(w, states)) for k in states[0]}


def steered_scores(model: Ranker, features: torch.Tensor, mask: torch.Tensor, ref_scores: torch.Tensor, w=None,
                   c: Optional[float] = None, beta=None) -> torch.Tensor:
    """Scores (B, n) of a trained ranker at weight w (m,), ref_scores (B, n) = s0. W-COS and the baselines:
    Eq. 14 at temperature scale c (None = as trained); T-COS: beta_bar in, output composed by Eq. 15 at c * beta."""
    cfg, device = model.config, features.device
    w = torch.as_tensor(w, dtype=torch.float32, device=device) if cfg.num_objectives else None
    if cfg.temperature_input:
        beta = torch.as_tensor(beta, dtype=torch.float32, device=device) * (1.0 if c is None else c)
        net = model(features, mask, w=w, beta_bar=normalize_temperature(beta), ref_scores=ref_scores)
        return compose_temperature(net, ref_scores, beta)
    scores = model(features, mask, w=w, ref_scores=ref_scores)
    return scores if c is None else rescale_temperature(scores, ref_scores, c)


def ranker_from(entry: dict, device: str = "cpu") -> Ranker:
    """Rebuild a Ranker from a checkpoint entry {"model_config": dict, "model_state": state dict}, eval mode."""
    model = Ranker(RankerConfig(**entry["model_config"]))
    model.load_state_dict(entry["model_state"])
    return model.to(device).eval()


def resolve_device(name: str) -> str:
    """"auto" -> "cuda" when torch sees a GPU, else "cpu"; "cuda" without a GPU is refused."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name} asked for, but torch sees no CUDA device")
    return name


def load_checkpoint(path: str, kind: str) -> dict:
    """A torch.save dict whose "kind" is `kind`, loaded with weights_only=True (tensors and plain values only);
    a missing, truncated or foreign file gives one ValueError naming the file and what was expected."""
    expected = f"expected a {kind!r} checkpoint (a torch.save dict)"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, IsADirectoryError):
        raise ValueError(f"{path}: no such file; {expected}") from None
    except Exception as err:  # truncated, not a torch file, or pickled objects that could run code
        unsafe = "Weights only" in str(err)
        what = "holds more than tensors and plain values" if unsafe else "is truncated or not a torch.save file"
        raise ValueError(f"{path}: cannot be read, it {what} ({type(err).__name__}); {expected}") from None
    if not isinstance(ckpt, dict) or ckpt.get("kind") != kind:
        found = ckpt.get("kind") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path}: {expected}, found {found!r}")
    return ckpt


class TrainedRanker:
    """A train_ltr.py model.pt rebuilt from the checkpoint dict alone: base s0, the method's model(s), controls.
    W-COS and T-COS serve every w with one model, a Soup interpolates its unit models at any w, DPO-LS and
    MO-DPO have one model per evaluation weight (ckpt["weights"]). A batch: .features (B, n, d), .mask (B, n)."""

    def __init__(self, ckpt: dict, device: str = "cpu"):
        self.ckpt, self.device = ckpt, device
        self.method, self.objectives, self.weights = ckpt["method"], ckpt["objectives"], ckpt["weights"]
        cfg = ckpt["run_config"]
        self.beta, self.max_docs, self.label_transform = cfg["beta"], cfg["max_docs"], cfg["label_transform"]
        self.base = ranker_from(ckpt["base"], device)
        self.models = [ranker_from(job, device) for job in ckpt["jobs"]]

    @classmethod
    def load(cls, path: str, device: str = "cpu") -> "TrainedRanker":
        ckpt = load_checkpoint(path, "cosdpo-ltr")
        if ckpt["version"] != CHECKPOINT_VERSION:
            raise ValueError(f"{path}: written by an older train_ltr.py (format {ckpt['version']}); train it again")
        if not ckpt["complete"]:
            raise ValueError(f"{path} is from an unfinished run; finish it with --resume first")
        return cls(ckpt, device)

    def model_at(self, w) -> Ranker:
        """The ranker that serves weight w for this method."""
        if self.method in ("wcos", "tcos"):
            return self.models[0]
        if self.method == "soup":  # theta_w = sum_j w_j theta_j (Rame et al. 2024), no retraining
            soup = Ranker(self.models[0].config)
            soup.load_state_dict(interpolate_states([mdl.state_dict() for mdl in self.models], w))
            return soup.to(self.device).eval()
        for job, mdl in zip(self.ckpt["jobs"], self.models):  # DPO-LS, MO-DPO: the model trained at w
            if not job["name"].startswith("unit") and max(abs(a - b) for a, b in zip(job["fixed_w"], w)) <= 1e-6:
                return mdl
        raise ValueError(f"--method {self.method} has one model per evaluation weight; w={list(w)} is not one "
                         f"of them: {self.weights}")

    @torch.no_grad()
    def scores(self, batch, w, ref: Optional[torch.Tensor] = None, c: Optional[float] = None, beta=None):
        """(B, n) scores at weight w; ref: (B, n) base scores s0 (None: computed); c: Eq. 14; beta: T-COS, Eq. 15."""
        features, mask = batch.features.to(self.device), batch.mask.to(self.device)
        ref = self.base(features, mask) if ref is None else ref.to(self.device)
        return steered_scores(self.model_at(w), features, mask, ref, w, c, self.beta if beta is None else beta)


# ==== LLM: Hyper Prompt Tuning, LoRA and sequence log-probs (Sec. 4.2) ====
#
# Sec. 4.2, Fig. 4: the LLM is steered by w through Hyper Prompt Tuning (HPT), a prefix of k "virtual
# tokens" whose embedding depends on w, and fine-tuned with LoRA; the LM's own weights stay frozen.
#
#     HyperPromptConfig, HyperPrompt   w (m,) or (B, m) -> masked prefix (B, k, d)            Fig. 4
#     PrefixLM                         prefix + any Hugging Face causal LM -> logits at token positions
#     sequence_logps                   logits, labels, response mask -> log p(y|x) per sequence  (SPEC 1)
#     LoRAConfig, LoRA, apply_lora     low-rank adapters on nn.Linear and on GPT-2's Conv1D
#     lora_disabled                    context manager: the base (reference) LM, for log p0(y|x)
#     trainable_state, interpolate_states   the trained parameters only; DPO Soup's interpolation
#
# Why our own LoRA and not `peft` (the paper's choice): the user's package list is torch, numpy,
# transformers, matplotlib and pytest, and LoRA is twenty lines: y = W x + (alpha / r) * B A x with B = 0 at
# the start. The adapted model then starts exactly equal to the base model, and the reference model is
# the same network with the adapters switched off (no second copy of the LM in memory).
# Nothing below imports `transformers`: a PrefixLM takes an already built model, so the ranking path and
# the tests that do not touch an LLM never pay for the import.


@dataclass
class HyperPromptConfig:
    """Shape of a HyperPrompt; saved in the checkpoint. Paper (Sec. 4.2): k = 8 virtual tokens, rank r = 4."""
    embed_dim: int                 # d: the LM's input-embedding width (GPT-2 small: 768)
    num_objectives: int = 2        # m: length of w. 0 = plain prompt tuning (the baselines' prefix, no w)
    num_virtual_tokens: int = 8    # k
    rank: int = 4                  # r: rank of the mask A @ B
    hidden: int = 64               # width of the two MLPs (not given in the paper)

    def __post_init__(self):
        for name in ("embed_dim", "num_virtual_tokens", "rank", "hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"HyperPromptConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_objectives < 0:
            raise ValueError(f"HyperPromptConfig.num_objectives must be >= 0, got {self.num_objectives}")

    def to_dict(self) -> dict:
        return asdict(self)


class HyperPrompt(nn.Module):
    """Hyper Prompt Tuning (Sec. 4.2, Fig. 4): prefix(w) = (A(w) @ B(w)) * P, one (k, d) block per w.

    P (k, d) is a trainable prefix embedding; two small MLPs map w to A (k, r) and B (r, d); the rank-r
    mask A @ B multiplies P entrywise. With num_objectives = 0 there are no MLPs and the prefix is P itself:
    plain prompt tuning (Lester et al. 2021), which the paper adds to the baselines (App. A.1, Sec. 4.2).

    Initialisation (the paper gives none; our choice): P from `init_prefix` (train_llm.py passes the
    embeddings of the prompt template's first tokens, a text init as in Lester et al.), else N(0, 0.02^2).
    The last bias of each MLP is 1/sqrt(r), so with zero MLP weights A @ B would be exactly all ones; with the
    usual small random weights the mask starts near all ones, i.e. HPT starts near plain prompt tuning, and
    the MLP weights learn the w-dependence.
    """

    def __init__(self, config: HyperPromptConfig, init_prefix: Optional[torch.Tensor] = None):
        super().__init__()
        self.config = config
        k, d, r, m, h = (config.num_virtual_tokens, config.embed_dim, config.rank, config.num_objectives,
                         config.hidden)
        if init_prefix is None:
            init_prefix = 0.02 * torch.randn(k, d)
        if init_prefix.shape != (k, d):
            raise ValueError(f"init_prefix must have shape ({k}, {d}) = (num_virtual_tokens, embed_dim), "
                             f"got {tuple(init_prefix.shape)}")
        self.prefix = nn.Parameter(init_prefix.detach().clone().float())  # P (k, d)
        if m > 0:
            self.mlp_a = nn.Sequential(nn.Linear(m, h), nn.Tanh(), nn.Linear(h, k * r))  # w -> A (k, r)
            self.mlp_b = nn.Sequential(nn.Linear(m, h), nn.Tanh(), nn.Linear(h, r * d))  # w -> B (r, d)
            with torch.no_grad():
                for mlp in (self.mlp_a, self.mlp_b):
                    mlp[-1].bias.fill_(1.0 / math.sqrt(r))  # A @ B = 1 (all ones) when the weights are 0

    def mask(self, w: torch.Tensor) -> torch.Tensor:
        """The HPT mask A(w) @ B(w): w (m,) -> (k, d), or w (B, m) -> (B, k, d)."""
        cfg = self.config
        k, d, r, m = cfg.num_virtual_tokens, cfg.embed_dim, cfg.rank, cfg.num_objectives
        if m == 0:
            raise ValueError("this HyperPrompt is plain prompt tuning (num_objectives = 0): it has no mask")
        if w.dim() not in (1, 2) or w.shape[-1] != m:
            raise ValueError(f"w must have shape ({m},) or (B, {m}) to match the {m} objectives, got {tuple(w.shape)}")
        w = w.to(self.prefix.dtype)
        a = self.mlp_a(w).unflatten(-1, (k, r))  # (..., k, r)
        b = self.mlp_b(w).unflatten(-1, (r, d))  # (..., r, d)
        return a @ b  # (..., k, d)

    def forward(self, w: Optional[torch.Tensor] = None, batch_size: int = 1) -> torch.Tensor:
        """The prefix embeddings for a batch: (batch_size, k, d).

        w: (m,) one weight for the whole batch, or (batch_size, m) one per sequence; must be None for plain
        prompt tuning (num_objectives = 0).
        """
        m = self.config.num_objectives
        if m == 0:
            if w is not None:
                raise ValueError("this HyperPrompt is plain prompt tuning (num_objectives = 0): pass w=None")
            return self.prefix.expand(batch_size, -1, -1)  # (B, k, d)
        if w is None:
            raise ValueError(f"HyperPrompt needs w of shape ({m},) or ({batch_size}, {m})")
        if w.dim() == 2 and w.shape[0] != batch_size:
            raise ValueError(f"w has {w.shape[0]} rows but the batch has {batch_size} sequences")
        prefix = self.mask(w) * self.prefix  # (k, d) or (B, k, d): entrywise product, Fig. 4
        return prefix.expand(batch_size, -1, -1) if prefix.dim() == 2 else prefix


class PrefixLM(nn.Module):
    """A causal LM with a (hyper) prompt prepended to its input embeddings (Fig. 4).

    forward(input_ids, attention_mask, w) embeds the tokens with the LM's own embedding table, concatenates
    the prefix (B, k, d) in front, runs the LM on `inputs_embeds`, and returns the logits at the T token
    positions only: the outputs at the k prefix positions are discarded (Fig. 4 "Discard"), so every caller
    sees logits aligned with `input_ids`, exactly as without a prefix.

    Positions (position_ids = 0..k-1 for the prefix, then 0..T-1 for the tokens): the tokens keep exactly the
    positions they have without a prefix, so the policy and the reference p0 (no prefix) see the same
    positional encoding of every token and differ only by what the prefix and LoRA add. This follows Fig. 4,
    where the prefix joins the token embeddings AFTER their positional encoding. Standard prompt tuning (PEFT)
    instead numbers the k + T inputs 0..k+T-1, which shifts every token by k: harmless for a big pretrained
    GPT-2, but a small model trained only at positions 0.. (our default p0) then sees unfamiliar positions.
    The prefix itself does get the LM's positional encoding of positions 0..k-1 (GPT-2 adds its learned
    position embeddings to it, a fixed offset that the trainable P absorbs; rotary models such as Llama /
    SmolLM2 rotate it at 0..k-1). Departure from the letter of Fig. 4, where the prefix gets none: an LM's
    forward adds its encoding to every input and offers no switch to skip some.
    Padding: RIGHT padding only (real tokens first, padding last), which the data code produces and we check;
    causal attention then never lets a real token see a padded one, and the attention mask is extended with
    k ones for the prefix. Because the position ids restart at the first token, an LM run with
    attn_implementation="flash_attention_2" would read them as two packed sequences; use "sdpa" or "eager".

    The LM runs in eval mode: dropout off (as TRL's DPO default), so the policy and the reference are the
    same deterministic network apart from LoRA and the prefix.
    """

    def __init__(self, lm: nn.Module, prompt: Optional[HyperPrompt] = None):
        super().__init__()
        self.lm = lm.eval()
        self.prompt = prompt
        d = lm.get_input_embeddings().weight.shape[1]
        if prompt is not None and prompt.config.embed_dim != d:
            raise ValueError(f"prompt embed_dim {prompt.config.embed_dim} != the LM's embedding width {d}")

    def train(self, mode: bool = True):
        super().train(mode)
        self.lm.eval()  # dropout stays off in the frozen LM (see the class docstring)
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, w: Optional[torch.Tensor] = None,
                use_prefix: bool = True) -> torch.Tensor:
        """Logits (B, T, V) at the token positions. input_ids, attention_mask: (B, T), right-padded.

        w: (m,) or (B, m) for a HyperPrompt, None for plain prompt tuning. use_prefix=False runs the LM on
        the tokens alone (with LoRA as it stands: wrap in `lora_disabled` for the reference model p0).
        """
        if input_ids.shape != attention_mask.shape or input_ids.dim() != 2:
            raise ValueError(f"input_ids and attention_mask must both be (B, T), got {tuple(input_ids.shape)} "
                             f"and {tuple(attention_mask.shape)}")
        attention_mask = attention_mask.to(torch.long)
        if getattr(getattr(self.lm, "config", None), "_attn_implementation", None) == "flash_attention_2":
            raise ValueError('PrefixLM needs attn_implementation "sdpa" or "eager" (see the position note above)')
        if (attention_mask[:, 1:] > attention_mask[:, :-1]).any():
            raise ValueError("attention_mask must be right-padded (ones, then zeros): the prefix numbering "
                             "of positions assumes it (see PrefixLM)")
        embeds = self.lm.get_input_embeddings()(input_ids)  # (B, T, d)
        if not use_prefix or self.prompt is None:
            return self.lm(inputs_embeds=embeds, attention_mask=attention_mask).logits  # (B, T, V)
        B, T = input_ids.shape
        prefix = self.prompt(w, batch_size=B).to(embeds.dtype)  # (B, k, d)
        k = prefix.shape[1]
        embeds = torch.cat([prefix, embeds], 1)  # (B, k + T, d)
        mask = torch.cat([attention_mask.new_ones(B, k), attention_mask], 1)  # (B, k + T)
        positions = torch.cat([torch.arange(k), torch.arange(T)]).to(input_ids.device).expand(B, -1)  # (B, k + T)
        logits = self.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits  # (B, k+T, V)
        return logits[:, k:]  # (B, T, V): prefix outputs discarded


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Sequence log-probability log p(y|x) = sum over response tokens t of log p(y_t | x, y_<t) (SPEC 1).

    The DPO "score" of a response (Eq. 5 / Eq. 8 with s = log p). logits: (B, T, V), position t predicting
    token t + 1 (the usual one-token shift); labels: (B, T) token ids; response_mask: (B, T) bool, True at
    response tokens (prompt and padding False, so they never count). The first token has no prediction, so
    response_mask[:, 0] must be False (a prompt has at least one token). Returns (B,) in float32.
    """
    if logits.dim() != 3 or labels.shape != logits.shape[:2] or response_mask.shape != labels.shape:
        raise ValueError(f"need logits (B, T, V), labels (B, T) and response_mask (B, T); got "
                         f"{tuple(logits.shape)}, {tuple(labels.shape)}, {tuple(response_mask.shape)}")
    if response_mask[:, 0].any():
        raise ValueError("response_mask[:, 0] must be False: the first token has no prediction (empty prompt?)")
    logits = logits[:, :-1].float()  # (B, T-1, V): position t predicts token t + 1
    targets = labels[:, 1:]  # (B, T-1)
    mask = response_mask[:, 1:].to(torch.bool)  # (B, T-1)
    token_logps = logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T-1)
    return torch.where(mask, token_logps, 0.0).sum(-1)  # (B,); where, not *: nan/inf outside y cannot leak


@dataclass
class LoRAConfig:
    """LoRA settings (Hu et al. 2022); paper Sec. 4.2: alpha = 8, r = 4. Saved in the checkpoint.

    targets: module names (the last part of the dotted name) that get adapters. Default: the attention input
    projections, PEFT's default choice per architecture (GPT-2 "c_attn"; Llama / SmolLM2 "q_proj", "v_proj").
    """
    rank: int = 4
    alpha: float = 8.0
    targets: tuple = ("c_attn", "q_proj", "v_proj")

    def __post_init__(self):
        self.targets = tuple(self.targets)
        if self.rank < 1 or not self.alpha > 0 or not self.targets:
            raise ValueError(f"LoRAConfig needs rank >= 1, alpha > 0 and at least one target, got {self}")

    def to_dict(self) -> dict:
        return asdict(self)


class LoRA(nn.Module):
    """A frozen linear map plus a trainable low-rank update: y = base(x) + (alpha / r) * x A^T B^T.

    base: an nn.Linear (weight (out, in), y = x W^T + b) or a transformers GPT-2 `Conv1D` (weight stored
    TRANSPOSED as (in, out), y = x W + b); recognised by its class name so that this file needs no
    transformers import. A (r, in) is Kaiming-uniform and B (out, r) is zero (as PEFT): the adapted model
    starts exactly equal to the base model. `enabled = False` gives the base map back (see lora_disabled).
    """

    def __init__(self, base: nn.Module, rank: int = 4, alpha: float = 8.0):
        super().__init__()
        if isinstance(base, nn.Linear):
            in_features, out_features = base.in_features, base.out_features
        elif type(base).__name__ == "Conv1D" and base.weight.dim() == 2:
            in_features, out_features = base.weight.shape  # Conv1D: (in, out)
        else:
            raise ValueError(f"LoRA wraps nn.Linear or GPT-2's Conv1D, got {type(base).__name__}")
        self.base = base
        self.lora_A = nn.Parameter(torch.empty(rank, in_features))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))  # (out, r), zero: no change at the start
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's own init, as PEFT
        self.scaling = alpha / rank
        self.enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if not self.enabled:
            return y
        delta = (x.to(self.lora_A.dtype) @ self.lora_A.t()) @ self.lora_B.t()  # (..., out) through rank r
        return y + (self.scaling * delta).to(y.dtype)


def apply_lora(model: nn.Module, config: LoRAConfig) -> list[str]:
    """Freeze every weight of `model`, then replace each target module by a LoRA wrapper (in place).

    Returns the dotted names of the wrapped modules; ValueError when no module name matches config.targets.
    After this, the only trainable parameters of `model` are the LoRA matrices A and B.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = []
    for name, module in list(model.named_modules()):
        if name.rsplit(".", 1)[-1] in config.targets and not isinstance(module, LoRA):
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, name.rsplit(".", 1)[-1], LoRA(module, config.rank, config.alpha))
            wrapped.append(name)
    if not wrapped:
        leaves = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                         if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"})
        raise ValueError(f"LoRA targets {config.targets} match no module of {type(model).__name__}; "
                         f"its linear layers are named {leaves}")
    return wrapped


@contextlib.contextmanager
def lora_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """`with lora_disabled(lm): ...` runs the base LM (every LoRA wrapper off), e.g. for log p0(y|x)."""
    layers = [m for m in model.modules() if isinstance(m, LoRA)]
    before = [m.enabled for m in layers]
    for m in layers:
        m.enabled = False
    try:
        yield model
    finally:
        for m, e in zip(layers, before):
            m.enabled = e


def trainable_state(model: nn.Module) -> dict:
    """{name: tensor} of the trainable parameters only (prefix, HPT MLPs, LoRA): small, CPU copies."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
