"""The coin embedder model: a timm backbone, a small FC head, a 64-d L2-normalised embedding. It takes a
normalised NCHW batch (``EmbedderConfig.input_spec``) of background-removed crops and returns unit vectors ``NxD``.

What exporters and runtimes need, without the training stack (no albumentations): :func:`build_embedder`,
:func:`load_embedder` ``(path) -> (model.eval(), cfg, checkpoint)`` and :func:`embedder_metadata`. Training is
``emb_train``; crops come from ``coinvision.sdk.preprocess`` only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from coinvision.sdk.errors import ConfigError, ModelLoadError
from coinvision.sdk.model_meta import ModelMetadata
from coinvision.trainer.checkpoint import Checkpoint, load_model
from coinvision.trainer.emb_config import EmbedderConfig
from torch import nn

__all__ = ["KIND", "Embedder", "EmbedderConfig", "build_backbone", "build_embedder", "embedder_metadata",
           "load_embedder"]

KIND = "embedder"


class Embedder(nn.Module):
    """``backbone`` (timm, global pool, no classifier) -> ``head`` (FC) -> L2 normalisation."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(features), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed_features(self.backbone(x))


def build_backbone(cfg: EmbedderConfig) -> nn.Module:
    kwargs: dict[str, Any] = {"num_classes": 0}  # global pool, no classifier
    if cfg.pad_type:
        kwargs["pad_type"] = cfg.pad_type
    if cfg.pretrained_path:
        path = Path(cfg.pretrained_path)
        if not path.is_file():
            raise ModelLoadError(f"pretrained_path {path} does not exist; pass a local timm weights file or null "
                                 "(`coinvision pretrained port-lite` writes one for tf_efficientnet_lite0, "
                                 "`coinvision pretrained port-mobilenetv2` for mobilenetv2_100)")
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    try:
        return timm.create_model(cfg.backbone, **kwargs)
    except (RuntimeError, KeyError) as exc:
        raise ModelLoadError(f"could not build timm backbone {cfg.backbone!r} (weights {cfg.pretrained_path}): "
                             f"{exc}") from exc


def build_embedder(cfg: EmbedderConfig) -> Embedder:
    if not timm.is_model(cfg.backbone.split(".")[0]):
        raise ConfigError(f"backbone {cfg.backbone!r} is not a timm model; e.g. efficientnet_b0, mobilenetv2_100")
    backbone = build_backbone(cfg)
    layers: list[nn.Module] = []
    width = backbone.num_features
    for hidden in cfg.head_hidden_dims:
        layers += [nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
        if cfg.head_dropout > 0:
            layers.append(nn.Dropout(cfg.head_dropout))
        width = hidden
    layers.append(nn.Linear(width, cfg.embedding_dim))
    return Embedder(backbone, nn.Sequential(*layers))


def load_embedder(path: str | Path) -> tuple[Embedder, EmbedderConfig, Checkpoint]:
    return load_model(path, KIND, EmbedderConfig, build_embedder)


def embedder_metadata(cfg: EmbedderConfig, fingerprint: str) -> ModelMetadata:
    hidden = "-".join(str(h) for h in cfg.head_hidden_dims)
    return ModelMetadata(
        name="embedder",
        architecture=f"{cfg.backbone}+fc{hidden + '-' if hidden else ''}{cfg.embedding_dim}",
        fingerprint=fingerprint,
        input=cfg.input_spec,
        output="embedding",
        embedding_dim=cfg.embedding_dim,
        l2_normalized=True,
        threshold=cfg.unknown_threshold,
        runtime_format="torch",
        extra={"crop_margin_frac": cfg.crop_margin_frac, "background_removal": cfg.background_removal,
               "embed_rotations": cfg.embed_rotations, "loss": cfg.loss, "margin_rad": cfg.margin_rad,
               "scale": cfg.scale},
    )
