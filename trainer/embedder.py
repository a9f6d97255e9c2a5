"""The embedder's names for the callers not yet moved: the model lives in ``emb_model``, its training in
``emb_train``; the torch pipeline is ``trainer.torch_runtime``.
"""

from __future__ import annotations

from coinvision.trainer.emb_config import EmbedderConfig
from coinvision.trainer.emb_losses import arcface_margin_deg, build_loss
from coinvision.trainer.emb_model import Embedder, build_embedder, embedder_metadata, load_embedder
from coinvision.trainer.emb_train import (
    _m_per_class_indices,
    build_optimizers,
    embed_samples,
    init_head_from_pca,
    make_feed,
    measure_throughput,
    split_parameters,
    train_embedder,
)

__all__ = [
    "Embedder",
    "EmbedderConfig",
    "_m_per_class_indices",
    "arcface_margin_deg",
    "build_embedder",
    "build_loss",
    "build_optimizers",
    "embed_samples",
    "embedder_metadata",
    "init_head_from_pca",
    "load_embedder",
    "make_feed",
    "measure_throughput",
    "split_parameters",
    "train_embedder",
]
