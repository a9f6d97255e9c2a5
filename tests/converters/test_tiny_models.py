"""The tiny models: today's converters export what PyTorch computes, and the committed pair under
tests/assets/tiny_models (which the fast tier uses without torch) is still what this code builds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from coinvision.converters.metadata import read_embedded_metadata
from coinvision.converters.tiny_models import (
    GOLDEN_FILE,
    TINY_EMBEDDING_DIM,
    TINY_SIZE_PX,
    golden_square,
    tiny_embedder,
    tiny_segmenter,
    write_tiny_models,
)
from coinvision.sdk.model_meta import ModelMetadata
from coinvision.sdk.runtimes import predictor_for
from coinvision.trainer.torch_runtime import torch_predictor

REGENERATE = "python -m coinvision.converters.tiny_models --out tests/assets/tiny_models"


@pytest.fixture(scope="module")
def fresh_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both tiny models exported now, through the real converters (~30 s)."""
    pytest.importorskip("litert_torch")
    return write_tiny_models(tmp_path_factory.mktemp("tiny_models"))


def test_fresh_export_has_every_file_with_matching_metadata(fresh_export: Path) -> None:
    for name in ("segmenter", "embedder"):
        for fmt, layout in (("onnx", "NCHW"), ("tflite", "NHWC")):
            path = fresh_export / f"{name}.{fmt}"
            sidecar = ModelMetadata.read_sidecar(path)
            assert read_embedded_metadata(path) == sidecar
            assert sidecar.name == name
            assert sidecar.runtime_format == fmt
            assert sidecar.input.layout == layout
            assert sidecar.input.size_px == TINY_SIZE_PX
    assert ModelMetadata.read_sidecar(fresh_export / "embedder.tflite").embedding_dim == TINY_EMBEDDING_DIM


def test_fresh_export_computes_what_torch_computes(fresh_export: Path) -> None:
    square = golden_square()
    for model, meta in (tiny_segmenter(), tiny_embedder()):
        expected = torch_predictor(model, meta.input)(square)
        for fmt in ("onnx", "tflite"):
            got = predictor_for(fresh_export / f"{meta.name}.{fmt}")(square)
            assert got.shape == expected.shape
            np.testing.assert_allclose(got, expected, atol=1e-4)
    emb = predictor_for(fresh_export / "embedder.tflite")(square)
    assert emb.shape == (TINY_EMBEDDING_DIM,)
    assert abs(float(np.linalg.norm(emb)) - 1.0) < 1e-4


def test_committed_tiny_models_are_what_this_code_builds(tiny_models_dir: Path) -> None:
    """Fails when tiny_models.py (or torch's initialisation) changed the models: regenerate the committed pair."""
    golden = np.load(tiny_models_dir / GOLDEN_FILE)
    np.testing.assert_array_equal(golden["square"], golden_square(), err_msg=f"golden input drifted; run {REGENERATE}")
    for model, meta in (tiny_segmenter(), tiny_embedder()):
        for fmt in ("onnx", "tflite"):
            committed = ModelMetadata.read_sidecar(tiny_models_dir / f"{meta.name}.{fmt}")
            assert committed.fingerprint == meta.fingerprint, f"{meta.name}.{fmt} is stale; run {REGENERATE}"
            assert read_embedded_metadata(tiny_models_dir / f"{meta.name}.{fmt}") == committed
        expected = torch_predictor(model, meta.input)(golden["square"]).reshape(golden[meta.name].shape)
        np.testing.assert_allclose(golden[meta.name], expected, atol=1e-5, err_msg=f"run {REGENERATE}")
