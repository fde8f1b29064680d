"""Tests for train_llm.py: the policy's log-probs and per-objective losses, the tiny tokenizer, the judge's
prompts, random streams, argument checks, tiny end-to-end runs (one process and 2 DDP processes, the DPO
Soup and DPO-LS baselines), checkpoints, sampling and `generate`, chat templates, --test-data, gradient
checkpointing.

Tiny models only (GPT-2 with 2 layers, width 32). Run: python -m pytest tests/test_train_llm.py -q
"""

import json
import math
import os
import random
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from tiny_llm import flat, rows_to_fields, tiny_batch, tiny_policy

import data as data_lib
import train_llm
from losses import dpo_loss
from models import load_checkpoint, lora_disabled, sequence_logps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("chunk", [1, 3, 100])
def test_policy_logps_in_chunks_equal_the_whole_logits_in_value_and_gradient(chunk):
    """policy_logps maps the hidden states to logits a few sequences at a time (recomputed in backward): the
    same log-probs and gradients as sequence_logps over the whole (2B, T, V) logits."""
    policy, w = tiny_policy(), torch.tensor([0.3, 0.7])
    batch = tiny_batch(3).batch([0, 1, 2])
    ids, attn, resp = flat(batch)
    grads = []
    for run in ("whole", "chunks"):
        policy.zero_grad()
        logps = (
            sequence_logps(policy(ids, attn, w=w), ids, resp).view(3, 2)
            if run == "whole"
            else train_llm.policy_logps(policy, batch, w, chunk=chunk)
        )
        (logps * torch.tensor([1.0, -2.0])).sum().backward()
        grads.append([p.grad.clone() for p in policy.parameters() if p.requires_grad])
        if run == "whole":
            values = logps.detach()
    assert torch.allclose(logps, values, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))
    with torch.no_grad():  # hidden=True: the states the output embedding maps to the logits
        hidden = policy(ids, attn, w=w, hidden=True)
        assert torch.allclose(policy.lm.get_output_embeddings()(hidden), policy(ids, attn, w=w), atol=1e-6)


def test_gradients_reach_hpt_and_lora_but_not_the_frozen_lm():
    policy = tiny_policy()
    data = tiny_batch(4)
    batch = data.batch(range(4))
    ref = train_llm.all_logps(policy, data, None, 8, "cpu", reference=True)
    opt = torch.optim.SGD([p for p in policy.parameters() if p.requires_grad], lr=0.1)
    for step in range(2):  # LoRA A gets its first gradient only once B != 0 (B starts at 0)
        opt.zero_grad()
        logps = train_llm.policy_logps(policy, batch, torch.tensor([0.4, 0.6]))
        L = train_llm.objective_losses(logps, ref, batch["labels"], torch.tensor([0.1, 0.1]))
        (0.4 * L[0] + 0.6 * L[1]).backward()
        if step == 0:
            grads = {n: p.grad for n, p in policy.named_parameters()}
            for name in (
                "prompt.prefix",
                "prompt.mlp_a.0.weight",
                "prompt.mlp_a.2.weight",
                "prompt.mlp_b.0.weight",
                "prompt.mlp_b.2.weight",
            ):
                assert grads[name] is not None and grads[name].abs().sum() > 0, name
            lora_b = [g for n, g in grads.items() if n.endswith("lora_B")]
            assert lora_b and all(g is not None and g.abs().sum() > 0 for g in lora_b)
            frozen = [n for n, p in policy.named_parameters() if not p.requires_grad]
            assert any("wte" in n for n in frozen) and any("c_attn.base" in n for n in frozen)
            assert all(grads[n] is None for n in frozen)
        opt.step()
    assert all(p.grad.abs().sum() > 0 for n, p in policy.named_parameters() if n.endswith("lora_A"))


def test_a_different_w_gives_a_different_logp():
    policy = tiny_policy()
    batch = tiny_batch(2).batch([0, 1])
    with torch.no_grad():
        a = train_llm.policy_logps(policy, batch, torch.tensor([1.0, 0.0]))
        b = train_llm.policy_logps(policy, batch, torch.tensor([0.0, 1.0]))
        again = train_llm.policy_logps(policy, batch, torch.tensor([1.0, 0.0]))
    assert (a - b).abs().min() > 1e-5 and torch.equal(a, again)


def test_policy_equals_reference_at_init_without_prefix_and_dpo_is_ln2():
    policy = tiny_policy()
    data = tiny_batch(3)
    ids, attn, resp = flat(data.batch(range(3)))
    with torch.no_grad():
        pol = sequence_logps(policy(ids, attn, use_prefix=False), ids, resp).view(3, 2)  # LoRA on, B = 0
        with lora_disabled(policy.lm):
            ref = sequence_logps(policy(ids, attn, use_prefix=False), ids, resp).view(3, 2)
    assert torch.equal(pol, ref)  # exactly: B = 0 adds an exact zero
    assert torch.allclose(ref, train_llm.all_logps(policy, data, None, 2, "cpu", reference=True), atol=1e-4)
    loss = dpo_loss(pol[:, 0], pol[:, 1], ref[:, 0], ref[:, 1], 0.1)
    assert torch.allclose(loss, torch.full((3,), math.log(2.0)))
    L = train_llm.objective_losses(pol, ref, data.labels, torch.tensor([0.1, 0.1]))
    assert torch.allclose(L, torch.full((2,), math.log(2.0)))


def test_objective_losses_are_pairwise_dpo_per_objective():
    """With n = 2 and one-hot labels, lipo_losses (Eq. 8) is the pairwise DPO loss of Eq. 5 per objective."""
    torch.manual_seed(0)
    logps, ref = torch.randn(5, 2) * 3, torch.randn(5, 2) * 3
    better, safer = [0, 1, 1, 0, 1], [1, 1, 0, 0, 0]
    labels = torch.as_tensor(data_lib.preference_labels(better, safer))
    got = train_llm.objective_losses(logps, ref, labels, torch.tensor([0.1, 0.5]))
    for j, (ids, beta) in enumerate(((better, 0.1), (safer, 0.5))):
        c, r = torch.tensor(ids), 1 - torch.tensor(ids)
        ar = torch.arange(5)
        want = dpo_loss(logps[ar, c], logps[ar, r], ref[ar, c], ref[ar, r], beta).mean()
        assert torch.allclose(got[j], want, atol=1e-6)
    acc = train_llm.reward_accuracy(logps, ref, labels)
    margin = (logps - ref)[:, 0] - (logps - ref)[:, 1]
    assert torch.allclose(acc[0], ((margin > 0) == (torch.tensor(better) == 0)).float().mean())


def test_preferred_nll_is_each_objectives_chosen_response_per_token():
    logps, lengths = (
        -torch.tensor([[6.0, 20.0], [9.0, 4.0], [3.0, 30.0]]),
        torch.tensor([[3, 10], [9, 2], [1, 10]]),
    )
    labels = torch.as_tensor(
        data_lib.preference_labels([0, 1, 1], [1, 0, 0])
    )  # helpful prefers 0, 1, 1; safe 1, 0, 0
    got = train_llm.preferred_nll(logps, lengths, labels)
    assert torch.allclose(
        got, torch.tensor([(2 + 2 + 3) / 3, (2 + 1 + 3) / 3])
    )  # per token: 2, 2 | 1, 2 | 3, 3


def test_tiny_tokenizer_learns_on_the_training_texts_only():
    pairs = data_lib.PreferencePairs(*rows_to_fields(data_lib.synthetic_preference_rows(200, seed=0)))
    tok = train_llm.tiny_tokenizer("bpe", pairs)
    assert (
        len(tok.encode(" Sure: first")) == 3
    )  # " Sure", ":", " first": whole words of the training responses
    assert len(tok.encode(" Xylophones")) > 3  # a word it never saw falls apart into pieces
    assert isinstance(train_llm.tiny_tokenizer("byte", pairs), data_lib.ByteTokenizer)
    with pytest.raises(ValueError, match="tokenizer"):
        train_llm.load_tiny_tokenizer("{not json")


OVEN = "How can I clean a very dirty oven quickly?"  # one of the embedded set's prompts (topic 3)


def test_judge_knows_every_embedded_answer_and_no_other_prompt():
    for row in data_lib.synthetic_preference_rows(300, seed=5):
        ids = {"better": row["better_response_id"], "safer": row["safer_response_id"]}
        for i in (0, 1):
            well_formed, _, safe = data_lib.judge_answer(row["prompt"], row[f"response_{i}"])
            assert well_formed and safe == row[f"is_response_{i}_safe"], (row, ids)
    assert data_lib.embedded_answers("How can I fix it?") is None
    pairs = data_lib.PreferencePairs(
        ["How can I fix it?", OVEN], [("a", "b")] * 2, data_lib.preference_labels([0, 1], [1, 0])
    )
    assert train_llm.judge_prompts(pairs, 20) == []  # other data: no judge
    assert train_llm.judge_prompts(pairs.subset([1, 1]), 20) == [OVEN]  # distinct prompts


def test_random_streams_are_distinct_per_use_and_per_seed_and_reproducible():
    streams = {seed: train_llm.random_streams(seed) for seed in (0, 1, 2)}
    values = [v for s in streams.values() for v in s.values()]
    assert len(set(values)) == len(values) == 3 * len(train_llm.STREAMS)  # seed + 1 would reuse seed's stream
    assert train_llm.random_streams(1) == streams[1]


def resolve(*argv):
    return train_llm.resolve_args(train_llm.build_parser().parse_args(list(argv)))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--weights", "0.5,0.3,0.2"], "one per objective"),
        (["--weights", "0.5,0.6"], "summing to 1"),
        (["--penalty", "0.1", "--method", "soup"], "wcos only"),
        (["--vertex-prob", "1.5"], "--vertex-prob must be a probability"),
        (["--vertex-prob", "0.25", "--method", "ls"], "--vertex-prob .* wcos only"),
        (["--test-data", "/nonexistent.jsonl"], "--test-data: no file"),
        (["--beta", "0"], "--beta must be > 0"),
        (["--alpha", "1,2,3"], "--alpha must be one number or 2"),
        (["--max-steps", "0"], "--max-steps must be >= 1"),
        (["--data", "/nonexistent.jsonl"], "no file"),
    ],
)
def test_bad_arguments_give_clear_errors(argv, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        resolve(*argv)


def test_default_weights_are_the_11_point_grid():
    args = resolve()
    assert np.shape(args.weights) == (11, 2) and np.allclose(
        np.array(args.weights)[:, 0], np.linspace(0, 1, 11)
    )


def test_tiny_defaults_depart_from_the_paper_and_paper_settings_restore_it():
    tiny = resolve()
    assert (tiny.beta, tiny.nll_weight, tiny.vertex_prob, tiny.tokenizer) == ([0.5, 0.5], 2.0, 0.25, "bpe")
    assert resolve("--method", "soup").vertex_prob == 0.0  # the baselines train at fixed weights
    paper = resolve("--paper-settings")
    assert (paper.beta, paper.nll_weight, paper.vertex_prob) == ([0.1, 0.1], 0.0, 0.0)
    real = resolve("--model", "some/model")
    assert (real.beta, real.nll_weight, real.vertex_prob, real.tokenizer) == ([0.1, 0.1], 0.0, 0.0, None)
    assert resolve("--beta", "0.2", "--nll-weight", "0").beta == [0.2, 0.2]


# --- the tiny W-COS-DPO run that the end-to-end, checkpoint, DDP and generate tests share ---

TINY_RUN = [
    "--test-fraction",
    "0.25",
    "--sft-steps",
    "400",
    "--max-steps",
    "60",
    "--lr",
    "3e-3",
    "--batch-size",
    "8",
    "--tiny-width",
    "32",
    "--tiny-heads",
    "2",
    "--max-length",
    "80",
    "--log-every",
    "30",
    "--seed",
    "0",
]


MINI = dict(
    helpful=data_lib._HELPFUL[2].format("ask", "wait"),
    vague=data_lib._UNHELPFUL[1],
    safe=data_lib._SAFE[1].format("be kind"),
    unsafe=data_lib._UNSAFE[1].format("hit it"),
)


def write_lines(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def write_mini_preferences(path, num_pairs=240, seed=0):
    """The embedded set's story on one prompt and one template per trait, so that a tiny p0 learns to spell the
    four answers in a few hundred steps: response = helpful or vague body + safe or unsafe tail; two different
    (helpful, safe) types per pair; each annotator prefers the higher trait (a tie: coin flip), no label noise."""
    rng, rows = random.Random(seed), []
    for _ in range(num_pairs):
        types = rng.sample([(1, 1), (1, 0), (0, 1), (0, 0)], 2)
        ids = [
            int(types[1][j] > types[0][j]) if types[0][j] != types[1][j] else rng.randrange(2) for j in (0, 1)
        ]
        text = [f"{MINI['helpful' if h else 'vague']} {MINI['safe' if s else 'unsafe']}" for h, s in types]
        rows.append(
            dict(
                prompt="How can I fix it?",
                response_0=text[0],
                response_1=text[1],
                better_response_id=ids[0],
                safer_response_id=ids[1],
            )
        )
    return write_lines(path, rows)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """The same tiny W-COS-DPO run twice: one process, and 2 DDP processes (gloo); started together."""
    out = tmp_path_factory.mktemp("llm")
    env, data = dict(os.environ, OMP_NUM_THREADS="1"), ["--data", write_mini_preferences(out / "mini.jsonl")]
    pipes = dict(cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    single = subprocess.Popen(
        [sys.executable, "train_llm.py", *TINY_RUN, *data, "--threads", "1", "--out", str(out / "one")],
        **pipes,
    )
    ddp = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(free_port()),
            "train_llm.py",
            *TINY_RUN,
            *data,
            "--out",
            str(out / "ddp"),
        ],
        timeout=300,
        **pipes,
    )
    log_single = single.communicate(timeout=300)[0]
    assert single.returncode == 0, log_single[-3000:]
    assert ddp.returncode == 0, ddp.stdout[-3000:]
    return out, log_single, ddp.stdout


def test_tiny_run_lowers_each_objectives_error_at_its_own_unit_weight(tiny_runs):
    out, log, _ = tiny_runs
    res = json.load(open(out / "one" / "results.json"))
    for key in (
        "method",
        "objectives",
        "weights",
        "aux_error",
        "logp_dev_iqr",
        "hypervolume",
        "hv_ref",
        "train_seconds",
        "num_params",
        "config",
    ):
        assert key in res, key
    assert res["objectives"] == ["helpfulness", "harmlessness"] and res["hv_ref"] == [1.1, 1.1]
    w, err, before = np.array(res["weights"]), np.array(res["aux_error"]), np.array(res["aux_error_init"])
    assert w.shape == (11, 2) and err.shape == (11, 2) and len(res["logp_dev_iqr"]) == 11
    e1, e2 = int(np.argmax(w[:, 0])), int(np.argmax(w[:, 1]))  # rows of w = (1, 0) and w = (0, 1)
    assert err[e1, 0] < before[e1, 0] and err[e2, 1] < before[e2, 1]
    assert "| loss " in log and "ms/step" in log


def test_checkpoint_rebuilds_the_policy_alone(tiny_runs):
    out, _, _ = tiny_runs
    policy, ckpt, tok = train_llm.load_trained(str(out / "one" / "model.pt"))
    cfg = ckpt["config"]
    pairs = data_lib.read_preferences(ckpt["data"])
    train_pairs, test = train_llm.held_out_split(pairs, cfg["test_fraction"], cfg["seed"])
    assert isinstance(ckpt["base"]["tokenizer"], str)  # the BPE stored as its JSON string (weights_only load)
    assert (
        tok.to_json() == train_llm.tiny_tokenizer("bpe", train_pairs).to_json()
    )  # the one learnt at training
    assert tok.vocab_size == policy.lm.get_input_embeddings().weight.shape[0]
    test = train_llm.tokenize(test, tok, ckpt["tokenize"]["chat_template"], cfg["max_length"])
    ref = train_llm.all_logps(policy, test, None, 16, "cpu", reference=True)
    got = train_llm.evaluate(
        policy, ckpt["method"], ckpt["jobs"], np.array(ckpt["weights"]), test, ref, cfg["beta"], 16, "cpu"
    )
    res = json.load(open(out / "one" / "results.json"))
    assert np.allclose(got["aux_error"], res["aux_error"], atol=1e-5)


def test_ddp_two_processes_match_one_process(tiny_runs):
    out, _, log = tiny_runs
    one, two = (json.load(open(out / d / "results.json")) for d in ("one", "ddp"))
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert log.count("[wcos] step") == 2  # rank 0 alone logs (steps 30 and 60)
    assert os.listdir(out / "ddp") and sorted(os.listdir(out / "ddp")) == [
        "model.pt",
        "results.json",
        "train.log",
    ]
    # each rank takes half of every batch, DDP averages the gradients, all ranks draw the same w:
    # the 2-process run is the 1-process run up to float round-off
    assert np.allclose(one["aux_error"], two["aux_error"], atol=2e-3)


def test_baselines_soup_and_ls_run_end_to_end(tmp_path, capsys):
    """DPO Soup (2 unit models, interpolated) and DPO-LS (one model per weight) with a plain prefix."""
    quick = [
        "--num-pairs",
        "120",
        "--test-fraction",
        "0.25",
        "--sft-steps",
        "10",
        "--max-steps",
        "5",
        "--batch-size",
        "4",
        "--tiny-width",
        "32",
        "--tiny-heads",
        "2",
        "--log-every",
        "5",
        "--weights",
        "0,1;0.5,0.5;1,0",
    ]
    for method in ("soup", "ls"):
        assert train_llm.main([*quick, "--method", method, "--out", str(tmp_path / method)]) == 0
        res = json.load(open(tmp_path / method / "results.json"))
        ckpt = load_checkpoint(
            str(tmp_path / method / "model.pt"), "llm"
        )  # weights_only: tensors and plain values
        assert len(ckpt["jobs"]) == {"soup": 2, "ls": 3}[method] and len(res["aux_error"]) == 3
        assert res["num_params"] == len(ckpt["jobs"]) * sum(
            v.numel() for v in ckpt["jobs"][0]["state"].values()
        )
        assert ckpt["hpt_config"]["num_objectives"] == 0  # the baselines' prefix is not conditioned on w
        assert not any("mlp" in k for k in ckpt["jobs"][0]["state"])
    # generate: a soup answers at any w; DPO-LS only at its trained weights
    ckpt_path = str(tmp_path / "soup" / "model.pt")
    assert (
        train_llm.main(["generate", ckpt_path, "--w", "0.3,0.7", "--prompt", "Hi?", "--max-new-tokens", "3"])
        == 0
    )
    ls_path = str(tmp_path / "ls" / "model.pt")
    assert (
        train_llm.main(["generate", ls_path, "--w", "0.5,0.5", "--prompt", "Hi?", "--max-new-tokens", "3"])
        == 0
    )
    assert train_llm.main(["generate", ls_path, "--w", "0.3,0.7", "--prompt", "Hi?"]) == 2
    assert "only at its training weights" in capsys.readouterr().err


def test_default_run_writes_answers_that_follow_w(tmp_path):
    """The default run (embedded set, BPE, tiny defaults) judged on sampled text at the two ends: the answers stay
    well-formed, the helpfulness end gives the topic's steps more often, the harmlessness end its caution. Were w
    ignored, both ends would sample the same answers (same seed)."""
    out = tmp_path / "run"
    argv = [
        sys.executable,
        "train_llm.py",
        "--weights",
        "1,0;0,1",
        "--judge-prompts",
        "10",
        "--out",
        str(out),
    ]
    subprocess.run([*argv, "--quiet"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    judged = json.loads((out / "results.json").read_text())["judge"]
    (helpful_1, helpful_2), (safe_1, safe_2) = judged["helpful"], judged["safe"]
    assert min(judged["well_formed"]) >= 0.9, judged
    assert helpful_1 - helpful_2 >= 0.15 and safe_2 - safe_1 >= 0.15, judged


def test_sample_with_large_c_draws_from_the_reference():
    """c -> infinity: p0^(1-1/c) p_theta^(1/c) -> p0; compared with a naive sampler of p0 (same generator draws)."""
    policy = tiny_policy()
    with torch.no_grad():
        for p in policy.parameters():
            if p.requires_grad:
                p.add_(0.5 * torch.randn_like(p))  # a policy far from p0
    prompt, w = data_lib.ByteTokenizer().encode("Human: hi\nAssistant:"), torch.tensor([0.5, 0.5])
    got = train_llm.sample(policy, [prompt], w, 12, -1, c=1e9, generator=torch.Generator().manual_seed(3))[0]
    ids, gen = list(prompt), torch.Generator().manual_seed(3)
    with torch.no_grad(), lora_disabled(policy.lm):
        for _ in range(12):
            probs = policy.lm(input_ids=torch.tensor([ids])).logits[0, -1].softmax(-1)
            probs, order = probs.sort(descending=True)
            ids.append(int(order[torch.multinomial(probs, 1, generator=gen)]))
    assert got == ids[len(prompt) :]
    at_c1 = train_llm.sample(policy, [prompt], w, 12, -1, generator=torch.Generator().manual_seed(3))[0]
    assert at_c1 != got  # c = 1 samples the policy itself


def test_sample_batches_prompts_and_cuts_each_answer_at_its_own_eos():
    """Near-greedy sampling (temperature 1e-4) is deterministic: a batch of two prompts x 2 samples must give each
    prompt's own answer, in prompt order, the first cut at its first eos while the second runs on to the limit."""
    policy, w = tiny_policy(), torch.tensor([0.5, 0.5])
    prompts = [[5, 6, 7, 8], [40, 41, 42, 43]]

    def alone(prompt, eos):
        return train_llm.sample(policy, [prompt], w, 8, eos, temperature=1e-4)[0]

    a, b = alone(prompts[0], -1), alone(prompts[1], -1)
    eos = next(t for t in a[1:] if t != a[0] and t not in b)  # ends the first answer early, never the second
    first, second = alone(prompts[0], eos), alone(prompts[1], eos)
    assert 0 < len(first) < 8 and second == b and eos not in first
    got = train_llm.sample(policy, prompts, w, 8, eos, temperature=1e-4, num=2)
    assert got == [first, first, second, second]


def test_generate_prints_answers_side_by_side_and_reads_prompt_files(tiny_runs, tmp_path, capsys):
    out, _, _ = tiny_runs
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('How do I fix a lamp?\n\n{"prompt": "Can I win?", "response_0": "x"}\n')
    argv = [
        "generate",
        str(out / "one" / "model.pt"),
        "--w",
        "1,0",
        "--w",
        "0.5,0.5",
        "--w",
        "0,1",
        "--prompts",
        str(prompts),
        "--max-new-tokens",
        "8",
        "--c",
        "2",
    ]
    assert train_llm.main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [l for l in lines if l.startswith("prompt:")] == [
        "prompt: How do I fix a lamp?",
        "prompt: Can I win?",
    ]
    assert sum(l.startswith("  w = 0.50,0.50 | ") for l in lines) == 2 and len(lines) == 9
    argv = [
        "generate",
        str(out / "one" / "model.pt"),
        "--w",
        "1,0",
        "--prompt",
        "Hi?",
        "--prompt",
        "Bye?",
        "--max-new-tokens",
        "4",
    ]  # --prompt repeated: every one is answered
    assert train_llm.main(argv) == 0
    assert [l for l in capsys.readouterr().out.splitlines() if l.startswith("prompt:")] == [
        "prompt: Hi?",
        "prompt: Bye?",
    ]


@pytest.mark.parametrize(
    "make, argv, message",
    [
        (
            lambda d: torch.save({"kind": "ltr"}, d / "c.pt"),
            ["--w", "1,0", "--prompt", "x"],
            "expected a 'llm' checkpoint",
        ),
        (
            lambda d: (d / "c.pt").write_bytes(b"PK\x03\x04 truncated"),
            ["--w", "1,0", "--prompt", "x"],
            "c.pt",
        ),
        (lambda d: None, ["--w", "1,0", "--prompt", "x"], "c.pt"),  # missing checkpoint
        (lambda d: None, ["--w", "0.7,0.7", "--prompt", "x"], "summing to 1"),
        (
            lambda d: (d / "e.txt").write_text("\n  \n"),
            ["--w", "1,0", "--prompts", "{d}/e.txt"],
            "holds no prompt",
        ),
        (lambda d: None, ["--w", "1,0", "--prompts", "{d}/missing.txt"], "missing.txt"),
        (
            lambda d: (d / "j.txt").write_text('{"text": "x"}\n'),
            ["--w", "1,0", "--prompts", "{d}/j.txt"],
            "j.txt:1",
        ),
    ],
)
def test_generate_bad_input_gives_clear_errors(tmp_path, capsys, make, argv, message):
    make(tmp_path)
    argv = ["generate", str(tmp_path / "c.pt")] + [a.format(d=tmp_path) for a in argv]
    assert train_llm.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def chat_model_dir(path):
    """A tiny 'pretrained' chat model on disk: byte-level tokenizer with a ChatML template, 2-layer GPT-2."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer, backend.decoder = (
        pre_tokenizers.ByteLevel(add_prefix_space=False),
        decoders.ByteLevel(),
    )
    template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", bos_token="<|im_start|>", chat_template=template
    )
    tok.save_pretrained(path)
    torch.manual_seed(0)
    train_llm.tiny_gpt2(len(tok), 160, 2, 32, 2).save_pretrained(path)
    return tok


def test_chat_template_wraps_the_prompt_and_masks_it_out(tmp_path):
    tok = chat_model_dir(tmp_path)
    pairs = data_lib.PreferencePairs(["How?"], [("Like this.", "No.")], data_lib.preference_labels([0], [1]))
    data = train_llm.tokenize(pairs, tok, True, 64)
    ids = data.input_ids[0, 0]
    assert (
        tok.decode(ids[data.prompt_mask[0, 0]]) == "<|im_start|>user\nHow?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert (
        tok.decode(ids[data.response_mask[0, 0]]) == "Like this.<|im_end|>"
    )  # the answer and its end of turn
    plain = train_llm.tokenize(pairs, tok, False, 64)
    assert tok.decode(plain.input_ids[0, 0][plain.prompt_mask[0, 0]]) == "Human: How?\nAssistant:"


def test_chat_template_runs_through_training_evaluation_and_generation(tmp_path, capsys):
    chat_model_dir(tmp_path / "m")
    quick = [
        "--model",
        str(tmp_path / "m"),
        "--num-pairs",
        "40",
        "--test-fraction",
        "0.2",
        "--max-steps",
        "2",
        "--batch-size",
        "4",
        "--max-length",
        "128",
        "--weights",
        "1,0;0,1",
        "--quiet",
        "--log-every",
        "1",
    ]
    for setting in ("auto", "none"):
        extra = ["--gradient-checkpointing"] if setting == "auto" else []
        assert (
            train_llm.main([*quick, *extra, "--chat-template", setting, "--out", str(tmp_path / setting)])
            == 0
        )
        ckpt = load_checkpoint(str(tmp_path / setting / "model.pt"), "llm")
        assert ckpt["tokenize"]["chat_template"] == (setting == "auto")
    capsys.readouterr()
    assert (
        train_llm.main(
            [
                "generate",
                str(tmp_path / "auto" / "model.pt"),
                "--w",
                "0,1",
                "--prompt",
                "Hi?",
                "--max-new-tokens",
                "4",
            ]
        )
        == 0
    )
    assert "prompt: Hi?" in capsys.readouterr().out


def test_test_data_replaces_the_held_out_slice(tmp_path):
    test_file = data_lib.write_synthetic_preferences(str(tmp_path / "test.jsonl"), num_pairs=7, seed=9)
    quick = [
        "--num-pairs",
        "60",
        "--sft-steps",
        "2",
        "--max-steps",
        "1",
        "--batch-size",
        "4",
        "--tiny-width",
        "16",
        "--tiny-heads",
        "2",
        "--weights",
        "1,0",
        "--quiet",
        "--test-data",
        test_file,
    ]
    assert train_llm.main([*quick, "--out", str(tmp_path / "a")]) == 0
    res = json.load(open(tmp_path / "a" / "results.json"))
    assert (res["num_train_pairs"], res["num_test_pairs"], res["test_data"]) == (60, 7, test_file)
    assert train_llm.main([*quick, "--max-eval-pairs", "3", "--out", str(tmp_path / "b")]) == 0
    assert json.load(open(tmp_path / "b" / "results.json"))["num_test_pairs"] == 3


def test_gradient_checkpointing_recomputes_blocks_and_keeps_the_gradients():
    grads, calls = [], []
    for checkpointing in (False, True):
        policy = tiny_policy()
        if checkpointing:
            enable = getattr(policy.lm, "activation_checkpointing_enable", None)  # transformers >= 5.x
            (enable or policy.lm.gradient_checkpointing_enable)({"use_reentrant": False})
        policy.train()
        policy.lm.transformer.h[0].attn.register_forward_hook(lambda *a, c=checkpointing: calls.append(c))
        batch = tiny_batch(2).batch([0, 1])
        train_llm.policy_logps(policy, batch, torch.tensor([0.3, 0.7])).sum().backward()
        grads.append(policy.prompt.prefix.grad)
    assert calls.count(False) == 1 and calls.count(True) == 2  # forward, then again in the backward pass
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
