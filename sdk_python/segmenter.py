"""The segmenter stage of the pipeline: a loaded segmenter model plus its post-processing values, photo -> mask.

``Segmenter`` runs the spec's two-pass segmentation (:func:`two_pass_segment`) with the parameters of
the model's own metadata (:class:`SegmenterParams`), on any runtime: the exported files through
:meth:`Segmenter.from_dir`, the trainer's PyTorch checkpoints through ``coinvision.trainer.torch_runtime``.
``Recognizer`` composes one. No torch here.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from coinvision.sdk.errors import ConfigError
from coinvision.sdk.model_meta import ModelMetadata
from coinvision.sdk.preprocess import crop_padded, letterbox, square_bbox, unletterbox
from coinvision.sdk.runtimes import (
    LoadedModel,
    check_model_output,
    check_models_dir,
    check_pipeline_metadata,
    load_pipeline_model,
)

__all__ = [
    "DEFAULT_MARGIN_FRAC",
    "DEFAULT_MIN_AREA_FRAC",
    "DEFAULT_SEGMENT_THRESHOLD",
    "DEFAULT_SINGLE_PASS_BOX_FRAC",
    "DEFAULT_TILE_FRAC",
    "DEFAULT_VIEWS",
    "MIN_TILE_FRAC",
    "VIEWS_ALLOWED",
    "PredictFn",
    "Segmentation",
    "Segmenter",
    "SegmenterParams",
    "largest_component",
    "sigmoid",
    "split_touching_coins",
    "tile_boxes",
    "tiled_probability",
    "two_pass_segment",
    "views_probability",
]

log = logging.getLogger(__name__)

# The spec's defaults (docs/PIPELINE_SPEC.md) for what a segmenter's metadata may leave out: SegmenterParams and
# the functions' keyword defaults read them.
DEFAULT_SEGMENT_THRESHOLD = 0.5  # segmenter probability threshold (metadata `threshold`)
DEFAULT_MARGIN_FRAC = 0.15  # two-pass crop margin per side (segmenter metadata `extra["margin_frac"]`)
DEFAULT_MIN_AREA_FRAC = 0.002  # smallest coin, share of the image (segmenter `extra["min_area_frac"]`)
# No default skip: without segmenter `extra["single_pass_box_frac"]` the second pass always runs.
DEFAULT_SINGLE_PASS_BOX_FRAC: float | None = None
# No default tiles: without segmenter `extra["tile_frac"]` a first pass that finds no coin ends segmentation.
DEFAULT_TILE_FRAC: float | None = None
MIN_TILE_FRAC = 0.25  # tiles of a quarter of the photo's side: a 4 x 4 grid, 16 more segmenter calls at most
# One view: the second pass sees its crop once, as it is (segmenter `extra["views"]`).
DEFAULT_VIEWS = 1
VIEWS_ALLOWED = (1, 2, 4)  # quarter turns only: a turned square is the same pixels, so every port turns it exactly


PredictFn = Callable[[np.ndarray], np.ndarray]
"""Takes a ``size_px`` square RGB uint8 image, returns the coin probability map (float32, same size)."""


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Mask logits -> probabilities (float32). The tanh form is the exact sigmoid without exp overflow warnings
    on large negative logits."""
    return (0.5 * (1.0 + np.tanh(0.5 * np.asarray(logits, np.float32)))).astype(np.float32)


def largest_component(
    mask: np.ndarray, min_area_frac: float = DEFAULT_MIN_AREA_FRAC, *, split_touching: bool = False
) -> np.ndarray | None:
    """Keep only the largest 8-connected foreground component; ``None`` when it is below ``min_area_frac``.
    ``split_touching``: that component is first cut into its coins (:func:`split_touching_coins`) and the
    largest coin is kept."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 1:
        return None
    areas = stats[1:, cv2.CC_STAT_AREA]
    best = int(np.argmax(areas)) + 1
    if areas[best - 1] < min_area_frac * mask.size:
        return None
    component = labels == best
    return split_touching_coins(component) if split_touching else component


def split_touching_coins(component: np.ndarray, *, min_peak_frac: float = 0.35, max_neck_frac: float = 0.8,
                         max_solidity: float = 0.97, work_px: int = 96) -> np.ndarray:
    """The largest coin of one connected mask that may hold several touching or overlapping coins.

    Distance transform of the component (holes filled, so a holed coin stays one disc); its local maxima of at
    least ``min_peak_frac`` of the highest one are the coins' centres, their distances the radii. Every pixel goes
    to the centre of least power distance ``|p - c|^2 - r^2`` (for two overlapping discs the cut is exactly the
    chord through their intersections). A cut is kept only where it is a neck: shorter than ``max_neck_frac`` of
    the smaller side's diameter (two coins meet in a narrow waist; one coin with a flat edge or a finger notch
    does not have one). Everything runs on a copy of the component's box at most ``work_px`` wide (area-resampled,
    >= 0.5); a copy that fills ``max_solidity`` of its convex hull is one coin and the component is returned at
    once. The cut is that coarse, the outline is not: the kept part is resized back and intersected with the mask.
    Returns the largest part, or the component unchanged."""
    comp = component.astype(np.uint8)
    x, y, w, h = cv2.boundingRect(comp)
    if w == 0 or h == 0:
        return component
    scale = min(1.0, work_px / max(w, h))  # everything below runs on this small copy: a photo-size mask costs little
    crop = comp[y : y + h, x : x + w]
    if scale < 1.0:
        size_wh = (max(1, round(w * scale)), max(1, round(h * scale)))
        crop = (cv2.resize(crop.astype(np.float32), size_wh, interpolation=cv2.INTER_AREA) >= 0.5).astype(np.uint8)
    contours, _ = cv2.findContours(crop, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return component
    outline = max(contours, key=cv2.contourArea)
    if cv2.contourArea(outline) >= max_solidity * max(cv2.contourArea(cv2.convexHull(outline)), 1.0):
        return component  # convex: one coin
    small = np.zeros_like(crop)
    cv2.drawContours(small, [outline], -1, 1, thickness=cv2.FILLED)  # holes filled: a holed coin is one disc
    dist = cv2.distanceTransform(small, cv2.DIST_L2, 5)
    peak = float(dist.max())
    if peak < 3.0:
        return component
    size = max(3, int(2 * round(min_peak_frac * peak) + 1))
    local_max = (dist >= cv2.dilate(dist, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size)))) & (
        dist >= min_peak_frac * peak)
    count, peaks = cv2.connectedComponents(local_max.astype(np.uint8), connectivity=8)
    if count <= 2:  # background label + one peak: one coin
        return component
    ys, xs = np.nonzero(small)
    power = np.empty((count - 1, len(xs)), np.float32)
    for k in range(1, count):
        py, px = np.nonzero(peaks == k)
        cy, cx, r = float(py.mean()), float(px.mean()), float(dist[py, px].max())
        power[k - 1] = (xs - cx) ** 2 + (ys - cy) ** 2 - r * r
    owner = np.full(small.shape, -1, np.int32)
    owner[ys, xs] = np.argmin(power, axis=0)
    regions = [owner == k for k in range(count - 1)]
    # merge parts whose shared cut is not a neck (two peaks on one coin)
    parent = list(range(len(regions)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    kernel = np.ones((3, 3), np.uint8)
    for i in range(len(regions)):
        grown = cv2.dilate(regions[i].astype(np.uint8), kernel).astype(bool)
        for j in range(i + 1, len(regions)):
            cut = grown & regions[j]
            if not cut.any():
                continue
            cy, cx = np.nonzero(cut)
            neck = float(np.hypot(cx.max() - cx.min(), cy.max() - cy.min())) + 1.0
            diameter = 2.0 * np.sqrt(min(regions[i].sum(), regions[j].sum()) / np.pi)
            if neck >= max_neck_frac * diameter:
                parent[root(j)] = root(i)
    groups: dict[int, np.ndarray] = {}
    for i, region in enumerate(regions):
        groups[root(i)] = groups.get(root(i), np.zeros_like(region)) | region
    if len(groups) <= 1:
        return component
    kept = max(groups.values(), key=lambda g: int(g.sum())).astype(np.uint8)
    best = np.zeros(comp.shape, bool)
    best[y : y + h, x : x + w] = kept.astype(bool) if scale == 1.0 else cv2.resize(
        kept.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) >= 0.5
    return best & component.astype(bool)


@dataclass(frozen=True)
class Segmentation:
    """Result of the two-pass segmentation. ``mask`` is None when no coin was found."""

    mask: np.ndarray | None  # bool HxW, same size as the input image
    bbox: tuple[int, int, int, int] | None  # square x0, y0, x1, y1 (may exceed the image)
    passes: int = 0
    first_pass_mask: np.ndarray | None = field(default=None, repr=False)
    tiled: bool = False  # the first pass found no coin, so the tiles ran (spec 2.3); the mask, if any, is theirs

    @property
    def found(self) -> bool:
        return self.mask is not None


def views_probability(square: np.ndarray, predict: PredictFn, views: int) -> np.ndarray:
    """Spec step 2.7: the mean probability map of ``views`` turns of a square model input: view ``k`` is the input
    turned ``k * 4 / views`` quarter turns counter-clockwise (``np.rot90``), its map turned back; the maps are
    summed in float32 in view order and divided by ``views``."""
    maps = [predict(square)]
    step = 4 // views
    for k in range(1, views):
        turns = k * step
        maps.append(np.rot90(predict(np.ascontiguousarray(np.rot90(square, turns))), -turns))
    total = maps[0].astype(np.float32, copy=True)
    for view_map in maps[1:]:
        total += view_map
    return total / np.float32(views)


def _predict_on(image: np.ndarray, predict: PredictFn, size_px: int, pad_value: int, views: int = 1) -> np.ndarray:
    square, box = letterbox(image, size_px, pad_value)
    return unletterbox(predict(square) if views == 1 else views_probability(square, predict, views), box)


def tile_boxes(height: int, width: int, tile_frac: float) -> list[tuple[int, int, int, int]]:
    """The square tiles of spec step 2.3: an ``n x n`` grid, ``n = ceil(1 / tile_frac)``, of side
    ``ceil(tile_frac * L)`` spread evenly over the photo's centred ``L x L`` frame (``L`` its longer side) from
    corner to corner, row by row; ``(x0, y0, x1, y1)`` with exclusive ends, past the photo on its shorter side.
    Integer positions (floor division), so every port computes the same boxes."""
    side = max(height, width)
    tile = math.ceil(tile_frac * side)
    count = math.ceil(1.0 / tile_frac)
    fx0, fy0 = (width - side) // 2, (height - side) // 2
    offsets = [k * (side - tile) // (count - 1) for k in range(count)]
    return [(fx0 + x, fy0 + y, fx0 + x + tile, fy0 + y + tile) for y in offsets for x in offsets]


def _paste(full: np.ndarray, crop_prob: np.ndarray, box: tuple[int, int, int, int], *, keep_max: bool) -> None:
    """Write a crop's probability map into the photo-size map at ``box`` (the part inside the photo)."""
    x0, y0, x1, y1 = box
    h, w = full.shape
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if sx1 <= sx0 or sy1 <= sy0:
        return
    part = crop_prob[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0]
    full[sy0:sy1, sx0:sx1] = np.maximum(full[sy0:sy1, sx0:sx1], part) if keep_max else part


def tiled_probability(image: np.ndarray, predict: PredictFn, *, size_px: int, tile_frac: float,
                      pad_value: int = 0) -> np.ndarray:
    """Spec step 2.3's second look at a photo whose first pass found no coin: each of the :func:`tile_boxes`
    segmented at the model's full resolution (a coin too small for the whole-photo pass is ``1 / tile_frac``
    times larger in a tile), the maps pasted into one photo-size map, the maximum where tiles overlap."""
    full = np.zeros(image.shape[:2], dtype=np.float32)
    for box in tile_boxes(image.shape[0], image.shape[1], tile_frac):
        _paste(full, _predict_on(crop_padded(image, box, pad_value), predict, size_px, pad_value), box, keep_max=True)
    return full


def two_pass_segment(
    image: np.ndarray,
    predict: PredictFn,
    *,
    size_px: int,
    threshold: float = DEFAULT_SEGMENT_THRESHOLD,
    margin_frac: float = DEFAULT_MARGIN_FRAC,
    min_area_frac: float = DEFAULT_MIN_AREA_FRAC,
    pad_value: int = 0,
    two_pass: bool = True,
    min_second_pass_area_ratio: float = 0.5,
    split_touching: bool = False,
    single_pass_box_frac: float | None = DEFAULT_SINGLE_PASS_BOX_FRAC,
    tile_frac: float | None = DEFAULT_TILE_FRAC,
    views: int = DEFAULT_VIEWS,
) -> Segmentation:
    """The design's refinement: segment the whole photo, keep the largest component, crop a square around
    it with a margin, segment the crop again at full model resolution, paste back, keep the largest
    component again. Small coins in big photos get the second look they need. ``split_touching`` (segmenter
    metadata ``extra["split_touching"]``, default off): each largest component is cut into touching coins
    first (:func:`split_touching_coins`). ``single_pass_box_frac`` (metadata ``extra["single_pass_box_frac"]``,
    default None: always two passes): when the crop's longer side is at least this share of the photo's longer
    side the first pass is the answer, since the second would see the coin at barely more pixels than the first
    (a coin that fills the frame, as most photos of one coin do). ``tile_frac`` (metadata ``extra["tile_frac"]``,
    default None: no tiles): when the first pass finds no coin, :func:`tiled_probability` looks again at a grid of
    tiles of this share of the photo's longer side, and the first pass's mask comes from them (``tiled``).
    ``views`` (metadata ``extra["views"]``, 1, 2 or 4; default 1): the second pass averages the maps of that many
    turns of its crop (:func:`views_probability`); the first pass and the tiles look once."""
    prob = _predict_on(image, predict, size_px, pad_value)
    first = largest_component(prob >= threshold, min_area_frac, split_touching=split_touching)
    tiled = first is None and tile_frac is not None
    if tiled:
        prob = tiled_probability(image, predict, size_px=size_px, tile_frac=tile_frac, pad_value=pad_value)
        first = largest_component(prob >= threshold, min_area_frac, split_touching=split_touching)
    if first is None:
        return Segmentation(mask=None, bbox=None, passes=1, tiled=tiled)
    if not two_pass:
        return Segmentation(mask=first, bbox=square_bbox(first, margin_frac), passes=1, first_pass_mask=first,
                            tiled=tiled)
    box = square_bbox(first, margin_frac)
    if single_pass_box_frac is not None and \
            max(box[2] - box[0], box[3] - box[1]) >= single_pass_box_frac * max(image.shape[:2]):
        return Segmentation(mask=first, bbox=box, passes=1, first_pass_mask=first, tiled=tiled)
    full = np.zeros(image.shape[:2], dtype=np.float32)
    _paste(full, _predict_on(crop_padded(image, box, pad_value), predict, size_px, pad_value, views), box,
           keep_max=False)
    # The second pass sees only the crop. When it loses the coin entirely, or keeps only a fragment of what the
    # first pass found (seen on small coins upscaled into the crop), the first pass is the better answer.
    second = largest_component(full >= threshold, min_area_frac, split_touching=split_touching) if full.any() else None
    lost = second is None or second.sum() < min_second_pass_area_ratio * first.sum()
    mask = first if lost else second
    return Segmentation(mask=mask, bbox=square_bbox(mask, margin_frac), passes=2, first_pass_mask=first, tiled=tiled)



@dataclass(frozen=True)
class SegmenterParams:
    """How a segmenter's probability map becomes the coin mask (spec step 2); read from its metadata."""

    size_px: int  # model input side (metadata input.size_px)
    threshold: float = DEFAULT_SEGMENT_THRESHOLD  # probability; a pixel is coin when prob >= threshold
    margin_frac: float = DEFAULT_MARGIN_FRAC  # second-pass square crop margin per side
    min_area_frac: float = DEFAULT_MIN_AREA_FRAC  # smaller components are no coin
    pad_value: int = 0  # letterbox padding (metadata input.pad_value)
    split_touching: bool = False  # spec 2.6: cut touching coins apart before keeping the largest (v2 models)
    single_pass_box_frac: float | None = DEFAULT_SINGLE_PASS_BOX_FRAC  # spec 2.4: no second pass for a box this big
    tile_frac: float | None = DEFAULT_TILE_FRAC  # spec 2.3: tiles of this share of the longer side when none found
    views: int = DEFAULT_VIEWS  # spec 2.7: turns of its crop the second pass averages

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"segmenter threshold={self.threshold}: must be a probability in (0, 1), e.g. 0.5")
        if self.margin_frac < 0.0:
            raise ConfigError(f"segmenter margin_frac={self.margin_frac}: must be >= 0, e.g. {DEFAULT_MARGIN_FRAC}")
        if not 0.0 <= self.min_area_frac < 1.0:
            raise ConfigError(f"segmenter min_area_frac={self.min_area_frac}: must be in [0, 1), "
                              f"e.g. {DEFAULT_MIN_AREA_FRAC}")
        if self.single_pass_box_frac is not None and not self.single_pass_box_frac > 0.0:
            raise ConfigError(f"segmenter single_pass_box_frac={self.single_pass_box_frac}: must be > 0 (e.g. 0.8), "
                              "or absent to always run the second pass")
        if self.tile_frac is not None and not MIN_TILE_FRAC <= self.tile_frac < 1.0:
            raise ConfigError(f"segmenter tile_frac={self.tile_frac}: must be in [{MIN_TILE_FRAC}, 1) (each tile "
                              "smaller than the photo, at most 4 x 4 of them; e.g. 0.4), or absent for no tiles")
        if not isinstance(self.views, int) or isinstance(self.views, bool) or self.views not in VIEWS_ALLOWED:
            raise ConfigError(f"segmenter views={self.views!r}: must be one of {VIEWS_ALLOWED} (quarter turns of the "
                              "second pass's crop, averaged), or absent for 1")

    @classmethod
    def from_metadata(cls, meta: ModelMetadata) -> SegmenterParams:
        """``threshold``, ``input.size_px`` / ``input.pad_value`` and ``extra`` (``margin_frac``,
        ``min_area_frac``, ``split_touching``, ``single_pass_box_frac``, ``tile_frac``, ``views``); what the
        metadata leaves out takes the spec default."""
        extra = meta.extra
        single_pass = extra.get("single_pass_box_frac", DEFAULT_SINGLE_PASS_BOX_FRAC)
        tile_frac = extra.get("tile_frac", DEFAULT_TILE_FRAC)
        return cls(
            size_px=meta.input.size_px,
            threshold=float(meta.threshold or DEFAULT_SEGMENT_THRESHOLD),
            margin_frac=float(extra.get("margin_frac", DEFAULT_MARGIN_FRAC)),
            min_area_frac=float(extra.get("min_area_frac", DEFAULT_MIN_AREA_FRAC)),
            pad_value=meta.input.pad_value,
            split_touching=bool(extra.get("split_touching", False)),
            single_pass_box_frac=None if single_pass is None else float(single_pass),
            tile_frac=None if tile_frac is None else float(tile_frac),
            views=extra.get("views", DEFAULT_VIEWS),  # an int; anything else fails the check, named
        )


class Segmenter:
    """A segmenter model of any runtime with its :class:`SegmenterParams`. Build with :meth:`from_dir` (exported
    files) or ``coinvision.trainer.torch_runtime.torch_segmenter`` (a PyTorch checkpoint)."""

    def __init__(self, model: LoadedModel, params: SegmenterParams | None = None) -> None:
        """``params`` default to the model's metadata; the model runs once on a blank input (a file whose
        output does not fit its metadata fails here)."""
        check_pipeline_metadata(model, "segmenter")
        self.model = model
        self.meta: ModelMetadata = model.meta
        self.params = params if params is not None else SegmenterParams.from_metadata(model.meta)
        check_model_output(model, self.params.size_px**2)

    @classmethod
    def from_dir(cls, models_dir: str | Path, *, runtime: str = "tflite", num_threads: int | None = None) -> Segmenter:
        """``segmenter.<ext>`` (+ its ``.meta.json``) of ``models_dir``; ``runtime``: "tflite" (default), "onnx",
        or "coreml" (macOS only). ``num_threads=None`` lets the runtime choose."""
        models_dir = Path(models_dir)
        check_models_dir(models_dir, runtime, ("segmenter",))
        segmenter = cls(load_pipeline_model(models_dir, "segmenter", runtime, num_threads))
        log.info("segmenter loaded from %s (%s): %s", models_dir, runtime, segmenter.meta.fingerprint)
        return segmenter

    def with_params(self, **changes: object) -> Segmenter:
        """The same loaded model with some parameters replaced (e.g. ``threshold=0.3``); nothing is reloaded."""
        other = object.__new__(Segmenter)
        other.model, other.meta = self.model, self.meta
        other.params = dataclasses.replace(self.params, **changes)
        return other

    def probability(self, square: np.ndarray) -> np.ndarray:
        """``size_px`` square uint8 RGB -> coin probability map (float32, ``size_px`` square)."""
        size = self.params.size_px
        # NCHW 1xSxS or NHWC SxSx1: either way the map is the reshaped array
        return sigmoid(np.asarray(self.model.predict(square), np.float32).reshape(size, size))

    def segment(self, image: np.ndarray, *, two_pass: bool = True) -> Segmentation:
        """Decoded ``HxWx3`` uint8 RGB photo -> the coin mask at the photo's size (``mask`` None: no coin)."""
        return self._segment(image, self.probability, two_pass)

    def segment_timed(self, image: np.ndarray, start: float | None = None) -> tuple[Segmentation, dict[str, float]]:
        """:meth:`segment` plus its time per pass in ms: ``segment_pass1`` (with the tiles, when they ran) and, when it
        ran, ``segment_pass2`` (all its views).
        ``start``: a ``time.perf_counter()`` reading the first pass counts from (default: now), so a caller's
        stage timings add up to its total."""
        call_starts: list[float] = []

        def predict(square: np.ndarray) -> np.ndarray:
            call_starts.append(time.perf_counter())
            return self.probability(square)

        start = time.perf_counter() if start is None else start
        segmentation = self._segment(image, predict, True)
        end = time.perf_counter()
        # the second pass is the last `views` calls; the tiles come before it
        second_pass = call_starts[-self.params.views] if segmentation.passes == 2 else None
        timings = {"segment_pass1": ((second_pass or end) - start) * 1000.0}
        if second_pass is not None:
            timings["segment_pass2"] = (end - second_pass) * 1000.0
        return segmentation, timings

    def _segment(self, image: np.ndarray, predict: PredictFn, two_pass: bool) -> Segmentation:
        p = self.params
        return two_pass_segment(image, predict, size_px=p.size_px, threshold=p.threshold, margin_frac=p.margin_frac,
                                min_area_frac=p.min_area_frac, pad_value=p.pad_value, two_pass=two_pass,
                                split_touching=p.split_touching, single_pass_box_frac=p.single_pass_box_frac,
                                tile_frac=p.tile_frac, views=p.views)
