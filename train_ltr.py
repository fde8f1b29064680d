"""Learning-to-rank fine-tuning with COS-DPO (paper Sec. 4.1, Alg. 1-4, App. A.1 baselines).

One run trains ONE ranker that can be steered after training to any trade-off between the auxiliary
objectives (w) and between them and the main objective (c or beta):

    stage 1  the base ranker s0 on the main label (relevance 0-4) with ListNet (Eq. 7) until its validation
             NDCG@10 has not improved for --base-patience epochs, best epoch kept (App. A.4: "train
             sufficiently"); reused when a base.pt for the same data and settings exists
    stage 2  --method wcos   Weight-COS-DPO (Alg. 1/3): each step w ~ Dir(alpha), loss w . L_LiPO - lambda cos(w, L)
             --method tcos   Temperature-COS-DPO (Alg. 2/4): also beta ~ Unif([lo, hi]^m); the network sees
                             beta_bar and its output is composed with s0 by Eq. 15
             --method ls | soup | modpo   the baselines of App. A.1 (one model per weight / m unit models
                             interpolated / m unit models + one MO-DPO model per weight)
             Budget (Table 1's times): a baseline model trains --epochs epochs (at least --min-steps steps), a
             COS-DPO model --cos-budget (3) times as many steps; fixed, no early stopping
    stage 3  test NDCG@10 per objective at the evaluation weights, hypervolume, results.json

Run:
    python train_ltr.py                                   # embedded synthetic data, W-COS-DPO, under a minute
    python train_ltr.py --dataset mslr --data-dir PATH    # a local MSLR-WEB10K (see README)
    python train_ltr.py eval runs/ltr/model.pt --w 0.3,0.7 --c 2      # post-training control (Eq. 14 / 15)
    python train_ltr.py rank runs/ltr/model.pt FILE.txt --w 0.3,0.7 --output scores.txt
Outputs in --out: base.pt and model.pt (torch.save dicts of tensors and plain values: weights, configs,
normalisation statistics, objective names, data fingerprint; written atomically), results.json, train.log.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from tqdm import tqdm

import data as data_lib
import pareto
from losses import (
    compose_temperature,
    cosine_penalty,
    has_preference,
    lipo_losses,
    listnet_loss,
    mean_over_lists,
    modpo_loss,
    normalize_temperature,
    sample_weights,
    scalarize,
)
from models import (
    CHECKPOINT_VERSION,
    Ranker,
    RankerConfig,
    TrainedRanker,
    count_parameters,
    load_checkpoint,
    ranker_from,
    resolve_device,
    steered_scores,
)

METHODS = ("wcos", "tcos", "ls", "soup", "modpo")

# Named presets fill the defaults that the command line leaves open. The baselines' epochs: on data seeds 11
# and 12 of the embedded generator a unit model's validation NDCG@10 peaks by epoch 4-10 and falls after;
# at MSLR-WEB10K's size 7 keeps a COS-DPO model (3 x 7 epochs) where its validation NDCG@10 levels off.
PRESETS = {
    "synthetic": dict(data_dir=None, base_epochs=12, epochs=10, min_steps=150, lr=2e-3, max_docs=4096),
    "mslr": dict(
        data_dir="data/MSLR-WEB10K", base_epochs=30, epochs=7, min_steps=150, lr=1e-3, max_docs=16384
    ),
}


# ---- command line -------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="COS-DPO learning-to-rank fine-tuning (train). Subcommands: `eval CKPT ...`, `rank CKPT "
        "FILE ...` (run with --help)."
    )
    add_data_arguments(p.add_argument_group("data"))
    add_method_arguments(p.add_argument_group("method"))
    add_model_arguments(p.add_argument_group("models"))
    add_budget_arguments(p.add_argument_group("budget and optimisation"))
    add_run_arguments(p.add_argument_group("run"))
    return p


def add_data_arguments(g) -> None:
    g.add_argument(
        "--dataset", choices=sorted(PRESETS), default="synthetic", help="preset: embedded data or MSLR-WEB10K"
    )
    g.add_argument(
        "--data-dir",
        default=None,
        help="folder holding Fold{k}/{train,vali,test}.txt (synthetic: generated when missing)",
    )
    g.add_argument("--fold", type=int, default=1, help="MSLR fold 1-5")
    g.add_argument(
        "--objectives",
        default="I,II",
        help="auxiliary objectives by name or number, e.g. I,II or I,II,III,IV,V",
    )
    g.add_argument(
        "--label-transform",
        choices=data_lib.LABEL_TRANSFORMS,
        default="none",
        help="auxiliary labels before Eq. 8: none = raw (the paper), log1p-zscore = log(1 + z) for I-III, "
        "z-scores for IV-V",
    )
    g.add_argument(
        "--max-list-len",
        type=int,
        default=256,
        help="a training list longer than this is a random subset of its documents each epoch (never at "
        "evaluation)",
    )


def add_method_arguments(g) -> None:
    g.add_argument(
        "--method",
        choices=METHODS,
        default="wcos",
        help="wcos / tcos (COS-DPO) or a baseline: ls, soup, modpo",
    )
    g.add_argument(
        "--alpha",
        default="0.5",
        help="Dirichlet concentration for w: one value or one per objective (App. A.6.1)",
    )
    g.add_argument(
        "--beta",
        default="1.0",
        help="DPO temperature: one value or one per objective (T-COS: the evaluation beta)",
    )
    g.add_argument(
        "--beta-range",
        default="0.67,1.5",
        help="T-COS training temperatures beta ~ Unif([lo, hi]^m) (App. A.8)",
    )
    g.add_argument(
        "--penalty",
        type=float,
        default=0.0,
        help="cosine penalty lambda (App. A.2, Eq. 19; COS-DPO only): minimise L_w - lambda cos(w, L), which "
        "draws L towards the ray of w; < 0 = the sign printed in Eq. 18",
    )
    g.add_argument(
        "--w-per-list",
        action="store_true",
        help="variant: one w per list instead of one per step (paper: per step)",
    )
    g.add_argument(
        "--film",
        action="store_true",
        help="variant: also FiLM every layer of the COS-DPO model on w (zero-initialised, so training starts "
        "from the paper's network)",
    )
    g.add_argument(
        "--vertex-prob",
        type=float,
        default=0.0,
        help="variant: probability that a step's w is a unit vector e_j, j uniform, instead of a Dir(alpha) "
        "draw (paper: 0)",
    )
    g.add_argument("--num-weights", type=int, default=11, help="evaluation weights (paper: 11)")
    g.add_argument(
        "--idcg-zero",
        type=float,
        default=0.0,
        help="NDCG of a query whose ideal DCG is 0: 0 as TF-Ranking, 1 as allRank and LightGBM, nan = skip "
        "it",
    )


def add_model_arguments(g) -> None:
    g.add_argument(
        "--parametrization",
        choices=("scratch", "augment"),
        default=None,
        help="scratch: a separate network (paper main setting); augment: s0 + delta (default for tcos, App. "
        "A.8)",
    )
    g.add_argument(
        "--layers",
        type=int,
        default=None,
        help="transformer layers of the fine-tuned model (paper 2; tcos 5)",
    )
    g.add_argument(
        "--hidden",
        type=int,
        default=64,
        help="width of the fine-tuned model (paper 64; a multiple of 4 heads)",
    )
    g.add_argument("--dropout", type=float, default=0.0, help="dropout of the fine-tuned model (paper: 0)")
    g.add_argument("--base-layers", type=int, default=2, help="layers of the base ranker (paper 2)")
    g.add_argument("--base-hidden", type=int, default=128, help="width of the base ranker (paper 128)")


def add_budget_arguments(g) -> None:
    g.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="fine-tuning epochs of one baseline model (every model of DPO-LS, DPO Soup, MO-DPO); fixed, no "
        "early stopping (the paper's fixed budget)",
    )
    g.add_argument(
        "--min-steps",
        type=int,
        default=None,
        help="at least this many steps for one baseline model, whatever --epochs gives: a small dataset has "
        "few batches an epoch",
    )
    g.add_argument(
        "--cos-budget",
        type=float,
        default=3.0,
        help="a W-COS / T-COS model trains this many times the steps of one baseline model (Table 1's times: "
        "3)",
    )
    g.add_argument(
        "--base-epochs",
        type=int,
        default=None,
        help="most ListNet epochs of the base ranker (see --base-patience)",
    )
    g.add_argument(
        "--base-patience",
        type=int,
        default=3,
        help="stop the base ranker after this many epochs without a better validation NDCG@10; the best "
        "epoch is kept",
    )
    g.add_argument("--lr", type=float, default=None, help="Adam learning rate")
    g.add_argument(
        "--weight-decay", type=float, default=0.0, help="AdamW weight decay of the fine-tuned model"
    )
    g.add_argument("--max-docs", type=int, default=None, help="batch budget: lists x padded length per batch")


def add_run_arguments(g) -> None:
    g.add_argument(
        "--base",
        default=None,
        help="base checkpoint: reused when it exists (same data), else trained and saved there (default: "
        "OUT/base.pt, reused only when its settings match too)",
    )
    g.add_argument("--out", default="runs/ltr", help="output folder")
    g.add_argument(
        "--resume", action="store_true", help="continue from OUT/model.pt (saved after every epoch)"
    )
    g.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seeds model initialisation, the w / beta draws and the batch order",
    )
    g.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda when available"
    )
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    g.add_argument("--log-every", type=int, default=20, help="steps between log lines")
    g.add_argument(
        "--eval-every", type=int, default=5, help="epochs between validation NDCG lines (and always the last)"
    )
    g.add_argument(
        "--quiet", action="store_true", help="no progress bar (none either when stderr is not a terminal)"
    )


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the preset's and the method's defaults, parse the lists, then check every argument."""
    for key, value in PRESETS[args.dataset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.data_dir is None:  # the embedded dataset, generated on first use
        args.data_dir = data_lib.DEFAULT_SYNTHETIC_DIR
    if args.parametrization is None:  # App. A.8: T-COS-DPO uses the augmentation and depth 5
        args.parametrization = "augment" if args.method == "tcos" else "scratch"
    if args.layers is None:
        args.layers = 5 if args.method == "tcos" else 2
    objectives = data_lib.resolve_objectives(args.objectives)
    args.objectives = [o.name for o in objectives]
    # the paper: "l1" for clicks, "softmax" for dense labels
    args.label_norms = [o.label_norm for o in objectives]
    m = len(args.objectives)
    args.alpha = data_lib.parse_floats(args.alpha, "alpha", m)
    args.beta = data_lib.parse_floats(args.beta, "beta", m)
    args.beta_range = data_lib.parse_floats(args.beta_range, "beta-range", 2)
    args.device = resolve_device(args.device)
    check_args(args)
    return args


def check_args(args: argparse.Namespace) -> None:
    """One ValueError with a message a user understands for the first argument out of range."""
    counts = (
        "epochs",
        "min_steps",
        "base_epochs",
        "base_patience",
        "max_docs",
        "max_list_len",
        "num_weights",
        "layers",
        "hidden",
        "base_layers",
        "base_hidden",
        "log_every",
        "eval_every",
    )
    for name in counts:
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("hidden", "base_hidden"):
        if getattr(args, name) % RankerConfig.heads:
            raise ValueError(
                f"--{name.replace('_', '-')} must be a multiple of {RankerConfig.heads} (attention heads)"
            )
    if args.beta_range[0] > args.beta_range[1]:
        raise ValueError(f"--beta-range must be lo,hi with lo <= hi, got {args.beta_range}")
    if not args.cos_budget > 0:
        raise ValueError(f"--cos-budget must be > 0, got {args.cos_budget}")
    if not args.lr > 0:
        raise ValueError(f"--lr must be > 0, got {args.lr}")
    if args.method in ("soup", "modpo") and len(args.objectives) < 2:
        raise ValueError(f"--method {args.method} needs at least 2 objectives")
    if not 0 <= args.vertex_prob <= 1:
        raise ValueError(f"--vertex-prob must be a probability in [0, 1], got {args.vertex_prob}")
    if args.vertex_prob and args.w_per_list:
        raise ValueError(
            "--vertex-prob replaces the one w of a step; it cannot be combined with --w-per-list"
        )
    if (args.film or args.vertex_prob) and args.method not in ("wcos", "tcos"):
        raise ValueError(
            f"--film and --vertex-prob change the COS-DPO model; --method {args.method} has none"
        )


# ---- helpers: seeding, logging, scoring ---------------------------------------------------------------------
def seeded(seed: int) -> np.random.Generator:
    """The one seeding block, run before every model: torch's RNG (initialisation, dropout) and the numpy
    Generator of the w and beta draws, child 0 of numpy.random.SeedSequence(seed). So each model depends on
    --seed alone, and --resume restores both states."""
    torch.manual_seed(seed)
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))


def epoch_seed(seed: int, epoch: int) -> np.random.SeedSequence:
    """The batch order and list cuts of one epoch: child (1, epoch) of SeedSequence(seed), a stream independent
    of the w / beta draws and of every other epoch's, so an epoch's batches need no saved state."""
    return np.random.SeedSequence(seed, spawn_key=(1, epoch))


def log_to(path: str) -> Callable[[str], None]:
    """log(msg): print and append to the run's train.log."""

    def log(msg: str) -> None:
        print(msg, flush=True)
        with open(path, "a") as f:
            f.write(msg + "\n")

    return log


def progress(batches: list, desc: str, args):
    # None: off without a tty
    return tqdm(batches, desc=desc, leave=False, disable=True if args.quiet else None)


class NonFiniteLoss(RuntimeError):
    pass


def to_device(batch, device: str):
    if device == "cpu":
        return batch
    return data_lib.Batch(**{k: getattr(batch, k).to(device) for k in batch.__dataclass_fields__})


def split_scores(
    model: Ranker, split, args, ref: Optional[torch.Tensor] = None, w=None, beta=None
) -> torch.Tensor:
    """(N,) scores of `model` at weight w on every document of a pareto.EvalSplit; ref: (N,) its base scores s0."""
    ref = None if ref is None else ref.to(args.device)

    def score(b):
        b = to_device(b, args.device)
        return steered_scores(model, b.features, b.mask, None if ref is None else ref[b.index], w, beta=beta)

    return split.scores(score)


def optimizer_step(model: Ranker, opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """Backward pass, gradient norm clipped at 1, one optimiser step."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


# ---- stage 1: the base ranker s0 (ListNet on relevance, Eq. 7) ----------------------------------------------
def base_settings(args) -> dict:
    """What defines the base model; a base.pt is reused only when all of it matches. The label transform is
    not part of it: the base ranker learns relevance only, and the features do not depend on it."""
    return dict(
        layers=args.base_layers,
        hidden=args.base_hidden,
        epochs=args.base_epochs,
        lr=args.lr,
        patience=args.base_patience,
        max_docs=args.max_docs,
        max_list_len=args.max_list_len,
        seed=args.seed,
    )


def reusable_base(args, path: str, stats: dict, log) -> Optional[Ranker]:
    """The base ranker in `path` if it was trained on this data (and, at the default path, with these settings)."""
    if not os.path.exists(path):
        return None
    ckpt = load_checkpoint(path, "cosdpo-ltr-base")
    if ckpt["data_fingerprint"] != stats["fingerprint"]:
        raise ValueError(
            f"{path} was trained on other data (fingerprint {ckpt['data_fingerprint']}, this data "
            f"{stats['fingerprint']}); delete it or pass another --out/--base"
        )
    if args.base or ckpt["settings"] == base_settings(args):
        log(f"[base] reusing {path} (val NDCG@10 {ckpt['val_ndcg']:.4f})")
        return ranker_from(ckpt, args.device)
    log(f"[base] {path} has other settings ({ckpt['settings']}); retraining")
    return None


def listnet_epoch(args, model: Ranker, opt, splits, epoch: int) -> float:
    """One epoch of the base ranker on relevance (ListNet, Eq. 7); its mean loss."""
    model.train()
    batches = data_lib.make_batches(
        splits["train"],
        args.max_docs,
        shuffle=True,
        max_list_len=args.max_list_len,
        seed=epoch_seed(args.seed, epoch),
    )
    total = 0.0
    for batch in progress(batches, f"base epoch {epoch + 1}", args):
        batch = to_device(batch, args.device)
        loss = listnet_loss(model(batch.features, batch.mask), batch.relevance, batch.mask).mean()
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"base model: loss became {loss.item()} in epoch {epoch + 1}")
        optimizer_step(model, opt, loss)
        total += loss.item()
    model.eval()
    return total / len(batches)


def train_base(args, splits, stats, log) -> Ranker:
    """Stage 1: the base ranker s0, trained "sufficiently" (App. A.4): until --base-patience epochs bring no
    better validation NDCG@10, keeping the best epoch; saved to --base or OUT/base.pt."""
    path = args.base or os.path.join(args.out, "base.pt")
    model = reusable_base(args, path, stats, log)
    if model is not None:
        return model
    seeded(args.seed)
    config = RankerConfig(num_features=data_lib.NUM_INPUTS, hidden=args.base_hidden, layers=args.base_layers)
    model = Ranker(config).to(args.device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    log(
        f"[base] ListNet on relevance: {count_parameters(model):,} parameters, up to {args.base_epochs} "
        f"epochs (patience {args.base_patience})"
    )
    t0 = time.perf_counter()
    best_val, best_state, best_epoch = -1.0, None, 0
    for epoch in range(args.base_epochs):
        loss = listnet_epoch(args, model, opt, splits, epoch)
        _, val = splits["vali"].ndcg(split_scores(model, splits["vali"], args))
        if val > best_val:
            best_val, best_state, best_epoch = val, copy.deepcopy(model.state_dict()), epoch + 1
        log(f"[base] epoch {epoch + 1:3d} | listnet {loss:.4f} | val NDCG@10 main {val:.4f}")
        if epoch + 1 - best_epoch >= args.base_patience:
            log(f"[base] no better validation NDCG@10 for {args.base_patience} epochs: stopped")
            break
    seconds = time.perf_counter() - t0
    model.load_state_dict(best_state)
    data_lib.atomic_save(
        dict(
            kind="cosdpo-ltr-base",
            version=CHECKPOINT_VERSION,
            model_config=config.to_dict(),
            model_state=best_state,
            settings=base_settings(args),
            run_config=vars(args),
            norm_stats=stats,
            objectives=["relevance"],
            data_fingerprint=stats["fingerprint"],
            val_ndcg=best_val,
            best_epoch=best_epoch,
            train_seconds=seconds,
        ),
        path,
    )
    log(f"[base] saved {path}: epoch {best_epoch} (best val NDCG@10 {best_val:.4f}), {seconds:.1f} s")
    return model.eval()


# ---- stage 2: the models a method trains, and the budget ----------------------------------------------------
@dataclass
class Job:
    """One model to train for `steps` steps: fixed_w None = COS-DPO (w sampled every step), else the model's own w."""

    name: str
    config: RankerConfig
    steps: int
    fixed_w: Optional[list] = None
    modpo: bool = False  # train with the MO-DPO loss (Eq. 17) against the unit models


def baseline_steps(args, steps_per_epoch: int) -> int:
    """Steps of one baseline model: --epochs epochs, but at least --min-steps, so that a small dataset (few batches
    an epoch) does not starve the models of updates."""
    return max(args.epochs * steps_per_epoch, args.min_steps)


def make_jobs(args, weights: np.ndarray, steps: int) -> list[Job]:
    """The models a method trains (App. A.1). Every baseline model trains `steps` steps; the one COS-DPO model
    trains --cos-budget times as many (Table 1's times: one W-COS-DPO model takes about 3x one DPO-LS model)."""
    m = len(args.objectives)
    cos_steps = round(args.cos_budget * steps)

    def cfg(conditioned: bool, temperature: bool = False) -> RankerConfig:
        return RankerConfig(
            num_features=data_lib.NUM_INPUTS,
            hidden=args.hidden,
            layers=args.layers,
            dropout=args.dropout,
            num_objectives=m if conditioned else 0,
            temperature_input=temperature,
            parametrization=args.parametrization,
            film=args.film and conditioned,
        )

    units = [Job(f"unit{j + 1}", cfg(False), steps, fixed_w=np.eye(m)[j].tolist()) for j in range(m)]
    if args.method == "wcos":
        return [Job("wcos", cfg(True), cos_steps)]
    if args.method == "tcos":
        return [Job("tcos", cfg(True, temperature=True), cos_steps)]
    if args.method == "ls":  # DPO-LS: one model per evaluation weight
        return [Job(f"ls{i + 1}", cfg(False), steps, fixed_w=w.tolist()) for i, w in enumerate(weights)]
    if args.method == "soup":  # DPO Soup: m unit models, parameters interpolated at evaluation
        return units
    # MO-DPO: m unit models, then one model per evaluation weight trained with Eq. 17
    modpo = [
        Job(f"modpo{i + 1}", cfg(False), steps, fixed_w=w.tolist(), modpo=True) for i, w in enumerate(weights)
    ]
    return units + modpo


# ---- stage 2: one training step of each method (Alg. 1-4, App. A.1) ------------------------------------------
def draw_weights(args, rng: np.random.Generator, num_lists: int) -> torch.Tensor:
    """Alg. 1-2 line 2: w ~ Dir(alpha), one for the step (m,) as in the paper, or one per list (B, m) (--w-per-list)."""
    w = sample_weights(args.alpha, num_lists if args.w_per_list else 1, rng, args.vertex_prob)
    return w if args.w_per_list else w[0]


def draw_temperatures(args, rng: np.random.Generator, num_lists: int) -> torch.Tensor:
    """Alg. 2 line 2: beta ~ Unif([lo, hi]^m), one for the step (m,) or one per list (B, m) (--w-per-list)."""
    beta = torch.from_numpy(
        rng.uniform(*args.beta_range, size=(num_lists if args.w_per_list else 1, len(args.beta)))
    )
    return beta.float() if args.w_per_list else beta[0].float()


def objective_losses(args, scores: torch.Tensor, ref: torch.Tensor, batch, beta) -> tuple:
    """Eq. 11 on a batch: the LiPO loss of every objective per list (B, m), which lists state a preference (B, m),
    and L = (L^1, ..., L^m), each objective's mean over its lists with a preference."""
    per_list, valid = lipo_losses(
        scores, ref, batch.aux, beta, batch.mask, args.label_norms, return_valid=True
    )
    return per_list, valid, mean_over_lists(per_list, valid)


def cos_objective(args, per_list: torch.Tensor, valid: torch.Tensor, L: torch.Tensor, w: torch.Tensor):
    """The COS-DPO objective (Alg. 3-4): L_w = w . L (Sec. 3) minus lambda cos(w, L) (Eq. 19, lambda = --penalty).

    Departure from the printed Eq. 18 (+ lambda cos): its text says the term "confines L to converging along the
    direction of w", and COSMOS, which it cites, subtracts; --penalty < 0 gives the printed sign."""
    if w.dim() == 1:
        loss = scalarize(L, w)
    else:  # one w per list: the same per-objective means, each list weighted by its own w_b
        loss = scalarize(per_list * valid / valid.sum(0).clamp_min(1), w).sum()
    if args.penalty:
        loss = loss - args.penalty * cosine_penalty(L, w if w.dim() == 1 else w.mean(0))
    return loss


def wcos_step(args, model: Ranker, batch, ref: torch.Tensor, rng: np.random.Generator) -> tuple:
    """One step of Weight-COS-DPO (Alg. 1 / 3): sample w, score the lists at w, the loss vector L, scalarise,
    penalty. Returns the loss and L (m,)."""
    w = draw_weights(args, rng, batch.num_lists).to(ref.device)
    scores = model(batch.features, batch.mask, w=w, ref_scores=ref)
    per_list, valid, L = objective_losses(
        args, scores, ref, batch, torch.tensor(args.beta, device=ref.device)
    )
    return cos_objective(args, per_list, valid, L, w), L


def tcos_step(args, model: Ranker, batch, ref: torch.Tensor, rng: np.random.Generator) -> tuple:
    """One step of Temperature-COS-DPO (Alg. 2 / 4): also beta ~ Unif([lo, hi]^m); the network sees
    beta_bar = beta / ||beta||_1 and its output is composed with s0 by Eq. 15, then the loss at that beta."""
    w = draw_weights(args, rng, batch.num_lists).to(ref.device)
    beta = draw_temperatures(args, rng, batch.num_lists).to(ref.device)
    net = model(batch.features, batch.mask, w=w, beta_bar=normalize_temperature(beta), ref_scores=ref)
    scores = compose_temperature(net, ref, beta)
    per_list, valid, L = objective_losses(args, scores, ref, batch, beta)
    return cos_objective(args, per_list, valid, L, w), L


def baseline_step(args, model: Ranker, batch, ref: torch.Tensor, w: list) -> tuple:
    """One step of a DPO-LS model or a DPO Soup ingredient (App. A.1): a plain model trained at its own fixed w,
    L_w = w . L (no penalty: that is part of COS-DPO)."""
    scores = model(batch.features, batch.mask, ref_scores=ref)
    per_list, valid, L = objective_losses(
        args, scores, ref, batch, torch.tensor(args.beta, device=ref.device)
    )
    return scalarize(L, torch.tensor(w, device=ref.device)), L


def modpo_step(args, model: Ranker, batch, ref: torch.Tensor, units: torch.Tensor, w: list) -> tuple:
    """One step of an MO-DPO model at its fixed w (App. A.1, Eq. 17): the margin-adjusted LiPO loss of the
    objective i with the largest weight (w_i >= 1/m, so 1/w_i stays bounded) against the unit models' scores
    units (B, n, m). Returns the loss and L with L^i filled, nan elsewhere (MO-DPO trains one objective)."""
    w = torch.tensor(w, device=ref.device)
    i = int(w.argmax())
    scores = model(batch.features, batch.mask, ref_scores=ref)
    per_list = modpo_loss(
        scores, ref, units, batch.aux[..., i], w, i, args.beta[i], batch.mask, args.label_norms[i]
    )
    valid = has_preference(batch.aux[..., i : i + 1], batch.mask, args.label_norms[i])  # (B, 1)
    loss = mean_over_lists(per_list[:, None], valid)[0]
    L = torch.full((len(w),), float("nan"))
    L[i] = loss.item()
    return loss, L


def step_loss(
    args,
    model: Ranker,
    batch,
    ref: torch.Tensor,
    job: Job,
    rng: np.random.Generator,
    units: Optional[torch.Tensor] = None,
) -> tuple:
    """The loss of one step of `job` and the per-objective losses L (m,) for the log; ref: (B, n) the frozen
    base scores s0 of the batch's lists, units: (B, n, m) MO-DPO's unit-model scores."""
    if job.modpo:
        loss, L = modpo_step(args, model, batch, ref, units, job.fixed_w)
    elif job.fixed_w is not None:
        loss, L = baseline_step(args, model, batch, ref, job.fixed_w)
    elif model.config.temperature_input:
        loss, L = tcos_step(args, model, batch, ref, rng)
    else:
        loss, L = wcos_step(args, model, batch, ref, rng)
    return loss, L.detach().cpu()


# ---- stage 2: the frozen scores a step compares against -----------------------------------------------------
@dataclass
class Frozen:
    """The frozen rankers a fine-tuning step compares against, with their scores computed once on whole lists:
    the base model s0 (ref: {"train": (N,), "vali": (N,)}) and, for MO-DPO, the m unit models (unit_train (N, m))."""

    base: Ranker
    ref: dict
    units: Optional[list] = None
    unit_train: Optional[torch.Tensor] = None


def on_training_lists(table: torch.Tensor, batch, score: Callable) -> torch.Tensor:
    """Frozen scores of a training batch, (B, n) or (B, n, m): table[batch.index] from the scores on whole lists,
    except for the lists make_batches cut to --max-list-len, which score(features, mask, cut) scores as cut. The
    ranker attends across its list, so a document's score depends on the documents beside it: Eq. 8's
    beta * (s_theta - s0) must compare two scores of the document in the same list."""
    out = table[batch.index]
    if batch.cut.any():
        with torch.no_grad():
            out[batch.cut] = score(batch.features[batch.cut], batch.mask[batch.cut], batch.cut)
    return out


def frozen_scores(frozen: Frozen, batch) -> tuple:
    """(s0 (B, n), MO-DPO's unit-model scores (B, n, m) or None) on the lists of a training batch."""
    ref = on_training_lists(
        frozen.ref["train"], batch, lambda features, mask, cut: frozen.base(features, mask)
    )
    if frozen.units is None:
        return ref, None

    def unit_scores(features, mask, cut):
        return torch.stack([unit(features, mask, ref_scores=ref[cut]) for unit in frozen.units], -1)

    return ref, on_training_lists(frozen.unit_train, batch, unit_scores)


# ---- stage 2: the training loop of one job ------------------------------------------------------------------
@dataclass
class Progress:
    """Where a job's training stands; saved in its checkpoint entry."""

    epoch: int = 0
    step: int = 0
    seconds: float = 0.0


def train_epoch(args, job: Job, model: Ranker, opt, rng, splits, frozen: Frozen, at: Progress, log) -> float:
    """One epoch of `job` (its last one may stop early, at job.steps); the epoch's mean loss."""
    model.train()
    batches = data_lib.make_batches(
        splits["train"],
        args.max_docs,
        shuffle=True,
        max_list_len=args.max_list_len,
        seed=epoch_seed(args.seed, at.epoch),
    )
    losses, t_log, docs, logged = [], time.perf_counter(), 0, 0
    for batch in progress(batches[: job.steps - at.step], f"{job.name} epoch {at.epoch + 1}", args):
        batch = to_device(batch, args.device)
        ref, units = frozen_scores(frozen, batch)
        loss, L = step_loss(args, model, batch, ref, job, rng, units)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(
                f"[{job.name}] loss became {loss.item()} at step {at.step + 1} (epoch {at.epoch + 1}); "
                f"stopped, the last good checkpoint is kept. Try a lower --lr or --beta."
            )
        optimizer_step(model, opt, loss)
        at.step += 1
        losses.append(loss.item())
        docs, logged = docs + batch.num_docs, logged + 1
        if at.step % args.log_every == 0:
            dt = time.perf_counter() - t_log
            log(
                f"[{job.name}] step {at.step:6d} | epoch {at.epoch + 1:3d} | loss {loss.item():8.4f} | L "
                f"[{' '.join(f'{v:.4f}' for v in L.tolist())}] | {1e3 * dt / logged:6.1f} ms/step | "
                f"{docs / dt:8.0f} docs/s"
            )
            t_log, docs, logged = time.perf_counter(), 0, 0
    at.epoch += 1
    model.eval()
    return float(np.mean(losses))


def fine_tune(
    args, job: Job, splits, frozen: Frozen, log, save: Callable, state: Optional[dict] = None
) -> None:
    """Train the model of one job for job.steps steps; save(entry) after every epoch (the last may be partial).

    The entry holds everything to rebuild the model and to continue training (--resume): name, weight,
    model config and weights, optimizer and RNG states, epoch, step, seconds. state: such an entry to
    continue from; training goes on with the next epoch.
    """
    rng = seeded(args.seed)
    model = Ranker(job.config).to(args.device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    at = Progress()
    if state is not None:
        model.load_state_dict(state["model_state"])
        opt.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        at = Progress(state["epoch"], state["step"], state["seconds"])
        log(f"[{job.name}] resuming after epoch {at.epoch} (step {at.step})")
    while at.step < job.steps:
        t0 = time.perf_counter()
        loss = train_epoch(args, job, model, opt, rng, splits, frozen, at, log)
        seconds = time.perf_counter() - t0
        at.seconds += seconds
        line = f"[{job.name}] epoch {at.epoch:3d} | mean loss {loss:.4f} | {seconds:5.1f} s"
        if at.epoch % args.eval_every == 0 or at.step == job.steps:
            line += " | " + validation_line(args, model, job, splits, frozen.ref)
        log(line)
        save(
            dict(
                name=job.name,
                fixed_w=job.fixed_w,
                model_config=job.config.to_dict(),
                model_state=copy.deepcopy(model.state_dict()),
                optimizer=copy.deepcopy(opt.state_dict()),
                rng=rng.bit_generator.state,
                torch_rng=torch.get_rng_state(),
                epoch=at.epoch,
                step=at.step,
                seconds=at.seconds,
            )
        )


def validation_line(args, model: Ranker, job: Job, splits, ref: dict) -> str:
    """Validation NDCG@10 per objective: at each unit weight e_j for COS-DPO, at the model's own w otherwise."""
    parts, t0 = [], time.perf_counter()
    for w in np.eye(len(args.objectives)) if job.fixed_w is None else np.array([job.fixed_w]):
        aux, main = splits["vali"].ndcg(
            split_scores(model, splits["vali"], args, ref["vali"], w, beta=args.beta)
        )
        parts.append(f"w={np.round(w, 2).tolist()}: aux {' '.join(f'{v:.4f}' for v in aux)} main {main:.4f}")
    return "val NDCG@10 " + " ; ".join(parts) + f" ({time.perf_counter() - t0:.1f} s)"


# ---- checkpoints --------------------------------------------------------------------------------------------
def new_checkpoint(args, stats, weights, base: Ranker) -> dict:
    return dict(
        kind="cosdpo-ltr",
        version=CHECKPOINT_VERSION,
        method=args.method,
        objectives=args.objectives,
        label_norms=args.label_norms,
        weights=weights.tolist(),
        run_config=vars(args),
        norm_stats=stats,
        data_fingerprint=stats["fingerprint"],
        base=dict(model_config=base.config.to_dict(), model_state=base.state_dict()),
        jobs=[],
        complete=False,
    )


def check_resumable(ckpt: dict, args, stats, path: str) -> None:
    """A checkpoint from other data, objectives, method, --film or label transform than asked is refused."""
    if ckpt["data_fingerprint"] != stats["fingerprint"]:
        raise ValueError(
            f"cannot resume from {path}: it was trained on other data (fingerprint "
            f"{ckpt['data_fingerprint']}) than {args.data_dir} ({stats['fingerprint']})"
        )
    for key, have, want in (
        ("version", ckpt["version"], CHECKPOINT_VERSION),
        ("objectives", ckpt["objectives"], args.objectives),
        ("method", ckpt["method"], args.method),
        ("film", ckpt["run_config"].get("film", False), args.film),
        ("label transform", ckpt["run_config"].get("label_transform"), args.label_transform),
    ):
        if have != want:
            raise ValueError(
                f"cannot resume from {path}: its {key} is {have!r} but this run asks for {want!r}; "
                "use another --out or drop --resume"
            )


def checkpoint_to_resume(args, stats, path: str, log) -> Optional[dict]:
    """With --resume, OUT/model.pt checked against this run; else None."""
    if not args.resume:
        if os.path.exists(path):
            log(f"note: replacing the earlier run in {path} (pass --resume to continue it instead)")
        return None
    if not os.path.exists(path):
        raise FileNotFoundError(f"--resume: no {path} to resume from")
    old = load_checkpoint(path, "cosdpo-ltr")
    check_resumable(old, args, stats, path)
    log("[base] reusing the base model stored in the checkpoint being resumed")
    return old


# ---- the run ------------------------------------------------------------------------------------------------
def load_data(args, log) -> tuple:
    """The three splits (validation prepared once for every validation line) and the normalisation statistics."""
    if args.data_dir == data_lib.DEFAULT_SYNTHETIC_DIR:  # the embedded dataset, generated on first use
        data_lib.ensure_synthetic(args.data_dir)
    t0 = time.perf_counter()
    splits, stats = data_lib.load_ltr(
        args.data_dir, args.fold, args.objectives, label_transform=args.label_transform
    )
    log(
        "data: "
        + " | ".join(f"{k} {s.num_queries} queries {s.num_docs} docs" for k, s in splits.items())
        + f" | fingerprint {stats['fingerprint']} | labels {args.label_transform} | {time.perf_counter() - t0:.1f} s"
    )
    splits["vali"] = pareto.EvalSplit(splits["vali"], args.max_docs, idcg_zero=args.idcg_zero)
    return splits, stats


def reference_scores(args, base: Ranker, splits, log) -> dict:
    """s0 of the base ranker on every training and validation document, on whole lists, computed once."""
    t0 = time.perf_counter()
    train = split_scores(base, pareto.EvalSplit(splits["train"], args.max_docs), args).to(args.device)
    ref = {"train": train, "vali": split_scores(base, splits["vali"], args)}
    log(
        f"[base] reference scores of {sum(len(r) for r in ref.values())} documents computed once "
        f"({time.perf_counter() - t0:.1f} s)"
    )
    return ref


def train_jobs(args, ckpt: dict, path: str, splits, frozen: Frozen, log) -> dict:
    """Stage 2: every model of the method, after the ones a resumed checkpoint finished; its budget."""
    m = len(args.objectives)
    steps_per_epoch = len(
        data_lib.make_batches(splits["train"], args.max_docs, max_list_len=args.max_list_len)
    )
    steps = baseline_steps(args, steps_per_epoch)
    log(
        f"[budget] {steps_per_epoch} steps an epoch: {steps} steps a baseline model, "
        f"{round(args.cos_budget * steps)} a COS-DPO model (--epochs {args.epochs}, --min-steps "
        f"{args.min_steps}, --cos-budget {args.cos_budget:g})"
    )
    for i, job in enumerate(make_jobs(args, np.array(ckpt["weights"]), steps)):
        state = ckpt["jobs"][i] if i < len(ckpt["jobs"]) else None
        if state is not None and state["step"] >= job.steps:
            continue  # finished before this --resume
        if (
            job.modpo and frozen.units is None
        ):  # the m unit models' scores on the training lists, computed once
            frozen.units = [ranker_from(unit, args.device) for unit in ckpt["jobs"][:m]]
            train_split = pareto.EvalSplit(splits["train"], args.max_docs)
            unit_train = [split_scores(unit, train_split, args, frozen.ref["train"]) for unit in frozen.units]
            frozen.unit_train = torch.stack(unit_train, -1).to(args.device)  # (N, m)

        def save(entry, i=i):  # after every epoch: the job's entry replaces its previous one, atomically
            ckpt["jobs"][i : i + 1] = [entry]
            data_lib.atomic_save(ckpt, path)

        at_w = "" if job.fixed_w is None else f" at w={np.round(job.fixed_w, 3).tolist()}"
        log(
            f"[{job.name}] training {count_parameters(Ranker(job.config)):,} parameters for {job.steps} steps{at_w}"
        )
        fine_tune(args, job, splits, frozen, log, save, state)
    return dict(
        epochs=args.epochs,
        min_steps=args.min_steps,
        cos_budget=args.cos_budget,
        steps_per_epoch=steps_per_epoch,
        baseline_steps=steps,
    )


def evaluate_run(args, ckpt: dict, splits, stats, budget: dict, log) -> dict:
    """Stage 3: test NDCG@10 at the evaluation weights and the hypervolume; results.json."""
    trained = TrainedRanker(ckpt, args.device)
    t0 = time.perf_counter()
    weights = np.array(ckpt["weights"])
    test = pareto.EvalSplit(splits["test"], args.max_docs, idcg_zero=args.idcg_zero)
    result = pareto.evaluate(trained, test, weights)  # T-COS at --beta
    log(f"[eval] test NDCG@10 at {len(weights)} weights: {time.perf_counter() - t0:.1f} s")
    jobs = [
        dict(name=j["name"], steps=j["step"], epochs=j["epoch"], seconds=j["seconds"]) for j in ckpt["jobs"]
    ]
    results = dict(
        method=args.method,
        objectives=args.objectives,
        label_transform=args.label_transform,
        weights=weights.tolist(),
        **result,
        hv_ref=[0.0] * len(args.objectives),
        train_seconds=sum(job["seconds"] for job in jobs),
        num_params=sum(count_parameters(mdl) for mdl in trained.models),
        beta=args.beta,
        k=10,
        idcg_zero=args.idcg_zero,
        dataset=args.dataset,
        fold=args.fold,
        seed=args.seed,
        budget=budget,
        jobs=jobs,
        data_fingerprint=stats["fingerprint"],
        config=vars(args),
    )
    data_lib.atomic_save(results, os.path.join(args.out, "results.json"))
    log(summary_table(results))
    return results


def train(args) -> dict:
    """Stages 1-3 for the resolved arguments; returns the results dict (also written to OUT/results.json)."""
    os.makedirs(args.out, exist_ok=True)
    log = log_to(os.path.join(args.out, "train.log"))
    log("config: " + json.dumps(vars(args), sort_keys=True))
    splits, stats = load_data(args, log)
    path = os.path.join(args.out, "model.pt")
    old = checkpoint_to_resume(args, stats, path, log)
    base = ranker_from(old["base"], args.device) if old else train_base(args, splits, stats, log)
    frozen = Frozen(base, reference_scores(args, base, splits, log))
    ckpt = new_checkpoint(args, stats, pareto.weight_grid(len(args.objectives), args.num_weights), base)
    if old:
        ckpt["jobs"], ckpt["weights"] = old["jobs"], old["weights"]
    budget = train_jobs(args, ckpt, path, splits, frozen, log)
    ckpt["complete"] = True
    data_lib.atomic_save(ckpt, path)
    return evaluate_run(args, ckpt, splits, stats, budget, log)


def summary_table(results: dict, split: str = "test") -> str:
    names = results["objectives"]
    width = [max(len(n), 8) for n in names]
    wcol = max(len(str(np.round(w, 2).tolist())) for w in results["weights"])
    head = ["w".ljust(wcol)] + [n.rjust(k) for n, k in zip(names, width)] + ["main".rjust(8)]
    lines = [
        f"\n{results['method']}: {split} NDCG@10 at {len(results['weights'])} weight(s)",
        " | ".join(head),
    ]
    for w, aux, main in zip(results["weights"], results["aux_ndcg"], results["main_ndcg"]):
        row = [str(np.round(w, 2).tolist()).ljust(wcol)] + [f"{v:{k}.4f}" for v, k in zip(aux, width)]
        lines.append(" | ".join(row + [f"{main:8.4f}"]))
    hv = results["hypervolume"]
    lines.append(
        f"hypervolume (ref 0) {hv if hv is None else f'{hv:.4e}'} | main NDCG@10 "
        f"{results['main_ndcg_mean']:.4f} +/- {results['main_ndcg_std']:.4f} | train "
        f"{results['train_seconds']:.1f} s | {results['num_params']:,} parameters"
    )
    return "\n".join(lines)


# ---- subcommands: eval (post-training control on a split) and rank (score a LETOR file) ----------------------
def control_parser(command: str) -> argparse.ArgumentParser:
    descriptions = {
        "eval": "Evaluate a saved model.pt at any w, temperature scale c (Eq. 14) or beta (T-COS, Eq. 15).",
        "rank": "Score a LETOR/MSLR-format file with a saved model.pt; writes one score per line, in file order.",
    }
    p = argparse.ArgumentParser(prog=f"train_ltr.py {command}", description=descriptions[command])
    p.add_argument("checkpoint", help="model.pt written by train_ltr.py")
    if command == "rank":
        p.add_argument("file", help="LETOR-format file: label qid:Q 1:v ... (labels are ignored)")
        p.add_argument("--output", default="-", help="where to write the scores (default: standard output)")
    p.add_argument(
        "--w",
        default=None,
        help="weight over the auxiliary objectives, e.g. 0.3,0.7 (eval default: all evaluation weights; rank "
        "default: equal weights)",
    )
    p.add_argument(
        "--c", type=float, default=None, help="temperature scale c > 0: the model for c * beta (Eq. 14)"
    )
    p.add_argument("--beta", default=None, help="T-COS temperature, one value or one per objective (Eq. 15)")
    if command == "eval":
        p.add_argument("--split", choices=("train", "vali", "test"), default="test")
        p.add_argument("--data-dir", default=None, help="default: the data folder recorded in the checkpoint")
    p.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda when available"
    )
    return p


def rank_file(args, trained: TrainedRanker, w: list, beta) -> None:
    """`rank`: one score per document of a LETOR file, in file order, normalised with the checkpoint's training
    statistics (its labels are not used)."""
    split = data_lib.make_split(data_lib.read_letor(args.file, cache=False), trained.ckpt["norm_stats"])
    scores = pareto.EvalSplit(split, trained.max_docs).scores(
        lambda b: trained.scores(b, w, c=args.c, beta=beta)
    )
    text = "".join(f"{v:.6f}\n" for v in scores.tolist())
    if args.output == "-":
        sys.stdout.write(text)
        return
    data_lib.atomic_save(text, args.output)
    print(f"wrote {len(scores)} scores ({split.num_queries} queries) to {args.output}", file=sys.stderr)


def evaluate_checkpoint(args, trained: TrainedRanker, weights: list, beta) -> None:
    """`eval`: test (or --split) NDCG@10 of a saved model at the weights, with c (Eq. 14) or beta (Eq. 15)."""
    splits = pareto.checkpoint_splits(trained, args.checkpoint, args.data_dir)
    split = pareto.EvalSplit(
        splits[args.split], trained.max_docs, idcg_zero=trained.ckpt["run_config"]["idcg_zero"]
    )
    result = pareto.evaluate(trained, split, weights, args.c, beta)
    controls = "".join(f" {k}={v}" for k, v in (("c", args.c), ("beta", beta)) if v is not None)
    print(
        summary_table(
            dict(
                method=trained.method + controls,
                objectives=trained.objectives,
                weights=weights,
                train_seconds=sum(j["seconds"] for j in trained.ckpt["jobs"]),
                num_params=sum(count_parameters(mdl) for mdl in trained.models),
                **result,
            ),
            args.split,
        )
    )


def control_main(command: str, argv: list) -> None:
    args = control_parser(command).parse_args(argv)
    trained = TrainedRanker.load(args.checkpoint, resolve_device(args.device))
    m = len(trained.objectives)
    w = None if args.w is None else data_lib.parse_weight(args.w, m)
    if args.c is not None and not (args.c > 0 and np.isfinite(args.c)):
        raise ValueError(f"--c must be a finite number > 0, got {args.c}")
    beta = None if args.beta is None else data_lib.parse_floats(args.beta, "beta", m)
    if beta is not None and trained.method != "tcos":
        raise ValueError(
            f"--beta moves a T-COS model (Eq. 15); this checkpoint is {trained.method}: use --c (Eq. 14)"
        )
    if command == "rank":
        rank_file(args, trained, w or [1.0 / m] * m, beta)
    else:
        evaluate_checkpoint(args, trained, [w] if w else trained.weights, beta)


def main(argv: Optional[list] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # PyTorch's inference fast path: 2-7x slower on padded CPU lists
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        if argv and argv[0] in ("eval", "rank"):
            control_main(argv[0], argv[1:])
            return 0
        args = resolve_args(build_parser().parse_args(argv))
        if args.threads:
            torch.set_num_threads(args.threads)
        train(args)
    except NonFiniteLoss as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
