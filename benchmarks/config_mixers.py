"""The mixers of a config file and the memory dispatches they hold, built on the meta device at
their real widths: what ``auto`` would run for a config is asked of these without allocating it
(``scripts/kernel_report.py``, the GPU check, tests). Imports neither Triton nor the kernel
compile check, so it keeps the process's interpreter setting as it is."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from memnets.config import apply_overrides, load_yaml, model_config_from_dict
from memnets.dispatch import MemoryDispatch
from memnets.registry import build_mixer


def config_mixers(
    path: Path, chunk_size: int | None = None, overrides: list[str] | None = None
) -> list[tuple[str, Any]]:
    """(mixer name, ModelConfig) of each distinct mixer of a config file, after ``overrides``
    (``KEY=VALUE``, as train.py's); ``chunk_size`` replaces the option of that name in every mixer that
    takes one (TNT: its local memories)."""
    from memnets.registry import mixer_options

    cfg = model_config_from_dict(apply_overrides(load_yaml(path), overrides or []).get("model", {}))
    names = list(dict.fromkeys(cfg.layer_mixers()))
    if chunk_size is not None:
        options = dict(cfg.mixer_options)
        for name in names:
            if "chunk_size" in mixer_options(name):
                options[name] = {**options.get(name, {}), "chunk_size": chunk_size}
        cfg = dataclasses.replace(cfg, mixer_options=options)
    return [(name, cfg) for name in names]


def build_meta(name: str, cfg: Any, **overrides: Any) -> torch.nn.Module:
    """The mixer at its real widths, with no memory allocated."""
    with torch.device("meta"):
        return build_mixer(
            name, cfg.d_model, cfg.num_heads, **{**cfg.mixer_options.get(name, {}), **overrides}
        )


def dispatches(mixer: torch.nn.Module) -> Iterator[tuple[str, MemoryDispatch, torch.nn.Module]]:
    """(attribute, dispatch, the module holding it) of every memory dispatch the mixer and its
    submodules hold (TNT's ``local_ops`` list too)."""
    for module in mixer.modules():
        for attr, value in vars(module).items():
            items = value if isinstance(value, (list, tuple)) else [value]
            for i, item in enumerate(items):
                if isinstance(item, MemoryDispatch):
                    yield (f"{attr}[{i}]" if isinstance(value, (list, tuple)) else attr), item, module
