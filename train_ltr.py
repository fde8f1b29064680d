"""Learning-to-rank fine-tuning with COS-DPO (paper Sec. 4.1, Alg. 1-4, App. A.1 baselines).

One run trains ONE ranker that can be steered after training to any trade-off between the auxiliary
objectives (w) and between them and the main objective (c or beta):

    stage 1  base ranker s0 on the main label (relevance 0-4) with ListNet (Eq. 7); reused when a base.pt
             for the same data, seed and settings exists (App. A.4: "train sufficiently, then freeze")
    stage 2  --method wcos   Weight-COS-DPO (Alg. 1/3): each step w ~ Dir(alpha), loss w . L_LiPO + lambda G_w
             --method tcos   Temperature-COS-DPO (Alg. 2/4): also beta ~ Unif([lo, hi]^m), network sees
                             beta_bar, output composed with Eq. 15
             --method ls | soup | modpo   the baselines of App. A.1 (one model per weight / m unit models
                             interpolated / m unit models + one MO-DPO model per weight)
    stage 3  test NDCG@10 per objective at the evaluation weights, hypervolume, results.json

Run:
    python train_ltr.py                                   # embedded synthetic data, W-COS-DPO, ~20 s on 2 cores
    python train_ltr.py --dataset mslr --data-dir PATH    # a local MSLR-WEB10K (see README)
    python train_ltr.py --method tcos --out runs/tcos
    python train_ltr.py eval runs/ltr/model.pt --w 0.3,0.7 --c 2      # post-training control (Eq. 14 / 15)
    python train_ltr.py rank runs/ltr/model.pt FILE.txt --w 0.3,0.7 --output scores.txt
Outputs in --out: base.pt, model.pt (each one torch.save dict: weights, configs, normalisation statistics,
objective names, data fingerprint) and results.json.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch

import data as data_lib
from losses import (compose_temperature, cosine_penalty, has_preference, lipo_losses, listnet_loss, mean_over_lists,
                    modpo_loss, normalize_temperature, rescale_temperature, sample_weights, scalarize)
from models import Ranker, RankerConfig, count_parameters
from pareto import hypervolume, ndcg_at_k, weight_grid

METHODS = ("wcos", "tcos", "ls", "soup", "modpo")
CHECKPOINT_VERSION = 1

# Named presets fill the defaults before command-line overrides (STYLE practice 8).
PRESETS = {
    "synthetic": dict(data_dir=None, base_epochs=12, epochs=30, lr=2e-3, max_docs=4096),
    "mslr": dict(data_dir="data/MSLR-WEB10K", base_epochs=30, epochs=50, lr=1e-3, max_docs=16384),
}


# ------------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="COS-DPO learning-to-rank fine-tuning (train). "
                                "Subcommands: `eval CKPT ...`, `rank CKPT FILE ...` (run with --help).")
    a = p.add_argument
    a("--dataset", choices=sorted(PRESETS), default="synthetic", help="preset: embedded synthetic data or MSLR-WEB10K")
    a("--data-dir", default=None, help="folder holding Fold{k}/{train,vali,test}.txt (synthetic: generated when missing)")
    a("--fold", type=int, default=1, help="MSLR fold 1-5")
    a("--objectives", default="I,II", help="auxiliary objectives by name or number, e.g. I,II or I,II,III,IV,V")
    a("--method", choices=METHODS, default="wcos", help="wcos/tcos (COS-DPO) or a baseline: ls, soup, modpo")
    a("--alpha", default="0.5", help="Dirichlet concentration for w: one value or one per objective (App. A.6.1)")
    a("--beta", default="1.0", help="DPO temperature: one value or one per objective (T-COS: evaluation beta)")
    a("--beta-range", default="0.67,1.5", help="T-COS training temperatures beta ~ Unif([lo, hi]^m) (App. A.8)")
    a("--penalty", type=float, default=0.0, help="cosine penalty coefficient lambda (App. A.2, Eq. 19; COS-DPO "
      "only; sign as printed in Eq. 18, see losses.cosine_penalty)")
    a("--parametrization", choices=("scratch", "augment"), default=None,
      help="scratch: separate network (paper main setting); augment: s0 + delta (default for tcos, App. A.8)")
    a("--layers", type=int, default=None, help="transformer layers of the fine-tuned model (paper 2; tcos 5)")
    a("--hidden", type=int, default=64, help="width of the fine-tuned model (paper 64)")
    a("--dropout", type=float, default=0.0, help="dropout of the fine-tuned model")
    a("--weight-decay", type=float, default=0.0, help="AdamW weight decay of the fine-tuned model")
    a("--base-layers", type=int, default=2, help="layers of the base ranker (paper 2)")
    a("--base-hidden", type=int, default=128, help="width of the base ranker (paper 128)")
    a("--epochs", type=int, default=None, help="fine-tuning epochs per trained model (every method, same rule)")
    a("--base-epochs", type=int, default=None, help="ListNet epochs of the base ranker")
    a("--lr", type=float, default=None, help="Adam learning rate")
    a("--max-docs", type=int, default=None, help="batch budget: lists x padded length per batch")
    a("--max-list-len", type=int, default=256, help="training lists longer than this are subsampled (never at eval)")
    a("--w-per-list", action="store_true", help="variant: one w per list instead of one per step (paper: per step)")
    a("--num-weights", type=int, default=11, help="evaluation weights (paper: 11)")
    a("--idcg-zero", type=float, default=0.0, help="NDCG of a query whose ideal DCG is 0 (nan = skip it)")
    a("--base", default=None, help="base checkpoint: reused when it exists (same data), else trained and saved "
      "there (default: OUT/base.pt, reused only when its settings match too)")
    a("--out", default="runs/ltr", help="output folder")
    a("--resume", action="store_true", help="continue from OUT/model.pt (saved after every epoch)")
    a("--seed", type=int, default=0)
    a("--device", choices=("auto", "cpu", "cuda"), default="auto")
    a("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    a("--log-every", type=int, default=20, help="steps between log lines")
    a("--eval-every", type=int, default=5, help="epochs between validation NDCG lines (and always the last)")
    a("--quiet", action="store_true", help="no progress bar")
    return p


def parse_floats(text: str, name: str, m: int, positive: bool = True) -> list[float]:
    """'0.5' -> [0.5] * m, '0.3,0.7' -> [0.3, 0.7]; clear error otherwise."""
    try:
        values = [float(v) for v in str(text).split(",")]
    except ValueError:
        raise ValueError(f"--{name} must be a number or {m} comma-separated numbers, got {text!r}") from None
    if len(values) == 1:
        values = values * m
    if len(values) != m:
        raise ValueError(f"--{name} must be one number or {m} (one per objective), got {len(values)}: {text!r}")
    if not all(math.isfinite(v) for v in values) or (positive and any(v <= 0 for v in values)):
        raise ValueError(f"--{name} must be {'> 0 and ' if positive else ''}finite, got {text!r}")
    return values


def parse_weight(text: str, m: int) -> list[float]:
    """A weight vector w on the simplex from 'w1,...,wm' (entries >= 0, summing to 1)."""
    w = parse_floats(text, "w", m, positive=False)
    if len(str(text).split(",")) != m or any(v < 0 for v in w) or abs(sum(w) - 1) > 1e-6:
        raise ValueError(f"--w must be {m} comma-separated numbers >= 0 summing to 1 (one per objective), got {text!r}")
    return w


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill preset and method defaults, then validate every argument with a message a user understands."""
    for key, value in PRESETS[args.dataset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.parametrization is None:
        args.parametrization = "augment" if args.method == "tcos" else "scratch"  # App. A.8 uses augment for T-COS
    if args.layers is None:
        args.layers = 5 if args.method == "tcos" else 2  # App. A.8: depth 5 for T-COS
    objectives = data_lib.resolve_objectives(args.objectives)
    args.objectives = [o.name for o in objectives]
    args.label_norms = [o.label_norm for o in objectives]  # paper: "l1" for clicks, "softmax" for dense labels
    m = len(args.objectives)
    args.alpha = parse_floats(args.alpha, "alpha", m)
    args.beta = parse_floats(args.beta, "beta", m)
    lo_hi = parse_floats(args.beta_range, "beta-range", 2)
    if lo_hi[0] > lo_hi[1]:
        raise ValueError(f"--beta-range must be lo,hi with lo <= hi, got {args.beta_range!r}")
    args.beta_range = lo_hi
    for name in ("epochs", "base_epochs", "max_docs", "max_list_len", "num_weights", "layers", "hidden",
                 "base_layers", "base_hidden", "log_every", "eval_every"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not args.lr > 0:
        raise ValueError(f"--lr must be > 0, got {args.lr}")
    if args.penalty < 0:
        raise ValueError(f"--penalty must be >= 0, got {args.penalty}")
    if args.method in ("soup", "modpo") and m < 2:
        raise ValueError(f"--method {args.method} needs at least 2 objectives")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no CUDA device")
    args.device = "cuda" if args.device == "auto" and torch.cuda.is_available() else \
        ("cpu" if args.device == "auto" else args.device)
    if args.data_dir is None:  # synthetic preset: the embedded dataset, generated on first use
        args.data_dir = data_lib.DEFAULT_SYNTHETIC_DIR
    return args


# ------------------------------------------------------------------------------------------------------
# small helpers: seeding, atomic saves, logging
# ------------------------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    """One seeding block. Batches draw from seed-derived numpy generators, w and beta from a torch.Generator
    seeded per model (fine_tune), so a run is reproducible and --resume continues the same draws."""
    torch.manual_seed(seed)
    np.random.seed(seed)


def progress(items: Sequence, desc: str, enabled: bool):
    """A dependency-free progress bar on stderr (only when stderr is a terminal)."""
    enabled = enabled and sys.stderr.isatty()
    for i, item in enumerate(items):
        if enabled:
            done = (i + 1) * 30 // len(items)
            sys.stderr.write(f"\r{desc} [{'#' * done}{'.' * (30 - done)}] {i + 1}/{len(items)}")
            sys.stderr.flush()
        yield item
    if enabled:
        sys.stderr.write("\r" + " " * (len(desc) + 45) + "\r")


class NonFiniteLoss(RuntimeError):
    pass


# ------------------------------------------------------------------------------------------------------
# scoring: model -> scores for every document of a split (reference scores are computed ONCE)
# ------------------------------------------------------------------------------------------------------
def to_device(batch, device: str):
    if device == "cpu":
        return batch
    return data_lib.Batch(**{k: getattr(batch, k).to(device) for k in batch.__dataclass_fields__})


@torch.no_grad()
def score_split(score_fn: Callable, split, device: str, max_docs: int) -> torch.Tensor:
    """Apply score_fn(batch) -> (B, n) to every full list of a split; returns (N,) scores in row order (CPU)."""
    out = torch.zeros(split.num_docs)
    for batch in data_lib.make_batches(split, max_docs=max_docs):
        batch = to_device(batch, device)
        scores = score_fn(batch)
        out[batch.index[batch.mask].cpu()] = scores[batch.mask].float().cpu()
    return out


def ranker_fn(model: Ranker, ref: Optional[torch.Tensor] = None) -> Callable:
    """score_fn for an unconditioned Ranker (the base, a unit model); ref: (N,) s0 of the split (augment needs it)."""
    def fn(batch):
        ref_b = None if ref is None else ref.to(batch.mask.device)[batch.index]
        return model(batch.features, batch.mask, ref_scores=ref_b)
    return fn


# ------------------------------------------------------------------------------------------------------
# stage 1: the base ranker s0 (ListNet on relevance, Eq. 7)
# ------------------------------------------------------------------------------------------------------
def base_settings(args) -> dict:
    """Everything that defines the base model; a base.pt is reused only when all of it matches."""
    return dict(layers=args.base_layers, hidden=args.base_hidden, epochs=args.base_epochs, lr=args.lr,
                max_docs=args.max_docs, max_list_len=args.max_list_len, seed=args.seed)


def train_base(args, splits, stats, log) -> Ranker:
    path = args.base or os.path.join(args.out, "base.pt")
    settings = base_settings(args)
    if os.path.exists(path):
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        if ckpt.get("data_fingerprint") != stats["fingerprint"]:
            raise ValueError(f"{path} was trained on other data (fingerprint {ckpt.get('data_fingerprint')}, "
                             f"this data {stats['fingerprint']}); delete it or pass another --out/--base")
        if args.base or ckpt.get("settings") == settings:
            log(f"[base] reusing {path} (val NDCG@10 {ckpt.get('val_ndcg', float('nan')):.4f})")
            return model_from(ckpt, args.device)
        log(f"[base] {path} has other settings ({ckpt.get('settings')}); retraining")
    torch.manual_seed(args.seed)
    model = Ranker(RankerConfig(num_features=data_lib.NUM_INPUTS, hidden=args.base_hidden,
                                layers=args.base_layers)).to(args.device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    log(f"[base] ListNet on relevance: {count_parameters(model):,} parameters, {args.base_epochs} epochs")
    t0 = time.perf_counter()
    best_val, best_state, best_epoch = -1.0, None, 0
    for epoch in range(args.base_epochs):
        model.train()
        batches = data_lib.make_batches(splits["train"], args.max_docs, shuffle=True,
                                        max_list_len=args.max_list_len, seed=args.seed * 1000 + epoch)
        total = 0.0
        for batch in progress(batches, f"base epoch {epoch + 1}", not args.quiet):
            batch = to_device(batch, args.device)
            loss = listnet_loss(model(batch.features, batch.mask), batch.relevance, batch.mask).mean()
            if not torch.isfinite(loss):
                raise NonFiniteLoss(f"base model: loss became {loss.item()} in epoch {epoch + 1}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            total += loss.item()
        model.eval()
        _, val = split_ndcg(score_split(ranker_fn(model), splits["vali"], args.device, args.max_docs), splits["vali"],
                            idcg_zero=args.idcg_zero)
        if val > best_val:  # "train sufficiently" (App. A.4): keep the epoch with the best validation NDCG
            best_val, best_state, best_epoch = val, copy.deepcopy(model.state_dict()), epoch + 1
        log(f"[base] epoch {epoch + 1:3d} | listnet {total / len(batches):.4f} | val NDCG@10 main {val:.4f}")
    seconds = time.perf_counter() - t0
    model.load_state_dict(best_state)
    data_lib.atomic_save(dict(kind="cosdpo-ltr-base", version=CHECKPOINT_VERSION, model_config=model.config.to_dict(),
                     model_state=best_state, settings=settings, run_config=run_config(args), norm_stats=stats,
                     objectives=["relevance"], data_fingerprint=stats["fingerprint"], val_ndcg=best_val,
                     best_epoch=best_epoch, train_seconds=seconds), path)
    log(f"[base] saved {path}: epoch {best_epoch} (best val NDCG@10 {best_val:.4f}), {seconds:.1f} s")
    return model.eval()


# ------------------------------------------------------------------------------------------------------
# NDCG over a whole split from per-document scores
# ------------------------------------------------------------------------------------------------------
def split_ndcg(scores: torch.Tensor, split, k: int = 10, idcg_zero: float = 0.0) -> tuple[list, float]:
    """Mean NDCG@k over the queries of a split, per auxiliary objective (raw gains z^j) and for relevance.

    scores: (N,) per document. Returns ([NDCG_1, ..., NDCG_m], NDCG_main); nan-mean when idcg_zero is nan.
    """
    aux, main = [], []
    for b in data_lib.make_batches(split, max_docs=1 << 16):
        s = scores[b.index].masked_fill(~b.mask, 0.0)  # (B, n)
        aux.append(torch.stack([ndcg_at_k(s, b.aux_raw[..., j], k=k, mask=b.mask, idcg_zero=idcg_zero)
                                for j in range(b.aux_raw.shape[-1])], -1))  # (B, m)
        main.append(ndcg_at_k(s, b.relevance, k=k, mask=b.mask, idcg_zero=idcg_zero))
    return torch.cat(aux).nanmean(0).tolist(), float(torch.cat(main).nanmean())


# ------------------------------------------------------------------------------------------------------
# stage 2: fine-tuning. A "job" is one model to train; COS-DPO has one job, the baselines several.
# ------------------------------------------------------------------------------------------------------
@dataclass
class Job:
    """One model to train: fixed_w None = COS-DPO (w sampled every step), else the model's own weight."""
    name: str
    config: RankerConfig
    fixed_w: Optional[list] = None
    modpo: bool = False  # train with the MO-DPO loss (Eq. 17) against the unit models


def make_jobs(args, weights: np.ndarray) -> list[Job]:
    """The models a method trains (App. A.1): every model gets the same epochs (the per-model budget rule)."""
    m = len(args.objectives)
    def cfg(conditioned: bool, temperature: bool = False) -> RankerConfig:
        return RankerConfig(num_features=data_lib.NUM_INPUTS, hidden=args.hidden, layers=args.layers,
                            dropout=args.dropout, num_objectives=m if conditioned else 0, temperature_input=temperature,
                            parametrization=args.parametrization)
    units = [Job(f"unit{j + 1}", cfg(False), fixed_w=np.eye(m)[j].tolist()) for j in range(m)]
    if args.method == "wcos":
        return [Job("wcos", cfg(True))]
    if args.method == "tcos":
        return [Job("tcos", cfg(True, temperature=True))]
    if args.method == "ls":  # DPO-LS: one model per evaluation weight
        return [Job(f"ls{i + 1}", cfg(False), fixed_w=w.tolist()) for i, w in enumerate(weights)]
    if args.method == "soup":  # DPO Soup: m unit models, parameters interpolated at evaluation
        return units
    # MO-DPO: m unit models, then one model per evaluation weight trained with Eq. 17
    return units + [Job(f"modpo{i + 1}", cfg(False), fixed_w=w.tolist(), modpo=True) for i, w in enumerate(weights)]


def step_loss(args, model: Ranker, batch, ref: torch.Tensor, job: Job, gen: torch.Generator,
              units: Optional[torch.Tensor] = None):
    """The loss of one step and the per-objective losses (for the log). ref: (B, n) frozen base scores."""
    B, m = batch.mask.shape[0], len(args.objectives)
    device = batch.mask.device
    if job.fixed_w is not None:
        w = torch.tensor(job.fixed_w, device=device)
    else:  # Alg. 1/2 line 2: w ~ Dir(alpha), one per step (paper) or one per list (--w-per-list variant)
        w = sample_weights(args.alpha, B if args.w_per_list else 1, generator=gen).to(device)
        w = w if args.w_per_list else w[0]
    cond_w = w if model.config.num_objectives else None
    beta = torch.tensor(args.beta, device=device)
    if model.config.temperature_input:  # Alg. 2 line 2: beta ~ Unif([lo, hi]^m); network sees beta_bar
        lo, hi = args.beta_range
        beta = (lo + (hi - lo) * torch.rand(B if args.w_per_list else 1, m, generator=gen)).to(device)
        beta = beta if args.w_per_list else beta[0]
        net = model(batch.features, batch.mask, w=cond_w, beta_bar=normalize_temperature(beta), ref_scores=ref)
        scores = compose_temperature(net, ref, beta)  # Eq. 15
    else:
        scores = model(batch.features, batch.mask, w=cond_w, ref_scores=ref)
    if job.modpo:  # Eq. 17 for the objective with the largest weight (so 1/w_i <= m)
        i = int(w.argmax())
        per_list = modpo_loss(scores, ref, units, batch.aux[..., i], w, i, args.beta[i], batch.mask,
                              args.label_norms[i])
        loss = mean_over_lists(per_list[:, None], has_preference(batch.aux[..., i:i + 1], batch.mask,
                                                                  args.label_norms[i]))[0]
        L = torch.full((m,), float("nan"))
        L[i] = loss.item()
        return loss, L
    per_list = lipo_losses(scores, ref, batch.aux, beta, batch.mask, args.label_norms)  # (B, m), Eq. 11
    valid = has_preference(batch.aux, batch.mask, args.label_norms)  # (B, m): lists that state a preference
    L = mean_over_lists(per_list, valid)  # (m,)
    if w.dim() == 1:  # the paper: one w for the step, L_w = w . L
        loss = scalarize(L, w)
    else:  # variant: list b has its own w_b; the same per-objective means, each list weighted by its w_b
        loss = scalarize(per_list * valid / valid.sum(0).clamp_min(1), w).sum()
    if args.penalty > 0 and job.fixed_w is None:  # Eq. 19 (Alg. 3/4): COS-DPO only, not the baselines (App. A.1)
        # sign as in losses.cosine_penalty (Eq. 18); the per-list variant uses the batch's mean weight
        loss = loss + args.penalty * cosine_penalty(L, w if w.dim() == 1 else w.mean(0))
    return loss, L.detach().cpu()


def fine_tune(args, job: Job, splits, ref: dict, log, save: Callable, state: Optional[dict] = None,
              units: Optional[torch.Tensor] = None) -> None:
    """Train the model of one job up to args.epochs epochs; save(entry) after every epoch.

    The entry holds everything to rebuild the model and to continue training (--resume): name, weight,
    model config and weights, optimizer and w-sampler states, epoch, step, seconds. state: such an entry
    to continue from. ref: {"train": (N,), "vali": (N,)} frozen base scores, computed once.
    units: (N_train, m) scores of the unit-weight models (MO-DPO only).
    """
    torch.manual_seed(args.seed)
    model = Ranker(job.config).to(args.device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    gen = torch.Generator().manual_seed(args.seed + 1)
    epoch0, step, seconds = 0, 0, 0.0
    if state is not None:
        model.load_state_dict(state["model_state"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        epoch0, step, seconds = state["epoch"], state["step"], state["seconds"]
        log(f"[{job.name}] resuming after epoch {epoch0} (step {step})")
    ref_train = ref["train"].to(args.device)
    units = None if units is None else units.to(args.device)
    for epoch in range(epoch0, args.epochs):
        model.train()
        t_epoch = t_log = time.perf_counter()
        docs = steps_log = 0
        epoch_loss = 0.0
        batches = data_lib.make_batches(splits["train"], args.max_docs, shuffle=True,
                                        max_list_len=args.max_list_len, seed=args.seed * 1000 + epoch)
        for batch in progress(batches, f"{job.name} epoch {epoch + 1}", not args.quiet):
            batch = to_device(batch, args.device)
            loss, L = step_loss(args, model, batch, ref_train[batch.index], job, gen,
                                None if units is None else units[batch.index])
            if not torch.isfinite(loss):
                raise NonFiniteLoss(f"[{job.name}] loss became {loss.item()} at step {step + 1} (epoch {epoch + 1}); "
                                    "stopped, the last good checkpoint is kept. Try a lower --lr or --beta.")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step, steps_log, docs = step + 1, steps_log + 1, docs + int(batch.mask.sum())
            epoch_loss += loss.item()
            if step % args.log_every == 0:
                dt = time.perf_counter() - t_log
                log(f"[{job.name}] step {step:6d} | epoch {epoch + 1:3d} | loss {loss.item():8.4f} | "
                    f"L [{' '.join(f'{v:.4f}' for v in L.tolist())}] | {1e3 * dt / steps_log:6.1f} ms/step | "
                    f"{docs / dt:8.0f} docs/s")
                t_log, docs, steps_log = time.perf_counter(), 0, 0
        epoch_seconds = time.perf_counter() - t_epoch
        seconds += epoch_seconds
        model.eval()
        line = f"[{job.name}] epoch {epoch + 1:3d} | mean loss {epoch_loss / len(batches):.4f} | {epoch_seconds:5.1f} s"
        if (epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs:
            line += " | " + validation_line(args, model, job, splits, ref)
        log(line)
        save(dict(name=job.name, fixed_w=job.fixed_w, model_config=job.config.to_dict(),
                  model_state=copy.deepcopy(model.state_dict()), optimizer=copy.deepcopy(opt.state_dict()),
                  generator=gen.get_state(), epoch=epoch + 1, step=step, seconds=seconds))


def validation_line(args, model: Ranker, job: Job, splits, ref: dict) -> str:
    """Validation NDCG@10 per objective: at each unit weight e_j for COS-DPO, at the model's own w otherwise."""
    m = len(args.objectives)
    parts = []
    ws = np.eye(m) if job.fixed_w is None else np.array([job.fixed_w])
    for w in ws:
        scores = score_split(steer_fn(model, ref["vali"], w, beta=args.beta), splits["vali"], args.device, args.max_docs)
        aux, main = split_ndcg(scores, splits["vali"], idcg_zero=args.idcg_zero)
        parts.append(f"w={np.round(w, 2).tolist()}: aux {' '.join(f'{v:.4f}' for v in aux)} main {main:.4f}")
    return "val NDCG@10 " + " ; ".join(parts)


# ------------------------------------------------------------------------------------------------------
# post-training control: scores at any w, at a temperature scale c (Eq. 14) or temperature beta (Eq. 15)
# ------------------------------------------------------------------------------------------------------
def steer_fn(model: Ranker, ref: torch.Tensor, w, c: Optional[float] = None, beta=None) -> Callable:
    """score_fn(batch) of a single trained ranker at weight w (ignored by unconditioned models).

    ref: (N,) base scores of the split. W-COS and the baselines: Eq. 14 with scale c (None = 1). T-COS:
    the network sees beta_bar and its output is composed with Eq. 15 at beta (times c when c is given).
    """
    cfg = model.config
    def fn(batch):
        device = batch.mask.device
        ref_b = ref.to(device)[batch.index]
        w_t = torch.as_tensor(w, dtype=torch.float32, device=device) if cfg.num_objectives else None
        if cfg.temperature_input:
            b = torch.as_tensor(beta, dtype=torch.float32, device=device) * (1.0 if c is None else c)
            net = model(batch.features, batch.mask, w=w_t, beta_bar=normalize_temperature(b), ref_scores=ref_b)
            return compose_temperature(net, ref_b, b)
        scores = model(batch.features, batch.mask, w=w_t, ref_scores=ref_b)
        return scores if c is None or c == 1.0 else rescale_temperature(scores, ref_b, c)
    return fn


class TrainedRanker:
    """Everything a saved model.pt holds, ready to score: base s0, the method's model(s), the controls.

    TrainedRanker.load(path).score_split(split, w, c=None, beta=None) -> (N,) scores of every document.
    LS and MO-DPO only have models at their evaluation weights; a Soup interpolates parameters at any w.
    """

    def __init__(self, ckpt: dict, device: str = "cpu"):
        self.ckpt, self.device = ckpt, device
        self.method, self.objectives = ckpt["method"], ckpt["objectives"]
        self.beta = ckpt["run_config"]["beta"]
        self.max_docs = ckpt["run_config"]["max_docs"]
        self.base = model_from(ckpt["base"], device)
        self.models = [model_from(job, device) for job in ckpt["jobs"]]
        self._ref_cache: list = []  # (split, its s0 scores); holding the split keeps identity checks valid

    @classmethod
    def load(cls, path: str, device: str = "cpu") -> "TrainedRanker":
        if not os.path.exists(path):
            raise FileNotFoundError(f"no checkpoint at {path} (expected a model.pt written by train_ltr.py)")
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(ckpt, dict) or ckpt.get("kind") != "cosdpo-ltr":
            raise ValueError(f"{path} is not a train_ltr.py model checkpoint")
        if not ckpt.get("complete"):
            raise ValueError(f"{path} is from an unfinished run; finish it with --resume first")
        return cls(ckpt, device)

    def ref_scores(self, split) -> torch.Tensor:
        """s0 of every document of `split`: (N,), computed once per split object."""
        for cached, scores in self._ref_cache:
            if cached is split:
                return scores
        scores = score_split(ranker_fn(self.base), split, self.device, self.max_docs)
        self._ref_cache.append((split, scores))
        return scores

    def model_at(self, w) -> Ranker:
        """The ranker that serves weight w for this method."""
        w = np.asarray(w, dtype=np.float64)
        m = len(self.objectives)
        if w.shape != (m,) or (w < 0).any() or abs(w.sum() - 1) > 1e-6:
            raise ValueError(f"w must be {m} numbers >= 0 summing to 1 (one per objective {self.objectives}), "
                             f"got {w.tolist()}")
        if self.method in ("wcos", "tcos"):
            return self.models[0]
        if self.method == "soup":  # theta_w = sum_j w_j theta_j (Rame et al. 2024), no retraining
            states = [mdl.state_dict() for mdl in self.models]
            state = {k: sum(float(w_j) * st[k] for w_j, st in zip(w, states)) for k in states[0]}
            soup = Ranker(self.models[0].config).to(self.device)
            soup.load_state_dict(state)
            return soup.eval()
        jobs = [(job, mdl) for job, mdl in zip(self.ckpt["jobs"], self.models)
                if not job["name"].startswith("unit") or self.method == "ls"]
        for job, mdl in jobs:
            if np.allclose(job["fixed_w"], w, atol=1e-6):
                return mdl
        raise ValueError(f"--method {self.method} has one model per evaluation weight; w={w.tolist()} is not one "
                         f"of them: {[job['fixed_w'] for job, _ in jobs]}")

    def score_split(self, split, w, c: Optional[float] = None, beta=None) -> torch.Tensor:
        """(N,) scores of every document at weight w; c: temperature scale (Eq. 14); beta: T-COS only (Eq. 15)."""
        if beta is not None and self.method != "tcos":
            raise ValueError(f"beta moves a T-COS model (Eq. 15); this checkpoint is {self.method}: use c (Eq. 14)")
        beta = self.beta if beta is None else beta
        fn = steer_fn(self.model_at(w), self.ref_scores(split), w, c=c, beta=beta)
        return score_split(fn, split, self.device, self.max_docs)


def evaluate(trained: TrainedRanker, split, weights, c=None, beta=None, idcg_zero: float = 0.0) -> dict:
    """Test NDCG@10 per auxiliary objective and of the main objective at each weight; hypervolume (ref 0)."""
    m = len(trained.objectives)
    aux, main = [], []
    for w in weights:
        a, mn = split_ndcg(trained.score_split(split, w, c=c, beta=beta), split, idcg_zero=idcg_zero)
        aux.append(a)
        main.append(mn)
    try:
        hv = hypervolume(np.array(aux), np.zeros(m), maximize=True)
    except ValueError as err:  # no point dominates the reference point (cannot happen with NDCG > 0)
        print(f"warning: hypervolume undefined: {err}", file=sys.stderr)
        hv = None
    return dict(aux_ndcg=aux, main_ndcg=main, hypervolume=hv,
                main_ndcg_mean=float(np.mean(main)), main_ndcg_std=float(np.std(main)))


# ------------------------------------------------------------------------------------------------------
# checkpoints
# ------------------------------------------------------------------------------------------------------
def new_checkpoint(args, stats, weights, base: Ranker) -> dict:
    return dict(kind="cosdpo-ltr", version=CHECKPOINT_VERSION, method=args.method, objectives=args.objectives,
                label_norms=args.label_norms, weights=weights.tolist(), run_config=run_config(args),
                norm_stats=stats, data_fingerprint=stats["fingerprint"],
                base=dict(model_config=base.config.to_dict(), model_state=base.state_dict()),
                jobs=[], complete=False)


def run_config(args) -> dict:
    """The resolved arguments as plain JSON-able values."""
    return {k: v for k, v in vars(args).items() if k not in ("command",)}


def check_resumable(ckpt: dict, args, stats, path: str) -> None:
    """A checkpoint from other data, objectives or method than asked is refused with a clear message."""
    if ckpt.get("kind") != "cosdpo-ltr":
        raise ValueError(f"{path} is not a train_ltr.py checkpoint")
    if ckpt.get("data_fingerprint") != stats["fingerprint"]:
        raise ValueError(f"cannot resume from {path}: it was trained on other data (fingerprint "
                         f"{ckpt.get('data_fingerprint')}) than {args.data_dir} ({stats['fingerprint']})")
    for key, want in (("objectives", args.objectives), ("method", args.method)):
        if ckpt.get(key) != want:
            raise ValueError(f"cannot resume from {path}: its {key} is {ckpt.get(key)!r} but this run asks for "
                             f"{want!r}; use another --out or drop --resume")


# ------------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------------
def train(args) -> dict:
    """Stages 1-3 for the resolved arguments; returns the results dict (also written to OUT/results.json)."""
    os.makedirs(args.out, exist_ok=True)
    log_file = open(os.path.join(args.out, "train.log"), "a")
    def log(msg: str) -> None:
        print(msg, flush=True)
        log_file.write(msg + "\n")
        log_file.flush()

    log("config: " + json.dumps(run_config(args), sort_keys=True))
    if args.data_dir == data_lib.DEFAULT_SYNTHETIC_DIR:  # the embedded dataset, generated on first use
        data_lib.ensure_synthetic(args.data_dir)
    splits, stats = data_lib.load_ltr(args.data_dir, args.fold, args.objectives)
    log("data: " + " | ".join(f"{k} {s.num_queries} queries {s.num_docs} docs" for k, s in splits.items())
        + f" | fingerprint {stats['fingerprint']}")
    m = len(args.objectives)
    weights = weight_grid(m, args.num_weights)

    path = os.path.join(args.out, "model.pt")
    old = None
    if args.resume:
        if not os.path.exists(path):
            raise FileNotFoundError(f"--resume: no {path} to resume from")
        old = torch.load(path, map_location="cpu", weights_only=False)
        check_resumable(old, args, stats, path)
    # a resumed run keeps the base model its fine-tuned models were trained against
    base = model_from(old["base"], args.device) if old else train_base(args, splits, stats, log)
    if old:
        log("[base] reusing the base model stored in the checkpoint being resumed")
    t0 = time.perf_counter()
    ref = {k: score_split(ranker_fn(base), splits[k], args.device, args.max_docs) for k in ("train", "vali")}
    log(f"[base] reference scores of {sum(s.num_docs for k, s in splits.items() if k != 'test')} documents "
        f"computed once ({time.perf_counter() - t0:.1f} s)")

    ckpt = new_checkpoint(args, stats, weights, base)
    if old:
        ckpt["jobs"], ckpt["weights"] = old["jobs"], old["weights"]
        weights = np.array(old["weights"])
    elif os.path.exists(path):
        log(f"note: replacing the earlier run in {path} (pass --resume to continue it instead)")

    units = None
    for i, job in enumerate(make_jobs(args, weights)):
        state = ckpt["jobs"][i] if i < len(ckpt["jobs"]) else None
        if state is not None and state["epoch"] >= args.epochs:
            continue  # finished before this --resume
        if job.modpo and units is None:  # the m unit models' scores on the training lists, computed once
            units = torch.stack([score_split(ranker_fn(model_from(unit, args.device), ref["train"]), splits["train"],
                                             args.device, args.max_docs) for unit in ckpt["jobs"][:m]], -1)  # (N, m)

        def save(entry, i=i):  # after every epoch: the job's entry replaces its previous one, atomically
            ckpt["jobs"][i:i + 1] = [entry]
            data_lib.atomic_save(ckpt, path)
        log(f"[{job.name}] training {count_parameters(Ranker(job.config)):,} parameters for {args.epochs} epochs"
            + ("" if job.fixed_w is None else f" at w={np.round(job.fixed_w, 3).tolist()}"))
        fine_tune(args, job, splits, ref, log, save, state, units)
    ckpt["complete"] = True
    data_lib.atomic_save(ckpt, path)

    trained = TrainedRanker(ckpt, args.device)
    train_seconds = sum(job["seconds"] for job in ckpt["jobs"])
    num_params = sum(count_parameters(mdl) for mdl in trained.models)
    result = evaluate(trained, splits["test"], weights, idcg_zero=args.idcg_zero)  # T-COS at --beta
    results = dict(method=args.method, objectives=args.objectives, weights=weights.tolist(), **result,
                   hv_ref=[0.0] * m, train_seconds=train_seconds, num_params=num_params, beta=args.beta,
                   k=10, idcg_zero=args.idcg_zero, dataset=args.dataset, fold=args.fold, seed=args.seed,
                   epochs=args.epochs, data_fingerprint=stats["fingerprint"], config=run_config(args))
    data_lib.atomic_write_json(results, os.path.join(args.out, "results.json"))
    log(summary_table(results))
    log_file.close()
    return results


def model_from(entry: dict, device: str = "cpu") -> Ranker:
    """Rebuild a Ranker from a checkpoint entry {model_config, model_state}."""
    model = Ranker(RankerConfig(**entry["model_config"]))
    model.load_state_dict(entry["model_state"])
    return model.to(device).eval()


def summary_table(results: dict, split: str = "test") -> str:
    names = results["objectives"]
    width = [max(len(n), 8) for n in names]
    wcol = max(len(str(np.round(w, 2).tolist())) for w in results["weights"])
    lines = [f"\n{results['method']}: {split} NDCG@10 at {len(results['weights'])} weight(s)",
             " | ".join(["w".ljust(wcol)] + [n.rjust(k) for n, k in zip(names, width)] + ["main".rjust(8)])]
    for w, aux, main in zip(results["weights"], results["aux_ndcg"], results["main_ndcg"]):
        lines.append(" | ".join([str(np.round(w, 2).tolist()).ljust(wcol)] + [f"{v:{k}.4f}" for v, k in zip(aux, width)]
                                + [f"{main:8.4f}"]))
    hv = results["hypervolume"]
    lines.append(f"hypervolume (ref 0) {hv if hv is None else f'{hv:.4e}'} | main NDCG@10 "
                 f"{results['main_ndcg_mean']:.4f} +/- {results['main_ndcg_std']:.4f} | train {results['train_seconds']:.1f} s"
                 f" | {results['num_params']:,} parameters")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------
# subcommands: eval (post-training control on a split) and rank (score a LETOR file)
# ------------------------------------------------------------------------------------------------------
def control_parser(command: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"train_ltr.py {command}", description={
        "eval": "Evaluate a saved model.pt at any w, temperature scale c (Eq. 14) or beta (T-COS, Eq. 15).",
        "rank": "Score a LETOR/MSLR-format file with a saved model.pt; writes one score per line, in file order."}[command])
    p.add_argument("checkpoint", help="model.pt written by train_ltr.py")
    if command == "rank":
        p.add_argument("file", help="LETOR-format file: label qid:Q 1:v ... (labels are ignored)")
        p.add_argument("--output", default="-", help="where to write the scores (default: standard output)")
    p.add_argument("--w", default=None, help="weight over the auxiliary objectives, e.g. 0.3,0.7 "
                   "(eval default: all evaluation weights; rank default: equal weights)")
    p.add_argument("--c", type=float, default=None, help="temperature scale c > 0: the model for c * beta (Eq. 14)")
    p.add_argument("--beta", default=None, help="T-COS temperature, one value or one per objective (Eq. 15)")
    if command == "eval":
        p.add_argument("--split", choices=("train", "vali", "test"), default="test")
        p.add_argument("--data-dir", default=None, help="default: the data folder recorded in the checkpoint")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    return p


def parse_controls(args, trained: TrainedRanker) -> tuple:
    """Validate --w / --c / --beta against the checkpoint; returns (weights list or None, c, beta)."""
    m = len(trained.objectives)
    weights = None if args.w is None else [parse_weight(args.w, m)]
    if args.c is not None and not (args.c > 0 and math.isfinite(args.c)):
        raise ValueError(f"--c must be a finite number > 0, got {args.c}")
    beta = None if args.beta is None else parse_floats(args.beta, "beta", m)
    if beta is not None and trained.method != "tcos":
        raise ValueError(f"--beta moves a T-COS model (Eq. 15); this checkpoint is {trained.method}: use --c (Eq. 14)")
    return weights, args.c, beta


def control_main(command: str, argv: list) -> None:
    args = control_parser(command).parse_args(argv)
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else \
        ("cpu" if args.device == "auto" else args.device)
    trained = TrainedRanker.load(args.checkpoint, device)
    weights, c, beta = parse_controls(args, trained)
    m, cfg = len(trained.objectives), trained.ckpt["run_config"]
    if command == "rank":
        # the file is normalised with the checkpoint's training statistics (its labels are not used)
        split = data_lib.make_split(data_lib.read_letor(args.file, cache=False), trained.ckpt["norm_stats"])
        w = weights[0] if weights else [1.0 / m] * m
        scores = trained.score_split(split, w, c=c, beta=beta).numpy()
        out = sys.stdout if args.output == "-" else open(args.output + ".tmp", "w")
        out.write("".join(f"{v:.6f}\n" for v in scores))
        if out is not sys.stdout:
            out.close()
            os.replace(args.output + ".tmp", args.output)
            print(f"wrote {len(scores)} scores ({split.num_queries} queries) to {args.output}", file=sys.stderr)
        return
    data_dir = args.data_dir or cfg["data_dir"]
    splits, stats = data_lib.load_ltr(data_dir, cfg["fold"], trained.objectives)
    if stats["fingerprint"] != trained.ckpt["data_fingerprint"]:
        raise ValueError(f"{args.checkpoint} was trained on other data than {data_dir} (fingerprint "
                         f"{trained.ckpt['data_fingerprint']} vs {stats['fingerprint']})")
    weights = weights or trained.ckpt["weights"]
    result = evaluate(trained, splits[args.split], weights, c=c, beta=beta, idcg_zero=cfg["idcg_zero"])
    controls = "".join(f" {k}={v}" for k, v in (("c", c), ("beta", beta)) if v is not None)
    print(summary_table(dict(method=trained.method + controls, objectives=trained.objectives, weights=weights,
                             train_seconds=sum(j["seconds"] for j in trained.ckpt["jobs"]),
                             num_params=sum(count_parameters(mdl) for mdl in trained.models), **result), args.split))


def main(argv: Optional[list] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv and argv[0] in ("eval", "rank"):
            control_main(argv[0], argv[1:])
            return 0
        args = resolve_args(build_parser().parse_args(argv))
        if args.threads:
            torch.set_num_threads(args.threads)
        seed_everything(args.seed)
        train(args)
    except (ValueError, FileNotFoundError, NonFiniteLoss) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2 if not isinstance(err, NonFiniteLoss) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
