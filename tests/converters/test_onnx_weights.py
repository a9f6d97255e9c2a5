"""ONNX files with float16-stored weights: half the bytes, the same float32 graph (ONNX Runtime output within
float16 rounding of the original), metadata that says so, parity figures on real photos, and typed errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from coinvision.converters.metadata import read_embedded_metadata
from coinvision.converters.onnx_weights import FP16_WEIGHTS, INT8_WEIGHTS, check_stored_weights, store_weights
from coinvision.sdk.errors import ConversionError
from coinvision.sdk.model_meta import ModelMetadata


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("kind", ["segmenter", "embedder"])
def test_weights_are_stored_as_float16_and_the_graph_computes_the_same(tmp_path: Path, tiny_models_dir: Path,
                                                                       kind: str) -> None:
    src = tiny_models_dir / f"{kind}.onnx"
    dst = store_weights(src, tmp_path / f"{kind}.onnx")
    graph = onnx.load(str(dst)).graph
    floats = [t for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    halves = [t for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert halves and not floats
    weight_bytes = sum(len(t.raw_data) for t in onnx.load(str(src)).graph.initializer if t.data_type == 1)
    assert sum(len(t.raw_data) for t in halves) == weight_bytes // 2
    meta = ModelMetadata.read_sidecar(dst)
    assert meta.quantization == FP16_WEIGHTS == read_embedded_metadata(dst).quantization
    assert meta.fingerprint == ModelMetadata.read_sidecar(src).fingerprint
    size = meta.input.size_px
    x = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
    want, got = _run(src, x), _run(dst, x)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.abs(got - want).max() < 2e-2 * max(1.0, np.abs(want).max())
    assert not np.array_equal(got, want)  # the weights really were rounded


def test_parity_on_real_photos_is_written_beside_the_file(tmp_path: Path, tiny_models_dir: Path,
                                                          sample_root: Path) -> None:
    dst = store_weights(tiny_models_dir / "segmenter.onnx", tmp_path / "segmenter.onnx")
    record = check_stored_weights(tiny_models_dir / "segmenter.onnx", dst, sample_root / "euro_phone", count=6)
    assert record["figures"]["n_images"] == 6 and record["figures"]["iou_mean"] > 0.99
    assert record["passed"] and record["quantization"] == FP16_WEIGHTS
    assert json.loads((tmp_path / "segmenter.onnx.parity.json").read_text()) == record


def test_missing_and_already_converted_files_are_conversion_errors(tmp_path: Path, tiny_models_dir: Path) -> None:
    with pytest.raises(ConversionError, match="does not exist"):
        store_weights(tmp_path / "nope.onnx", tmp_path / "out.onnx")
    once = store_weights(tiny_models_dir / "embedder.onnx", tmp_path / "once.onnx")
    with pytest.raises(ConversionError, match="not fp32"):
        store_weights(once, tmp_path / "twice.onnx")
    with pytest.raises(ConversionError, match="--models"):
        check_stored_weights(tmp_path / "once.onnx", once, tmp_path)


def test_int8_weights_take_fewer_bytes_than_float16_and_keep_the_mask(tmp_path: Path, tiny_models_dir: Path,
                                                          sample_root: Path) -> None:
    src = tiny_models_dir / "segmenter.onnx"
    dst = store_weights(src, tmp_path / "segmenter.int8w.onnx", INT8_WEIGHTS)
    graph = onnx.load(str(dst)).graph
    assert [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert not [t for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT and t.dims and
                np.prod(t.dims) >= 1024]  # every big float32 weight went to int8 (its scales are small vectors)
    assert dst.stat().st_size < store_weights(src, tmp_path / "half.onnx").stat().st_size  # (tiny: headers weigh)
    assert ModelMetadata.read_sidecar(dst).quantization == INT8_WEIGHTS == read_embedded_metadata(dst).quantization
    record = check_stored_weights(src, dst, sample_root / "euro_phone", count=6)
    assert record["quantization"] == INT8_WEIGHTS and record["figures"]["n_images"] == 6
    assert record["passed"] and record["figures"]["iou_mean"] > 0.98
    with pytest.raises(ConversionError, match="unknown stored-weights form 'int4'"):
        store_weights(src, tmp_path / "x.onnx", "int4")
