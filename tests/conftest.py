"""Session fixtures shared by every test area (area-specific fixtures live in tests/<area>/conftest.py), and the
rule that sorts tests into the fast tier (``make test-fast``: ``-m "not slow and not gpu"``, under a minute) and
the ``slow`` one. A test is ``slow`` when

- it needs the training/export stack: its module, its own body or one of its fixtures imports torch, the trainer,
  the converters or a converter toolkit (litert_torch, tensorflow, coremltools), directly or through
  ``pytest.importorskip``;
- it starts other processes (its body or a fixture calls ``subprocess`` / ``sys.executable``: CLI runs, gunicorn,
  nginx), starts a live sync server (a fixture built on ``make_server``: a loopback HTTP server with its own
  database and models, 0.3-1.5 s per test, most of the suite's time), drives a browser (``@pytest.mark.browser``)
  or runs a benchmark (``tests/benchmarks/``);
- it is in :data:`MEASURED_SLOW` (seconds measured on the 2-core dev machine), or carries ``@pytest.mark.slow``.

The rules read source text, so a new test lands in the right tier by itself. When ``slow`` tests are deselected,
modules that are slow as a whole are not even imported (importing torch/tensorflow costs more than running every
fast test).
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


# Starting another process: a CLI run, a server, a script to kill mid-write.
_SPAWNS = re.compile(r"\bsubprocess\.|\bsys\.executable\b|\bPopen\(")
_SLOW_FOLDERS = ("benchmarks",)  # under tests/
_SLOW_MARKERS = ("browser",)
_SLOW_FIXTURES = frozenset({"make_server"})  # tests/sync_server/conftest.py: a live server per test
# Tests whose cost the rules above cannot see (helpers that start processes, whole demo loops): node id -> seconds
# measured with `pytest --durations` on the 2-core dev machine under load (≥ 2 s there).
MEASURED_SLOW: dict[str, float] = {
    "tests/project/test_demo.py::test_demo_runs_the_whole_loop_offline_after_sync": 16.1,
    "tests/sync_server/test_bench_server.py::test_bench_server_main_loads_a_real_server": 6.2,
    "tests/sdk/test_pack_fuzz.py::test_random_packs_round_trip_and_deltas_reproduce_them": 2.9,
    "tests/sdk/test_pack_fuzz.py::test_mutated_packs_give_pack_error_or_a_canonical_pack": 2.6,
    "tests/sdk/test_pack_fuzz.py::test_mutated_deltas_give_pack_error_or_the_new_pack": 2.4,
    "tests/sdk/test_images_bad_inputs.py::test_large_jpeg_is_downscaled_with_bounded_memory": 2.5,
}


@cache
def _source_is_heavy(source: str) -> bool:
    return _HEAVY_IMPORT.search(source) is not None or _SPAWNS.search(source) is not None


@cache
def _module_is_heavy(path: Path) -> bool:
    """Every test of this module is slow: it sits in a slow folder or imports the training stack at the top."""
    try:
        relative = path.resolve().relative_to(REPO_ROOT / "tests")
    except ValueError:
        return False
    if relative.parts and relative.parts[0] in _SLOW_FOLDERS:
        return True
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
    if _module_is_heavy(Path(item.path)) or any(item.get_closest_marker(m) for m in _SLOW_MARKERS):
        return True
    if item.nodeid.split("[")[0] in MEASURED_SLOW:
        return True
    function = getattr(item, "function", None)
    if function is not None and _function_is_heavy(function):
        return True
    fixture_info = getattr(item, "_fixtureinfo", None)
    if fixture_info is None:
        return False
    if _SLOW_FIXTURES.intersection(fixture_info.names_closure):
        return True
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
