"""Embedder data: background-removed crops cached on disk, the split into train / val_seen / catalog / query,
augmentation, and the torch datasets over the cached crops.

Every image goes through the on-device crop once (segmenter -> ``coin_crop``, exactly the SDK's pixels) and
the ``size_px`` square lands in a cache keyed by the image's content hash and the segmenter's fingerprint,
so a new segmenter or input size never reuses stale crops and a rerun never segments again. Where the
segmenter finds no coin the whole image is letterboxed (as the SDK does) and the fallback is counted.

The uCoin watermark strip of coins211 (right edge of catalogue images) lies outside the coin, so the
background-removed crops mostly drop it; with ``background_removal: false`` it stays in the letterboxed
image and a model can learn it as a shortcut - another reason to train on crops.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import albumentations as A
import cv2
import numpy as np
import torch
from coinvision.sdk.errors import ConfigError, DatasetError, ModelLoadError
from coinvision.sdk.images import load_image
from coinvision.sdk.preprocess import DEFAULT_CROP_MARGIN_FRAC, InputSpec, coin_crop, resize_square, to_model_input
from coinvision.trainer.emb_config import AugmentConfig

__all__ = [
    "AugmentConfig",
    "CachedCrop",
    "CropCache",
    "CropSource",
    "CropTensorSet",
    "EmbeddingData",
    "LetterboxCropSource",
    "Sample",
    "SegmenterCropSource",
    "augment_seeded",
    "build_augment",
    "crop_source_from_checkpoint",
    "crop_source_from_models_dir",
    "image_hash",
    "load_embedding_data",
    "m_per_class_order",
    "make_crop_source",
    "move_outline",
    "rank_batches",
    "read_crop",
]

log = logging.getLogger(__name__)

CROP_SUFFIX = ".png"  # lossless: the crop is already resized once, no second JPEG generation
NO_COIN_MARK = ".nocoin"  # file name mark of a letterbox fallback (segmenter found no coin)
_OUTLINE_KERNEL = np.ones((3, 3), np.uint8)
_OUTLINE_DRAW = 0x6A17  # the seeded stream that picks a sample's outline, apart from the augmentation's


def move_outline(mask: np.ndarray, offset_px: int) -> np.ndarray:
    """``mask`` grown (``offset_px`` > 0) or shrunk (< 0) by ``|offset_px|`` pixels (3x3 dilate / erode, that many
    iterations): a segmenter that draws the outline a pixel or two elsewhere. 0 returns ``mask`` itself."""
    if offset_px == 0:
        return mask
    op = cv2.dilate if offset_px > 0 else cv2.erode
    return op(mask.astype(np.uint8), _OUTLINE_KERNEL, iterations=abs(offset_px)) > 0


# ------------------------------------------------------------------------------------------- augmentation


def build_augment(cfg: AugmentConfig) -> A.Compose:
    """RGB uint8 square -> RGB uint8 square of the same size."""
    border = {"border_mode": cv2.BORDER_CONSTANT, "fill": 0}
    return A.Compose([
        A.Affine(rotate=(-180, 180), scale=(1 - cfg.scale_jitter, 1 + cfg.scale_jitter), p=cfg.rotate_p, **border),
        A.HorizontalFlip(p=cfg.hflip_p),
        A.Perspective(scale=(0.02, 0.08), p=cfg.perspective_p, **border),
        A.OneOf([A.GaussianBlur(sigma_limit=(0.3, 1.5)), A.MotionBlur(blur_limit=(3, 7)),
                 A.Defocus(radius=(1, 3), alias_blur=(0.1, 0.3))], p=cfg.blur_p),
        A.OneOf([A.ISONoise(color_shift=(0.01, 0.05), intensity=(0.1, 0.5)),
                 A.GaussNoise(std_range=(0.02, 0.08))], p=cfg.noise_p),
        A.RandomBrightnessContrast(brightness_limit=0.3, contrast_limit=0.3, p=cfg.brightness_contrast_p),
        A.HueSaturationValue(hue_shift_limit=5, sat_shift_limit=20, val_shift_limit=0, p=cfg.color_p),
        A.RandomShadow(shadow_roi=(0, 0, 1, 1), num_shadows_limit=(1, 2), shadow_intensity_range=(0.2, 0.5),
                       p=cfg.shadow_p),
        A.ImageCompression(quality_range=(50, 95), p=cfg.jpeg_p),
    ])


def augment_seeded(augment: A.Compose, image: np.ndarray, *key: int) -> np.ndarray:
    """``augment(image)`` with its randomness a pure function of ``key`` (e.g. seed, epoch, index): a resumed run
    and a cached view see the same pixels."""
    augment.set_random_seed(int(np.random.default_rng(list(key)).integers(2**31)))
    return augment(image=image)["image"]


# ------------------------------------------------------------------------------------------------ samplers


def m_per_class_order(labels: Sequence[int], m: int, batch_size: int, count: int, seed: int) -> list[int]:
    """``count`` indices into ``labels`` in batches of ``batch_size`` holding ``m`` photos of each of
    ``batch_size / m`` classes: pytorch-metric-learning's ``MPerClassSampler``, seeded (it shuffles with PML's
    global numpy state, which this sets)."""
    from pytorch_metric_learning import samplers
    from pytorch_metric_learning.utils import common_functions

    common_functions.NUMPY_RANDOM = np.random.RandomState(seed)
    sampler = samplers.MPerClassSampler(list(labels), m=m, batch_size=batch_size, length_before_new_iter=count)
    return list(sampler)[:count]


def rank_batches(order: Sequence[int], batch_size: int, rank: int, world_size: int) -> list[int]:
    """The batches of ``order`` that rank ``rank`` of ``world_size`` trains on: batch ``b`` goes to rank
    ``b % world_size``. Whole batches are dealt, so an m-per-class batch stays one (its classes and their ``m``
    photos together on one rank); every rank gets different batches and, with ``len(order)`` a multiple of
    ``batch_size * world_size``, the same number of steps. One process: ``order`` unchanged."""
    if world_size == 1:
        return list(order)
    if len(order) % (batch_size * world_size):
        raise ValueError(f"{len(order)} indices do not split into whole batches of {batch_size} for {world_size} "
                         "ranks; draw a multiple of batch_size x world_size")
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return [i for batch in batches[rank::world_size] for i in batch]


# ------------------------------------------------------------------------------------------- crop sources


class CropSource(Protocol):
    """Turns a photo into the embedder's input square. ``key`` names what the crop depends on."""

    key: str

    def crop(self, image: np.ndarray) -> tuple[np.ndarray, bool]:
        """-> (``size_px`` square uint8 RGB, coin found)."""
        ...


@dataclass(frozen=True)
class LetterboxCropSource:
    """No background removal: the whole photo, letterboxed (``background_removal: false``)."""

    size_px: int

    @property
    def key(self) -> str:
        return f"letterbox_{self.size_px}px"

    def crop(self, image: np.ndarray) -> tuple[np.ndarray, bool]:
        return coin_crop(image, None, self.size_px), True


@dataclass(frozen=True)
class SegmenterCropSource:
    """The on-device crop: two-pass segmentation, then ``coin_crop``; no coin -> letterbox fallback."""

    segmenter: Any  # anything with .segment(image) -> Segmentation: coinvision.sdk.segmenter.Segmenter
    segmenter_fingerprint: str
    size_px: int
    margin_frac: float = DEFAULT_CROP_MARGIN_FRAC
    interpolation: str = "bilinear"  # the embedder's input.interpolation
    crop_mask: str = "exact"  # the embedder's extra.crop_mask
    outline_offset_px: int = 0  # the mask moved by move_outline before the crop (training's outline_jitter_px)

    @property
    def key(self) -> str:
        suffix = "" if self.interpolation == "bilinear" else f"_{self.interpolation}"
        suffix += "" if self.crop_mask == "exact" else f"_{self.crop_mask}"
        suffix += f"_o{self.outline_offset_px:+d}" if self.outline_offset_px else ""
        return f"seg-{self.segmenter_fingerprint}_{self.size_px}px_m{self.margin_frac:g}{suffix}"

    def crop(self, image: np.ndarray) -> tuple[np.ndarray, bool]:
        mask = self.segmenter.segment(image).mask
        if mask is not None and self.outline_offset_px:
            moved = move_outline(mask, self.outline_offset_px)
            mask = moved if moved.any() else mask  # an erosion that empties a sliver keeps the sliver
        crop = coin_crop(image, mask, self.size_px, margin_frac=self.margin_frac, interpolation=self.interpolation,
                         crop_mask=self.crop_mask)
        return crop, mask is not None


def crop_source_from_checkpoint(path: str | Path, size_px: int, margin_frac: float = DEFAULT_CROP_MARGIN_FRAC,
                                interpolation: str = "bilinear", num_threads: int | None = None,
                                crop_mask: str = "exact") -> SegmenterCropSource:
    """Crops by a PyTorch segmenter checkpoint, through the SDK's pipeline (``trainer.torch_runtime``)."""
    from coinvision.trainer.torch_runtime import torch_segmenter

    segmenter = torch_segmenter(path, num_threads)
    return SegmenterCropSource(segmenter, segmenter.meta.fingerprint, size_px, margin_frac, interpolation, crop_mask)


def crop_source_from_models_dir(models_dir: str | Path, runtime: str, size_px: int,
                                margin_frac: float = DEFAULT_CROP_MARGIN_FRAC, num_threads: int = 1,
                                interpolation: str = "bilinear", crop_mask: str = "exact") -> SegmenterCropSource:
    """Crops by the segmenter of a models folder: ``segmenter.pt`` (runtime ``torch``) or an exported
    ``segmenter.onnx`` / ``segmenter.tflite`` with its metadata."""
    from coinvision.sdk.segmenter import Segmenter

    models_dir = Path(models_dir)
    if runtime == "torch":
        from coinvision.trainer.torch_runtime import torch_segmenter

        path = models_dir / "segmenter.pt"
        if not path.is_file():
            raise ModelLoadError(f"{path} does not exist; put the segmenter checkpoint there or pick an exported "
                                 "runtime (segmenter_runtime: onnx | tflite)")
        segmenter = torch_segmenter(path, num_threads)
    else:
        segmenter = Segmenter.from_dir(models_dir, runtime=runtime, num_threads=num_threads)
    return SegmenterCropSource(segmenter, segmenter.meta.fingerprint, size_px, margin_frac, interpolation, crop_mask)


# ---------------------------------------------------------------------------------------------- the cache


def image_hash(path: str | Path) -> str:
    """sha1 of the file bytes (16 hex chars): the same photo under another name reuses its crop."""
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()[:16]


def read_crop(path: str | Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise DatasetError(f"crop {path} is unreadable; delete the crop cache folder to rebuild it")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@dataclass(frozen=True)
class CachedCrop:
    path: Path  # the crop PNG
    found: bool  # False: segmenter found no coin, the crop is the letterboxed photo


@dataclass
class CropCache:
    """``<root>/<source.key>/<image hash>[.nocoin].png``; counts what it computed and reused."""

    root: Path
    source: CropSource
    computed: int = 0
    reused: int = 0
    no_coin: int = 0
    no_coin_paths: list[Path] = field(default_factory=list)

    @property
    def folder(self) -> Path:
        return Path(self.root) / self.source.key

    def get(self, image_path: str | Path) -> CachedCrop:
        digest = image_hash(image_path)
        found_path = self.folder / f"{digest}{CROP_SUFFIX}"
        fallback_path = self.folder / f"{digest}{NO_COIN_MARK}{CROP_SUFFIX}"
        if found_path.is_file() or fallback_path.is_file():
            self.reused += 1
            cached = CachedCrop(found_path, True) if found_path.is_file() else CachedCrop(fallback_path, False)
        else:
            crop, found = self.source.crop(load_image(image_path))
            cached = CachedCrop(found_path if found else fallback_path, found)
            self.folder.mkdir(parents=True, exist_ok=True)
            # per-process temporary name: two trainings may fill one cache at once
            tmp = cached.path.with_name(f"{cached.path.stem}.{os.getpid()}.tmp{CROP_SUFFIX}")
            if not cv2.imwrite(str(tmp), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR)):
                raise DatasetError(f"could not write {tmp}; check that {self.folder} is writable")
            tmp.replace(cached.path)  # a crash never leaves a half-written crop under the real name
            self.computed += 1
        if not cached.found:
            self.no_coin += 1
            self.no_coin_paths.append(Path(image_path))
        return cached

    def build(self, image_paths: Sequence[str | Path], *, progress: bool = True) -> list[CachedCrop]:
        from tqdm import tqdm

        out = [self.get(p) for p in tqdm(image_paths, desc=f"crops {self.source.key}", disable=not progress)]
        log.info("crop cache %s: %d computed, %d reused, %d without a coin (letterboxed)", self.folder,
                 self.computed, self.reused, self.no_coin)
        return out


# ---------------------------------------------------------------------------------------------- datasets


@dataclass(frozen=True)
class Sample:
    crop_path: Path
    class_key: str  # "<dataset>/<class_id>"
    image_path: Path
    found: bool = True
    jitter_paths: tuple[Path, ...] = ()  # the same photo cut by moved outlines (training's outline_jitter_px)

    @property
    def dataset(self) -> str:
        return self.class_key.split("/", 1)[0]


@dataclass
class EmbeddingData:
    train: list[Sample]
    val_seen: list[Sample]  # held-out photos of training classes (validation loss)
    catalog: list[Sample]  # classes never trained on: reference photos
    query: list[Sample]  # ... and the photos searched against them
    class_keys: list[str]  # training classes; the index is the ArcFace label
    distractors: list[Sample] = field(default_factory=list)  # training-class photos added to the catalog
    no_coin: int = 0  # photos where the segmenter found no coin (letterboxed instead)
    cache_folder: Path | None = None

    def label_of(self, sample: Sample) -> int:
        return self._index[sample.class_key]

    def __post_init__(self) -> None:
        self._index = {k: i for i, k in enumerate(self.class_keys)}


class CropTensorSet(torch.utils.data.Dataset):
    """Index -> (normalised CHW tensor, label). With ``augment``, sample ``i`` of epoch ``e`` is a pure
    function of ``(seed, e, i)``, so a resumed run sees the same images."""

    def __init__(self, samples: Sequence[Sample], labels: Sequence[int], spec: InputSpec,
                 augment: A.Compose | None = None, seed: int = 0, epoch: int = 0) -> None:
        if len(samples) != len(labels):
            raise ValueError("samples and labels must have the same length")
        self.samples, self.labels, self.spec = list(samples), list(labels), spec
        self.augment, self.seed, self.epoch = augment, seed, epoch

    def __len__(self) -> int:
        return len(self.samples)

    def square(self, index: int) -> np.ndarray:
        """The cached crop at the model's input size, uint8 RGB, no augmentation."""
        return self._square(self.samples[index].crop_path)

    def _square(self, path: Path) -> np.ndarray:
        return resize_square(read_crop(path), self.spec.size_px, self.spec.interpolation)

    def outline_path(self, index: int) -> Path:
        """With ``augment``: the crop of sample ``index`` this epoch, its unmoved outline or one of its
        ``jitter_paths`` (equally likely; a pure function of ``(seed, epoch, index)``). Without: the unmoved one."""
        sample = self.samples[index]
        if self.augment is None or not sample.jitter_paths:
            return sample.crop_path
        pick = int(np.random.default_rng([self.seed, self.epoch, index, _OUTLINE_DRAW]).integers(
            len(sample.jitter_paths) + 1))
        return sample.crop_path if pick == 0 else sample.jitter_paths[pick - 1]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self._square(self.outline_path(index))
        if self.augment is not None:
            image = augment_seeded(self.augment, image, self.seed, self.epoch, index)
        return torch.from_numpy(to_model_input(image, self.spec)[0]), self.labels[index]


def _cap_per_class(samples: list[Sample], cap: int, seed: int) -> list[Sample]:
    if cap <= 0:
        return samples
    by_class: dict[str, list[Sample]] = {}
    for s in samples:
        by_class.setdefault(s.class_key, []).append(s)
    rng = random.Random(seed)
    out: list[Sample] = []
    for key in sorted(by_class):
        group = by_class[key]
        out.extend(sorted(rng.sample(group, cap), key=lambda s: str(s.image_path)) if len(group) > cap else group)
    return out


def load_embedding_data(cfg: Any, *, progress: bool = True) -> EmbeddingData:
    """Datasets -> split (trainer/splits.py) -> cached crops. ``cfg`` is an ``EmbedderConfig``."""
    from coinvision.trainer.data import load_dataset
    from coinvision.trainer.splits import SplitConfig, make_splits, read_splits, resolve_rows

    if not cfg.data_roots:
        raise ConfigError("data_roots is empty; list the dataset folders (e.g. ../shared/data/coins211)")
    datasets = [load_dataset(root) for root in cfg.data_roots]
    if cfg.split_file:
        rows = read_splits(cfg.split_file)
    else:
        rows = make_splits(datasets, SplitConfig(seed=cfg.split_seed, val_class_frac=cfg.val_class_frac))
    by_split = resolve_rows(rows, datasets)
    train_keys = {img.class_key for img in by_split["train"]}
    held_out = {img.class_key for s in ("catalog", "query") for img in by_split[s]}
    if train_keys & held_out:
        raise DatasetError(f"split puts classes {sorted(train_keys & held_out)[:5]} in training AND validation; "
                           "regenerate the split file (coinvision data split)")
    if not train_keys or not by_split["catalog"] or not by_split["query"]:
        raise DatasetError("the split has no training images or no catalog/query images of held-out classes; "
                           "add classes or lower val_class_frac")
    source = make_crop_source(cfg)
    cache = CropCache(Path(cfg.crop_cache_dir), source)
    images = [img for s in ("train", "val_seen", "catalog", "query") for img in by_split[s]]
    crops = dict(zip([img.path for img in images], cache.build([img.path for img in images], progress=progress),
                     strict=True))
    if cache.no_coin:
        log.warning("segmenter found no coin in %d of %d photos; those are letterboxed whole (first: %s)",
                    cache.no_coin, len(images), [str(p) for p in cache.no_coin_paths[:3]])

    def samples(split: str) -> list[Sample]:
        return [Sample(crops[img.path].path, img.class_key, img.path, crops[img.path].found) for img in by_split[split]]

    train = samples("train")
    if cfg.outline_jitter_px:
        train = _with_moved_outlines(train, source, cfg, progress)
    return EmbeddingData(
        train=train,
        val_seen=_cap_per_class(samples("val_seen"), cfg.max_val_seen_per_class, cfg.seed),
        catalog=samples("catalog"),
        query=_cap_per_class(samples("query"), cfg.max_queries_per_class, cfg.seed),
        class_keys=sorted(train_keys),
        distractors=_cap_per_class(samples("train"), cfg.distractors_per_class, cfg.seed + 1)
        if cfg.distractors_per_class > 0 else [],
        no_coin=cache.no_coin,
        cache_folder=cache.folder,
    )


def _with_moved_outlines(train: list[Sample], source: CropSource, cfg: Any, progress: bool) -> list[Sample]:
    """``train`` with ``jitter_paths``: each photo also cut by its outline moved by -j .. -1 and 1 .. j pixels
    (``cfg.outline_jitter_px`` = j), each offset in its own cache folder."""
    if not isinstance(source, SegmenterCropSource):
        raise ConfigError(f"outline_jitter_px={cfg.outline_jitter_px} moves the segmenter's outline, but the crops "
                          "come without one (background_removal: false); set outline_jitter_px: 0")
    paths = [s.image_path for s in train]
    moved = [CropCache(Path(cfg.crop_cache_dir), dataclasses.replace(source, outline_offset_px=offset)).build(
        paths, progress=progress) for offset in range(-cfg.outline_jitter_px, cfg.outline_jitter_px + 1) if offset]
    return [dataclasses.replace(s, jitter_paths=tuple(c[i].path for c in moved)) for i, s in enumerate(train)]


def make_crop_source(cfg: Any) -> CropSource:
    """``background_removal`` off -> letterbox; else ``segmenter_checkpoint`` or ``segmenter_models_dir``."""
    if not cfg.background_removal:
        return LetterboxCropSource(cfg.size_px)
    if cfg.segmenter_checkpoint:
        return crop_source_from_checkpoint(cfg.segmenter_checkpoint, cfg.size_px, cfg.crop_margin_frac,
                                           cfg.crop_interpolation, crop_mask=cfg.crop_mask)
    if cfg.segmenter_models_dir:
        try:
            return crop_source_from_models_dir(cfg.segmenter_models_dir, cfg.segmenter_runtime, cfg.size_px,
                                               cfg.crop_margin_frac, cfg.num_threads, cfg.crop_interpolation,
                                               cfg.crop_mask)
        except ModelLoadError as exc:
            raise ModelLoadError(f"{exc} (segmenter_models_dir={cfg.segmenter_models_dir})") from exc
    raise ConfigError("background_removal is on but no segmenter is configured; set segmenter_checkpoint "
                      "(e.g. runs/segmenter/mnv2/best.pt) or segmenter_models_dir, or background_removal: false")
