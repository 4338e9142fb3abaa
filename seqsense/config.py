"""Dataclass configs with `key=value` overrides from the command line.

Every config in seqsense is a dataclass that validates itself in `__post_init__`. `apply_overrides`
turns `["lr=1e-3", "hidden=64"]` into a new instance, converting each value to the field's type, and
raises `ConfigError` listing the valid keys on an unknown key or a value of the wrong type.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
from typing import Any, Sequence, TypeVar

from seqsense.errors import ConfigError
from seqsense.fileio import from_json, to_json

C = TypeVar("C")


STREAM_SLICE = re.compile(r"^(?P<name>[^\[\]]+?)(\[(?P<a>\d+):(?P<b>\d+)\])?$")  # "stream" or "stream[i:j]"


def parse_stream_slice(spec: str) -> tuple[str, slice | None]:
    """(stream name, field slice) of a "stream" or "stream[i:j]" setting; the slice is None for a whole stream."""
    m = STREAM_SLICE.match(spec) if isinstance(spec, str) else None
    if m is None:
        raise ConfigError(f"{spec!r} is not a stream name or 'stream[i:j]' slice.")
    return m["name"], (slice(int(m["a"]), int(m["b"])) if m["a"] is not None else None)


def parse_overrides(items: Sequence[str] | None, what: str = "setting") -> dict[str, str]:
    """Split `key=value` strings into a dict (ConfigError on an item without '=')."""
    out: dict[str, str] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"{what} {item!r} is not of the form key=value.")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _convert(value: Any, tp: Any, key: str, owner: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        non_none = [a for a in args if a is not type(None)]
        if isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args:
            return None
        last_error = None
        for a in non_none:
            try:
                return _convert(value, a, key, owner)
            except ConfigError as e:
                last_error = e
        raise last_error  # type: ignore[misc]
    if not isinstance(value, str):
        return value
    try:
        if tp is bool:
            lowered = value.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if tp is int:
            return int(value)
        if tp is float:
            return float(value)
        if tp is str:
            return value
        if origin in (list, tuple) or tp in (list, tuple):
            parsed = json.loads(value) if value.startswith("[") else [v for v in value.split(",") if v]
            inner = args[0] if args else str
            return (tuple if (origin or tp) is tuple else list)(_convert(v, inner, key, owner) for v in parsed)
        if origin is dict or tp is dict:
            return json.loads(value)
    except (ValueError, TypeError, json.JSONDecodeError):
        name = getattr(tp, "__name__", str(tp))
        raise ConfigError(f"{owner}: {key}={value!r} is not a valid {name}.") from None
    return value


def apply_overrides(config: C, overrides: dict[str, Any] | Sequence[str], owner: str | None = None) -> C:
    """A copy of dataclass `config` with `overrides` applied (strings converted to field types)."""
    if not isinstance(overrides, dict):
        overrides = parse_overrides(overrides)
    owner = owner or type(config).__name__
    hints = typing.get_type_hints(type(config))
    fields = {f.name for f in dataclasses.fields(config) if f.init}
    changes = {}
    for key, value in overrides.items():
        if key not in fields:
            raise ConfigError(f"{owner}: unknown key {key!r}; valid keys: {', '.join(sorted(fields))}.")
        changes[key] = _convert(value, hints[key], key, owner)
    try:
        return dataclasses.replace(config, **changes)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{owner}: {e}") from e


def config_to_dict(config) -> dict:
    """A dict of a dataclass config exactly as its strict JSON reads back (inf as None, tuples as lists)."""
    return from_json(to_json(dataclasses.asdict(config)))


def config_from_dict(cls: type[C], data: dict) -> C:
    """Rebuild a dataclass config from `config_to_dict` output, ignoring keys it does not know.

    A None in a field typed `float` (not `float | None`) is the null strict JSON writes for inf: it
    reads back as inf, the "unbounded" value such fields take (`max_age_s`), see `seqsense.fileio`.
    """
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data and f.init:
            value = data[f.name]
            tp = hints[f.name]
            if typing.get_origin(tp) is tuple and isinstance(value, list):
                value = tuple(value)
            if value is None and tp is float:
                value = math.inf
            kwargs[f.name] = value
    return cls(**kwargs)
