"""What a resumed run may change, and the optimizer state in the form the resuming run loads."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

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
    ``set_optimizer_state_dict``, by index for ``Optimizer.load_state_dict``. Checkpoints keep the key
    of the run that wrote them, so this is what lets single/DDP and FSDP runs resume each other's."""
    names = {p: n for n, p in model.named_parameters()}
    order = [names[p] for g in optimizer.param_groups for p in g["params"]]
    index = {n: i for i, n in enumerate(order)}
    keyed_by_name = any(isinstance(k, str) for g in osd["param_groups"] for k in g["params"])
    if keyed_by_name == by_name:
        return osd
    key = (lambda i: order[i]) if by_name else (lambda n: index[n])
    return {
        "state": {key(k): v for k, v in osd["state"].items()},
        "param_groups": [{**g, "params": [key(k) for k in g["params"]]} for g in osd["param_groups"]],
    }
