from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from coinvision.sdk.errors import ConfigError
from coinvision.trainer.config_io import parse_overrides, resolve_config, save_config


@dataclass(frozen=True)
class _Cfg:
    epochs: int = 2
    margin_rad: float = 0.2
    pretrained: bool = False
    size_px: tuple[int, int] = (64, 64)
    pretrained_path: str | None = None


def test_resolve_config_layers_defaults_yaml_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 5\nmargin_rad: 0.3\nsize_px: [32, 48]\n")
    cfg = resolve_config(_Cfg, path, parse_overrides(["epochs=7", "pretrained=true"]))
    assert cfg == _Cfg(epochs=7, margin_rad=0.3, pretrained=True, size_px=(32, 48))


def test_resolve_config_unknown_key_lists_valid_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['margin_deg'\].*margin_rad"):
        resolve_config(_Cfg, overrides={"margin_deg": 10})


def test_resolve_config_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_config(_Cfg, tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        resolve_config(_Cfg, bad)


def test_parse_overrides_needs_key_value() -> None:
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides(["epochs"])


def test_save_config_round_trips(tmp_path: Path) -> None:
    cfg = _Cfg(epochs=3, pretrained_path="w.pth")
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert resolve_config(_Cfg, path) == cfg
    assert yaml.safe_load(path.read_text())["margin_rad"] == 0.2


@dataclass(frozen=True)
class _Outer:
    epochs: int = 2
    inner: _Cfg = _Cfg()


def test_dotted_override_sets_one_field_of_a_nested_config_over_the_yaml(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("inner:\n  epochs: 5\n  margin_rad: 0.3\n")
    cfg = resolve_config(_Outer, path, parse_overrides(["inner.margin_rad=0.4", "epochs=3"]))
    assert cfg == _Outer(epochs=3, inner=_Cfg(epochs=5, margin_rad=0.4))
    assert resolve_config(_Outer, overrides={"inner.pretrained": True}).inner == _Cfg(pretrained=True)
    with pytest.raises(ConfigError, match=r"'epochs' is not a nested config of _Outer"):
        resolve_config(_Outer, overrides={"epochs.x": 1})
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['nope'\] for _Cfg"):
        resolve_config(_Outer, overrides={"inner.nope": 1})
