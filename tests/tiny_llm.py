"""Tiny LLM pieces the model and train_llm tests share: a 2-layer GPT-2 of width 32 with byte ids, its policy,
a tokenized batch of the embedded preference set."""

import torch

import data as data_lib
import train_llm
from models import HyperPromptConfig, LoRAConfig


def tiny_lm(seed=0):
    torch.manual_seed(seed)
    return train_llm.tiny_gpt2(vocab_size=259, max_positions=128, layers=2, width=32, heads=2)


def tiny_policy(m=2, k=4, seed=0):
    """A tiny GPT-2 policy: frozen LM + LoRA + HyperPrompt (m = 0: plain prefix)."""
    lm = tiny_lm(seed)
    return train_llm.build_policy(
        lm,
        HyperPromptConfig(embed_dim=32, num_objectives=m, num_virtual_tokens=k),
        LoRAConfig(),
        list(range(10, 10 + k)),
        seed,
    )


def tiny_batch(num_pairs=3, max_length=64):
    pairs = data_lib.PreferencePairs(*rows_to_fields(data_lib.synthetic_preference_rows(num_pairs, seed=1)))
    tok = data_lib.ByteTokenizer()
    return data_lib.tokenize_pairs(pairs, tok.encode, max_length, tok.pad_token_id, tok.eos_token_id)


def rows_to_fields(rows):
    return (
        [r["prompt"] for r in rows],
        [(r["response_0"], r["response_1"]) for r in rows],
        data_lib.preference_labels(
            [r["better_response_id"] for r in rows], [r["safer_response_id"] for r in rows]
        ),
    )


def flat(batch):
    B, n, T = batch["input_ids"].shape
    return (
        batch["input_ids"].view(B * n, T),
        batch["attention_mask"].view(B * n, T),
        batch["response_mask"].view(B * n, T),
    )
