"""LLM alignment with COS-DPO (paper Sec. 4.2, Fig. 4-5, Table 2): Hyper Prompt Tuning + LoRA, W-COS-DPO on
PKU-SafeRLHF-format preference pairs with two objectives, helpfulness and harmlessness (m = 2, n = 2).

    stage 1  the base model p0. Default: a small GPT-2 built from a GPT2Config (no download) with a byte
             tokenizer, trained briefly on the responses of the training pairs (supervised, response tokens
             only). With --model / --gguf-file: a pretrained causal LM used as it is.
    stage 2  preference fine-tuning, the LM frozen apart from LoRA (alpha 8, r 4), beta = 0.1:
             --method wcos   W-COS-DPO (Alg. 1/3): Hyper Prompt (k = 8, r = 4) conditioned on w ~ Dir(alpha),
                             one w per step, loss w . (L_help, L_harm) + lambda G_w
             --method ls     DPO-LS: one model per evaluation weight            } baselines (App. A.1), each
             --method soup   DPO Soup: 2 unit-weight models, parameters         } with plain prompt tuning
                             (LoRA + prefix) interpolated at evaluation          } (k = 8) on top of LoRA
    stage 3  at the evaluation weights (11 for m = 2): per-objective test error (the Eq. 5 loss, lower is
             better, Fig. 5 axes), the IQR of log p_theta(y|x) - log p0(y|x) over test responses (Fig. 5
             inset) and the hypervolume with reference (1.1, 1.1) (Table 2).

Run (from the repository folder):
    python train_llm.py                                    # embedded data, tiny GPT-2, W-COS-DPO (~2 min on 1 core)
    python train_llm.py --method soup --out runs/llm_soup  # a baseline
    python train_llm.py --data PKU-SafeRLHF/train.jsonl --model gpt2 --max-steps 2000   # real data and model
    python train_llm.py --gguf-file SOME.gguf --max-steps 3                             # a GGUF model (see README)
    torchrun --nproc_per_node 2 train_llm.py               # data-parallel (DDP: gloo on CPU, nccl on GPU)
Outputs in --out (default runs/llm): results.json, model.pt (one torch.save dict: trainable weights, base
model (tiny: its weights; pretrained: its name/path), all configs; `load_trained` rebuilds the policy) and
train.log.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from typing import Optional

import numpy as np
import torch

import data as data_lib
from losses import cosine_penalty, has_preference, lipo_losses, mean_over_lists, sample_weights, scalarize
from models import (HyperPrompt, HyperPromptConfig, LoRAConfig, PrefixLM, apply_lora, count_parameters,
                    interpolate_states, lora_disabled, sequence_logps, trainable_state)
from pareto import hypervolume, weight_grid
from train_ltr import parse_floats  # "0.5" or "0.3,0.7" -> one positive value per objective

METHODS = ("wcos", "ls", "soup")
OBJECTIVES = list(data_lib.PREFERENCE_OBJECTIVES)
CHECKPOINT_FORMAT = "cosdpo-llm-1"
HV_REF = (1.1, 1.1)  # Table 2
HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA = os.path.join(HERE, "data", "synthetic_preferences_v1.jsonl")


# ------------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="COS-DPO LLM alignment: Hyper Prompt Tuning + LoRA on preference pairs")
    a = p.add_argument
    a("--method", choices=METHODS, default="wcos", help="wcos (W-COS-DPO) or a Table 2 baseline: ls, soup")
    a("--model", default=None, help="causal LM for AutoModelForCausalLM.from_pretrained (local folder, or hub "
      "name when online); default: a tiny GPT-2 built and pre-trained here")
    a("--gguf-file", default=None, help="a GGUF file to load (needs `pip install gguf accelerate`); --model is "
      "then its folder (default: the file's folder)")
    a("--data", default=None, help="PKU-SafeRLHF JSON lines; default: the embedded set, generated into data/")
    a("--num-pairs", type=int, default=2000, help="size of the embedded set (ignored with --data)")
    a("--test-fraction", type=float, default=0.1, help="share of pairs held out for evaluation")
    a("--max-eval-pairs", type=int, default=None, help="evaluate on at most this many test pairs (default all)")
    a("--max-steps", type=int, default=500, help="preference-training steps per trained model (every method)")
    a("--sft-steps", type=int, default=None, help="supervised steps that make p0 (default 300 for the tiny "
      "model; pretrained models are used as they are)")
    a("--alpha", default="0.5", help="Dirichlet concentration for w: one value or one per objective (App. A.6.1)")
    a("--beta", default="0.1", help="DPO temperature: one value or one per objective (paper: 0.1)")
    a("--penalty", type=float, default=0.0, help="cosine penalty coefficient lambda (App. A.2, Eq. 19; wcos only)")
    a("--weights", default=None, help="evaluation weights 'w1,w2;w1,w2;...' (default: the 11-point grid of "
      "pareto.weight_grid)")
    a("--num-virtual-tokens", type=int, default=8, help="prefix length k (paper 8)")
    a("--hpt-rank", type=int, default=4, help="rank r of the HPT mask A @ B (paper 4)")
    a("--hpt-hidden", type=int, default=64, help="width of the HPT MLPs")
    a("--lora-rank", type=int, default=4, help="LoRA rank (paper 4)")
    a("--lora-alpha", type=float, default=8.0, help="LoRA alpha (paper 8)")
    a("--lora-targets", default="c_attn,q_proj,v_proj", help="comma-separated module names that get LoRA")
    a("--lr", type=float, default=5e-3, help="Adam learning rate of the preference stage")
    a("--sft-lr", type=float, default=3e-3, help="AdamW learning rate of the supervised stage (tiny model)")
    a("--batch-size", type=int, default=16, help="preference pairs per step, over all ranks")
    a("--max-length", type=int, default=256, help="tokens per prompt + response (prompt <= half, see data)")
    a("--tiny-layers", type=int, default=2, help="tiny GPT-2: layers")
    a("--tiny-width", type=int, default=64, help="tiny GPT-2: embedding width")
    a("--tiny-heads", type=int, default=4, help="tiny GPT-2: attention heads")
    a("--out", default="runs/llm", help="output folder")
    a("--seed", type=int, default=0, help="seeds data split, initialisation, batches and w draws")
    a("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda when available")
    a("--threads", type=int, default=None, help="torch CPU threads (default: 1 for the tiny model, whose small "
      "matrices gain little from a second thread and lose much when other processes share the cores; torch's "
      "choice for --model)")
    a("--log-every", type=int, default=25, help="steps between log lines")
    return p


def parse_weights(text: Optional[str], m: int) -> np.ndarray:
    """Evaluation weights: None -> pareto.weight_grid(m) (11 x m); 'a,b;c,d' -> rows on the simplex."""
    if text is None:
        return weight_grid(m)
    rows = []
    for part in str(text).split(";"):
        try:
            w = [float(v) for v in part.split(",")]
        except ValueError:
            raise ValueError(f"--weights: {part!r} is not {m} comma-separated numbers") from None
        if len(w) != m:
            raise ValueError(f"--weights: each weight needs {m} entries (one per objective {OBJECTIVES}), "
                             f"got {len(w)} in {part!r}")
        if any(v < 0 for v in w) or abs(sum(w) - 1) > 1e-6:
            raise ValueError(f"--weights: {part!r} must be entries >= 0 summing to 1")
        rows.append(w)
    return np.array(rows)


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill defaults that depend on other flags, then validate every argument (clear ValueError each)."""
    m = len(OBJECTIVES)
    args.alpha = parse_floats(args.alpha, "alpha", m)
    args.beta = parse_floats(args.beta, "beta", m)
    args.weights = parse_weights(args.weights, m)
    args.lora_targets = tuple(t.strip() for t in args.lora_targets.split(",") if t.strip())
    pretrained = args.model is not None or args.gguf_file is not None
    if args.gguf_file is not None:
        if args.model is None:
            args.model = os.path.dirname(os.path.abspath(args.gguf_file))
            args.gguf_file = os.path.basename(args.gguf_file)
        if not os.path.isfile(os.path.join(args.model, args.gguf_file)):
            raise FileNotFoundError(f"--gguf-file: no file {os.path.join(args.model, args.gguf_file)}")
        missing = [pkg for pkg in ("gguf", "accelerate") if importlib.util.find_spec(pkg) is None]
        if missing:
            raise ValueError(f"--gguf-file needs the package(s) {missing}, which transformers uses to read GGUF: "
                             f"pip install {' '.join(missing)}")
    if args.sft_steps is None:
        args.sft_steps = 0 if pretrained else 300
    if pretrained and args.sft_steps > 0:
        raise ValueError("--sft-steps > 0 with --model: the checkpoint stores a pretrained base by name, so p0 "
                         "must be the model as loaded; fine-tune it separately and pass the result as --model")
    for name in ("max_steps", "batch_size", "max_length", "num_virtual_tokens", "hpt_rank", "hpt_hidden",
                 "lora_rank", "tiny_layers", "tiny_width", "tiny_heads", "log_every", "num_pairs"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.sft_steps < 0:
        raise ValueError(f"--sft-steps must be >= 0, got {args.sft_steps}")
    if args.max_length < 8:
        raise ValueError(f"--max-length must be >= 8, got {args.max_length}")
    if args.tiny_width % args.tiny_heads:
        raise ValueError(f"--tiny-width ({args.tiny_width}) must be divisible by --tiny-heads ({args.tiny_heads})")
    if not (args.lr > 0 and args.sft_lr > 0 and args.lora_alpha > 0):
        raise ValueError(f"--lr, --sft-lr and --lora-alpha must be > 0, got {args.lr}, {args.sft_lr}, {args.lora_alpha}")
    if args.penalty < 0:
        raise ValueError(f"--penalty must be >= 0, got {args.penalty}")
    if not 0 < args.test_fraction < 1:
        raise ValueError(f"--test-fraction must be in (0, 1), got {args.test_fraction}")
    if args.max_eval_pairs is not None and args.max_eval_pairs < 1:
        raise ValueError(f"--max-eval-pairs must be >= 1, got {args.max_eval_pairs}")
    if not args.lora_targets:
        raise ValueError("--lora-targets must name at least one module")
    if args.data is not None and not os.path.isfile(args.data):
        raise FileNotFoundError(f"--data: no file {args.data} (expected PKU-SafeRLHF JSON lines)")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no CUDA device")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def run_config(args) -> dict:
    """The resolved arguments as JSON-able values (stored in results.json and the checkpoint)."""
    return {k: (v.tolist() if isinstance(v, np.ndarray) else list(v) if isinstance(v, tuple) else v)
            for k, v in vars(args).items()}


# ------------------------------------------------------------------------------------------------------
# small helpers: distributed set-up, atomic saves
# ------------------------------------------------------------------------------------------------------
def setup_distributed(device: str) -> tuple:
    """(rank, world_size, device). Under torchrun (RANK / WORLD_SIZE set) join the process group: nccl on
    GPU (one GPU per local rank), gloo on CPU. A plain `python train_llm.py` is rank 0 of 1."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return 0, 1, device
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    torch.distributed.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return rank, world, device


# ------------------------------------------------------------------------------------------------------
# models: the base LM (tiny or pretrained), its tokenizer, the policy
# ------------------------------------------------------------------------------------------------------
def tiny_gpt2(vocab_size: int, max_positions: int, layers: int, width: int, heads: int) -> torch.nn.Module:
    """A small GPT-2 from a config (no download); dropout 0 so that the policy equals the reference exactly."""
    from transformers import GPT2Config, GPT2LMHeadModel  # lazy: only the LLM path pays for transformers
    config = GPT2Config(vocab_size=vocab_size, n_positions=max_positions, n_embd=width, n_layer=layers,
                        n_head=heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=data_lib.ByteTokenizer.eos_token_id,
                        eos_token_id=data_lib.ByteTokenizer.eos_token_id,
                        pad_token_id=data_lib.ByteTokenizer.pad_token_id)
    return GPT2LMHeadModel(config)


def load_base(base: dict, device: str) -> tuple:
    """(lm, tokenizer) from a checkpoint's `base` entry: {"kind": "tiny", "config": ..., "state": ...} or
    {"kind": "pretrained", "model": NAME_OR_PATH, "gguf_file": FILE or None}."""
    if base["kind"] == "tiny":
        from transformers import GPT2Config, GPT2LMHeadModel
        lm = GPT2LMHeadModel(GPT2Config(**base["config"]))
        if base.get("state") is not None:
            lm.load_state_dict(base["state"])
        return lm.to(device), data_lib.ByteTokenizer()
    from transformers import AutoModelForCausalLM, AutoTokenizer
    kwargs = {} if base.get("gguf_file") is None else dict(gguf_file=base["gguf_file"])
    tokenizer = AutoTokenizer.from_pretrained(base["model"], **kwargs)
    lm = AutoModelForCausalLM.from_pretrained(base["model"], **kwargs)
    return lm.to(device), tokenizer


def token_ids(tokenizer) -> tuple:
    """(encode, pad_id, eos_id, bos_id) for tokenize_pairs, from our ByteTokenizer or a HF tokenizer.

    bos is prepended only when the tokenizer itself adds it (its own convention); pad falls back to eos
    (padding is masked out everywhere, its id never matters)."""
    if isinstance(tokenizer, data_lib.ByteTokenizer):
        return tokenizer.encode, tokenizer.pad_token_id, tokenizer.eos_token_id, None
    def encode(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    adds_bos = tokenizer.bos_token_id is not None and tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    return encode, pad, tokenizer.eos_token_id, tokenizer.bos_token_id if adds_bos else None


def build_policy(lm: torch.nn.Module, hpt_config: HyperPromptConfig, lora_config: LoRAConfig, init_ids: list,
                 seed: int) -> PrefixLM:
    """Freeze the LM, add LoRA, put a (hyper) prompt in front. Same seed -> same initial trainable weights.

    init_ids: k token ids whose embeddings initialise the prefix P (see `prefix_init_ids`)."""
    torch.manual_seed(seed)
    apply_lora(lm, lora_config)  # LoRA A drawn from the seed, B = 0
    table = lm.get_input_embeddings().weight.detach()
    init = table[torch.as_tensor(init_ids, device=table.device)].float().cpu()  # (k, d)
    prompt = HyperPrompt(hpt_config, init_prefix=init).to(table.device)
    return PrefixLM(lm, prompt)


def prefix_init_ids(encode, k: int) -> list:
    """Token ids that initialise the prefix P: the opening of the prompt template, "Human: ", cycled to k tokens.

    A text initialisation (Lester et al. 2021 also use vocabulary and class-label inits; the paper gives none):
    the untrained prefix reads like the start of the dialogue that follows, so the initial policy stays close
    to p0. A small model is very sensitive to this: on the tiny default p0 the test errors at initialisation
    were (0.70, 0.70) with this init (ln 2 = 0.693 would be policy = reference), (0.94, 0.78) with
    "Human: \\n" and about 4.3 with embeddings of random vocabulary tokens."""
    ids = encode(data_lib.format_prompt("").split(" ")[0] + " ")  # "Human: "
    return [ids[i % len(ids)] for i in range(k)]


# ------------------------------------------------------------------------------------------------------
# log-probs: the policy at w and the reference p0 (computed once, without gradients)
# ------------------------------------------------------------------------------------------------------
def policy_logps(model, batch: dict, w: Optional[torch.Tensor]) -> torch.Tensor:
    """log p_theta(y|x, w) of both responses of each pair: (B, 2). `model` is a PrefixLM (or its DDP wrapper).

    The DPO score of a response is its sequence log-prob, the sum of its token log-probs (SPEC 1)."""
    B, n, T = batch["input_ids"].shape
    ids = batch["input_ids"].view(B * n, T)  # both responses of all pairs in one forward pass
    logits = model(ids, batch["attention_mask"].view(B * n, T), w=w)  # (2B, T, V), prefix outputs dropped
    return sequence_logps(logits, ids, batch["response_mask"].view(B * n, T)).view(B, n)


@torch.no_grad()
def reference_logps(policy: PrefixLM, data: data_lib.TokenizedPairs, batch_size: int, device: str,
                    index=None) -> torch.Tensor:
    """log p0(y|x) for both responses of the pairs `index` (default all): (len(index), 2) on CPU.

    p0 is the reference model: the base LM with LoRA switched off and no prefix (the SFT model for the tiny
    default), run without gradients."""
    index = torch.arange(len(data)) if index is None else torch.as_tensor(index)
    out = []
    with lora_disabled(policy.lm):
        for start in range(0, len(index), batch_size):
            batch = data.batch(index[start:start + batch_size], device)
            B, n, T = batch["input_ids"].shape
            ids = batch["input_ids"].view(B * n, T)
            logits = policy(ids, batch["attention_mask"].view(B * n, T), use_prefix=False)
            out.append(sequence_logps(logits, ids, batch["response_mask"].view(B * n, T)).view(B, n).cpu())
    return torch.cat(out)


class ReferenceCache:
    """log p0(y|x) of a split, computed once per pair on first use and kept: the data never change, so
    neither do these numbers. Lazy so that a short run of a big model (e.g. 3 steps of SmolLM2) does not pay
    for the whole training set; a long run pays the same as computing everything up front."""

    def __init__(self, policy: PrefixLM, data: data_lib.TokenizedPairs, batch_size: int, device: str):
        self.policy, self.data, self.batch_size, self.device = policy, data, batch_size, device
        self.values = torch.full((len(data), 2), float("nan"))  # (N, 2), nan = not computed yet
        self.seconds = 0.0

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor:
        todo = index[torch.isnan(self.values[index, 0])]
        if len(todo):
            t0 = time.perf_counter()
            self.values[todo] = reference_logps(self.policy, self.data, self.batch_size, self.device, todo)
            self.seconds += time.perf_counter() - t0
        return self.values[index]


@torch.no_grad()
def all_logps(policy: PrefixLM, data: data_lib.TokenizedPairs, w, batch_size: int, device: str) -> torch.Tensor:
    """log p_theta(y|x, w) for every response of `data`: (N, 2) on CPU."""
    w = None if w is None else torch.as_tensor(w, dtype=torch.float32, device=device)
    return torch.cat([policy_logps(policy, data.batch(range(s, min(s + batch_size, len(data))), device), w).cpu()
                      for s in range(0, len(data), batch_size)])


def objective_losses(logps: torch.Tensor, ref_logps: torch.Tensor, labels: torch.Tensor, beta) -> torch.Tensor:
    """Per-objective mean DPO loss over pairs, L = (L_help, L_harm): (B, 2) log-probs, (B, 2, m) labels -> (m,).

    lipo_losses with n = 2 and one-hot labels is exactly the pairwise DPO loss of Eq. 5 per objective
    (-log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))), tested in test_losses); pairs without a
    preference for an objective are left out of its mean."""
    return mean_over_lists(lipo_losses(logps, ref_logps, labels, beta), has_preference(labels))


def reward_accuracy(logps: torch.Tensor, ref_logps: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per objective, the share of pairs whose preferred response has the larger implied reward
    log p_theta - log p0 (the DPO reward up to beta): (m,)."""
    reward = logps - ref_logps  # (B, 2)
    margin = reward[:, 0] - reward[:, 1]  # (B,)
    first_preferred = labels[:, 0, :] > labels[:, 1, :]  # (B, m)
    return ((margin[:, None] > 0) == first_preferred).float().mean(0)


# ------------------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------------------
def supervised_stage(lm, data: data_lib.TokenizedPairs, steps: int, lr: float, batch_size: int, seed: int,
                     device: str, log) -> float:
    """Make p0: train the whole (tiny) LM on the responses of the training pairs (both responses, response
    tokens only, so p0 is neutral between the objectives). Returns seconds. Deterministic by seed; under DDP
    every rank runs it identically (cheap for the tiny model; DDP then broadcasts rank 0's weights anyway)."""
    t0 = time.perf_counter()
    ids_all = data.input_ids.flatten(0, 1)  # (2N, T)
    attn_all, resp_all = data.attention_mask.flatten(0, 1), data.response_mask.flatten(0, 1)
    opt = torch.optim.AdamW(lm.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    lm.train()
    for step in range(1, steps + 1):
        idx = torch.randint(ids_all.shape[0], (batch_size,), generator=gen)
        T = int(attn_all[idx].sum(-1).max())
        ids, attn, resp = ids_all[idx, :T].to(device), attn_all[idx, :T].to(device), resp_all[idx, :T].to(device)
        logits = lm(input_ids=ids, attention_mask=attn.long()).logits
        loss = -sequence_logps(logits, ids, resp).sum() / resp[:, 1:].sum()  # mean NLL per response token
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == steps:
            log(f"[sft] step {step:5d}/{steps} | nll/token {loss.item():.4f}")
    lm.eval()
    return time.perf_counter() - t0


def train_job(args, model, policy: PrefixLM, train: data_lib.TokenizedPairs, ref_train: ReferenceCache,
              fixed_w: Optional[list], name: str, rank: int, world: int, log) -> tuple:
    """Train the trainable parameters of `policy` for args.max_steps steps; returns (seconds, step_seconds list),
    both without the time spent computing log p0 for the cache (ref_train.seconds has that).

    model: `policy` or its DDP wrapper (gradients averaged over ranks). fixed_w None = W-COS-DPO (Alg. 1/3:
    w ~ Dir(alpha), one per step, fed to the Hyper Prompt); else a baseline model trained at its own w with a
    plain prefix. Every rank draws the same batch order and the same w (same seeds), then takes its shard
    rank::world of the batch; with equal shards, DDP's gradient average equals the full-batch gradient."""
    m = len(OBJECTIVES)
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=args.lr)
    data_gen = torch.Generator().manual_seed(args.seed + 1)
    w_gen = torch.Generator().manual_seed(args.seed + 2)
    beta = torch.tensor(args.beta)
    order, pos = torch.randperm(len(train), generator=data_gen), 0
    step_seconds, logged = [], []
    conditioned = fixed_w is None
    for step in range(1, args.max_steps + 1):
        t_step, ref_seconds = time.perf_counter(), ref_train.seconds
        if pos + args.batch_size > len(order):  # a new epoch
            order, pos = torch.randperm(len(train), generator=data_gen), 0
        idx = order[pos:pos + args.batch_size][rank::world]
        pos += args.batch_size
        batch = train.batch(idx, args.device)
        w = sample_weights(args.alpha, 1, w_gen)[0] if conditioned else torch.tensor(fixed_w, dtype=torch.float32)
        logps = policy_logps(model, batch, w.to(args.device) if conditioned else None)  # (B, 2)
        ref = ref_train[idx].to(args.device)  # (B, 2) log p0, no gradient, computed once per pair (cached)
        L = objective_losses(logps, ref, batch["labels"], beta.to(args.device))  # (m,), Eq. 5 / Eq. 11
        w = w.to(args.device)
        loss = scalarize(L, w)  # L_w = w . L
        if conditioned and args.penalty > 0:
            # Eq. 19; sign as in losses.cosine_penalty. Under DDP each rank uses its shard's L: cos is not
            # linear, so with a penalty the averaged gradient differs slightly from the 1-process run
            loss = loss + args.penalty * cosine_penalty(L, w)
        if not torch.isfinite(loss):
            raise RuntimeError(f"[{name}] loss became {loss.item()} at step {step}; try a lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step_seconds.append(time.perf_counter() - t_step - (ref_train.seconds - ref_seconds))  # without log p0
        logged.append((loss.item(), *L.tolist(), *reward_accuracy(logps.detach(), ref, batch["labels"]).tolist()))
        if step % args.log_every == 0 or step == args.max_steps:
            mean = np.mean(logged, 0)
            dt = sum(step_seconds[-len(logged):]) / len(logged)
            log(f"[{name}] step {step:5d}/{args.max_steps} | loss {mean[0]:.4f} | L help {mean[1]:.4f} harm "
                f"{mean[2]:.4f} | acc help {mean[1 + m]:.2f} harm {mean[2 + m]:.2f} | w {w[0].item():.2f},"
                f"{w[1].item():.2f} | {1e3 * dt:7.1f} ms/step")
            logged = []
    return float(sum(step_seconds)), step_seconds


# ------------------------------------------------------------------------------------------------------
# a trained method = the policy network plus one trainable state per job; evaluation at any weight
# ------------------------------------------------------------------------------------------------------
def set_weight(policy: PrefixLM, method: str, jobs: list, w) -> Optional[torch.Tensor]:
    """Load the trainable weights that serve weight w into `policy`; return the w to feed it (None = none).

    wcos: one conditioned model, w goes to the Hyper Prompt. ls: the model trained at w (must be one of its
    training weights). soup: theta_w = sum_j w_j theta_{e_j} over the unit-weight models (App. A.1)."""
    w = np.asarray(w, dtype=np.float64)
    if method == "wcos":
        state, w_in = jobs[0]["state"], torch.tensor(w, dtype=torch.float32)
    elif method == "ls":
        match = [j for j in jobs if np.allclose(j["fixed_w"], w, atol=1e-6)]
        if not match:
            raise ValueError(f"DPO-LS has models only at its training weights {[j['fixed_w'] for j in jobs]}, not {w}")
        state, w_in = match[0]["state"], None
    else:
        state, w_in = interpolate_states([j["state"] for j in jobs], w), None
    device = next(policy.parameters()).device
    loaded = policy.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=False)
    if loaded.unexpected_keys:  # (missing keys are expected: the frozen LM is not in `state`)
        raise ValueError(f"checkpoint state has unknown parameters {loaded.unexpected_keys[:5]}")
    untrained = [k for k, p in policy.named_parameters() if p.requires_grad and k not in state]
    if untrained:  # every trainable parameter must come from the checkpoint, none may keep its initial value
        raise ValueError(f"checkpoint state lacks trainable parameters {untrained[:5]}")
    return None if w_in is None else w_in.to(device)


def evaluate(policy: PrefixLM, method: str, jobs: list, weights: np.ndarray, test: data_lib.TokenizedPairs,
             ref_test: torch.Tensor, beta, batch_size: int, device: str) -> dict:
    """Test metrics at each weight: aux_error (W, m), the Eq. 5 loss per objective averaged over test pairs
    (lower is better; Fig. 5 axes), and logp_dev_iqr (W,), the inter-quartile range of
    log p_theta(y|x) - log p0(y|x) over ALL test responses (both of each pair; Fig. 5 inset)."""
    errors, iqrs = [], []
    beta = torch.tensor(beta)
    for w in weights:
        w_in = set_weight(policy, method, jobs, w)
        logps = all_logps(policy, test, w_in, batch_size, device)  # (N, 2)
        errors.append(objective_losses(logps, ref_test, test.labels, beta).tolist())
        q1, q3 = np.percentile((logps - ref_test).flatten().numpy(), [25, 75])
        iqrs.append(float(q3 - q1))
    errors = np.array(errors)
    hv = None
    if (errors <= np.array(HV_REF)).all(1).any():
        hv = hypervolume(errors, HV_REF, maximize=False)
    else:
        print(f"warning: no evaluation point dominates the hypervolume reference {HV_REF}: hypervolume = null",
              file=sys.stderr)
    return dict(aux_error=errors.tolist(), logp_dev_iqr=iqrs, hypervolume=hv)


def load_trained(path: str, device: str = "cpu") -> tuple:
    """Rebuild a trained method from its checkpoint alone: (policy, ckpt, tokenizer).

    Use `set_weight(policy, ckpt["method"], ckpt["jobs"], w)` to get the w to feed, then `all_logps` or
    `policy(input_ids, attention_mask, w=...)`."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint (format {ckpt.get('format')!r})")
    lm, tokenizer = load_base(ckpt["base"], device)
    policy = build_policy(lm, HyperPromptConfig(**ckpt["hpt_config"]), LoRAConfig(**ckpt["lora_config"]),
                          [0] * ckpt["hpt_config"]["num_virtual_tokens"], 0)  # init irrelevant: overwritten
    set_weight(policy, ckpt["method"], ckpt["jobs"], ckpt["weights"][0])
    return policy.to(device), ckpt, tokenizer


def summary_table(results: dict) -> str:
    lines = [f"\n{results['method']}: test error per objective (lower is better) at {len(results['weights'])} weights",
             f"{'w':>12} | {'helpfulness':>11} | {'harmlessness':>12} | {'IQR logp dev':>12}"]
    for w, e, e0, q in zip(results["weights"], results["aux_error"], results["aux_error_init"], results["logp_dev_iqr"]):
        lines.append(f"{w[0]:5.2f},{w[1]:5.2f} | {e[0]:11.4f} | {e[1]:12.4f} | {q:12.3f}   (before: {e0[0]:.4f}, {e0[1]:.4f})")
    hv = results["hypervolume"]
    lines.append(f"hypervolume (ref {HV_REF}) {'null' if hv is None else f'{hv:.4f}'} | train "
                 f"{results['train_seconds']:.1f} s | {results['num_params']:,} trainable parameters")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------------
if __name__ == "__main__":
    t_start = time.perf_counter()
    try:
        args = resolve_args(build_parser().parse_args())
    except (ValueError, FileNotFoundError) as e:
        build_parser().error(str(e))
    rank, world, args.device = setup_distributed(args.device)
    if args.threads or args.model is None:
        torch.set_num_threads(args.threads or 1)
    if args.batch_size % world:
        raise SystemExit(f"--batch-size ({args.batch_size}) must be divisible by the number of processes ({world})")
    os.makedirs(args.out, exist_ok=True)
    log_file = open(os.path.join(args.out, "train.log"), "a") if rank == 0 else None

    def log(msg: str) -> None:  # rank 0 alone logs
        if rank == 0:
            print(msg, flush=True)
            log_file.write(msg + "\n")
            log_file.flush()

    # ---- seeding (one block) ----
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    log("config: " + json.dumps(run_config(args), sort_keys=True) + f" | world_size {world}")

    # ---- data ----
    data_path = args.data
    if data_path is None:
        data_path = DEFAULT_DATA if args.num_pairs == 2000 else DEFAULT_DATA.replace(".jsonl", f"_{args.num_pairs}.jsonl")
        if rank == 0 and not os.path.exists(data_path):
            data_lib.write_synthetic_preferences(data_path, num_pairs=args.num_pairs, seed=0)
            log(f"[data] wrote the embedded preference set to {data_path}")
        if world > 1:
            torch.distributed.barrier()
    pairs = data_lib.read_preferences(data_path)
    train_pairs, test_pairs = data_lib.split_pairs(pairs, args.test_fraction, seed=args.seed)
    if args.max_eval_pairs is not None and len(test_pairs) > args.max_eval_pairs:
        test_pairs = test_pairs.subset(range(args.max_eval_pairs))

    # ---- stage 1: the base model p0 ----
    if args.model is None:
        tokenizer = data_lib.ByteTokenizer()
        lm = tiny_gpt2(tokenizer.vocab_size, args.max_length + args.num_virtual_tokens, args.tiny_layers,  # (+ k: slack)
                       args.tiny_width, args.tiny_heads).to(args.device)
        base = dict(kind="tiny", config=lm.config.to_dict())
    else:
        base = dict(kind="pretrained", model=os.path.abspath(args.model) if os.path.isdir(args.model) else args.model,
                    gguf_file=args.gguf_file)
        t0 = time.perf_counter()
        lm, tokenizer = load_base(base, args.device)
        log(f"[base] loaded {type(lm).__name__} ({count_parameters(lm):,} parameters) in {time.perf_counter() - t0:.1f} s")
    encode, pad_id, eos_id, bos_id = token_ids(tokenizer)
    train = data_lib.tokenize_pairs(train_pairs, encode, args.max_length, pad_id, eos_id, bos_id)
    test = data_lib.tokenize_pairs(test_pairs, encode, args.max_length, pad_id, eos_id, bos_id)
    log(f"[data] {data_path}: {len(train)} train / {len(test)} test pairs | objectives disagree on "
        f"{pairs.disagreement():.1%} | {pairs.num_skipped_empty} skipped (empty response) | truncated (max_length "
        f"{args.max_length}): {train.num_prompts_truncated + test.num_prompts_truncated} prompts, "
        f"{train.num_responses_truncated + test.num_responses_truncated} responses")
    sft_seconds = 0.0
    if args.sft_steps:
        sft_seconds = supervised_stage(lm, train, args.sft_steps, args.sft_lr, 2 * args.batch_size, args.seed,
                                       args.device, log)
    if base["kind"] == "tiny":
        base["state"] = {k: v.detach().cpu().clone() for k, v in lm.state_dict().items()}

    # ---- the policy: frozen LM + LoRA + (hyper) prompt; the reference is the same net with both off ----
    # W-COS-DPO: a Hyper Prompt conditioned on w; baselines: a plain trainable prefix (no w), App. A.1
    hpt_config = HyperPromptConfig(embed_dim=lm.get_input_embeddings().weight.shape[1],
                                   num_objectives=len(OBJECTIVES) if args.method == "wcos" else 0,
                                   num_virtual_tokens=args.num_virtual_tokens, rank=args.hpt_rank,
                                   hidden=args.hpt_hidden)
    lora_config = LoRAConfig(rank=args.lora_rank, alpha=args.lora_alpha, targets=args.lora_targets)
    policy = build_policy(lm, hpt_config, lora_config, prefix_init_ids(encode, args.num_virtual_tokens),
                          args.seed).to(args.device)
    model = policy
    if world > 1:  # DDP averages the gradients of the trainable parameters; it broadcasts rank 0's weights first
        model = torch.nn.parallel.DistributedDataParallel(policy)
    t0 = time.perf_counter()
    ref_train = ReferenceCache(policy, train, 2 * args.batch_size, args.device)  # filled on first use
    ref_test = reference_logps(policy, test, 2 * args.batch_size, args.device)  # (N_test, 2), once
    log(f"[ref] log p0 of the {2 * len(test)} test responses computed once, without gradients "
        f"({time.perf_counter() - t0:.1f} s); training pairs: on first use, then cached")
    init_state = trainable_state(policy)
    per_model_params = count_parameters(policy)

    # ---- stage 2: preference fine-tuning (one job for W-COS-DPO, several for the baselines) ----
    m = len(OBJECTIVES)
    if args.method == "wcos":
        job_ws = [None]
    elif args.method == "ls":  # DPO-LS: one model per evaluation weight
        job_ws = [w.tolist() for w in args.weights]
    else:  # DPO Soup: one model per unit weight
        job_ws = [row.tolist() for row in np.eye(m)]
    init_eval = None
    if rank == 0:  # the untrained policy (LoRA at 0, prefix at its initialisation), for "before vs after"
        init_jobs = [dict(fixed_w=w, state=init_state) for w in job_ws]
        init_eval = evaluate(policy, args.method, init_jobs, args.weights, test, ref_test, args.beta,
                             2 * args.batch_size, args.device)
    jobs, train_seconds, step_seconds = [], 0.0, []
    for i, fixed_w in enumerate(job_ws):
        name = args.method if fixed_w is None else f"{args.method}{i + 1}"
        policy.load_state_dict(init_state, strict=False)  # every job starts from the same initialisation
        log(f"[{name}] training {per_model_params:,} parameters for {args.max_steps} steps"
            + ("" if fixed_w is None else f" at w = {np.round(fixed_w, 3).tolist()}"))
        seconds, steps = train_job(args, model, policy, train, ref_train, fixed_w, name, rank, world, log)
        train_seconds += seconds
        step_seconds += steps
        jobs.append(dict(name=name, fixed_w=fixed_w, state=trainable_state(policy), seconds=seconds))
    train_seconds += ref_train.seconds  # the honest total: the reference log-probs are part of the training cost
    log(f"[ref] log p0 of {int((~torch.isnan(ref_train.values[:, 0])).sum())} training pairs (this rank) computed once: "
        f"{ref_train.seconds:.1f} s (counted in train_seconds, not in ms/step)")

    # ---- stage 3: evaluation, checkpoint, results (rank 0 alone) ----
    if rank == 0:
        ckpt = dict(format=CHECKPOINT_FORMAT, method=args.method, objectives=OBJECTIVES,
                    weights=args.weights.tolist(), base=base, hpt_config=hpt_config.to_dict(),
                    lora_config=lora_config.to_dict(), jobs=jobs, config=run_config(args), data=data_path,
                    tokenize=dict(max_length=args.max_length, prompt_format=data_lib.format_prompt("{prompt}")))
        data_lib.atomic_save(ckpt, os.path.join(args.out, "model.pt"))
        t0 = time.perf_counter()
        result = evaluate(policy, args.method, jobs, args.weights, test, ref_test, args.beta, 2 * args.batch_size,
                          args.device)
        results = dict(method=args.method, objectives=OBJECTIVES, weights=args.weights.tolist(), **result,
                       hv_ref=list(HV_REF), train_seconds=train_seconds, num_params=per_model_params * len(jobs),
                       aux_error_init=init_eval["aux_error"], logp_dev_iqr_init=init_eval["logp_dev_iqr"],
                       hypervolume_init=init_eval["hypervolume"], sft_seconds=sft_seconds,
                       seconds_per_step_median=float(np.median(step_seconds)), world_size=world,
                       eval_seconds=time.perf_counter() - t0, num_train_pairs=len(train), num_test_pairs=len(test),
                       data=data_path, beta=args.beta, seed=args.seed, config=run_config(args))
        data_lib.atomic_write_json(results, os.path.join(args.out, "results.json"))
        log(summary_table(results))
        log(f"total {time.perf_counter() - t_start:.1f} s | wrote {args.out}/results.json and {args.out}/model.pt")
        log_file.close()
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
