"""Whiten a finished embedder's output: the training-free lever that comes last, after every part is in place.

The parts of a shipped embedder (trained heads, companion, frozen branch) are concatenated with fixed shares, and
their 192 directions are far from equally informative: a few high-variance directions (what every coin photo shares:
light, metal, rim) dominate the cosine. A half-whitening PCA of the whole vector (``emb_branch.whitened_pca`` at full
rank, each direction scaled by ``1 / sqrt(sigma)``, with a variance floor ``shrink``) evens them out. It is fitted on
training-class photos only (every photo at ``PCA_VIEWS`` rotations, as the branch's PCA), so held-out figures stay
held out; it is ONE matrix at the end of the graph (``emb_model.Embedder.whiten``), so every SDK runs it unchanged.
How power and shrink were chosen (cross-validation over training classes, not the held-out ones): model card.

    coinvision train embedder-whiten runs/embedder/pair/best.pt --photos runs/split/train \\
        --calibrate runs/split/catalog runs/split/query --out runs/embedder/white/best.pt
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from coinvision.sdk.errors import ConfigError, DatasetError
from coinvision.trainer.checkpoint import Checkpoint, save_checkpoint
from coinvision.trainer.config_io import config_to_dict
from coinvision.trainer.emb_branch import PCA_VIEWS, crop_samples, open_crop_cache, recalibrate_unknown, whitened_pca
from coinvision.trainer.emb_model import KIND, build_embedder, load_embedder
from coinvision.trainer.emb_train import embed_views

__all__ = ["DEFAULT_SHRINK", "fit_whitening"]

log = logging.getLogger(__name__)

DEFAULT_SHRINK = 1.0  # chosen by class-held-out cross-validation on the training classes (model card)


def fit_whitening(checkpoint: str | Path, photos: Sequence[Path], out: str | Path, *, segmenter_models_dir: str | Path,
                  segmenter_runtime: str = "tflite", shrink: float = DEFAULT_SHRINK,
                  calibration: tuple[Path, Path] | None = None, progress: bool = True) -> Path:
    """Write ``out``: ``checkpoint``'s embedder with its output whitened, fitted on ``photos`` (training-class photos
    only; a whitening it has already is replaced), cropped by the segmenter of ``segmenter_models_dir`` (the one the
    SDK ships); ``calibration``: ``(catalog_dir, query_dir)`` of held-out classes for the unknown-coin threshold,
    which the new vectors need (without it the checkpoint has none)."""
    model, cfg, base = load_embedder(checkpoint)
    if cfg.whiten:
        log.info("%s is whitened already: the whitening is fitted again", checkpoint)
    cfg = dataclasses.replace(cfg, whiten=True, unknown_threshold=None, segmenter_checkpoint=None,
                              segmenter_models_dir=str(segmenter_models_dir), segmenter_runtime=segmenter_runtime)
    whitened = build_embedder(cfg).eval()
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("whiten_")}
    loaded = whitened.load_state_dict(state, strict=False)
    if loaded.unexpected_keys or any(not k.startswith("whiten_") for k in loaded.missing_keys):
        raise ConfigError(f"{checkpoint}: its weights do not fit its own config (missing {loaded.missing_keys[:3]}, "
                          f"unexpected {loaded.unexpected_keys[:3]}); was it written by coinvision?")
    cache = open_crop_cache(cfg)
    fit = crop_samples(cache, photos, progress=progress)
    if not fit:
        raise DatasetError("no photos to fit the whitening on; pass a folder of training-class photos")
    rows = embed_views(whitened.mixed, fit, cfg.input_spec, PCA_VIEWS, torch.device("cpu"),
                       desc="embeddings" if progress else None)
    mean, projection = whitened_pca(rows.reshape(-1, rows.shape[-1]), cfg.output_dim, shrink=shrink)
    whitened.whiten_mean.copy_(torch.from_numpy(mean).float())
    whitened.whiten_projection.copy_(torch.from_numpy(projection).float())
    metrics = {**base.metrics, "unwhitened_fingerprint": base.fingerprint, "whiten_fit_photos": len(fit),
               "whiten_fit_rows": int(rows.shape[0] * rows.shape[1]), "whiten_shrink": shrink}
    if calibration is not None:
        cfg = recalibrate_unknown(whitened, cfg, cache, calibration, metrics, progress=progress)
    ckpt = Checkpoint(kind=KIND, config=config_to_dict(cfg), state_dict=whitened.state_dict(), epoch=base.epoch,
                      metrics=metrics)
    path = save_checkpoint(out, ckpt)
    log.info("whitened %s (%d-d, shrink %.2f) on %d photos -> %s (fingerprint %s)", checkpoint, cfg.output_dim,
             shrink, len(fit), path, ckpt.fingerprint)
    return path
