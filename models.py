"""The networks of COS-DPO (paper Sec. 4): a weight-conditioned listwise ranker and Hyper Prompt Tuning.

    Ranker          Sec. 4.1: a transformer over the documents of one list; the COS models also see w (and
                    T-COS beta_bar = beta / ||beta||_1, Sec. 3.3) concatenated to every document; --film adds FiLM.
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

    num_features: int = 131  # MSLR-WEB10K: features 1..131 are the inputs (App. A.4)
    hidden: int = 64  # paper: 128 for the base model, 64 for the conditioned model
    layers: int = 2  # paper: 2 (depth 1-5 studied in App. A.6.2; T-COS uses 5, App. A.8)
    heads: int = 4  # hidden must be a multiple of heads
    ff_mult: int = 2  # feed-forward width = ff_mult * hidden (not given in the paper)
    dropout: float = 0.0
    num_objectives: int = 0  # m: length of w fed to the network (0 = unconditioned, e.g. the base model)
    temperature_input: bool = False  # Temperature-COS: beta_bar (length m) is fed to the network too
    # "scratch": s = net(y, w); "augment": s = s0(y) + net(y, w) (App. A.6.3)
    parametrization: str = "scratch"
    film: bool = False  # a variant: also FiLM every layer on w (needs num_objectives > 0)

    @property
    def input_dim(self) -> int:
        """Features plus the conditioning inputs concatenated to every document (Sec. 4.1)."""
        return self.num_features + self.num_objectives * (2 if self.temperature_input else 1)

    def to_dict(self) -> dict:
        return asdict(self)


class Ranker(nn.Module):
    """Listwise transformer ranker: features (B, n, d) -> scores (B, n); documents of a list attend to each other
    (padding masked out). With config.film, h <- h * (1 + gamma_l(w)) + b_l(w) (FiLM, Perez et al. 2018) at L + 1
    sites: after the input projection, after encoder layers 1..L-1 and after the final LayerNorm."""

    def __init__(self, config: RankerConfig):
        super().__init__()
        self.config = config
        self.input = nn.Linear(config.input_dim, config.hidden)
        layer = nn.TransformerEncoderLayer(
            config.hidden,
            config.heads,
            config.ff_mult * config.hidden,
            config.dropout,
            batch_first=True,
            norm_first=True,
        )
        # enable_nested_tensor=False: the nested-tensor fast path only applies at inference and warns with norm_first
        self.encoder = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.hidden)
        self.head = nn.Linear(config.hidden, 1)
        if config.film:
            # (gamma_l, b_l) for l = 0..L from w; zero at init, so the network starts as the paper's
            self.film = nn.Linear(config.num_objectives, 2 * config.hidden * (config.layers + 1))
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)

    def forward(
        self,
        features: torch.Tensor,
        mask: torch.Tensor,
        w: Optional[torch.Tensor] = None,
        beta_bar: Optional[torch.Tensor] = None,
        ref_scores: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Scores s_theta(y, w | x) (B, n), 0 at padding. features (B, n, d); mask (B, n) bool, True = document;
        w, beta_bar (m,) or (B, m) iff the config conditions on them; ref_scores (B, n) = s0 iff "augment"."""
        B, n, _ = features.shape
        inputs = [features]
        for cond in (w, beta_bar):  # the same w (and beta_bar) beside every document of a list (Sec. 4.1)
            if cond is not None:
                inputs.append(cond.to(features.dtype).expand(B, -1)[:, None, :].expand(B, n, -1))
        x = torch.cat(inputs, -1)  # (B, n, input_dim)
        assert x.shape[-1] == self.config.input_dim, f"got {x.shape[-1]} input columns for {self.config}"
        film = self.film_modulations(w, B, x.dtype)
        h = self.input(x)  # (B, n, hidden)
        for layer, (gamma, b) in zip(self.encoder.layers, film):
            h = layer(h * (1 + gamma) + b, src_key_padding_mask=~mask)  # True in the padding mask = ignore
        gamma, b = film[-1]
        scores = self.head(self.norm(h) * (1 + gamma) + b).squeeze(-1)  # (B, n)
        if self.config.parametrization == "augment":
            scores = ref_scores + scores  # s = s0 + delta_s_theta(y, w), s0 frozen (App. A.6.3)
        return scores.masked_fill(~mask, 0.0)

    def film_modulations(self, w: Optional[torch.Tensor], batch_size: int, dtype: torch.dtype):
        """(gamma_l, b_l) for the L + 1 FiLM sites, each (B, 1, hidden); (0, 0), the identity, without film."""
        sites = self.config.layers + 1
        if not self.config.film:
            return [(0.0, 0.0)] * sites
        out = self.film(w.to(dtype).expand(batch_size, -1))  # (B, sites * 2 * hidden)
        return out.view(batch_size, sites, 2, 1, self.config.hidden).movedim(0, 2)  # (sites, 2, B, 1, hidden)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (Table 1 "# Params.")."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def interpolate_states(states: Sequence[dict], w: Sequence[float]) -> dict:
    """DPO Soup (App. A.1): theta_w = sum_j w_j theta_j, parameter by parameter; states: m dicts, same keys.
    (LoRA's A and B are interpolated separately: the soup's B A is not the average of the updates.)"""
    return {k: sum(float(wj) * s[k].float() for wj, s in zip(w, states)) for k in states[0]}


def steered_scores(
    model: Ranker,
    features: torch.Tensor,
    mask: torch.Tensor,
    ref_scores: torch.Tensor,
    w=None,
    c: Optional[float] = None,
    beta=None,
) -> torch.Tensor:
    """Scores (B, n) of a trained ranker at weight w (m,), ref_scores (B, n) = s0. W-COS and the baselines:
    Eq. 14 at temperature scale c (None = as trained); T-COS: beta_bar in, output composed by Eq. 15 at c * beta."""
    cfg = model.config
    device = features.device
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
    """--device: "auto" -> "cuda" when torch sees a GPU, else "cpu"; "cuda" without a GPU is refused."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name} asked for, but torch sees no CUDA device")
    return name


def load_checkpoint(path: str, kind: str) -> dict:
    """A torch.save dict of kind `kind`, loaded with weights_only=True; else one ValueError naming file and why."""
    expected = f"expected a {kind!r} checkpoint (a torch.save dict)"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, IsADirectoryError):
        raise ValueError(f"{path}: no such file; {expected}") from None
    except Exception as err:  # truncated, not a torch file, or pickled objects that could run code
        if "Weights only" in str(err):
            what = "holds more than tensors and plain values"
        else:
            what = "is truncated or not a torch.save file"
        raise ValueError(f"{path}: cannot be read, it {what} ({type(err).__name__}); {expected}") from None
    if not isinstance(ckpt, dict) or ckpt.get("kind") != kind:
        found = ckpt.get("kind") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path}: {expected}, found {found!r}")
    return ckpt


class TrainedRanker:
    """A train_ltr.py model.pt rebuilt from the dict alone: base s0, the method's model(s) (W-COS/T-COS: one; Soup:
    m units interpolated at w; DPO-LS/MO-DPO: one per ckpt["weights"]). A batch: .features (B, n, d), .mask (B, n)."""

    def __init__(self, ckpt: dict, device: str = "cpu"):
        self.ckpt = ckpt
        self.device = device
        self.method = ckpt["method"]
        self.objectives = ckpt["objectives"]
        self.weights = ckpt["weights"]
        self.beta = ckpt["run_config"]["beta"]
        self.max_docs = ckpt["run_config"]["max_docs"]
        self.label_transform = ckpt["run_config"]["label_transform"]
        self.base = ranker_from(ckpt["base"], device)
        self.models = [ranker_from(job, device) for job in ckpt["jobs"]]

    @classmethod
    def load(cls, path: str, device: str = "cpu") -> "TrainedRanker":
        ckpt = load_checkpoint(path, "cosdpo-ltr")
        if ckpt["version"] != CHECKPOINT_VERSION:
            raise ValueError(
                f"{path}: written by an older train_ltr.py (format {ckpt['version']}); train it again"
            )
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
            trained_at_w = max(abs(a - b) for a, b in zip(job["fixed_w"], w)) <= 1e-6
            if trained_at_w and not job["name"].startswith("unit"):
                return mdl
        raise ValueError(
            f"--method {self.method} has one model per evaluation weight; w={list(w)} is not one of them: "
            f"{self.weights}"
        )

    @torch.no_grad()
    def scores(self, batch, w, ref: Optional[torch.Tensor] = None, c: Optional[float] = None, beta=None):
        """(B, n) scores at weight w; ref: (B, n) base scores s0 (None: computed); c: Eq. 14; beta: T-COS, Eq. 15."""
        features = batch.features.to(self.device)
        mask = batch.mask.to(self.device)
        ref = self.base(features, mask) if ref is None else ref.to(self.device)
        beta = self.beta if beta is None else beta
        return steered_scores(self.model_at(w), features, mask, ref, w, c, beta)


# ==== LLM: Hyper Prompt Tuning, LoRA and sequence log-probs (Sec. 4.2, Fig. 4) ====
# The LLM is steered by w through a prefix of k "virtual tokens" whose embedding depends on w (HPT), and
# fine-tuned with LoRA; the LM's own weights stay frozen. Our own twenty-line LoRA rather than `peft` (the
# paper's choice, not a dependency here): with the adapters switched off, the same network is the reference
# model p0, so no second copy of the LM is kept. Nothing here imports transformers: PrefixLM takes a built LM.


@dataclass
class HyperPromptConfig:
    """Shape of a HyperPrompt, saved in the checkpoint. Paper (Sec. 4.2): k = 8, r = 4."""

    embed_dim: int  # d: the LM's input-embedding width (GPT-2 small: 768)
    num_objectives: int = 2  # m: length of w. 0 = plain prompt tuning (the baselines' prefix, no w)
    num_virtual_tokens: int = 8  # k
    rank: int = 4  # r: rank of the mask A @ B
    hidden: int = 64  # width of the two MLPs (not given in the paper)

    def to_dict(self) -> dict:
        return asdict(self)


class HyperPrompt(nn.Module):
    """Hyper Prompt Tuning (Fig. 4): prefix(w) = (A(w) @ B(w)) * P entrywise; P (k, d) trainable, two small MLPs
    map w to A (k, r) and B (r, d). num_objectives = 0: the prefix is P, plain prompt tuning (Lester et al.
    2021), the baselines' prefix (App. A.1). Init (the paper gives none): P = init_prefix (default
    N(0, 0.02^2)); the last MLP biases are 1/sqrt(r), so A @ B starts near all ones (near plain prompt tuning)."""

    def __init__(self, config: HyperPromptConfig, init_prefix: Optional[torch.Tensor] = None):
        super().__init__()
        self.config = config
        k = config.num_virtual_tokens
        d = config.embed_dim
        r = config.rank
        m = config.num_objectives
        h = config.hidden
        init = 0.02 * torch.randn(k, d) if init_prefix is None else init_prefix.detach().clone()
        self.prefix = nn.Parameter(init.float())  # P (k, d)
        if m > 0:
            self.mlp_a = nn.Sequential(nn.Linear(m, h), nn.Tanh(), nn.Linear(h, k * r))  # w -> A (k, r)
            self.mlp_b = nn.Sequential(nn.Linear(m, h), nn.Tanh(), nn.Linear(h, r * d))  # w -> B (r, d)
            with torch.no_grad():
                for mlp in (self.mlp_a, self.mlp_b):
                    mlp[-1].bias.fill_(1.0 / math.sqrt(r))  # A @ B = all ones when the MLP weights are 0

    def forward(self, w: Optional[torch.Tensor] = None, batch_size: int = 1) -> torch.Tensor:
        """Prefix embeddings (batch_size, k, d). w: (m,) for the whole batch or (batch_size, m); None if m = 0."""
        cfg = self.config
        if cfg.num_objectives == 0:
            return self.prefix.expand(batch_size, -1, -1)
        w = w.to(self.prefix.dtype)
        a = self.mlp_a(w).unflatten(-1, (cfg.num_virtual_tokens, cfg.rank))  # (..., k, r)
        b = self.mlp_b(w).unflatten(-1, (cfg.rank, cfg.embed_dim))  # (..., r, d)
        return ((a @ b) * self.prefix).expand(batch_size, -1, -1)  # (B, k, d): mask times P (Fig. 4)


class PrefixLM(nn.Module):
    """A causal LM with a (hyper) prompt in front of its token embeddings (Fig. 4); the k prefix outputs are
    discarded, so the logits align with input_ids. Positions as PEFT's prompt tuning (the paper builds on TRL
    and PEFT): prefix 0..k-1, tokens k..k+T-1; the reference (use_prefix=False) keeps 0..T-1. Right padding
    only (as tokenize_pairs makes it). The LM stays in eval mode (dropout off, TRL's DPO default); under
    activation checkpointing its checkpointed blocks alone are flagged as training, the switch transformers
    reads to recompute them."""

    def __init__(self, lm: nn.Module, prompt: Optional[HyperPrompt] = None):
        super().__init__()
        self.lm = lm.eval()
        self.prompt = prompt

    def train(self, mode: bool = True):
        super().train(mode)
        self.lm.eval()
        for module in self.lm.modules():
            if getattr(module, "gradient_checkpointing", False):
                module.training = mode
        return self

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        w: Optional[torch.Tensor] = None,
        use_prefix: bool = True,
        keep: int = 0,
        hidden: bool = False,
    ) -> torch.Tensor:
        """Logits (B, T, V) at the token positions, or (B, keep, V) at the last `keep` ones (transformers'
        logits_to_keep); hidden=True: the last hidden states (B, T, d) instead, which the output embedding
        (lm.get_output_embeddings()) maps to the logits. input_ids, attention_mask: (B, T), right-padded.
        w: (m,) or (B, m) for a HyperPrompt, None for plain prompt tuning. use_prefix=False runs the LM on the
        tokens alone, LoRA as it stands (wrap in `lora_disabled` for the reference model p0)."""
        B, T = input_ids.shape
        embeds = self.lm.get_input_embeddings()(input_ids)  # (B, T, d)
        mask = attention_mask.long()
        kwargs = {}
        if not hidden:
            kwargs["logits_to_keep"] = keep or T
        if use_prefix and self.prompt is not None:
            prefix = self.prompt(w, B).to(embeds.dtype)  # (B, k, d)
            k = prefix.shape[1]
            embeds = torch.cat([prefix, embeds], 1)
            mask = torch.cat([mask.new_ones(B, k), mask], 1)
            kwargs["position_ids"] = torch.arange(k + T, device=input_ids.device).expand(
                B, -1
            )  # tokens k..k+T-1
        # without a prefix the tokens sit at 0..T-1
        if hidden:
            out = self.lm.base_model(inputs_embeds=embeds, attention_mask=mask, **kwargs)
            return out.last_hidden_state[:, -T:]  # the prefix outputs dropped
        return self.lm(inputs_embeds=embeds, attention_mask=mask, **kwargs).logits  # (B, keep or T, V)


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """log p(y|x) = sum over response tokens t of log p(y_t | x, y_<t): the DPO score of Eq. 5.

    logits (B, T, V), position t predicting token t + 1; labels (B, T) token ids; response_mask (B, T) bool,
    True at response tokens (position 0 has no prediction and is ignored). Returns (B,) float32.
    """
    logits = logits[:, :-1].float()  # (B, T-1, V): position t predicts token t + 1
    # log softmax at the target, z_y - logsumexp(z): no second (B, T-1, V) tensor kept for the backward pass
    token_logps = logits.gather(-1, labels[:, 1:, None]).squeeze(-1) - logits.logsumexp(-1)  # (B, T-1)
    return torch.where(response_mask[:, 1:].bool(), token_logps, 0.0).sum(
        -1
    )  # where: nan outside y cannot leak


@dataclass
class LoRAConfig:
    """LoRA (Hu et al. 2022); paper Sec. 4.2: alpha = 8, r = 4. Saved in the checkpoint. targets: the last
    part of module names that get adapters (PEFT's defaults: GPT-2 "c_attn", Llama / SmolLM2 q_proj, v_proj)."""

    rank: int = 4
    alpha: float = 8.0
    targets: tuple = ("c_attn", "q_proj", "v_proj")

    def to_dict(self) -> dict:
        return asdict(self)


class LoRA(nn.Module):
    """y = base(x) + (alpha / r) * x A^T B^T around a frozen nn.Linear or GPT-2 Conv1D (weight stored as
    (in, out), recognised by class name so that this file needs no transformers). A (r, in) Kaiming-uniform,
    B (out, r) zero (as PEFT): the adapted map starts equal to the base. enabled = False: the base map."""

    def __init__(self, base: nn.Module, rank: int = 4, alpha: float = 8.0):
        super().__init__()
        conv1d = type(base).__name__ == "Conv1D"
        in_features, out_features = base.weight.shape if conv1d else (base.in_features, base.out_features)
        self.base = base
        self.scaling = alpha / rank
        self.enabled = True
        self.lora_A = nn.Parameter(torch.empty(rank, in_features))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))  # (out, r)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's own init, as PEFT

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if not self.enabled:
            return y
        delta = (x.to(self.lora_A.dtype) @ self.lora_A.t()) @ self.lora_B.t()  # (..., out) through rank r
        return y + (self.scaling * delta).to(y.dtype)


def apply_lora(model: nn.Module, config: LoRAConfig) -> list[str]:
    """Freeze `model`, then wrap each linear layer named in config.targets in a LoRA (in place); the LoRA
    matrices are then its only trainable parameters. Returns the wrapped names."""
    for p in model.parameters():
        p.requires_grad_(False)
    linear = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":
            linear[name] = module
    wrapped = [n for n in linear if n.rsplit(".", 1)[-1] in config.targets]
    if not wrapped:  # the one guard: --lora-targets comes from the user
        leaves = sorted({n.rsplit(".", 1)[-1] for n in linear})
        raise ValueError(
            f"LoRA targets {tuple(config.targets)} match no linear layer of {type(model).__name__}; its "
            f"linear layers are named {leaves}"
        )
    for name in wrapped:
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent), leaf, LoRA(linear[name], config.rank, config.alpha))
    return wrapped


@contextlib.contextmanager
def lora_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """`with lora_disabled(lm): ...` runs the base LM (every LoRA wrapper off), e.g. for log p0(y|x)."""
    layers = [m for m in model.modules() if isinstance(m, LoRA)]
    for m in layers:
        m.enabled = False
    try:
        yield model
    finally:
        for m in layers:
            m.enabled = True


def trainable_state(model: nn.Module) -> dict:
    """{name: tensor} of the trainable parameters only (prefix, HPT MLPs, LoRA): small, CPU copies."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
