"""The pre/post-processing spec shared by the trainer, the converters, the SDK and the mobile SDKs.

Everything a model sees goes through these functions, so the PyTorch pipeline and the on-device
pipeline agree by construction. The steps are written out in ``docs/PIPELINE_SPEC.md``; keep the two in
step. Only numpy and OpenCV: no torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

__all__ = [
    "DEFAULT_CROP_MARGIN_FRAC",
    "DEFAULT_MARGIN_FRAC",
    "DEFAULT_MIN_AREA_FRAC",
    "DEFAULT_SEGMENT_THRESHOLD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "InputSpec",
    "Letterbox",
    "Segmentation",
    "coin_crop",
    "largest_component",
    "letterbox",
    "mean_unit_vector",
    "resize_square",
    "rotation_views",
    "sigmoid",
    "split_touching_coins",
    "square_bbox",
    "to_model_input",
    "two_pass_segment",
    "unletterbox",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("bilinear", "area")

# The spec's defaults (docs/PIPELINE_SPEC.md), for the values a model's metadata may leave out. Defined here
# once: the SDK's SegmenterParams / CropParams and these functions' keyword defaults all read them.
DEFAULT_SEGMENT_THRESHOLD = 0.5  # segmenter probability threshold (metadata `threshold`)
DEFAULT_MARGIN_FRAC = 0.15  # two-pass crop margin per side (segmenter metadata `extra["margin_frac"]`)
DEFAULT_MIN_AREA_FRAC = 0.002  # smallest coin, share of the image (segmenter `extra["min_area_frac"]`)
DEFAULT_CROP_MARGIN_FRAC = 0.05  # coin_crop margin per side (embedder metadata `extra["crop_margin_frac"]`)


@dataclass(frozen=True)
class InputSpec:
    """How an RGB uint8 image becomes a model input. Travels in every exported model's metadata."""

    size_px: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    color_order: str = "RGB"
    layout: str = "NCHW"  # NCHW for PyTorch / ONNX; TFLite and Core ML exports declare NHWC in metadata
    pad_value: int = 0  # letterbox padding, before normalisation
    interpolation: str = "bilinear"  # how coin_crop shrinks the crop: "area" (models since v2) | "bilinear"

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation={self.interpolation!r}: must be one of {INTERPOLATIONS}")
        if self.size_px < 16:
            raise ValueError(f"size_px={self.size_px}: must be >= 16")
        if self.layout not in ("NCHW", "NHWC"):
            raise ValueError(f"layout={self.layout!r}: must be 'NCHW' or 'NHWC'")
        if self.color_order != "RGB":
            raise ValueError(f"color_order={self.color_order!r}: only 'RGB' is supported")


@dataclass(frozen=True)
class Letterbox:
    """Where the resized image sits inside the square model input."""

    scale: float
    pad_x: int
    pad_y: int
    src_h: int
    src_w: int


def letterbox(image: np.ndarray, size_px: int, pad_value: int = 0) -> tuple[np.ndarray, Letterbox]:
    """Resize keeping aspect so the longer side is ``size_px``, pad to a centred square."""
    h, w = image.shape[:2]
    scale = size_px / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    pad_x, pad_y = (size_px - new_w) // 2, (size_px - new_h) // 2
    out = np.full((size_px, size_px, *image.shape[2:]), pad_value, dtype=image.dtype)
    out[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = resized
    return out, Letterbox(scale, pad_x, pad_y, h, w)


def unletterbox(prob: np.ndarray, box: Letterbox) -> np.ndarray:
    """Map a ``size_px`` square map back onto the source image grid (bilinear)."""
    new_w, new_h = max(1, round(box.src_w * box.scale)), max(1, round(box.src_h * box.scale))
    inner = prob[box.pad_y : box.pad_y + new_h, box.pad_x : box.pad_x + new_w]
    return cv2.resize(inner.astype(np.float32), (box.src_w, box.src_h), interpolation=cv2.INTER_LINEAR)


def to_model_input(square_rgb: np.ndarray, spec: InputSpec) -> np.ndarray:
    """uint8 ``SxSx3`` RGB -> float32 batch of one, normalised, in ``spec.layout``."""
    if square_rgb.shape[:2] != (spec.size_px, spec.size_px):
        square_rgb = cv2.resize(square_rgb, (spec.size_px, spec.size_px), interpolation=cv2.INTER_LINEAR)
    x = (square_rgb.astype(np.float32) / 255.0 - np.asarray(spec.mean, np.float32)) / np.asarray(
        spec.std, np.float32
    )
    x = x[None]
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2) if spec.layout == "NCHW" else x)


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


def square_bbox(mask: np.ndarray, margin_frac: float) -> tuple[int, int, int, int]:
    """Square ``(x0, y0, x1, y1)`` (exclusive ends) around the mask, grown by ``margin_frac`` per side.

    May extend past the image; callers pad.
    """
    ys, xs = np.nonzero(mask)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    side = max(x1 - x0, y1 - y0) * (1.0 + 2.0 * margin_frac)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    half = side / 2.0
    return round(cx - half), round(cy - half), round(cx + half), round(cy + half)


def _crop_padded(image: np.ndarray, box: tuple[int, int, int, int], pad_value: int = 0) -> np.ndarray:
    x0, y0, x1, y1 = box
    h, w = image.shape[:2]
    out = np.full((y1 - y0, x1 - x0, *image.shape[2:]), pad_value, dtype=image.dtype)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return out


@dataclass(frozen=True)
class Segmentation:
    """Result of the two-pass segmentation. ``mask`` is None when no coin was found."""

    mask: np.ndarray | None  # bool HxW, same size as the input image
    bbox: tuple[int, int, int, int] | None  # square x0, y0, x1, y1 (may exceed the image)
    passes: int = 0
    first_pass_mask: np.ndarray | None = field(default=None, repr=False)

    @property
    def found(self) -> bool:
        return self.mask is not None


PredictFn = Callable[[np.ndarray], np.ndarray]
"""Takes a ``size_px`` square RGB uint8 image, returns the coin probability map (float32, same size)."""


def _predict_on(image: np.ndarray, predict: PredictFn, size_px: int, pad_value: int) -> np.ndarray:
    square, box = letterbox(image, size_px, pad_value)
    return unletterbox(predict(square), box)


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
) -> Segmentation:
    """The design's refinement: segment the whole photo, keep the largest component, crop a square around
    it with a margin, segment the crop again at full model resolution, paste back, keep the largest
    component again. Small coins in big photos get the second look they need. ``split_touching`` (segmenter
    metadata ``extra["split_touching"]``, default off): each largest component is cut into touching coins
    first (:func:`split_touching_coins`)."""
    prob = _predict_on(image, predict, size_px, pad_value)
    first = largest_component(prob >= threshold, min_area_frac, split_touching=split_touching)
    if first is None:
        return Segmentation(mask=None, bbox=None, passes=1)
    if not two_pass:
        return Segmentation(mask=first, bbox=square_bbox(first, margin_frac), passes=1, first_pass_mask=first)
    box = square_bbox(first, margin_frac)
    crop_prob = _predict_on(_crop_padded(image, box, pad_value), predict, size_px, pad_value)
    full = np.zeros(image.shape[:2], dtype=np.float32)
    x0, y0, x1, y1 = box
    h, w = image.shape[:2]
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    full[sy0:sy1, sx0:sx1] = crop_prob[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0]
    # The second pass sees only the crop. When it loses the coin entirely, or keeps only a fragment of what the
    # first pass found (seen on small coins upscaled into the crop), the first pass is the better answer.
    second = largest_component(full >= threshold, min_area_frac, split_touching=split_touching) if full.any() else None
    lost = second is None or second.sum() < min_second_pass_area_ratio * first.sum()
    mask = first if lost else second
    return Segmentation(mask=mask, bbox=square_bbox(mask, margin_frac), passes=2, first_pass_mask=first)


def resize_square(square: np.ndarray, size_px: int, interpolation: str = "area") -> np.ndarray:
    """Resize a square image to ``size_px``. ``"area"`` averages every source pixel when shrinking (a coin
    photo is usually several times larger than the embedder input, and bilinear sampling then aliases the
    fine relief that tells coin designs apart); enlarging is bilinear either way."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation={interpolation!r}: must be one of {INTERPOLATIONS}")
    if square.shape[0] == size_px and square.shape[1] == size_px:
        return square
    shrinking = square.shape[0] > size_px
    flag = cv2.INTER_AREA if interpolation == "area" and shrinking else cv2.INTER_LINEAR
    return cv2.resize(square, (size_px, size_px), interpolation=flag)


def coin_crop(
    image: np.ndarray,
    mask: np.ndarray | None,
    out_size_px: int,
    *,
    margin_frac: float = DEFAULT_CROP_MARGIN_FRAC,
    fill_value: int = 0,
    interpolation: str = "bilinear",
) -> np.ndarray:
    """Background-removed square crop of the coin, ``out_size_px`` square, ready for the embedder.

    Pixels outside the mask become ``fill_value``. With ``mask=None`` (segmentation off or failed) the
    whole image is letterboxed instead. ``interpolation``: the embedder metadata's ``input.interpolation``.
    """
    if mask is None or not mask.any():
        return letterbox(image, out_size_px, fill_value)[0]
    cut = np.where(mask[..., None], image, np.uint8(fill_value))
    box = square_bbox(mask, margin_frac)
    crop = _crop_padded(cut, box, fill_value)
    return resize_square(crop, out_size_px, interpolation)


def rotation_views(square: np.ndarray, n_rotations: int, fill_value: int = 0) -> list[np.ndarray]:
    """The crop turned by ``k * 360 / n_rotations`` degrees (k = 0 … n-1, counter-clockwise) about its centre.

    A coin on a table has no upright, so the embedder is run on every view and the vectors averaged
    (:func:`mean_unit_vector`). Multiples of 90 degrees are exact pixel permutations; other angles are
    bilinear with ``fill_value`` in the corners (outside the coin, which the crop's margin keeps inside)."""
    if not isinstance(n_rotations, int) or isinstance(n_rotations, bool) or n_rotations < 1:
        raise ValueError(f"n_rotations={n_rotations!r}: must be an integer >= 1 (1 = no rotation averaging)")
    h, w = square.shape[:2]
    views = []
    for k in range(n_rotations):
        angle_deg = 360.0 * k / n_rotations
        if angle_deg % 90 == 0:
            views.append(np.ascontiguousarray(np.rot90(square, int(angle_deg // 90))))
        else:
            matrix = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle_deg, 1.0)
            views.append(cv2.warpAffine(square, matrix, (w, h), flags=cv2.INTER_LINEAR,
                                        borderMode=cv2.BORDER_CONSTANT, borderValue=(fill_value,) * 3))
    return views


def mean_unit_vector(vectors: np.ndarray) -> np.ndarray:
    """L2-normalised mean of the rows of ``vectors`` (``(n, d)`` or ``(batch, n, d)``); float32."""
    vectors = np.asarray(vectors, dtype=np.float32)
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)
    mean = unit.mean(axis=-2)
    return (mean / np.maximum(np.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)).astype(np.float32)
