"""quant_diagnose on the shared tiny export: identical files show no error, the int8 file shows where it drifts."""

from __future__ import annotations

import numpy as np
import pytest
from coinvision.sdk.errors import ConversionError

pytest.importorskip("ai_edge_litert")

from coinvision.converters import quant_diagnose


def _inputs(n: int, size: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal((1, size, size, 3)).astype(np.float32) for _ in range(n)]


def test_same_file_has_no_error_and_int8_has_some(cli_export) -> None:
    out, _, _, _ = cli_export
    fp32, int8 = out / "embedder.tflite", out / "embedder.int8.tflite"
    size = int(quant_diagnose.ModelMetadata.read_sidecar(fp32).input.size_px)
    same = quant_diagnose.tensor_errors(fp32, fp32, _inputs(3, size))
    assert len(same) > 10
    assert all(e.cosine_mean == pytest.approx(1.0) and e.snr_db > 60.0 for e in same)  # error 0: only the epsilon
    assert [e.order for e in same] == sorted(e.order for e in same)

    quant = quant_diagnose.tensor_errors(fp32, int8, _inputs(3, size))
    assert quant and min(e.snr_db for e in quant) < 60.0  # rounding shows somewhere
    assert all(-1.0 <= e.cosine_mean <= 1.0 + 1e-6 for e in quant)


def test_unrelated_models_are_refused(cli_export) -> None:
    out, _, _, _ = cli_export
    with pytest.raises(ConversionError, match="shares no tensor names"):
        quant_diagnose.tensor_errors(out / "embedder.tflite", out / "segmenter.int8.tflite", _inputs(1, 64))


def test_cli_prints_jumps_and_plots(cli_export, sample_root, tmp_path, capsys) -> None:
    out, _, _, _ = cli_export
    png = tmp_path / "layers.png"
    rc = quant_diagnose.main([str(out / "embedder.tflite"), str(out / "embedder.int8.tflite"),
                              "--images", str(sample_root / "euro_phone"), "--count", "3", "--plot", str(png)])
    text = capsys.readouterr().out
    assert rc == 0 and png.stat().st_size > 0
    assert "compared on 3 images" in text and "largest SNR drops" in text
    assert quant_diagnose.main([str(out / "embedder.tflite"), str(out / "embedder.int8.tflite"),
                                "--images", str(tmp_path / "nope")]) == 2
