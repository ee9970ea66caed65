"""The outer optimisation of a run: the learning-rate schedule, which parameters train, the optimizer."""

from __future__ import annotations

import fnmatch
import logging
import math
from collections.abc import Callable

import torch
from torch import nn

from .config import TrainConfig
from .validation import ConfigError

log = logging.getLogger("memnets")


def lr_lambda(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier on ``train.lr``: linear warmup over ``warmup`` steps, then cosine to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _matcher(model: nn.Module, key: str, patterns: list[str]) -> Callable[[str], bool]:
    """Whether a parameter name matches one of ``patterns`` (fnmatch globs); each must match something."""
    names = [n for n, _ in model.named_parameters()]
    for pat in patterns:
        if not any(fnmatch.fnmatchcase(n, pat) for n in names):
            raise ConfigError(f"{key} pattern {pat!r} matches no parameter; e.g. {names[:5]}")
    return lambda name: any(fnmatch.fnmatchcase(name, pat) for pat in patterns)


def apply_trainable(model: nn.Module, patterns: list[str] | None) -> None:
    """Freeze every parameter whose name matches none of ``patterns`` (fnmatch globs)."""
    if patterns is None:
        return
    matches = _matcher(model, "train.trainable", patterns)
    for name, p in model.named_parameters():
        p.requires_grad_(matches(name))
    total = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info(
        "train.trainable=%s: %s of %s parameters train (%.1f%%), the rest is frozen",
        patterns,
        f"{trained:,}",
        f"{total:,}",
        100 * trained / max(total, 1),
    )


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters with weight decay on every tensor of two or more dimensions
    except those ``train.no_decay`` names: not on vectors (the norms' gains, the biases), but on the deep
    memories' per-head LayerNorm gains and biases ``[heads, dim]`` and ParaRNN's gate bias ``[3, d_h]``,
    which the shipped configs were tuned with (exempting them slowed Titans' MQAR learning,
    benchmarks/RESULTS.md §46)."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise ConfigError("no trainable parameters (check train.trainable)")
    matches = _matcher(model, "train.no_decay", cfg.no_decay or [])
    decays = {n: p.dim() >= 2 and not matches(n) for n, p in params}
    decay = [p for n, p in params if decays[n]]
    no_decay = [p for n, p in params if not decays[n]]
    if cfg.no_decay:
        exempt = sum(p.dim() >= 2 and not decays[n] for n, p in params)
        log.info("train.no_decay=%s: %d matrices kept out of weight decay", cfg.no_decay, exempt)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))
