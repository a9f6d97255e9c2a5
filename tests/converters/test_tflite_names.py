"""Quantized TFLite exports name their inner tensors by a short digest (litert-torch names each by its whole module
path): smaller, the same arithmetic, the input, output and signature names the runtimes look up kept, and the same
digest for the same name, so an fp32 file and its quantized file still compare tensor by tensor."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")

RELEASE = Path(__file__).resolve().parents[2] / "models" / "release"


def _names(data: bytes) -> tuple[list[str], list[str], dict]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=data)
    io = [d["name"] for d in interpreter.get_input_details() + interpreter.get_output_details()]
    inner = [d["name"] for d in interpreter.get_tensor_details() if d["name"] not in io]
    return io, inner, interpreter.get_signature_list()


def test_stripped_file_computes_the_same_and_keeps_its_io_names(tmp_path: Path, sample_root: Path) -> None:
    from coinvision.converters.tflite_export import compact_name, compact_tensor_names
    from coinvision.sdk.images import load_image
    from coinvision.sdk.preprocess import letterbox
    from coinvision.sdk.runtimes import tflite_predictor

    source = RELEASE / "segmenter.tflite"  # full int8, exported before names were compacted
    stripped = compact_tensor_names(source.read_bytes())
    (tmp_path / "segmenter.tflite").write_bytes(stripped)
    shutil.copyfile(RELEASE / "segmenter.tflite.meta.json", tmp_path / "segmenter.tflite.meta.json")
    assert len(stripped) < 0.97 * source.stat().st_size
    io, inner, signatures = _names(source.read_bytes())
    io_stripped, inner_stripped, signatures_stripped = _names(stripped)
    assert io_stripped == io and signatures_stripped == signatures
    assert any(len(name) > 100 for name in inner)
    assert inner_stripped == [compact_name(name) if name else name for name in inner]
    assert len(set(inner_stripped)) == len(set(inner)) and max(len(n) for n in inner_stripped) == 17
    square = letterbox(load_image(sorted((sample_root / "euro_phone").rglob("*.jpg"))[0]), 128)[0]
    want = tflite_predictor(source, num_threads=1)(square)
    got = tflite_predictor(tmp_path / "segmenter.tflite", num_threads=1)(square)
    np.testing.assert_array_equal(got, want)
