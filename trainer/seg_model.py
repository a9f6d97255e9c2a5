"""The coin segmenter model: an smp U-Net with a timm encoder that takes a normalised NCHW batch
(``SegmenterConfig.input_spec``) and returns mask LOGITS ``Nx1xHxW``.

What exporters and runtimes need, without the training stack (no albumentations): :func:`build_segmenter`,
:func:`load_segmenter` ``(path) -> (model.eval(), cfg, checkpoint)`` and :func:`segmenter_metadata`. Training
is ``seg_train``; inference goes through ``coinvision.sdk.preprocess``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
from coinvision.sdk.errors import ConfigError, ModelLoadError
from coinvision.sdk.model_meta import ModelMetadata
from coinvision.sdk.segmenter import DEFAULT_VIEWS
from coinvision.trainer.checkpoint import Checkpoint, load_model
from coinvision.trainer.seg_config import SegmenterConfig
from torch import nn

__all__ = ["KIND", "POSTPROCESS_KEYS", "SegmenterConfig", "build_segmenter", "count_parameters", "load_segmenter",
           "segmenter_metadata", "set_postprocess"]

KIND = "segmenter"
# Config keys that only change how the probability map becomes the mask (spec step 2), never the weights: they
# may be set on a trained checkpoint after measuring them (the fingerprint, a hash of the weights, stays).
POSTPROCESS_KEYS = ("threshold", "margin_frac", "split_touching", "single_pass_box_frac", "tile_frac", "views")


def build_segmenter(cfg: SegmenterConfig) -> nn.Module:
    """U-Net returning mask logits ``Nx1xHxW``. With ``pretrained_path`` the encoder loads that local file
    through timm (``pretrained_cfg_overlay=dict(file=...)``); otherwise it starts from scratch."""
    kwargs: dict[str, Any] = {}
    if cfg.pad_type:
        kwargs["pad_type"] = cfg.pad_type
    weights = None
    if cfg.pretrained_path:
        path = Path(cfg.pretrained_path)
        if not path.is_file():
            raise ModelLoadError(f"pretrained_path {path} does not exist; pass a local timm weights file or null")
        if not cfg.encoder.startswith("tu-"):
            raise ConfigError(f"pretrained_path needs a timm encoder ('tu-...'), got {cfg.encoder!r}")
        weights = "imagenet"  # any non-None value makes smp ask timm for pretrained weights
        kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
    try:
        return smp.Unet(cfg.encoder, encoder_weights=weights, classes=1, activation=None,
                        decoder_channels=tuple(cfg.decoder_channels), **kwargs)
    except (RuntimeError, KeyError) as exc:
        raise ModelLoadError(f"could not build U-Net with encoder {cfg.encoder!r}: {exc}") from exc


def load_segmenter(path: str | Path) -> tuple[nn.Module, SegmenterConfig, Checkpoint]:
    return load_model(path, KIND, SegmenterConfig, build_segmenter, what="U-Net")


def segmenter_metadata(cfg: SegmenterConfig, fingerprint: str) -> ModelMetadata:
    return ModelMetadata(
        name="segmenter",
        architecture=f"unet/{cfg.encoder}",
        fingerprint=fingerprint,
        input=cfg.input_spec,
        output="mask_logits",
        threshold=cfg.threshold,
        runtime_format="torch",
        extra={"margin_frac": cfg.margin_frac, "decoder_channels": list(cfg.decoder_channels),
               **({"split_touching": True} if cfg.split_touching else {}),
               **({"single_pass_box_frac": cfg.single_pass_box_frac} if cfg.single_pass_box_frac is not None else {}),
               **({"tile_frac": cfg.tile_frac} if cfg.tile_frac is not None else {}),
               **({"views": cfg.views} if cfg.views != DEFAULT_VIEWS else {})},
    )


def set_postprocess(src: str | Path, out: str | Path, changes: dict[str, Any]) -> Checkpoint:
    """Write ``src`` to ``out`` with post-processing config values replaced (``POSTPROCESS_KEYS`` only; the
    weights, fingerprint, metrics and history stay). ``src`` is left as it is."""
    from coinvision.trainer.checkpoint import load_checkpoint, save_checkpoint
    from coinvision.trainer.config_io import resolve_config

    unknown = sorted(set(changes) - set(POSTPROCESS_KEYS))
    if unknown:
        raise ConfigError(f"{', '.join(unknown)}: not post-processing settings; only {', '.join(POSTPROCESS_KEYS)} "
                          "can change without retraining (train again for the others)")
    ckpt = load_checkpoint(src, expected_kind=KIND)
    try:
        cfg = resolve_config(SegmenterConfig, overrides={**ckpt.config, **changes, "pretrained_path": None})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"segmenter post-processing {changes}: {exc}") from exc
    ckpt.config = {**ckpt.config, **{k: getattr(cfg, k) for k in changes}}
    save_checkpoint(out, ckpt)
    return ckpt


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

