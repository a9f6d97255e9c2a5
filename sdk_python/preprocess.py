"""The pre/post-processing spec shared by the trainer, the converters, the SDK and the mobile SDKs.

Everything a model sees goes through these functions, so the PyTorch pipeline and the on-device
pipeline agree by construction. The steps are written out in ``docs/PIPELINE_SPEC.md``; keep the two in
step. Only numpy and OpenCV: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = [
    "DEFAULT_CROP_MARGIN_FRAC",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "InputSpec",
    "Letterbox",
    "coin_crop",
    "convex_hull_fill",
    "crop_padded",
    "letterbox",
    "mean_unit_vector",
    "resize_square",
    "rotation_views",
    "square_bbox",
    "to_model_input",
    "unletterbox",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("bilinear", "area")
CROP_MASKS = ("exact", "convex_hull")  # embedder metadata extra["crop_mask"]: which pixels the crop keeps

# The spec's default crop margin (docs/PIPELINE_SPEC.md), when the embedder's metadata leaves it out; the
# segmentation defaults live with the segmentation (coinvision.sdk.segmenter).
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


def crop_padded(image: np.ndarray, box: tuple[int, int, int, int], pad_value: int = 0) -> np.ndarray:
    x0, y0, x1, y1 = box
    h, w = image.shape[:2]
    out = np.full((y1 - y0, x1 - x0, *image.shape[2:]), pad_value, dtype=image.dtype)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return out


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


def convex_hull_fill(mask: np.ndarray) -> np.ndarray:
    """The pixels whose centres lie inside or on the convex hull of ``mask``'s pixel centres (spec step 3): a coin
    with a finger or another coin over its rim keeps its whole disc. Integer arithmetic throughout, so every port
    gets the same pixels whichever hull algorithm it runs; a hull without area (a point or a line of pixels):
    ``mask`` as it is."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return mask.copy()
    sub = mask[rows]
    left = sub.argmax(axis=1)
    right = sub.shape[1] - 1 - sub[:, ::-1].argmax(axis=1)
    # the hull of a row's pixels is that of its two ends; OpenCV's hull of integer points is exact
    ends = np.concatenate([np.stack([left, rows], axis=1), np.stack([right, rows], axis=1)]).astype(np.int32)
    hull = cv2.convexHull(ends).reshape(-1, 2).astype(np.int64)
    xs, ys_h = hull[:, 0], hull[:, 1]
    twice_area = int((xs * np.roll(ys_h, -1) - np.roll(xs, -1) * ys_h).sum())
    if twice_area == 0:
        return mask.copy()
    if twice_area < 0:  # counter-clockwise in (x, y): every edge then has the inside on its left
        hull = hull[::-1]
    y0, y1 = int(rows[0]), int(rows[-1])
    ys = np.arange(y0, y1 + 1, dtype=np.int64)
    lo = np.zeros(ys.size, np.int64)
    hi = np.full(ys.size, mask.shape[1] - 1, np.int64)
    inside = np.ones(ys.size, bool)
    for (ax, ay), (bx, by) in zip(hull.tolist(), np.roll(hull, -1, axis=0).tolist(), strict=True):
        # (x, y) on or left of a -> b: dx * (y - ay) - dy * (x - ax) >= 0, i.e. dy * x <= dx * (y - ay) + dy * ax
        dx, dy = bx - ax, by - ay
        bound = dx * (ys - ay) + dy * ax
        if dy > 0:
            hi = np.minimum(hi, bound // dy)
        elif dy < 0:
            lo = np.maximum(lo, -((-bound) // dy))
        else:
            inside &= dx * (ys - ay) >= 0
    out = mask.copy()
    cols = np.arange(mask.shape[1])
    out[y0 : y1 + 1] |= inside[:, None] & (cols >= lo[:, None]) & (cols <= hi[:, None])
    return out


def coin_crop(
    image: np.ndarray,
    mask: np.ndarray | None,
    out_size_px: int,
    *,
    margin_frac: float = DEFAULT_CROP_MARGIN_FRAC,
    fill_value: int = 0,
    interpolation: str = "bilinear",
    crop_mask: str = "exact",
) -> np.ndarray:
    """Background-removed square crop of the coin, ``out_size_px`` square, ready for the embedder.

    Pixels outside the mask (``crop_mask="convex_hull"``: outside its :func:`convex_hull_fill`) become
    ``fill_value``. With ``mask=None`` (segmentation off or failed) the whole image is letterboxed instead.
    ``interpolation`` and ``crop_mask``: the embedder metadata's ``input.interpolation`` and ``extra.crop_mask``.
    """
    if crop_mask not in CROP_MASKS:
        raise ValueError(f"crop_mask={crop_mask!r}: must be one of {CROP_MASKS}")
    if mask is None or not mask.any():
        return letterbox(image, out_size_px, fill_value)[0]
    if crop_mask == "convex_hull":
        mask = convex_hull_fill(mask)
    cut = np.where(mask[..., None], image, np.uint8(fill_value))
    box = square_bbox(mask, margin_frac)
    crop = crop_padded(cut, box, fill_value)
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
