"""Whitening a finished embedder's output: one matrix at the end of the graph, fitted on real photos cut by the
shipped segmenter, the parts' weights untouched, replaced (not stacked) when fitted again, dropped when the branch
it was fitted to is refitted, and named in the metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from coinvision.sdk.errors import ConfigError
from coinvision.sdk.files import list_images
from coinvision.trainer.checkpoint import Checkpoint, fingerprint_state_dict, save_checkpoint
from coinvision.trainer.config_io import config_to_dict
from coinvision.trainer.emb_branch import PCA_VIEWS, BranchSpec, fit_branch, whitened_pca
from coinvision.trainer.emb_model import EmbedderConfig, build_embedder, embedder_metadata, load_embedder
from coinvision.trainer.emb_train import train_embedder
from coinvision.trainer.emb_whiten import fit_whitening

RELEASE = Path(__file__).resolve().parents[2] / "models" / "release"


def _cfg(tmp_path: Path, **overrides) -> EmbedderConfig:
    values = {"backbone": "mobilenetv2_035", "size_px": 64, "head_hidden_dims": (32,), "embedding_dim": 16,
              "crop_interpolation": "bilinear", "crop_cache_dir": str(tmp_path / "crops")}
    return EmbedderConfig(**{**values, **overrides})


def test_shrink_floors_the_small_directions_and_zero_keeps_the_plain_half_whitening() -> None:
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((300, 6)) * np.array([10.0, 5.0, 2.0, 1.0, 0.1, 0.01])
    mean, plain = whitened_pca(rows, 6)
    _, floored = whitened_pca(rows, 6, shrink=1.0)
    plain_var = np.var((rows - mean) @ plain, axis=0)
    floored_var = np.var((rows - mean) @ floored, axis=0)
    # half whitening: variance sigma -> sqrt(sigma), so the 1e-4 direction still weighs 1e-2 of the largest
    assert plain_var[-1] / plain_var[0] == pytest.approx(np.sqrt(0.01**2 / 10.0**2), rel=0.2)
    # with the floor it weighs far less: a noise direction is not lifted to the design's level
    assert floored_var[-1] / floored_var[0] < plain_var[-1] / plain_var[0] / 10
    with pytest.raises(ConfigError, match="shrink=-1"):
        whitened_pca(rows, 6, shrink=-1.0)


def test_whitened_output_is_the_normalised_projection_of_the_mixed_vector(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = _cfg(tmp_path, whiten=True)
    model = build_embedder(cfg).eval()
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), model.mixed(x), atol=1e-6)  # identity until fitted
        model.whiten_mean.normal_()
        model.whiten_projection.normal_()
        want = F.normalize((model.mixed(x) - model.whiten_mean) @ model.whiten_projection, dim=1)
        assert torch.allclose(model(x), want, atol=1e-6)
    meta = embedder_metadata(cfg, "f" * 16)
    assert meta.extra["whiten"] is True and meta.architecture.endswith("|whiten") and meta.embedding_dim == 16
    assert "whiten" not in embedder_metadata(_cfg(tmp_path), "f" * 16).extra
    with pytest.raises(ConfigError, match="embedder-whiten"):
        train_embedder(cfg)


def test_fit_whitening_on_real_photos_keeps_the_parts_and_is_dropped_by_a_branch_refit(
        tmp_path: Path, sample_root: Path) -> None:
    torch.manual_seed(0)
    cfg = _cfg(tmp_path)
    base = build_embedder(cfg).eval()
    save_checkpoint(tmp_path / "base.pt", Checkpoint(kind="embedder", config=config_to_dict(cfg),
                                                     state_dict=base.state_dict(), epoch=2))
    photos = list_images(sample_root / "coins211")[:12]
    out = fit_whitening(tmp_path / "base.pt", photos, tmp_path / "white.pt", segmenter_models_dir=RELEASE,
                        calibration=(sample_root / "euro_phone" / "images",) * 2, progress=False)
    model, white_cfg, ckpt = load_embedder(out)
    assert white_cfg.whiten and white_cfg.output_dim == 16
    assert ckpt.metrics["whiten_fit_photos"] == 12 and ckpt.metrics["whiten_fit_rows"] == 12 * PCA_VIEWS
    assert -1.0 < white_cfg.unknown_threshold <= 1.0  # recalibrated for the new vectors
    for name, tensor in base.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    assert not torch.equal(model.whiten_projection, torch.eye(16))
    assert ckpt.fingerprint != fingerprint_state_dict(base.state_dict())
    with torch.no_grad():
        x = torch.randn(3, 3, 64, 64)
        y = model(x)
    assert torch.allclose(y.norm(dim=1), torch.ones(3), atol=1e-5)
    assert not torch.allclose(y, model.mixed(x), atol=1e-3)
    # fitted again on a whitened checkpoint: replaced, not stacked on the first
    again, again_cfg, _ = load_embedder(fit_whitening(out, photos, tmp_path / "again.pt", segmenter_models_dir=RELEASE,
                                                      progress=False))
    assert torch.allclose(again.whiten_projection, model.whiten_projection, atol=1e-6)
    assert again_cfg.unknown_threshold is None  # not recalibrated: none rather than a stale one
    # a branch refit changes the vector the whitening was fitted to: it is dropped, to be fitted again
    weights = tmp_path / "lite0.pth"
    torch.save(timm.create_model("tf_efficientnet_lite0").state_dict(), weights)
    refit, refit_cfg, _ = load_embedder(fit_branch(out, photos, tmp_path / "branch.pt",
                                                   BranchSpec(pretrained_path=str(weights), dims=8),
                                                   segmenter_models_dir=RELEASE, progress=False))
    assert not refit_cfg.whiten and not hasattr(refit, "whiten_projection")


def test_cli_whitens_a_checkpoint_with_the_default_floor(tmp_path: Path, sample_root: Path, capsys) -> None:
    from coinvision.cli.main import main

    cfg = _cfg(tmp_path)
    save_checkpoint(tmp_path / "base.pt", Checkpoint(kind="embedder", config=config_to_dict(cfg),
                                                     state_dict=build_embedder(cfg).state_dict(), epoch=1))
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in list_images(sample_root / "coins211")[:6]:
        (photos / path.name).symlink_to(path.resolve())
    assert main(["train", "embedder-whiten", str(tmp_path / "base.pt"), "--photos", str(photos), "--models",
                 str(RELEASE), "--out", str(tmp_path / "white.pt")]) == 0
    assert "shrink 1.0" in capsys.readouterr().out
    _, white_cfg, ckpt = load_embedder(tmp_path / "white.pt")
    assert white_cfg.whiten and ckpt.metrics["whiten_shrink"] == 1.0 and ckpt.metrics["whiten_fit_photos"] == 6
