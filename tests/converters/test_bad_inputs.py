"""Bad requests fail with a clear error BEFORE any conversion work, and the CLI exits 2 (1 for a missed target)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from coinvision.cli.main import main
from coinvision.converters.export_run import ExportOptions, run_export
from coinvision.sdk.errors import ConversionError, ModelLoadError
from coinvision.trainer.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from coinvision.trainer.trained_model import load_trained_model


def _export(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["export", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--quant", "fp32,int4", "unknown quantization 'int4'; valid: fp32, fp16, int8_dynamic, int8_full, int16x8"),
        ("--formats", "onnx,tfjs", "unknown format 'tfjs'; valid: onnx, tflite, coreml"),
        ("--coreml-variants", "fp16,palette4",
         "unknown Core ML variant 'palette4'; valid: fp16, w8, palette6, palette8"),
    ],
)
def test_unknown_names_list_the_valid_ones(tiny_checkpoints, tmp_path: Path, capsys, flag, value, message) -> None:
    out = tmp_path / "out"
    code, text = _export(capsys, tiny_checkpoints["segmenter"], "--out", out, flag, value)
    assert code == 2
    assert message in text
    assert not out.exists()


def test_missing_calibration_folder_fails_before_any_conversion(tiny_checkpoints, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    code, text = _export(capsys, tiny_checkpoints["segmenter"], "--out", out, "--calibration", tmp_path / "nope")
    assert code == 2
    assert f"calibration folder {tmp_path / 'nope'} does not exist" in text
    assert not out.exists()
    code, text = _export(capsys, tiny_checkpoints["segmenter"], "--out", out)  # int8_full is in the default --quant
    assert code == 2
    assert "int8_full needs real calibration photos: pass --calibration DIR" in text
    assert not out.exists()


def test_too_small_calibration_folder_names_the_count(tiny_checkpoints, tmp_path: Path, sample_root: Path) -> None:
    folder = sample_root / "backgrounds"
    found = len(list(folder.rglob("*.jpg")))
    options = ExportOptions((tiny_checkpoints["segmenter"],), tmp_path / "out", formats=("tflite",),
                            quantizations=("int8_full",), calibration_dir=folder)
    with pytest.raises(ConversionError, match=rf"has {found} photo\(s\), fewer than the 200 asked for"):
        run_export(options)
    assert not (tmp_path / "out").exists()


def test_check_needs_photos(tiny_checkpoints, tmp_path: Path, capsys) -> None:
    code, text = _export(capsys, tiny_checkpoints["segmenter"], "--out", tmp_path / "o", "--formats", "onnx",
                         "--check")
    assert code == 2 and "--check needs --check-images DIR" in text
    code, text = _export(capsys, tiny_checkpoints["segmenter"], "--out", tmp_path / "o", "--formats", "onnx",
                         "--check", "--check-images", tmp_path)
    assert code == 2 and "has no photos" in text


def _rewrite(src: Path, dst: Path, **changes) -> Path:
    ckpt = load_checkpoint(src)
    for key, value in changes.items():
        setattr(ckpt, key, value)
    return save_checkpoint(dst, ckpt)


def test_checkpoint_whose_config_does_not_match_the_weights(tiny_checkpoints, tmp_path: Path, capsys) -> None:
    ckpt = load_checkpoint(tiny_checkpoints["segmenter"])
    other_encoder = _rewrite(tiny_checkpoints["segmenter"], tmp_path / "a.pt",
                             config={**ckpt.config, "encoder": "tu-mobilenetv2_050"})
    with pytest.raises(ModelLoadError, match="weights do not fit the configured U-Net"):
        load_trained_model(other_encoder)
    unknown_key = _rewrite(tiny_checkpoints["segmenter"], tmp_path / "b.pt", config={**ckpt.config, "depth": 7})
    with pytest.raises(ModelLoadError, match="stored segmenter config does not match this code's architecture"):
        load_trained_model(unknown_key)
    code, text = _export(capsys, other_encoder, "--out", tmp_path / "o", "--formats", "onnx")
    assert code == 2 and "a.pt: weights do not fit" in text
    assert not (tmp_path / "o").exists()


def test_unknown_kind_and_duplicate_kinds(tiny_checkpoints, tmp_path: Path) -> None:
    odd = save_checkpoint(tmp_path / "odd.pt", Checkpoint("classifier", {}, {"w": torch.zeros(2)}))
    with pytest.raises(ModelLoadError, match="kind 'classifier' cannot be exported; valid kinds: segmenter, embedder"):
        load_trained_model(odd)
    seg = tiny_checkpoints["segmenter"]
    with pytest.raises(ModelLoadError, match="two segmenter checkpoints"):
        run_export(ExportOptions((seg, seg), tmp_path / "out", formats=("onnx",)))


def test_missed_target_exits_1_and_lists_it(tiny_checkpoints, tmp_path: Path, sample_root: Path, capsys) -> None:
    """An impossible target injected through --target (the targets table itself is untouched)."""
    out = tmp_path / "out"
    code, text = _export(capsys, tiny_checkpoints["segmenter"], "--out", out, "--formats", "onnx", "--check",
                         "--check-images", sample_root / "euro_phone", "--check-count", 4,
                         "--target", "segmenter.fp32.iou_min=1.5")
    assert code == 1
    assert "FAILED: 1 target(s) missed" in text
    assert "segmenter.onnx: iou_min 1.00000 < 1.5" in text
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["passed"] is False
    assert manifest["failures"] == ["segmenter.onnx: iou_min 1.00000 < 1.5"]
    entry = manifest["files"][0]
    assert entry["parity"]["passed"] is False and entry["parity"]["target"]["iou_min"] == 1.5
    assert (out / "segmenter.onnx").is_file()  # kept for inspection; the manifest says it failed


@pytest.mark.parametrize("spec", ["segmenter.fp32.iou_mean", "segmenter.fp8.iou_mean=1", "embedder.int8.cos=1",
                                  "embedder.int8.cosine_min=high"])
def test_bad_target_overrides_are_refused(tiny_checkpoints, tmp_path: Path, capsys, spec: str) -> None:
    code, text = _export(capsys, tiny_checkpoints["segmenter"], "--out", tmp_path / "o", "--formats", "onnx",
                         "--target", spec)
    assert code == 2 and f"target {spec!r}" in text
