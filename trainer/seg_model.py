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
from coinvision.trainer.checkpoint import Checkpoint, load_model
from coinvision.trainer.seg_config import SegmenterConfig
from torch import nn

__all__ = ["KIND", "SegmenterConfig", "build_segmenter", "count_parameters", "load_segmenter", "segmenter_metadata"]

KIND = "segmenter"


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
               **({"split_touching": True} if cfg.split_touching else {})},
    )


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

