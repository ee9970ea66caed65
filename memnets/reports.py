"""What the analysis scripts share: the config arguments they take and the table and JSON they leave."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from .config import MQAR_MEMORY_FAMILIES, Config, load_config
from .model import LM


def config_parser(description: str | None, every_family: bool = True) -> argparse.ArgumentParser:
    """``--configs`` (by default every memory family's MQAR config, else required), ``--override``
    (dotted config overrides for every config) and ``--out`` (a folder for the table and its JSON)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    if every_family:
        families = [Path(f"configs/mqar/{f}.yaml") for f in MQAR_MEMORY_FAMILIES]
        p.add_argument("--configs", nargs="*", type=Path, default=families)
    else:
        p.add_argument("--configs", nargs="+", type=Path, required=True)
    p.add_argument("--override", nargs="*", default=[], help="dotted config overrides for every config")
    p.add_argument("--out", type=Path, default=None, help="a folder for NAME.md (the table) and NAME.json")
    return p


def report(out: Path | None, name: str, title: str, table: str, data: Any) -> None:
    """Print ``title`` and the markdown ``table``; with ``out``, write ``out/name.md`` and ``out/name.json``."""
    print(f"\n{title}\n{table}")
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}.json").write_text(json.dumps(data, indent=1))
        (out / f"{name}.md").write_text(table + "\n")


def initial_model(config: Path, overrides: list[str]) -> tuple[Config, LM]:
    """A config's model at its seed-0 initialisation, for any sequence length (no learned positions),
    with the MQAR task's vocabulary where the config leaves it to the data (as the trainer fills it)."""
    cfg = load_config(config, ["model.max_position_embeddings=0", *overrides])
    cfg.model.vocab_size = cfg.model.vocab_size or cfg.data.mqar.vocab_size
    torch.manual_seed(0)
    return cfg, LM(cfg.model)
