"""Session fixtures shared by every test area (area-specific fixtures live in tests/<area>/conftest.py), and the
rule that sorts tests into the fast tier and the ``slow`` one.

``slow``: a test that needs the training/export stack: its module, its own body or one of its fixtures imports
torch, the trainer, the converters or a converter toolkit (litert_torch, tensorflow, coremltools), directly or
through ``pytest.importorskip``. The rule reads source text, so a new test lands in the right tier by itself.
``make test-fast`` (``-m "not slow and not gpu"``) also skips importing modules that are slow as a whole, since
importing them (torch, tensorflow) costs more than running every fast test.
"""

from __future__ import annotations

import inspect
import re
from functools import cache
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_ROOT = REPO_ROOT / "examples" / "sample_coins"
SHARED_DATA_ROOT = REPO_ROOT.parent / "shared" / "data"
TINY_MODELS_DIR = REPO_ROOT / "tests" / "assets" / "tiny_models"

# An import (or importorskip) of the training/export stack, at any indentation.
_HEAVY_IMPORT = re.compile(
    r"""^\s*(?:from|import)\s+(?:torch|torchvision|timm|litert_torch|tensorflow|coremltools|onnxscript|"""
    r"""coinvision\.(?:trainer|converters))\b|importorskip\(\s*["'](?:torch|litert_torch|tensorflow|coremltools)""",
    re.MULTILINE,
)
# Module level only: lines without indentation (a lazy import inside one test makes only that test slow).
_HEAVY_TOP_LEVEL_IMPORT = re.compile(
    r"^(?:from|import)\s+(?:torch|torchvision|timm|litert_torch|tensorflow|coremltools|onnxscript|"
    r"coinvision\.(?:trainer|converters))\b",
    re.MULTILINE,
)


@cache
def _source_is_heavy(source: str) -> bool:
    return _HEAVY_IMPORT.search(source) is not None


@cache
def _module_is_heavy(path: Path) -> bool:
    try:
        return _HEAVY_TOP_LEVEL_IMPORT.search(path.read_text(encoding="utf-8")) is not None
    except (OSError, UnicodeDecodeError):
        return False


def _function_is_heavy(func: object) -> bool:
    try:
        return _source_is_heavy(inspect.getsource(func))  # type: ignore[arg-type]
    except (OSError, TypeError):  # builtins, pytest's own fixtures without readable source
        return False


def _is_slow(item: pytest.Item) -> bool:
    if _module_is_heavy(Path(item.path)):
        return True
    function = getattr(item, "function", None)
    if function is not None and _function_is_heavy(function):
        return True
    fixture_info = getattr(item, "_fixtureinfo", None)
    if fixture_info is None:
        return False
    # every fixture the test pulls in, directly or through other fixtures
    return any(
        _function_is_heavy(fixturedef.func)
        for name in fixture_info.names_closure
        for fixturedef in fixture_info.name2fixturedefs.get(name, ())
    )


def _deselects_slow(config: pytest.Config) -> bool:
    """True when the ``-m`` expression rejects a test that carries only the ``slow`` marker."""
    markexpr = config.getoption("markexpr", default="") or ""
    if not markexpr:
        return False
    try:  # pytest's own parser: "not slow", "not slow and not gpu", "(not slow) and ..." all read the same
        from _pytest.mark.expression import Expression

        return not Expression.compile(markexpr).evaluate(lambda name, **_: name == "slow")
    except (ImportError, SyntaxError, ValueError):
        return re.search(r"\bnot\s+slow\b", markexpr) is not None


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    # Only skip the import when every test of the module would be deselected anyway.
    if collection_path.suffix == ".py" and collection_path.name.startswith("test_") and _deselects_slow(config):
        return True if _module_is_heavy(collection_path) else None
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _is_slow(item):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def sample_root() -> Path:
    """The bundled sample: ``examples/sample_coins/{coins211,euro_phone,backgrounds}``."""
    return SAMPLE_ROOT


@pytest.fixture(scope="session")
def shared_data_root() -> Path:
    """``../shared/data`` beside the checkout; tests using it should also carry ``@pytest.mark.shared_data``."""
    if not SHARED_DATA_ROOT.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA_ROOT}")
    return SHARED_DATA_ROOT


@pytest.fixture(scope="session")
def tiny_models_dir() -> Path:
    """The committed tiny random-weight ``segmenter.{onnx,tflite}`` and ``embedder.{onnx,tflite}`` + ``.meta.json``
    sidecars (input 64 px, embedding dim 64) and ``golden.npz``: no torch needed.

    Read-only: copy it if a test needs to modify files. Regenerate with
    ``python -m coinvision.converters.tiny_models --out tests/assets/tiny_models``.
    """
    return TINY_MODELS_DIR
