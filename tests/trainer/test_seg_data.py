from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest
from coinvision.sdk.errors import DatasetError
from coinvision.sdk.images import load_image
from coinvision.trainer.seg_config import SynthConfig
from coinvision.trainer.seg_labels import auto_label, contact_sheet, label_datasets, load_mask, read_label_manifest
from coinvision.trainer.seg_scenes import (
    SceneSynthesizer,
    coin_square,
    crop_background,
    jitter_background,
    jitter_coin,
    merge_with_mask,
    noise_and_shadows,
    occlude_with_finger,
    pad_coin,
    procedural_texture,
    punch_hole,
    pyramid_blend,
    random_letterbox,
)


def _drawn_coin(size: int = 160, radius: int = 55, center: tuple[int, int] = (80, 84)) -> tuple[np.ndarray, np.ndarray]:
    """A textured bronze disc on a plain light background, with its true mask."""
    rng = np.random.default_rng(0)
    image = np.full((size, size, 3), 215, np.uint8)
    image = np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)
    truth = np.zeros((size, size), np.uint8)
    cv2.circle(truth, center, radius, 1, thickness=cv2.FILLED)
    coin = np.clip(np.array([160, 110, 60]) + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
    image[truth > 0] = coin[truth > 0]
    cv2.circle(image, center, radius - 8, (120, 80, 40), 2)  # rim detail, as on a real coin
    return image, truth.astype(bool)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


@pytest.fixture(scope="module")
def coin_pairs(sample_root):
    paths = sorted((sample_root / "euro_phone" / "images").rglob("*.jpg"))[:6]
    pairs = []
    for path in paths:
        image = load_image(path)
        result = auto_label(image)
        if result.mask is not None:
            pairs.append((image, result.mask))
    assert len(pairs) >= 3
    return pairs


@pytest.fixture(scope="module")
def backgrounds(sample_root):
    return [load_image(p) for p in sorted((sample_root / "backgrounds" / "images").glob("*.jpg"))]


def test_auto_label_finds_drawn_circle_by_hough():
    image, truth = _drawn_coin()
    result = auto_label(image)
    assert result.method == "hough"
    assert _iou(result.mask, truth) > 0.93
    cx, cy, r = result.circle
    assert abs(cx - 80) < 4 and abs(cy - 84) < 4 and abs(r - 55) < 5


def test_auto_label_rejects_photo_without_coin():
    rng = np.random.default_rng(1)
    image = np.clip(128 + rng.normal(0, 3, (120, 160, 3)), 0, 255).astype(np.uint8)
    result = auto_label(image)
    assert result.mask is None
    assert result.method == "rejected"
    assert result.reason


def test_auto_label_falls_back_to_contour_for_a_non_circular_blob():
    # a rounded square: round enough for the contour rule, but Hough has no circle with edge support
    image = np.full((160, 160, 3), 230, np.uint8)
    cv2.rectangle(image, (35, 35), (125, 125), (90, 60, 30), thickness=cv2.FILLED)
    result = auto_label(image, min_circularity=0.7)
    assert result.method in ("contour", "hough")
    if result.method == "contour":
        assert result.mask[80, 80] and not result.mask[5, 5]


def test_label_datasets_writes_masks_manifest_and_contact_sheet(sample_root, tmp_path):
    labelled, rejected = label_datasets([sample_root / "euro_phone"], tmp_path / "labels", progress=False)
    assert len(labelled) + len(rejected) == 40
    assert len(labelled) >= 30
    rows = list(csv.DictReader((tmp_path / "labels" / "manifest.csv").open()))
    assert len(rows) == len(labelled)
    first = labelled[0]
    mask = load_mask(first.mask_path)
    image = load_image(first.image_path)
    assert mask.shape == image.shape[:2]
    assert 0.1 < mask.mean() < 0.98
    assert set(np.unique(cv2.imread(str(first.mask_path), cv2.IMREAD_GRAYSCALE))) <= {0, 255}
    again = read_label_manifest(tmp_path / "labels", {"euro_phone": sample_root / "euro_phone"})
    assert [a.mask_path for a in again] == [b.mask_path for b in labelled]
    sheet = contact_sheet(labelled[:12], tmp_path / "sheet.png", tile_px=64, cols=5)
    assert cv2.imread(str(sheet)).shape == (3 * 64, 5 * 64, 3)


def test_read_label_manifest_missing_folder_is_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match=r"manifest\.csv"):
        read_label_manifest(tmp_path, {})


def test_pad_coin_coverage_within_1_to_36(coin_pairs):
    coin, mask = coin_square(*coin_pairs[0])
    ratios = []
    for seed in range(40):
        canvas, canvas_mask, ratio = pad_coin(coin, mask, 96, np.random.default_rng(seed))
        assert canvas.shape == (96, 96, 3) and canvas_mask.shape == (96, 96) and canvas_mask.dtype == bool
        assert 1.0 <= ratio <= 36.0 * 1.1  # rounding the side to whole pixels
        ys, xs = np.nonzero(canvas_mask)
        side = max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
        assert 96 * 96 / side**2 <= 36.0 * 1.25
        assert not canvas[~canvas_mask].any()  # only the coin is drawn
        ratios.append(ratio)
    assert min(ratios) < 3 and max(ratios) > 15  # the range is actually used


def test_procedural_texture_kinds_cover_shape_and_dtype():
    textures = [procedural_texture(48, np.random.default_rng(s)) for s in range(12)]
    assert all(t.shape == (48, 48, 3) and t.dtype == np.uint8 for t in textures)
    assert len({t.tobytes() for t in textures}) == 12
    assert all(t.std() > 0 for t in textures)


def test_crop_background_returns_a_window_of_the_photo(backgrounds):
    out = crop_background(backgrounds, 64, np.random.default_rng(0), procedural_p=0.0)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    texture = crop_background([], 64, np.random.default_rng(0))
    assert texture.shape == (64, 64, 3)


def test_jitter_coin_keeps_mask_binary_and_blank_outside(coin_pairs):
    canvas, mask, _ = pad_coin(*coin_square(*coin_pairs[1]), 96, np.random.default_rng(2))
    image, new_mask = jitter_coin(canvas, mask, np.random.default_rng(3))
    assert new_mask.dtype == bool and image.shape == canvas.shape
    assert not image[~new_mask].any()
    assert abs(int(new_mask.sum()) - int(mask.sum())) < 0.15 * mask.sum()  # rotation keeps the area


def test_jitter_background_changes_pixels_not_shape(backgrounds):
    bg = crop_background(backgrounds, 64, np.random.default_rng(0), procedural_p=0.0)
    out = jitter_background(bg, np.random.default_rng(1))
    assert out.shape == bg.shape and out.dtype == np.uint8
    assert not np.array_equal(out, bg)


def test_merge_with_mask_takes_foreground_inside_only():
    fg, bg = np.full((8, 8, 3), 200, np.uint8), np.full((8, 8, 3), 10, np.uint8)
    mask = np.zeros((8, 8), bool)
    mask[2:5, 3:6] = True
    out = merge_with_mask(fg, bg, mask)
    assert (out[mask] == 200).all() and (out[~mask] == 10).all()


def test_pyramid_blend_softens_the_seam_but_keeps_the_interior():
    fg, bg = np.full((64, 64, 3), 220, np.uint8), np.full((64, 64, 3), 20, np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[:, 32:] = True
    hard = merge_with_mask(fg, bg, mask)
    soft = pyramid_blend(hard, bg, mask, levels=3)
    assert soft.shape == hard.shape and soft.dtype == np.uint8
    assert abs(int(soft[32, 60, 0]) - 220) <= 3 and abs(int(soft[32, 3, 0]) - 20) <= 3
    hard_step = np.abs(np.diff(hard[32, :, 0].astype(int))).max()
    soft_step = np.abs(np.diff(soft[32, :, 0].astype(int))).max()
    assert soft_step < 0.6 * hard_step


def test_noise_and_shadows_keeps_shape_and_is_seeded(backgrounds):
    image = crop_background(backgrounds, 64, np.random.default_rng(0), procedural_p=0.0)
    outs = [noise_and_shadows(image, np.random.default_rng(s)) for s in range(6)]
    assert all(o.shape == image.shape and o.dtype == np.uint8 for o in outs)
    assert any(not np.array_equal(o, image) for o in outs)
    assert np.array_equal(noise_and_shadows(image, np.random.default_rng(4)), outs[4])


def test_punch_hole_removes_the_centre_from_the_mask(coin_pairs):
    coin, mask = coin_square(*coin_pairs[0])
    holed, holed_mask = punch_hole(coin, mask, np.random.default_rng(0))
    h, w = mask.shape
    assert mask[h // 2, w // 2] and not holed_mask[h // 2, w // 2]
    assert not holed[~holed_mask].any()
    assert holed_mask.sum() < mask.sum()


def test_occlude_with_finger_hides_at_most_half_the_coin(coin_pairs):
    canvas, mask, _ = pad_coin(*coin_square(*coin_pairs[0]), 96, np.random.default_rng(5), coverage_ratio=(2, 3))
    changed = 0
    for seed in range(8):
        _image, new_mask = occlude_with_finger(canvas, mask, np.random.default_rng(seed))
        assert new_mask.dtype == bool and not (new_mask & ~mask).any()
        assert new_mask.sum() >= 0.5 * mask.sum()
        changed += int(new_mask.sum() < mask.sum())
    assert changed >= 4


def test_random_letterbox_adds_black_bars_and_keeps_mask_binary(coin_pairs):
    canvas, mask, _ = pad_coin(*coin_square(*coin_pairs[0]), 64, np.random.default_rng(0))
    image, new_mask = random_letterbox(canvas + 1, mask, np.random.default_rng(1), aspect_range=(0.5, 0.6))
    assert image.shape == (64, 64, 3) and new_mask.shape == (64, 64) and new_mask.dtype == bool
    corners = np.stack([image[0, 0], image[-1, -1]])
    assert not corners.any()  # the bars are the letterbox pad value (0)


def test_scene_synthesizer_is_deterministic_and_binary(coin_pairs, backgrounds):
    cfg = SynthConfig(size_px=64, extra_coins_p=0.5, finger_p=0.3, hole_p=0.3, letterbox_p=0.3)
    synth = SceneSynthesizer(coin_pairs, backgrounds, cfg, seed=3)
    again = SceneSynthesizer(coin_pairs, backgrounds, cfg, seed=3)
    other = SceneSynthesizer(coin_pairs, backgrounds, cfg, seed=4)
    for index in range(6):
        image, mask, main = synth.scene(index)
        image2, mask2, main2 = again.scene(index)
        assert np.array_equal(image, image2) and np.array_equal(mask, mask2) and np.array_equal(main, main2)
        assert image.shape == (64, 64, 3) and mask.dtype == bool and main.dtype == bool
        assert not (main & ~mask).any()  # the main coin is part of the label
    assert not np.array_equal(synth.scene(0)[0], other.scene(0)[0])
    assert not np.array_equal(synth.scene(0)[0], synth.scene(1)[0])


def test_scene_synthesizer_main_coin_is_the_largest_component(coin_pairs, backgrounds):
    cfg = SynthConfig(size_px=96, extra_coins_p=1.0, finger_p=0.0, letterbox_p=0.0, coverage_ratio=(2, 6))
    synth = SceneSynthesizer(coin_pairs, backgrounds, cfg, seed=0)
    for index in range(5):
        _, mask, main = synth.scene(index)
        count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8))
        assert count >= 2
        largest = labels == (1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA])))
        assert _iou(largest, main) > 0.9


def test_scene_synthesizer_needs_coins(backgrounds):
    with pytest.raises(DatasetError):
        SceneSynthesizer([], backgrounds)
