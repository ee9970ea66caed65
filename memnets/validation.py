"""Type checks and "did you mean" suggestions shared by the config loader and the mixer registry.

Every error names the full dotted key, the bad value and what is allowed."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Iterable
from typing import Any, Literal, Union


class ConfigError(ValueError):
    """A config key, type or value that is not allowed."""


def suggest(key: str, choices: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the nearest valid name, or a list of the valid names."""
    choices = sorted(choices)
    close = difflib.get_close_matches(key, choices, n=1, cutoff=0.5)
    if close:
        return f" (did you mean '{close[0]}'?)"
    return f" (valid keys: {', '.join(choices)})" if choices else ""


def unknown_key(path: str, key: str, choices: Iterable[str]) -> ConfigError:
    full = f"{path}.{key}" if path else key
    return ConfigError(f"unknown config key '{full}'{suggest(key, choices)}")


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is not None:
        return str(annotation).replace("typing.", "")
    return getattr(annotation, "__name__", str(annotation))


def coerce(path: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against a type annotation and return it (ints are accepted for floats,
    lists for tuples). Raises :class:`ConfigError` naming ``path`` otherwise."""
    if annotation is Any or annotation is typing.Any:
        return value
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        if value in args:
            return value
        close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1, cutoff=0.5)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"{path}={value!r} is not allowed; choose one of {list(args)}{hint}")
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(path, value, arg)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{path}={value!r} has the wrong type; expected {_type_name(annotation)}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(
                f"{path}={value!r} has the wrong type; expected a list ({_type_name(annotation)})"
            )
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{path}={value!r} must have {len(args)} items ({_type_name(annotation)})")
            items = [coerce(f"{path}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args))]
        else:
            inner = args[0] if args else Any
            items = [coerce(f"{path}[{i}]", v, inner) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}={value!r} has the wrong type; expected a mapping")
        vt = args[1] if args else Any
        return {k: coerce(f"{path}.{k}", v, vt) for k, v in value.items()}
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}={value!r} has the wrong type; expected a number")
        if not math.isfinite(value):  # NaN would pass every range check (comparisons are False)
            raise ConfigError(f"{path}={value!r} is not allowed; expected a finite number")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}={value!r} has the wrong type; expected an integer")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}={value!r} has the wrong type; expected true or false")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}={value!r} has the wrong type; expected a string")
        return value
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        return _coerce_spec(path, value, annotation)
    if isinstance(annotation, type) and not isinstance(value, annotation):
        raise ConfigError(f"{path}={value!r} has the wrong type; expected {_type_name(annotation)}")
    return value


def _coerce_spec(path: str, value: Any, spec: type) -> Any:
    """A mapping of an option group (a frozen dataclass such as ``MemorySpec``) into the dataclass,
    each field checked against its type; unset fields keep their defaults."""
    if isinstance(value, spec):
        return value
    names = [f.name for f in dataclasses.fields(spec)]
    if not isinstance(value, dict):
        raise ConfigError(f"{path}={value!r} has the wrong type; expected a mapping with keys from {names}")
    hints = typing.get_type_hints(spec)
    for key in value:
        if key not in names:
            raise unknown_key(path, key, names)
    return spec(**{k: coerce(f"{path}.{k}", v, hints[k]) for k, v in value.items()})
