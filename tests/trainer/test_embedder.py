"""Embedder trainer: ArcFace margin units, optimizer split, retrieval metrics on a hand-built example, crop
cache, a tiny real training run on the bundled sample photos (train, resume, evaluate through the CLI)."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from coinvision.cli.main import main
from coinvision.sdk.errors import ConfigError, DatasetError, ModelLoadError
from coinvision.sdk.evaluation import calibrate_unknown_threshold, evaluate_retrieval
from coinvision.sdk.images import load_image
from coinvision.sdk.preprocess import coin_crop, letterbox
from coinvision.trainer.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from coinvision.trainer.config_io import config_to_dict, resolve_config
from coinvision.trainer.emb_data import (
    AugmentConfig,
    CropCache,
    CropTensorSet,
    LetterboxCropSource,
    build_augment,
    crop_source_from_checkpoint,
    crop_source_from_models_dir,
    load_embedding_data,
    make_crop_source,
    move_outline,
    read_crop,
)
from coinvision.trainer.emb_losses import arcface_margin_deg, build_loss
from coinvision.trainer.emb_model import EmbedderConfig, build_embedder, embedder_metadata, load_embedder
from coinvision.trainer.emb_train import build_optimizers, split_parameters

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_BACKBONE = "mobilenetv2_035"


def _tiny_cfg(**overrides) -> EmbedderConfig:
    values = {"backbone": TINY_BACKBONE, "size_px": 64, "head_hidden_dims": (32,), "batch_size": 8}
    return EmbedderConfig(**{**values, **overrides})


def _unit(deg: float) -> list[float]:
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


# ------------------------------------------------------------------------------------------------ loss


def test_arcface_margin_deg_converts_radians_for_pml() -> None:
    assert arcface_margin_deg(0.2) == pytest.approx(11.4592, abs=1e-4)
    loss = build_loss(EmbedderConfig(margin_rad=0.2, scale=25.0, embedding_dim=8), num_classes=3)
    # PML takes degrees and stores radians: 0.2 rad went in as 11.459 deg and came back as 0.2 rad
    assert loss.loss.margin == pytest.approx(0.2, abs=1e-9)
    assert loss.loss.scale == 25.0


def test_arcface_loss_equals_hand_computation_with_radian_margin() -> None:
    loss_fn = build_loss(EmbedderConfig(margin_rad=0.2, scale=25.0, embedding_dim=2), num_classes=3)
    centres = np.array([_unit(0), _unit(120), _unit(240)], np.float64)  # class centres, unit columns of W
    with torch.no_grad():
        loss_fn.loss.W.copy_(torch.tensor(centres.T * 3.0, dtype=torch.float32))  # PML normalises W itself
    emb = np.array([_unit(20), _unit(100), _unit(300)])
    labels = np.array([0, 1, 2])
    got = float(loss_fn(torch.tensor(emb, dtype=torch.float32), torch.tensor(labels)).detach())

    cos = emb @ centres.T
    logits = cos.copy()
    theta = np.arccos(cos[np.arange(3), labels])
    logits[np.arange(3), labels] = np.cos(theta + 0.2)  # margin added to the target angle, in radians
    logits *= 25.0
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    expected = -log_softmax[np.arange(3), labels].mean()
    assert got == pytest.approx(expected, rel=1e-5)
    # the margin in degrees handed to PML as radians would give a different loss: the test can fail
    logits_wrong = cos.copy()
    logits_wrong[np.arange(3), labels] = np.cos(theta + math.radians(0.2))
    logits_wrong *= 25.0
    wrong = -(logits_wrong - np.log(np.exp(logits_wrong).sum(1, keepdims=True)))[np.arange(3), labels].mean()
    assert abs(got - wrong) > 0.1


def test_margin_given_in_degrees_is_rejected() -> None:
    with pytest.raises(ConfigError, match="RADIANS"):
        resolve_config(EmbedderConfig, overrides={"margin_rad": 11.46})


def test_subcenter_arcface_ablation_builds_k_centres_per_class() -> None:
    loss = build_loss(EmbedderConfig(loss="subcenter_arcface", sub_centers=3, embedding_dim=8), num_classes=5)
    assert tuple(loss.loss.W.shape) == (8, 15)
    assert loss.loss.margin == pytest.approx(0.2)


# ------------------------------------------------------------------------------------------ model, optim


def test_optimizer_split_is_disjoint_and_complete() -> None:
    cfg = _tiny_cfg(lr_backbone=1e-4, lr_head=1e-2)
    model = build_embedder(cfg)
    loss_fn = build_loss(cfg, num_classes=4)
    backbone, head = split_parameters(model, loss_fn)
    ids_b, ids_h = {id(p) for p in backbone}, {id(p) for p in head}
    everything = {id(p) for p in [*model.parameters(), *loss_fn.parameters()]}
    assert ids_b and ids_h and not ids_b & ids_h
    assert ids_b | ids_h == everything
    assert id(loss_fn.loss.W) in ids_h and all(id(p) in ids_h for p in model.head.parameters())
    opt_b, opt_h = build_optimizers(cfg, model, loss_fn)
    assert {id(p) for g in opt_b.param_groups for p in g["params"]} == ids_b
    assert {id(p) for g in opt_h.param_groups for p in g["params"]} == ids_h
    assert opt_b.param_groups[0]["lr"] == 1e-4 and opt_h.param_groups[0]["lr"] == 1e-2


def test_embedder_outputs_unit_vectors() -> None:
    torch.manual_seed(0)
    model = build_embedder(_tiny_cfg(embedding_dim=16)).eval()
    with torch.no_grad():
        out = model(torch.randn(3, 3, 64, 64))
    assert out.shape == (3, 16)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))


def test_pretrained_path_loads_local_timm_file(tmp_path: Path) -> None:
    import timm

    torch.manual_seed(1)
    source = timm.create_model(TINY_BACKBONE, num_classes=1000)  # a full ImageNet-style checkpoint
    weights = tmp_path / "backbone.pth"
    torch.save(source.state_dict(), weights)
    model = build_embedder(_tiny_cfg(pretrained_path=str(weights)))
    expected = source.state_dict()
    loaded = model.backbone.state_dict()
    assert set(loaded) == set(expected) - {"classifier.weight", "classifier.bias"}
    assert all(torch.equal(loaded[k], expected[k]) for k in loaded)
    with pytest.raises(ModelLoadError, match="pretrained_path"):
        build_embedder(_tiny_cfg(pretrained_path=str(tmp_path / "missing.pth")))


def test_unknown_backbone_names_the_fix() -> None:
    with pytest.raises(ConfigError, match="not a timm model"):
        build_embedder(_tiny_cfg(backbone="efficientnet_b99"))


def test_embedder_metadata_fields() -> None:
    cfg = _tiny_cfg(embedding_dim=64, unknown_threshold=0.42)
    meta = embedder_metadata(cfg, "0123456789abcdef")
    assert (meta.name, meta.output, meta.embedding_dim, meta.l2_normalized) == ("embedder", "embedding", 64, True)
    assert meta.fingerprint == "0123456789abcdef" and meta.threshold == 0.42
    assert meta.input.size_px == 64 and meta.architecture == f"{TINY_BACKBONE}+fc32-64"
    assert meta.extra["crop_margin_frac"] == cfg.crop_margin_frac
    assert embedder_metadata(_tiny_cfg(), "f").threshold is None  # uncalibrated: the SDK decides
    assert "crop_mask" not in meta.extra  # the exact mask: the spec's default, metadata as before
    hull = embedder_metadata(_tiny_cfg(crop_mask="convex_hull"), "f")
    assert hull.extra["crop_mask"] == "convex_hull"  # the SDK then crops as the training did
    with pytest.raises(ValueError, match="crop_mask='circle': must be one of"):
        _tiny_cfg(crop_mask="circle")


def test_augment_keeps_size_and_dtype(sample_root: Path) -> None:
    image = letterbox(load_image(next((sample_root / "euro_phone" / "images").rglob("*.jpg"))), 64)[0]
    aug = build_augment(AugmentConfig())
    aug.set_random_seed(3)
    out = aug(image=image)["image"]
    assert out.shape == image.shape and out.dtype == np.uint8 and not np.array_equal(out, image)


# ---------------------------------------------------------------------------------------------- retrieval


def _two_d_example():
    catalog = np.array([_unit(0), _unit(10), _unit(90), _unit(180)])
    catalog_labels = ["A", "A", "B", "C"]
    queries = np.array([_unit(5), _unit(60), _unit(170)])
    query_labels = ["A", "A", "C"]
    return queries, query_labels, catalog, catalog_labels


def test_retrieval_metrics_on_hand_built_2d_example() -> None:
    q, ql, c, cl = _two_d_example()
    m = evaluate_retrieval(q, ql, c, cl, query_groups=["g1", "g1", "g2"])
    # q@60deg: neighbours B(90), A(10), A(0), C(180): its class A ranks 2nd -> miss at 1, hit at 2
    assert m.recall_at == {1: pytest.approx(2 / 3), 2: 1.0, 5: 1.0, 10: 1.0, 20: 1.0}
    # MAP@R: q5 (R=2: A, A) 1; q60 (R=2: B, A) (1/2)/2; q170 (R=1: C) 1
    assert m.map_at_r == pytest.approx((1 + 0.25 + 1) / 3)
    assert m.class_mean_recall_at_1 == pytest.approx((0.5 + 1.0) / 2)
    assert m.recall_at_1_by_group == {"g1": 0.5, "g2": 1.0}
    assert (m.n_query, m.n_catalog, m.n_catalog_classes, m.n_unanswerable) == (3, 4, 3, 0)


def test_recall_counts_classes_not_neighbours() -> None:
    # query at 14 deg: three A vectors (10, 12, 14 deg away) crowd the top-3 neighbours; B (16 deg away) is
    # only the 4th neighbour but the 2nd CLASS
    catalog = np.array([_unit(0), _unit(2), _unit(4), _unit(30)])
    m = evaluate_retrieval(np.array([_unit(14)]), ["B"], catalog, ["A", "A", "A", "B"], ks=(1, 2, 3))
    assert m.recall_at == {1: 0.0, 2: 1.0, 3: 1.0}


def test_retrieval_leaves_out_queries_without_catalog_class() -> None:
    q, ql, c, cl = _two_d_example()
    m = evaluate_retrieval(np.vstack([q, [_unit(90)]]), [*ql, "Z"], c, cl)
    assert m.n_unanswerable == 1 and m.recall_at[1] == pytest.approx(2 / 3)
    with pytest.raises(DatasetError, match="no query class"):
        evaluate_retrieval(q, ["X", "Y", "Z"], c, cl)
    with pytest.raises(DatasetError, match="NaN"):
        evaluate_retrieval(np.zeros((3, 2)), ql, c, cl)


def test_unknown_threshold_calibration_on_2d_example() -> None:
    q, ql, c, cl = _two_d_example()
    calib = calibrate_unknown_threshold(q, ql, c, cl, target_unknown_accept=0.0)
    # hidden-class best cosines: q5 -> B cos85, q60 -> B cos30, q170 -> B cos80; the threshold passes none
    assert calib.threshold == pytest.approx(math.cos(math.radians(30)), abs=1e-6)
    assert calib.threshold > math.cos(math.radians(30))
    assert calib.unknown_accept_rate == 0.0
    # own-class best cosines cos5, cos50, cos10: cos50 < cos30
    assert calib.known_accept_rate == pytest.approx(2 / 3)


# ----------------------------------------------------------------------------------------------- crop cache


def _tiny_segmenter_checkpoint(path: Path, head_bias: float) -> Path:
    """A real smp U-Net whose head says "coin everywhere" (bias > 0) or "no coin" (bias < 0)."""
    from coinvision.trainer.seg_model import SegmenterConfig, build_segmenter

    cfg = SegmenterConfig(encoder="tu-mobilenetv2_035", size_px=64, decoder_channels=(16, 8, 8, 8, 8))
    model = build_segmenter(cfg)
    head = model.segmentation_head[0]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(head_bias)
    return save_checkpoint(path, Checkpoint("segmenter", config_to_dict(cfg), model.state_dict()))


def _photos(sample_root: Path, n: int = 4) -> list[Path]:
    return sorted((sample_root / "euro_phone" / "images").rglob("*.jpg"))[:n]


def test_crop_cache_second_run_reuses_every_crop(tmp_path: Path, sample_root: Path) -> None:
    source = crop_source_from_checkpoint(_tiny_segmenter_checkpoint(tmp_path / "seg.pt", 8.0), 48, 0.05)
    photos = _photos(sample_root)
    first = CropCache(tmp_path / "cache", source)
    crops = first.build(photos, progress=False)
    assert (first.computed, first.reused, first.no_coin) == (4, 0, 0)
    assert all(c.found and c.path.is_file() and read_crop(c.path).shape == (48, 48, 3) for c in crops)
    mtimes = [c.path.stat().st_mtime_ns for c in crops]

    again = CropCache(tmp_path / "cache", source)
    assert [c.path for c in again.build(photos, progress=False)] == [c.path for c in crops]
    assert (again.computed, again.reused) == (0, 4)
    assert [c.path.stat().st_mtime_ns for c in crops] == mtimes
    # the key holds the segmenter fingerprint: another segmenter gets its own folder, recomputed
    other = crop_source_from_checkpoint(_tiny_segmenter_checkpoint(tmp_path / "seg2.pt", 9.0), 48, 0.05)
    assert other.key != source.key
    third = CropCache(tmp_path / "cache", other)
    third.build(photos[:1], progress=False)
    assert third.computed == 1


def test_crop_cache_counts_no_coin_and_letterboxes(tmp_path: Path, sample_root: Path) -> None:
    source = crop_source_from_checkpoint(_tiny_segmenter_checkpoint(tmp_path / "seg.pt", -8.0), 48, 0.05)
    photos = _photos(sample_root, 2)
    cache = CropCache(tmp_path / "cache", source)
    crops = cache.build(photos, progress=False)
    assert cache.no_coin == 2 and cache.no_coin_paths == photos
    assert not any(c.found for c in crops) and all(".nocoin" in c.path.name for c in crops)
    expected = letterbox(load_image(photos[0]), 48)[0]
    assert np.abs(read_crop(crops[0].path).astype(int) - expected.astype(int)).max() == 0  # PNG is lossless
    again = CropCache(tmp_path / "cache", source)
    again.build(photos, progress=False)
    assert (again.computed, again.no_coin) == (0, 2)  # the fallback count survives a rerun


def test_embedding_data_holds_validation_classes_out_of_training(tmp_path: Path, sample_root: Path) -> None:
    cfg = _tiny_cfg(background_removal=False, crop_cache_dir=str(tmp_path / "cache"), max_queries_per_class=2,
                    data_roots=(str(sample_root / "coins211"), str(sample_root / "euro_phone")))
    data = load_embedding_data(cfg, progress=False)
    train = {s.class_key for s in data.train}
    unseen = {s.class_key for s in data.catalog} | {s.class_key for s in data.query}
    assert train and unseen and not train & unseen
    assert {s.class_key for s in data.val_seen} <= train and {s.class_key for s in data.distractors} <= train
    assert data.class_keys == sorted(train) and data.label_of(data.train[0]) == sorted(train).index(
        data.train[0].class_key)
    assert max(Counter(s.class_key for s in data.query).values()) <= 2
    assert max(Counter(s.class_key for s in data.distractors).values()) <= 3
    assert {s.image_path for s in data.distractors} <= {s.image_path for s in data.train}
    assert all(s.crop_path.parent == data.cache_folder for s in data.train)


def test_move_outline_grows_and_shrinks_by_whole_pixel_rings() -> None:
    square = np.zeros((41, 41), bool)
    square[10:31, 10:31] = True
    assert move_outline(square, 0) is square
    for offset in (-2, -1, 1, 2):  # a 3x3 step reaches every 8-neighbour: a square grows or shrinks by whole rings
        expected = np.zeros_like(square)
        expected[10 - offset:31 + offset, 10 - offset:31 + offset] = True
        np.testing.assert_array_equal(move_outline(square, offset), expected)
    disc = np.zeros((41, 41), np.uint8)
    cv2.circle(disc, (20, 20), 10, 1, -1)
    disc = disc > 0
    assert (move_outline(disc, 1) >= disc).all() and (move_outline(disc, -1) <= disc).all()
    assert not move_outline(np.eye(5, dtype=bool), -1).any()  # a 1-px line does not survive an erosion


def test_moved_outline_crops_are_the_release_crops_of_the_moved_mask(sample_root: Path) -> None:
    source = crop_source_from_models_dir(REPO_ROOT / "models" / "release", "tflite", 64)
    photo = load_image(_photos(sample_root, 1)[0])
    mask = source.segmenter.segment(photo).mask
    assert mask is not None
    for offset in (-1, 1):
        moved = dataclasses.replace(source, outline_offset_px=offset)
        assert moved.key == f"{source.key}_o{offset:+d}"  # the unmoved key, and so every existing cache, unchanged
        crop, found = moved.crop(photo)
        assert found
        np.testing.assert_array_equal(crop, coin_crop(photo, move_outline(mask, offset), 64))
        assert not np.array_equal(crop, source.crop(photo)[0])


def test_outline_jitter_gives_training_photos_moved_crops_and_draws_one_per_epoch(tmp_path: Path,
                                                                                  sample_root: Path) -> None:
    cfg = _tiny_cfg(segmenter_models_dir=str(REPO_ROOT / "models" / "release"), segmenter_runtime="tflite",
                    outline_jitter_px=1, crop_cache_dir=str(tmp_path / "cache"), max_queries_per_class=2,
                    data_roots=(str(sample_root / "euro_phone"),))
    data = load_embedding_data(cfg, progress=False)
    unmoved_key = make_crop_source(dataclasses.replace(cfg, outline_jitter_px=0)).key
    assert data.cache_folder == tmp_path / "cache" / unmoved_key
    for sample in data.train:
        assert [p.parent.name for p in sample.jitter_paths] == [f"{unmoved_key}_o-1", f"{unmoved_key}_o+1"]
        assert all(p.is_file() and p.name == sample.crop_path.name for p in sample.jitter_paths)
    assert not any(s.jitter_paths for s in data.val_seen + data.catalog + data.query + data.distractors)

    labels = [data.label_of(s) for s in data.train]
    plain = CropTensorSet(data.train, labels, cfg.input_spec)
    assert plain.outline_path(0) == data.train[0].crop_path  # validation and caches see the unmoved crop
    augment = build_augment(cfg.augment)
    drawn = [CropTensorSet(data.train, labels, cfg.input_spec, augment, seed=3, epoch=e).outline_path(0)
             for e in range(24)]
    assert set(drawn) == {data.train[0].crop_path, *data.train[0].jitter_paths}
    again = [CropTensorSet(data.train, labels, cfg.input_spec, augment, seed=3, epoch=e).outline_path(0)
             for e in range(24)]
    assert drawn == again  # a resumed run draws the same outlines
    image, _ = CropTensorSet(data.train, labels, cfg.input_spec, augment, seed=3, epoch=0)[0]
    assert tuple(image.shape) == (3, 64, 64)


@pytest.mark.parametrize("overrides", [{"outline_jitter_px": 4}, {"outline_jitter_px": -1},
                                       {"outline_jitter_px": 1, "background_removal": False}])
def test_outline_jitter_out_of_range_or_without_a_segmenter_is_refused(overrides: dict) -> None:
    with pytest.raises(ValueError, match="outline_jitter_px"):
        _tiny_cfg(**overrides)


def test_background_removal_without_segmenter_names_the_fix() -> None:
    with pytest.raises(ConfigError, match="segmenter_checkpoint"):
        make_crop_source(_tiny_cfg(background_removal=True))
    assert isinstance(make_crop_source(_tiny_cfg(background_removal=False)), LetterboxCropSource)


# ------------------------------------------------------------------------------------------ tiny training


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, sample_root: Path) -> Path:
    """One epoch of 2 steps through the CLI, on the bundled sample photos (no segmenter: letterboxed)."""
    root = tmp_path_factory.mktemp("emb_run")
    config = root / "tiny.yaml"
    config.write_text(
        f"backbone: {TINY_BACKBONE}\nsize_px: 64\nhead_hidden_dims: [32]\nbatch_size: 8\nepochs: 1\n"
        f"steps_per_epoch: 2\nbackground_removal: false\nnum_threads: 1\n"
        f"data_roots: [{sample_root / 'coins211'}, {sample_root / 'euro_phone'}]\n"
    )
    rc = main(["train", "embedder", "--config", str(config), "--set", f"out_dir={root / 'run'}",
               f"crop_cache_dir={root / 'cache'}"])
    assert rc == 0
    return root


def test_tiny_train_writes_checkpoints_history_and_plots(tiny_run: Path) -> None:
    run = tiny_run / "run"
    for name in ("best.pt", "last.pt", "config.yaml", "history.csv", "history.json", "curves.png", "recall_at_k.png"):
        assert (run / name).is_file(), name
    history = json.loads((run / "history.json").read_text())
    assert len(history) == 1
    row = history[0]
    for key in ("train_loss", "val_seen_loss", "recall@1", "recall@20", "map@r", "recall@1[euro_phone]"):
        assert math.isfinite(row[key]), key
    assert 0.0 <= row["recall@1"] <= row["recall@2"] <= row["recall@5"] <= 1.0
    # more catalog classes (training-class distractors) can only push the right class down
    assert all(row[f"full_recall@{k}"] <= row[f"recall@{k}"] for k in (1, 2, 5, 10, 20))
    model, cfg, ckpt = load_embedder(run / "best.pt")
    assert ckpt.epoch == 1 and cfg.backbone == TINY_BACKBONE
    assert cfg.unknown_threshold == pytest.approx(row["unknown_threshold"])  # calibrated value travels
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))
    assert (tiny_run / "cache" / "letterbox_64px").is_dir()


def test_tiny_train_resumes_from_last(tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run / "run", run)
    first = load_checkpoint(run / "last.pt")
    rc = main(["train", "embedder", "--config", str(tiny_run / "tiny.yaml"), "--resume", "--set", "epochs=2",
               f"out_dir={run}", f"crop_cache_dir={tiny_run / 'cache'}"])
    assert rc == 0
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[0] == json.loads((tiny_run / "run" / "history.json").read_text())[0]
    last = load_checkpoint(run / "last.pt")
    assert last.epoch == 2 and last.fingerprint != first.fingerprint
    # optimizers and schedules continued (2 + 2 steps) instead of restarting
    state = last.training_state
    assert state["sched_head"]["last_epoch"] == 4 and state["sched_backbone"]["last_epoch"] == 4
    assert all(float(s["step"]) == 4 for s in state["opt_head"]["state"].values())
    assert state["sched_head"]["total_steps"] == 4  # the schedule was stretched to the new length


def test_eval_retrieval_cli_torch_finds_each_image_itself(tiny_run: Path, tmp_path: Path, sample_root: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(tiny_run / "run" / "best.pt", models / "embedder.pt")
    _tiny_segmenter_checkpoint(models / "segmenter.pt", 8.0)  # --runtime torch runs the whole pipeline in PyTorch
    folder = sample_root / "euro_phone" / "images"
    rc = main(["eval", "retrieval", str(folder), str(folder), "--models", str(models), "--runtime", "torch",
               "--plot", str(tmp_path / "bar.png")])
    assert rc == 0
    out = capsys.readouterr().out
    # catalog == query: every photo's nearest catalog vector is itself, whatever the weights
    assert "40 queries (0 unanswerable), 40 catalog images in 8 classes" in out
    assert "   1    1.0000" in out
    assert (tmp_path / "bar.png").is_file()


@pytest.fixture
def recognizer_available() -> None:
    pytest.importorskip("coinvision.sdk.recognizer")  # the SDK part, built in parallel


def test_eval_retrieval_cli_onnx_through_recognizer(recognizer_available: None, tiny_models_dir: Path,
                                                    sample_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = sample_root / "euro_phone" / "images"
    rc = main(["eval", "retrieval", str(folder), str(folder), "--models", str(tiny_models_dir), "--runtime", "onnx",
               "--distractors", str(sample_root / "coins211" / "images"), "--distractors-per-class", "2",
               "--calibrate-unknown", "0.05"])
    assert rc == 0
    out = capsys.readouterr().out
    # the 24 coins211 sample classes join the catalog with 2 photos each
    assert "40 queries (0 unanswerable), 88 catalog images in 32 classes" in out
    assert "unknown-coin threshold" in out and "of simulated unknown coins through" in out


def test_eval_retrieval_cli_bad_folder_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["eval", "retrieval", str(tmp_path / "nope"), str(tmp_path / "nope"), "--models", str(tmp_path)])
    assert rc == 2
    assert "error:" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize("name", ["embedder_lite0.yaml", "embedder_mobilenetv2.yaml", "embedder_effb0.yaml"])
def test_release_configs_resolve(name: str) -> None:
    cfg = resolve_config(EmbedderConfig, REPO_ROOT / "trainer" / "configs" / name)
    assert cfg.margin_rad == 0.2 and cfg.scale == 25.0 and cfg.embedding_dim == 64
    assert len(cfg.data_roots) == 2
