"""Embedder training: a metric-learning loss (ArcFace by default, ``emb_losses``) on cached background-removed
crops (``emb_data``), validated every epoch by retrieval on coin classes it never saw. The loop's bookkeeping
(device, history, resume, checkpoints, curves) is ``train_loop``'s; the model is ``emb_model``'s.

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
import gc
import hashlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from coinvision.sdk.errors import ConfigError
from coinvision.sdk.evaluation import RetrievalMetrics, calibrate_unknown_threshold, evaluate_retrieval
from coinvision.sdk.preprocess import InputSpec, mean_unit_vector, rotation_views, to_model_input
from coinvision.trainer.checkpoint import fingerprint_state_dict, restore_schedule
from coinvision.trainer.emb_config import EmbedderConfig
from coinvision.trainer.emb_data import (
    CropTensorSet,
    EmbeddingData,
    Sample,
    build_augment,
    load_embedding_data,
    m_per_class_order,
    rank_batches,
)
from coinvision.trainer.emb_losses import MetricLoss, build_loss, similarity_distillation
from coinvision.trainer.emb_model import KIND, Embedder, build_backbone, build_embedder
from coinvision.trainer.emb_trunk import trunk_modules
from coinvision.trainer.plotting import plot_recall_at_k, png_figure
from coinvision.trainer.train_loop import TrainingRun
from torch import nn

__all__ = [
    "ImageFeed",
    "TrunkFeed",
    "build_optimizers",
    "embed_samples",
    "embed_views",
    "init_head_from_pca",
    "make_feed",
    "measure_throughput",
    "split_parameters",
    "train_embedder",
]

log = logging.getLogger(__name__)


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


def _loader(dataset: torch.utils.data.Dataset, cfg: EmbedderConfig, *, batch_size: int | None = None,
            sampler: Sequence[int] | None = None, drop_last: bool = False) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size or cfg.batch_size, sampler=sampler,
                                       shuffle=False, num_workers=cfg.num_workers, drop_last=drop_last,
                                       persistent_workers=False)


@torch.inference_mode()
def embed_views(forward: Callable[[torch.Tensor], torch.Tensor], samples: Sequence[Sample], spec: InputSpec,
                views: int, device: torch.device, *, chunk: int = 64, desc: str | None = None) -> np.ndarray:
    """``forward`` of the SDK's ``rotation_views`` of every cached crop, no augmentation: ``(N, views, D)``.
    ``desc``: show a progress bar with that label."""
    from tqdm import tqdm

    per_chunk = max(1, chunk // views)
    out: list[np.ndarray] = []
    with tqdm(total=len(samples), desc=desc, unit="crop", disable=desc is None) as bar:
        for start in range(0, len(samples), per_chunk):
            part = samples[start:start + per_chunk]
            crops = CropTensorSet(part, [0] * len(part), spec)
            squares = [v for i in range(len(crops)) for v in rotation_views(crops.square(i), views, spec.pad_value)]
            x = torch.from_numpy(np.concatenate([to_model_input(v, spec) for v in squares])).to(device)
            out.append(forward(x).float().cpu().numpy().reshape(len(crops), views, -1))
            bar.update(len(crops))
    return np.concatenate(out) if out else np.zeros((0, views, 0), np.float32)


def embed_samples(model: nn.Module, samples: Sequence[Sample], cfg: EmbedderConfig, device: torch.device,
                  *, rotations: int | None = None, unit: bool = True) -> np.ndarray:
    """Unit embeddings ``(N, D)`` of cached crops, no augmentation, averaged over ``rotations`` views (default
    ``cfg.embed_rotations``) with the SDK's own ``rotation_views`` / ``mean_unit_vector``. ``model`` may also be
    a bare backbone (pooled features, for the frozen baselines and the PCA head); ``unit=False`` returns the
    plain mean of the views' outputs, not normalised (what a linear head sees)."""
    model.eval()
    n_views = cfg.embed_rotations if rotations is None else rotations
    if not samples:
        return np.zeros((0, cfg.embedding_dim), np.float32)
    per_view = embed_views(model, samples, cfg.input_spec, n_views, device, chunk=2 * cfg.batch_size)
    return mean_unit_vector(per_view) if unit else per_view.mean(axis=1)


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




# ---------------------------------------------------------------------------------------------- training


def _epoch_indices(n: int, count: int, seed: int, epoch: int, batch_size: int = 1, rank: int = 0,
                   world_size: int = 1) -> list[int]:
    """``count`` training indices for ``epoch`` on ``rank``: whole shuffled passes, the last one cut short, drawn
    for all ranks at once and dealt out by batch (:func:`emb_data.rank_batches`)."""
    rng = random.Random(seed * 1_000_003 + epoch)
    out: list[int] = []
    while len(out) < count * world_size:
        order = list(range(n))
        rng.shuffle(order)
        out.extend(order)
    return rank_batches(out[:count * world_size], batch_size, rank, world_size)


def _m_per_class_indices(labels: Sequence[int], cfg: EmbedderConfig, count: int, epoch: int, rank: int = 0,
                         world_size: int = 1) -> list[int]:
    """``count`` indices of rank ``rank``: batches of ``m_per_class`` photos per class
    (:func:`emb_data.m_per_class_order`), seeded per epoch so a resumed run draws the same batches; every rank
    gets its own batches of one shared draw."""
    order = m_per_class_order(labels, cfg.m_per_class, cfg.batch_size, count * world_size,
                              cfg.seed * 1_000_003 + epoch)
    return rank_batches(order, cfg.batch_size, rank, world_size)


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

    rank = 0  # a distributed run's process (make_feed sets them)
    world_size = 1

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
        # each rank draws its own views (one process: the key it always had)
        rng = np.random.default_rng([self.cfg.seed, epoch, *([self.rank] if self.world_size > 1 else [])])
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
              progress: bool = True, rank: int = 0, world_size: int = 1) -> ImageFeed:
    """Where training batches and validation embeddings come from: the crops, or (``trunk_cache_views``) the
    frozen trunk's cached activations of them. ``rank`` / ``world_size``: a distributed run's process."""
    labels, augment = [data.label_of(s) for s in data.train], build_augment(cfg.augment)
    if cfg.trunk_cache_views:
        feed: ImageFeed = TrunkFeed(cfg, data, labels, augment, device, model.backbone, progress)
    else:
        feed = ImageFeed(cfg, data, labels, augment, device)
    feed.rank, feed.world_size = rank, world_size
    return feed


class _TrainForward(nn.Module):
    """The training step's forward as one module (what DDP wraps): features (the whole backbone, or its top over
    cached trunk activations), the head, the metric loss (whose class centres are parameters too) and the
    distillation term. ``frozen``: no gradients into the backbone."""

    def __init__(self, model: Embedder, loss_fn: MetricLoss, feed: ImageFeed, teacher: nn.Module | None,
                 distill_weight: float) -> None:
        super().__init__()
        self.model, self.loss_fn = model, loss_fn
        # not submodules: the feed holds no parameters and the teacher is frozen, so DDP has nothing of theirs
        # to synchronise, and the replica check compares only what trains
        self._feed, self._teacher, self._distill_weight = feed, [teacher], distill_weight

    def forward(self, x: torch.Tensor, y: torch.Tensor, frozen: bool) -> torch.Tensor:
        with torch.set_grad_enabled(not frozen and torch.is_grad_enabled()):
            features = self._feed.features(self.model.backbone, x)
        emb = self.model.embed_features(features)
        loss = self.loss_fn(emb, y)
        teacher = self._teacher[0]
        if teacher is not None:
            with torch.no_grad():
                target = self._feed.features(teacher, x)
            loss = loss + self._distill_weight * similarity_distillation(emb, target)
        return loss


def _score(metrics: dict[str, Any]) -> tuple[float, float]:
    return metrics["recall@1"], metrics["map@r"]


def train_embedder(cfg: EmbedderConfig, *, resume: bool = False, data: EmbeddingData | None = None,
                   progress: bool = True) -> Path:
    """Train; every epoch: validation loss on seen classes, retrieval on unseen classes (Recall@k, MAP@R),
    unknown-coin threshold; log CSV/JSON/PNG; save ``last.pt`` (resumable) and ``best.pt`` (best Recall@1,
    MAP@R breaking ties). Returns the path of ``best.pt``."""
    if cfg.branch_backbone:
        raise ConfigError(f"branch_backbone={cfg.branch_backbone!r}: a frozen branch is not trained; train without it, "
                          "then add it with `coinvision train embedder-branch`")
    if cfg.companion_weight:
        raise ConfigError(f"companion_weight={cfg.companion_weight}: a companion is another trained run, not trained "
                          "here; train without it, then add it with `coinvision train embedder-branch --companion`")
    if cfg.whiten:
        raise ConfigError("whiten=True: the whitening is fitted on a finished embedder, not trained; train without "
                          "it, then fit it with `coinvision train embedder-whiten`")
    run = TrainingRun(KIND, cfg, plot=_plot_curves, initial_best=(-1.0, -1.0))
    device = run.device
    with run.main_first():  # rank 0 fills the crop cache, the other ranks then read it
        data = data or load_embedding_data(cfg, progress=progress and run.is_main)
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
    state = run.resume(model) if resume else None
    if state is not None:
        if state.get("class_keys") != data.class_keys:
            raise ConfigError(f"{run.last_path} was trained on other classes than this config's split; resume only "
                              "with the same data_roots / split, or start a new out_dir")
        loss_fn.load_state_dict(state["loss"])
        opt_backbone.load_state_dict(state["opt_backbone"])
        opt_head.load_state_dict(state["opt_head"])
        restore_schedule(sched_backbone, state["sched_backbone"])
        restore_schedule(sched_head, state["sched_head"])
        run.best = tuple(state["best"])
        if "torch_rng" in state:
            torch.set_rng_state(state["torch_rng"])
    with run.main_first():  # the same for the trunk activations cache
        feed = make_feed(cfg, data, model, device, progress=progress and run.is_main, rank=run.rank,
                         world_size=run.world_size)
    if run.start_epoch == 0 and cfg.head_init == "pca":
        init_head_from_pca(model, loss_fn, feed.pca_features(model.backbone), train_labels, cfg)
    # The frozen pretrained backbone, the distillation teacher (a resumed run rebuilds it from the same weights).
    teacher = copy.deepcopy(build_backbone(cfg)).to(device).eval().requires_grad_(False) \
        if cfg.distill_weight > 0 else None
    forward = _TrainForward(model, loss_fn, feed, teacher, cfg.distill_weight)
    net: nn.Module | None = None
    net_frozen: bool | None = None

    for epoch in range(run.start_epoch, cfg.epochs):
        frozen = epoch < cfg.freeze_backbone_epochs
        model.train()
        model.backbone.requires_grad_(not frozen)
        if frozen:
            model.backbone.eval()  # keep the pretrained BN statistics while only the head learns
        for module in trunk_modules(model.backbone, cfg.freeze_stages):
            module.requires_grad_(False)
            module.eval()
        if net is None or frozen != net_frozen:
            # DDP syncs the parameters that need gradients when it is built: build it again when that set changes,
            # after the old wrapper is gone (its hooks on the same parameters go with it)
            net = None
            gc.collect()
            net, net_frozen = run.distribute(forward), frozen
        if cfg.sampler == "m_per_class":
            order = _m_per_class_indices(train_labels, cfg, steps * cfg.batch_size, epoch, run.rank, run.world_size)
        else:
            order = _epoch_indices(len(data.train), steps * cfg.batch_size, cfg.seed, epoch, cfg.batch_size,
                                   run.rank, run.world_size)

        def step(batch: tuple[torch.Tensor, torch.Tensor], frozen: bool = frozen) -> float:
            x, y = batch[0].to(device), batch[1].to(device)
            with run.amp.autocast():
                loss = net(x, y, frozen)  # noqa: B023 (this epoch's wrapper; a default argument would keep it alive)
            opt_head.zero_grad(set_to_none=True)
            opt_backbone.zero_grad(set_to_none=True)
            # a schedule moves only its own optimizer's rate, so stepping both optimizers first changes nothing
            run.amp.backward_step(loss, [opt_head] if frozen else [opt_head, opt_backbone])
            sched_head.step()
            if not frozen:
                sched_backbone.step()
            return float(loss.detach())

        started = time.time()
        train_loss = run.train_epoch(feed.batches(order, epoch), step, steps=steps, progress=progress,
                                     desc=f"epoch {epoch + 1}/{cfg.epochs}{' (head only)' if frozen else ''}")
        train_s = time.time() - started
        run.end_epoch(forward)  # the model and the loss's class centres
        if not run.is_main:
            continue  # rank 0 validates and writes; the others go on to the next epoch's steps (DDP waits for it)
        val_loss, val_acc = _val_seen_loss(loss_fn, feed.embed(model, "val_seen", rotations=1), val_labels)
        retrieval, calib = _retrieval(lambda split: feed.embed(model, split), data, cfg)
        row: dict[str, Any] = {
            "epoch": epoch + 1, "backbone_frozen": frozen, "train_loss": train_loss, "val_seen_loss": val_loss,
            "val_seen_acc": val_acc, **retrieval.as_row(), **calib,
            "lr_backbone": 0.0 if frozen else sched_backbone.get_last_lr()[0], "lr_head": sched_head.get_last_lr()[0],
            "train_images_per_s": steps * cfg.batch_size * run.world_size / max(train_s, 1e-9),
            "epoch_s": time.time() - started,
        }
        run.record(row)
        is_best = run.improved(_score(row))
        training_state = {
            "opt_backbone": opt_backbone.state_dict(), "opt_head": opt_head.state_dict(),
            "sched_backbone": sched_backbone.state_dict(), "sched_head": sched_head.state_dict(),
            "loss": {k: v.detach().cpu().clone() for k, v in loss_fn.state_dict().items()},
            "history": run.history, "best": list(run.best), "class_keys": data.class_keys,
            "torch_rng": torch.get_rng_state(),  # dropout masks continue as if never interrupted
        }
        # best.pt carries the calibrated unknown-coin threshold unless the config fixes one
        release_cfg = cfg if cfg.unknown_threshold is not None else replace(
            cfg, unknown_threshold=calib["unknown_threshold"])
        run.save(model, epoch, {k: v for k, v in row.items() if not k.startswith("lr_")}, training_state,
                 is_best=is_best, best_config=release_cfg, best_state={"class_keys": data.class_keys})
        if is_best:
            plot_recall_at_k(retrieval, run.out_dir / "recall_at_k.png",
                             title=f"Recall@k, unseen classes (epoch {epoch + 1}, {retrieval.n_query} queries)")
        log.info("epoch %d: train %.4f | val_seen %.4f | Recall@1 %.4f | MAP@R %.4f", epoch + 1, train_loss,
                 val_loss, retrieval.recall_at[1], retrieval.map_at_r)
        if progress:
            recalls = "  ".join(f"R@{k} {v:.3f}" for k, v in retrieval.recall_at.items())
            print(f"epoch {epoch + 1}: train {train_loss:.4f}  val_seen {val_loss:.4f} (acc {val_acc:.3f})  "
                  f"unseen: {recalls}  MAP@R {retrieval.map_at_r:.3f}  {row['train_images_per_s']:.1f} img/s",
                  flush=True)
    return run.finish()


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

