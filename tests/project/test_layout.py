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


def test_layer_contracts_hold_at_any_depth() -> None:
    """import-linter reads every import statement (function-level ones too): sdk < trainer | sync_server <
    converters < cli, and the SDK reaches no torch/tensorflow/faiss/flask through any chain."""
    lint_imports = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run([str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("KEPT") >= 2


def test_cli_lives_above_the_packages() -> None:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert cfg["project"]["scripts"]["coinvision"] == "coinvision.cli.main:main"
    assert not any((ROOT / folder / "cli.py").exists() for folder in ("sdk_python", "trainer", "converters",
                                                                        "sync_server"))
    assert not (ROOT / "sdk_python" / "config_io.py").exists()  # training YAML is the trainer's
    sdk_deps = " ".join(cfg["project"]["dependencies"] + cfg["project"]["optional-dependencies"]["sdk"])
    assert "yaml" not in sdk_deps


def test_public_sdk_names_import_from_the_package() -> None:
    code = ("from coinvision.sdk import Pack, Recognizer, SyncClient, default_models_dir\n"
            "import sys; print(default_models_dir()); sys.exit(1 if 'torch' in sys.modules else 0)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/")
    assert out.returncode == 0, out.stdout + out.stderr
    assert Path(out.stdout.strip()) == ROOT / "models" / "release"  # found from any working directory
