"""Segmenter v2 (issue 13): multi-coin scenes with the largest-coin label, touching-coin split, label refinement."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest
from coinvision.sdk.segmenter import largest_component, split_touching_coins, two_pass_segment
from coinvision.trainer.seg_config import SynthConfig
from coinvision.trainer.seg_labels import refine_label
from coinvision.trainer.seg_scenes import (
    MAX_OTHER_VISIBLE,
    SceneSynthesizer,
    _visible_masks,
    add_glare,
    cast_coin_shadow,
    match_background_colour,
    place_coin,
    skin_texture,
)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def _disc(shape: tuple[int, int], center: tuple[int, int], radius: int) -> np.ndarray:
    out = np.zeros(shape, np.uint8)
    cv2.circle(out, center, radius, 1, thickness=cv2.FILLED)
    return out.astype(bool)


def _white_coins(n: int = 3) -> list[tuple[np.ndarray, np.ndarray]]:
    """Plain white discs (various sizes) on black: a coin pixel is bright, a background pixel dark."""
    coins = []
    for k in range(n):
        size = 60 + 10 * k
        mask = _disc((size, size), (size // 2, size // 2), size // 2 - 2)
        image = np.zeros((size, size, 3), np.uint8)
        image[mask] = 255
        coins.append((image, mask))
    return coins


_MULTI_ONLY = SynthConfig(size_px=96, multi_coin_p=1.0, extra_coins_p=0.0, hole_p=0.0, finger_p=0.0, letterbox_p=0.0,
                          procedural_bg_p=0.0)


@pytest.fixture(scope="module")
def dark_backgrounds() -> list[np.ndarray]:
    return [np.full((120, 160, 3), 10, np.uint8)]


def test_multi_coin_layers_keep_main_coin_clearly_largest(dark_backgrounds):
    synth = SceneSynthesizer(_white_coins(), dark_backgrounds, _MULTI_ONLY, seed=1)
    counts = []
    for i in range(25):
        layers, main, _ = synth._multi_coin_layers(np.random.default_rng([1, i]))
        visible = _visible_masks([m for _, m in layers])
        counts.append(len(layers))
        main_area = int(visible[main].sum())
        assert main_area > 0
        for k, v in enumerate(visible):
            if k != main:
                assert v.sum() <= MAX_OTHER_VISIBLE * main_area
    assert min(counts) >= 1 and max(counts) >= 3  # 2-5 coins asked; some are dropped when they would rival the main


def test_multi_coin_scene_masks_exact_and_label_is_largest_coin(dark_backgrounds):
    """White coins on a dark background: the masks must match the bright pixels of the rendered scene (up to the
    one-pixel blend seam), the main mask must be one coin and the largest one."""
    synth = SceneSynthesizer(_white_coins(), dark_backgrounds, _MULTI_ONLY, seed=2)
    touching = 0
    for i in range(12):
        image, full, main = synth.scene(i)
        assert image.shape == (96, 96, 3) and full.shape == main.shape == (96, 96)
        assert main.any() and not (main & ~full).any()  # the main coin is one of the coins
        kernel = np.ones((5, 5), np.uint8)
        inner = cv2.erode(full.astype(np.uint8), kernel).astype(bool)
        outer = ~cv2.dilate(full.astype(np.uint8), kernel).astype(bool)
        gray = image.mean(axis=2)
        bright = gray > (gray[inner].mean() + gray[outer].mean()) / 2  # jitter moves both levels, not their order
        assert bright[inner].mean() > 0.93  # cast shadows / noise dim a few coin pixels
        assert (~bright[outer]).mean() > 0.93
        count, _ = cv2.connectedComponents(main.astype(np.uint8), connectivity=8)
        assert count == 2  # one coin (it may be partly hidden, never split by this recipe without fingers)
        others = full & ~main
        touching += bool((cv2.dilate(main.astype(np.uint8), kernel).astype(bool) & others).any())
    assert touching >= 3  # touching / overlapping neighbours do occur


def test_multi_coin_p_zero_keeps_old_scenes(dark_backgrounds):
    coins = _white_coins()
    old = SceneSynthesizer(coins, dark_backgrounds, SynthConfig(size_px=64), seed=3)
    new = SceneSynthesizer(coins, dark_backgrounds, SynthConfig(size_px=64, multi_coin_p=0.0, glare_p=0.0), seed=3)
    for i in range(3):
        for a, b in zip(old.scene(i), new.scene(i), strict=True):
            np.testing.assert_array_equal(a, b)


def test_place_coin_clips_at_canvas_edges():
    image, mask = _white_coins(1)[0]
    canvas, canvas_mask = place_coin(image, mask, 64, 40, -10, 40)
    assert canvas.shape == (64, 64, 3) and canvas_mask.any()
    assert not canvas_mask[:, 30:].any() and canvas_mask[:, 0].any()  # 10 px cut off at the left edge
    assert not canvas_mask[:40].any() and canvas_mask[63].any()  # rows 40..79 asked, 40..63 kept
    assert (canvas[~canvas_mask] == 0).all() and canvas[canvas_mask].min() > 0


def test_hard_case_helpers_keep_shapes_and_masks():
    rng = np.random.default_rng(0)
    skin = skin_texture(64, rng)
    assert skin.shape == (64, 64, 3) and skin[..., 0].mean() > skin[..., 2].mean()  # reddish, not blue
    mask = _disc((64, 64), (32, 32), 20)
    coin = np.zeros((64, 64, 3), np.uint8)
    coin[mask] = (180, 140, 60)
    glared = add_glare(coin, mask, rng)
    assert (glared[~mask] == 0).all() and glared[mask].mean() >= coin[mask].mean()
    shadowed = cast_coin_shadow(np.full((64, 64, 3), 200, np.uint8), mask, rng)
    assert shadowed.min() < 200 and shadowed.max() == 200
    matched = match_background_colour(np.full((64, 64, 3), 30, np.uint8), coin, mask, rng)
    assert np.abs(matched.reshape(-1, 3).mean(axis=0) - (180, 140, 60)).max() < 30


# ----------------------------------------------------------------------------------------- touching split


def test_split_touching_coins_keeps_the_larger_of_two_touching_discs():
    big, small = _disc((200, 300), (100, 100), 60), _disc((200, 300), (190, 100), 32)
    assert largest_component(big | small) is not None
    kept = split_touching_coins(big | small)
    assert _iou(kept, big) > 0.97
    kept = largest_component(big | small, split_touching=True)
    assert _iou(kept, big) > 0.97
    equalish = _disc((200, 300), (215, 100), 55)
    assert _iou(split_touching_coins(big | equalish), big) > 0.97


@pytest.mark.parametrize("case", ["disc", "holed", "finger notch", "heptagon", "ellipse"])
def test_split_touching_coins_leaves_one_coin_whole(case):
    shape = (200, 300)
    if case == "disc":
        mask = _disc(shape, (150, 100), 70)
    elif case == "holed":
        mask = _disc(shape, (150, 100), 70) & ~_disc(shape, (150, 100), 15)
    elif case == "finger notch":
        finger = np.zeros(shape, np.uint8)
        cv2.ellipse(finger, (150, 40), (12, 40), 0, 0, 360, 1, thickness=cv2.FILLED)
        mask = _disc(shape, (150, 100), 70) & ~finger.astype(bool)
    elif case == "heptagon":
        angles = np.linspace(0, 2 * np.pi, 8)[:-1]
        pts = np.stack([150 + 70 * np.cos(angles), 100 + 70 * np.sin(angles)], axis=1).astype(np.int32)
        poly = np.zeros(shape, np.uint8)
        cv2.fillPoly(poly, [pts], 1)
        mask = poly.astype(bool)
    else:
        ell = np.zeros(shape, np.uint8)
        cv2.ellipse(ell, (150, 100), (90, 60), 0, 0, 360, 1, thickness=cv2.FILLED)
        mask = ell.astype(bool)
    np.testing.assert_array_equal(split_touching_coins(mask), mask)


def test_two_pass_segment_split_touching_is_opt_in():
    big, small = _disc((160, 240), (80, 80), 50), _disc((160, 240), (155, 80), 28)
    image = np.zeros((160, 240, 3), np.uint8)
    image[big | small] = 255

    def predict(square: np.ndarray) -> np.ndarray:  # a "model" that marks every bright pixel
        return (square.max(axis=2) > 127).astype(np.float32)

    merged = two_pass_segment(image, predict, size_px=64)
    assert _iou(merged.mask, big | small) > 0.9
    split = two_pass_segment(image, predict, size_px=64, split_touching=True)
    assert _iou(split.mask, big) > 0.9


# ---------------------------------------------------------------------------------------- label refinement


def _heptagon_coin() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = np.clip(np.full((200, 200, 3), 215.0) + rng.normal(0, 4, (200, 200, 3)), 0, 255).astype(np.uint8)
    angles = np.linspace(0, 2 * np.pi, 8)[:-1]
    pts = np.stack([100 + 70 * np.cos(angles), 100 + 70 * np.sin(angles)], axis=1).astype(np.int32)
    truth = np.zeros((200, 200), np.uint8)
    cv2.fillPoly(truth, [pts], 1)
    truth = truth.astype(bool)
    coin = np.clip(np.array([160.0, 110.0, 60.0]) + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
    image[truth] = coin[truth]
    cv2.circle(image, (100, 100), 50, (120, 80, 40), 2)
    return image, truth


def test_refine_label_recovers_polygonal_outline_from_a_circle():
    image, truth = _heptagon_coin()
    circle = (100.0, 100.0, 66.0)  # what a Hough circle gives: between in- and circumradius
    disc = _disc(truth.shape, (100, 100), 66)
    refined = refine_label(image, circle)
    assert refined is not None
    assert _iou(refined, truth) > 0.97 > _iou(disc, truth)


def test_refine_label_refuses_when_grabcut_disagrees_with_the_circle():
    image, _ = _heptagon_coin()
    assert refine_label(image, (40.0, 40.0, 25.0)) is None  # a circle on the background corner


# ------------------------------------------------------------------------------------- config and benchmark


def test_segmenter_config_label_mode_is_checked_and_largest_label_used():
    import torch
    from coinvision.sdk.preprocess import InputSpec
    from coinvision.trainer.seg_config import SegmenterConfig
    from coinvision.trainer.seg_train import SegTrainSet

    with pytest.raises(ValueError, match="label='coins'"):
        SegmenterConfig(label="coins")
    synth = SceneSynthesizer(_white_coins(), [np.full((120, 160, 3), 10, np.uint8)], _MULTI_ONLY, seed=4)
    spec = InputSpec(size_px=96)
    largest = SegTrainSet(synth, [], 0.0, spec, seed=0, length=4, label="largest")
    every = SegTrainSet(synth, [], 0.0, spec, seed=0, length=4, label="all")
    _, full, main = synth.scene(2)
    assert torch.equal(largest[2][1][0], torch.from_numpy(main.astype(np.float32)))
    assert torch.equal(every[2][1][0], torch.from_numpy(full.astype(np.float32)))


def test_bench_reads_handcheck_csv_and_scores_split_variant(tmp_path):
    from benchmarks import bench_segmentation as bench

    csv_path = tmp_path / "check.csv"
    csv_path.write_text("number,dataset,file,label_method,verdict,note\n0,a,x.jpg,hough,accept,\n"
                        "1,a,y.jpg,hough,reject,two coins\n")
    assert bench.read_handchecked(csv_path) == {("a", "x.jpg")}
    big, small = _disc((120, 180), (60, 60), 40), _disc((120, 180), (118, 60), 22)
    image = np.zeros((120, 180, 3), np.uint8)
    image[big | small] = 255

    from coinvision.sdk.model_meta import ModelMetadata
    from coinvision.sdk.preprocess import InputSpec
    from coinvision.sdk.runtimes import LoadedModel
    from coinvision.sdk.segmenter import Segmenter

    def predict(square: np.ndarray) -> np.ndarray:  # mask logits of a model that sees every bright pixel as coin
        return np.where(square.max(axis=2) > 127, 10.0, -10.0).astype(np.float32)[None]

    meta = ModelMetadata(name="segmenter", architecture="fake", fingerprint="0", input=InputSpec(size_px=64),
                         output="mask_logits", threshold=0.5, runtime_format="torch")
    model = bench.SegModel("fake", "torch", "-", "0", "fp32", Segmenter(LoadedModel(Path("fake"), meta, predict)))
    plain = bench.evaluate_model(model.with_split_touching(False), [(image, big)])
    split = bench.evaluate_model(model.with_split_touching(True), [(image, big)])
    assert split["2_pass"]["iou@0.5"] > 0.9 > plain["2_pass"]["iou@0.5"]
    assert set(split["2_pass_spread"]) == {"median_iou@0.3", "median_iou@0.5", "below_0.9@0.3", "below_0.9@0.5"}


# ------------------------------------------------------------------------------- post-processing on a checkpoint


def test_segmenter_postprocess_sets_metadata_keeps_weights_and_refuses_training_keys(tmp_path: Path) -> None:
    import torch
    from coinvision.cli.main import main as cli
    from coinvision.sdk.errors import ConfigError
    from coinvision.trainer.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
    from coinvision.trainer.config_io import config_to_dict
    from coinvision.trainer.seg_model import SegmenterConfig, build_segmenter, set_postprocess
    from coinvision.trainer.torch_runtime import torch_segmenter

    cfg = SegmenterConfig(encoder="tu-mobilenetv2_035", size_px=64, decoder_channels=(16, 8, 8, 8, 8))
    src = save_checkpoint(tmp_path / "best.pt", Checkpoint("segmenter", config_to_dict(cfg),
                                                           build_segmenter(cfg).state_dict()))
    before = src.read_bytes()
    assert cli(["train", "segmenter-postprocess", str(src), "--set", "single_pass_box_frac=0.8",
                "split_touching=true", "views=2", "--out", str(tmp_path / "post.pt")]) == 0
    assert src.read_bytes() == before  # the source is left as it is
    old, new = load_checkpoint(src), load_checkpoint(tmp_path / "post.pt")
    assert new.fingerprint == old.fingerprint
    assert all(torch.equal(new.state_dict[k], v) for k, v in old.state_dict.items())
    assert new.config["single_pass_box_frac"] == 0.8 and new.config["split_touching"] is True
    assert new.config["views"] == 2
    params = torch_segmenter(tmp_path / "post.pt", 1).params  # what every runtime reads: the metadata
    assert params.single_pass_box_frac == 0.8 and params.split_touching and params.views == 2
    with pytest.raises(ConfigError, match="lr: not post-processing"):
        set_postprocess(src, tmp_path / "x.pt", {"lr": 0.1})
    with pytest.raises(ConfigError, match=r"single_pass_box_frac=0\.0: must be > 0"):
        set_postprocess(src, tmp_path / "x.pt", {"single_pass_box_frac": 0})
    with pytest.raises(ConfigError, match=r"views=3: must be one of \(1, 2, 4\)"):
        set_postprocess(src, tmp_path / "x.pt", {"views": 3})
    assert not (tmp_path / "x.pt").exists()


def test_letterbox_crop_relabels_when_main_coin_is_cut_out(dark_backgrounds):
    """The letterbox crop may cut the main coin out of the picture (or down below another coin): the label is then
    the coin that is largest in what is left, never an empty or sliver mask beside a whole visible coin."""
    synth = SceneSynthesizer(_white_coins(), dark_backgrounds, SynthConfig(size_px=64), seed=4)
    main, other = _disc((64, 64), (8, 32), 8), _disc((64, 64), (50, 32), 6)  # main coin at the left edge
    image = np.zeros((64, 64, 3), np.uint8)
    image[main | other] = 255
    outcomes = set()
    for index in range(40):
        _, full, label, kept = synth._letterboxed(image, main | other, [other, main], 1, index)
        bright = _letterbox_view(synth, image, index)
        count, parts, stats, _ = cv2.connectedComponentsWithStats(bright.astype(np.uint8), connectivity=8)
        assert count >= 2, "the crop keeps at least one coin here"
        biggest = parts == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        assert _iou(label, biggest) > 0.8 and not (label & ~full).any()
        outcomes.add("main" if label[:, :32].any() else "other")
        assert kept == (1 if label[:, :32].any() else 0)  # the layer the label now marks
    assert outcomes == {"main", "other"}  # both cases occur over these crops


def _letterbox_view(synth: SceneSynthesizer, image: np.ndarray, index: int) -> np.ndarray:
    from coinvision.trainer.seg_scenes import random_letterbox

    cut, _ = random_letterbox(image, image[..., 0] > 0, np.random.default_rng([synth.seed, index, 1]))
    return cut[..., 0] > 127


def test_pass_views_cut_scenes_as_the_two_pass_pipeline_does(dark_backgrounds):
    from coinvision.trainer.seg_config import SegmenterConfig
    from coinvision.trainer.seg_train import PassViews, letterbox_pair

    recipe = SynthConfig(size_px=288, coverage_ratio=(16.0, 36.0), extra_coins_p=0.0, hole_p=0.0, finger_p=0.0,
                         letterbox_p=0.0, procedural_bg_p=0.0)
    synth = SceneSynthesizer(_white_coins(), dark_backgrounds, recipe, seed=3)
    crops = PassViews(synth, 96, margin_frac=0.15, single_pass_box_frac=0.8)
    whole = PassViews(synth, 96, margin_frac=0.15, single_pass_box_frac=0.01)  # every crop box too big: no crop
    cropped = 0
    for index in range(12):
        image, _, largest = synth.scene(index)
        expected = letterbox_pair(image, largest, 96)
        x, y = whole.sample(index, np.random.default_rng(index), "largest")
        assert np.array_equal(x, expected[0]) and np.array_equal(y, expected[1])
        x, y = crops.sample(index, np.random.default_rng(index), "largest")
        assert x.shape == (96, 96, 3) and y.shape == (96, 96)
        grey = x.mean(axis=2)
        assert grey[y].mean() - grey[~y].mean() > 60  # the label lies on the (white) coin's pixels
        if y.mean() > 0.3:  # the second pass's crop: the coin fills about (1 / 1.3)^2 * pi / 4 of it, centred
            cropped += 1
            assert largest.mean() < 0.1
            ys, xs = np.nonzero(y)
            assert abs(xs.mean() - 47.5) < 12 and abs(ys.mean() - 47.5) < 12
    assert 3 <= cropped <= 9  # about half
    with pytest.raises(ValueError, match=r"pass_view_p=1\.5"):
        SegmenterConfig(pass_view_p=1.5)
    with pytest.raises(ValueError, match="pass_view_scene_px=64"):
        SegmenterConfig(pass_view_scene_px=64)


def test_real_pass_views_cut_a_two_sided_photo_around_its_labelled_side(dark_backgrounds):
    """A catalogue photo of both sides of a coin (two discs side by side, the label on one): with
    ``real_pass_view_p`` the sample is the second pass's crop around the labelled side, the other side's edge in view
    and out of the mask."""
    from coinvision.trainer.seg_config import SegmenterConfig
    from coinvision.trainer.seg_train import PassViews, SegTrainSet

    image = np.zeros((128, 256, 3), np.uint8)
    left, right = _disc((128, 256), (64, 64), 56), _disc((128, 256), (180, 64), 56)
    image[left | right] = 255
    spec = SegmenterConfig(size_px=96).input_spec
    synth = SceneSynthesizer(_white_coins(), dark_backgrounds, SynthConfig(size_px=96), seed=0)
    views = PassViews(synth, 96, margin_frac=0.15, single_pass_box_frac=0.8)
    real = [(image, left)]
    cut = SegTrainSet(synth, real, 1.0, spec, seed=0, length=8, label="largest", pass_views=views,
                      real_pass_view_p=1.0)
    for index in range(8):
        x, y = cut[index]
        mask = y[0].numpy() > 0.5
        bright = x.numpy().mean(axis=0) > 0.5  # inputs normalised to [-1, 1]
        assert 0.35 < mask.mean() < 0.65  # the labelled side fills the crop (the whole photo's label: ~0.2)
        ys, xs = np.nonzero(mask)
        assert abs(xs.mean() - 47.5) < 8 and abs(ys.mean() - 47.5) < 8
        assert (bright & ~mask).sum() > 20  # the other side's edge: in the crop, not in the label
        assert _iou(bright & _disc((96, 96), (48, 48), 40), mask) > 0.8
    whole = SegTrainSet(synth, real, 1.0, spec, seed=0, length=8, label="largest", pass_views=views)
    assert all(whole[i][1].mean() < 0.3 for i in range(8))  # real_pass_view_p=0: the augmented whole photo
    with pytest.raises(ValueError, match=r"real_pass_view_p=-0\.1"):
        SegmenterConfig(real_pass_view_p=-0.1)


@pytest.mark.parametrize("recipe", [
    SynthConfig(size_px=128, multi_coin_p=0.0, extra_coins_p=1.0),
    SynthConfig(size_px=128, multi_coin_p=1.0),
    SynthConfig(size_px=128, multi_coin_p=1.0, letterbox_p=1.0),  # the label may move to another coin
], ids=["extra-coins", "multi-coin", "letterboxed"])
def test_scene_with_source_names_the_photo_of_the_labelled_coin(dark_backgrounds, recipe):
    """Each coin photo a plain colour of its own hue (60 degrees apart; the jitter turns hue by 16 at most): the
    labelled coin's pixels carry the hue of the photo the scene says it was cut from; ``scene`` is the same scene
    without it."""
    hues_deg = np.arange(0, 360, 60)
    coins = []
    for k, hue in enumerate(hues_deg):
        size = 60 + 6 * k
        mask = _disc((size, size), (size // 2, size // 2), size // 2 - 2)
        image = np.zeros((size, size, 3), np.uint8)
        image[mask] = cv2.cvtColor(np.array([[[hue // 2, 200, 220]]], np.uint8), cv2.COLOR_HSV2RGB)[0, 0]
        coins.append((image, mask))
    clean = dataclasses.replace(recipe, hole_p=0.0, finger_p=0.0, glare_p=0.0, procedural_bg_p=0.0, skin_bg_p=0.0,
                                coin_shadow_p=0.0, bg_match_p=0.0)
    synth = SceneSynthesizer(coins, dark_backgrounds, clean, seed=5)
    named = 0
    for index in range(30):
        image, full, label, source = synth.scene_with_source(index)
        assert all(np.array_equal(a, b) for a, b in zip(synth.scene(index), (image, full, label), strict=True))
        core = cv2.erode(label.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        if core.sum() < 20:
            continue
        mean_rgb = image[core].astype(np.float32).mean(axis=0).round().astype(np.uint8)
        hue = 2.0 * cv2.cvtColor(mean_rgb[None, None], cv2.COLOR_RGB2HSV)[0, 0, 0]
        distance = np.abs((hues_deg - hue + 180) % 360 - 180)
        assert int(np.argmin(distance)) == source, (index, hue, source)
        named += 1
    assert named >= 20


def test_real_flag_names_exactly_the_samples_that_are_real_photos(dark_backgrounds):
    """``SegTrainSet.is_real`` replays the sample's first draw (what the distillation term picks its samples by): a
    red real photo among grey scenes of white coins shows which samples are real."""
    from coinvision.sdk.preprocess import InputSpec
    from coinvision.trainer.seg_train import RealFlagged, SegTrainSet

    red = np.zeros((96, 96, 3), np.uint8)
    red[..., 0] = 220
    synth = SceneSynthesizer(_white_coins(), dark_backgrounds, SynthConfig(size_px=96), seed=0)
    samples = SegTrainSet(synth, [(red, _disc((96, 96), (48, 48), 40))], 0.5, InputSpec(size_px=96), seed=3,
                          length=24)
    flags = [samples.is_real(i) for i in range(24)]
    assert 4 < sum(flags) < 20
    for i, flag in enumerate(flags):
        x = samples[i][0]
        assert bool(x[0].mean() - x[1].mean() > 0.3) == flag  # red far above green only in the real photo
        assert bool(RealFlagged(samples)[i][2]) == flag
    assert not any(SegTrainSet(synth, [], 0.5, InputSpec(size_px=96), seed=3, length=24).is_real(i)
                   for i in range(24))  # no real photos: nothing to flag
