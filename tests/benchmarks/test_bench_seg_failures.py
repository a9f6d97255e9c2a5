"""The segmentation failure breakdown: each kind is what its pixels say, the outline bias is in pixels, the kinds'
shares add up to the IoU lost, and the command runs end to end on the bundled photos through the release segmenter."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from benchmarks.bench_seg_failures import KINDS, main, outline_bias_px, score_image, summarise

SIZE = 200


def _disc(cx: int, cy: int, radius: int) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), np.uint8)
    cv2.circle(mask, (cx, cy), radius, 1, -1)
    return mask.astype(bool)


@pytest.mark.parametrize("radius, expected_px", [(60, 0.0), (58, -2.0), (63, 3.0)])
def test_outline_bias_is_how_far_the_mask_outline_lies_outside_the_label_in_pixels(radius: int,
                                                                                     expected_px: float) -> None:
    assert outline_bias_px(_disc(100, 100, radius), _disc(100, 100, 60)) == pytest.approx(expected_px, abs=0.3)


def test_each_kind_is_named_by_the_pixels_that_went_wrong() -> None:
    main_coin, other = _disc(70, 100, 50), _disc(160, 100, 35)
    all_coins = main_coin | other
    assert score_image("s", 0, _disc(70, 100, 49), main_coin, all_coins, 2).kind == "ok"
    assert score_image("s", 0, None, main_coin, all_coins, 1).kind == "no coin"
    assert score_image("s", 0, other, main_coin, all_coins, 2).kind == "other coin"
    half = main_coin.copy()
    half[:, 70:] = False
    assert score_image("s", 0, half, main_coin, all_coins, 2).kind == "part missed"
    assert score_image("s", 0, main_coin | other, main_coin, all_coins, 2).kind == "other coins' pixels"
    assert score_image("s", 0, _disc(70, 100, 66), main_coin, all_coins, 2).kind == "background"
    assert score_image("s", 0, None, np.zeros_like(main_coin), all_coins, 1).iou == 1.0  # no coin, none found


def test_kind_shares_add_up_to_the_mean_iou_lost_and_bias_is_only_for_ok_images() -> None:
    main_coin, other = _disc(70, 100, 50), _disc(160, 100, 35)
    rows = [score_image("s", i, mask, main_coin, main_coin | other, 2)
            for i, mask in enumerate([_disc(70, 100, 48), None, other, main_coin | other, main_coin])]
    summary = summarise(rows)
    assert sum(k["images"] for k in summary["kinds"].values()) == 5
    assert sum(k["deficit_share"] for k in summary["kinds"].values()) == pytest.approx(1.0 - summary["mean_iou"])
    assert [r.bias_px is None for r in rows] == [False, True, True, True, False]
    assert summary["ok_bias_px"]["mean"] == pytest.approx((-2.0 + 0.0) / 2, abs=0.2)


def test_main_writes_every_image_and_a_contact_sheet(mini_sample_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "seg_failures.json"
    assert main(["--sample-data", "--sample-root", str(mini_sample_root), "--scenes", "3", "--real", "3",
                 "--synth-size-px", "256", "--worst", "2", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    sets = data["results"]["sets"]
    assert set(sets) == {"synthetic 256 px", "2-5 coins 256 px", "real photos"}  # no hand-checked photo in the sample
    for summary in sets.values():
        assert len(summary["rows"]) == summary["images"] == 3
        assert set(summary["kinds"]) == set(KINDS)
        assert summary["mean_iou"] == pytest.approx(np.mean([r["iou"] for r in summary["rows"]]))
    assert data["results"]["fingerprint"] == json.loads(
        (Path(__file__).parents[2] / "models" / "release" / "segmenter.tflite.meta.json").read_text())["fingerprint"]
    sheet = cv2.imread(str(out.with_suffix(".jpg")))
    assert sheet is not None and sheet.shape[0] == 2 * len(sets) * 160  # two rows a set
