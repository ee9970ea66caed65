"""memnets: memory-based sequence models (Titans, Miras, ATLAS, MoM, ParaRNN, TNT) with one trainer."""

from .model import LM, ModelConfig
from .registry import build_mixer, list_mixers, register_mixer

__version__ = "0.1.0"


def build_model(config) -> LM:
    """Build the LM from a full run config (``memnets.config.Config``), a ``ModelConfig`` or a dict
    of model keys."""
    from .config import Config, model_config_from_dict

    if isinstance(config, Config):
        config = config.model
    elif isinstance(config, dict):
        config = model_config_from_dict(config)
    return LM(config)


__all__ = ["LM", "ModelConfig", "build_mixer", "build_model", "list_mixers", "register_mixer"]
