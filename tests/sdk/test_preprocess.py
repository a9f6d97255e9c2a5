from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np
import pytest
from coinvision.sdk.errors import ConfigError
from coinvision.sdk.model_meta import ModelMetadata
from coinvision.sdk.preprocess import (
    IMAGENET_MEAN,
    InputSpec,
    coin_crop,
    convex_hull_fill,
    letterbox,
    square_bbox,
    to_model_input,
    unletterbox,
)
from coinvision.sdk.segmenter import (
    PredictFn,
    SegmenterParams,
    largest_component,
    tile_boxes,
    two_pass_segment,
    views_probability,
)


def _disc_image(h: int = 120, w: int = 200, center=(140, 60), radius: int = 30) -> tuple[np.ndarray, np.ndarray]:
    image = np.full((h, w, 3), 40, np.uint8)
    cv2.circle(image, center, radius, (200, 170, 60), -1)
    mask = np.zeros((h, w), np.uint8)
    cv2.circle(mask, center, radius, 1, -1)
    return image, mask.astype(bool)


def _color_predictor(square: np.ndarray) -> np.ndarray:
    """A stand-in segmenter with a known answer: yellow pixels are coin."""
    return (square[..., 0].astype(np.float32) > 120).astype(np.float32)


def _counting(predict: PredictFn) -> tuple[PredictFn, list[np.ndarray]]:
    """``predict`` that also records every square it is called with (in the returned list)."""
    calls: list[np.ndarray] = []

    def counting(square: np.ndarray) -> np.ndarray:
        calls.append(square)
        return predict(square)

    return counting, calls


def test_letterbox_round_trip_restores_geometry() -> None:
    image, mask = _disc_image()
    square, box = letterbox(image, 64)
    assert square.shape == (64, 64, 3)
    assert box.pad_x == 0 and box.pad_y > 0  # wide image: padding above and below
    back = unletterbox(cv2.resize(mask.astype(np.float32), (image.shape[1], image.shape[0])), box)
    assert back.shape == mask.shape


def test_to_model_input_layouts_hold_the_same_values() -> None:
    square = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    nchw = to_model_input(square, InputSpec(size_px=32, layout="NCHW"))
    nhwc = to_model_input(square, InputSpec(size_px=32, layout="NHWC"))
    assert nchw.shape == (1, 3, 32, 32) and nhwc.shape == (1, 32, 32, 3)
    np.testing.assert_array_equal(nchw.transpose(0, 2, 3, 1), nhwc)
    expected = (square[0, 0, 0] / 255.0 - IMAGENET_MEAN[0]) / 0.229
    assert nchw[0, 0, 0, 0] == pytest.approx(expected, rel=1e-5)


def test_input_spec_rejects_unknown_layout() -> None:
    with pytest.raises(ValueError, match="layout"):
        InputSpec(size_px=64, layout="CHWN")


def test_largest_component_keeps_the_biggest_blob() -> None:
    mask = np.zeros((100, 100), bool)
    mask[10:20, 10:20] = True
    mask[50:90, 50:90] = True
    out = largest_component(mask)
    assert out is not None and out.sum() == 40 * 40
    assert largest_component(np.zeros((10, 10), bool)) is None


def test_square_bbox_is_square_and_grown_by_margin() -> None:
    mask = np.zeros((100, 100), bool)
    mask[40:60, 30:70] = True
    x0, y0, x1, y1 = square_bbox(mask, margin_frac=0.25)
    assert x1 - x0 == y1 - y0 == 60


def test_two_pass_segment_finds_the_disc() -> None:
    image, truth = _disc_image()
    seg = two_pass_segment(image, _color_predictor, size_px=64)
    assert seg.found and seg.passes == 2
    iou = (seg.mask & truth).sum() / (seg.mask | truth).sum()
    assert iou > 0.9


def test_two_pass_segment_keeps_first_pass_when_second_keeps_a_fragment() -> None:
    image, truth = _disc_image()
    calls = []

    def forgetful(square: np.ndarray) -> np.ndarray:
        """First call sees the whole disc; on the zoomed crop it only finds a sliver at the top."""
        calls.append(square)
        prob = _color_predictor(square)
        if len(calls) > 1:
            prob[square.shape[0] // 3 :] = 0.0
        return prob

    seg = two_pass_segment(image, forgetful, size_px=64)
    assert len(calls) == 2 and seg.passes == 2
    assert np.array_equal(seg.mask, seg.first_pass_mask)
    assert (seg.mask & truth).sum() / (seg.mask | truth).sum() > 0.9


def test_single_pass_box_frac_skips_the_second_pass_only_for_a_coin_that_fills_the_photo() -> None:
    # disc of radius 30 in a 200-px-wide photo: its square box with 15 % margins is about 60 * 1.3 = 78 px, 0.4 of 200
    image, truth = _disc_image()
    counting, calls = _counting(_color_predictor)

    small_box = two_pass_segment(image, counting, size_px=64, single_pass_box_frac=0.5)
    assert len(calls) == 2 and small_box.passes == 2
    calls.clear()
    big_box = two_pass_segment(image, counting, size_px=64, single_pass_box_frac=0.3)
    assert len(calls) == 1 and big_box.passes == 1
    assert np.array_equal(big_box.mask, big_box.first_pass_mask)
    assert big_box.bbox == square_bbox(big_box.mask, 0.15)
    assert (big_box.mask & truth).sum() / (big_box.mask | truth).sum() > 0.9


@pytest.mark.parametrize(("key", "value", "bad", "message"), [
    ("single_pass_box_frac", 0.8, 0, r"single_pass_box_frac=0.0: must be > 0"),
    ("tile_frac", 0.6, 1, r"tile_frac=1.0: must be in \[0.25, 1\)"),
])
def test_segmenter_params_read_optional_post_processing_from_metadata(key: str, value: float, bad: float,
                                                                      message: str) -> None:
    meta = ModelMetadata(name="segmenter", architecture="unet", fingerprint="f" * 16,
                         input=InputSpec(size_px=64), output="mask_logits", extra={key: value})
    assert getattr(SegmenterParams.from_metadata(meta), key) == value
    assert getattr(SegmenterParams.from_metadata(dataclasses.replace(meta, extra={})), key) is None  # absent: off
    with pytest.raises(ConfigError, match=message):
        SegmenterParams.from_metadata(dataclasses.replace(meta, extra={key: bad}))


@pytest.mark.parametrize("bad", [3, 0, True, "4", 4.0])
def test_segmenter_views_must_be_1_2_or_4(bad: object) -> None:
    meta = ModelMetadata(name="segmenter", architecture="unet", fingerprint="f" * 16,
                         input=InputSpec(size_px=64), output="mask_logits", extra={"views": 4})
    assert SegmenterParams.from_metadata(meta).views == 4
    assert SegmenterParams.from_metadata(dataclasses.replace(meta, extra={})).views == 1  # absent: one view
    with pytest.raises(ConfigError, match=rf"views={bad!r}: must be one of \(1, 2, 4\)"):
        SegmenterParams.from_metadata(dataclasses.replace(meta, extra={"views": bad}))


def test_view_k_is_the_input_turned_k_quarter_turns_counter_clockwise_and_its_map_turned_back() -> None:
    square = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    seen: list[np.ndarray] = []

    def red(sq: np.ndarray) -> np.ndarray:  # a map that is the input's own red channel: turned back, it must match
        seen.append(sq)
        return sq[..., 0].astype(np.float32)

    assert np.array_equal(views_probability(square, red, 4), square[..., 0].astype(np.float32))
    size = square.shape[0]
    ys, xs = np.mgrid[0:size, 0:size]
    assert np.array_equal(seen[1], square[xs, size - 1 - ys])  # spec 2.7: one turn is out[y][x] = in[x][S - 1 - y]
    assert [np.array_equal(v, np.rot90(square, k)) for k, v in enumerate(seen)] == [True] * 4
    seen.clear()
    views_probability(square, red, 2)
    assert len(seen) == 2 and np.array_equal(seen[1], np.rot90(square, 2))  # two views: half turns


def _reaches_right(square: np.ndarray) -> np.ndarray:
    """A stand-in segmenter with a one-sided error, like a finger the model takes for coin on one side of the rim:
    coin pixels, and 3 px to the right of them."""
    prob = _color_predictor(square)
    return cv2.dilate(prob, np.ones((1, 4), np.uint8), anchor=(3, 0))


def test_views_of_the_second_pass_cancel_an_error_on_one_side_of_the_coin() -> None:
    image, truth = _disc_image()
    counting, calls = _counting(_reaches_right)

    results = {}
    for views, expected_calls in ((1, 2), (4, 5)):  # the first pass looks once, the second `views` times
        calls.clear()
        results[views] = two_pass_segment(image, counting, size_px=64, views=views)
        assert len(calls) == expected_calls
    one, four = results[1], results[4]
    xs = np.nonzero(truth.any(axis=0))[0]
    assert one.mask[:, xs.max() + 3 :].any()  # one view: the mask reaches past the coin's right side
    assert not four.mask[:, xs.max() + 3 :].any()  # four views: each side's error is in one view of four, 0.25
    iou_four, iou_one = ((m.mask & truth).sum() / (m.mask | truth).sum() for m in (four, one))
    # (not all of it: next to the rim on a diagonal, two sides' errors meet at 0.5)
    assert iou_four > iou_one + 0.025 and four.passes == one.passes == 2
    assert np.array_equal(four.first_pass_mask, one.first_pass_mask)
    calls.clear()
    single = two_pass_segment(image, counting, size_px=64, single_pass_box_frac=0.3, views=4)
    assert len(calls) == 1 and single.passes == 1  # no second pass: one look, the views never run


@pytest.mark.parametrize(("height", "width"), [(300, 300), (240, 320), (301, 199)])
@pytest.mark.parametrize(("tile_frac", "per_side"), [(0.6, 2), (0.5, 2), (0.4, 3), (0.34, 3), (0.25, 4)])
def test_tile_boxes_are_a_grid_of_squares_covering_the_centred_frame(height: int, width: int, tile_frac: float,
                                                                     per_side: int) -> None:
    side = max(height, width)
    boxes = tile_boxes(height, width, tile_frac)
    assert len(boxes) == per_side**2
    assert all(x1 - x0 == y1 - y0 == math.ceil(tile_frac * side) for x0, y0, x1, y1 in boxes)
    covered = np.zeros((side, side), bool)
    fx0, fy0 = (width - side) // 2, (height - side) // 2
    for x0, y0, x1, y1 in boxes:
        assert fx0 <= x0 and fy0 <= y0 and x1 <= fx0 + side and y1 <= fy0 + side  # inside the frame
        covered[y0 - fy0 : y1 - fy0, x0 - fx0 : x1 - fx0] = True
    assert covered.all()
    assert boxes[0][:2] == (fx0, fy0) and boxes[-1][2:] == (fx0 + side, fy0 + side)  # row by row, corner to corner
    assert [b[1] for b in boxes[:per_side]] == [fy0] * per_side  # the first row first


def _blind_to_small_coins(square: np.ndarray) -> np.ndarray:
    """A stand-in segmenter that, like the shipped one, cannot see a coin under 16 px across in its input."""
    prob = _color_predictor(square)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(prob.astype(np.uint8), connectivity=8)
    for k in range(1, count):
        if max(stats[k, cv2.CC_STAT_WIDTH], stats[k, cv2.CC_STAT_HEIGHT]) < 16:
            prob[labels == k] = 0.0
    return prob


def test_tiles_find_a_coin_the_whole_photo_pass_cannot_see() -> None:
    # a 24-px coin in a 240x320 photo is 12 px in the 128-px first pass, 20 px in a tile of 0.6
    image, truth = _disc_image(h=240, w=320, center=(250, 190), radius=12)
    counting, calls = _counting(_blind_to_small_coins)

    plain = two_pass_segment(image, counting, size_px=128)
    assert not plain.found and not plain.tiled and len(calls) == 1
    calls.clear()
    seg = two_pass_segment(image, counting, size_px=128, tile_frac=0.6)
    assert seg.found and seg.tiled and seg.passes == 2
    assert len(calls) == 1 + 4 + 1  # whole photo, 2 x 2 tiles, the second pass on the coin's crop
    assert (seg.mask & truth).sum() / (seg.mask | truth).sum() > 0.85
    calls.clear()
    big, _ = _disc_image(h=240, w=320, center=(160, 120), radius=60)
    seen = two_pass_segment(big, counting, size_px=128, tile_frac=0.6)
    assert seen.found and not seen.tiled and len(calls) == 2  # the first pass found it: no tiles


def test_tiles_find_nothing_on_a_blank_photo() -> None:
    seg = two_pass_segment(np.full((90, 160, 3), 30, np.uint8), _color_predictor, size_px=64, tile_frac=0.6)
    assert not seg.found and seg.tiled and seg.passes == 1



def test_two_pass_segment_reports_no_coin_on_blank_photo() -> None:
    seg = two_pass_segment(np.full((50, 80, 3), 30, np.uint8), _color_predictor, size_px=64)
    assert not seg.found and seg.mask is None


def test_coin_crop_removes_background() -> None:
    image, mask = _disc_image()
    crop = coin_crop(image, mask, 48)
    assert crop.shape == (48, 48, 3)
    assert (crop[0, 0] == 0).all()  # corner is outside the disc: filled
    assert tuple(crop[24, 24]) == (200, 170, 60)


def _inside_hull_by_point_test(mask: np.ndarray) -> np.ndarray:
    """Every pixel centre tested against OpenCV's hull of all the mask's pixels (slow, independent)."""
    hull = cv2.convexHull(np.argwhere(mask)[:, ::-1].astype(np.int32)).astype(np.float32)
    return np.array([[cv2.pointPolygonTest(hull, (float(x), float(y)), False) >= 0 for x in range(mask.shape[1])]
                     for y in range(mask.shape[0])])


def test_convex_hull_fill_is_every_pixel_centre_inside_or_on_the_hull() -> None:
    rng = np.random.default_rng(3)
    for _ in range(25):
        mask = np.zeros((36, 44), np.uint8)
        for _ in range(int(rng.integers(1, 4))):
            cv2.circle(mask, (int(rng.integers(4, 40)), int(rng.integers(4, 32))), int(rng.integers(1, 11)), 1, -1)
        mask = mask.astype(bool)
        mask[rng.integers(0, 36, 6), rng.integers(0, 44, 6)] = True  # stray pixels stretch the hull
        np.testing.assert_array_equal(convex_hull_fill(mask), _inside_hull_by_point_test(mask))


def test_convex_hull_fill_closes_a_notch_and_leaves_lines_points_and_empty_masks() -> None:
    _, disc = _disc_image()
    notched = disc.copy()
    ys, xs = np.nonzero(disc)
    notched[ys.min() : ys.min() + 12, :] = False  # a finger over the rim
    notched[ys.min() + 12 : ys.min() + 20, xs.min() : xs.min() + 15] = False
    filled = convex_hull_fill(notched)
    assert (filled >= notched).all() and filled.sum() > notched.sum()
    assert not (filled & ~disc).any()  # never beyond the coin: a disc is convex
    line = np.zeros((9, 20), bool)
    line[4, 2:17] = True
    for mask in (line, np.eye(12, dtype=bool), np.zeros((5, 5), bool), np.pad(np.ones((1, 1), bool), 3)):
        np.testing.assert_array_equal(convex_hull_fill(mask), mask)


def test_coin_crop_keeps_the_convex_hull_only_when_asked() -> None:
    image, disc = _disc_image()
    ys, xs = np.nonzero(disc)
    notched = disc.copy()
    notched[int(ys.mean()) - 5 : int(ys.mean()) + 5, int(xs.mean()) + 10 :] = False  # a bite out of one side
    exact = coin_crop(image, notched, 48)
    hull = coin_crop(image, notched, 48, crop_mask="convex_hull")
    assert (hull > 0).any(axis=2).sum() > (exact > 0).any(axis=2).sum()  # the bite is coin again
    np.testing.assert_array_equal(coin_crop(image, disc, 48, crop_mask="convex_hull"), coin_crop(image, disc, 48))
    with pytest.raises(ValueError, match="crop_mask='circle': must be one of"):
        coin_crop(image, disc, 48, crop_mask="circle")


def test_crop_params_read_crop_mask_from_the_embedder_metadata() -> None:
    from coinvision.sdk.recognizer import CropParams

    meta = ModelMetadata(name="embedder", architecture="x", fingerprint="f" * 16, input=InputSpec(size_px=64),
                         output="embedding", embedding_dim=8, extra={"crop_mask": "convex_hull"})
    assert CropParams.from_metadata(meta).crop_mask == "convex_hull"
    assert CropParams.from_metadata(dataclasses.replace(meta, extra={})).crop_mask == "exact"
    with pytest.raises(ConfigError, match="crop_mask='hull': must be one of"):
        CropParams.from_metadata(dataclasses.replace(meta, extra={"crop_mask": "hull"}))
