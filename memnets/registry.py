"""Registry of token mixers: every family registers its mixer classes by name, and models are built
from names in configs. Mixer modules under ``memnets/mixers/`` are imported on first use, so adding a
family means adding one file there, with no list to edit."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
import typing
from typing import Any

from torch import nn

from .validation import ConfigError, coerce, suggest

_MIXERS: dict[str, type[nn.Module]] = {}
_RESERVED = ("self", "d_model", "num_heads")


def register_mixer(name: str):
    """Class decorator: ``@register_mixer("titans") class Titans(nn.Module): ...``."""

    def wrap(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _MIXERS and _MIXERS[name] is not cls:
            raise ValueError(f"mixer name '{name}' is registered twice ({_MIXERS[name]} and {cls})")
        _MIXERS[name] = cls
        return cls

    return wrap


def _import_all() -> None:
    from . import mixers

    for info in pkgutil.iter_modules(mixers.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{mixers.__name__}.{info.name}")


def list_mixers() -> list[str]:
    _import_all()
    return sorted(_MIXERS)


def mixer_class(name: str) -> type[nn.Module]:
    names = list_mixers()
    if name not in _MIXERS:
        raise ConfigError(f"unknown mixer '{name}'{suggest(name, names)}; registered: {', '.join(names)}")
    return _MIXERS[name]


def mixer_options(name: str) -> dict[str, tuple[Any, Any]]:
    """``{option: (annotation, default)}`` for every keyword the mixer's constructor takes."""
    cls = mixer_class(name)
    hints = typing.get_type_hints(cls.__init__)
    out = {}
    for p in inspect.signature(cls.__init__).parameters.values():
        if p.name in _RESERVED or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        out[p.name] = (hints.get(p.name, Any), p.default)
    return out


def check_mixer_options(name: str, options: dict[str, Any], path: str = "mixer_options") -> dict[str, Any]:
    """Validate ``options`` against the mixer's constructor: unknown keys get a suggestion, values
    are type-checked. Returns the (coerced) options."""
    allowed = mixer_options(name)
    out = {}
    for key, value in options.items():
        if key not in allowed:
            hint = _grouped(path, key, allowed) or suggest(key, allowed)
            raise ConfigError(f"unknown option '{path}.{key}' for mixer '{name}'{hint}")
        out[key] = coerce(f"{path}.{key}", value, allowed[key][0])
    return out


def _grouped(path: str, key: str, allowed: dict[str, tuple[Any, Any]]) -> str:
    """Where a flat key of an option group now lives: ``memory_depth`` is ``memory.depth``."""
    group, _, field = key.partition("_")
    spec = allowed.get(group, (None,))[0]
    if dataclasses.is_dataclass(spec) and field in {f.name for f in dataclasses.fields(spec)}:
        return f" (the '{group}' options are one group: set '{path}.{group}.{field}')"
    return ""


def build_mixer(name: str, d_model: int, num_heads: int, **options: Any) -> nn.Module:
    """Build a registered mixer: ``build_mixer("attention", d_model=256, num_heads=4, window=128)``."""
    options = check_mixer_options(name, options)
    return mixer_class(name)(d_model=d_model, num_heads=num_heads, **options)
