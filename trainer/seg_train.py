"""Segmenter training: Dice loss on synthesized scenes (``seg_scenes``) mixed with augmented real auto-labelled
photos (``seg_labels``), validated every epoch on held-out synthetic scenes AND held-out real photos. The loop's
bookkeeping (device, history, resume, checkpoints, curves) is ``train_loop``'s; the model is ``seg_model``'s.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np
import segmentation_models_pytorch as smp
import torch
from coinvision.sdk.errors import ConfigError, DatasetError, ModelLoadError
from coinvision.sdk.images import load_image
from coinvision.sdk.preprocess import InputSpec, crop_padded, letterbox, square_bbox, to_model_input
from coinvision.trainer.checkpoint import load_checkpoint, restore_schedule
from coinvision.trainer.plotting import png_figure
from coinvision.trainer.seg_config import SegmenterConfig, SynthConfig
from coinvision.trainer.seg_labels import LabelledImage, load_mask, read_label_manifest
from coinvision.trainer.seg_model import KIND, build_segmenter, load_segmenter
from coinvision.trainer.seg_scenes import SceneSynthesizer
from coinvision.trainer.tflite_port import conv_bn_pairs, recalibrate_batchnorm
from coinvision.trainer.train_loop import TrainingRun
from torch import nn

__all__ = [
    "IOU_THRESHOLDS",
    "PassViews",
    "RealFlagged",
    "SegData",
    "SegTrainSet",
    "iou_at",
    "letterbox_pair",
    "load_seg_data",
    "split_backgrounds",
    "split_seg_labels",
    "train_segmenter",
    "val_scene_synthesizer",
]

log = logging.getLogger(__name__)

IOU_THRESHOLDS = (0.3, 0.5)


# ----------------------------------------------------------------------------------------------- metrics


def iou_at(prob: torch.Tensor, target: torch.Tensor, threshold: float) -> float:
    """Mean per-image IoU of ``prob >= threshold`` against the binary target (smp metrics)."""
    tp, fp, fn, tn = smp.metrics.get_stats(prob, target.long(), mode="binary", threshold=threshold)
    return float(smp.metrics.iou_score(tp, fp, fn, tn, reduction="micro-imagewise", zero_division=1.0))


def _evaluate(model: nn.Module, images: torch.Tensor, masks: torch.Tensor, loss_fn: nn.Module,
              device: torch.device, batch_size: int) -> dict[str, float]:
    model.eval()
    probs, losses = [], []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            logits = model(images[i : i + batch_size].to(device))
            target = masks[i : i + batch_size].to(device)
            losses.append(float(loss_fn(logits, target)) * len(target))
            probs.append(torch.sigmoid(logits).cpu())
    prob = torch.cat(probs)
    out = {"dice_loss": sum(losses) / len(images)}
    for t in IOU_THRESHOLDS:
        out[f"iou@{t}"] = iou_at(prob, masks, t)
    return out


# -------------------------------------------------------------------------------------------------- data


def _to_tensor(image: np.ndarray, mask: np.ndarray, spec: InputSpec) -> tuple[torch.Tensor, torch.Tensor]:
    if mask.shape != (spec.size_px, spec.size_px):
        mask = cv2.resize(mask.astype(np.uint8), (spec.size_px, spec.size_px), interpolation=cv2.INTER_NEAREST)
    x = torch.from_numpy(to_model_input(image, spec)[0])
    y = torch.from_numpy(mask.astype(np.float32))[None]
    return x, y


def letterbox_pair(image: np.ndarray, mask: np.ndarray, size_px: int) -> tuple[np.ndarray, np.ndarray]:
    img, _ = letterbox(image, size_px)
    msk, _ = letterbox(mask.astype(np.uint8), size_px)
    return img, msk > 0


_REAL_AUGMENT = A.Compose([
    A.HorizontalFlip(p=0.5),
    A.Affine(scale=(0.4, 1.05), rotate=(-180, 180), translate_percent=(-0.2, 0.2), border_mode=cv2.BORDER_CONSTANT,
             fill=0, fill_mask=0, p=0.7),
    A.RandomBrightnessContrast(0.3, 0.3, p=0.7),
    A.HueSaturationValue(15, 25, 20, p=0.5),
    A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.GaussNoise(std_range=(0.01, 0.05))], p=0.3),
])
# a second-pass crop stays centred at its scale (the pipeline cuts it so); it turns, as the views do
_CROP_AUGMENT = A.Compose([
    A.HorizontalFlip(p=0.5),
    A.RandomRotate90(p=1.0),
    A.RandomBrightnessContrast(0.3, 0.3, p=0.7),
    A.HueSaturationValue(15, 25, 20, p=0.5),
    A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.GaussNoise(std_range=(0.01, 0.05))], p=0.3),
])


@dataclass(frozen=True)
class PassViews:
    """Model inputs as the two-pass pipeline (``coinvision.sdk.segmenter.two_pass_segment``) makes them from a photo
    larger than the model's input: a scene of ``synth``'s size either letterboxed whole to ``size_px`` (the first
    pass) or cut to the second pass's square crop around the label and letterboxed (its box jittered, since at
    inference it comes from the first pass's coarser mask). A crop the pipeline would not make (its box at least
    ``single_pass_box_frac`` of the scene: the first pass is the answer then) falls back to the whole scene."""

    synth: SceneSynthesizer  # renders at the larger scene size
    size_px: int
    margin_frac: float
    single_pass_box_frac: float | None
    centre_jitter_frac: float = 0.03  # of the box side, standard deviation
    side_jitter: tuple[float, float] = (0.94, 1.08)

    def sample(self, index: int, rng: np.random.Generator, label: str) -> tuple[np.ndarray, np.ndarray]:
        image, all_coins, largest = self.synth.scene(index)
        mask = largest if label == "largest" else all_coins
        if rng.random() < 0.5 and largest.any():
            return self.second_pass(image, mask, largest, rng)
        return letterbox_pair(image, mask, self.size_px)

    def second_pass(self, image: np.ndarray, mask: np.ndarray, kept: np.ndarray,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``(image, mask)`` cut to the second pass's crop around ``kept`` (the coin the pipeline keeps), or whole
        where the pipeline would not cut; letterboxed to ``size_px``."""
        box = self._jittered_box(square_bbox(kept, self.margin_frac), rng)
        side = box[2] - box[0]
        if self.single_pass_box_frac is None or side < self.single_pass_box_frac * max(image.shape[:2]):
            image, mask = crop_padded(image, box), crop_padded(mask.astype(np.uint8), box) > 0
        return letterbox_pair(image, mask, self.size_px)

    def _jittered_box(self, box: tuple[int, int, int, int], rng: np.random.Generator) -> tuple[int, int, int, int]:
        x0, y0, x1, y1 = box
        side = (x1 - x0) * rng.uniform(*self.side_jitter)
        cx = (x0 + x1) / 2 + rng.normal(0.0, self.centre_jitter_frac) * (x1 - x0)
        cy = (y0 + y1) / 2 + rng.normal(0.0, self.centre_jitter_frac) * (x1 - x0)
        half = max(1.0, side / 2)
        return round(cx - half), round(cy - half), round(cx + half), round(cy + half)


class SegTrainSet(torch.utils.data.Dataset):
    """Index -> (x, y). A sample is a synthesized scene, (``real_frac``) an augmented real photo or (``pass_view_p``
    of the synthetic ones, ``real_pass_view_p`` of the real ones) a :class:`PassViews` input; all are pure
    functions of ``(seed, index)``."""

    def __init__(self, synth: SceneSynthesizer, real: Sequence[tuple[np.ndarray, np.ndarray]], real_frac: float,
                 spec: InputSpec, seed: int, length: int, label: str = "all", pass_views: PassViews | None = None,
                 pass_view_p: float = 0.0, real_pass_view_p: float = 0.0) -> None:
        self.synth, self.real, self.real_frac, self.spec, self.seed, self.length = (
            synth, list(real), real_frac, spec, seed, length)
        self.label = label
        self.pass_views, self.pass_view_p, self.real_pass_view_p = pass_views, pass_view_p, real_pass_view_p

    def __len__(self) -> int:
        return self.length

    def _draws_real(self, rng: np.random.Generator) -> bool:
        return bool(self.real) and rng.random() < self.real_frac

    def is_real(self, index: int) -> bool:
        """Whether sample ``index`` is a real photo (the first draw of its generator, replayed)."""
        return self._draws_real(np.random.default_rng([self.seed, 7, index]))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, 7, index])
        if self._draws_real(rng):
            image, mask = self.real[int(rng.integers(0, len(self.real)))]
            augment = _REAL_AUGMENT
            # no draw when off: runs without real pass views keep their samples
            if self.real_pass_view_p and self.pass_views is not None and rng.random() < self.real_pass_view_p:
                image, mask = self.pass_views.second_pass(image, mask, mask, rng)
                augment = _CROP_AUGMENT
            augment.set_random_seed(int(rng.integers(0, 2**31 - 1)))
            out = augment(image=image, mask=mask.astype(np.uint8))
            image, mask = out["image"], out["mask"] > 0
        elif self.pass_views is not None and rng.random() < self.pass_view_p:
            image, mask = self.pass_views.sample(index, rng, self.label)
        else:
            image, all_coins, largest = self.synth.scene(index)
            mask = largest if self.label == "largest" else all_coins
        return _to_tensor(image, mask, self.spec)


class RealFlagged(torch.utils.data.Dataset):
    """``(x, y, is_real)`` of a :class:`SegTrainSet`: what the distillation term needs to find the real photos."""

    def __init__(self, samples: SegTrainSet) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y = self.samples[index]
        return x, y, torch.tensor(self.samples.is_real(index))


def _teacher(cfg: SegmenterConfig, device: torch.device) -> nn.Module | None:
    """``distill_checkpoint`` in eval mode, frozen; ``None`` without one. Its input must be the student's."""
    if cfg.distill_checkpoint is None:
        return None
    teacher, teacher_cfg, ckpt = load_segmenter(cfg.distill_checkpoint)
    if teacher_cfg.input_spec != cfg.input_spec:
        raise ConfigError(f"distill_checkpoint {cfg.distill_checkpoint}: its input {teacher_cfg.input_spec} is not "
                          f"this config's {cfg.input_spec}; distil from a segmenter with the same size_px and encoder "
                          "normalisation")
    log.info("real photos also learn the soft map of %s (fingerprint %s), weight %.2f", cfg.distill_checkpoint,
             ckpt.fingerprint, cfg.distill_weight)
    return teacher.eval().requires_grad_(False).to(device)


@dataclass
class SegData:
    train_coins: list[tuple[np.ndarray, np.ndarray]]  # real photos at size_px (letterboxed) + masks
    val_coins: list[tuple[np.ndarray, np.ndarray]]
    train_backgrounds: list[np.ndarray]
    val_backgrounds: list[np.ndarray]


def _load_items(items: Sequence[LabelledImage], size_px: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [letterbox_pair(load_image(it.image_path), load_mask(it.mask_path), size_px) for it in items]


def split_seg_labels(cfg: SegmenterConfig) -> tuple[list[LabelledImage], list[LabelledImage]]:
    """Labelled real photos split by trainer/splits.py: ``(train, val)``. ``train`` and ``val_seen`` classes
    train; up to ``cfg.val_real`` photos of the held-out classes (``catalog`` + ``query``), a seeded sample kept
    in path order, validate."""
    from coinvision.trainer.data import load_dataset
    from coinvision.trainer.splits import SplitConfig, make_splits, read_splits, resolve_rows

    if not cfg.data_roots:
        raise ConfigError("data_roots is empty; list the dataset folders (e.g. ../shared/data/coins211)")
    datasets = [load_dataset(root, verify_images=False) for root in cfg.data_roots]
    rows = read_splits(cfg.split_file) if cfg.split_file else make_splits(datasets, SplitConfig(seed=cfg.split_seed))
    by_split = resolve_rows(rows, datasets)
    split_of = {img.path: s for s, imgs in by_split.items() for img in imgs}
    labelled = read_label_manifest(cfg.labels_dir, {ds.name: ds.root for ds in datasets})
    if not labelled:
        raise DatasetError(f"{cfg.labels_dir}: no auto-labels for {[ds.name for ds in datasets]}; run "
                           "`coinvision data seg-labels` (then `coinvision data refine-labels`)")
    train = [it for it in labelled if split_of.get(it.image_path) in ("train", "val_seen")]
    val = [it for it in labelled if split_of.get(it.image_path) in ("catalog", "query")]
    rng = random.Random(cfg.seed)
    rng.shuffle(val)
    return train, sorted(val[: cfg.val_real], key=lambda it: it.image_path)


def split_backgrounds(cfg: SegmenterConfig) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``(train, val)`` background photos split 4:1, so validation scenes use unseen ones."""
    from coinvision.trainer.data import list_backgrounds

    bgs = [load_image(p) for p in list_backgrounds(cfg.backgrounds_root)] if cfg.backgrounds_root else []
    val_bgs = bgs[::5]
    return [b for i, b in enumerate(bgs) if i % 5] or val_bgs, val_bgs


def val_scene_synthesizer(cfg: SegmenterConfig, coins: Sequence[tuple[np.ndarray, np.ndarray]],
                          backgrounds: Sequence[np.ndarray], synth: SynthConfig | None = None,
                          seed_offset: int = 1_000_003) -> SceneSynthesizer:
    """The synthetic validation scenes: ``scene(i)`` for ``i < cfg.val_synthetic`` are the ones training reports.
    ``synth`` replaces ``cfg.synth`` (benchmarks: larger scenes, distractor-only scenes)."""
    return SceneSynthesizer(coins, backgrounds, synth or cfg.synth, seed=cfg.seed + seed_offset)


def load_seg_data(cfg: SegmenterConfig) -> SegData:
    """:func:`split_seg_labels` photos and :func:`split_backgrounds`, loaded."""
    train, val = split_seg_labels(cfg)
    train_bgs, val_bgs = split_backgrounds(cfg)
    log.info("segmenter data: %d train photos, %d real val photos, %d/%d backgrounds", len(train), len(val),
             len(train_bgs), len(val_bgs))
    # coins keep up to 2x model resolution so small-scale synthesis stays sharp
    return SegData(_load_items(train, 2 * cfg.size_px), _load_items(val, 2 * cfg.size_px), train_bgs, val_bgs)


def _stack(pairs: Sequence[tuple[np.ndarray, np.ndarray]], spec: InputSpec) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*(_to_tensor(i, m, spec) for i, m in pairs), strict=True)
    return torch.stack(xs), torch.stack(ys)



# ---------------------------------------------------------------------------------------------- logging


def _plot_curves(history: list[dict[str, Any]], out_png: Path) -> None:
    epochs = [h["epoch"] for h in history]
    train_key = next(k for k in history[0] if k.startswith("train_"))
    with png_figure(out_png, figsize=(10, 4), ncols=2) as (_, axes):
        axes[0].plot(epochs, [h[train_key] for h in history], label=f"train ({train_key.removeprefix('train_')})")
        for split in ("synthetic", "real"):
            axes[0].plot(epochs, [h[f"{split}_dice_loss"] for h in history], label=f"val {split}")
            for t in IOU_THRESHOLDS:
                axes[1].plot(epochs, [h[f"{split}_iou@{t}"] for h in history], label=f"{split} IoU@{t}")
        axes[0].set(title="loss (validation: Dice)", xlabel="epoch")
        axes[1].set(title="validation IoU", xlabel="epoch", ylim=(0, 1))
        for ax in axes:
            ax.legend()
            ax.grid(alpha=0.3)




# ---------------------------------------------------------------------------------------------- training


class _SumOfLosses(nn.Module):
    def __init__(self, *losses: nn.Module) -> None:
        super().__init__()
        self.losses = nn.ModuleList(losses)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(loss(logits, target) for loss in self.losses)


def _train_loss(name: str) -> tuple[str, nn.Module]:
    """``(history column, loss on logits)`` for config ``loss`` (``seg_config.LOSSES``)."""
    parts = {"dice": smp.losses.DiceLoss(mode="binary", from_logits=True),
             "lovasz": smp.losses.LovaszLoss(mode="binary", per_image=True, from_logits=True)}
    names = name.split("+")
    loss = parts[names[0]] if len(names) == 1 else _SumOfLosses(*(parts[n] for n in names))
    return f"train_{'_'.join(names)}_loss", loss


def _initial_model(cfg: SegmenterConfig) -> nn.Module:
    """The U-Net at its starting weights: the encoder's pretrained file, or all of ``init_checkpoint``."""
    if cfg.init_checkpoint is None:
        return build_segmenter(cfg)
    model = build_segmenter(dataclasses.replace(cfg, pretrained_path=None))
    ckpt = load_checkpoint(cfg.init_checkpoint, expected_kind=KIND)
    try:
        model.load_state_dict(ckpt.state_dict)
    except RuntimeError as exc:
        raise ModelLoadError(f"init_checkpoint {cfg.init_checkpoint}: its weights do not fit this config's U-Net "
                             f"({str(exc).splitlines()[0]}); start from a checkpoint with the same encoder and "
                             "decoder_channels") from exc
    log.info("segmenter starts from %s (fingerprint %s)", cfg.init_checkpoint, ckpt.fingerprint)
    return model


def _calibrate_batchnorm(model: nn.Module, train_set: SegTrainSet, samples: int, batch_size: int,
                         device: torch.device) -> None:
    """BatchNorm statistics measured on ``samples`` of the training mix, batch by batch (the eval function stays)."""
    batches = [torch.stack([train_set[i][0] for i in range(start, min(start + batch_size, samples))]).to(device)
               for start in range(0, samples, batch_size)]
    model.load_state_dict(recalibrate_batchnorm(model, conv_bn_pairs(model), batches))
    log.info("BatchNorm statistics measured on %d training samples", samples)


def _frozen(model: nn.Module, names: Sequence[str]) -> list[nn.Module]:
    """The ``frozen_modules`` of the config, looked up by name (a typo is a ConfigError, not a silent no-op)."""
    modules = dict(model.named_modules())
    unknown = [name for name in names if not name or name not in modules]
    if unknown:
        raise ConfigError(f"frozen_modules {unknown}: no such submodule of the U-Net; use names such as 'encoder', "
                          "'decoder.blocks.0' ... 'decoder.blocks.4', 'segmentation_head'")
    return [modules[name] for name in names]


def _train_mode(model: nn.Module, freeze_bn: bool, frozen: Sequence[nn.Module]) -> None:
    model.train()
    for module in frozen:
        module.eval()
    if freeze_bn:  # running statistics stay what the starting checkpoint learnt (or its folded identity)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()


def train_segmenter(cfg: SegmenterConfig, *, resume: bool = False, data: SegData | None = None,
                    progress: bool = True) -> Path:
    """Train; every epoch: validate (synthetic + real), log CSV/JSON/PNG, save ``last.pt`` (resumable) and
    ``best.pt`` (best mean IoU@0.5 over the two validation sets). Returns the path of ``best.pt``."""
    run = TrainingRun(KIND, cfg, plot=_plot_curves, initial_best=-1.0)
    device = run.device
    data = data or load_seg_data(cfg)
    spec = cfg.input_spec

    train_synth = SceneSynthesizer(data.train_coins, data.train_backgrounds, cfg.synth, seed=cfg.seed)
    pass_views = None
    if cfg.pass_view_p or cfg.real_pass_view_p:
        large = dataclasses.replace(cfg.synth, size_px=cfg.pass_view_scene_px)
        pass_views = PassViews(SceneSynthesizer(data.train_coins, data.train_backgrounds, large, seed=cfg.seed),
                               cfg.size_px, cfg.margin_frac, cfg.single_pass_box_frac)

    def training_samples(seed: int, length: int) -> SegTrainSet:
        return SegTrainSet(train_synth, data.train_coins, cfg.real_train_frac, spec, seed, length=length,
                           label=cfg.label, pass_views=pass_views, pass_view_p=cfg.pass_view_p,
                           real_pass_view_p=cfg.real_pass_view_p)
    val_synth = val_scene_synthesizer(cfg, data.val_coins or data.train_coins, data.val_backgrounds)
    val_scenes = [val_synth.scene(i) for i in range(cfg.val_synthetic)]
    val_syn_x, val_syn_y = _stack([(img, largest if cfg.label == "largest" else all_coins)
                                   for img, all_coins, largest in val_scenes], spec)
    val_real_pairs = [letterbox_pair(i, m, cfg.size_px) for i, m in data.val_coins] or [
        letterbox_pair(i, m, cfg.size_px) for i, m in data.train_coins[: cfg.val_real]]
    val_real_x, val_real_y = _stack(val_real_pairs, spec)

    model = _initial_model(cfg).to(device)
    teacher = _teacher(cfg, device)
    frozen = _frozen(model, cfg.frozen_modules)
    for module in frozen:  # before DDP wraps the model, which must see only the parameters that train
        module.requires_grad_(False)
    net = run.distribute(model)  # DDP under torchrun: gradients averaged over the ranks; the model itself otherwise
    loss_fn = smp.losses.DiceLoss(mode="binary", from_logits=True)  # validation reports Dice whatever trains
    train_column, train_loss_fn = _train_loss(cfg.loss)
    if teacher is not None:  # the history names what trained
        train_column = train_column.removesuffix("_loss") + "_distill_loss"
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    total_steps = cfg.epochs * cfg.steps_per_epoch
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total_steps,
                                                    pct_start=0.1)
    state = run.resume(model) if resume else None
    if state is None and cfg.bn_calibration_samples:
        # its own sample stream (seed + 1), so training still sees every scene for the first time
        _calibrate_batchnorm(model, training_samples(cfg.seed + 1, cfg.bn_calibration_samples),
                             cfg.bn_calibration_samples, cfg.batch_size, device)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        restore_schedule(scheduler, state["scheduler"])
        run.best = state["best_score"]

    def step(batch: tuple[torch.Tensor, ...]) -> float:
        x, y = batch[0].to(device), batch[1].to(device)
        with run.amp.autocast():
            logits = net(x)
            loss = train_loss_fn(logits, y)
            if teacher is not None and bool(batch[2].any()):
                real = batch[2].to(device)
                with torch.no_grad():
                    soft = torch.sigmoid(teacher(x[real]))
                loss = loss + cfg.distill_weight * nn.functional.binary_cross_entropy_with_logits(logits[real], soft)
        optimizer.zero_grad(set_to_none=True)
        run.amp.backward_step(loss, [optimizer])
        scheduler.step()
        return float(loss.detach())

    # All ranks together draw N samples per step (N = batch_size x ranks), each rank batch_size of them.
    samples_per_epoch = cfg.steps_per_epoch * cfg.batch_size * run.world_size
    for epoch in range(run.start_epoch, cfg.epochs):
        # epoch e uses sample indices [e*N, (e+1)*N): new scenes each epoch, same ones after a resume. A sample is a
        # pure function of (seed, index), so ranks, which take disjoint indices, synthesize different scenes.
        train_set = training_samples(cfg.seed, (epoch + 1) * samples_per_epoch)
        indices = list(range(epoch * samples_per_epoch, (epoch + 1) * samples_per_epoch))
        random.Random(cfg.seed + epoch).shuffle(indices)
        indices = indices[run.rank::run.world_size]
        samples = RealFlagged(train_set) if teacher is not None else train_set
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(samples, indices), batch_size=cfg.batch_size,
                                             shuffle=False, num_workers=0)
        _train_mode(model, cfg.freeze_bn, frozen)
        started = time.time()
        train_loss = run.train_epoch(loader, step, steps=len(loader), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                                     progress=progress)
        run.end_epoch(model)
        if not run.is_main:
            continue  # rank 0 validates and writes; the others go on to the next epoch's steps (DDP waits for it)
        syn = _evaluate(model, val_syn_x, val_syn_y, loss_fn, device, cfg.batch_size * 2)
        real = _evaluate(model, val_real_x, val_real_y, loss_fn, device, cfg.batch_size * 2)
        row = {"epoch": epoch + 1, train_column: train_loss, "lr": scheduler.get_last_lr()[0],
               "epoch_s": time.time() - started}
        row.update({f"synthetic_{k}": v for k, v in syn.items()})
        row.update({f"real_{k}": v for k, v in real.items()})
        run.record(row)
        is_best = run.improved((syn["iou@0.5"] + real["iou@0.5"]) / 2.0)
        training_state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                          "history": run.history, "best_score": run.best}
        run.save(model, epoch, {k: v for k, v in row.items() if k != "lr"}, training_state, is_best=is_best)
        log.info("epoch %d: train %.4f | synthetic IoU@0.5 %.4f | real IoU@0.5 %.4f", epoch + 1, train_loss,
                 syn["iou@0.5"], real["iou@0.5"])
        if progress:
            print(f"epoch {epoch + 1}: train {cfg.loss} {train_loss:.4f}  synthetic IoU@0.3/0.5 {syn['iou@0.3']:.4f}/"
                  f"{syn['iou@0.5']:.4f}  real IoU@0.3/0.5 {real['iou@0.3']:.4f}/{real['iou@0.5']:.4f}", flush=True)
    return run.finish()
