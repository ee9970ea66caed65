"""Turn a run folder into a Hugging Face model folder (``scripts/export_hf.py``).

The weights are the run's newest loadable checkpoint (``checkpoints/step_*.pt``, the step it holds is
recorded), or ``model.safetensors`` when the run has no checkpoint left (its step is then the last one
in ``metrics.jsonl``); ``checkpoint=`` picks a file instead. Written: ``config.json``
(:class:`MemnetsConfig`, with ``memnets_source`` = run, step, weights file), ``model.safetensors``,
``generation_config.json``, the tokenizer files (text runs; MQAR runs have no tokenizer) and two small
modules, ``configuration_memnets.py`` and ``modeling_memnets.py``, that import ``memnets.hf`` so
``trust_remote_code=True`` loading works wherever memnets is installed."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import load_latest
from ..config import load_config, to_dict
from .configuration import MemnetsConfig
from .modeling import MemnetsForCausalLM
from .tokenizer import build_hf_tokenizer

log = logging.getLogger("memnets")

AUTO_MAP = {
    "AutoConfig": "configuration_memnets.MemnetsConfig",
    "AutoModelForCausalLM": "modeling_memnets.MemnetsForCausalLM",
}
_SHIMS = {
    "configuration_memnets.py": (
        '"""memnets model config for transformers\' trust_remote_code loading: it lives in the memnets\n'
        'package (pip install \'memnets[hf]\'), which must be installed."""\n\n'
        "from memnets.hf.configuration import MemnetsConfig\n\n"
        '__all__ = ["MemnetsConfig"]\n'
    ),
    "modeling_memnets.py": (
        '"""memnets causal LM for transformers\' trust_remote_code loading: it lives in the memnets\n'
        'package (pip install \'memnets[hf]\'), which must be installed."""\n\n'
        "from memnets.hf.modeling import MemnetsForCausalLM\n\n"
        '__all__ = ["MemnetsForCausalLM"]\n'
    ),
}


@dataclass
class ExportInfo:
    out_dir: Path
    step: int | None  # training step of the exported weights (None: not recorded anywhere)
    weights: Path  # the file they came from
    tokenizer: str | None  # memnets tokenizer name, None for runs without text


def _last_logged_step(run: Path) -> int | None:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return None
    steps = [json.loads(line).get("step") for line in path.read_text().splitlines() if line.strip()]
    steps = [s for s in steps if s is not None]
    return max(steps) if steps else None


def run_weights(
    run: Path, checkpoint: Path | None = None
) -> tuple[dict[str, torch.Tensor], int | None, Path]:
    """``(state dict of memnets.LM, step, source file)``: ``checkpoint`` if given (``.pt`` or
    ``.safetensors``), else the newest loadable checkpoint, else ``model.safetensors``."""
    from safetensors.torch import load_file

    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
        if path.suffix == ".safetensors":
            return load_file(str(path)), _last_logged_step(run), path
        state = torch.load(path, map_location="cpu", weights_only=False)
        return state["model"], state.get("step"), path
    found = load_latest(run / "checkpoints")
    if found is not None:
        state, path = found
        return state["model"], state.get("step"), path
    path = run / "model.safetensors"
    if path.is_file():
        return load_file(str(path)), _last_logged_step(run), path
    raise FileNotFoundError(f"{run} has neither a loadable checkpoint in checkpoints/ nor model.safetensors")


def export_run(run_dir: str | Path, out_dir: str | Path, checkpoint: str | Path | None = None) -> ExportInfo:
    """Write the Hugging Face folder of run ``run_dir`` to ``out_dir`` (see the module docstring)."""
    run, out = Path(run_dir), Path(out_dir)
    if not (run / "config.yaml").is_file():
        raise FileNotFoundError(f"{run} is not a run folder (no config.yaml)")
    if out.resolve() == run.resolve():
        raise ValueError(
            f"out_dir={str(out)!r} is the run folder; its model.safetensors would be overwritten"
        )
    cfg = load_config(run / "config.yaml")
    state, step, source = run_weights(run, None if checkpoint is None else Path(checkpoint))
    name = cfg.data.text.tokenizer if cfg.data.kind == "text" else None
    tokenizer = build_hf_tokenizer(name) if name is not None else None
    special: dict[str, Any] = {}
    if tokenizer is not None:
        if len(tokenizer) > cfg.model.vocab_size:
            raise ValueError(
                f"tokenizer {name!r} has {len(tokenizer)} tokens but model.vocab_size={cfg.model.vocab_size}"
            )
        special = {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    config = MemnetsConfig(
        memnets=to_dict(cfg.model),
        memnets_tokenizer=name,
        memnets_source={"run": str(run), "step": step, "weights": str(source)},
        auto_map=dict(AUTO_MAP),
        **special,
    )
    model = MemnetsForCausalLM(config)
    model.lm.load_state_dict(state)  # strict: every weight of the run, nothing else
    # A trust_remote_code load in this process marks the classes for copying their source files on
    # save (transformers 4); the folder gets the two import-only modules below instead.
    model._auto_class = config._auto_class = None
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    for filename, text in _SHIMS.items():
        (out / filename).write_text(text)
    log.info("exported %s (step %s, weights %s) to %s", run, step, source, out)
    return ExportInfo(out, step, source, name)
