"""The coin embedder: a timm backbone, a small FC head, a 64-d L2-normalised embedding, trained with a
metric-learning loss (ArcFace by default, ``emb_losses``) and validated every epoch by retrieval on coin
classes it never saw.

Contract (see the briefing): ``build_embedder(cfg)`` takes a normalised NCHW batch (``InputSpec``) of
background-removed crops and returns unit vectors ``NxD``; ``load_embedder(path) -> (model.eval(), cfg,
checkpoint)``; ``embedder_metadata(cfg, fingerprint)``. Crops come from ``coinvision.sdk.preprocess`` only.

Two optimizers and two LR schedules: the backbone (pretrained or not) wants a smaller step than the freshly
initialised head and the ArcFace class centres, and ``freeze_backbone_epochs`` trains the head alone first,
so a pretrained backbone is not wrecked by gradients from a random head.

What generalises to unseen coin types is mostly what the pretrained backbone already knows, so three options
protect it: ``head_init: pca`` starts a linear head at the principal components of the frozen features (and
the class weights at the class means), so training starts from the pretrained neighbourhoods rather than a
random projection; ``distill_weight`` keeps the embedding's in-batch similarities close to the frozen
backbone's (``emb_losses.similarity_distillation``); and ``embed_rotations`` averages the embedding over
rotated views at validation exactly as the SDK does on the phone.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import timm
import torch
import torch.nn.functional as F
from coinvision.sdk.errors import ConfigError, ModelLoadError
from coinvision.sdk.evaluation import RetrievalMetrics, calibrate_unknown_threshold, evaluate_retrieval
from coinvision.sdk.model_meta import ModelMetadata
from coinvision.sdk.preprocess import INTERPOLATIONS, InputSpec, mean_unit_vector, rotation_views, to_model_input
from coinvision.trainer.checkpoint import (
    Checkpoint,
    fingerprint_state_dict,
    load_checkpoint,
    load_model,
    restore_schedule,
    save_checkpoint,
)
from coinvision.trainer.config_io import config_to_dict, save_config
from coinvision.trainer.emb_data import (
    AugmentConfig,
    CropSource,
    CropTensorSet,
    EmbeddingData,
    Sample,
    build_augment,
    crop_source_from_checkpoint,
    crop_source_from_models_dir,
    load_embedding_data,
)
from coinvision.trainer.emb_losses import (
    LOSSES,
    PAIR_LOSSES,
    MetricLoss,
    arcface_margin_deg,
    build_loss,
    similarity_distillation,
)
from coinvision.trainer.emb_trunk import trunk_modules
from coinvision.trainer.plotting import plot_recall_at_k, png_figure
from torch import nn

__all__ = [
    "Embedder",
    "EmbedderConfig",
    "TorchEmbedPipeline",
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

log = logging.getLogger(__name__)

KIND = "embedder"
SAMPLERS = ("shuffle", "m_per_class")
HEAD_INITS = ("random", "pca")


@dataclass(frozen=True)
class EmbedderConfig:
    # model
    backbone: str = "tf_efficientnet_lite0"  # any timm model name; its pretrained config gives mean/std
    pad_type: str = ""  # timm conv padding; "same" for weights ported from TF/TFLite
    pretrained_path: str | None = None  # local timm weights file for the backbone (no hub access)
    head_hidden_dims: tuple[int, ...] = (512,)  # Linear-BN-ReLU-Dropout blocks before the embedding layer
    head_dropout: float = 0.1
    embedding_dim: int = 64
    size_px: int = 224
    head_init: str = "random"  # "pca": a linear head (head_hidden_dims: []) starts at the frozen features' PCA
    embed_rotations: int = 1  # embed N rotated views and average (validation here, the SDK on the phone)
    crop_interpolation: str = "area"  # how the crop is shrunk to size_px (InputSpec.interpolation)
    # loss (emb_losses.LOSSES)
    loss: str = "arcface"
    margin_rad: float = 0.2  # additive angular margin, RADIANS (pytorch-metric-learning wants degrees)
    scale: float = 25.0
    sub_centers: int = 3  # subcenter_arcface only
    pair_margin: float = 0.1  # triplet: cosine margin
    center_weight: float = 0.01  # softmax_center: weight of the centre term
    distill_weight: float = 0.0  # similarity distillation from the frozen pretrained backbone (0 = off)
    # crops (must match the SDK: segmenter -> coin_crop)
    background_removal: bool = True
    segmenter_checkpoint: str | None = None  # a torch segmenter checkpoint (e.g. runs/segmenter/mnv2/best.pt)
    segmenter_models_dir: str | None = None  # or a models folder: segmenter.pt / .onnx / .tflite
    segmenter_runtime: str = "torch"
    crop_margin_frac: float = 0.05
    crop_cache_dir: str = "runs/crop_cache"
    # data
    data_roots: tuple[str, ...] = ()
    split_file: str | None = None  # trainer/splits.py CSV; None = make_splits(split_seed, val_class_frac)
    split_seed: int = 0
    val_class_frac: float = 0.2
    max_val_seen_per_class: int = 0  # 0 = all; caps validation time
    max_queries_per_class: int = 0  # 0 = all; stops one big unseen class dominating Recall@k
    # A deployed catalog holds the trained coins too: "full_*" metrics search the unseen-class queries in the
    # unseen catalog PLUS this many photos of every training class (0 = off). Model selection stays on the
    # unseen-only Recall@1 of the issue; the full_* numbers are the harder, more realistic ones.
    distractors_per_class: int = 3
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    unknown_threshold: float | None = None  # None: calibrated on the unseen classes (best.pt stores the value)
    unknown_target_accept: float = 0.05  # calibration: share of simulated unknown coins allowed through
    # optimisation
    sampler: str = "shuffle"  # "m_per_class": m photos of each sampled class per batch (pair losses need it)
    m_per_class: int = 4
    epochs: int = 10
    steps_per_epoch: int = 0  # 0 = one pass over the training images
    batch_size: int = 32
    lr_backbone: float = 1e-3
    lr_head: float = 3e-3  # FC head + ArcFace class centres
    weight_decay: float = 1e-4
    warmup_frac: float = 0.1  # one-cycle warm-up share of each schedule
    freeze_backbone_epochs: int = 0  # head-only epochs first (backbone in eval mode, not stepped)
    freeze_stages: int = 0  # stem + this many backbone stages stay at their pretrained weights (eval-mode BN)
    trunk_cache_views: int = 0  # > 0: train the top on cached frozen-trunk activations of K views (emb_trunk)
    seed: int = 0
    num_threads: int = 1
    num_workers: int = 0
    device: str = "auto"  # "auto" -> cuda when present, else cpu
    out_dir: str = "runs/embedder"

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss={self.loss!r}: must be one of {LOSSES}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler={self.sampler!r}: must be one of {SAMPLERS}")
        if self.loss in PAIR_LOSSES and self.sampler != "m_per_class":
            raise ValueError(f"loss={self.loss!r} mines pairs inside a batch; set sampler: m_per_class")
        if self.sampler == "m_per_class" and (self.m_per_class < 2 or self.batch_size % self.m_per_class):
            raise ValueError(f"m_per_class={self.m_per_class}: must be >= 2 and divide batch_size={self.batch_size}")
        if self.head_init not in HEAD_INITS:
            raise ValueError(f"head_init={self.head_init!r}: must be one of {HEAD_INITS}")
        if self.head_init == "pca" and self.head_hidden_dims:
            raise ValueError("head_init: pca needs a linear head; set head_hidden_dims: []")
        if not 1 <= self.embed_rotations <= 64:
            raise ValueError(f"embed_rotations={self.embed_rotations}: must be in [1, 64] (1 = off)")
        if self.crop_interpolation not in INTERPOLATIONS:
            raise ValueError(f"crop_interpolation={self.crop_interpolation!r}: must be one of {INTERPOLATIONS}")
        if self.freeze_stages < 0:
            raise ValueError(f"freeze_stages={self.freeze_stages}: must be >= 0")
        if self.trunk_cache_views < 0 or (self.trunk_cache_views and not self.freeze_stages):
            raise ValueError(f"trunk_cache_views={self.trunk_cache_views}: must be >= 0, and > 0 only with "
                             "freeze_stages > 0 (only a frozen trunk can be cached)")
        if self.distill_weight < 0:
            raise ValueError(f"distill_weight={self.distill_weight}: must be >= 0")
        if not 0.0 < self.margin_rad < math.pi / 2:
            raise ValueError(f"margin_rad={self.margin_rad}: must be in (0, pi/2) RADIANS (0.2 rad = 11.46 deg)")
        if self.scale <= 0 or self.embedding_dim < 2 or self.size_px < 32:
            raise ValueError("scale must be > 0, embedding_dim >= 2, size_px >= 32")
        if self.epochs < 1 or self.batch_size < 2 or self.steps_per_epoch < 0:
            raise ValueError("epochs >= 1, batch_size >= 2 (BatchNorm in the head) and steps_per_epoch >= 0")
        if not 0 <= self.freeze_backbone_epochs < self.epochs:
            raise ValueError(f"freeze_backbone_epochs={self.freeze_backbone_epochs}: must be in [0, epochs)")
        if self.segmenter_runtime not in ("torch", "onnx", "tflite"):
            raise ValueError(f"segmenter_runtime={self.segmenter_runtime!r}: must be torch, onnx or tflite")
        if not 0.0 < self.warmup_frac < 1.0:
            raise ValueError(f"warmup_frac={self.warmup_frac}: must be in (0, 1)")

    @property
    def input_spec(self) -> InputSpec:
        """Mean/std are the backbone's (timm pretrained config): (0.5, 0.5) for EfficientNet-Lite, ImageNet's
        for the ported MobileNetV2, so the weights see the input they were trained on."""
        pretrained = timm.get_pretrained_cfg(self.backbone)
        mean, std = (tuple(pretrained.mean), tuple(pretrained.std)) if pretrained else (None, None)
        extra = {"mean": mean, "std": std} if mean and std else {}
        return InputSpec(size_px=self.size_px, interpolation=self.crop_interpolation, **extra)


# ------------------------------------------------------------------------------------------------- model


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


def _build_backbone(cfg: EmbedderConfig) -> nn.Module:
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
    backbone = _build_backbone(cfg)
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


# -------------------------------------------------------------------------------------- loss, optimizers


def split_parameters(model: Embedder, loss_fn: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(backbone parameters, FC head + loss parameters)."""
    return list(model.backbone.parameters()), [*model.head.parameters(), *loss_fn.parameters()]


def build_optimizers(cfg: EmbedderConfig, model: Embedder, loss_fn: nn.Module
                     ) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    backbone, head = split_parameters(model, loss_fn)
    return (torch.optim.AdamW(backbone, lr=cfg.lr_backbone, weight_decay=cfg.weight_decay),
            torch.optim.AdamW(head, lr=cfg.lr_head, weight_decay=cfg.weight_decay))


def _one_cycle(optimizer: torch.optim.Optimizer, max_lr: float, total_steps: int, warmup_frac: float):
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=max(1, total_steps),
                                               pct_start=warmup_frac)


# ----------------------------------------------------------------------------------------- embed, evaluate


def _device(cfg: EmbedderConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def _loader(dataset: torch.utils.data.Dataset, cfg: EmbedderConfig, *, batch_size: int | None = None,
            sampler: Sequence[int] | None = None, drop_last: bool = False) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size or cfg.batch_size, sampler=sampler,
                                       shuffle=False, num_workers=cfg.num_workers, drop_last=drop_last,
                                       persistent_workers=False)


@torch.inference_mode()
def embed_samples(model: nn.Module, samples: Sequence[Sample], cfg: EmbedderConfig, device: torch.device,
                  *, rotations: int | None = None, unit: bool = True) -> np.ndarray:
    """Unit embeddings ``(N, D)`` of cached crops, no augmentation, averaged over ``rotations`` views (default
    ``cfg.embed_rotations``) with the SDK's own ``rotation_views`` / ``mean_unit_vector``. ``model`` may also be
    a bare backbone (pooled features, for the frozen baselines and the PCA head); ``unit=False`` returns the
    plain mean of the views' outputs, not normalised (what a linear head sees)."""
    model.eval()
    n_views = cfg.embed_rotations if rotations is None else rotations
    spec = cfg.input_spec
    chunk = max(1, (2 * cfg.batch_size) // n_views)
    out: list[np.ndarray] = []
    for start in range(0, len(samples), chunk):
        crops = CropTensorSet(samples[start:start + chunk], [0] * len(samples[start:start + chunk]), spec)
        views = [view for i in range(len(crops)) for view in rotation_views(crops.square(i), n_views, spec.pad_value)]
        x = torch.from_numpy(np.concatenate([to_model_input(v, spec) for v in views])).to(device)
        vectors = model(x).float().cpu().numpy()
        per_view = vectors.reshape(len(crops), n_views, -1)
        out.append(mean_unit_vector(per_view) if unit else per_view.mean(axis=1))
    return np.concatenate(out) if out else np.zeros((0, cfg.embedding_dim), np.float32)


@torch.inference_mode()
def _val_seen_loss(loss_fn: MetricLoss, emb: np.ndarray, labels: Sequence[int]) -> tuple[float, float]:
    """Loss (ArcFace: margin included) and class-weight accuracy (NaN for pair losses) on held-out photos of
    training classes, from their embeddings."""
    if not len(emb):
        return math.nan, math.nan
    device = next(iter(loss_fn.parameters()), torch.empty(0)).device
    emb_t, y = torch.from_numpy(emb).to(device), torch.as_tensor(list(labels), device=device)
    total = float(loss_fn(emb_t, y))
    cosine = loss_fn.get_cosine(emb_t)  # PML's SubCenter get_cosine already takes the max over sub-centres
    accuracy = float((cosine.argmax(dim=1) == y).float().mean()) if cosine is not None else math.nan
    return total, accuracy


def _retrieval(embed: Callable[[str], np.ndarray], data: EmbeddingData, cfg: EmbedderConfig
               ) -> tuple[RetrievalMetrics, dict[str, float]]:
    """``embed(split)``: unit embeddings of ``data.<split>`` as the pipeline makes them."""
    cat, query = embed("catalog"), embed("query")
    q_labels, c_labels = [s.class_key for s in data.query], [s.class_key for s in data.catalog]
    metrics = evaluate_retrieval(query, q_labels, cat, c_labels, query_groups=[s.dataset for s in data.query])
    calib = calibrate_unknown_threshold(query, q_labels, cat, c_labels,
                                        target_unknown_accept=cfg.unknown_target_accept)
    extra = {"unknown_threshold": calib.threshold, "unknown_accept_rate": calib.unknown_accept_rate,
             "known_accept_rate": calib.known_accept_rate}
    if data.distractors:
        distractors = embed("distractors")
        full = evaluate_retrieval(query, q_labels, np.vstack([cat, distractors]),
                                  c_labels + [s.class_key for s in data.distractors])
        extra.update({f"full_recall@{k}": v for k, v in full.recall_at.items()})
        extra["full_map@r"] = full.map_at_r
    return metrics, extra


# ---------------------------------------------------------------------------------------------- logging


def _plot_curves(history: list[dict[str, Any]], out_png: Path) -> None:
    epochs = [h["epoch"] for h in history]
    with png_figure(out_png, figsize=(11, 4), ncols=2) as (_, axes):
        from matplotlib.ticker import MaxNLocator

        axes[0].plot(epochs, [h["train_loss"] for h in history], label="train")
        axes[0].plot(epochs, [h["val_seen_loss"] for h in history], label="val (seen classes)")
        for key in ("recall@1", "recall@5", "map@r", "class_mean_recall@1", "full_recall@1", "val_seen_acc"):
            if key in history[0]:
                axes[1].plot(epochs, [h[key] for h in history], label=key, marker="o", markersize=3)
        axes[0].set(title="ArcFace loss", xlabel="epoch")
        axes[1].set(title="unseen-class retrieval (val_seen_acc: seen classes)", xlabel="epoch", ylim=(0, 1.02))
        for ax in axes:
            ax.legend()
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _write_history(history: list[dict[str, Any]], out_dir: Path) -> None:
    (out_dir / "history.json").write_text(json.dumps(history, indent=2))
    fields = list(dict.fromkeys(k for row in history for k in row))  # per-dataset columns may appear later
    with (out_dir / "history.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(history)
    _plot_curves(history, out_dir / "curves.png")


# ---------------------------------------------------------------------------------------------- training


def _epoch_indices(n: int, count: int, seed: int, epoch: int) -> list[int]:
    """``count`` training indices for ``epoch``: whole shuffled passes, the last one cut short."""
    rng = random.Random(seed * 1_000_003 + epoch)
    out: list[int] = []
    while len(out) < count:
        order = list(range(n))
        rng.shuffle(order)
        out.extend(order)
    return out[:count]


def _m_per_class_indices(labels: Sequence[int], cfg: EmbedderConfig, count: int, epoch: int) -> list[int]:
    """pytorch-metric-learning's ``MPerClassSampler`` (``m_per_class`` photos of each class in a batch), seeded
    per epoch so a resumed run draws the same batches (the sampler shuffles with PML's global numpy state)."""
    from pytorch_metric_learning import samplers
    from pytorch_metric_learning.utils import common_functions

    common_functions.NUMPY_RANDOM = np.random.RandomState(cfg.seed * 1_000_003 + epoch)
    sampler = samplers.MPerClassSampler(list(labels), m=cfg.m_per_class, batch_size=cfg.batch_size,
                                        length_before_new_iter=count)
    return list(sampler)[:count]


@torch.inference_mode()
def init_head_from_pca(model: Embedder, loss_fn: MetricLoss, features: torch.Tensor, labels: Sequence[int],
                       cfg: EmbedderConfig) -> float:
    """Linear head := the top ``embedding_dim`` principal components of the frozen backbone's pooled
    ``features`` (N x F) of the training crops; class weights := the classes' mean embeddings. Returns the
    share of the variance the components keep."""
    features = features.float().cpu()
    mean = features.mean(0)
    _, singular, v = torch.linalg.svd(features - mean, full_matrices=False)
    components = v[: cfg.embedding_dim]  # D x F, orthonormal rows
    linear = model.head[-1]
    linear.weight.copy_(components.to(linear.weight))
    linear.bias.copy_((-components @ mean).to(linear.bias))
    embedded = F.normalize((features - mean) @ components.T, dim=1)
    label_tensor = torch.as_tensor(list(labels))
    class_means = torch.stack([embedded[label_tensor == c].mean(0) for c in range(int(label_tensor.max()) + 1)])
    loss_fn.init_class_weights(F.normalize(class_means, dim=1).to(linear.weight.device))
    kept = float((singular[: cfg.embedding_dim] ** 2).sum() / (singular**2).sum())
    log.info("head initialised from PCA of %d training crops: %d components keep %.1f %% of the variance",
             len(features), cfg.embedding_dim, 100 * kept)
    return kept


class ImageFeed:
    """Training batches and validation embeddings from the crop images (the whole backbone runs)."""

    def __init__(self, cfg: EmbedderConfig, data: EmbeddingData, labels: Sequence[int], augment: Any,
                 device: torch.device) -> None:
        self.cfg, self.data, self.labels, self.augment, self.device = cfg, data, labels, augment, device

    def features(self, backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return backbone(x)

    def batches(self, order: list[int], epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        train_set = CropTensorSet(self.data.train, self.labels, self.cfg.input_spec, self.augment, self.cfg.seed,
                                  epoch)
        yield from _loader(train_set, self.cfg, sampler=order, drop_last=True)

    def pca_features(self, backbone: nn.Module) -> torch.Tensor:
        return torch.from_numpy(embed_samples(backbone, self.data.train, self.cfg, self.device, rotations=1,
                                              unit=False))

    def embed(self, model: Embedder, split: str, rotations: int | None = None) -> np.ndarray:
        return embed_samples(model, getattr(self.data, split), self.cfg, self.device, rotations=rotations)


class TrunkFeed(ImageFeed):
    """The same from cached frozen-trunk activations (``trunk_cache_views``): only the top runs."""

    def __init__(self, cfg: EmbedderConfig, data: EmbeddingData, labels: Sequence[int], augment: Any,
                 device: torch.device, backbone: nn.Module, progress: bool) -> None:
        super().__init__(cfg, data, labels, augment, device)
        from coinvision.trainer.emb_trunk import TrunkActivations, cache_trunk

        spec, stages = cfg.input_spec, cfg.freeze_stages
        # Activations depend on the trunk's weights, the crops and how views are made; the key covers them, so
        # recipes that share a trunk, and resumed runs, load them instead of recomputing (minutes on a CPU).
        trunk_state = {f"{i}.{k}": v for i, module in enumerate(trunk_modules(backbone, stages))
                       for k, v in module.state_dict().items()}
        base_key = {"trunk": fingerprint_state_dict(trunk_state), "stages": stages, "spec": str(spec),
                    "views": cfg.trunk_cache_views, "rotations": cfg.embed_rotations, "seed": cfg.seed,
                    "augment": str(cfg.augment)}
        folder = data.cache_folder or Path(cfg.crop_cache_dir)
        self.cache = {}
        for split in ("train", "val_seen", "catalog", "query", "distractors"):
            samples = getattr(data, split)
            key = hashlib.sha1(json.dumps({**base_key, "split": split, "crops": [str(x.crop_path) for x in samples]},
                                          sort_keys=True).encode()).hexdigest()[:16]
            path = folder / f"trunk_{split}_{key}.pt"
            if path.is_file():
                self.cache[split] = TrunkActivations(torch.load(path, weights_only=True))
                continue
            crops = CropTensorSet(samples, [0] * len(samples), spec)
            self.cache[split] = cache_trunk(
                backbone, stages, crops.square, len(samples), spec, augment=augment if split == "train" else None,
                aug_views=cfg.trunk_cache_views, rotations=1 if split == "val_seen" else cfg.embed_rotations,
                seed=cfg.seed, desc=f"trunk {split}", progress=progress)
            folder.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            torch.save(self.cache[split].activations, tmp)
            tmp.replace(path)  # never a half-written cache under the real name

    def features(self, backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
        from coinvision.trainer.emb_trunk import backbone_top

        return backbone_top(backbone, self.cfg.freeze_stages, x)

    def batches(self, order: list[int], epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        acts, bs = self.cache["train"], self.cfg.batch_size
        rng = np.random.default_rng([self.cfg.seed, epoch])
        for start in range(0, len(order) - bs + 1, bs):
            idx = order[start:start + bs]
            views = rng.integers(1, acts.views, size=len(idx))  # view 0 is the clean crop (PCA only)
            yield acts.batch(idx, views), torch.as_tensor([self.labels[i] for i in idx])

    @torch.inference_mode()
    def _pooled(self, backbone: nn.Module, acts: torch.Tensor) -> torch.Tensor:
        backbone.eval()
        return torch.cat([self.features(backbone, acts[i:i + 256].float()) for i in range(0, len(acts), 256)])

    def pca_features(self, backbone: nn.Module) -> torch.Tensor:
        return self._pooled(backbone, self.cache["train"].activations[:, 0])

    @torch.inference_mode()
    def embed(self, model: Embedder, split: str, rotations: int | None = None) -> np.ndarray:
        """``rotations=1`` uses view 0 only (``rotation_views``' first view is the crop itself)."""
        model.eval()
        acts = self.cache[split].activations
        if rotations == 1:
            acts = acts[:, :1]
        n, views = acts.shape[:2]
        pooled = self._pooled(model.backbone, acts.reshape(n * views, *acts.shape[2:]))
        vectors = model.embed_features(pooled).cpu().numpy().reshape(n, views, -1)
        return mean_unit_vector(vectors) if len(vectors) else np.zeros((0, self.cfg.embedding_dim), np.float32)


def make_feed(cfg: EmbedderConfig, data: EmbeddingData, model: Embedder, device: torch.device, *,
              progress: bool = True) -> ImageFeed:
    """Where training batches and validation embeddings come from: the crops, or (``trunk_cache_views``) the
    frozen trunk's cached activations of them."""
    labels, augment = [data.label_of(s) for s in data.train], build_augment(cfg.augment)
    if cfg.trunk_cache_views:
        return TrunkFeed(cfg, data, labels, augment, device, model.backbone, progress)
    return ImageFeed(cfg, data, labels, augment, device)


def _score(metrics: dict[str, Any]) -> tuple[float, float]:
    return metrics["recall@1"], metrics["map@r"]


def train_embedder(cfg: EmbedderConfig, *, resume: bool = False, data: EmbeddingData | None = None,
                   progress: bool = True) -> Path:
    """Train; every epoch: validation loss on seen classes, retrieval on unseen classes (Recall@k, MAP@R),
    unknown-coin threshold; log CSV/JSON/PNG; save ``last.pt`` (resumable) and ``best.pt`` (best Recall@1,
    MAP@R breaking ties). Returns the path of ``best.pt``."""
    from tqdm import tqdm

    torch.set_num_threads(cfg.num_threads)
    cv2.setNumThreads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out_dir / "config.yaml")
    device = _device(cfg)
    data = data or load_embedding_data(cfg, progress=progress)
    train_labels = [data.label_of(s) for s in data.train]
    val_labels = [data.label_of(s) for s in data.val_seen]
    steps = cfg.steps_per_epoch or len(data.train) // cfg.batch_size
    if steps < 1:
        raise ConfigError(f"{len(data.train)} training images < batch_size {cfg.batch_size}; lower batch_size")
    log.info("embedder data: %d train photos in %d classes, %d val_seen, %d catalog + %d query photos of %d "
             "unseen classes; %d photos without a coin; %d steps/epoch", len(data.train), len(data.class_keys),
             len(data.val_seen), len(data.catalog), len(data.query), len({s.class_key for s in data.catalog}),
             data.no_coin, steps)

    model = build_embedder(cfg).to(device)
    loss_fn = build_loss(cfg, len(data.class_keys)).to(device)
    opt_backbone, opt_head = build_optimizers(cfg, model, loss_fn)
    sched_backbone = _one_cycle(opt_backbone, cfg.lr_backbone, (cfg.epochs - cfg.freeze_backbone_epochs) * steps,
                                cfg.warmup_frac)
    sched_head = _one_cycle(opt_head, cfg.lr_head, cfg.epochs * steps, cfg.warmup_frac)
    history: list[dict[str, Any]] = []
    start_epoch, best = 0, (-1.0, -1.0)
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    if resume and last_path.is_file():
        ckpt = load_checkpoint(last_path, expected_kind=KIND)
        state = ckpt.training_state
        if state.get("class_keys") != data.class_keys:
            raise ConfigError(f"{last_path} was trained on other classes than this config's split; resume only "
                              "with the same data_roots / split, or start a new out_dir")
        model.load_state_dict(ckpt.state_dict)
        loss_fn.load_state_dict(state["loss"])
        opt_backbone.load_state_dict(state["opt_backbone"])
        opt_head.load_state_dict(state["opt_head"])
        restore_schedule(sched_backbone, state["sched_backbone"])
        restore_schedule(sched_head, state["sched_head"])
        history, best, start_epoch = state["history"], tuple(state["best"]), ckpt.epoch
        if "torch_rng" in state:
            torch.set_rng_state(state["torch_rng"])
        log.info("resumed from %s at epoch %d", last_path, start_epoch)
    elif resume:
        log.warning("--resume: %s does not exist, starting from scratch", last_path)
    feed = make_feed(cfg, data, model, device, progress=progress)
    if start_epoch == 0 and cfg.head_init == "pca":
        init_head_from_pca(model, loss_fn, feed.pca_features(model.backbone), train_labels, cfg)
    # The frozen pretrained backbone, the distillation teacher (a resumed run rebuilds it from the same weights).
    teacher = copy.deepcopy(_build_backbone(cfg)).to(device).eval().requires_grad_(False) \
        if cfg.distill_weight > 0 else None

    for epoch in range(start_epoch, cfg.epochs):
        frozen = epoch < cfg.freeze_backbone_epochs
        model.train()
        model.backbone.requires_grad_(not frozen)
        if frozen:
            model.backbone.eval()  # keep the pretrained BN statistics while only the head learns
        for module in trunk_modules(model.backbone, cfg.freeze_stages):
            module.requires_grad_(False)
            module.eval()
        if cfg.sampler == "m_per_class":
            order = _m_per_class_indices(train_labels, cfg, steps * cfg.batch_size, epoch)
        else:
            order = _epoch_indices(len(data.train), steps * cfg.batch_size, cfg.seed, epoch)
        started, running = time.time(), 0.0
        bar = tqdm(feed.batches(order, epoch), total=steps,
                   desc=f"epoch {epoch + 1}/{cfg.epochs}{' (head only)' if frozen else ''}", disable=not progress)
        for step, (x, y) in enumerate(bar, start=1):
            x, y = x.to(device), y.to(device)
            with torch.set_grad_enabled(not frozen):
                features = feed.features(model.backbone, x)
            emb = model.embed_features(features)
            loss = loss_fn(emb, y)
            if teacher is not None:
                with torch.no_grad():
                    target = feed.features(teacher, x)
                loss = loss + cfg.distill_weight * similarity_distillation(emb, target)
            opt_head.zero_grad(set_to_none=True)
            opt_backbone.zero_grad(set_to_none=True)
            loss.backward()
            opt_head.step()
            sched_head.step()
            if not frozen:
                opt_backbone.step()
                sched_backbone.step()
            running += float(loss.detach())
            bar.set_postfix(loss=f"{running / step:.4f}")
        train_s = time.time() - started
        train_loss = running / max(1, steps)
        val_loss, val_acc = _val_seen_loss(loss_fn, feed.embed(model, "val_seen", rotations=1), val_labels)
        retrieval, calib = _retrieval(lambda split: feed.embed(model, split), data, cfg)
        row: dict[str, Any] = {
            "epoch": epoch + 1, "backbone_frozen": frozen, "train_loss": train_loss, "val_seen_loss": val_loss,
            "val_seen_acc": val_acc, **retrieval.as_row(), **calib,
            "lr_backbone": 0.0 if frozen else sched_backbone.get_last_lr()[0], "lr_head": sched_head.get_last_lr()[0],
            "train_images_per_s": steps * cfg.batch_size / max(train_s, 1e-9),
            "epoch_s": time.time() - started,
        }
        history.append(row)
        _write_history(history, out_dir)
        score = _score(row)
        is_best = score > best
        best = max(best, score)
        metrics = {k: v for k, v in row.items() if not k.startswith("lr_")}
        state_dict = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        training_state = {
            "opt_backbone": opt_backbone.state_dict(), "opt_head": opt_head.state_dict(),
            "sched_backbone": sched_backbone.state_dict(), "sched_head": sched_head.state_dict(),
            "loss": {k: v.detach().cpu().clone() for k, v in loss_fn.state_dict().items()},
            "history": history, "best": list(best), "class_keys": data.class_keys,
            "torch_rng": torch.get_rng_state(),  # dropout masks continue as if never interrupted
        }
        save_checkpoint(last_path, Checkpoint(KIND, config_to_dict(cfg), state_dict, metrics, epoch + 1,
                                              training_state))
        if is_best:
            release_cfg = cfg if cfg.unknown_threshold is not None else replace(
                cfg, unknown_threshold=calib["unknown_threshold"])
            save_checkpoint(best_path, Checkpoint(KIND, config_to_dict(release_cfg), state_dict, metrics, epoch + 1,
                                                  {"class_keys": data.class_keys}))
            plot_recall_at_k(retrieval, out_dir / "recall_at_k.png",
                             title=f"Recall@k, unseen classes (epoch {epoch + 1}, {retrieval.n_query} queries)")
        log.info("epoch %d: train %.4f | val_seen %.4f | Recall@1 %.4f | MAP@R %.4f", epoch + 1, train_loss,
                 val_loss, retrieval.recall_at[1], retrieval.map_at_r)
        if progress:
            recalls = "  ".join(f"R@{k} {v:.3f}" for k, v in retrieval.recall_at.items())
            print(f"epoch {epoch + 1}: train {train_loss:.4f}  val_seen {val_loss:.4f} (acc {val_acc:.3f})  "
                  f"unseen: {recalls}  MAP@R {retrieval.map_at_r:.3f}  {row['train_images_per_s']:.1f} img/s",
                  flush=True)
    if not best_path.is_file():
        raise ModelLoadError(f"{out_dir}: no epoch finished, so there is no best.pt")
    return best_path


# ------------------------------------------------------------------------------------------ measurement


def measure_throughput(cfg: EmbedderConfig, *, batches: int = 3, batch_size: int | None = None,
                       num_classes: int = 100) -> dict[str, float]:
    """Images/s of one training step (forward, ArcFace, backward, both optimizers) and of inference, on
    random inputs with ``cfg.num_threads`` threads; one warm-up batch is not timed. Sizes CPU runs."""
    torch.set_num_threads(cfg.num_threads)
    batch_size = batch_size or cfg.batch_size
    torch.manual_seed(0)
    model = build_embedder(replace(cfg, pretrained_path=None))
    loss_fn = build_loss(cfg, num_classes)
    opt_backbone, opt_head = build_optimizers(cfg, model, loss_fn)
    x = torch.randn(batch_size, 3, cfg.size_px, cfg.size_px)
    y = torch.randint(0, num_classes, (batch_size,))

    def train_step() -> None:
        loss = loss_fn(model(x), y)
        opt_backbone.zero_grad()
        opt_head.zero_grad()
        loss.backward()
        opt_backbone.step()
        opt_head.step()

    model.train()
    train_step()
    started = time.perf_counter()
    for _ in range(batches):
        train_step()
    train_ips = batches * batch_size / (time.perf_counter() - started)
    model.eval()
    with torch.inference_mode():
        model(x)
        started = time.perf_counter()
        for _ in range(batches):
            model(x)
        infer_ips = batches * batch_size / (time.perf_counter() - started)
    return {"train_images_per_s": train_ips, "infer_images_per_s": infer_ips,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6}


# ------------------------------------------------------------------------------------ pipeline inference


class TorchEmbedPipeline:
    """Photo -> unit vector through the full pipeline in PyTorch: segment -> ``coin_crop`` -> embedder on the
    rotated views -> their normalised mean (the SDK's steps, with the embedder in PyTorch)."""

    def __init__(self, model: Embedder, cfg: EmbedderConfig, crop_source: CropSource,
                 device: str | torch.device = "cpu") -> None:
        self.model, self.cfg, self.crop_source, self.device = model.eval().to(device), cfg, crop_source, device
        self.no_coin = 0

    @classmethod
    def from_models_dir(cls, models_dir: str | Path, *, checkpoint: str | Path | None = None,
                        num_threads: int = 1) -> TorchEmbedPipeline:
        """``embedder.pt`` (or ``checkpoint``) with ``segmenter.pt`` from ``models_dir``, else the embedder
        config's ``segmenter_checkpoint``; an embedder trained without background removal letterboxes."""
        from coinvision.trainer.emb_data import LetterboxCropSource

        torch.set_num_threads(num_threads)
        models_dir = Path(models_dir)
        model, cfg, _ = load_embedder(checkpoint or models_dir / "embedder.pt")
        source: CropSource
        if not cfg.background_removal:
            source = LetterboxCropSource(cfg.size_px)
        elif (models_dir / "segmenter.pt").is_file():
            source = crop_source_from_models_dir(models_dir, "torch", cfg.size_px, cfg.crop_margin_frac, num_threads,
                                                 cfg.crop_interpolation)
        elif cfg.segmenter_checkpoint:
            source = crop_source_from_checkpoint(cfg.segmenter_checkpoint, cfg.size_px, cfg.crop_margin_frac,
                                                 cfg.crop_interpolation)
        else:
            raise ModelLoadError(f"{models_dir}/segmenter.pt is missing and the embedder config names no "
                                 "segmenter_checkpoint; put the segmenter checkpoint there as segmenter.pt")
        return cls(model, cfg, source)

    @torch.inference_mode()
    def embed(self, image: np.ndarray) -> np.ndarray:
        crop, found = self.crop_source.crop(image)
        self.no_coin += not found
        spec = self.cfg.input_spec
        views = rotation_views(crop, self.cfg.embed_rotations, spec.pad_value)
        x = torch.from_numpy(np.concatenate([to_model_input(v, spec) for v in views])).to(self.device)
        return mean_unit_vector(self.model(x).float().cpu().numpy())
