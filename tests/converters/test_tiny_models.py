from __future__ import annotations

import numpy as np
from coinvision.converters.metadata import read_embedded_metadata
from coinvision.converters.runners import predictor_for, torch_predictor
from coinvision.converters.tiny_models import TINY_EMBEDDING_DIM, TINY_SIZE_PX, tiny_embedder, tiny_segmenter
from coinvision.sdk.images import load_image
from coinvision.sdk.model_meta import ModelMetadata
from coinvision.sdk.preprocess import letterbox


def _sample_square(sample_root, size_px: int) -> np.ndarray:
    path = sorted((sample_root / "euro_phone" / "images").rglob("*.jpg"))[0]
    return letterbox(load_image(path), size_px)[0]


def test_tiny_models_dir_has_every_file_with_matching_metadata(tiny_models_dir):
    for name in ("segmenter", "embedder"):
        for fmt, layout in (("onnx", "NCHW"), ("tflite", "NHWC")):
            path = tiny_models_dir / f"{name}.{fmt}"
            sidecar = ModelMetadata.read_sidecar(path)
            assert read_embedded_metadata(path) == sidecar
            assert sidecar.name == name
            assert sidecar.runtime_format == fmt
            assert sidecar.input.layout == layout
            assert sidecar.input.size_px == TINY_SIZE_PX
    assert ModelMetadata.read_sidecar(tiny_models_dir / "embedder.tflite").embedding_dim == TINY_EMBEDDING_DIM


def test_tiny_models_dir_exports_compute_what_torch_computes(tiny_models_dir, sample_root):
    square = _sample_square(sample_root, TINY_SIZE_PX)
    for model, meta in (tiny_segmenter(), tiny_embedder()):
        expected = torch_predictor(model, meta.input)(square)
        for fmt in ("onnx", "tflite"):
            got = predictor_for(tiny_models_dir / f"{meta.name}.{fmt}")(square)
            assert got.shape == expected.shape
            np.testing.assert_allclose(got, expected, atol=1e-4)
    emb = predictor_for(tiny_models_dir / "embedder.tflite")(square)
    assert emb.shape == (TINY_EMBEDDING_DIM,)
    assert abs(float(np.linalg.norm(emb)) - 1.0) < 1e-4
