"""Core ML: what Linux can check (spec, IO names/shapes, op count, compression ops, metadata); predictions where
Core ML runs (macOS)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from coinvision.converters.coreml_export import (
    convert_coreml_fp16,
    coreml_can_predict,
    export_coreml,
    validate_coreml,
)
from coinvision.converters.metadata import read_embedded_metadata
from coinvision.converters.tiny_models import TINY_EMBEDDING_DIM, TINY_SIZE_PX, tiny_embedder
from coinvision.sdk.errors import ConversionError
from coinvision.sdk.model_meta import ModelMetadata

# Not importorskip: importing coremltools (it pulls in TensorFlow) before torch._dynamo segfaults in triton;
# the converters import it through coreml_export.import_coremltools, which orders the two.
pytestmark = pytest.mark.skipif(importlib.util.find_spec("coremltools") is None, reason="coremltools not installed")


@pytest.fixture(scope="module")
def palettized(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The small conv embedder of tiny_models in fp16, palette6 and palette8 (k-means is slow on bigger nets)."""
    model, meta = tiny_embedder()
    out = tmp_path_factory.mktemp("coreml")
    base = convert_coreml_fp16(model, meta)
    return {v: export_coreml(model, meta, out / f"embedder.{v}.mlpackage", variant=v, base=base)
            for v in ("fp16", "palette6", "palette8")}


def test_cli_core_ml_files_have_the_expected_spec(cli_export) -> None:
    out = cli_export[0]
    for kind, output, shape in (("segmenter", "mask_logits", [1, 1, TINY_SIZE_PX, TINY_SIZE_PX]),
                                ("embedder", "embedding", [1, TINY_EMBEDDING_DIM])):
        fp16 = validate_coreml(out / f"{kind}.mlpackage", expected=ModelMetadata.read_sidecar(out / f"{kind}.onnx"))
        w8 = validate_coreml(out / f"{kind}.w8.mlpackage")
        assert fp16["inputs"] == {"input": [1, TINY_SIZE_PX, TINY_SIZE_PX, 3]}  # NHWC, like TFLite
        assert fp16["outputs"] == {output: shape}
        assert fp16["op_count"] > 20
        assert fp16["metadata"]["input"]["layout"] == "NHWC"
        assert fp16["metadata"]["quantization"] == "fp16" and w8["metadata"]["quantization"] == "w8"
        assert w8["op_types"].get("constexpr_affine_dequantize", 0) > 0  # 8-bit weights, dequantized at load
        assert "constexpr_affine_dequantize" not in fp16["op_types"]
        assert w8["size_bytes"] < 0.75 * fp16["size_bytes"]
        assert fp16["metadata"]["extra"]["minimum_deployment_target"] == "iOS16"


def test_core_ml_descriptions_state_layout_and_output(cli_export) -> None:
    from coinvision.converters.coreml_export import import_coremltools

    ct = import_coremltools()
    spec = ct.models.MLModel(str(cli_export[0] / "embedder.mlpackage"), skip_model_load=True).get_spec()
    assert "NHWC" in spec.description.input[0].shortDescription
    assert "L2-normalised" in spec.description.output[0].shortDescription
    assert spec.description.metadata.author == "coinvision"


def test_palettized_variants_use_lookup_tables_and_shrink(palettized: dict[str, Path]) -> None:
    reports = {v: validate_coreml(p) for v, p in palettized.items()}
    for variant in ("palette6", "palette8"):
        assert reports[variant]["op_types"].get("constexpr_lut_to_dense", 0) > 0
        assert reports[variant]["size_bytes"] < reports["fp16"]["size_bytes"]
        assert read_embedded_metadata(palettized[variant]) == ModelMetadata.read_sidecar(palettized[variant])
    assert reports["palette6"]["size_bytes"] <= reports["palette8"]["size_bytes"]


def test_validate_refuses_a_mismatched_spec(palettized: dict[str, Path], cli_export) -> None:
    other = ModelMetadata.read_sidecar(cli_export[0] / "segmenter.onnx")
    with pytest.raises(ConversionError, match="output 'mask_logits' missing"):
        validate_coreml(palettized["fp16"], expected=other)
    with pytest.raises(ConversionError, match="does not exist"):
        validate_coreml(palettized["fp16"].with_name("none.mlpackage"))


@pytest.mark.skipif(not coreml_can_predict(), reason="Core ML predictions need macOS (the Core ML framework)")
def test_core_ml_predictions_match_pytorch(cli_export, tiny_checkpoints, sample_root: Path) -> None:
    from coinvision.converters.parity import ParitySet, check_parity
    from coinvision.converters.photo_inputs import list_photos, model_squares, pick_evenly
    from coinvision.sdk.runtimes import predictor_for
    from coinvision.trainer.torch_runtime import torch_predictor
    from coinvision.trainer.trained_model import load_trained_model

    root = sample_root / "euro_phone"
    for kind in ("segmenter", "embedder"):
        source = load_trained_model(tiny_checkpoints[kind])
        squares = model_squares(kind, pick_evenly(list_photos(root), 12), root, TINY_SIZE_PX)
        result = check_parity(kind, "fp16", torch_predictor(source.model, source.meta.input),
                              predictor_for(cli_export[0] / f"{kind}.mlpackage"), ParitySet(squares.squares))
        assert result.passed, result.figures
