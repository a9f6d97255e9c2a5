"""Train the top of the backbone on cached activations of its frozen trunk: fine-tuning a CPU can afford.

With ``freeze_stages: N`` the stem and the first N stages never change, so their output for a given input never
changes either. ``trunk_cache_views: K`` runs the trunk once over K augmented views of every training crop (plus
one clean view, for the PCA head) and once over every validation crop's rotated views, keeps the activations in
memory (float16), and each training step then runs only the trainable top (the last stages, the 1x1 head conv,
pooling, the FC head) on cached activations — on EfficientNet-Lite0 at 160 px with 5 of 7 stages frozen, the
top is a small share of the FLOPs. The price is augmentation diversity: K fixed views per photo instead of a
new one every epoch. The exported model is the whole network; only training used the cache.

The views are seeded by ``(seed, view, index)`` with the same augmentation pipeline as image training, and the
cache is kept in memory only (it is rebuilt by a resumed run: a few minutes, and never stale).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from coinvision.sdk.errors import ConfigError
from coinvision.sdk.preprocess import rotation_views, to_model_input
from coinvision.trainer.emb_data import augment_seeded
from torch import nn

__all__ = ["TrunkActivations", "backbone_top", "backbone_trunk", "cache_trunk", "trunk_modules"]

log = logging.getLogger(__name__)


def trunk_modules(backbone: nn.Module, stages: int) -> list[nn.Module]:
    """The stem and the first ``stages`` stages of a timm EfficientNet / MobileNet (``conv_stem``, ``bn1``,
    ``blocks``): what ``freeze_stages`` keeps fixed; ``[]`` for 0."""
    return _parts(backbone, stages)[0] if stages > 0 else []


def _parts(backbone: nn.Module, stages: int) -> tuple[list[nn.Module], list[nn.Module]]:
    blocks = getattr(backbone, "blocks", None)
    if blocks is None or not all(hasattr(backbone, name) for name in ("conv_stem", "bn1", "conv_head", "bn2")):
        raise ConfigError(f"{type(backbone).__name__} is not a timm EfficientNet/MobileNet (conv_stem, blocks, "
                          "conv_head); freeze_stages needs one, or set freeze_stages: 0")
    if not 0 < stages <= len(blocks):
        raise ConfigError(f"freeze_stages={stages}: the backbone has {len(blocks)} stages; use 0..{len(blocks)}")
    return [backbone.conv_stem, backbone.bn1, *blocks[:stages]], list(blocks[stages:])


def backbone_trunk(backbone: nn.Module, stages: int, x: torch.Tensor) -> torch.Tensor:
    """Stem + the first ``stages`` stages (what ``freeze_stages`` keeps fixed)."""
    for module in trunk_modules(backbone, stages):
        x = module(x)
    return x


def backbone_top(backbone: nn.Module, stages: int, a: torch.Tensor) -> torch.Tensor:
    """The rest of ``backbone.forward``: remaining stages, head conv, BN, global pool -> pooled features."""
    for block in _parts(backbone, stages)[1]:
        a = block(a)
    return backbone.forward_head(backbone.bn2(backbone.conv_head(a)))


@dataclass
class TrunkActivations:
    """``activations[i, v]``: the trunk's output for view ``v`` of sample ``i`` (float16)."""

    activations: torch.Tensor  # (N, V, C, H, W)

    @property
    def views(self) -> int:
        return int(self.activations.shape[1])

    def batch(self, indices: Sequence[int], views: Sequence[int]) -> torch.Tensor:
        return self.activations[torch.as_tensor(list(indices)), torch.as_tensor(list(views))].float()


@torch.inference_mode()
def cache_trunk(backbone: nn.Module, stages: int, squares: Any, count: int, spec: Any, *,
                augment: Any = None, aug_views: int = 0, rotations: int = 1, seed: int = 0,
                batch_size: int = 64, desc: str = "trunk", progress: bool = True) -> TrunkActivations:
    """Trunk activations of ``count`` crops (``squares(i)`` -> uint8 RGB at the model's size).

    With ``augment``: view 0 is the clean crop, views 1..``aug_views`` augmented (seeded per (seed, view, i)).
    Without: the ``rotations`` views of ``rotation_views`` (what ``embed_samples`` averages)."""
    from tqdm import tqdm

    backbone.eval()
    n_views = 1 + aug_views if augment is not None else rotations

    def views_of(i: int) -> list[np.ndarray]:
        square = squares(i)
        if augment is None:
            return rotation_views(square, rotations, spec.pad_value)
        return [square, *(augment_seeded(augment, square, seed, v, i) for v in range(1, n_views))]

    chunks: list[torch.Tensor] = []
    per_chunk = max(1, batch_size // n_views)
    for start in tqdm(range(0, count, per_chunk), desc=desc, disable=not progress):
        idx = range(start, min(count, start + per_chunk))
        views = [v for i in idx for v in views_of(i)]
        x = torch.from_numpy(np.concatenate([to_model_input(v, spec) for v in views]))
        a = backbone_trunk(backbone, stages, x).to(torch.float16)
        chunks.append(a.reshape(len(idx), n_views, *a.shape[1:]))
    activations = torch.cat(chunks)
    log.info("%s: cached trunk activations %s (%.0f MB)", desc, tuple(activations.shape),
             activations.numel() * 2 / 1e6)
    return TrunkActivations(activations)
