"""`coinvision export` end to end on tiny random-weight trainer checkpoints (one shared export, see conftest)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from coinvision.converters.manifest import MANIFEST_NAME, digest
from coinvision.converters.metadata import read_embedded_metadata, read_onnx_metadata, read_tflite_metadata
from coinvision.converters.tiny_models import TINY_EMBEDDING_DIM, TINY_SIZE_PX
from coinvision.sdk.model_meta import ModelMetadata

from tests.converters.helpers import CALIBRATION_COUNT, CHECK_COUNT

EXPECTED = {
    # file -> (format, quantization, layout)
    "{k}.onnx": ("onnx", "fp32", "NCHW"),
    "{k}.tflite": ("tflite", "fp32", "NHWC"),
    "{k}.fp16.tflite": ("tflite", "fp16", "NHWC"),
    "{k}.int8_dynamic.tflite": ("tflite", "int8_dynamic", "NHWC"),
    "{k}.int8.tflite": ("tflite", "int8_full", "NHWC"),
    "{k}.mlpackage": ("coreml", "fp16", "NHWC"),
    "{k}.w8.mlpackage": ("coreml", "w8", "NHWC"),
}
KINDS = ("segmenter", "embedder")


@pytest.fixture(scope="module")
def manifest(cli_export) -> dict:
    out, code, stdout, stderr = cli_export
    assert code == 0, f"export failed:\n{stdout}\n{stderr}"
    return json.loads((out / MANIFEST_NAME).read_text())


def _entry(manifest: dict, name: str) -> dict:
    return next(e for e in manifest["files"] if e["file"] == name)


def test_every_requested_file_is_written_with_a_sidecar(cli_export, manifest) -> None:
    out = cli_export[0]
    names = sorted(pattern.format(k=kind) for kind in KINDS for pattern in EXPECTED)
    assert sorted(e["file"] for e in manifest["files"]) == names
    for name in names:
        assert (out / name).exists()
        assert (out / f"{name}.meta.json").is_file()
    assert not [p for p in out.iterdir() if p.name.startswith(".export-staging")]


def test_manifest_sizes_and_hashes_match_the_files(cli_export, manifest) -> None:
    out = cli_export[0]
    for entry in manifest["files"]:
        path = out / entry["file"]
        assert (entry["size_bytes"], entry["sha256"]) == digest(path)
        if path.is_file():
            assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert entry["convert_s"] >= 0 and entry["step_s"] >= 0
    quantized = _entry(manifest, "embedder.int8.tflite")["size_bytes"]
    assert quantized < 0.6 * _entry(manifest, "embedder.tflite")["size_bytes"]


def test_manifest_records_sources_calibration_and_check(tiny_checkpoints, manifest) -> None:
    from coinvision.trainer.checkpoint import load_checkpoint

    sources = {s["kind"]: s for s in manifest["sources"]}
    for kind in KINDS:
        assert sources[kind]["fingerprint"] == load_checkpoint(tiny_checkpoints[kind]).fingerprint
        assert sources[kind]["input_size_px"] == TINY_SIZE_PX
    cal = manifest["calibration"]
    assert cal["segmenter"]["used"] == cal["embedder"]["used"] == CALIBRATION_COUNT
    assert cal["meets_release_floor"] is False
    assert "segmenter" in cal["embedder"]["preprocessing"]  # crops made with this run's segmenter masks
    assert manifest["check"]["embedder"]["images"] == CHECK_COUNT
    assert manifest["check"]["embedder"]["labelled"] is True  # euro_phone/<class>/...
    assert manifest["passed"] is True and manifest["failures"] == []
    assert manifest["options"]["quantizations"] == ["fp32", "fp16", "int8_dynamic", "int8_full"]


def test_metadata_is_embedded_in_every_format_and_matches_the_sidecar(cli_export, manifest) -> None:
    out = cli_export[0]
    fingerprints = {s["kind"]: s["fingerprint"] for s in manifest["sources"]}
    for kind in KINDS:
        for pattern, (fmt, quant, layout) in EXPECTED.items():
            path = out / pattern.format(k=kind)
            embedded = read_embedded_metadata(path)
            assert embedded == ModelMetadata.read_sidecar(path)
            assert (embedded.name, embedded.runtime_format, embedded.quantization) == (kind, fmt, quant)
            assert embedded.input.layout == layout
            assert embedded.input.size_px == TINY_SIZE_PX
            assert embedded.fingerprint == fingerprints[kind]
            assert embedded.extra["checkpoint_sha256"] == manifest["sources"][KINDS.index(kind)]["checkpoint_sha256"]
            assert _entry(manifest, path.name)["metadata_roundtrip"] is True
    emb = read_onnx_metadata(out / "embedder.onnx")
    assert (emb.output, emb.embedding_dim, emb.l2_normalized) == ("embedding", TINY_EMBEDDING_DIM, True)
    seg = read_tflite_metadata((out / "segmenter.int8.tflite").read_bytes())
    assert (seg.output, seg.threshold) == ("mask_logits", 0.5)
    assert seg.extra["calibration_images"] == CALIBRATION_COUNT
    assert seg.extra["bias_correction"] is True
    assert read_tflite_metadata(out / "embedder.int8_dynamic.tflite").extra["bias_correction"] is True
    assert "bias_correction" not in read_tflite_metadata(out / "embedder.fp16.tflite").extra


def test_parity_figures_meet_the_fp32_and_fp16_targets(manifest) -> None:
    for kind in KINDS:
        for suffix, floor in ((".onnx", 0.9999), (".tflite", 0.9999), (".fp16.tflite", 0.999)):
            entry = _entry(manifest, kind + suffix)
            figures = entry["parity"]["figures"]
            assert entry["parity"]["passed"] is True
            assert figures["n_images"] == CHECK_COUNT
            if kind == "embedder":
                assert figures["cosine_min"] >= floor
                assert figures["nn_top1_agreement"] == 1.0
                assert figures["recall1_drop_points"] == 0.0
            else:
                assert figures["iou_mean"] >= 0.99
                assert figures["max_abs_logit_diff"] < (1e-3 if suffix != ".fp16.tflite" else 0.5)
        for suffix in (".int8_dynamic.tflite", ".int8.tflite"):
            figures = _entry(manifest, kind + suffix)["parity"]["figures"]
            assert set(figures) >= ({"cosine_mean", "cosine_min"} if kind == "embedder" else {"iou_mean", "iou_min"})


def test_core_ml_parity_is_recorded_as_skipped_off_macos(cli_export, manifest) -> None:
    from coinvision.converters.coreml_export import coreml_can_predict

    for kind in KINDS:
        entry = _entry(manifest, f"{kind}.mlpackage")
        assert entry["validation"]["op_count"] > 0
        if coreml_can_predict():
            assert entry["parity"]["passed"] is True
        else:
            assert entry["parity"] == {"skipped": "skipped: Core ML predictions need macOS", "passed": None}
            assert f"{kind}.mlpackage" in manifest["parity_skipped"]
            assert "parity skipped" in cli_export[2]


def test_exported_files_rerun_through_the_parity_helper(cli_export, tiny_checkpoints, sample_root: Path) -> None:
    """The helper on its own: PyTorch vs each TFLite/ONNX file, real photos, figures returned."""
    from coinvision.converters.parity import ParitySet, check_parity
    from coinvision.converters.photo_inputs import list_photos, model_squares, pick_evenly
    from coinvision.sdk.runtimes import predictor_for
    from coinvision.trainer.torch_runtime import torch_predictor
    from coinvision.trainer.trained_model import load_trained_model

    out = cli_export[0]
    source = load_trained_model(tiny_checkpoints["embedder"])
    root = sample_root / "euro_phone" / "images"  # 8 classes: 2 photos each = catalog + query
    squares = model_squares("embedder", pick_evenly(list_photos(root), 16), root, TINY_SIZE_PX)
    parity_set = ParitySet(squares.squares, squares.labels)
    reference = torch_predictor(source.model, source.meta.input)
    for name, quant, floor in (("embedder.onnx", "fp32", 0.9999), ("embedder.tflite", "fp32", 0.9999),
                               ("embedder.fp16.tflite", "fp16", 0.999)):
        result = check_parity("embedder", quant, reference, predictor_for(out / name), parity_set)
        assert result.passed, result.failures
        assert result.figures["cosine_min"] >= floor
        assert result.figures["n_queries"] == 8
        assert result.figures["nn_top1_agreement"] == 1.0
