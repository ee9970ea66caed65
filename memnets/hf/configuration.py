"""The ``transformers`` config of a memnets language model: the memnets ``ModelConfig`` (mixers, their
options, sizes) kept whole under ``memnets``, the run's tokenizer name under ``memnets_tokenizer``, and
the usual Hugging Face fields (``vocab_size``, ``hidden_size``, ...) derived from it so generic tools
(lm-evaluation-harness, ``generate``) find them."""

from __future__ import annotations

import copy
from typing import Any

from transformers import PretrainedConfig

from ..config import model_config_from_dict, to_dict
from ..model import ModelConfig

# Hugging Face names for ModelConfig fields; they are read-only views of ``memnets``.
_MIRRORS = {
    "vocab_size": "vocab_size",
    "hidden_size": "d_model",
    "num_hidden_layers": "n_layers",
    "num_attention_heads": "num_heads",
    "tie_word_embeddings": "tie_embeddings",
}


class MemnetsConfig(PretrainedConfig):
    """``memnets``: the fields of :class:`memnets.ModelConfig` (``None``: its defaults, as the
    ``transformers`` machinery builds an empty config to diff against). ``memnets_tokenizer``: the
    tokenizer the run trained with (``"byte"`` or a ``tokenizer.json`` path / hub name), for the record;
    the tokenizer files beside the config are what loads. ``memnets_source``: where the weights came
    from (run folder, step, file)."""

    model_type = "memnets"

    def __init__(
        self,
        memnets: dict[str, Any] | None = None,
        memnets_tokenizer: str | None = None,
        memnets_source: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        model = model_config_from_dict(dict(memnets or {}))
        self.memnets = to_dict(model)
        self.memnets_tokenizer = memnets_tokenizer
        self.memnets_source = memnets_source
        for hf_name, name in _MIRRORS.items():
            given = kwargs.pop(hf_name, None)
            value = getattr(model, name)
            if given is not None and given != value and memnets is not None:
                raise ValueError(
                    f"MemnetsConfig: {hf_name}={given!r} disagrees with memnets.{name}={value!r}; "
                    f"{hf_name} is derived from memnets and cannot be set on its own"
                )
        if model.max_position_embeddings:  # lm-eval reads it as the context limit; 0 means none
            kwargs["max_position_embeddings"] = model.max_position_embeddings
        super().__init__(tie_word_embeddings=model.tie_embeddings, **kwargs)
        self.vocab_size = model.vocab_size
        self.hidden_size = model.d_model
        self.num_hidden_layers = model.n_layers
        self.num_attention_heads = model.num_heads

    def model_config(self) -> ModelConfig:
        """A fresh :class:`memnets.ModelConfig` (validated by ``LM`` when built)."""
        return model_config_from_dict(copy.deepcopy(self.memnets))
