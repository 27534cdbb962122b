"""Typed dataclasses from YAML/JSON mappings: unknown keys and wrong types are ConfigErrors naming the key."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


def load_mapping(path: str | Path) -> dict:
    """Read a YAML or JSON file that must hold a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML/JSON: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping, got {type(data).__name__}")
    return data


def from_dict(cls: type, d: Any, where: str = ""):
    """Build dataclass `cls` from a nested dict; unknown keys and wrong types are ConfigErrors."""
    if not isinstance(d, dict):
        raise ConfigError(f"{where or cls.__name__} must be a mapping, got {type(d).__name__}: {d!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(f'{where}{k}' for k in unknown)}; expected one of {sorted(names)}")
    kwargs = {}
    for key, value in d.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = from_dict(hint, value, f"{where}{key}.")
        else:
            kwargs[key] = _coerce(value, hint, f"{where}{key}")
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where or cls.__name__}: {e}") from None


def _coerce(value: Any, hint: Any, name: str) -> Any:
    """Light type check for scalars read from YAML (ints accepted where floats are expected)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, name)
            except ConfigError:
                pass
        raise ConfigError(f"{name}={value!r} has the wrong type; expected {hint}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        hint_text = " (YAML reads a number like 5e-05 as text: write 5.0e-05)" if isinstance(value, str) else ""
        raise ConfigError(f"{name}={value!r} has the wrong type; expected a number{hint_text}")
    if hint in (int, str, bool) and not (isinstance(value, hint) and not (hint is int and isinstance(value, bool))):
        raise ConfigError(f"{name}={value!r} has the wrong type; expected {hint.__name__}")
    if origin is list and not isinstance(value, list):
        raise ConfigError(f"{name}={value!r} has the wrong type; expected a list")
    return value


def dump(obj: Any) -> str:
    """A dataclass (or dict) as pretty JSON."""
    return json.dumps(asdict(obj) if dataclasses.is_dataclass(obj) else obj, indent=2, sort_keys=False)
