"""Restating a pipeline parameter of an exported file (release time): file and sidecar agree, weights untouched."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
from coinvision.converters.metadata import read_embedded_metadata, rewrite_metadata
from coinvision.sdk.errors import ConversionError
from coinvision.sdk.model_meta import ModelMetadata, sidecar_path
from coinvision.sdk.runtimes import load_model


@pytest.mark.parametrize("name", ["embedder.onnx", "embedder.tflite"])
def test_rewrite_metadata_changes_file_and_sidecar_not_outputs(tiny_models_dir: Path, tmp_path: Path,
                                                               name: str) -> None:
    path = tmp_path / name
    shutil.copyfile(tiny_models_dir / name, path)
    shutil.copyfile(sidecar_path(tiny_models_dir / name), sidecar_path(path))
    before = load_model(path, 1)
    square = np.random.default_rng(0).integers(0, 256, (before.meta.input.size_px,) * 2 + (3,), dtype=np.uint8)
    meta = dataclasses.replace(before.meta, extra={**before.meta.extra, "embed_rotations": 4})
    rewrite_metadata(path, meta)
    after = load_model(path, 1)
    assert read_embedded_metadata(path) == ModelMetadata.read_sidecar(path) == meta
    np.testing.assert_array_equal(before.predict(square), after.predict(square))
    with pytest.raises(ConversionError, match="cannot rewrite"):
        rewrite_metadata(tmp_path / "model.pt", meta)
