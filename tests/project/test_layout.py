"""Install layout: one namespace, and the SDK stays free of torch/tensorflow like the phone it mirrors."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_code_folders_install_under_one_namespace() -> None:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    mapping = cfg["tool"]["setuptools"]["package-dir"]
    assert mapping["coinvision.sdk"] == "sdk_python"
    assert mapping["coinvision.trainer"] == "trainer"
    assert set(cfg["project"]["optional-dependencies"]) >= {"train", "convert", "sdk", "server", "dev", "all"}
    sdk_deps = " ".join(cfg["project"]["dependencies"] + cfg["project"]["optional-dependencies"]["sdk"])
    assert "torch" not in sdk_deps and "tensorflow" not in sdk_deps


def test_sdk_import_pulls_no_torch_or_tensorflow() -> None:
    code = (
        "import importlib, pkgutil, sys, coinvision.sdk as s\n"
        "for m in pkgutil.iter_modules(s.__path__):\n"
        "    importlib.import_module('coinvision.sdk.' + m.name)\n"
        "bad = [n for n in ('torch', 'tensorflow', 'timm') if n in sys.modules]\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
