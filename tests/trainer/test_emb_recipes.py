"""The embedder's recipe options: every selectable loss, the PCA-initialised head, similarity distillation,
m-per-class sampling, and a tiny real run of a pair loss with distillation on the bundled photos."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from coinvision.cli.main import main
from coinvision.sdk.preprocess import resize_square
from coinvision.trainer.config_io import resolve_config
from coinvision.trainer.emb_data import CropCache, Sample
from coinvision.trainer.emb_losses import LOSSES, build_loss, similarity_distillation
from coinvision.trainer.emb_model import EmbedderConfig, build_embedder, embedder_metadata
from coinvision.trainer.emb_train import _m_per_class_indices, embed_samples, init_head_from_pca

TINY_BACKBONE = "mobilenetv2_035"


def _cfg(**overrides) -> EmbedderConfig:
    values = {"backbone": TINY_BACKBONE, "size_px": 64, "head_hidden_dims": (), "batch_size": 8,
              "embedding_dim": 8}
    return EmbedderConfig(**{**values, **overrides})


def _separation(emb: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean same-class cosine minus mean other-class cosine of unit embeddings."""
    unit = torch.nn.functional.normalize(emb.detach(), dim=1)
    cos, same = unit @ unit.T, labels[:, None] == labels[None, :]
    off_diagonal = ~torch.eye(len(labels), dtype=torch.bool)
    return float(cos[same & off_diagonal].mean() - cos[~same].mean())


def _train_tiny(tmp_path: Path, sample_root: Path, **settings) -> None:
    """Two epochs of a tiny PCA-headed embedder through the CLI on the bundled photos (letterboxed), into
    ``tmp_path / "run"``; ``settings`` are EmbedderConfig keys on top of the tiny defaults."""
    config = {"backbone": TINY_BACKBONE, "size_px": 64, "head_hidden_dims": [], "head_init": "pca", "batch_size": 8,
              "epochs": 2, "background_removal": False, "num_threads": 1,
              "data_roots": [str(sample_root / "coins211"), str(sample_root / "euro_phone")], **settings}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    rc = main(["train", "embedder", "--config", str(tmp_path / "tiny.yaml"), "--set", f"out_dir={tmp_path / 'run'}",
               f"crop_cache_dir={tmp_path / 'cache'}"])
    assert rc == 0


@pytest.mark.parametrize("loss", LOSSES)
def test_every_loss_trains_the_embedding(loss: str) -> None:
    """Each loss gives a finite value and gradients on the embedding, and a few steps of it pull classes
    apart (mined losses change their pairs as they go, so their value itself need not fall)."""
    sampler = "m_per_class" if loss in ("triplet", "multi_similarity") else "shuffle"
    cfg = _cfg(loss=loss, sampler=sampler, m_per_class=4)
    torch.manual_seed(0)
    loss_fn = build_loss(cfg, num_classes=4)
    emb = torch.nn.Parameter(torch.randn(16, 8))
    labels = torch.arange(4).repeat_interleave(4)
    opt = torch.optim.SGD([emb, *loss_fn.parameters()], lr=0.5)
    before = _separation(emb, labels)
    for _ in range(30):
        value = loss_fn(torch.nn.functional.normalize(emb, dim=1), labels)
        assert math.isfinite(float(value))
        opt.zero_grad()
        value.backward()
        opt.step()
    assert _separation(emb, labels) > before + 0.05, loss


def test_pair_losses_require_m_per_class_batches() -> None:
    for loss in ("triplet", "multi_similarity"):
        with pytest.raises(ValueError, match="m_per_class"):
            _cfg(loss=loss)
    with pytest.raises(ValueError, match="divide batch_size"):
        _cfg(loss="triplet", sampler="m_per_class", m_per_class=3)
    with pytest.raises(ValueError, match="linear head"):
        _cfg(head_init="pca", head_hidden_dims=(32,))


def test_m_per_class_sampler_gives_m_photos_per_class_and_is_seeded() -> None:
    cfg = _cfg(loss="triplet", sampler="m_per_class", m_per_class=4)
    labels = [i % 6 for i in range(60)]
    order = _m_per_class_indices(labels, cfg, 32, epoch=0)
    assert len(order) == 32
    for batch in (order[:8], order[8:16]):
        counts = np.bincount([labels[i] for i in batch])
        assert set(counts[counts > 0]) == {4}
    assert order == _m_per_class_indices(labels, cfg, 32, epoch=0)
    assert order != _m_per_class_indices(labels, cfg, 32, epoch=1)


def test_similarity_distillation_is_zero_for_the_same_geometry() -> None:
    teacher = torch.randn(6, 32)
    rotation, _ = torch.linalg.qr(torch.randn(32, 32))
    assert float(similarity_distillation(teacher @ rotation, teacher)) < 1e-10  # rotation keeps every cosine
    assert float(similarity_distillation(torch.randn(6, 32), teacher)) > 0.01


def test_pca_head_reproduces_the_frozen_features_projection(sample_root: Path, tmp_path: Path) -> None:
    """After ``init_head_from_pca`` the embedding is the normalised PCA projection of the pooled features."""
    from coinvision.trainer.emb_data import LetterboxCropSource

    cfg = _cfg(head_init="pca", crop_cache_dir=str(tmp_path))
    paths = sorted((sample_root / "coins211" / "images").rglob("*.jpg"))[:24]
    cache = CropCache(tmp_path, LetterboxCropSource(64))
    samples = [Sample(cache.get(p).path, f"coins211/{p.parent.name}", p) for p in paths]
    classes = sorted({s.class_key for s in samples})
    labels = [classes.index(s.class_key) for s in samples]
    torch.manual_seed(0)
    model = build_embedder(cfg).eval()
    loss_fn = build_loss(cfg, len(classes))
    features = torch.from_numpy(embed_samples(model.backbone, samples, cfg, torch.device("cpu"), rotations=1,
                                              unit=False))
    kept = init_head_from_pca(model, loss_fn, features, labels, cfg)
    assert 0.0 < kept <= 1.0
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        feats = model.backbone(x)
        weight = model.head[-1].weight
        assert torch.allclose(weight @ weight.T, torch.eye(cfg.embedding_dim), atol=1e-4)  # orthonormal rows
        expected = torch.nn.functional.normalize(model.head[-1](feats), dim=1)
        torch.testing.assert_close(model(x), expected)
    # the ArcFace centres start at the classes' mean embeddings of the training crops
    train_emb = torch.from_numpy(embed_samples(model, samples, cfg, torch.device("cpu"), rotations=1))
    for c in range(len(classes)):
        mean = torch.nn.functional.normalize(train_emb[torch.tensor(labels) == c].mean(0), dim=0)
        torch.testing.assert_close(loss_fn.loss.W[:, c], mean, atol=1e-4, rtol=1e-4)


def test_metadata_carries_rotations_interpolation_and_backbone_normalisation() -> None:
    meta = embedder_metadata(EmbedderConfig(embed_rotations=4), "f" * 16)
    assert meta.extra["embed_rotations"] == 4
    assert meta.input.interpolation == "area"
    assert meta.input.mean == (0.5, 0.5, 0.5) and meta.input.std == (0.5, 0.5, 0.5)  # tf_efficientnet_lite0
    legacy = embedder_metadata(EmbedderConfig(backbone="mobilenetv2_100"), "f" * 16)
    assert legacy.input.mean == (0.485, 0.456, 0.406)


def test_tiny_multi_similarity_run_with_distillation(tmp_path: Path, sample_root: Path) -> None:
    _train_tiny(tmp_path, sample_root, freeze_backbone_epochs=1, steps_per_epoch=2, loss="multi_similarity",
                sampler="m_per_class", m_per_class=4, distill_weight=1.0, embed_rotations=4)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(math.isfinite(h["train_loss"]) and 0.0 <= h["recall@1"] <= 1.0 for h in history)
    assert math.isnan(history[0]["val_seen_acc"])  # a pair loss has no class weights to score against
    resolved = resolve_config(EmbedderConfig, tmp_path / "run" / "config.yaml")
    assert resolved.loss == "multi_similarity" and resolved.distill_weight == 1.0


def test_trunk_cache_top_equals_the_whole_backbone() -> None:
    """backbone_top(backbone_trunk(x)) is exactly backbone(x): training the top on cached activations trains
    the same network that is exported."""
    from coinvision.trainer.emb_trunk import backbone_top, backbone_trunk

    torch.manual_seed(0)
    backbone = build_embedder(_cfg()).backbone.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for stages in (1, 4, len(backbone.blocks)):
            torch.testing.assert_close(backbone_top(backbone, stages, backbone_trunk(backbone, stages, x)), backbone(x))
    with pytest.raises(ValueError, match="freeze_stages"):
        _cfg(trunk_cache_views=2)


def test_tiny_trunk_cached_run_keeps_the_trunk_and_trains_the_top(tmp_path: Path, sample_root: Path) -> None:
    _train_tiny(tmp_path, sample_root, freeze_backbone_epochs=0, steps_per_epoch=3, freeze_stages=4,
                trunk_cache_views=2, embed_rotations=2, distill_weight=1.0)
    from coinvision.trainer.emb_model import load_embedder

    model, cfg, _ = load_embedder(tmp_path / "run" / "last.pt")
    torch.manual_seed(cfg.seed)  # the trainer's seeded random start: the trunk must still be bit-identical
    start = build_embedder(cfg)
    for name, value in model.backbone.state_dict().items():
        if name.startswith(("conv_stem", "bn1", "blocks.0.", "blocks.1.", "blocks.2.", "blocks.3.")):
            assert torch.equal(value, start.backbone.state_dict()[name]) or "num_batches" in name, name
    changed = [n for n, v in model.backbone.state_dict().items()
               if n.startswith("blocks.5.") and not torch.equal(v, start.backbone.state_dict()[n])]
    assert changed  # the top learned
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(history) == 2 and all(0.0 <= h["recall@1"] <= 1.0 for h in history)


def test_trainer_crops_use_the_sdk_area_resampling(sample_root: Path, tmp_path: Path) -> None:
    """The crop cache (training) makes exactly the SDK's ``coin_crop`` with the config's interpolation, and the
    cache key changes with it, so bilinear crops of older runs are never reused for an area-resampled model."""
    from coinvision.sdk.images import load_image
    from coinvision.sdk.preprocess import coin_crop
    from coinvision.sdk.segmenter import Segmentation
    from coinvision.trainer.emb_data import CropTensorSet, SegmenterCropSource, read_crop

    photo = next((sample_root / "coins211" / "images").rglob("*.jpg"))
    image = load_image(photo)
    mask = np.zeros(image.shape[:2], bool)
    mask[10:-10, 12:-12] = True

    class FixedMask:  # the segmenter's interface: segment(image) -> Segmentation
        def __init__(self, fixed: np.ndarray) -> None:
            self.fixed = fixed

        def segment(self, _image: np.ndarray) -> Segmentation:
            return Segmentation(mask=self.fixed, bbox=None, passes=1)

    area = SegmenterCropSource(FixedMask(mask), "f" * 16, 48, 0.05, EmbedderConfig().crop_interpolation)
    bilinear = SegmenterCropSource(FixedMask(mask), "f" * 16, 48, 0.05, "bilinear")
    assert area.key != bilinear.key and area.key.endswith("_area")
    np.testing.assert_array_equal(area.crop(image)[0], coin_crop(image, mask, 48, interpolation="area"))
    assert not np.array_equal(area.crop(image)[0], bilinear.crop(image)[0])
    # the convex-hull crop (embedder metadata crop_mask) is the SDK's too, and cached apart; a notch shows it
    notched = mask.copy()
    notched[20:40, -40:] = False
    hull = SegmenterCropSource(FixedMask(notched), "f" * 16, 48, 0.05, "area", "convex_hull")
    assert hull.key == area.key + "_convex_hull"
    np.testing.assert_array_equal(hull.crop(image)[0],
                                  coin_crop(image, notched, 48, interpolation="area", crop_mask="convex_hull"))
    np.testing.assert_array_equal(hull.crop(image)[0], area.crop(image)[0])  # the notch closed: the whole square
    # a cached crop of another size is resized by the same SDK function when the dataset reads it
    cached = CropCache(tmp_path, area).get(photo)
    spec = _cfg(size_px=32).input_spec
    square = CropTensorSet([Sample(cached.path, "coins211/x", photo)], [0], spec).square(0)
    np.testing.assert_array_equal(square, resize_square(read_crop(cached.path), 32, "area"))
