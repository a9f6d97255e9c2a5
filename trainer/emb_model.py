"""The coin embedder model: a timm backbone, a small FC head, a 64-d L2-normalised embedding. It takes a
normalised NCHW batch (``EmbedderConfig.input_spec``) of background-removed crops and returns unit vectors ``NxD``.

What exporters and runtimes need, without the training stack (no albumentations): :func:`build_embedder`,
:func:`load_embedder` ``(path) -> (model.eval(), cfg, checkpoint)`` and :func:`embedder_metadata`. Training is
``emb_train``; crops come from ``coinvision.sdk.preprocess`` only.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from coinvision.sdk.errors import ConfigError, ModelLoadError
from coinvision.sdk.model_meta import ModelMetadata
from coinvision.sdk.preprocess import InputSpec
from coinvision.trainer.checkpoint import Checkpoint, load_model
from coinvision.trainer.emb_config import EmbedderConfig
from torch import nn

__all__ = ["KIND", "Embedder", "EmbedderConfig", "FrozenBranch", "build_backbone", "build_branch",
           "build_embedder", "embedder_metadata", "load_embedder"]

KIND = "embedder"


class FrozenBranch(nn.Module):
    """A second pretrained backbone that is never trained: its pooled features of the same crop, L2-normalised,
    minus their mean, through a fixed half-whitened PCA (``emb_branch.fit_branch``), L2-normalised. It
    re-normalises the embedder's input to its own mean/std inside the graph, so the model keeps ONE input tensor
    and one preprocessing."""

    def __init__(self, backbone: nn.Module, input_scale: torch.Tensor, input_shift: torch.Tensor, dims: int) -> None:
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)
        self.register_buffer("input_scale", input_scale.reshape(1, 3, 1, 1))
        self.register_buffer("input_shift", input_shift.reshape(1, 3, 1, 1))
        self.register_buffer("pca_mean", torch.zeros(backbone.num_features))
        self.register_buffer("pca_projection", torch.zeros(backbone.num_features, dims))

    def train(self, mode: bool = True) -> FrozenBranch:
        return super().train(False)  # BatchNorm statistics stay the pretrained ones

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Unit pooled features (what the PCA is fitted on)."""
        return F.normalize(self.backbone(x * self.input_scale + self.input_shift), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize((self.pooled(x) - self.pca_mean) @ self.pca_projection, dim=1)


class Embedder(nn.Module):
    """``backbone`` (timm, global pool, no classifier) -> ``head`` (FC) -> L2 normalisation; with a ``branch``,
    the unit vector ``[sqrt(1 - w) * trained, sqrt(w) * branch]``, whose cosine is
    ``(1 - w) cos_trained + w cos_branch``; with a ``companion`` (a second trained :class:`Embedder` of the same
    input) too, ``[sqrt(1 - w_c - w) * trained, sqrt(w_c) * companion, sqrt(w) * branch]``. With ``whiten``, that
    vector ``v`` becomes ``normalize((v - whiten_mean) @ whiten_projection)`` (``emb_whiten.fit_whitening``)."""

    def __init__(self, backbone: nn.Module, head: nn.Module, branch: FrozenBranch | None = None,
                 branch_weight: float = 0.0, companion: Embedder | None = None, companion_weight: float = 0.0,
                 whiten_dim: int = 0) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.companion = companion
        self.branch = branch
        # buffers, not float attributes: the weights' fingerprint must change with the mix (packs carry it)
        shares = [companion_weight] if companion is not None else []
        shares += [branch_weight] if branch is not None else []
        if shares:  # branch-only models keep the name their releases were fingerprinted with
            self._mix_name = "part_mix" if companion is not None else "branch_mix"
            self.register_buffer(self._mix_name, torch.tensor([1.0 - sum(shares), *shares]).sqrt())
        self.whiten = whiten_dim > 0
        if self.whiten:  # identity until fitted
            self.register_buffer("whiten_mean", torch.zeros(whiten_dim))
            self.register_buffer("whiten_projection", torch.eye(whiten_dim))

    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(features), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = self.mixed(x)
        return F.normalize((mixed - self.whiten_mean) @ self.whiten_projection, dim=1) if self.whiten else mixed

    def mixed(self, x: torch.Tensor) -> torch.Tensor:
        """The unit vector of the parts before any whitening (what ``emb_whiten`` fits on)."""
        parts = [self.embed_features(self.backbone(x))]
        parts += [part(x) for part in (self.companion, self.branch) if part is not None]
        if len(parts) == 1:
            return parts[0]
        mix = getattr(self, self._mix_name)
        return torch.cat([part * mix[i] for i, part in enumerate(parts)], dim=1)


def build_backbone(cfg: EmbedderConfig) -> nn.Module:
    return _timm_backbone(cfg.backbone, cfg.pad_type, cfg.pretrained_path, "pretrained_path")


def _timm_backbone(name: str, pad_type: str, pretrained_path: str | None, field: str) -> nn.Module:
    kwargs: dict[str, Any] = {"num_classes": 0}  # global pool, no classifier
    if pad_type:
        kwargs["pad_type"] = pad_type
    if pretrained_path:
        path = Path(pretrained_path)
        if not path.is_file():
            raise ModelLoadError(f"{field} {path} does not exist; pass a local timm weights file or null "
                                 "(`coinvision pretrained port-lite` writes one for tf_efficientnet_lite0, "
                                 "`coinvision pretrained port-mobilenetv2` for mobilenetv2_100)")
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    try:
        return timm.create_model(name, **kwargs)
    except (RuntimeError, KeyError) as exc:
        raise ModelLoadError(f"could not build timm backbone {name!r} (weights {pretrained_path}): {exc}") from exc


def build_branch(cfg: EmbedderConfig) -> FrozenBranch:
    """The frozen branch of ``cfg`` (``branch_backbone``), PCA still zero: ``emb_branch.fit_branch`` fits it."""
    if not cfg.branch_backbone or not timm.is_model(cfg.branch_backbone):
        raise ConfigError(f"branch_backbone {cfg.branch_backbone!r} is not a timm model; e.g. tf_efficientnet_lite0")
    backbone = _timm_backbone(cfg.branch_backbone, cfg.branch_pad_type, cfg.branch_pretrained_path,
                              "branch_pretrained_path")
    ours, theirs = cfg.input_spec, _branch_input_spec(cfg)
    ours_mean, ours_std = torch.tensor(ours.mean), torch.tensor(ours.std)
    theirs_mean, theirs_std = torch.tensor(theirs.mean), torch.tensor(theirs.std)
    # x = (p - ours_mean) / ours_std  ->  (p - theirs_mean) / theirs_std = x * scale + shift
    return FrozenBranch(backbone, ours_std / theirs_std, (ours_mean - theirs_mean) / theirs_std, cfg.branch_dims)


def _branch_input_spec(cfg: EmbedderConfig) -> InputSpec:
    """The input the branch's pretrained weights expect (its timm pretrained config's mean/std)."""
    return cfg.input_spec if cfg.branch_backbone is None else dataclasses.replace(
        cfg, backbone=cfg.branch_backbone).input_spec


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
    branch = build_branch(cfg) if cfg.branch_backbone else None
    companion = None
    if cfg.companion_weight:  # same architecture, its weights come from another run (emb_branch.fit_branch)
        companion = build_embedder(dataclasses.replace(cfg, branch_backbone=None, companion_weight=0.0,
                                                       pretrained_path=None, whiten=False))
    return Embedder(backbone, nn.Sequential(*layers), branch, cfg.branch_weight, companion, cfg.companion_weight,
                    cfg.output_dim if cfg.whiten else 0)


def load_embedder(path: str | Path) -> tuple[Embedder, EmbedderConfig, Checkpoint]:
    def build(cfg: EmbedderConfig) -> Embedder:  # every weight, the branch's too, comes from the checkpoint
        return build_embedder(dataclasses.replace(cfg, branch_pretrained_path=None))

    return load_model(path, KIND, EmbedderConfig, build)


def embedder_metadata(cfg: EmbedderConfig, fingerprint: str) -> ModelMetadata:
    hidden = "-".join(str(h) for h in cfg.head_hidden_dims)
    trained = f"{cfg.backbone}+fc{hidden + '-' if hidden else ''}{cfg.embedding_dim}"
    architecture = f"{trained}|{trained}" if cfg.companion_weight else trained
    extra: dict[str, Any] = {"companion_weight": cfg.companion_weight} if cfg.companion_weight else {}
    if cfg.branch_backbone:
        architecture += f"|{cfg.branch_backbone}+pca{cfg.branch_dims}"
        extra.update(branch_backbone=cfg.branch_backbone, branch_weight=cfg.branch_weight)
    if cfg.whiten:
        architecture += "|whiten"
        extra["whiten"] = True
    return ModelMetadata(
        name="embedder",
        architecture=architecture,
        fingerprint=fingerprint,
        input=cfg.input_spec,
        output="embedding",
        embedding_dim=cfg.output_dim,
        l2_normalized=True,
        threshold=cfg.unknown_threshold,
        runtime_format="torch",
        extra={"crop_margin_frac": cfg.crop_margin_frac, "background_removal": cfg.background_removal,
               "embed_rotations": cfg.embed_rotations, "loss": cfg.loss, "margin_rad": cfg.margin_rad,
               "scale": cfg.scale, **({} if cfg.crop_mask == "exact" else {"crop_mask": cfg.crop_mask}), **extra},
    )
