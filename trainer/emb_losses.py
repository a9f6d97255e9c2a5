"""Metric-learning losses for the embedder, all from pytorch-metric-learning except the centre term.

Every loss is an ``nn.Module`` ``(embeddings, labels) -> scalar`` so the training loop does not care which
one runs; losses with class weights (ArcFace, Proxy-Anchor, the softmax classifier; ``D x C``) can start
them at the class means (``init_class_weights``) and give ``get_cosine`` for the seen-class accuracy.
Pair-based losses (triplet, Multi-Similarity) need several photos per class in a batch: train them with
``sampler: m_per_class``.

- ``arcface`` / ``subcenter_arcface``: additive angular margin (the design; margin given in RADIANS here,
  pytorch-metric-learning takes degrees).
- ``triplet``: triplet margin loss on semi-hard triplets mined online (FaceNet / deep ranking).
- ``softmax_center``: normalised softmax + centre loss (Wen et al. 2016), the item-recognition recipe.
- ``multi_similarity``: Multi-Similarity loss with its miner (Wang et al. 2019).
- ``proxy_anchor``: Proxy-Anchor (Kim et al. 2020), the modern proxy loss.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from coinvision.sdk.errors import ConfigError
from torch import nn

__all__ = ["LOSSES", "PAIR_LOSSES", "MetricLoss", "arcface_margin_deg", "build_loss",
           "similarity_distillation"]

LOSSES = ("arcface", "subcenter_arcface", "triplet", "softmax_center", "multi_similarity", "proxy_anchor")
PAIR_LOSSES = ("triplet", "multi_similarity")  # need m photos per class in a batch


def arcface_margin_deg(margin_rad: float) -> float:
    """pytorch-metric-learning's ``ArcFaceLoss(margin=...)`` is in DEGREES; our configs are in radians."""
    return math.degrees(margin_rad)


class MetricLoss(nn.Module):
    """A pytorch-metric-learning loss, its optional miner, and (softmax_center) the centre term."""

    def __init__(self, name: str, loss: nn.Module, miner: nn.Module | None = None,
                 center_weight: float = 0.0, num_classes: int = 0, embedding_dim: int = 0) -> None:
        super().__init__()
        self.name, self.loss, self.miner, self.center_weight = name, loss, miner, center_weight
        self.centers = nn.Parameter(torch.randn(num_classes, embedding_dim) * 0.01) if center_weight > 0 else None

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pairs = self.miner(embeddings, labels) if self.miner is not None else None
        value = self.loss(embeddings, labels, pairs) if pairs is not None else self.loss(embeddings, labels)
        if self.centers is not None:
            # Centre loss: pull each unit embedding towards its class's learned centre (squared distance).
            value = value + self.center_weight * 0.5 * (embeddings - self.centers[labels]).pow(2).sum(1).mean()
        return value

    def init_class_weights(self, class_means: torch.Tensor) -> None:
        """Start the class weights (and centres) at the classes' mean embeddings (``C x D``, unit rows), so
        the first steps refine a sensible geometry instead of tearing the features towards random centres."""
        weight = getattr(self.loss, "W", None)
        with torch.no_grad():
            if weight is not None:
                if weight.shape == (class_means.shape[1], class_means.shape[0]):
                    weight.copy_(class_means.T)
                elif weight.ndim == 2 and weight.shape[0] == class_means.shape[1]:  # sub-centres: D x (C*K)
                    repeats = weight.shape[1] // class_means.shape[0]
                    weight.copy_(class_means.T.repeat_interleave(repeats, dim=1))
            if self.centers is not None:
                self.centers.copy_(class_means)

    def get_cosine(self, embeddings: torch.Tensor) -> torch.Tensor | None:
        """Cosine to each class (N x C) where the loss has class weights, else None."""
        if hasattr(self.loss, "get_cosine"):
            return self.loss.get_cosine(embeddings)
        weight = getattr(self.loss, "W", None)
        if weight is None:
            return None
        return F.normalize(embeddings, dim=1) @ F.normalize(weight, dim=0)


def build_loss(cfg: Any, num_classes: int) -> MetricLoss:
    """``cfg`` is an ``EmbedderConfig`` (``loss``, ``margin_rad``, ``scale``, ``sub_centers``, ...)."""
    from pytorch_metric_learning import distances, losses, miners

    if num_classes < 2:
        raise ConfigError(f"{cfg.loss} needs >= 2 training classes, the split has {num_classes}")
    dim = cfg.embedding_dim
    if cfg.loss in ("arcface", "subcenter_arcface"):
        common = {"num_classes": num_classes, "embedding_size": dim, "margin": arcface_margin_deg(cfg.margin_rad),
                  "scale": cfg.scale}
        if cfg.loss == "subcenter_arcface":
            return MetricLoss(cfg.loss, losses.SubCenterArcFaceLoss(sub_centers=cfg.sub_centers, **common))
        return MetricLoss(cfg.loss, losses.ArcFaceLoss(**common))
    if cfg.loss == "triplet":
        cosine = distances.CosineSimilarity()
        return MetricLoss(cfg.loss, losses.TripletMarginLoss(margin=cfg.pair_margin, distance=cosine),
                          miners.TripletMarginMiner(margin=cfg.pair_margin, type_of_triplets="semihard",
                                                    distance=cosine))
    if cfg.loss == "multi_similarity":
        return MetricLoss(cfg.loss, losses.MultiSimilarityLoss(alpha=2.0, beta=50.0, base=0.5),
                          miners.MultiSimilarityMiner(epsilon=0.1))
    if cfg.loss == "proxy_anchor":
        return MetricLoss(cfg.loss, losses.ProxyAnchorLoss(num_classes=num_classes, embedding_size=dim,
                                                           margin=0.1, alpha=32))
    if cfg.loss == "softmax_center":
        # Normalised softmax (temperature = 1 / scale) keeps the classifier on the unit sphere the search uses.
        return MetricLoss(cfg.loss, losses.NormalizedSoftmaxLoss(temperature=1.0 / cfg.scale, embedding_size=dim,
                                                                 num_classes=num_classes),
                          center_weight=cfg.center_weight, num_classes=num_classes, embedding_dim=dim)
    raise ConfigError(f"loss={cfg.loss!r}: must be one of {LOSSES}")


def similarity_distillation(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the in-batch cosine-similarity matrices of ``student`` (the embedding) and
    ``teacher`` (the frozen pretrained backbone's pooled features): keeps the fine-tuned embedding's
    neighbourhoods close to the pretrained ones, which is what transfers to coin types never trained on
    (similarity-preserving distillation, Tung & Mori 2019)."""
    s = F.normalize(student, dim=1)
    t = F.normalize(teacher, dim=1)
    return (s @ s.T - t @ t.T).pow(2).mean()
