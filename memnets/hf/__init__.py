"""Hugging Face ``transformers`` models for memnets (extra ``memnets[hf]``).

``import memnets.hf`` registers :class:`MemnetsConfig` (``model_type = "memnets"``) with ``AutoConfig``
and :class:`MemnetsForCausalLM` with ``AutoModelForCausalLM``. A run folder becomes a Hugging Face
model folder with :func:`export_run` (``scripts/export_hf.py``); such a folder loads either way:

* with memnets installed and ``import memnets.hf`` done: ``AutoModelForCausalLM.from_pretrained(DIR)``;
* with ``trust_remote_code=True`` (what ``lm_eval --model hf`` and other tools use): the folder's
  ``configuration_memnets.py`` / ``modeling_memnets.py`` import this package, so memnets must be
  installed there as well; the weights are never loaded by code other than this package.

``import memnets`` alone never imports ``transformers``."""

from __future__ import annotations

try:
    import transformers  # noqa: F401
except ImportError:
    raise ImportError(
        "memnets.hf needs the 'transformers' package; install it with: pip install 'memnets[hf]'"
    ) from None

from .configuration import MemnetsConfig
from .export import ExportInfo, export_run
from .modeling import MemnetsCausalLMOutput, MemnetsForCausalLM, MemnetsState
from .tokenizer import build_hf_tokenizer


def _register() -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    AutoConfig.register(MemnetsConfig.model_type, MemnetsConfig, exist_ok=True)
    AutoModelForCausalLM.register(MemnetsConfig, MemnetsForCausalLM, exist_ok=True)


_register()

__all__ = [
    "ExportInfo",
    "MemnetsCausalLMOutput",
    "MemnetsConfig",
    "MemnetsForCausalLM",
    "MemnetsState",
    "build_hf_tokenizer",
    "export_run",
]
