"""What a resumed run may change, and the optimizer state in the form the resuming run loads."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from .validation import ConfigError

log = logging.getLogger("memnets")

# what a resumed run must share with its checkpoint: the model, the data, and the seed (the batch of a
# step is a function of the seed and the step); data.num_workers only changes how batches are loaded
_UNUSED_FOR_RESUME = ("data.num_workers",)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(saved: dict[str, Any], now: dict[str, Any]) -> tuple[list[tuple], list[tuple]]:
    """``(blocking, other)`` lists of ``(dotted key, checkpoint value, current value)``: keys that must
    match to resume (model, data, run.seed) and the rest (train and run settings), every difference."""
    a, b = _flatten(saved), _flatten(now)
    blocking, other = [], []
    for key in sorted(set(a) | set(b)):
        if a.get(key) == b.get(key) or key in _UNUSED_FOR_RESUME or key == "run.resume":
            continue
        matters = key.startswith(("model.", "data.")) or key == "run.seed"
        (blocking if matters else other).append((key, a.get(key), b.get(key)))
    return blocking, other


def optimizer_state_for(
    osd: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer, by_name: bool
) -> dict[str, Any]:
    """A saved optimizer state keyed the way this run loads it: by parameter name for FSDP's
    ``set_optimizer_state_dict`` (and for saving), by index for ``Optimizer.load_state_dict``. A state saved
    by name is regrouped into this run's parameter groups, so a resume may change which parameters are
    under weight decay (``train.no_decay``); one saved by index (checkpoints written before the names were
    kept) only loads into groups of the sizes it was saved with."""
    names = {p: n for n, p in model.named_parameters()}
    groups = [[names[p] for p in g["params"]] for g in optimizer.param_groups]
    order = [n for g in groups for n in g]
    if not any(isinstance(k, str) for g in osd["param_groups"] for k in g["params"]):
        saved_sizes, sizes = [len(g["params"]) for g in osd["param_groups"]], [len(g) for g in groups]
        if saved_sizes != sizes:
            raise ConfigError(
                f"the checkpoint's optimizer groups hold {saved_sizes} parameters where this run's hold "
                f"{sizes} (with and without weight decay): which parameters decay changed (train.no_decay), "
                "and this checkpoint keys its optimizer state by position, so it cannot be matched; resume "
                "with the setting it was written with, or start from its weights with train.init_from"
            )
        osd = {
            "state": {order[i]: v for i, v in osd["state"].items()},
            "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in osd["param_groups"]],
        }
    moved = sorted(
        n
        for saved, g in zip(osd["param_groups"], groups)
        for n in set(g) - set(saved["params"])
        if n in osd["state"]
    )
    if moved:
        log.info(
            "resuming with %d parameters in another optimizer group than saved: %s", len(moved), moved[:5]
        )
    dropped = set(osd["state"]) - set(order)
    if dropped:
        log.info(
            "resuming without the optimizer state of %d parameters that do not train now: %s",
            len(dropped),
            sorted(dropped)[:5],
        )
    key = (lambda n: n) if by_name else {n: i for i, n in enumerate(order)}.__getitem__
    return {
        "state": {key(n): v for n, v in osd["state"].items() if n not in dropped},
        "param_groups": [
            {**saved, "params": [key(n) for n in g]} for saved, g in zip(osd["param_groups"], groups)
        ],
    }
