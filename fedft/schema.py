"""Build frozen dataclasses from raw TOML-like dicts, checking keys and types once.

The scenario schema (:mod:`fedft.config`) is a tree of frozen dataclasses. This module turns a raw
nested mapping into that tree, and back, naming the dotted key of any problem::

    >>> build(TrainConfig, {"lr": "fast"}, "train")
    ConfigError: `train.lr`: expected a number, got 'fast'
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, get_args, get_origin

from fedft.errors import ConfigError

T = TypeVar("T")


def build(cls: type[T], raw: Mapping[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``raw``, rejecting unknown keys and wrong types.

    Parameters
    ----------
    cls : type
        A (frozen) dataclass whose fields carry type annotations.
    raw : Mapping[str, Any]
        Values by field name; missing fields take their defaults.
    prefix : str
        Dotted path of ``raw`` inside the whole config, used in error messages.

    Returns
    -------
    T
        The validated instance (its ``__post_init__`` checks value ranges).
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(prefix or "<root>", f"expected a table, got {_show(raw)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        key = _join(prefix, unknown[0])
        raise ConfigError(key, f"unknown key (known: {', '.join(sorted(fields))})")
    values = {}
    for name in fields:
        if name in raw:
            values[name] = _convert(hints[name], raw[name], _join(prefix, name))
    return cls(**values)


def to_dict(obj: Any) -> Any:
    """Turn a config dataclass tree into plain dicts, lists and scalars (TOML/JSON-ready)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [to_dict(v) for v in obj]
    return obj


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _convert(hint: Any, value: Any, key: str) -> Any:
    origin = get_origin(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return build(hint, value, key)
    if origin is Literal:
        allowed = get_args(hint)
        if value not in allowed:
            choices = ", ".join(repr(a) for a in allowed)
            raise ConfigError(key, f"expected one of {choices}, got {_show(value)}")
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in get_args(hint):
            if option is type(None):
                if value is None:
                    return None
                continue
            try:
                return _convert(option, value, key)
            except ConfigError as err:
                errors.append(err)
        raise errors[0] if errors else ConfigError(key, f"unexpected value {_show(value)}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(key, f"expected a list, got {_show(value)}")
        (item,) = [a for a in get_args(hint) if a is not Ellipsis]
        return tuple(_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {_show(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected an integer, got {_show(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(key, f"expected a number, got {_show(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {_show(value)}")
        return value
    raise TypeError(f"schema type {hint!r} of `{key}` is not supported")  # a bug in fedft


def check(condition: bool, key: str, message: str) -> None:
    """Raise :class:`ConfigError` for ``key`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(key, message)
