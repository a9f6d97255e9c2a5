"""The coin embedder: a timm backbone, a small FC head, a 64-d L2-normalised embedding, trained with ArcFace
and validated every epoch by retrieval on coin classes it never saw.

Contract (see the briefing): ``build_embedder(cfg)`` takes a normalised NCHW batch (``InputSpec``) of
background-removed crops and returns unit vectors ``NxD``; ``load_embedder(path) -> (model.eval(), cfg,
checkpoint)``; ``embedder_metadata(cfg, fingerprint)``. Crops come from ``coinvision.sdk.preprocess`` only.

Two optimizers and two LR schedules: the backbone (pretrained or not) wants a smaller step than the freshly
initialised head and the ArcFace class centres, and ``freeze_backbone_epochs`` trains the head alone first,
so a pretrained backbone is not wrecked by gradients from a random head.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import timm
import torch
import torch.nn.functional as F
from coinvision.sdk.config_io import config_to_dict, save_config
from coinvision.sdk.errors import ConfigError, ModelLoadError
from coinvision.sdk.model_meta import ModelMetadata
from coinvision.sdk.preprocess import InputSpec, to_model_input
from coinvision.trainer.checkpoint import Checkpoint, load_checkpoint, load_model, restore_schedule, save_checkpoint
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
from coinvision.trainer.plotting import png_figure
from coinvision.trainer.retrieval import (
    RetrievalMetrics,
    calibrate_unknown_threshold,
    evaluate_retrieval,
    plot_recall_at_k,
)
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
    "load_embedder",
    "measure_throughput",
    "split_parameters",
    "train_embedder",
]

log = logging.getLogger(__name__)

KIND = "embedder"
LOSSES = ("arcface", "subcenter_arcface")


@dataclass(frozen=True)
class EmbedderConfig:
    # model
    backbone: str = "efficientnet_b0"  # any timm model name
    pad_type: str = ""  # timm conv padding; "same" for weights ported from TF/TFLite
    pretrained_path: str | None = None  # local timm weights file for the backbone (no hub access)
    head_hidden_dims: tuple[int, ...] = (512,)  # Linear-BN-ReLU-Dropout blocks before the embedding layer
    head_dropout: float = 0.1
    embedding_dim: int = 64
    size_px: int = 224
    # loss
    loss: str = "arcface"  # "arcface" | "subcenter_arcface" (ablation)
    margin_rad: float = 0.2  # additive angular margin, RADIANS (pytorch-metric-learning wants degrees)
    scale: float = 25.0
    sub_centers: int = 3  # subcenter_arcface only
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
    epochs: int = 10
    steps_per_epoch: int = 0  # 0 = one pass over the training images
    batch_size: int = 32
    lr_backbone: float = 1e-3
    lr_head: float = 3e-3  # FC head + ArcFace class centres
    weight_decay: float = 1e-4
    warmup_frac: float = 0.1  # one-cycle warm-up share of each schedule
    freeze_backbone_epochs: int = 0  # head-only epochs first (backbone in eval mode, not stepped)
    seed: int = 0
    num_threads: int = 1
    num_workers: int = 0
    device: str = "auto"  # "auto" -> cuda when present, else cpu
    out_dir: str = "runs/embedder"

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss={self.loss!r}: must be one of {LOSSES}")
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
        return InputSpec(size_px=self.size_px)


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
                                 "(coinvision pretrained port-mobilenetv2 writes one for mobilenetv2_100)")
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
               "loss": cfg.loss, "margin_rad": cfg.margin_rad, "scale": cfg.scale},
    )


# -------------------------------------------------------------------------------------- loss, optimizers


def arcface_margin_deg(margin_rad: float) -> float:
    """pytorch-metric-learning's ``ArcFaceLoss(margin=...)`` is in DEGREES; our configs are in radians."""
    return math.degrees(margin_rad)


def build_loss(cfg: EmbedderConfig, num_classes: int) -> nn.Module:
    """ArcFace (or SubCenter-ArcFace) over ``num_classes`` training classes; owns the class centres ``W``."""
    from pytorch_metric_learning import losses

    if num_classes < 2:
        raise ConfigError(f"ArcFace needs >= 2 training classes, the split has {num_classes}")
    common = {"num_classes": num_classes, "embedding_size": cfg.embedding_dim,
              "margin": arcface_margin_deg(cfg.margin_rad), "scale": cfg.scale}
    if cfg.loss == "subcenter_arcface":
        return losses.SubCenterArcFaceLoss(sub_centers=cfg.sub_centers, **common)
    return losses.ArcFaceLoss(**common)


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
def embed_samples(model: Embedder, samples: Sequence[Sample], cfg: EmbedderConfig, device: torch.device
                  ) -> np.ndarray:
    """Unit embeddings ``(N, D)`` of cached crops, no augmentation."""
    model.eval()
    data = CropTensorSet(samples, [0] * len(samples), cfg.input_spec)
    out = [model(x.to(device)).float().cpu() for x, _ in _loader(data, cfg, batch_size=2 * cfg.batch_size)]
    return torch.cat(out).numpy()


@torch.inference_mode()
def _val_seen_loss(model: Embedder, loss_fn: nn.Module, samples: Sequence[Sample], labels: Sequence[int],
                   cfg: EmbedderConfig, device: torch.device) -> tuple[float, float]:
    """ArcFace loss (margin included) and class-centre accuracy on held-out photos of training classes."""
    if not samples:
        return math.nan, math.nan
    model.eval()
    total, correct = 0.0, 0
    for x, y in _loader(CropTensorSet(samples, labels, cfg.input_spec), cfg, batch_size=2 * cfg.batch_size):
        emb, y = model(x.to(device)), y.to(device)
        total += float(loss_fn(emb, y)) * len(y)
        # PML's SubCenter get_cosine already takes the max over sub-centres
        correct += int((loss_fn.get_cosine(emb).argmax(dim=1) == y).sum())
    return total / len(samples), correct / len(samples)


def _retrieval(model: Embedder, data: EmbeddingData, cfg: EmbedderConfig, device: torch.device
               ) -> tuple[RetrievalMetrics, dict[str, float]]:
    cat = embed_samples(model, data.catalog, cfg, device)
    query = embed_samples(model, data.query, cfg, device)
    q_labels, c_labels = [s.class_key for s in data.query], [s.class_key for s in data.catalog]
    metrics = evaluate_retrieval(query, q_labels, cat, c_labels, query_groups=[s.dataset for s in data.query])
    calib = calibrate_unknown_threshold(query, q_labels, cat, c_labels,
                                        target_unknown_accept=cfg.unknown_target_accept)
    extra = {"unknown_threshold": calib.threshold, "unknown_accept_rate": calib.unknown_accept_rate,
             "known_accept_rate": calib.known_accept_rate}
    if data.distractors:
        distractors = embed_samples(model, data.distractors, cfg, device)
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

    augment = build_augment(cfg.augment)
    for epoch in range(start_epoch, cfg.epochs):
        frozen = epoch < cfg.freeze_backbone_epochs
        model.train()
        model.backbone.requires_grad_(not frozen)
        if frozen:
            model.backbone.eval()  # keep the pretrained BN statistics while only the head learns
        train_set = CropTensorSet(data.train, train_labels, cfg.input_spec, augment, cfg.seed, epoch)
        loader = _loader(train_set, cfg, sampler=_epoch_indices(len(data.train), steps * cfg.batch_size,
                                                                cfg.seed, epoch), drop_last=True)
        started, running = time.time(), 0.0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}{' (head only)' if frozen else ''}",
                   disable=not progress)
        for step, (x, y) in enumerate(bar, start=1):
            x, y = x.to(device), y.to(device)
            if frozen:
                with torch.no_grad():
                    features = model.backbone(x)
                emb = model.embed_features(features)
            else:
                emb = model(x)
            loss = loss_fn(emb, y)
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
        train_loss = running / max(1, len(loader))
        val_loss, val_acc = _val_seen_loss(model, loss_fn, data.val_seen, val_labels, cfg, device)
        retrieval, calib = _retrieval(model, data, cfg, device)
        row: dict[str, Any] = {
            "epoch": epoch + 1, "backbone_frozen": frozen, "train_loss": train_loss, "val_seen_loss": val_loss,
            "val_seen_acc": val_acc, **retrieval.as_row(), **calib,
            "lr_backbone": 0.0 if frozen else sched_backbone.get_last_lr()[0], "lr_head": sched_head.get_last_lr()[0],
            "train_images_per_s": len(loader) * cfg.batch_size / max(train_s, 1e-9),
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
    """Photo -> unit vector through the full pipeline in PyTorch: segment -> ``coin_crop`` -> embedder."""

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
            source = crop_source_from_models_dir(models_dir, "torch", cfg.size_px, cfg.crop_margin_frac, num_threads)
        elif cfg.segmenter_checkpoint:
            source = crop_source_from_checkpoint(cfg.segmenter_checkpoint, cfg.size_px, cfg.crop_margin_frac)
        else:
            raise ModelLoadError(f"{models_dir}/segmenter.pt is missing and the embedder config names no "
                                 "segmenter_checkpoint; put the segmenter checkpoint there as segmenter.pt")
        return cls(model, cfg, source)

    @torch.inference_mode()
    def embed(self, image: np.ndarray) -> np.ndarray:
        crop, found = self.crop_source.crop(image)
        self.no_coin += not found
        x = torch.from_numpy(to_model_input(crop, self.cfg.input_spec)).to(self.device)
        return self.model(x)[0].float().cpu().numpy()
