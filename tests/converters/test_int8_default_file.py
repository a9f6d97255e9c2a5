"""A release may ship full int8 under the default name ``segmenter.tflite``: the trainer's ``segment`` runner must
(de)quantize like the SDK does (it once cast float inputs straight to int8 and found no coin anywhere)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")
pytest.importorskip("torch")


def test_segment_runner_on_an_int8_default_file_matches_the_sdk_runtime(cli_export, sample_root: Path,
                                                                         tmp_path: Path) -> None:
    from coinvision.sdk.images import load_image
    from coinvision.sdk.preprocess import letterbox
    from coinvision.sdk.runtimes import tflite_predictor
    from coinvision.trainer.segmenter import load_runner

    out, _, _, _ = cli_export
    release = tmp_path / "release"
    release.mkdir()
    shutil.copyfile(out / "segmenter.int8.tflite", release / "segmenter.tflite")
    shutil.copyfile(out / "segmenter.int8.tflite.meta.json", release / "segmenter.tflite.meta.json")

    runner = load_runner(release, runtime="tflite")
    sdk = tflite_predictor(release / "segmenter.tflite")
    photo = sorted((sample_root / "euro_phone").rglob("*.jpg"))[0]
    square = letterbox(load_image(photo), runner.size_px)[0]
    expected = 1.0 / (1.0 + np.exp(-np.asarray(sdk(square), np.float32).reshape(runner.size_px, runner.size_px)))
    np.testing.assert_allclose(runner.predict(square), expected, atol=1e-6)
