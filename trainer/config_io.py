"""Frozen-dataclass configs: defaults, then a YAML file, then CLI overrides; saved beside artifacts."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from coinvision.sdk.errors import ConfigError

__all__ = ["config_to_dict", "parse_overrides", "resolve_config", "save_config"]

C = TypeVar("C")


def _coerce(value: Any, annotation: Any, name: str) -> Any:
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation) and isinstance(value, dict):
        return _build(annotation, value)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], name) if len(args) == 1 else value
    if origin is tuple and isinstance(value, list | tuple):
        args = typing.get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], name) for v in value)
        return tuple(_coerce(v, a, name) for v, a in zip(value, args, strict=False))
    if annotation is float and isinstance(value, int | float | str):
        return float(value)
    if annotation is int and isinstance(value, str):
        return int(value)
    if annotation is bool and isinstance(value, str):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"config key {name!r}: expected a boolean, got {value!r}")
    return value


def _build(cls: type[C], values: dict[str, Any]) -> C:
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {unknown} for {cls.__name__}; valid keys: {sorted(fields)}"
        )
    kwargs = {k: _coerce(v, hints[k], k) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid {cls.__name__} config: {exc}") from exc


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``["epochs=3", "lr=1e-3"]`` -> ``{"epochs": 3, "lr": 0.001}`` (values parsed as YAML scalars). A dotted key
    (``synth.multi_coin_p=0.6``) sets one field of a nested config; :func:`resolve_config` merges it."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {pair!r} is not KEY=VALUE (e.g. epochs=3)")
        out[key.strip()] = yaml.safe_load(raw)
    return out


def resolve_config(cls: type[C], yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> C:
    """Defaults of ``cls``, updated by the YAML file, updated by ``overrides``."""
    values: dict[str, Any] = {}
    if yaml_path is not None:
        path = Path(yaml_path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; pass an existing YAML file")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of keys to values")
        values.update(loaded)
    hints = typing.get_type_hints(cls)
    for key, value in (overrides or {}).items():
        path = key.split(".")
        if len(path) > 1 and not dataclasses.is_dataclass(hints.get(path[0])):
            raise ConfigError(f"config key {key!r}: {path[0]!r} is not a nested config of {cls.__name__}")
        _set_path(values, path, value)
    return _build(cls, values)


def _set_path(values: dict[str, Any], path: list[str], value: Any) -> None:
    """``values[a][b] = value`` for ``path == [a, b]``, the nested mappings copied (not shared with the caller)."""
    head, rest = path[0], path[1:]
    if not rest:
        values[head] = value
        return
    nested = values.get(head) or {}  # YAML and checkpoint configs hold nested configs as mappings
    if not isinstance(nested, dict):
        raise ConfigError(f"config key {'.'.join(path)!r}: {head!r} is not a nested config")
    values[head] = nested = dict(nested)
    _set_path(nested, rest, value)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML (the artifact's record of how it was made)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    return path
