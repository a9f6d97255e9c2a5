"""The coin segmenter: an smp U-Net with a timm encoder, trained with Dice loss on synthesized scenes and real
auto-labelled photos, validated every epoch on held-out synthetic scenes AND held-out real photos.

Contract (see the briefing): ``build_segmenter(cfg)`` takes a normalised NCHW batch (``InputSpec``) and
returns mask LOGITS ``Nx1xHxW``; ``load_segmenter(path) -> (model.eval(), cfg, checkpoint)``;
``segmenter_metadata(cfg, fingerprint)``. Inference goes through ``coinvision.sdk.preprocess`` only.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np
import segmentation_models_pytorch as smp
import torch
from coinvision.sdk.errors import ConfigError, DatasetError, ModelLoadError
from coinvision.sdk.images import load_image
from coinvision.sdk.model_meta import ModelMetadata
from coinvision.sdk.preprocess import InputSpec, Segmentation, letterbox, to_model_input, two_pass_segment
from coinvision.trainer.checkpoint import Checkpoint, load_checkpoint, load_model, restore_schedule, save_checkpoint
from coinvision.trainer.config_io import config_to_dict, save_config
from coinvision.trainer.plotting import png_figure
from coinvision.trainer.seg_data import (
    LABEL_MODES,
    LabelledImage,
    SceneSynthesizer,
    SynthConfig,
    load_mask,
    read_label_manifest,
)
from torch import nn

__all__ = [
    "SegmenterConfig",
    "build_segmenter",
    "iou_at",
    "load_segmenter",
    "segment_image",
    "segmenter_metadata",
    "split_backgrounds",
    "split_seg_labels",
    "torch_predict_fn",
    "train_segmenter",
    "val_scene_synthesizer",
]

log = logging.getLogger(__name__)

KIND = "segmenter"
IOU_THRESHOLDS = (0.3, 0.5)


@dataclass(frozen=True)
class SegmenterConfig:
    # model
    encoder: str = "tu-efficientnet_b0"  # any smp encoder; "tu-<timm name>" goes through timm
    decoder_channels: tuple[int, ...] = (128, 64, 32, 16, 8)
    pad_type: str = ""  # timm conv padding; "same" for weights ported from TF/TFLite
    pretrained_path: str | None = None  # local timm weights file for the encoder (no hub access)
    size_px: int = 128
    threshold: float = 0.5  # release probability threshold
    margin_frac: float = 0.15  # two-pass crop margin per side
    split_touching: bool = False  # post-processing: cut touching coins apart before keeping the largest
    # data
    data_roots: tuple[str, ...] = ()  # dataset folders (images/<class>/..., classes.csv)
    backgrounds_root: str | None = None
    labels_dir: str = "runs/seg_labels"  # auto-labels (manifest.csv + mask PNGs), see `coinvision data seg-labels`
    split_file: str | None = None  # trainer/splits.py CSV; None = make_splits(seed=split_seed)
    split_seed: int = 0
    real_train_frac: float = 0.3  # share of training samples that are real auto-labelled photos
    synth: SynthConfig = field(default_factory=SynthConfig)
    label: str = "all"  # what a synthetic scene's label marks: "all" coins, or only the "largest" (the kept one)
    val_synthetic: int = 200
    val_real: int = 300
    # optimisation
    epochs: int = 10
    steps_per_epoch: int = 200
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    num_threads: int = 1
    device: str = "auto"  # "auto" -> cuda when present, else cpu
    out_dir: str = "runs/segmenter"

    def __post_init__(self) -> None:
        if self.size_px % 32:
            raise ValueError(f"size_px={self.size_px}: the U-Net needs a multiple of 32")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold={self.threshold}: must be in (0, 1)")
        if self.label not in LABEL_MODES:
            raise ValueError(f"label={self.label!r}: must be one of {LABEL_MODES}")
        if not 0.0 <= self.real_train_frac <= 1.0:
            raise ValueError(f"real_train_frac={self.real_train_frac}: must be in [0, 1]")
        if self.epochs < 1 or self.steps_per_epoch < 1 or self.batch_size < 1:
            raise ValueError("epochs, steps_per_epoch and batch_size must be >= 1")
        if self.synth.size_px != self.size_px:
            object.__setattr__(self, "synth", SynthConfig(**{**self.synth.__dict__, "size_px": self.size_px}))

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec(size_px=self.size_px)


# ------------------------------------------------------------------------------------------------- model


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


def torch_predict_fn(model: nn.Module, spec: InputSpec, device: str | torch.device = "cpu"):
    """``PredictFn`` for ``two_pass_segment``: square uint8 RGB -> probability map (float32, same size)."""

    @torch.inference_mode()
    def predict(square: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(to_model_input(square, spec)).to(device)
        return torch.sigmoid(model(x))[0, 0].float().cpu().numpy()

    return predict


def segment_image(model: nn.Module, cfg: SegmenterConfig, image: np.ndarray, *, two_pass: bool = True) -> Segmentation:
    return two_pass_segment(image, torch_predict_fn(model, cfg.input_spec), size_px=cfg.size_px,
                            threshold=cfg.threshold, margin_frac=cfg.margin_frac, two_pass=two_pass,
                            split_touching=cfg.split_touching)


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


class SegTrainSet(torch.utils.data.Dataset):
    """Index -> (x, y). A sample is a synthesized scene or (``real_frac``) an augmented real photo; both are
    pure functions of ``(seed, index)``."""

    def __init__(self, synth: SceneSynthesizer, real: Sequence[tuple[np.ndarray, np.ndarray]], real_frac: float,
                 spec: InputSpec, seed: int, length: int, label: str = "all") -> None:
        self.synth, self.real, self.real_frac, self.spec, self.seed, self.length = (
            synth, list(real), real_frac, spec, seed, length)
        self.label = label

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, 7, index])
        if self.real and rng.random() < self.real_frac:
            image, mask = self.real[int(rng.integers(0, len(self.real)))]
            _REAL_AUGMENT.set_random_seed(int(rng.integers(0, 2**31 - 1)))
            out = _REAL_AUGMENT(image=image, mask=mask.astype(np.uint8))
            image, mask = out["image"], out["mask"] > 0
        else:
            image, all_coins, largest = self.synth.scene(index)
            mask = largest if self.label == "largest" else all_coins
        return _to_tensor(image, mask, self.spec)


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


# ---------------------------------------------------------------------------------------------- training


def _device(cfg: SegmenterConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def _plot_curves(history: list[dict[str, Any]], out_png: Path) -> None:
    epochs = [h["epoch"] for h in history]
    with png_figure(out_png, figsize=(10, 4), ncols=2) as (_, axes):
        axes[0].plot(epochs, [h["train_dice_loss"] for h in history], label="train")
        for split in ("synthetic", "real"):
            axes[0].plot(epochs, [h[f"{split}_dice_loss"] for h in history], label=f"val {split}")
            for t in IOU_THRESHOLDS:
                axes[1].plot(epochs, [h[f"{split}_iou@{t}"] for h in history], label=f"{split} IoU@{t}")
        axes[0].set(title="Dice loss", xlabel="epoch")
        axes[1].set(title="validation IoU", xlabel="epoch", ylim=(0, 1))
        for ax in axes:
            ax.legend()
            ax.grid(alpha=0.3)


def _write_history(history: list[dict[str, Any]], out_dir: Path) -> None:
    (out_dir / "history.json").write_text(json.dumps(history, indent=2))
    with (out_dir / "history.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    _plot_curves(history, out_dir / "curves.png")


def train_segmenter(cfg: SegmenterConfig, *, resume: bool = False, data: SegData | None = None,
                    progress: bool = True) -> Path:
    """Train; every epoch: validate (synthetic + real), log CSV/JSON/PNG, save ``last.pt`` (resumable) and
    ``best.pt`` (best mean IoU@0.5 over the two validation sets). Returns the path of ``best.pt``."""
    from tqdm import tqdm

    torch.set_num_threads(cfg.num_threads)
    cv2.setNumThreads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out_dir / "config.yaml")
    device = _device(cfg)
    data = data or load_seg_data(cfg)
    spec = cfg.input_spec

    train_synth = SceneSynthesizer(data.train_coins, data.train_backgrounds, cfg.synth, seed=cfg.seed)
    val_synth = val_scene_synthesizer(cfg, data.val_coins or data.train_coins, data.val_backgrounds)
    val_scenes = [val_synth.scene(i) for i in range(cfg.val_synthetic)]
    val_syn_x, val_syn_y = _stack([(img, largest if cfg.label == "largest" else all_coins)
                                   for img, all_coins, largest in val_scenes], spec)
    val_real_pairs = [letterbox_pair(i, m, cfg.size_px) for i, m in data.val_coins] or [
        letterbox_pair(i, m, cfg.size_px) for i, m in data.train_coins[: cfg.val_real]]
    val_real_x, val_real_y = _stack(val_real_pairs, spec)

    model = build_segmenter(cfg).to(device)
    loss_fn = smp.losses.DiceLoss(mode="binary", from_logits=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total_steps = cfg.epochs * cfg.steps_per_epoch
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total_steps,
                                                    pct_start=0.1)
    history: list[dict[str, Any]] = []
    start_epoch, best_score = 0, -1.0
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    if resume and last_path.is_file():
        ckpt = load_checkpoint(last_path, expected_kind=KIND)
        model.load_state_dict(ckpt.state_dict)
        optimizer.load_state_dict(ckpt.training_state["optimizer"])
        restore_schedule(scheduler, ckpt.training_state["scheduler"])
        history = ckpt.training_state["history"]
        best_score = ckpt.training_state["best_score"]
        start_epoch = ckpt.epoch
        log.info("resumed from %s at epoch %d", last_path, start_epoch)

    samples_per_epoch = cfg.steps_per_epoch * cfg.batch_size
    for epoch in range(start_epoch, cfg.epochs):
        # epoch e uses sample indices [e*N, (e+1)*N): new scenes each epoch, same ones after a resume
        train_set = SegTrainSet(train_synth, data.train_coins, cfg.real_train_frac, spec, cfg.seed,
                                length=(epoch + 1) * samples_per_epoch, label=cfg.label)
        indices = list(range(epoch * samples_per_epoch, (epoch + 1) * samples_per_epoch))
        random.Random(cfg.seed + epoch).shuffle(indices)
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(train_set, indices), batch_size=cfg.batch_size,
                                             shuffle=False, num_workers=0)
        model.train()
        started, running = time.time(), 0.0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress)
        for step, (x, y) in enumerate(bar, start=1):
            x, y = x.to(device), y.to(device)
            loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            running += float(loss)
            bar.set_postfix(loss=f"{running / step:.4f}")
        train_loss = running / max(1, len(loader))
        syn = _evaluate(model, val_syn_x, val_syn_y, loss_fn, device, cfg.batch_size * 2)
        real = _evaluate(model, val_real_x, val_real_y, loss_fn, device, cfg.batch_size * 2)
        row = {"epoch": epoch + 1, "train_dice_loss": train_loss, "lr": scheduler.get_last_lr()[0],
               "epoch_s": time.time() - started}
        row.update({f"synthetic_{k}": v for k, v in syn.items()})
        row.update({f"real_{k}": v for k, v in real.items()})
        history.append(row)
        _write_history(history, out_dir)
        score = (syn["iou@0.5"] + real["iou@0.5"]) / 2.0
        metrics = {k: v for k, v in row.items() if k != "lr"}
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        is_best = score > best_score
        best_score = max(score, best_score)
        training_state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                          "history": history, "best_score": best_score}
        save_checkpoint(last_path, Checkpoint(KIND, config_to_dict(cfg), state, metrics, epoch + 1, training_state))
        if is_best:
            save_checkpoint(best_path, Checkpoint(KIND, config_to_dict(cfg), state, metrics, epoch + 1, {}))
        log.info("epoch %d: train %.4f | synthetic IoU@0.5 %.4f | real IoU@0.5 %.4f", epoch + 1, train_loss,
                 syn["iou@0.5"], real["iou@0.5"])
        if progress:
            print(f"epoch {epoch + 1}: train dice {train_loss:.4f}  synthetic IoU@0.3/0.5 {syn['iou@0.3']:.4f}/"
                  f"{syn['iou@0.5']:.4f}  real IoU@0.3/0.5 {real['iou@0.3']:.4f}/{real['iou@0.5']:.4f}", flush=True)
    if not best_path.is_file():
        raise ModelLoadError(f"{out_dir}: no epoch finished, so there is no best.pt")
    return best_path


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def mean_or_nan(values: Sequence[float]) -> float:
    return float(np.mean(values)) if values else math.nan


# --------------------------------------------------------------------------------------- folder inference

SUPPORTED_RUNTIMES = ("torch", "onnx", "tflite")


@dataclass(frozen=True)
class SegmenterRunner:
    """A ``PredictFn`` plus the post-processing values from the model's config / metadata."""

    predict: Any  # PredictFn
    size_px: int
    threshold: float
    margin_frac: float
    split_touching: bool = False

    def segment(self, image: np.ndarray, *, two_pass: bool = True) -> Segmentation:
        return two_pass_segment(image, self.predict, size_px=self.size_px, threshold=self.threshold,
                                margin_frac=self.margin_frac, two_pass=two_pass, split_touching=self.split_touching)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))


def load_runner(models_dir: str | Path, runtime: str = "torch", num_threads: int = 1) -> SegmenterRunner:
    """``segmenter.pt`` (torch) or ``segmenter.onnx`` / ``segmenter.tflite`` with its ``.meta.json``."""
    models_dir = Path(models_dir)
    if runtime not in SUPPORTED_RUNTIMES:
        raise ConfigError(f"runtime {runtime!r} is not one of {SUPPORTED_RUNTIMES}")
    if runtime == "torch":
        torch.set_num_threads(num_threads)
        model, cfg, _ = load_segmenter(models_dir / "segmenter.pt")
        return SegmenterRunner(torch_predict_fn(model, cfg.input_spec), cfg.size_px, cfg.threshold, cfg.margin_frac,
                               cfg.split_touching)
    path = models_dir / f"segmenter.{runtime}"
    if not path.is_file():
        raise ModelLoadError(f"{path} does not exist; export the segmenter first (coinvision export ...)")
    from coinvision.sdk.runtimes import predictor_for

    meta = ModelMetadata.read_sidecar(path)
    spec = meta.input
    run = predictor_for(path, num_threads)  # the SDK's runtime: layout, normalisation and int8 (de)quantization

    def predict(square: np.ndarray) -> np.ndarray:
        # NCHW 1xSxS or NHWC SxSx1: either way the map is the reshaped array
        return _sigmoid(np.asarray(run(square), np.float32).reshape(spec.size_px, spec.size_px))

    margin = float(meta.extra.get("margin_frac", 0.15))
    return SegmenterRunner(predict, spec.size_px, float(meta.threshold or 0.5), margin,
                           bool(meta.extra.get("split_touching", False)))


def segment_folder(image_dir: str | Path, out_dir: str | Path, *, runtime: str = "tflite",
                   models_dir: str | Path = "models/release", two_pass: bool = True,
                   progress: bool = True) -> tuple[int, int]:
    """One 0/255 PNG per image under ``image_dir`` (recursive), same relative path with ``.png``, same size as
    the image. Returns (masks written, images with no coin found - their masks are all 0)."""
    from coinvision.sdk.files import IMAGE_SUFFIXES
    from tqdm import tqdm

    image_dir, out_dir = Path(image_dir), Path(out_dir)
    if not image_dir.is_dir():
        raise DatasetError(f"image folder {image_dir} does not exist")
    files = sorted(p for p in image_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DatasetError(f"{image_dir}: no images (.jpg/.png/.webp/.bmp) found")
    runner = load_runner(models_dir, runtime)
    written = no_coin = 0
    for path in tqdm(files, desc="segment", disable=not progress):
        image = load_image(path)
        seg = runner.segment(image, two_pass=two_pass)
        mask = np.zeros(image.shape[:2], np.uint8) if seg.mask is None else seg.mask.astype(np.uint8) * 255
        no_coin += seg.mask is None
        target = out_dir / path.relative_to(image_dir).with_suffix(".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(target), mask):
            raise DatasetError(f"could not write {target}; check the output folder is writable")
        written += 1
    return written, no_coin
