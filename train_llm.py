"""LLM alignment with COS-DPO (paper Sec. 4.2, Fig. 4-5, Table 2): Hyper Prompt Tuning + LoRA, W-COS-DPO on
PKU-SafeRLHF-format preference pairs with two objectives, helpfulness and harmlessness (m = 2, n = 2).

    stage 1  the base model p0: a tiny GPT-2 built here (no download) with a byte-level BPE learnt on the
             training texts, trained briefly on the responses of the training pairs; or, with --model /
             --gguf-file, a pretrained LM as it is, with its own tokenizer
    stage 2  preference fine-tuning, the LM frozen apart from LoRA (alpha 8, r 4):
             --method wcos  W-COS-DPO (Alg. 1/3): Hyper Prompt (k = 8, r = 4) fed w ~ Dir(alpha), one w per step
                            (tiny default: a quarter of the draws at a unit vector e_j, --vertex-prob)
             --method ls    DPO-LS: one model per evaluation weight         } baselines (App. A.1), with plain
             --method soup  DPO Soup: 2 unit-weight models, interpolated    } prompt tuning (k = 8) + LoRA
    stage 3  at the evaluation weights: test error per objective (the Eq. 5 loss, Fig. 5 axes), the IQR of
             log p_theta(y|x) - log p0(y|x) (Fig. 5 inset), hypervolume with reference (1.1, 1.1) (Table 2);
             on the embedded set also the judge: shares of sampled answers that are well-formed, helpful, safe

Run (from the repository folder):
    python train_llm.py                                    # embedded data, tiny GPT-2, W-COS-DPO (2 min, 1 core)
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
from models import (
    HyperPrompt,
    HyperPromptConfig,
    LoRAConfig,
    PrefixLM,
    apply_lora,
    count_parameters,
    interpolate_states,
    load_checkpoint,
    lora_disabled,
    resolve_device,
    sequence_logps,
    trainable_state,
)
from pareto import hypervolume, weight_grid

METHODS = ("wcos", "ls", "soup")
OBJECTIVES = list(data_lib.PREFERENCE_OBJECTIVES)
KIND = "llm"  # the checkpoint kind models.load_checkpoint checks
HV_REF = (1.1, 1.1)  # Table 2
JUDGE_KEYS = ("well_formed", "helpful", "safe")  # data.judge_answer's verdicts
JUDGE_SAMPLING = dict(temperature=0.7, top_p=0.9)  # generate's defaults: the judge reads the text a user sees
STREAMS = ("split", "base", "sft", "policy", "batches", "w", "judge")  # the run's independent random streams
TINY_TOKENIZERS = (data_lib.ByteTokenizer, data_lib.BPETokenizer)  # ours; any other is a transformers one
DEFAULT_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "synthetic_preferences_v1")
# The tiny default departs from the paper in three settings (README decisions; measured in docs/RESULTS.md):
# beta 0.5 and an NLL term keep the tiny GPT-2's sampled answers well-formed, which the paper's beta 0.1 and
# plain DPO loss do not; a quarter of W-COS-DPO's w draws at the ends e_j makes its text follow w at the ends
# within the baselines' step budget. --paper-settings (and any --model) use the paper's values.
TINY_SETTINGS = dict(beta="0.5", nll_weight=2.0, vertex_prob=0.25)
PAPER_SETTINGS = dict(beta="0.1", nll_weight=0.0, vertex_prob=0.0)
POSITIVE_INTS = (
    "max_steps",
    "batch_size",
    "num_virtual_tokens",
    "hpt_rank",
    "hpt_hidden",
    "lora_rank",
    "tiny_layers",
    "tiny_width",
    "tiny_heads",
    "log_every",
    "num_pairs",
    "max_eval_pairs",
    "judge_samples",
)


# ---- command line ------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="COS-DPO LLM alignment (train); subcommand: `generate CKPT ...`")
    add_data_arguments(p.add_argument_group("data"))
    add_model_arguments(p.add_argument_group("base model and policy"))
    add_method_arguments(p.add_argument_group("method and training"))
    add_run_arguments(p.add_argument_group("run"))
    return p


def add_data_arguments(g) -> None:
    a = g.add_argument
    a("--data", default=None, help="PKU-SafeRLHF JSON lines; default: the embedded set, generated into data/")
    a(
        "--test-data",
        default=None,
        help="evaluate on this file (e.g. PKU-SafeRLHF's test split), not on --data",
    )
    a("--num-pairs", type=int, default=2000, help="size of the embedded set (ignored with --data)")
    a("--data-seed", type=int, default=0, help="seed of the embedded set's generator (ignored with --data)")
    a("--test-fraction", type=float, default=0.1, help="share of --data held out for evaluation")
    a(
        "--max-eval-pairs",
        type=int,
        default=None,
        help="evaluate on at most this many test pairs (default all)",
    )
    a("--max-length", type=int, default=256, help="tokens per prompt + response (prompt <= half, see data)")
    a(
        "--judge-prompts",
        type=int,
        default=None,
        help="embedded set: distinct test prompts the judge samples at each evaluation w (default 20 for the "
        "tiny model, 0 = no judge with --model; other data: no judge)",
    )
    a("--judge-samples", type=int, default=8, help="answers sampled per judged prompt and w")


def add_model_arguments(g) -> None:
    a = g.add_argument
    a(
        "--model",
        default=None,
        help="a causal LM folder (or hub name when online); default: a tiny GPT-2 made here",
    )
    a("--gguf-file", default=None, help="a GGUF file to load (needs gguf, accelerate); --model: its folder")
    a(
        "--chat-template",
        choices=("auto", "none"),
        default="auto",
        help="auto: the tokenizer's chat template when it has one (training, evaluation, generation); "
        "none: 'Human: ...\\nAssistant:'",
    )
    a("--gradient-checkpointing", action="store_true", help="recompute activations in the backward pass")
    a("--tiny-layers", type=int, default=2, help="tiny GPT-2: layers")
    a("--tiny-width", type=int, default=64, help="tiny GPT-2: embedding width")
    a("--tiny-heads", type=int, default=4, help="tiny GPT-2: attention heads")
    a(
        "--tokenizer",
        choices=("bpe", "byte"),
        default=None,
        help="tiny GPT-2 (default bpe): a byte-level BPE learnt on the training split (stored in model.pt) "
        "or raw UTF-8 bytes; --model keeps its own tokenizer",
    )
    a(
        "--sft-steps",
        type=int,
        default=None,
        help="supervised steps that make p0 (default: 400 tiny, 0 --model)",
    )
    a("--sft-lr", type=float, default=3e-3, help="AdamW learning rate of the supervised stage (tiny model)")
    a("--num-virtual-tokens", type=int, default=8, help="prefix length k (paper 8)")
    a("--hpt-rank", type=int, default=4, help="rank r of the HPT mask A @ B (paper 4)")
    a("--hpt-hidden", type=int, default=64, help="width of the HPT MLPs")
    a("--lora-rank", type=int, default=4, help="LoRA rank (paper 4)")
    a("--lora-alpha", type=float, default=8.0, help="LoRA alpha (paper 8)")
    a("--lora-targets", default="c_attn,q_proj,v_proj", help="comma-separated module names that get LoRA")


def add_method_arguments(g) -> None:
    a = g.add_argument
    a("--method", choices=METHODS, default="wcos", help="wcos (W-COS-DPO) or a Table 2 baseline: ls, soup")
    a("--max-steps", type=int, default=500, help="preference-training steps per trained model (every method)")
    a(
        "--alpha",
        default="0.5",
        help="Dirichlet concentration for w: one value or one per objective (App. A.6.1)",
    )
    a(
        "--beta",
        default=None,
        help="DPO temperature: one value or one per objective (default 0.5 tiny, 0.1 paper)",
    )
    a(
        "--nll-weight",
        type=float,
        default=None,
        help="gamma: objective j's loss adds gamma x the per-token NLL of the response it prefers (RPO); "
        "default 2 tiny, 0 paper (the DPO loss alone)",
    )
    a(
        "--penalty",
        type=float,
        default=0.0,
        help="cosine penalty lambda (App. A.2, wcos only): minimises L_w - lambda cos(w, L); negative = the "
        "sign printed in Eq. 18",
    )
    a(
        "--vertex-prob",
        type=float,
        default=None,
        help="wcos only: probability that a step's w is a unit vector e_j, j uniform, instead of a Dir(alpha) "
        "draw (default 0.25 tiny, 0 paper)",
    )
    a(
        "--paper-settings",
        action="store_true",
        help="the tiny model with the paper's beta 0.1, DPO loss alone and w ~ Dir(alpha) (a --model always)",
    )
    a("--lr", type=float, default=5e-3, help="Adam learning rate of the preference stage")
    a("--batch-size", type=int, default=16, help="preference pairs per step, over all ranks")
    a("--weights", default=None, help="evaluation weights 'w1,w2;w1,w2;...' (default: the 11-point grid)")


def add_run_arguments(g) -> None:
    a = g.add_argument
    a("--out", default="runs/llm", help="output folder")
    a("--seed", type=int, default=0, help="seeds data split, initialisation, batches, w draws and the judge")
    a("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda when available")
    a(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: 1 for the tiny model, else torch's)",
    )
    a("--log-every", type=int, default=25, help="steps between log lines")
    a("--quiet", action="store_true", help="no progress bar (there is none when stderr is not a terminal)")


def generate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train_llm.py generate", description="Answers of a trained model at each w."
    )
    a = p.add_argument
    a("checkpoint", help="model.pt written by train_llm.py")
    a("--w", action="append", required=True, help="weight 'w1,w2' on the simplex; repeat for several")
    a(
        "--c",
        type=float,
        default=1.0,
        help="post-training temperature (Eq. 14): sample from p0^(1-1/c) p_theta^(1/c), per token (c = 1: the "
        "policy itself)",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", action="append", help="a prompt; repeat for several")
    src.add_argument(
        "--prompts", help="a file: one prompt per line, or PKU-SafeRLHF JSON lines (prompt field)"
    )
    a("--max-new-tokens", type=int, default=128)
    a("--temperature", type=float, default=JUDGE_SAMPLING["temperature"], help="sampling temperature (> 0)")
    a(
        "--top-p",
        type=float,
        default=JUDGE_SAMPLING["top_p"],
        help="nucleus sampling: smallest token set of this mass (0 < p <= 1)",
    )
    a("--seed", type=int, default=0)
    a("--device", choices=("auto", "cpu", "cuda"), default="auto")
    return p


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the defaults that depend on other flags (tiny model or --model), parse lists, then check_args."""
    m = len(OBJECTIVES)
    tiny = args.model is None and args.gguf_file is None
    settings = dict(TINY_SETTINGS if tiny and not args.paper_settings else PAPER_SETTINGS)
    if args.method != "wcos":
        settings["vertex_prob"] = 0.0  # the baselines train at fixed weights
    for name, value in settings.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.alpha = data_lib.parse_floats(args.alpha, "alpha", m)
    args.beta = data_lib.parse_floats(args.beta, "beta", m)
    if args.weights is None:
        args.weights = weight_grid(m).tolist()
    else:
        args.weights = [data_lib.parse_weight(part, m, "weights") for part in args.weights.split(";")]
    args.lora_targets = [t.strip() for t in args.lora_targets.split(",") if t.strip()]
    if args.gguf_file is not None and args.model is None:
        args.model, args.gguf_file = os.path.split(os.path.abspath(args.gguf_file))
    if args.gguf_file is not None and not os.path.isfile(os.path.join(args.model, args.gguf_file)):
        raise FileNotFoundError(f"--gguf-file: no file {os.path.join(args.model, args.gguf_file)}")
    if not tiny and args.tokenizer:
        raise ValueError(
            "--tokenizer is for the tiny model; --model and --gguf-file keep their own tokenizer"
        )
    if args.sft_steps is None:
        args.sft_steps = (
            400 if tiny else 0
        )  # 400: the tiny p0's NLL per token is flat (0.19-0.21) from step 200
    if args.judge_prompts is None:
        args.judge_prompts = 20 if tiny else 0
    args.tokenizer = (args.tokenizer or "bpe") if tiny else None
    check_args(args)
    args.device = resolve_device(args.device)
    return args


def check_args(args: argparse.Namespace) -> None:
    """One clear error per bad argument."""
    if args.model and args.sft_steps > 0:
        raise ValueError(
            "--sft-steps > 0 with --model: the checkpoint stores a pretrained base by name, so p0 must be the "
            "model as loaded; fine-tune it separately and pass the result as --model"
        )
    for name in POSITIVE_INTS:
        value = getattr(args, name)
        if value is not None and value < 1:  # (max_eval_pairs None = all)
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    checks = [
        (args.sft_steps >= 0, "--sft-steps must be >= 0"),
        (args.max_length >= 8, "--max-length must be >= 8"),
        (args.judge_prompts >= 0, "--judge-prompts must be >= 0"),
        (args.nll_weight >= 0, "--nll-weight must be >= 0"),
        (args.tiny_width % args.tiny_heads == 0, "--tiny-width must be divisible by --tiny-heads"),
        (min(args.lr, args.sft_lr, args.lora_alpha) > 0, "--lr, --sft-lr and --lora-alpha must be > 0"),
        (0 < args.test_fraction < 1, "--test-fraction must be in (0, 1)"),
        (args.penalty == 0 or args.method == "wcos", "--penalty is for --method wcos only (COS-DPO)"),
        (0 <= args.vertex_prob <= 1, "--vertex-prob must be a probability in [0, 1]"),
        (not args.vertex_prob or args.method == "wcos", "--vertex-prob is for --method wcos only"),
        (args.lora_targets, "--lora-targets must name at least one module"),
        (
            not args.gguf_file or all(importlib.util.find_spec(p) for p in ("gguf", "accelerate")),
            "--gguf-file needs `pip install gguf accelerate` (transformers reads GGUF with them)",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    for flag, path in (("--data", args.data), ("--test-data", args.test_data)):
        if path and not os.path.isfile(path):
            raise FileNotFoundError(f"{flag}: no file {path} (expected PKU-SafeRLHF JSON lines)")


# ---- helpers: random streams, processes, logging -----------------------------------------------------------
def random_streams(seed: int) -> dict:
    """{use: seed} for each of STREAMS, from numpy's SeedSequence(seed).spawn: statistically independent
    streams, so no two uses of a run, and no two runs' seeds, share one (seed, seed + 1, ... would)."""
    children = np.random.SeedSequence(seed).spawn(len(STREAMS))
    return {use: int(child.generate_state(1, np.uint64)[0]) for use, child in zip(STREAMS, children)}


def setup_distributed(device: str) -> tuple:
    """(rank, world_size, device); under torchrun, join the process group (nccl on GPU, gloo on CPU)."""
    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return 0, 1, device
    if device == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    torch.distributed.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), device


def open_log(args, rank: int):
    """(log function, file): rank 0 alone logs, to the terminal and to OUT/train.log."""
    log_file = open(os.path.join(args.out, "train.log"), "a") if rank == 0 else None

    def log(msg: str) -> None:
        if rank == 0:
            tqdm.write(msg)  # (print would break a progress bar)
            print(msg, file=log_file, flush=True)

    return log, log_file


# ---- stage 1: the base LM (tiny or pretrained), its tokenizer, p0 ------------------------------------------
def tiny_gpt2(
    vocab_size: int, max_positions: int, layers: int, width: int, heads: int, pad_id: int = 0, eos_id: int = 1
) -> torch.nn.Module:
    """A small GPT-2 from a config (no download); dropout 0 so that the policy equals the reference exactly."""
    from transformers import GPT2Config, GPT2LMHeadModel  # lazy: only the LLM path pays for transformers

    return GPT2LMHeadModel(
        GPT2Config(
            vocab_size=vocab_size,
            n_positions=max_positions,
            n_embd=width,
            n_layer=layers,
            n_head=heads,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=eos_id,
            eos_token_id=eos_id,
            pad_token_id=pad_id,
        )
    )


def tiny_tokenizer(kind: str, pairs: data_lib.PreferencePairs):
    """The tiny model's tokenizer: raw bytes, or a byte-level BPE learnt on exactly the texts the model reads
    (tokenize_pairs' prompt and " " + response strings): about one token per word instead of one per letter,
    so p0 learns to spell its answers in a few hundred steps and every sequence is 4-5x shorter."""
    if kind == "byte":
        return data_lib.ByteTokenizer()
    texts = [data_lib.format_prompt(p) for p in pairs.prompts] + [
        " " + r for pair in pairs.responses for r in pair
    ]
    return data_lib.train_bpe(texts)


def tokenizer_spec(tokenizer) -> str:
    """How a checkpoint stores the tiny model's tokenizer: "byte", or the BPE's JSON string."""
    return "byte" if isinstance(tokenizer, data_lib.ByteTokenizer) else tokenizer.to_json()


def load_tiny_tokenizer(spec: str):
    if spec == "byte":
        return data_lib.ByteTokenizer()
    try:
        return data_lib.BPETokenizer(spec)
    except Exception as err:  # the tokenizers library raises its own Exception type
        raise ValueError(
            f"the checkpoint's tokenizer is neither 'byte' nor a tokenizers JSON string: {err}"
        ) from None


def load_base(base: dict, device: str) -> tuple:
    """(lm, tokenizer) from a checkpoint's `base` entry: {"source": "tiny", "config": ..., "state": ...,
    "tokenizer": "byte" or a BPE's JSON} or {"source": "pretrained", "model": NAME_OR_PATH, "gguf_file": FILE
    or None}."""
    if base["source"] == "tiny":
        from transformers import GPT2Config, GPT2LMHeadModel

        lm = GPT2LMHeadModel(GPT2Config(**base["config"]))
        lm.load_state_dict(base["state"])
        # (no entry: a byte-level model)
        return lm.to(device), load_tiny_tokenizer(base.get("tokenizer", "byte"))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {} if base["gguf_file"] is None else dict(gguf_file=base["gguf_file"])
    return (
        AutoModelForCausalLM.from_pretrained(base["model"], **kwargs).to(device),
        AutoTokenizer.from_pretrained(base["model"], **kwargs),
    )


def prompt_text(tokenizer, prompt: str, chat: bool) -> str:
    """What the model reads before its answer: the chat template's user turn, opened for the assistant's
    answer, or data.format_prompt's "Human: ...\\nAssistant:" (PKU-SafeRLHF's dialogue style)."""
    if not chat:
        return data_lib.format_prompt(prompt)
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )


def decode(tokenizer, ids: list) -> str:
    """Text of token ids, special tokens (pad, eos, a chat model's markers) left out."""
    if isinstance(tokenizer, TINY_TOKENIZERS):
        return tokenizer.decode(ids)
    return tokenizer.decode(ids, skip_special_tokens=True)


def token_ids(tokenizer) -> tuple:
    """(encode, pad_id, eos_id, bos_id) from the tiny model's tokenizer or a HF tokenizer. bos only when the
    tokenizer itself adds one; pad falls back to eos (padding is masked out everywhere, its id never matters)."""
    if isinstance(tokenizer, TINY_TOKENIZERS):
        return tokenizer.encode, tokenizer.pad_token_id, tokenizer.eos_token_id, None

    def encode(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    adds_bos = tokenizer.bos_token_id is not None and tokenizer("a")["input_ids"][:1] == [
        tokenizer.bos_token_id
    ]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    return encode, pad, tokenizer.eos_token_id, tokenizer.bos_token_id if adds_bos else None


def prompt_ids(tokenizer, prompt: str, chat: bool, max_length: int) -> list:
    """The ids a model reads before its answer, as tokenize_pairs makes them: [bos] + prompt, the last
    max_length // 2 ids kept."""
    encode, _, _, bos_id = token_ids(tokenizer)
    ids = ([] if bos_id is None or chat else [bos_id]) + encode(prompt_text(tokenizer, prompt, chat))
    return ids[-(max_length // 2) :]


def tokenize(
    pairs: data_lib.PreferencePairs, tokenizer, chat: bool, max_length: int
) -> data_lib.TokenizedPairs:
    """data.tokenize_pairs; with `chat`, the template's user turn (its own special tokens, no bos) replaces
    format_prompt, the response follows without a leading space, eos (a chat model's end of turn) closes it."""
    encode, pad, eos, bos = token_ids(tokenizer)
    if chat:  # tokenize_pairs encodes format_prompt(prompt) and " " + response: map the first to the template
        rendered = {
            data_lib.format_prompt(p): encode(prompt_text(tokenizer, p, True)) for p in set(pairs.prompts)
        }
        plain, bos = encode, None

        def encode(text):
            return rendered[text] if text in rendered else plain(text[1:])

    return data_lib.tokenize_pairs(pairs, encode, max_length, pad, eos, bos)


def supervised_stage(
    lm,
    data: data_lib.TokenizedPairs,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    prefix_ids: list,
    device: str,
    log,
) -> float:
    """Make p0: train the tiny LM on both responses of the training pairs (response tokens only: p0 is neutral
    between the objectives); seconds. Every other step the sequences follow prefix_ids, the tokens that
    initialise the policy's prefix (prefix_init_ids): a pretrained LM reads on after any prefix, a tiny one only
    after what it was trained on, so then the untrained policy writes as p0 does. The learning rate decays to 0
    (cosine): p0 ends at a settled point, not wherever the last noisy step left it."""
    t0 = time.perf_counter()
    ids_all, attn_all, resp_all = (
        t.flatten(0, 1) for t in (data.input_ids, data.attention_mask, data.response_mask)
    )
    opt = torch.optim.AdamW(lm.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    lm.train()
    for step in range(1, steps + 1):
        idx = torch.randint(ids_all.shape[0], (batch_size,), generator=gen)
        T = int(attn_all[idx].sum(-1).max())
        ids, attn, resp = (
            ids_all[idx, :T].to(device),
            attn_all[idx, :T].to(device),
            resp_all[idx, :T].to(device),
        )
        if step % 2 and prefix_ids:  # (B, k + T): the prefix's tokens in front, read but not scored
            ids = torch.cat([torch.tensor(prefix_ids, device=device).expand(len(idx), -1), ids], 1)
            attn, resp = (
                torch.cat([t.new_full((len(idx), len(prefix_ids)), fill), t], 1)
                for t, fill in ((attn, True), (resp, False))
            )
        logits = lm(input_ids=ids, attention_mask=attn.long()).logits
        loss = -sequence_logps(logits, ids, resp).sum() / resp[:, 1:].sum()  # mean NLL per response token
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        opt.step()
        schedule.step()
        if step % 100 == 0 or step == steps:
            log(f"[sft] step {step:5d}/{steps} | nll/token {loss.item():.4f}")
    lm.eval()
    return time.perf_counter() - t0


# ---- the policy: the frozen LM + LoRA + a (hyper) prompt; p0 is the same network with both off -------------
def build_policy(
    lm: torch.nn.Module, hpt_config: HyperPromptConfig, lora_config: LoRAConfig, init_ids: list, seed: int
) -> PrefixLM:
    """Freeze the LM, add LoRA, put a (hyper) prompt in front; same seed -> same initial trainable weights.
    init_ids: k token ids whose embeddings initialise the prefix P (see `prefix_init_ids`)."""
    torch.manual_seed(seed)
    apply_lora(lm, lora_config)  # LoRA A drawn from the seed, B = 0
    table = lm.get_input_embeddings().weight.detach()
    init = table[torch.as_tensor(init_ids, device=table.device)].float().cpu()  # (k, d)
    return PrefixLM(lm, HyperPrompt(hpt_config, init_prefix=init).to(table.device))


def prefix_init_ids(encode, k: int) -> list:
    """Token ids of "Human: " cycled to k: a text init of P (Lester et al. 2021; the paper gives none) that keeps
    the untrained policy near p0 (default run: test errors start at 0.689, 0.692; ln 2 = 0.693 is policy = p0)."""
    ids = encode(data_lib.format_prompt("").split(" ")[0] + " ")  # "Human: "
    return [ids[i % len(ids)] for i in range(k)]


# ---- log-probs: the policy at w and the reference p0 (computed once, without gradients) --------------------
def policy_logps(model, batch: dict, w: Optional[torch.Tensor], use_prefix: bool = True, chunk: int = 4):
    """log p_theta(y|x, w) of both responses of each pair: (B, 2) tensor; the sum of the response's token
    log-probs. `model` is a PrefixLM or its DDP wrapper. The (2B, T, V) logits, a step's largest tensor,
    never exist whole: `chunk` sequences at a time go through the output embedding (recomputed in backward)."""
    B, n, T = batch["input_ids"].shape
    # both responses at once
    ids, resp = (
        batch["input_ids"].view(B * n, T),
        batch["response_mask"].view(B * n, T),
    )
    first = int(resp.float().argmax(-1).min()) - 1  # the first position that predicts a response token
    hidden = model(ids, batch["attention_mask"].view(B * n, T), w=w, use_prefix=use_prefix, hidden=True)[
        :, first:
    ]
    head = getattr(model, "module", model).lm.get_output_embeddings()  # frozen (LoRA and HPT train)

    def logps(h, y, r):  # logits (chunk, T - first, V)
        return sequence_logps(head(h), y, r)

    parts = zip(hidden.split(chunk), ids[:, first:].split(chunk), resp[:, first:].split(chunk))
    return torch.cat([checkpoint(logps, *p, use_reentrant=False) for p in parts]).view(B, n)


@torch.no_grad()
def all_logps(
    policy: PrefixLM,
    data: data_lib.TokenizedPairs,
    w: Optional[torch.Tensor],
    batch_size: int,
    device: str,
    index=None,
    reference: bool = False,
) -> torch.Tensor:
    """log p_theta(y|x, w) of both responses of the pairs `index` (default all): (len(index), 2) on CPU.
    reference=True: log p0(y|x), the base LM with LoRA off and no prefix (for the tiny default: the SFT model)."""
    index = torch.arange(len(data)) if index is None else torch.as_tensor(index)
    with lora_disabled(policy.lm) if reference else contextlib.nullcontext():
        return torch.cat(
            [
                policy_logps(policy, data.batch(index[s : s + batch_size], device), w, not reference).cpu()
                for s in range(0, len(index), batch_size)
            ]
        )


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
            self.values[todo] = all_logps(
                self.policy, self.data, None, self.batch_size, self.device, todo, True
            )
            self.seconds += time.perf_counter() - t0
        return self.values[index]


def objective_losses(
    logps: torch.Tensor, ref_logps: torch.Tensor, labels: torch.Tensor, beta
) -> torch.Tensor:
    """L = (L_help, L_harm), the mean Eq. 5 loss per objective (lipo_losses with n = 2 and one-hot labels is Eq. 5):
    (B, 2) log-probs, (B, 2, m) labels -> (m,); pairs without a preference for an objective are left out of its mean."""
    return mean_over_lists(lipo_losses(logps, ref_logps, labels, beta), has_preference(labels))


def preferred_nll(logps: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """N = (N_help, N_harm): per objective, the mean per-token negative log-likelihood of the response it prefers,
    the anchor of RPO (Pang et al. 2024, L_DPO + gamma * NLL(y_w) / |y_w|): (B, 2) log-probs and token counts,
    (B, 2, m) labels -> (m,). DPO alone only asks the preferred answer to gain on the other one; both may lose,
    their mass moving to answers no pair holds (likelihood displacement); the anchor keeps the preferred one likely."""
    per_token = -logps / lengths  # (B, 2)
    return mean_over_lists((labels * per_token[..., None]).sum(1), has_preference(labels))


def reward_accuracy(logps: torch.Tensor, ref_logps: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per objective (m,): share of pairs whose preferred response has the larger reward log p_theta - log p0."""
    reward = logps - ref_logps  # (B, 2)
    first_preferred = labels[:, 0, :] > labels[:, 1, :]  # (B, m)
    return (((reward[:, 0] - reward[:, 1])[:, None] > 0) == first_preferred).float().mean(0)


# ---- stage 2: one training step of each method (Alg. 1, App. A.1) ------------------------------------------
def scalarized_loss(args, logps: torch.Tensor, ref: torch.Tensor, batch: dict, w: torch.Tensor) -> tuple:
    """(L_w, L): the loss vector L (m,) of Eq. 5 per objective (Eq. 11) and its linear scalarisation
    L_w = w . L (Sec. 3); with --nll-weight gamma, objective j's loss is L_j + gamma N_j (preferred_nll),
    scalarised by the same w. The pairwise Eq. 5 is lipo_losses with two items (the test
    test_pairwise_dpo_equals_listwise_with_two_items shows it equals losses.dpo_loss)."""
    L = objective_losses(logps, ref, batch["labels"], torch.tensor(args.beta, device=ref.device))
    loss = scalarize(L, w)
    if args.nll_weight:
        lengths = batch["response_mask"][..., 1:].sum(-1)  # (B, 2) the tokens each log-prob sums over
        loss = loss + args.nll_weight * scalarize(preferred_nll(logps, lengths, batch["labels"]), w)
    return loss, L


def wcos_step(args, model, batch: dict, ref: torch.Tensor, w_rng: np.random.Generator) -> tuple:
    """One step of W-COS-DPO (Alg. 1): sample w ~ Dir(alpha) (with --vertex-prob p: a unit vector e_j instead,
    with probability p), log-probs with the Hyper Prompt at w, the loss vector L, scalarise, penalty (App. A.2).
    Returns (loss, L, log-probs (B, 2), w)."""
    w = sample_weights(args.alpha, 1, w_rng, args.vertex_prob)[0].to(ref.device)
    logps = policy_logps(model, batch, w)
    loss, L = scalarized_loss(args, logps, ref, batch, w)
    if args.penalty:
        # App. A.2: MINUS lambda cos(w, L) brings L along w, as the text after Eq. 18 says and COSMOS (which
        # it cites) does; Eq. 18 as printed adds it (--penalty < 0). Under DDP each rank uses its shard's L.
        loss = loss - args.penalty * cosine_penalty(L, w)
    return loss, L, logps, w


def baseline_step(args, model, batch: dict, ref: torch.Tensor, w: list) -> tuple:
    """One step of a DPO-LS model or a DPO Soup ingredient (App. A.1): plain prompt tuning + LoRA at its own
    fixed w, L_w = w . L. Returns (loss, L, log-probs (B, 2), w)."""
    w = torch.tensor(w, device=ref.device)
    logps = policy_logps(model, batch, None)
    loss, L = scalarized_loss(args, logps, ref, batch, w)
    return loss, L, logps, w


def batch_indices(num_pairs: int, batch_size: int, generator: torch.Generator):
    """Endless batches of pair indices: a new shuffle (an epoch) when fewer than batch_size pairs remain."""
    while True:
        order = torch.randperm(num_pairs, generator=generator)
        for start in range(
            0, max(num_pairs - batch_size, 0) + 1, batch_size
        ):  # (fewer pairs: one short batch)
            yield order[start : start + batch_size]


def train_job(
    args,
    model,
    policy: PrefixLM,
    train: data_lib.TokenizedPairs,
    ref_train: ReferenceCache,
    fixed_w: Optional[list],
    name: str,
    rank: int,
    world: int,
    seeds: dict,
    log,
) -> list:
    """Train `policy` for args.max_steps steps; returns each step's seconds (log p0 for the cache excluded).

    fixed_w None = W-COS-DPO (wcos_step), else a baseline at its own w (baseline_step). model: `policy` or its
    DDP wrapper; every rank draws the same batches and w and takes its shard rank::world, so with equal shards
    DDP's gradient average is the full-batch gradient. seeds: random_streams(args.seed)."""
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=args.lr)
    batches = batch_indices(len(train), args.batch_size, torch.Generator().manual_seed(seeds["batches"]))
    w_rng = np.random.default_rng(seeds["w"])
    step_seconds, logged = [], []
    policy.train()  # dropout stays off (PrefixLM); switches activation checkpointing on when enabled
    quiet = True if args.quiet or rank else None  # tqdm: None = off when stderr is not a terminal
    for step in tqdm(range(1, args.max_steps + 1), desc=name, leave=False, disable=quiet):
        t_step, ref_seconds = time.perf_counter(), ref_train.seconds
        idx = next(batches)[rank::world]
        batch = train.batch(idx, args.device)
        ref = ref_train[idx].to(args.device)  # (B, 2) log p0, no gradient, computed once per pair (cached)
        if fixed_w is None:
            loss, L, logps, w = wcos_step(args, model, batch, ref, w_rng)
        else:
            loss, L, logps, w = baseline_step(args, model, batch, ref, fixed_w)
        if not torch.isfinite(loss):
            raise RuntimeError(f"[{name}] loss became {loss.item()} at step {step}; try a lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        # without log p0
        step_seconds.append(time.perf_counter() - t_step - (ref_train.seconds - ref_seconds))
        accuracy = reward_accuracy(logps.detach(), ref, batch["labels"])
        logged.append((loss.item(), *L.tolist(), *accuracy.tolist()))
        if step % args.log_every == 0 or step == args.max_steps:
            log(
                step_line(
                    name, step, args.max_steps, np.mean(logged, 0), w, np.mean(step_seconds[-len(logged) :])
                )
            )
            logged = []
    policy.eval()
    return step_seconds


def step_line(name: str, step: int, steps: int, mean: np.ndarray, w: torch.Tensor, seconds: float) -> str:
    """A log line: the mean loss, L and reward accuracy per objective since the last line, the last w."""
    return (
        f"[{name}] step {step:5d}/{steps} | loss {mean[0]:.4f} | L help {mean[1]:.4f} harm {mean[2]:.4f} | "
        f"acc help {mean[3]:.2f} harm {mean[4]:.2f} | w {w[0].item():.2f},{w[1].item():.2f} | "
        f"{1e3 * seconds:7.1f} ms/step"
    )


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
            raise ValueError(
                f"DPO-LS has models only at its training weights {[j['fixed_w'] for j in jobs]}, not {w}"
            )
        state = match[0]["state"]
    else:
        state = interpolate_states([j["state"] for j in jobs], w)
    device = next(policy.parameters()).device
    loaded = policy.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=False)
    untrained = [k for k, p in policy.named_parameters() if p.requires_grad and k not in state]
    if loaded.unexpected_keys or untrained:  # (the frozen LM is missing from `state` on purpose)
        raise ValueError(
            f"checkpoint state does not fit the policy: unknown {loaded.unexpected_keys[:5]}, "
            f"missing trainable {untrained[:5]}"
        )
    return torch.tensor(w, device=device) if method == "wcos" else None


def judge_prompts(pairs: data_lib.PreferencePairs, count: int) -> list:
    """The first `count` distinct prompts of `pairs`, for the embedded set's judge; [] when one of the pairs'
    prompts is not the embedded set's (other data has no judge)."""
    prompts = list(dict.fromkeys(pairs.prompts))  # distinct, in order of first appearance
    if any(data_lib.embedded_answers(p) is None for p in prompts):
        return []
    return prompts[:count]


@torch.no_grad()
def judge(
    policy: PrefixLM,
    tokenizer,
    prompts: list,
    w: Optional[torch.Tensor],
    samples: int,
    max_new_tokens: int,
    seed: int,
    reference: bool = False,
    c: float = 1.0,
) -> dict:
    """Shares of well-formed, helpful and safe answers (data.judge_answer) among `samples` answers per prompt,
    sampled as `generate` does (JUDGE_SAMPLING; c: Eq. 14). prompts: (text, prompt_ids) pairs. The same seed at
    every w: the draws differ only through w. reference=True: p0's answers."""
    gen = torch.Generator().manual_seed(seed)
    eos_id, verdicts = token_ids(tokenizer)[2], []
    for length in sorted({len(ids) for _, ids in prompts}):  # one batch per prompt length
        group = [(prompt, ids) for prompt, ids in prompts if len(ids) == length]
        # (samples answers per prompt, prompt by prompt)
        answers = sample(
            policy,
            [ids for _, ids in group],
            w,
            max_new_tokens,
            eos_id,
            c,
            generator=gen,
            num=samples,
            reference=reference,
            **JUDGE_SAMPLING,
        )
        verdicts += [
            data_lib.judge_answer(group[i // samples][0], decode(tokenizer, a)) for i, a in enumerate(answers)
        ]
    well_formed, helpful, safe = np.mean(verdicts, 0).tolist()
    return dict(well_formed=well_formed, helpful=helpful, safe=safe)


def evaluate(
    policy: PrefixLM,
    method: str,
    jobs: list,
    weights,
    test: data_lib.TokenizedPairs,
    ref_test: torch.Tensor,
    beta,
    batch_size: int,
    device: str,
    judge_at=None,
) -> dict:
    """At each w: aux_error (W, m), the Eq. 5 loss per objective over test pairs (Fig. 5 axes), and logp_dev_iqr
    (W,), the IQR of log p_theta(y|x) - log p0(y|x) over all test responses (Fig. 5 inset); with `judge_at`
    (a function of the policy's w input -> a `judge` dict), judge: {well_formed, helpful, safe: (W,) shares}."""
    errors, iqrs, verdicts = [], [], []
    for w in weights:
        w_in = set_weight(policy, method, jobs, w)
        logps = all_logps(policy, test, w_in, batch_size, device)  # (N, 2)
        errors.append(objective_losses(logps, ref_test, test.labels, torch.tensor(beta)).tolist())
        q1, q3 = np.percentile((logps - ref_test).flatten().numpy(), [25, 75])
        iqrs.append(float(q3 - q1))
        if judge_at is not None:
            verdicts.append(judge_at(w_in))
    errors = np.array(errors)
    hv = hypervolume(errors, HV_REF, maximize=False) if (errors <= np.array(HV_REF)).all(1).any() else None
    if hv is None:
        print(
            f"warning: no point dominates the hypervolume reference {HV_REF}: hypervolume = null",
            file=sys.stderr,
        )
    judged = {key: [v[key] for v in verdicts] for key in JUDGE_KEYS} if verdicts else None
    return dict(aux_error=errors.tolist(), logp_dev_iqr=iqrs, hypervolume=hv, judge=judged)


def load_trained(path: str, device: str = "cpu") -> tuple:
    """Rebuild a trained method from its checkpoint alone: (policy, ckpt, tokenizer). Then
    `set_weight(policy, ckpt["method"], ckpt["jobs"], w)` gives the w to feed the policy."""
    ckpt = load_checkpoint(path, KIND)
    lm, tokenizer = load_base(ckpt["base"], device)
    # init irrelevant: overwritten
    policy = build_policy(
        lm,
        HyperPromptConfig(**ckpt["hpt_config"]),
        LoRAConfig(**ckpt["lora_config"]),
        [0] * ckpt["hpt_config"]["num_virtual_tokens"],
        0,
    )
    set_weight(policy, ckpt["method"], ckpt["jobs"], ckpt["weights"][0])
    return policy.to(device), ckpt, tokenizer


def summary_table(results: dict) -> str:
    """The run's results at each w: test errors, the IQR of log p_theta - log p0, the judge's shares (if any),
    and the test errors before training."""
    r = results
    judged = r["judge"]
    title = f"\n{r['method']}: test error per objective (lower is better) at {len(r['weights'])} weights"
    header = f"{'w':>11} | {'helpfulness':>11} | {'harmlessness':>12} | {'IQR logp dev':>12} | "
    if judged is not None:
        title += "; judge: % of sampled answers well-formed, helpful, safe"
        header += "well-formed helpful safe | "
    lines = [title, header + "errors before training"]
    rows = zip(r["weights"], r["aux_error"], r["aux_error_init"], r["logp_dev_iqr"])
    for i, (w, e, e0, q) in enumerate(rows):
        line = f"{w[0]:5.2f},{w[1]:5.2f} | {e[0]:11.4f} | {e[1]:12.4f} | {q:12.3f} | "
        if judged is not None:
            shares = [100 * judged[key][i] for key in JUDGE_KEYS]
            line += f"{shares[0]:11.1f} {shares[1]:7.1f} {shares[2]:4.1f} | "
        lines.append(line + f"{e0[0]:.4f}, {e0[1]:.4f}")
    hv = "null" if r["hypervolume"] is None else f"{r['hypervolume']:.4f}"
    lines.append(
        f"hypervolume (ref {HV_REF}) {hv} | train {r['train_seconds']:.1f} s | "
        f"{r['num_params']:,} trainable parameters"
    )
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
        raise ValueError(
            f"--prompts: {path} holds no prompt (expected one per line, or JSON lines with 'prompt')"
        )
    return prompts


@torch.no_grad()
def sample(
    policy: PrefixLM,
    prompts: list,
    w: Optional[torch.Tensor],
    max_new_tokens: int,
    eos_id: int,
    c: float = 1.0,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator=None,
    num: int = 1,
    reference: bool = False,
) -> list:
    """Sample `num` answers to each prompt, all side by side in one batch: prompts are id lists of one length
    (no padding); returns len(prompts) * num id lists (eos excluded), prompt by prompt. The model re-runs on the
    whole sequences each step (no KV cache: simple, and cheap for short answers). c != 1: see the comment at
    logp0. reference=True: sample p0 itself. generator: a CPU torch.Generator."""
    device = next(policy.parameters()).device
    ids = torch.tensor(prompts, device=device).repeat_interleave(num, 0)  # (B, T), B = len(prompts) * num
    done = torch.zeros(len(ids), dtype=torch.bool)
    for _ in range(max_new_tokens):
        mask = torch.ones_like(ids)
        with lora_disabled(policy.lm) if reference else contextlib.nullcontext():
            # (B, V)
            logp = policy(ids, mask, w=w, use_prefix=not reference, keep=1)[:, -1].float().log_softmax(-1)
        if c != 1:
            # Eq. 14 for an LLM: p0^(1-1/c) * p_theta^(1/c), renormalised per token. That is the per-token
            # approximation of the sequence-level mix, as decoding-time realignment (Liu et al. 2024) does.
            with lora_disabled(policy.lm):
                # log p0(.|x, y_<t)
                logp0 = policy(ids, mask, use_prefix=False, keep=1)[:, -1].float().log_softmax(-1)
            logp = (1 - 1 / c) * logp0 + logp / c
        probs, order = (logp / temperature).softmax(-1).cpu().sort(-1, descending=True)  # (B, V)
        nucleus = probs.cumsum(-1) - probs < top_p  # top-p: the most likely tokens until their mass reaches p
        token = order.gather(-1, torch.multinomial(probs * nucleus, 1, generator=generator))  # (B, 1)
        token[done] = eos_id  # a finished answer only grows by eos
        done |= token[:, 0] == eos_id
        if done.all():
            break
        ids = torch.cat([ids, token.to(device)], 1)
    answers = [row[len(prompts[0]) :].tolist() for row in ids.cpu()]
    return [a[: a.index(eos_id)] if eos_id in a else a for a in answers]


def generate(argv: list) -> None:
    args = generate_parser().parse_args(argv)
    if min(args.c, args.temperature, args.top_p, args.max_new_tokens) <= 0 or args.top_p > 1:
        raise ValueError("--c, --temperature and --max-new-tokens must be > 0, and --top-p in (0, 1]")
    weights = [data_lib.parse_weight(w, len(OBJECTIVES)) for w in args.w]
    prompts = args.prompt if args.prompts is None else read_prompts(args.prompts)
    policy, ckpt, tokenizer = load_trained(args.checkpoint, resolve_device(args.device))
    # refuses a w it cannot serve
    states = [set_weight(policy, ckpt["method"], ckpt["jobs"], w) for w in weights]
    eos_id = token_ids(tokenizer)[2]
    chat, max_length = ckpt["tokenize"]["chat_template"], ckpt["tokenize"]["max_length"]
    gen = torch.Generator().manual_seed(args.seed)
    for prompt in prompts:
        ids = prompt_ids(tokenizer, prompt, chat, max_length)
        print(f"\nprompt: {prompt}")
        for w, w_in in zip(weights, states):
            set_weight(policy, ckpt["method"], ckpt["jobs"], w)
            answer = sample(
                policy,
                [ids],
                w_in,
                min(args.max_new_tokens, max_length - len(ids)),
                eos_id,
                args.c,
                args.temperature,
                args.top_p,
                gen,
            )[0]
            print(f"  w = {w[0]:.2f},{w[1]:.2f} | {' '.join(decode(tokenizer, answer).split())}")


# ---- the run: data, base model p0, policy, training, evaluation, checkpoint ---------------------------------
def held_out_split(pairs: data_lib.PreferencePairs, test_fraction: float, seed: int) -> tuple:
    """(train, test) pairs: the run's split of --data (seed: the run's --seed)."""
    return data_lib.split_pairs(pairs, test_fraction, seed=random_streams(seed)["split"])


def load_pairs(args, rank: int, world: int, log) -> tuple:
    """(data_path, all pairs, train pairs, test pairs); the embedded set is written on first use."""
    data_path = args.data
    if data_path is None:
        size = "" if args.num_pairs == 2000 else f"_{args.num_pairs}"
        seed = "" if args.data_seed == 0 else f"_seed{args.data_seed}"
        data_path = f"{DEFAULT_DATA}{size}{seed}.jsonl"
        if rank == 0 and not os.path.exists(data_path):
            data_lib.write_synthetic_preferences(data_path, num_pairs=args.num_pairs, seed=args.data_seed)
            log(f"[data] wrote the embedded preference set to {data_path}")
        if world > 1:
            torch.distributed.barrier()
    pairs = data_lib.read_preferences(data_path)
    if args.test_data is None:
        train_pairs, test_pairs = held_out_split(pairs, args.test_fraction, args.seed)
    else:
        train_pairs, test_pairs = pairs, data_lib.read_preferences(args.test_data)
    if args.max_eval_pairs is not None and len(test_pairs) > args.max_eval_pairs:
        test_pairs = test_pairs.subset(range(args.max_eval_pairs))
    return data_path, pairs, train_pairs, test_pairs


def make_base(args, train_pairs: data_lib.PreferencePairs, seeds: dict, log) -> tuple:
    """(lm, tokenizer, base): a fresh tiny GPT-2 with its tokenizer, or a pretrained LM as it is; `base` is the
    checkpoint's recipe for it (the tiny model's weights are added after the supervised stage)."""
    if args.model is None:
        tokenizer = tiny_tokenizer(args.tokenizer, train_pairs)
        torch.manual_seed(seeds["base"])
        lm = tiny_gpt2(
            tokenizer.vocab_size,
            args.max_length + args.num_virtual_tokens,  # the tokens follow the prefix
            args.tiny_layers,
            args.tiny_width,
            args.tiny_heads,
            tokenizer.pad_token_id,
            tokenizer.eos_token_id,
        )
        log(
            f"[base] tiny GPT-2, {count_parameters(lm):,} parameters, {args.tokenizer} tokenizer of "
            f"{tokenizer.vocab_size} tokens"
        )
        base = dict(source="tiny", config=lm.config.to_dict(), tokenizer=tokenizer_spec(tokenizer))
        return lm.to(args.device), tokenizer, base
    model = os.path.abspath(args.model) if os.path.isdir(args.model) else args.model
    base = dict(source="pretrained", gguf_file=args.gguf_file, model=model)
    t0 = time.perf_counter()
    lm, tokenizer = load_base(base, args.device)
    log(f"[base] {type(lm).__name__}, {count_parameters(lm):,} parameters, {time.perf_counter() - t0:.0f} s")
    return lm, tokenizer, base


def enable_gradient_checkpointing(lm) -> None:
    """Recompute each block's activations in the backward pass (non-reentrant: the token inputs need no
    requires_grad; the prefix has it). transformers 5 renamed the method activation_checkpointing_enable."""
    enable = getattr(lm, "activation_checkpointing_enable", None) or lm.gradient_checkpointing_enable
    enable({"use_reentrant": False})


def tokenize_splits(args, tokenizer, data_path: str, pairs, train_pairs, test_pairs, log) -> tuple:
    """(train, test, chat): both splits tokenized, chat = whether the tokenizer's chat template is used."""
    chat = args.chat_template == "auto" and getattr(tokenizer, "chat_template", None) is not None
    train = tokenize(train_pairs, tokenizer, chat, args.max_length)
    test = tokenize(test_pairs, tokenizer, chat, args.max_length)
    prompts_cut = train.num_prompts_truncated + test.num_prompts_truncated
    responses_cut = train.num_responses_truncated + test.num_responses_truncated
    log(
        f"[data] {data_path}: {len(train)} train / {len(test)} test pairs ({args.test_data or 'held out'}) | "
        f"objectives disagree on {pairs.disagreement():.1%} | {pairs.num_skipped_empty} skipped (empty "
        f"response) | truncated (max_length {args.max_length}): {prompts_cut} prompts, {responses_cut} "
        f"responses | chat template: {chat}"
    )
    return train, test, chat


def make_p0(
    args, lm, base: dict, train: data_lib.TokenizedPairs, prefix_ids: list, seeds: dict, log
) -> float:
    """Stage 1 for the tiny model: the supervised stage makes p0, and the checkpoint's `base` keeps its
    weights (a pretrained base is stored by name). Returns the stage's seconds."""
    seconds = 0.0
    if args.sft_steps:
        batch_size = 2 * args.batch_size
        seconds = supervised_stage(
            lm, train, args.sft_steps, args.sft_lr, batch_size, seeds["sft"], prefix_ids, args.device, log
        )
    if base["source"] == "tiny":
        base["state"] = {k: v.detach().cpu().clone() for k, v in lm.state_dict().items()}
    return seconds


def make_policy(args, lm, prefix_ids: list, seeds: dict) -> tuple:
    """(policy, hpt_config, lora_config): the frozen LM + LoRA + a Hyper Prompt (W-COS-DPO) or a plain prompt
    (the baselines, App. A.1); the reference p0 is the same network with both switched off."""
    num_objectives = len(OBJECTIVES) if args.method == "wcos" else 0
    embed_dim = lm.get_input_embeddings().weight.shape[1]
    hpt_config = HyperPromptConfig(
        embed_dim, num_objectives, args.num_virtual_tokens, args.hpt_rank, args.hpt_hidden
    )
    lora_config = LoRAConfig(rank=args.lora_rank, alpha=args.lora_alpha, targets=tuple(args.lora_targets))
    policy = build_policy(lm, hpt_config, lora_config, prefix_ids, seeds["policy"]).to(args.device)
    return policy, hpt_config, lora_config


def make_judge(
    args, policy: PrefixLM, tokenizer, test_pairs, train: data_lib.TokenizedPairs, chat, seeds, log
):
    """The embedded set's judge as a function of the policy's w input, or None (other data, --judge-prompts 0).
    Answers may be as long as the longest training response (eos included): a longer one is not well-formed."""
    prompts = judge_prompts(test_pairs, args.judge_prompts)
    if not prompts:
        return None
    encoded = [(p, prompt_ids(tokenizer, p, chat, args.max_length)) for p in prompts]
    max_new_tokens = int(train.response_mask.sum(-1).max())

    def judge_at(w_in, reference=False):
        return judge(
            policy, tokenizer, encoded, w_in, args.judge_samples, max_new_tokens, seeds["judge"], reference
        )

    log(
        f"[judge] {len(prompts)} prompts of the test pairs x {args.judge_samples} answers at each w, up to "
        f"{max_new_tokens} tokens, temperature {JUDGE_SAMPLING['temperature']}, top-p {JUDGE_SAMPLING['top_p']}"
    )
    return judge_at


def job_weights(args) -> list:
    """The weight each trained model is fixed at: None for W-COS-DPO's one model (w ~ Dir(alpha), fed to the
    Hyper Prompt), every evaluation weight for DPO-LS, the unit vectors e_j for DPO Soup (App. A.1)."""
    return {"wcos": [None], "ls": args.weights, "soup": np.eye(len(OBJECTIVES)).tolist()}[args.method]


def evaluate_untrained(args, policy: PrefixLM, test, ref_test, judge_at, log) -> tuple:
    """(errors before training, p0's judge shares or None): the untrained policy (LoRA at 0, prefix at its
    initialisation) and p0 itself, for "before vs after"."""
    init_jobs = [dict(fixed_w=w, state=trainable_state(policy)) for w in job_weights(args)]
    init_eval = evaluate(
        policy,
        args.method,
        init_jobs,
        args.weights,
        test,
        ref_test,
        args.beta,
        2 * args.batch_size,
        args.device,
    )
    judge_p0 = judge_at(None, reference=True) if judge_at else None
    if judge_p0:
        log("[judge] p0: " + ", ".join(f"{k} {v:.1%}" for k, v in judge_p0.items()))
    return init_eval, judge_p0


def train_jobs(
    args, policy: PrefixLM, train: data_lib.TokenizedPairs, rank: int, world: int, seeds: dict, log
):
    """Stage 2: one job for W-COS-DPO, one per weight for DPO-LS, two for DPO Soup; each from the same init.
    Returns (jobs, each step's seconds, the reference cache)."""
    model = policy if world == 1 else torch.nn.parallel.DistributedDataParallel(policy)  # averages gradients
    ref_train = ReferenceCache(policy, train, 2 * args.batch_size, args.device)  # filled on first use
    init_state = trainable_state(policy)
    jobs, step_seconds = [], []
    for i, fixed_w in enumerate(job_weights(args)):
        name = args.method if fixed_w is None else f"{args.method}{i + 1}"
        policy.load_state_dict(init_state, strict=False)  # every job starts from the same initialisation
        at = "" if fixed_w is None else f" at w = {np.round(fixed_w, 3).tolist()}"
        log(f"[{name}] training {count_parameters(policy):,} parameters for {args.max_steps} steps{at}")
        seconds = train_job(args, model, policy, train, ref_train, fixed_w, name, rank, world, seeds, log)
        step_seconds += seconds
        jobs.append(dict(name=name, fixed_w=fixed_w, state=trainable_state(policy), seconds=sum(seconds)))
    log(
        f"[ref] log p0 of {int((~torch.isnan(ref_train.values[:, 0])).sum())} training pairs (this rank): "
        f"{ref_train.seconds:.1f} s (counted in train_seconds, not in ms/step)"
    )
    return jobs, step_seconds, ref_train


def new_checkpoint(args, base: dict, hpt_config, lora_config, jobs: list, data_path: str, chat: bool) -> dict:
    """model.pt: tensors and plain values only (loads with weights_only=True), enough to rebuild the policy."""
    return dict(
        kind=KIND,
        method=args.method,
        objectives=OBJECTIVES,
        weights=args.weights,
        base=base,
        hpt_config=hpt_config.to_dict(),
        lora_config=lora_config.to_dict(),
        jobs=jobs,
        config=vars(args),
        data=data_path,
        tokenize=dict(max_length=args.max_length, chat_template=chat),
    )


def evaluate_run(args, policy, jobs, test, ref_test, judge_at, init_eval, judge_p0, run: dict) -> dict:
    """results.json: the trained method's test errors, IQR, hypervolume and judge at every evaluation w, the
    same before training, and the run's facts `run` (times, sizes, data)."""
    t0 = time.perf_counter()
    batch_size = 2 * args.batch_size
    result = evaluate(
        policy, args.method, jobs, args.weights, test, ref_test, args.beta, batch_size, args.device, judge_at
    )
    return dict(
        method=args.method,
        objectives=OBJECTIVES,
        weights=args.weights,
        **result,
        hv_ref=list(HV_REF),
        aux_error_init=init_eval["aux_error"],
        logp_dev_iqr_init=init_eval["logp_dev_iqr"],
        hypervolume_init=init_eval["hypervolume"],
        judge_p0=judge_p0,
        judge_sampling=JUDGE_SAMPLING,
        eval_seconds=time.perf_counter() - t0,
        num_test_pairs=len(test),
        test_data=args.test_data,
        beta=args.beta,
        seed=args.seed,
        config=vars(args),
        **run,
    )


def train(args: argparse.Namespace) -> dict:
    t_start = time.perf_counter()
    rank, world, args.device = setup_distributed(args.device)
    if args.batch_size % world:
        raise ValueError(
            f"--batch-size ({args.batch_size}) must be divisible by the number of processes ({world})"
        )
    if args.threads or args.model is None:
        torch.set_num_threads(args.threads or 1)
    seeds = random_streams(args.seed)
    os.makedirs(args.out, exist_ok=True)
    log, log_file = open_log(args, rank)
    log("config: " + json.dumps(vars(args), sort_keys=True) + f" | world_size {world}")
    data_path, pairs, train_pairs, test_pairs = load_pairs(args, rank, world, log)

    # stage 1: the base model p0
    lm, tokenizer, base = make_base(args, train_pairs, seeds, log)
    if args.gradient_checkpointing:
        enable_gradient_checkpointing(lm)
    train, test, chat = tokenize_splits(args, tokenizer, data_path, pairs, train_pairs, test_pairs, log)
    prefix_ids = prefix_init_ids(token_ids(tokenizer)[0], args.num_virtual_tokens)
    sft_seconds = make_p0(args, lm, base, train, prefix_ids, seeds, log)

    # stage 2: the policy and preference fine-tuning
    policy, hpt_config, lora_config = make_policy(args, lm, prefix_ids, seeds)
    t0 = time.perf_counter()
    ref_test = all_logps(policy, test, None, 2 * args.batch_size, args.device, reference=True)  # (N_test, 2)
    log(
        f"[ref] log p0 of the {2 * len(test)} test responses: {time.perf_counter() - t0:.1f} s (training: cached)"
    )
    judge_at, init_eval, judge_p0 = None, None, None
    if rank == 0:
        judge_at = make_judge(args, policy, tokenizer, test_pairs, train, chat, seeds, log)
        init_eval, judge_p0 = evaluate_untrained(args, policy, test, ref_test, judge_at, log)
    jobs, step_seconds, ref_train = train_jobs(args, policy, train, rank, world, seeds, log)
    train_seconds = sum(step_seconds) + ref_train.seconds  # log p0 of the training pairs is a training cost

    # stage 3: checkpoint, evaluation, results (rank 0 alone)
    results = None
    if rank == 0:
        ckpt = new_checkpoint(args, base, hpt_config, lora_config, jobs, data_path, chat)
        data_lib.atomic_save(ckpt, os.path.join(args.out, "model.pt"))
        run = dict(
            train_seconds=train_seconds,
            num_params=count_parameters(policy) * len(jobs),
            sft_seconds=sft_seconds,
            seconds_per_step_median=float(np.median(step_seconds)),
            world_size=world,
            num_train_pairs=len(train),
            data=data_path,
        )
        results = evaluate_run(args, policy, jobs, test, ref_test, judge_at, init_eval, judge_p0, run)
        results["total_seconds"] = time.perf_counter() - t_start
        data_lib.atomic_save(results, os.path.join(args.out, "results.json"))
        log(summary_table(results))
        log(f"total {results['total_seconds']:.1f} s | wrote {args.out}/results.json and {args.out}/model.pt")
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
