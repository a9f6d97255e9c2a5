"""Converter fixtures: tiny random-weight TRAINER checkpoints and one shared CLI export of them (module-scoped
exports are expensive: TFLite and Core ML conversion take seconds per file)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.converters.helpers import CALIBRATION_COUNT, CHECK_COUNT, TINY_INT8_TARGETS, Capture


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``{"segmenter": .pt, "embedder": .pt}``: smp U-Net / timm + FC on ``mobilenetv2_035``, 64 px."""
    pytest.importorskip("torch")
    from coinvision.converters.tiny_models import write_tiny_checkpoints

    return write_tiny_checkpoints(tmp_path_factory.mktemp("tiny_checkpoints"))


@pytest.fixture(scope="session")
def cli_export(tiny_checkpoints: dict[str, Path], sample_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """``(out_dir, exit_code, stdout, stderr)`` of one ``coinvision export --check`` over both checkpoints:
    ONNX, TFLite in all four quantizations, Core ML fp16 + w8."""
    for package in ("litert_torch", "coremltools"):  # find_spec: importing coremltools here would be too early
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} is not installed")
    from coinvision.cli.main import main

    out = tmp_path_factory.mktemp("export") / "models"
    argv = [
        "export", str(tiny_checkpoints["segmenter"]), str(tiny_checkpoints["embedder"]), "--out", str(out),
        "--formats", "onnx,tflite,coreml", "--quant", "fp32,fp16,int8_dynamic,int8_full",
        "--coreml-variants", "fp16,w8",
        "--calibration", str(sample_root / "coins211"), "--calibration-count", str(CALIBRATION_COUNT),
        "--check", "--check-images", str(sample_root / "euro_phone"), "--check-count", str(CHECK_COUNT),
    ]
    for target in TINY_INT8_TARGETS:
        argv += ["--target", target]
    capture = Capture()
    with capture:
        code = main(argv)
    return out, code, capture.out, capture.err
