"""Benchmark one preference step of the LLM path (issue 6 speed target): a W-COS-DPO step with Hyper Prompt
Tuning + LoRA must cost at most 1.15x a plain LoRA DPO step on the same model and batch (App. A.5: W-COS-DPO
adds nothing per step but the w-conditioning).

Run from the repository root:
    python benchmarks/bench_llm.py                       # the tiny GPT-2 of train_llm.py (width 64, 2 layers)
    python benchmarks/bench_llm.py --gguf-file F.gguf --batch-size 4 --repeats 5   # a real model
The steps are timed alternately on one batch (forward, backward, Adam step), medians reported: plain LoRA DPO,
LoRA + plain prompt tuning DPO (the baselines' setting) and W-COS-DPO (HPT + LoRA, w ~ Dir, two objectives,
cosine penalty 0.1 as train_llm.py applies it). Also printed:
what recomputing the reference log-probs every step would add (train_llm.py computes them once per pair,
without gradients, and caches them).
"""
import argparse
import copy
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np  # noqa: E402
import torch  # noqa: E402

import data as data_lib  # noqa: E402
import train_llm  # noqa: E402
from losses import cosine_penalty, dpo_loss, sample_weights, scalarize  # noqa: E402
from models import HyperPromptConfig, LoRAConfig, PrefixLM, apply_lora  # noqa: E402


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="a causal LM folder or hub name (default: tiny GPT-2)")
    p.add_argument("--gguf-file", default=None, help="a GGUF file (needs gguf and accelerate)")
    p.add_argument("--batch-size", type=int, default=16, help="preference pairs per step (2 sequences each)")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.gguf_file and args.model is None:
        args.model, args.gguf_file = os.path.dirname(os.path.abspath(args.gguf_file)), os.path.basename(args.gguf_file)

    torch.manual_seed(0)
    if args.model is None:
        tokenizer = data_lib.ByteTokenizer()
        lm = train_llm.tiny_gpt2(tokenizer.vocab_size, args.max_length + 8, 2, 64, 4)
    else:
        base = dict(source="pretrained", model=args.model, gguf_file=args.gguf_file)
        lm, tokenizer = train_llm.load_base(base, "cpu")
    encode, pad, eos, bos = train_llm.token_ids(tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        pairs = data_lib.read_preferences(data_lib.write_synthetic_preferences(os.path.join(tmp, "p.jsonl"), 64))
    data = data_lib.tokenize_pairs(pairs, encode, args.max_length, pad, eos, bos)
    batch = data.batch(range(args.batch_size))
    d = lm.get_input_embeddings().weight.shape[1]

    # the same frozen LM three times: plain LoRA (no prefix), LoRA + plain prompt tuning (the paper's baselines,
    # App. A.1) and HPT + LoRA
    plain = PrefixLM(copy.deepcopy(lm), None)
    torch.manual_seed(0)
    apply_lora(plain.lm, LoRAConfig())
    prompt = train_llm.build_policy(copy.deepcopy(lm), HyperPromptConfig(embed_dim=d, num_objectives=0), LoRAConfig(),
                                    train_llm.prefix_init_ids(encode, 8), 0)
    hpt = train_llm.build_policy(lm, HyperPromptConfig(embed_dim=d, num_objectives=2), LoRAConfig(),
                                 train_llm.prefix_init_ids(encode, 8), 0)
    ref = train_llm.all_logps(hpt, data, None, args.batch_size, "cpu", range(args.batch_size), reference=True)  # (B, 2)
    labels, beta = batch["labels"], torch.tensor([0.1, 0.1])
    chosen = labels[:, :, 0].argmax(1)  # objective 1 (helpfulness): the plain DPO step trains on it
    ar = torch.arange(args.batch_size)
    opt_plain = torch.optim.Adam([q for q in plain.parameters() if q.requires_grad], lr=1e-4)
    opt_hpt = torch.optim.Adam([q for q in hpt.parameters() if q.requires_grad], lr=1e-4)
    opt_prompt = torch.optim.Adam([q for q in prompt.parameters() if q.requires_grad], lr=1e-4)
    rng = np.random.default_rng(0)

    def dpo_step(policy, opt):  # single-objective DPO (Eq. 5)
        logps = train_llm.policy_logps(policy, batch, None)  # (B, 2)
        loss = dpo_loss(logps[ar, chosen], logps[ar, 1 - chosen], ref[ar, chosen], ref[ar, 1 - chosen], 0.1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def plain_step():  # LoRA only
        dpo_step(plain, opt_plain)

    def prompt_step():  # LoRA + a plain trainable prefix of k = 8
        dpo_step(prompt, opt_prompt)

    def wcos_step():  # W-COS-DPO with HPT + LoRA: w ~ Dir(alpha), both objectives, cosine penalty
        w = sample_weights([0.5, 0.5], 1, rng)[0]
        logps = train_llm.policy_logps(hpt, batch, w)
        L = train_llm.objective_losses(logps, ref, labels, beta)
        loss = scalarize(L, w) - 0.1 * cosine_penalty(L, w)
        opt_hpt.zero_grad(set_to_none=True)
        loss.backward()
        opt_hpt.step()

    def ref_recompute():  # what a step would add if it recomputed log p0 (no grad) instead of caching it
        train_llm.all_logps(hpt, data, None, args.batch_size, "cpu", range(args.batch_size), reference=True)

    steps = dict(plain=plain_step, prompt=prompt_step, wcos=wcos_step, ref=ref_recompute)
    for fn in steps.values():  # warm-up
        fn()
    times = {k: [] for k in steps}
    for _ in range(args.repeats):  # alternate, so that all see the same machine load
        for k, fn in steps.items():
            times[k].append(timed(fn))
    med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    T = int(batch["attention_mask"].sum(-1).max())
    print(f"{type(lm).__name__}, {args.batch_size} pairs ({2 * args.batch_size} sequences, up to {T} tokens + k = 8 "
          f"prefix), {torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"  plain LoRA DPO step           {med['plain']:9.1f} ms")
    print(f"  LoRA + plain prompt (k = 8)   {med['prompt']:9.1f} ms   ratio {med['prompt'] / med['plain']:.3f} "
          f"(the baselines' setting; the prefix makes backprop reach the input embeddings)")
    print(f"  W-COS-DPO step (HPT + LoRA)   {med['wcos']:9.1f} ms   ratio {med['wcos'] / med['plain']:.3f} "
          f"(target <= 1.15); {med['wcos'] / med['prompt']:.3f} x the plain-prompt step")
    print(f"  log p0 recomputed per step  + {med['ref']:9.1f} ms   ({med['ref'] / med['plain']:.0%} of a plain step; "
          f"train_llm.py computes it once per pair and caches it)")


if __name__ == "__main__":
    main()
