"""The committed tiny models (tests/assets/tiny_models) load through the SDK's runtimes, without torch, and
reproduce the golden outputs PyTorch computed when they were exported."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from coinvision.sdk.model_meta import ModelMetadata
from coinvision.sdk.recognizer import Recognizer
from coinvision.sdk.runtimes import load_model


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
@pytest.mark.parametrize("name", ["segmenter", "embedder"])
def test_committed_tiny_model_reproduces_its_golden_output(tiny_models_dir: Path, name: str, fmt: str) -> None:
    golden = np.load(tiny_models_dir / "golden.npz")
    model = load_model(tiny_models_dir / f"{name}.{fmt}")
    assert model.meta.runtime_format == fmt
    assert model.meta.input.size_px == golden["square"].shape[0]
    got = np.asarray(model.predict(golden["square"]), np.float32).reshape(golden[name].shape)
    # fp32 exports of the same graph: the runtimes' kernels differ from PyTorch's only in summation order
    np.testing.assert_allclose(got, golden[name], atol=1e-4)


def test_committed_tiny_models_share_fingerprints_across_formats(tiny_models_dir: Path) -> None:
    for name in ("segmenter", "embedder"):
        onnx, tflite = (ModelMetadata.read_sidecar(tiny_models_dir / f"{name}.{fmt}") for fmt in ("onnx", "tflite"))
        assert onnx.fingerprint == tflite.fingerprint
        assert (onnx.input.layout, tflite.input.layout) == ("NCHW", "NHWC")


def test_committed_tiny_models_make_a_recognizer(tiny_models_dir: Path, sample_root: Path) -> None:
    photo = sorted((sample_root / "euro_phone" / "images").rglob("*.jpg"))[0]
    vectors = [Recognizer.from_dir(tiny_models_dir, runtime=rt, num_threads=1).embed(photo).vector
               for rt in ("tflite", "onnx")]
    assert vectors[0].shape == (64,)
    assert float(vectors[0] @ vectors[1]) > 0.9999
