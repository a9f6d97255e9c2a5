"""The frozen branch beside a trained embedder: one model whose cosine is ``(1 - w) cos_trained + w cos_branch``,
the branch seeing the input its weights expect, a PCA fitted on real photos cut by the shipped segmenter, the
base weights untouched, and typed errors (a second branch, training a model with a branch)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from coinvision.sdk.errors import ConfigError, DatasetError
from coinvision.sdk.files import list_images
from coinvision.trainer.checkpoint import Checkpoint, fingerprint_state_dict, save_checkpoint
from coinvision.trainer.config_io import config_to_dict
from coinvision.trainer.emb_branch import PCA_VIEWS, BranchSpec, fit_branch, whitened_pca
from coinvision.trainer.emb_model import EmbedderConfig, build_embedder, embedder_metadata, load_embedder
from coinvision.trainer.emb_train import train_embedder

RELEASE = Path(__file__).resolve().parents[2] / "models" / "release"
BRANCH = {"branch_backbone": "tf_efficientnet_lite0", "branch_dims": 8, "branch_weight": 0.3}


def _cfg(**overrides) -> EmbedderConfig:
    values = {"backbone": "mobilenetv2_035", "size_px": 64, "head_hidden_dims": (32,), "embedding_dim": 16,
              "crop_interpolation": "bilinear"}
    return EmbedderConfig(**{**values, **overrides})


def test_cosine_of_the_concatenation_is_the_weighted_sum_of_both_cosines() -> None:
    torch.manual_seed(0)
    model = build_embedder(_cfg(**BRANCH)).eval()
    with torch.no_grad():
        model.branch.pca_projection.normal_()
        x = torch.randn(5, 3, 64, 64)
        out = model(x)
        trained, branch = model.embed_features(model.backbone(x)), model.branch(x)
    assert out.shape == (5, 24)
    assert torch.allclose(out.norm(dim=1), torch.ones(5), atol=1e-5)
    want = 0.7 * (trained @ trained.T) + 0.3 * (branch @ branch.T)
    assert torch.allclose(out @ out.T, want, atol=1e-5)
    # the mix is part of the weights: a pack of the 0.3 model must not pass as one of a 0.2 model
    other = build_embedder(_cfg(**{**BRANCH, "branch_weight": 0.2}))
    other.load_state_dict({k: v for k, v in model.state_dict().items() if k != "branch_mix"}, strict=False)
    assert fingerprint_state_dict(other.state_dict()) != fingerprint_state_dict(model.state_dict())
    meta = embedder_metadata(_cfg(**BRANCH), "f" * 16)
    assert meta.embedding_dim == 24 and meta.extra["branch_weight"] == 0.3
    assert meta.architecture.endswith("|tf_efficientnet_lite0+pca8")


def test_branch_sees_its_own_normalisation_of_the_same_pixels() -> None:
    """The model's input is normalised for the trained backbone (ImageNet mean/std); the branch re-normalises it to
    EfficientNet-Lite's (x - 0.5) / 0.5 inside the graph."""
    model = build_embedder(_cfg(**BRANCH)).eval()
    pixels = torch.rand(2, 3, 64, 64)
    mean = torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
    with torch.no_grad():
        got = model.branch.pooled((pixels - mean) / std)
        want = torch.nn.functional.normalize(model.branch.backbone((pixels - 0.5) / 0.5), dim=1)
    assert torch.allclose(got, want, atol=1e-5)


def test_whitened_pca_decorrelates_and_refuses_too_few_rows() -> None:
    rows = np.random.default_rng(0).standard_normal((200, 12)) @ np.random.default_rng(1).standard_normal((12, 12))
    mean, projection = whitened_pca(rows, 4)
    projected = (rows - mean) @ projection
    cov = np.cov(projected.T)
    assert np.allclose(projected.mean(axis=0), 0, atol=1e-9)
    assert np.allclose(cov - np.diag(np.diag(cov)), 0, atol=1e-9)
    assert np.all(np.diff(np.diag(cov)) <= 1e-12)  # leading directions first
    with pytest.raises(DatasetError, match="cannot fit a 4-d PCA"):
        whitened_pca(rows[:4], 4)


def test_fit_branch_on_real_photos_keeps_the_base_and_loads_back(tmp_path: Path, sample_root: Path) -> None:
    torch.manual_seed(0)
    base_cfg = _cfg(crop_cache_dir=str(tmp_path / "crops"), embed_rotations=2)
    base = build_embedder(base_cfg).eval()
    save_checkpoint(tmp_path / "base.pt", Checkpoint(kind="embedder", config=config_to_dict(base_cfg),
                                                     state_dict=base.state_dict(), epoch=3))
    photos = list_images(sample_root / "coins211")[:12]
    weights = tmp_path / "lite0.pth"  # random Lite0 weights through the real local-file path
    torch.save(timm.create_model("tf_efficientnet_lite0").state_dict(), weights)
    spec = BranchSpec(pretrained_path=str(weights), dims=8, weight=0.3, embed_rotations=1)
    out = fit_branch(tmp_path / "base.pt", photos, tmp_path / "branch.pt", spec, segmenter_models_dir=RELEASE,
                     calibration=(sample_root / "euro_phone" / "images",) * 2, progress=False)
    model, cfg, ckpt = load_embedder(out)
    assert cfg.branch_backbone == "tf_efficientnet_lite0" and cfg.output_dim == 24
    assert cfg.unknown_threshold == ckpt.metrics["unknown_threshold"] and -1.0 < cfg.unknown_threshold <= 1.0
    assert ckpt.metrics["branch_fit_photos"] == 12 and ckpt.metrics["branch_fit_rows"] == 12 * PCA_VIEWS
    assert cfg.embed_rotations == 1  # the SDK's views: set by the spec, independent of the PCA's
    for name, tensor in base.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    assert float(model.branch.pca_projection.abs().sum()) > 0
    with torch.no_grad():
        y = model(torch.randn(3, 3, 64, 64))
    assert torch.allclose(y[:, :16].norm(dim=1), torch.full((3,), math.sqrt(0.7)), atol=1e-5)
    again = fit_branch(out, photos, tmp_path / "again.pt", spec, segmenter_models_dir=RELEASE, progress=False)
    refit, refit_cfg, _ = load_embedder(again)  # the branch is replaced: same photos, same PCA
    assert torch.equal(refit.branch.pca_projection, model.branch.pca_projection)
    assert refit_cfg.unknown_threshold is None  # not recalibrated: none rather than a stale one


def test_training_a_model_with_a_branch_is_refused() -> None:
    with pytest.raises(ConfigError, match="embedder-branch"):
        train_embedder(_cfg(**BRANCH))


COMPANION = {**BRANCH, "branch_weight": 0.2, "companion_weight": 0.4}


def test_companion_cosine_is_the_weighted_sum_of_three_cosines() -> None:
    torch.manual_seed(0)
    model = build_embedder(_cfg(**COMPANION)).eval()
    with torch.no_grad():
        model.branch.pca_projection.normal_()
        x = torch.randn(5, 3, 64, 64)
        out = model(x)
        trained, companion, branch = model.embed_features(model.backbone(x)), model.companion(x), model.branch(x)
    assert out.shape == (5, 16 + 16 + 8)
    assert not torch.allclose(trained, companion)  # its own weights, not a second reference to the base's
    want = 0.4 * (trained @ trained.T) + 0.4 * (companion @ companion.T) + 0.2 * (branch @ branch.T)
    assert torch.allclose(out @ out.T, want, atol=1e-5)
    meta = embedder_metadata(_cfg(**COMPANION), "f" * 16)
    assert meta.embedding_dim == 40 and meta.extra["companion_weight"] == 0.4
    assert meta.architecture == "mobilenetv2_035+fc32-16|mobilenetv2_035+fc32-16|tf_efficientnet_lite0+pca8"
    with pytest.raises(ValueError, match="companion_weight"):
        _cfg(**{**COMPANION, "companion_weight": 0.8})  # nothing left for the trained base
    with pytest.raises(ConfigError, match="--companion"):
        train_embedder(_cfg(companion_weight=0.4))


def test_fit_branch_with_a_companion_keeps_both_trained_runs(tmp_path: Path, sample_root: Path) -> None:
    cfg = _cfg(crop_cache_dir=str(tmp_path / "crops"))
    for seed, name in ((0, "base.pt"), (1, "other.pt")):
        torch.manual_seed(seed)
        save_checkpoint(tmp_path / name, Checkpoint(kind="embedder", config=config_to_dict(cfg),
                                                    state_dict=build_embedder(cfg).state_dict(), epoch=1))
    weights = tmp_path / "lite0.pth"
    torch.save(timm.create_model("tf_efficientnet_lite0").state_dict(), weights)
    spec = BranchSpec(pretrained_path=str(weights), dims=8, weight=0.2)
    photos = list_images(sample_root / "coins211")[:12]
    out = fit_branch(tmp_path / "base.pt", photos, tmp_path / "pair.pt", spec, segmenter_models_dir=RELEASE,
                     companion=(tmp_path / "other.pt", 0.4), progress=False)
    model, pair_cfg, ckpt = load_embedder(out)
    other, _, other_ckpt = load_embedder(tmp_path / "other.pt")
    base, _, _ = load_embedder(tmp_path / "base.pt")
    assert pair_cfg.output_dim == 40 and ckpt.metrics["companion_fingerprint"] == other_ckpt.fingerprint
    for name, tensor in other.state_dict().items():
        assert torch.equal(model.companion.state_dict()[name], tensor), name
    for name, tensor in base.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    # re-fitting the branch of the combined model keeps its companion (a fresh clone recovers it from ONNX)
    again, again_cfg, _ = load_embedder(fit_branch(out, photos, tmp_path / "again.pt", spec,
                                                   segmenter_models_dir=RELEASE, progress=False))
    assert again_cfg.companion_weight == 0.4
    assert torch.equal(again.companion.head[-1].weight, other.head[-1].weight)
    wider = _cfg(head_hidden_dims=(24,))
    save_checkpoint(tmp_path / "wider.pt", Checkpoint(kind="embedder", config=config_to_dict(wider),
                                                      state_dict=build_embedder(wider).state_dict(), epoch=1))
    with pytest.raises(ConfigError, match="head_hidden_dims"):
        fit_branch(tmp_path / "base.pt", photos, tmp_path / "bad.pt", spec, segmenter_models_dir=RELEASE,
                   companion=(tmp_path / "wider.pt", 0.4), progress=False)
    assert not (tmp_path / "bad.pt").exists()
