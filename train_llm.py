"""LLM alignment with COS-DPO (paper Sec. 4.2, Fig. 4-5, Table 2): Hyper Prompt Tuning + LoRA, W-COS-DPO on
PKU-SafeRLHF-format preference pairs with two objectives, helpfulness and harmlessness (m = 2, n = 2).

    stage 1  the base model p0: a tiny GPT-2 built here (no download, byte tokenizer) and trained briefly on
             the responses of the training pairs; or, with --model / --gguf-file, a pretrained LM as it is
    stage 2  preference fine-tuning, the LM frozen apart from LoRA (alpha 8, r 4), beta = 0.1:
             --method wcos  W-COS-DPO (Alg. 1/3): Hyper Prompt (k = 8, r = 4) fed w ~ Dir(alpha), one w per step
             --method ls    DPO-LS: one model per evaluation weight         } baselines (App. A.1), with plain
             --method soup  DPO Soup: 2 unit-weight models, interpolated    } prompt tuning (k = 8) + LoRA
    stage 3  at the evaluation weights: test error per objective (the Eq. 5 loss, Fig. 5 axes), the IQR of
             log p_theta(y|x) - log p0(y|x) (Fig. 5 inset), hypervolume with reference (1.1, 1.1) (Table 2)

Run (from the repository folder):
    python train_llm.py                                    # embedded data, tiny GPT-2, W-COS-DPO (minutes, 1 core)
    python train_llm.py --method soup --out runs/llm_soup  # a baseline
    python train_llm.py --data PKU-SafeRLHF/train.jsonl --test-data PKU-SafeRLHF/test.jsonl --model gpt2
    python train_llm.py --gguf-file SOME.gguf --max-steps 3 --gradient-checkpointing  # a GGUF model (README)
    torchrun --nproc_per_node 2 train_llm.py               # data-parallel (DDP: gloo on CPU, nccl on GPU)
    python train_llm.py generate runs/llm/model.pt --w 1,0 --w 0,1 --prompt "How can I clean my oven?"
Outputs in --out (default runs/llm): results.json, train.log, model.pt (`load_trained` rebuilds the policy from it).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import sys
import time
from typing import Optional

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint
from tqdm import tqdm

import data as data_lib
from losses import cosine_penalty, has_preference, lipo_losses, mean_over_lists, sample_weights, scalarize
from models import (HyperPrompt, HyperPromptConfig, LoRAConfig, PrefixLM, apply_lora, count_parameters,
                    interpolate_states, load_checkpoint, lora_disabled, resolve_device, sequence_logps,
                    trainable_state)
from pareto import hypervolume, weight_grid

METHODS = ("wcos", "ls", "soup")
OBJECTIVES = list(data_lib.PREFERENCE_OBJECTIVES)
KIND = "llm"  # the checkpoint kind models.load_checkpoint checks
HV_REF = (1.1, 1.1)  # Table 2
DEFAULT_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "synthetic_preferences_v1")


# ---- command line ------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="COS-DPO LLM alignment (train); subcommand: `generate CKPT ...`")
    a = p.add_argument
    a("--method", choices=METHODS, default="wcos", help="wcos (W-COS-DPO) or a Table 2 baseline: ls, soup")
    a("--model", default=None, help="a causal LM folder (or hub name when online); default: a tiny GPT-2 made here")
    a("--gguf-file", default=None, help="a GGUF file to load (needs gguf, accelerate); --model: its folder")
    a("--chat-template", choices=("auto", "none"), default="auto", help="auto: the tokenizer's chat template "
      "when it has one (training, evaluation, generation); none: 'Human: ...\\nAssistant:'")
    a("--gradient-checkpointing", action="store_true", help="recompute activations in the backward pass: less memory")
    a("--data", default=None, help="PKU-SafeRLHF JSON lines; default: the embedded set, generated into data/")
    a("--test-data", default=None, help="evaluate on this file (e.g. PKU-SafeRLHF's test split), not on --data")
    a("--num-pairs", type=int, default=2000, help="size of the embedded set (ignored with --data)")
    a("--test-fraction", type=float, default=0.1, help="share of --data held out for evaluation")
    a("--max-eval-pairs", type=int, default=None, help="evaluate on at most this many test pairs (default all)")
    a("--max-steps", type=int, default=500, help="preference-training steps per trained model (every method)")
    a("--sft-steps", type=int, default=None, help="supervised steps that make p0 (default: 1000 tiny, 0 --model)")
    a("--alpha", default="0.5", help="Dirichlet concentration for w: one value or one per objective (App. A.6.1)")
    a("--beta", default="0.1", help="DPO temperature: one value or one per objective (paper: 0.1)")
    a("--penalty", type=float, default=0.0, help="cosine penalty lambda (App. A.2, wcos only): minimises "
      "L_w - lambda cos(w, L); negative = the sign printed in Eq. 18")
    a("--vertex-prob", type=float, default=0.0, help="variant (issue 13, wcos only): probability that a step's w "
      "is a unit vector e_j, j uniform, instead of a Dir(alpha) draw (paper: 0)")
    a("--weights", default=None, help="evaluation weights 'w1,w2;w1,w2;...' (default: the 11-point grid)")
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
    a("--threads", type=int, default=None, help="torch CPU threads (default: 1 for the tiny model, else torch's)")
    a("--log-every", type=int, default=25, help="steps between log lines")
    a("--quiet", action="store_true", help="no progress bar (there is none when stderr is not a terminal)")
    return p


def generate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train_llm.py generate", description="Answers of a trained model at each w.")
    a = p.add_argument
    a("checkpoint", help="model.pt written by train_llm.py")
    a("--w", action="append", required=True, help="weight 'w1,w2' on the simplex; repeat for several")
    a("--c", type=float, default=1.0, help="post-training temperature (Eq. 14): sample from "
      "p0^(1-1/c) p_theta^(1/c), per token (c = 1: the policy itself)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", action="append", help="a prompt; repeat for several")
    src.add_argument("--prompts", help="a file: one prompt per line, or PKU-SafeRLHF JSON lines (prompt field)")
    a("--max-new-tokens", type=int, default=128)
    a("--temperature", type=float, default=0.7, help="sampling temperature (> 0)")
    a("--top-p", type=float, default=0.9, help="nucleus sampling: smallest token set of this mass (0 < p <= 1)")
    a("--seed", type=int, default=0)
    a("--device", choices=("auto", "cpu", "cuda"), default="auto")
    return p


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill defaults that depend on other flags, then validate every argument (one clear ValueError each)."""
    m = len(OBJECTIVES)
    args.alpha = data_lib.parse_floats(args.alpha, "alpha", m)
    args.beta = data_lib.parse_floats(args.beta, "beta", m)
    args.weights = (weight_grid(m).tolist() if args.weights is None else
                    [data_lib.parse_weight(part, m, "weights") for part in args.weights.split(";")])
    args.lora_targets = [t.strip() for t in args.lora_targets.split(",") if t.strip()]
    if args.gguf_file is not None:
        if args.model is None:
            args.model, args.gguf_file = os.path.split(os.path.abspath(args.gguf_file))
        if not os.path.isfile(os.path.join(args.model, args.gguf_file)):
            raise FileNotFoundError(f"--gguf-file: no file {os.path.join(args.model, args.gguf_file)}")
    if args.sft_steps is None:
        args.sft_steps = 0 if args.model else 1000  # 1000: the tiny p0 then spells its answers (300: barely)
    if args.model and args.sft_steps > 0:
        raise ValueError("--sft-steps > 0 with --model: the checkpoint stores a pretrained base by name, so p0 "
                         "must be the model as loaded; fine-tune it separately and pass the result as --model")
    for name in ("max_steps", "batch_size", "num_virtual_tokens", "hpt_rank", "hpt_hidden", "lora_rank",
                 "tiny_layers", "tiny_width", "tiny_heads", "log_every", "num_pairs", "max_eval_pairs"):
        if getattr(args, name) is not None and getattr(args, name) < 1:  # (max_eval_pairs None = all)
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    checks = [(args.sft_steps >= 0, "--sft-steps must be >= 0"), (args.max_length >= 8, "--max-length must be >= 8"),
              (args.tiny_width % args.tiny_heads == 0, "--tiny-width must be divisible by --tiny-heads"),
              (min(args.lr, args.sft_lr, args.lora_alpha) > 0, "--lr, --sft-lr and --lora-alpha must be > 0"),
              (0 < args.test_fraction < 1, "--test-fraction must be in (0, 1)"),
              (args.penalty == 0 or args.method == "wcos", "--penalty is for --method wcos only (COS-DPO)"),
              (0 <= args.vertex_prob <= 1 and (not args.vertex_prob or args.method == "wcos"),
               "--vertex-prob must be a probability in [0, 1], for --method wcos only"),
              (args.lora_targets, "--lora-targets must name at least one module"),
              (not args.gguf_file or all(importlib.util.find_spec(p) for p in ("gguf", "accelerate")),
               "--gguf-file needs `pip install gguf accelerate` (transformers reads GGUF with them)")]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    for flag, path in (("--data", args.data), ("--test-data", args.test_data)):
        if path and not os.path.isfile(path):
            raise FileNotFoundError(f"{flag}: no file {path} (expected PKU-SafeRLHF JSON lines)")
    args.device = resolve_device(args.device)
    return args


# ---- the base LM (tiny or pretrained), its tokenizer, the policy -------------------------------------------
def setup_distributed(device: str) -> tuple:
    """(rank, world_size, device); under torchrun, join the process group (nccl on GPU, gloo on CPU)."""
    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return 0, 1, device
    if device == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    torch.distributed.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), device


def tiny_gpt2(vocab_size: int, max_positions: int, layers: int, width: int, heads: int) -> torch.nn.Module:
    """A small GPT-2 from a config (no download); dropout 0 so that the policy equals the reference exactly."""
    from transformers import GPT2Config, GPT2LMHeadModel  # lazy: only the LLM path pays for transformers
    tok = data_lib.ByteTokenizer
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_positions=max_positions, n_embd=width, n_layer=layers,
                                      n_head=heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                      bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                                      pad_token_id=tok.pad_token_id))


def load_base(base: dict, device: str) -> tuple:
    """(lm, tokenizer) from a checkpoint's `base` entry: {"source": "tiny", "config": ..., "state": ...} or
    {"source": "pretrained", "model": NAME_OR_PATH, "gguf_file": FILE or None}."""
    if base["source"] == "tiny":
        from transformers import GPT2Config, GPT2LMHeadModel
        lm = GPT2LMHeadModel(GPT2Config(**base["config"]))
        lm.load_state_dict(base["state"])
        return lm.to(device), data_lib.ByteTokenizer()
    from transformers import AutoModelForCausalLM, AutoTokenizer
    kwargs = {} if base["gguf_file"] is None else dict(gguf_file=base["gguf_file"])
    return (AutoModelForCausalLM.from_pretrained(base["model"], **kwargs).to(device),
            AutoTokenizer.from_pretrained(base["model"], **kwargs))


def prompt_text(tokenizer, prompt: str, chat: bool) -> str:
    """What the model reads before its answer: the chat template's user turn, opened for the assistant's
    answer, or data.format_prompt's "Human: ...\\nAssistant:" (PKU-SafeRLHF's dialogue style)."""
    if not chat:
        return data_lib.format_prompt(prompt)
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)


def token_ids(tokenizer) -> tuple:
    """(encode, pad_id, eos_id, bos_id) from our ByteTokenizer or a HF tokenizer. bos only when the tokenizer
    itself adds one; pad falls back to eos (padding is masked out everywhere, its id never matters)."""
    if isinstance(tokenizer, data_lib.ByteTokenizer):
        return tokenizer.encode, tokenizer.pad_token_id, tokenizer.eos_token_id, None
    def encode(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    adds_bos = tokenizer.bos_token_id is not None and tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    return encode, pad, tokenizer.eos_token_id, tokenizer.bos_token_id if adds_bos else None


def tokenize(pairs: data_lib.PreferencePairs, tokenizer, chat: bool, max_length: int) -> data_lib.TokenizedPairs:
    """data.tokenize_pairs; with `chat`, the template's user turn (its own special tokens, no bos) replaces
    format_prompt, the response follows without a leading space, eos (a chat model's end of turn) closes it."""
    encode, pad, eos, bos = token_ids(tokenizer)
    if chat:  # tokenize_pairs encodes format_prompt(prompt) and " " + response: map the first to the template
        rendered = {data_lib.format_prompt(p): encode(prompt_text(tokenizer, p, True)) for p in set(pairs.prompts)}
        plain, bos = encode, None
        def encode(text):
            return rendered[text] if text in rendered else plain(text[1:])
    return data_lib.tokenize_pairs(pairs, encode, max_length, pad, eos, bos)


def build_policy(lm: torch.nn.Module, hpt_config: HyperPromptConfig, lora_config: LoRAConfig, init_ids: list,
                 seed: int) -> PrefixLM:
    """Freeze the LM, add LoRA, put a (hyper) prompt in front; same seed -> same initial trainable weights.
    init_ids: k token ids whose embeddings initialise the prefix P (see `prefix_init_ids`)."""
    torch.manual_seed(seed)
    apply_lora(lm, lora_config)  # LoRA A drawn from the seed, B = 0
    table = lm.get_input_embeddings().weight.detach()
    init = table[torch.as_tensor(init_ids, device=table.device)].float().cpu()  # (k, d)
    return PrefixLM(lm, HyperPrompt(hpt_config, init_prefix=init).to(table.device))


def prefix_init_ids(encode, k: int) -> list:
    """Token ids of "Human: " cycled to k: a text init of P (Lester et al. 2021; the paper gives none) that keeps
    the untrained policy near p0 (default run: test errors start at 0.76, 0.82; ln 2 = 0.693 is policy = p0)."""
    ids = encode(data_lib.format_prompt("").split(" ")[0] + " ")  # "Human: "
    return [ids[i % len(ids)] for i in range(k)]


# ---- log-probs: the policy at w and the reference p0 (computed once, without gradients) --------------------
def policy_logps(model, batch: dict, w: Optional[torch.Tensor], use_prefix: bool = True, chunk: int = 4):
    """log p_theta(y|x, w) of both responses of each pair: (B, 2) tensor; the sum of the response's token
    log-probs. `model` is a PrefixLM or its DDP wrapper. The (2B, T, V) logits, a step's largest tensor,
    never exist whole: `chunk` sequences at a time go through the output embedding (recomputed in backward)."""
    B, n, T = batch["input_ids"].shape
    ids, resp = batch["input_ids"].view(B * n, T), batch["response_mask"].view(B * n, T)  # both responses at once
    first = int(resp.float().argmax(-1).min()) - 1  # the first position that predicts a response token
    hidden = model(ids, batch["attention_mask"].view(B * n, T), w=w, use_prefix=use_prefix, hidden=True)[:, first:]
    head = getattr(model, "module", model).lm.get_output_embeddings()  # frozen (LoRA and HPT train)

    def logps(h, y, r):  # logits (chunk, T - first, V)
        return sequence_logps(head(h), y, r)
    parts = zip(hidden.split(chunk), ids[:, first:].split(chunk), resp[:, first:].split(chunk))
    return torch.cat([checkpoint(logps, *p, use_reentrant=False) for p in parts]).view(B, n)


@torch.no_grad()
def all_logps(policy: PrefixLM, data: data_lib.TokenizedPairs, w: Optional[torch.Tensor], batch_size: int,
              device: str, index=None, reference: bool = False) -> torch.Tensor:
    """log p_theta(y|x, w) of both responses of the pairs `index` (default all): (len(index), 2) on CPU.
    reference=True: log p0(y|x), the base LM with LoRA off and no prefix (for the tiny default: the SFT model)."""
    index = torch.arange(len(data)) if index is None else torch.as_tensor(index)
    with lora_disabled(policy.lm) if reference else contextlib.nullcontext():
        return torch.cat([policy_logps(policy, data.batch(index[s:s + batch_size], device), w, not reference).cpu()
                          for s in range(0, len(index), batch_size)])


class ReferenceCache:
    """log p0(y|x) of a split, computed once per pair on first use (lazy: a short run pays for what it uses)."""

    def __init__(self, policy: PrefixLM, data: data_lib.TokenizedPairs, batch_size: int, device: str):
        self.policy, self.data, self.batch_size, self.device = policy, data, batch_size, device
        self.values = torch.full((len(data), 2), float("nan"))  # (N, 2), nan = not computed yet
        self.seconds = 0.0

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor:
        todo = index[torch.isnan(self.values[index, 0])]
        if len(todo):
            t0 = time.perf_counter()
            self.values[todo] = all_logps(self.policy, self.data, None, self.batch_size, self.device, todo, True)
            self.seconds += time.perf_counter() - t0
        return self.values[index]


def objective_losses(logps: torch.Tensor, ref_logps: torch.Tensor, labels: torch.Tensor, beta) -> torch.Tensor:
    """L = (L_help, L_harm), the mean Eq. 5 loss per objective (lipo_losses with n = 2 and one-hot labels is Eq. 5):
    (B, 2) log-probs, (B, 2, m) labels -> (m,); pairs without a preference for an objective are left out of its mean."""
    return mean_over_lists(lipo_losses(logps, ref_logps, labels, beta), has_preference(labels))


def reward_accuracy(logps: torch.Tensor, ref_logps: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per objective (m,): share of pairs whose preferred response has the larger reward log p_theta - log p0."""
    reward = logps - ref_logps  # (B, 2)
    first_preferred = labels[:, 0, :] > labels[:, 1, :]  # (B, m)
    return (((reward[:, 0] - reward[:, 1])[:, None] > 0) == first_preferred).float().mean(0)


# ---- training ----------------------------------------------------------------------------------------------
def supervised_stage(lm, data: data_lib.TokenizedPairs, steps: int, lr: float, batch_size: int, seed: int,
                     k: int, device: str, log) -> float:
    """Make p0: train the tiny LM on both responses of the training pairs (response tokens only: p0 is neutral
    between the objectives); seconds. Every other step the tokens sit at k..k+T-1, where the policy's prefix
    puts them (PrefixLM): a pretrained LM knows every position, a tiny one only those it was trained at."""
    t0 = time.perf_counter()
    ids_all, attn_all, resp_all = (t.flatten(0, 1) for t in (data.input_ids, data.attention_mask, data.response_mask))
    opt = torch.optim.AdamW(lm.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    lm.train()
    for step in range(1, steps + 1):
        idx = torch.randint(ids_all.shape[0], (batch_size,), generator=gen)
        T = int(attn_all[idx].sum(-1).max())
        ids, attn, resp = ids_all[idx, :T].to(device), attn_all[idx, :T].to(device), resp_all[idx, :T].to(device)
        positions = torch.arange(T, device=device) + k * (step % 2)  # (T,): 0..T-1 or k..k+T-1
        logits = lm(input_ids=ids, attention_mask=attn.long(), position_ids=positions.expand(len(idx), -1)).logits
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
              fixed_w: Optional[list], name: str, rank: int, world: int, log) -> list:
    """Train `policy` for args.max_steps steps; returns each step's seconds (log p0 for the cache excluded).

    fixed_w None = W-COS-DPO (w ~ Dir(alpha), one per step, fed to the Hyper Prompt); else a baseline at its own
    w. model: `policy` or its DDP wrapper; every rank draws the same batches and w and takes its shard rank::world,
    so with equal shards DDP's gradient average is the full-batch gradient."""
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=args.lr)
    data_gen, w_rng = torch.Generator().manual_seed(args.seed + 1), np.random.default_rng(args.seed + 2)
    beta = torch.tensor(args.beta, device=args.device)
    order, pos = torch.randperm(len(train), generator=data_gen), 0
    step_seconds, logged = [], []
    policy.train()  # dropout stays off (PrefixLM); switches activation checkpointing on when enabled
    quiet = True if args.quiet or rank else None  # tqdm: None = off when stderr is not a terminal
    for step in tqdm(range(1, args.max_steps + 1), desc=name, leave=False, disable=quiet):
        t_step, ref_seconds = time.perf_counter(), ref_train.seconds
        if pos + args.batch_size > len(order):  # a new epoch
            order, pos = torch.randperm(len(train), generator=data_gen), 0
        idx = order[pos:pos + args.batch_size][rank::world]
        pos += args.batch_size
        batch = train.batch(idx, args.device)
        w = sample_weights(args.alpha, 1, w_rng, args.vertex_prob)[0] if fixed_w is None else torch.tensor(fixed_w)
        w = w.to(args.device)
        logps = policy_logps(model, batch, w if fixed_w is None else None)  # (B, 2)
        ref = ref_train[idx].to(args.device)  # (B, 2) log p0, no gradient, computed once per pair (cached)
        L = objective_losses(logps, ref, batch["labels"], beta)  # (m,), Eq. 5 / Eq. 11
        loss = scalarize(L, w)  # L_w = w . L
        if fixed_w is None and args.penalty:
            # App. A.2: MINUS lambda cos(w, L) brings L along w, as the text after Eq. 18 says and COSMOS (which
            # it cites) does; Eq. 18 as printed adds it (--penalty < 0). Under DDP each rank uses its shard's L.
            loss = loss - args.penalty * cosine_penalty(L, w)
        if not torch.isfinite(loss):
            raise RuntimeError(f"[{name}] loss became {loss.item()} at step {step}; try a lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step_seconds.append(time.perf_counter() - t_step - (ref_train.seconds - ref_seconds))  # without log p0
        logged.append((loss.item(), *L.tolist(), *reward_accuracy(logps.detach(), ref, batch["labels"]).tolist()))
        if step % args.log_every == 0 or step == args.max_steps:
            mean, dt = np.mean(logged, 0), np.mean(step_seconds[-len(logged):])
            log(f"[{name}] step {step:5d}/{args.max_steps} | loss {mean[0]:.4f} | L help {mean[1]:.4f} harm "
                f"{mean[2]:.4f} | acc help {mean[3]:.2f} harm {mean[4]:.2f} | w {w[0].item():.2f},"
                f"{w[1].item():.2f} | {1e3 * dt:7.1f} ms/step")
            logged = []
    policy.eval()
    return step_seconds


# ---- a trained method = the policy network plus one trainable state per job; evaluation at any weight ------
def set_weight(policy: PrefixLM, method: str, jobs: list, w) -> Optional[torch.Tensor]:
    """Load the weights that serve w into `policy`; return the w to feed it (None = none). wcos: w goes to the
    Hyper Prompt; ls: the model trained at w; soup: theta_w = sum_j w_j theta_{e_j} (App. A.1)."""
    w = [float(v) for v in w]
    if method == "wcos":
        state = jobs[0]["state"]
    elif method == "ls":
        match = [j for j in jobs if np.allclose(j["fixed_w"], w, atol=1e-6)]
        if not match:
            raise ValueError(f"DPO-LS has models only at its training weights {[j['fixed_w'] for j in jobs]}, not {w}")
        state = match[0]["state"]
    else:
        state = interpolate_states([j["state"] for j in jobs], w)
    device = next(policy.parameters()).device
    loaded = policy.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=False)
    untrained = [k for k, p in policy.named_parameters() if p.requires_grad and k not in state]
    if loaded.unexpected_keys or untrained:  # (the frozen LM is missing from `state` on purpose)
        raise ValueError(f"checkpoint state does not fit the policy: unknown {loaded.unexpected_keys[:5]}, "
                         f"missing trainable {untrained[:5]}")
    return torch.tensor(w, device=device) if method == "wcos" else None


def evaluate(policy: PrefixLM, method: str, jobs: list, weights, test: data_lib.TokenizedPairs,
             ref_test: torch.Tensor, beta, batch_size: int, device: str) -> dict:
    """At each w: aux_error (W, m), the Eq. 5 loss per objective over test pairs (Fig. 5 axes), and logp_dev_iqr
    (W,), the IQR of log p_theta(y|x) - log p0(y|x) over all test responses (Fig. 5 inset)."""
    errors, iqrs = [], []
    for w in weights:
        logps = all_logps(policy, test, set_weight(policy, method, jobs, w), batch_size, device)  # (N, 2)
        errors.append(objective_losses(logps, ref_test, test.labels, torch.tensor(beta)).tolist())
        q1, q3 = np.percentile((logps - ref_test).flatten().numpy(), [25, 75])
        iqrs.append(float(q3 - q1))
    errors = np.array(errors)
    hv = hypervolume(errors, HV_REF, maximize=False) if (errors <= np.array(HV_REF)).all(1).any() else None
    if hv is None:
        print(f"warning: no point dominates the hypervolume reference {HV_REF}: hypervolume = null", file=sys.stderr)
    return dict(aux_error=errors.tolist(), logp_dev_iqr=iqrs, hypervolume=hv)


def load_trained(path: str, device: str = "cpu") -> tuple:
    """Rebuild a trained method from its checkpoint alone: (policy, ckpt, tokenizer). Then
    `set_weight(policy, ckpt["method"], ckpt["jobs"], w)` gives the w to feed the policy."""
    ckpt = load_checkpoint(path, KIND)
    lm, tokenizer = load_base(ckpt["base"], device)
    policy = build_policy(lm, HyperPromptConfig(**ckpt["hpt_config"]), LoRAConfig(**ckpt["lora_config"]),
                          [0] * ckpt["hpt_config"]["num_virtual_tokens"], 0)  # init irrelevant: overwritten
    set_weight(policy, ckpt["method"], ckpt["jobs"], ckpt["weights"][0])
    return policy.to(device), ckpt, tokenizer


def summary_table(results: dict) -> str:
    r = results
    lines = [f"\n{r['method']}: test error per objective (lower is better) at {len(r['weights'])} weights",
             f"{'w':>12} | {'helpfulness':>11} | {'harmlessness':>12} | {'IQR logp dev':>12}"]
    for w, e, e0, q in zip(r["weights"], r["aux_error"], r["aux_error_init"], r["logp_dev_iqr"]):
        lines.append(f"{w[0]:5.2f},{w[1]:5.2f} | {e[0]:11.4f} | {e[1]:12.4f} | {q:12.3f}   "
                     f"(before: {e0[0]:.4f}, {e0[1]:.4f})")
    hv = r["hypervolume"]
    lines.append(f"hypervolume (ref {HV_REF}) {'null' if hv is None else f'{hv:.4f}'} | train "
                 f"{r['train_seconds']:.1f} s | {r['num_params']:,} trainable parameters")
    return "\n".join(lines)


# ---- generation: answers at any w (and post-training temperature c) ----------------------------------------
def read_prompts(path: str) -> list:
    """Prompts from a file: one per line, or JSON lines with a "prompt" field (PKU-SafeRLHF); blank lines skipped."""
    prompts = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.lstrip().startswith("{"):
                try:
                    line = json.loads(line)["prompt"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise ValueError(f"{path}:{lineno}: a JSON line needs a string field 'prompt'") from None
            if str(line).strip():
                prompts.append(str(line).strip())
    if not prompts:
        raise ValueError(f"--prompts: {path} holds no prompt (expected one per line, or JSON lines with 'prompt')")
    return prompts


@torch.no_grad()
def sample(policy: PrefixLM, prompt_ids: list, w: Optional[torch.Tensor], max_new_tokens: int, eos_id: int,
           c: float = 1.0, temperature: float = 1.0, top_p: float = 1.0, generator=None) -> list:
    """Sample one answer (its ids, eos excluded), re-running the model on the whole sequence each step (no KV
    cache: simple, and cheap for short answers). c != 1: see the comment at logp0."""
    device = next(policy.parameters()).device
    ids = torch.tensor([prompt_ids], device=device)  # (1, T)
    for _ in range(max_new_tokens):
        mask = torch.ones_like(ids)
        logp = policy(ids, mask, w=w, keep=1)[0, -1].float().log_softmax(-1)  # (V,) log p_theta(. | x, y_<t, w)
        if c != 1:
            # Eq. 14 for an LLM: p0^(1-1/c) * p_theta^(1/c), renormalised per token. That is the per-token
            # approximation of the sequence-level mix, as decoding-time realignment (Liu et al. 2024) does.
            with lora_disabled(policy.lm):
                logp0 = policy(ids, mask, use_prefix=False, keep=1)[0, -1].float().log_softmax(-1)  # log p0(.|x, y_<t)
            logp = (1 - 1 / c) * logp0 + logp / c
        probs, order = (logp / temperature).softmax(-1).sort(descending=True)
        nucleus = probs.cumsum(0) - probs < top_p  # top-p: the most likely tokens until their mass reaches p
        token = order[nucleus][torch.multinomial(probs[nucleus], 1, generator=generator)]  # (1,)
        if int(token) == eos_id:
            break
        ids = torch.cat([ids, token[None]], 1)
    return ids[0, len(prompt_ids):].tolist()


def generate(argv: list) -> None:
    args = generate_parser().parse_args(argv)
    if min(args.c, args.temperature, args.top_p, args.max_new_tokens) <= 0 or args.top_p > 1:
        raise ValueError("--c, --temperature and --max-new-tokens must be > 0, and --top-p in (0, 1]")
    weights = [data_lib.parse_weight(w, len(OBJECTIVES)) for w in args.w]
    prompts = args.prompt if args.prompts is None else read_prompts(args.prompts)
    policy, ckpt, tokenizer = load_trained(args.checkpoint, resolve_device(args.device))
    states = [set_weight(policy, ckpt["method"], ckpt["jobs"], w) for w in weights]  # refuses a w it cannot serve
    encode, _, eos_id, bos_id = token_ids(tokenizer)
    chat, max_length = ckpt["tokenize"]["chat_template"], ckpt["tokenize"]["max_length"]
    gen = torch.Generator().manual_seed(args.seed)
    for prompt in prompts:
        ids = ([] if bos_id is None or chat else [bos_id]) + encode(prompt_text(tokenizer, prompt, chat))
        ids = ids[-(max_length // 2):]  # as in training: a prompt keeps its last max_length // 2 tokens
        print(f"\nprompt: {prompt}")
        for w, w_in in zip(weights, states):
            set_weight(policy, ckpt["method"], ckpt["jobs"], w)
            answer = sample(policy, ids, w_in, min(args.max_new_tokens, max_length - len(ids)), eos_id, args.c,
                            args.temperature, args.top_p, gen)
            text = (tokenizer.decode(answer) if isinstance(tokenizer, data_lib.ByteTokenizer)
                    else tokenizer.decode(answer, skip_special_tokens=True))
            print(f"  w = {w[0]:.2f},{w[1]:.2f} | {' '.join(text.split())}")


# ---- the run: data, base model, policy, training, evaluation, checkpoint -----------------------------------
def train(args: argparse.Namespace) -> dict:
    t_start = time.perf_counter()
    rank, world, args.device = setup_distributed(args.device)
    if args.batch_size % world:
        raise ValueError(f"--batch-size ({args.batch_size}) must be divisible by the number of processes ({world})")
    if args.threads or args.model is None:
        torch.set_num_threads(args.threads or 1)
    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    log_file = open(os.path.join(args.out, "train.log"), "a") if rank == 0 else None

    def log(msg: str) -> None:  # rank 0 alone logs
        if rank == 0:
            tqdm.write(msg)  # (print would break a progress bar)
            print(msg, file=log_file, flush=True)

    log("config: " + json.dumps(vars(args), sort_keys=True) + f" | world_size {world}")
    data_path = args.data
    if data_path is None:  # the embedded set, written once
        data_path = DEFAULT_DATA + ("" if args.num_pairs == 2000 else f"_{args.num_pairs}") + ".jsonl"
        if rank == 0 and not os.path.exists(data_path):
            data_lib.write_synthetic_preferences(data_path, num_pairs=args.num_pairs, seed=0)
            log(f"[data] wrote the embedded preference set to {data_path}")
        if world > 1:
            torch.distributed.barrier()
    pairs = data_lib.read_preferences(data_path)
    if args.test_data is None:
        train_pairs, test_pairs = data_lib.split_pairs(pairs, args.test_fraction, seed=args.seed)
    else:
        train_pairs, test_pairs = pairs, data_lib.read_preferences(args.test_data)
    if args.max_eval_pairs is not None and len(test_pairs) > args.max_eval_pairs:
        test_pairs = test_pairs.subset(range(args.max_eval_pairs))

    # ---- stage 1: the base model p0 ----
    if args.model is None:
        tokenizer = data_lib.ByteTokenizer()
        lm = tiny_gpt2(tokenizer.vocab_size, args.max_length + args.num_virtual_tokens, args.tiny_layers,
                       args.tiny_width, args.tiny_heads).to(args.device)  # + k: the tokens follow the prefix
        base = dict(source="tiny", config=lm.config.to_dict())
    else:
        base = dict(source="pretrained", gguf_file=args.gguf_file,
                    model=os.path.abspath(args.model) if os.path.isdir(args.model) else args.model)
        t0 = time.perf_counter()
        lm, tokenizer = load_base(base, args.device)
        log(f"[base] {type(lm).__name__}, {count_parameters(lm):,} parameters, {time.perf_counter() - t0:.0f} s")
    if args.gradient_checkpointing:  # renamed activation_checkpointing_enable in transformers 5; use_reentrant=False
        enable = getattr(lm, "activation_checkpointing_enable", None) or lm.gradient_checkpointing_enable
        enable({"use_reentrant": False})  # (non-reentrant: the inputs need no requires_grad; the prefix has it)
    chat = args.chat_template == "auto" and getattr(tokenizer, "chat_template", None) is not None
    train, test = (tokenize(p, tokenizer, chat, args.max_length) for p in (train_pairs, test_pairs))
    log(f"[data] {data_path}: {len(train)} train / {len(test)} test pairs ({args.test_data or 'held out'})"
        f" | objectives disagree on {pairs.disagreement():.1%} | {pairs.num_skipped_empty} skipped (empty response)"
        f" | truncated (max_length {args.max_length}): {train.num_prompts_truncated + test.num_prompts_truncated} "
        f"prompts, {train.num_responses_truncated + test.num_responses_truncated} responses | chat template: {chat}")
    sft_seconds = 0.0
    if args.sft_steps:
        sft_seconds = supervised_stage(lm, train, args.sft_steps, args.sft_lr, 2 * args.batch_size, args.seed,
                                       args.num_virtual_tokens, args.device, log)
    if base["source"] == "tiny":
        base["state"] = {k: v.detach().cpu().clone() for k, v in lm.state_dict().items()}

    # ---- the policy: frozen LM + LoRA + (hyper) prompt; the reference is the same net with both off ----
    hpt_config = HyperPromptConfig(lm.get_input_embeddings().weight.shape[1],  # baselines: no w (App. A.1)
                                   len(OBJECTIVES) if args.method == "wcos" else 0, args.num_virtual_tokens,
                                   args.hpt_rank, args.hpt_hidden)
    lora_config = LoRAConfig(rank=args.lora_rank, alpha=args.lora_alpha, targets=tuple(args.lora_targets))
    encode = token_ids(tokenizer)[0]
    policy = build_policy(lm, hpt_config, lora_config, prefix_init_ids(encode, args.num_virtual_tokens),
                          args.seed).to(args.device)
    model = policy if world == 1 else torch.nn.parallel.DistributedDataParallel(policy)  # averages gradients
    t0 = time.perf_counter()
    ref_train = ReferenceCache(policy, train, 2 * args.batch_size, args.device)  # filled on first use
    ref_test = all_logps(policy, test, None, 2 * args.batch_size, args.device, reference=True)  # (N_test, 2)
    log(f"[ref] log p0 of the {2 * len(test)} test responses: {time.perf_counter() - t0:.1f} s (training: cached)")
    init_state, per_model_params = trainable_state(policy), count_parameters(policy)

    # ---- stage 2: preference fine-tuning (one job for W-COS-DPO, several for the baselines) ----
    job_ws = {"wcos": [None], "ls": args.weights, "soup": np.eye(len(OBJECTIVES)).tolist()}[args.method]
    init_eval = None
    if rank == 0:  # the untrained policy (LoRA at 0, prefix at its initialisation), for "before vs after"
        init_eval = evaluate(policy, args.method, [dict(fixed_w=w, state=init_state) for w in job_ws], args.weights,
                             test, ref_test, args.beta, 2 * args.batch_size, args.device)
    jobs, step_seconds = [], []
    for i, fixed_w in enumerate(job_ws):
        name = args.method if fixed_w is None else f"{args.method}{i + 1}"
        policy.load_state_dict(init_state, strict=False)  # every job starts from the same initialisation
        log(f"[{name}] training {per_model_params:,} parameters for {args.max_steps} steps"
            + ("" if fixed_w is None else f" at w = {np.round(fixed_w, 3).tolist()}"))
        seconds = train_job(args, model, policy, train, ref_train, fixed_w, name, rank, world, log)
        step_seconds += seconds
        jobs.append(dict(name=name, fixed_w=fixed_w, state=trainable_state(policy), seconds=sum(seconds)))
    train_seconds = sum(step_seconds) + ref_train.seconds  # the reference log-probs are part of the training cost
    log(f"[ref] log p0 of {int((~torch.isnan(ref_train.values[:, 0])).sum())} training pairs (this rank): "
        f"{ref_train.seconds:.1f} s (counted in train_seconds, not in ms/step)")

    # ---- stage 3: evaluation, checkpoint, results (rank 0 alone) ----
    results = None
    if rank == 0:
        ckpt = dict(kind=KIND, method=args.method, objectives=OBJECTIVES, weights=args.weights, base=base,
                    hpt_config=hpt_config.to_dict(), lora_config=lora_config.to_dict(), jobs=jobs, config=vars(args),
                    data=data_path, tokenize=dict(max_length=args.max_length, chat_template=chat))
        data_lib.atomic_save(ckpt, os.path.join(args.out, "model.pt"))
        t0 = time.perf_counter()
        result = evaluate(policy, args.method, jobs, args.weights, test, ref_test, args.beta, 2 * args.batch_size,
                          args.device)
        results = dict(method=args.method, objectives=OBJECTIVES, weights=args.weights, **result, hv_ref=list(HV_REF),
                       train_seconds=train_seconds, num_params=per_model_params * len(jobs),
                       aux_error_init=init_eval["aux_error"], logp_dev_iqr_init=init_eval["logp_dev_iqr"],
                       hypervolume_init=init_eval["hypervolume"], sft_seconds=sft_seconds,
                       seconds_per_step_median=float(np.median(step_seconds)), world_size=world,
                       eval_seconds=time.perf_counter() - t0, num_train_pairs=len(train), num_test_pairs=len(test),
                       data=data_path, test_data=args.test_data, beta=args.beta, seed=args.seed, config=vars(args))
        data_lib.atomic_save(results, os.path.join(args.out, "results.json"))
        log(summary_table(results))
        log(f"total {time.perf_counter() - t_start:.1f} s | wrote {args.out}/results.json and {args.out}/model.pt")
        log_file.close()
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return results


def main(argv: Optional[list] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["generate"]:
            generate(argv[1:])
        else:
            train(resolve_args(build_parser().parse_args(argv)))
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
