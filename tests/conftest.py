"""Session fixtures shared by every test area (area-specific fixtures live in tests/<area>/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_ROOT = REPO_ROOT / "examples" / "sample_coins"
SHARED_DATA_ROOT = REPO_ROOT.parent / "shared" / "data"


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
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny random-weight ``segmenter.{onnx,tflite}`` and ``embedder.{onnx,tflite}`` + ``.meta.json`` sidecars.

    Input 64 px, embedding dim 64, exported through the real converters once per session (~30 s).
    Read-only by convention: copy it if a test needs to modify files.
    """
    pytest.importorskip("torch")
    pytest.importorskip("litert_torch")
    from coinvision.converters.tiny_models import write_tiny_models

    return write_tiny_models(tmp_path_factory.mktemp("tiny_models"))
