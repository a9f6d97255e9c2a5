"""A release may ship full int8 under the default name ``segmenter.tflite``: the SDK's ``Segmenter`` must
(de)quantize its tensors (it once cast float inputs straight to int8 and found no coin anywhere)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")
pytest.importorskip("torch")


def test_segmenter_on_an_int8_default_file_dequantizes_and_finds_the_coin(cli_export, sample_root: Path,
                                                                          tmp_path: Path) -> None:
    from coinvision.sdk.images import load_image
    from coinvision.sdk.preprocess import letterbox
    from coinvision.sdk.runtimes import tflite_predictor
    from coinvision.sdk.segmenter import Segmenter

    out, _, _, _ = cli_export
    release = tmp_path / "release"
    release.mkdir()
    shutil.copyfile(out / "segmenter.int8.tflite", release / "segmenter.tflite")
    shutil.copyfile(out / "segmenter.int8.tflite.meta.json", release / "segmenter.tflite.meta.json")

    segmenter = Segmenter.from_dir(release, runtime="tflite", num_threads=1)
    sdk = tflite_predictor(release / "segmenter.tflite")
    photo = load_image(sorted((sample_root / "euro_phone").rglob("*.jpg"))[0])
    size = segmenter.params.size_px
    square = letterbox(photo, size)[0]
    expected = 1.0 / (1.0 + np.exp(-np.asarray(sdk(square), np.float32).reshape(size, size)))
    np.testing.assert_allclose(segmenter.probability(square), expected, atol=1e-6)
    assert segmenter.segment(photo).found  # a float input cast straight to int8 found no coin anywhere
