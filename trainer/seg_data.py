"""Segmentation training data: auto-labelled coin masks and synthesized scenes.

No coin masks exist in our data, so :func:`auto_label` finds the coin with OpenCV's Hough circle transform
(falling back to a border-colour threshold + contour) and :func:`label_datasets` writes the masks as PNGs
with a manifest. :class:`SceneSynthesizer` then composes training scenes with the design's recipe, one
named function per step:

1. :func:`pad_coin` - the coin covers between 1:1 and 1:36 of the output area;
2. :func:`crop_background` - random window of a background photo or a :func:`procedural_texture`;
3. :func:`jitter_coin` / :func:`jitter_background` - rotate / blur / brightness, separately;
4. :func:`merge_with_mask` - hard composite;
5. :func:`pyramid_blend` - Gaussian/Laplacian pyramid blend so the seam has no sharp edge;
6. :func:`noise_and_shadows` - sensor noise and cast shadows (albumentations).

Extras: :func:`punch_hole` (holed coins), :func:`occlude_with_finger`, smaller distractor coins
(the largest coin is the one the pipeline keeps), :func:`random_letterbox` (the padding the inference
letterbox adds). Every random choice flows from one ``numpy.random.Generator``, so a scene is a pure
function of ``(seed, index)``.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
from coinvision.sdk.errors import DatasetError
from coinvision.sdk.imageio import load_image
from coinvision.sdk.preprocess import letterbox

__all__ = [
    "LabelResult",
    "LabelledImage",
    "SceneSynthesizer",
    "SynthConfig",
    "auto_label",
    "contact_sheet",
    "crop_background",
    "jitter_background",
    "jitter_coin",
    "label_datasets",
    "load_mask",
    "merge_with_mask",
    "noise_and_shadows",
    "occlude_with_finger",
    "pad_coin",
    "procedural_texture",
    "punch_hole",
    "pyramid_blend",
    "random_letterbox",
    "read_label_manifest",
]

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("dataset", "file", "mask", "method", "cx", "cy", "radius", "score")
MIN_COVERAGE_RATIO = 1.0  # coin square : output area, at most 1:1 ...
MAX_COVERAGE_RATIO = 36.0  # ... and at least 1:36


# --------------------------------------------------------------------------------------------- labelling


@dataclass(frozen=True)
class LabelResult:
    """Auto-label of one photo. ``mask`` is None when no confident coin was found (``reason`` says why)."""

    mask: np.ndarray | None  # bool HxW
    method: str  # "hough" | "contour" | "rejected"
    circle: tuple[float, float, float] | None = None  # cx, cy, radius (px)
    score: float = 0.0  # hough: share of the circle's perimeter on an edge; contour: circularity
    reason: str = ""


def _edge_support(grown_edges: np.ndarray, cx: float, cy: float, r: float) -> float:
    """Share of perimeter samples that land on a (dilated) edge pixel: the circle's confidence."""
    h, w = grown_edges.shape
    angles = np.linspace(0.0, 2.0 * math.pi, 180, endpoint=False)
    xs = np.round(cx + r * np.cos(angles)).astype(int)
    ys = np.round(cy + r * np.sin(angles)).astype(int)
    inside = (xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)
    if inside.sum() < 0.5 * len(angles):  # mostly outside the photo: cannot be confirmed
        return 0.0
    return float((grown_edges[ys[inside], xs[inside]] > 0).mean())


def _outermost_radius(grown: np.ndarray, cx: float, cy: float, r: float, max_r: float) -> tuple[float, float]:
    """Hough often locks onto a coin's inner rim; walk outwards from its radius and keep the outermost circle
    whose edge support is close to the best one (the coin's outline)."""
    radii = np.arange(0.8 * r, min(max_r, 1.4 * r) + 0.5, 0.5)
    support = np.array([_edge_support(grown, cx, cy, float(rad)) for rad in radii])
    best = float(support.max())
    good = np.nonzero(support >= 0.95 * best)[0]
    return float(radii[good[-1]]), float(support[good[-1]])


def _hough_candidate(gray: np.ndarray, edges: np.ndarray) -> tuple[float, float, float, float] | None:
    h, w = gray.shape
    side = min(h, w)
    max_r = 0.62 * max(h, w)
    blurred = cv2.medianBlur(gray, 5)
    circles = cv2.HoughCircles(
        blurred,
        cv2.HOUGH_GRADIENT,
        dp=1.5,
        minDist=side,  # one coin per catalogue photo / crop: the strongest circle
        param1=120,
        param2=30,
        minRadius=int(0.2 * side),
        maxRadius=int(max_r),
    )
    if circles is None:
        return None
    grown = cv2.dilate(edges, np.ones((3, 3), np.uint8))
    best: tuple[float, float, float, float] | None = None
    for cx, cy, r in circles[0][:5]:
        radius, score = _outermost_radius(grown, float(cx), float(cy), float(r), max_r)
        if best is None or score > best[3]:
            best = (float(cx), float(cy), radius, score)
    return best


def _contour_candidate(image: np.ndarray) -> tuple[np.ndarray, float] | None:
    """Foreground = pixels far from the border colour; keep the largest roundish contour, filled."""
    h, w = image.shape[:2]
    lab = cv2.cvtColor(cv2.GaussianBlur(image, (5, 5), 0), cv2.COLOR_RGB2LAB).astype(np.float32)
    border = np.concatenate([lab[:4].reshape(-1, 3), lab[-4:].reshape(-1, 3), lab[:, :4].reshape(-1, 3),
                             lab[:, -4:].reshape(-1, 3)])
    dist = np.linalg.norm(lab - np.median(border, axis=0), axis=2)
    dist8 = np.clip(dist * (255.0 / max(float(dist.max()), 1e-6)), 0, 255).astype(np.uint8)
    _, fg = cv2.threshold(dist8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    fg = cv2.morphologyEx(fg, cv2.MORPH_CLOSE, np.ones((7, 7), np.uint8))
    contours, _ = cv2.findContours(fg, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    contour = max(contours, key=cv2.contourArea)
    hull = cv2.convexHull(contour)
    area = cv2.contourArea(hull)
    perimeter = cv2.arcLength(hull, True)
    if area < 0.05 * h * w or perimeter <= 0:
        return None
    circularity = 4.0 * math.pi * area / perimeter**2
    mask = np.zeros((h, w), np.uint8)
    cv2.drawContours(mask, [hull], -1, 1, thickness=cv2.FILLED)
    return mask.astype(bool), circularity


def auto_label(image: np.ndarray, *, min_edge_support: float = 0.35, min_circularity: float = 0.8) -> LabelResult:
    """Coin mask of a single-coin photo: Hough circle when its perimeter is backed by edges, else the
    border-colour contour when it is round enough, else rejected."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    edges = cv2.Canny(cv2.GaussianBlur(gray, (5, 5), 0), 50, 150)
    h, w = gray.shape
    circle = _hough_candidate(gray, edges)
    if circle is not None and circle[3] >= min_edge_support:
        cx, cy, r, score = circle
        mask = np.zeros((h, w), np.uint8)
        cv2.circle(mask, (round(cx), round(cy)), round(r), 1, thickness=cv2.FILLED)
        return LabelResult(mask.astype(bool), "hough", (cx, cy, r), score)
    contour = _contour_candidate(image)
    if contour is not None and contour[1] >= min_circularity:
        mask, circularity = contour
        ys, xs = np.nonzero(mask)
        r = math.sqrt(mask.sum() / math.pi)
        return LabelResult(mask, "contour", (float(xs.mean()), float(ys.mean()), r), circularity)
    reason = "no circle with edge support" if circle is None else f"weak circle (edge support {circle[3]:.2f})"
    if contour is not None:
        reason += f"; contour not round (circularity {contour[1]:.2f})"
    return LabelResult(None, "rejected", None, 0.0, reason)


@dataclass(frozen=True)
class LabelledImage:
    dataset: str
    file: str  # relative to the dataset root
    image_path: Path
    mask_path: Path
    method: str
    score: float


def label_datasets(
    roots: Sequence[str | Path], out_dir: str | Path, *, progress: bool = True
) -> tuple[list[LabelledImage], list[tuple[str, str, str]]]:
    """Auto-label every image of each dataset; masks go to ``out_dir/<dataset>/<file>.png`` (0/255) and
    ``out_dir/manifest.csv`` lists them. Returns (labelled, rejected as (dataset, file, reason))."""
    from coinvision.trainer.data import load_dataset
    from tqdm import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labelled: list[LabelledImage] = []
    rejected: list[tuple[str, str, str]] = []
    rows: list[list[str]] = []
    for root in roots:
        ds = load_dataset(root)
        for img in tqdm(ds.images, desc=f"label {ds.name}", disable=not progress):
            rel = img.path.relative_to(ds.root).as_posix()
            result = auto_label(load_image(img.path))
            if result.mask is None:
                rejected.append((ds.name, rel, result.reason))
                continue
            mask_rel = Path(ds.name) / Path(rel).with_suffix(".png")
            mask_path = out_dir / mask_rel
            mask_path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(mask_path), result.mask.astype(np.uint8) * 255)
            cx, cy, r = result.circle or (0.0, 0.0, 0.0)
            rows.append([ds.name, rel, mask_rel.as_posix(), result.method, f"{cx:.1f}", f"{cy:.1f}", f"{r:.1f}",
                         f"{result.score:.3f}"])
            labelled.append(LabelledImage(ds.name, rel, img.path, mask_path, result.method, result.score))
    with (out_dir / "manifest.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(MANIFEST_COLUMNS)
        writer.writerows(rows)
    with (out_dir / "rejected.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(("dataset", "file", "reason"))
        writer.writerows(rejected)
    log.info("auto-labelled %d images, rejected %d", len(labelled), len(rejected))
    return labelled, rejected


def read_label_manifest(label_dir: str | Path, dataset_roots: dict[str, Path]) -> list[LabelledImage]:
    """Rows of ``label_dir/manifest.csv`` resolved against ``{dataset name: root}``."""
    label_dir = Path(label_dir)
    path = label_dir / "manifest.csv"
    if not path.is_file():
        raise DatasetError(f"{path} does not exist; create the masks with `coinvision segment-labels`")
    out: list[LabelledImage] = []
    with path.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            root = dataset_roots.get(row["dataset"])
            if root is None:
                continue
            out.append(LabelledImage(row["dataset"], row["file"], root / row["file"], label_dir / row["mask"],
                                     row["method"], float(row["score"])))
    return out


def load_mask(path: str | Path) -> np.ndarray:
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise DatasetError(f"mask {path} is missing or unreadable; re-run the auto-labelling")
    return mask > 127


def contact_sheet(items: Sequence[LabelledImage], out_png: str | Path, *, tile_px: int = 128, cols: int = 10) -> Path:
    """Image + mask overlay tiles (outside the mask dimmed, outline in green) for eyeballing the labels."""
    tiles = []
    for item in items:
        image = load_image(item.image_path)
        mask = load_mask(item.mask_path)
        overlay = image.copy()
        overlay[~mask] = (0.35 * overlay[~mask]).astype(np.uint8)  # background dimmed, coin untouched
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(overlay, contours, -1, (0, 255, 0), 1)
        tile, _ = letterbox(overlay, tile_px)
        cv2.putText(tile, item.method[0], (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 0), 1)
        tiles.append(tile)
    if not tiles:
        raise DatasetError("contact sheet: no labelled images to show")
    while len(tiles) % cols:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.hstack(tiles[i : i + cols]) for i in range(0, len(tiles), cols)]
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out_png), cv2.cvtColor(np.vstack(rows), cv2.COLOR_RGB2BGR))
    return out_png


# --------------------------------------------------------------------------------------------- synthesis


def _seed_of(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**31 - 1))


def _run_albu(transform: A.Compose, rng: np.random.Generator, **data: np.ndarray) -> dict[str, np.ndarray]:
    transform.set_random_seed(_seed_of(rng))  # albumentations keeps its own RNG: reseed from ours
    return transform(**data)


def coin_square(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tight square around the mask (padded with black), so a coin layer is a square RGB + its mask."""
    ys, xs = np.nonzero(mask)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    side = int(max(x1 - x0, y1 - y0))
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    bx0, by0 = cx - side // 2, cy - side // 2
    out_img = np.zeros((side, side, 3), np.uint8)
    out_mask = np.zeros((side, side), bool)
    h, w = mask.shape
    sx0, sy0, sx1, sy1 = max(bx0, 0), max(by0, 0), min(bx0 + side, w), min(by0 + side, h)
    out_img[sy0 - by0 : sy1 - by0, sx0 - bx0 : sx1 - bx0] = image[sy0:sy1, sx0:sx1]
    out_mask[sy0 - by0 : sy1 - by0, sx0 - bx0 : sx1 - bx0] = mask[sy0:sy1, sx0:sx1]
    out_img[~out_mask] = 0
    return out_img, out_mask


def pad_coin(
    coin: np.ndarray,
    mask: np.ndarray,
    size_px: int,
    rng: np.random.Generator,
    *,
    coverage_ratio: tuple[float, float] = (MIN_COVERAGE_RATIO, MAX_COVERAGE_RATIO),
) -> tuple[np.ndarray, np.ndarray, float]:
    """Step 1: scale the square coin layer so its square covers 1:``r`` of a ``size_px`` canvas, with ``r``
    log-uniform in ``coverage_ratio``, at a random position. Returns (canvas RGB, canvas mask, r)."""
    lo, hi = coverage_ratio
    ratio = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    side = max(4, min(size_px, round(size_px / math.sqrt(ratio))))
    coin_r = cv2.resize(coin, (side, side), interpolation=cv2.INTER_AREA if side < coin.shape[0] else cv2.INTER_LINEAR)
    mask_r = cv2.resize(mask.astype(np.uint8), (side, side), interpolation=cv2.INTER_NEAREST).astype(bool)
    x0 = int(rng.integers(0, size_px - side + 1))
    y0 = int(rng.integers(0, size_px - side + 1))
    coin_r[~mask_r] = 0  # resampling bleeds coin colour past the (nearest-neighbour) mask edge
    canvas = np.zeros((size_px, size_px, 3), np.uint8)
    canvas_mask = np.zeros((size_px, size_px), bool)
    canvas[y0 : y0 + side, x0 : x0 + side] = coin_r
    canvas_mask[y0 : y0 + side, x0 : x0 + side] = mask_r
    return canvas, canvas_mask, (size_px * size_px) / (side * side)


def procedural_texture(size_px: int, rng: np.random.Generator) -> np.ndarray:
    """A coin-free texture: smooth noise, gradient, stripes/checks or wood-like grain, randomly coloured."""
    kind = int(rng.integers(0, 4))
    yy, xx = np.mgrid[0:size_px, 0:size_px].astype(np.float32) / size_px
    if kind == 0:  # smooth multi-scale noise
        field = np.zeros((size_px, size_px), np.float32)
        for octave in (4, 8, 16, 32):
            small = rng.random((octave, octave)).astype(np.float32)
            field += cv2.resize(small, (size_px, size_px), interpolation=cv2.INTER_CUBIC) / octave
    elif kind == 1:  # linear gradient
        angle = rng.uniform(0, 2 * math.pi)
        field = math.cos(angle) * xx + math.sin(angle) * yy
    elif kind == 2:  # stripes or checks
        freq = rng.uniform(2, 12)
        angle = rng.uniform(0, math.pi)
        u = math.cos(angle) * xx + math.sin(angle) * yy
        field = (np.sin(2 * math.pi * freq * u) > 0).astype(np.float32)
        if rng.random() < 0.5:
            v = -math.sin(angle) * xx + math.cos(angle) * yy
            field = np.abs(field - (np.sin(2 * math.pi * freq * v) > 0).astype(np.float32))
    else:  # wood-like grain
        field = np.sin(2 * math.pi * (rng.uniform(5, 25) * yy + 0.3 * np.sin(2 * math.pi * rng.uniform(1, 4) * xx)))
    field = (field - field.min()) / max(float(field.max() - field.min()), 1e-6)
    c0, c1 = rng.integers(0, 256, size=3), rng.integers(0, 256, size=3)
    out = c0[None, None, :] * (1 - field[..., None]) + c1[None, None, :] * field[..., None]
    return np.clip(out, 0, 255).astype(np.uint8)


def crop_background(backgrounds: Sequence[np.ndarray], size_px: int, rng: np.random.Generator,
                    *, procedural_p: float = 0.3) -> np.ndarray:
    """Step 2: a random-size (30-100 % of the shorter side), random-position window of a background photo,
    resized to ``size_px``; a procedural texture instead with probability ``procedural_p``."""
    if not backgrounds or rng.random() < procedural_p:
        return procedural_texture(size_px, rng)
    bg = backgrounds[int(rng.integers(0, len(backgrounds)))]
    h, w = bg.shape[:2]
    side = max(8, round(min(h, w) * rng.uniform(0.3, 1.0)))
    x0 = int(rng.integers(0, w - side + 1))
    y0 = int(rng.integers(0, h - side + 1))
    window = bg[y0 : y0 + side, x0 : x0 + side]
    if rng.random() < 0.5:
        window = window[:, ::-1]
    return cv2.resize(np.ascontiguousarray(window), (size_px, size_px), interpolation=cv2.INTER_LINEAR)


_COIN_JITTER = A.Compose([
    A.Rotate(limit=180, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=1.0),
    A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.MotionBlur(blur_limit=(3, 7))], p=0.3),
    A.RandomBrightnessContrast(brightness_limit=0.3, contrast_limit=0.3, p=0.8),
    A.HueSaturationValue(hue_shift_limit=8, sat_shift_limit=20, val_shift_limit=15, p=0.5),
])
_BACKGROUND_JITTER = A.Compose([
    A.Rotate(limit=180, border_mode=cv2.BORDER_REFLECT_101, p=0.5),
    A.OneOf([A.GaussianBlur(blur_limit=(3, 7)), A.MotionBlur(blur_limit=(3, 7))], p=0.4),
    A.RandomBrightnessContrast(brightness_limit=0.35, contrast_limit=0.35, p=0.9),
    A.HueSaturationValue(hue_shift_limit=30, sat_shift_limit=40, val_shift_limit=30, p=0.8),
])
_NOISE_AND_SHADOWS = A.Compose([
    A.RandomShadow(shadow_roi=(0, 0, 1, 1), num_shadows_limit=(1, 2), shadow_intensity_range=(0.15, 0.45), p=0.25),
    A.OneOf([A.GaussNoise(std_range=(0.01, 0.06)), A.ISONoise(intensity=(0.05, 0.3))], p=0.5),
    A.ImageCompression(quality_range=(50, 95), p=0.3),
])


def jitter_coin(coin: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Step 3a: rotate (mask follows) / blur / brightness on the coin layer alone."""
    out = _run_albu(_COIN_JITTER, rng, image=coin, mask=mask.astype(np.uint8))
    new_mask = out["mask"].astype(bool)
    img = out["image"]
    img[~new_mask] = 0
    return img, new_mask


def jitter_background(background: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Step 3b: rotate / blur / brightness / colour on the background alone."""
    return _run_albu(_BACKGROUND_JITTER, rng, image=background)["image"]


def merge_with_mask(foreground: np.ndarray, background: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Step 4: hard composite, foreground where ``mask``."""
    return np.where(mask[..., None], foreground, background)


def pyramid_blend(foreground: np.ndarray, background: np.ndarray, mask: np.ndarray, levels: int = 3) -> np.ndarray:
    """Step 5: Laplacian-pyramid blend of the two layers weighted by a Gaussian pyramid of the mask, so the
    seam is smooth at every scale. The label mask is unchanged."""
    h, w = mask.shape
    levels = max(1, min(levels, int(math.log2(max(2, min(h, w)))) - 3))
    fg, bg = foreground.astype(np.float32), background.astype(np.float32)
    weight = mask.astype(np.float32)
    gauss_fg, gauss_bg, gauss_w = [fg], [bg], [weight]
    for _ in range(levels):
        gauss_fg.append(cv2.pyrDown(gauss_fg[-1]))
        gauss_bg.append(cv2.pyrDown(gauss_bg[-1]))
        gauss_w.append(cv2.pyrDown(gauss_w[-1]))
    blended = None
    for i in range(levels, -1, -1):
        if i == levels:
            lap_fg, lap_bg = gauss_fg[i], gauss_bg[i]
        else:
            size = (gauss_fg[i].shape[1], gauss_fg[i].shape[0])
            lap_fg = gauss_fg[i] - cv2.pyrUp(gauss_fg[i + 1], dstsize=size)
            lap_bg = gauss_bg[i] - cv2.pyrUp(gauss_bg[i + 1], dstsize=size)
        wt = gauss_w[i][..., None]
        level = lap_fg * wt + lap_bg * (1.0 - wt)
        blended = level if blended is None else cv2.pyrUp(blended, dstsize=(level.shape[1], level.shape[0])) + level
    return np.clip(blended, 0, 255).astype(np.uint8)


def noise_and_shadows(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Step 6: cast shadows, sensor noise, JPEG artefacts on the finished scene."""
    return _run_albu(_NOISE_AND_SHADOWS, rng, image=image)["image"]


def punch_hole(coin: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
               radius_frac: tuple[float, float] = (0.08, 0.2)) -> tuple[np.ndarray, np.ndarray]:
    """A centred round hole (coins such as the Danish krone): hole pixels leave the mask."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    cx, cy = float(xs.mean()), float(ys.mean())
    r = max(1, round(rng.uniform(*radius_frac) * min(h, w)))
    hole = np.zeros((h, w), np.uint8)
    cv2.circle(hole, (round(cx), round(cy)), r, 1, thickness=cv2.FILLED)
    new_mask = mask & ~hole.astype(bool)
    out = coin.copy()
    out[~new_mask] = 0
    return out, new_mask


def occlude_with_finger(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A skin-coloured elongated blob over the coin's edge (a finger holding it); covered pixels leave the
    mask. The blob never covers more than half the coin, so the coin stays the largest thing."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return image, mask
    cx, cy = xs.mean(), ys.mean()
    r = math.sqrt(len(xs) / math.pi)
    angle = rng.uniform(0, 2 * math.pi)
    ex, ey = cx + 1.1 * r * math.cos(angle), cy + 1.1 * r * math.sin(angle)
    axes = (max(2, round(r * rng.uniform(0.25, 0.4))), max(3, round(r * rng.uniform(0.6, 1.0))))
    blob = np.zeros(mask.shape, np.uint8)
    cv2.ellipse(blob, (round(ex), round(ey)), axes, math.degrees(angle) + 90, 0, 360, 1, thickness=cv2.FILLED)
    blob_b = blob.astype(bool)
    if (blob_b & mask).sum() > 0.5 * mask.sum():
        return image, mask
    skin = np.array([rng.uniform(170, 235), rng.uniform(120, 180), rng.uniform(95, 150)], np.float32)
    shade = cv2.GaussianBlur(blob.astype(np.float32), (0, 0), max(1.0, axes[0] / 2))[..., None]
    finger = np.clip(skin * (0.75 + 0.25 * shade), 0, 255).astype(np.uint8)
    soft = cv2.GaussianBlur(blob.astype(np.float32), (0, 0), 1.0)[..., None]
    out = (image.astype(np.float32) * (1 - soft) + finger.astype(np.float32) * soft).astype(np.uint8)
    return out, mask & ~blob_b


def random_letterbox(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                     aspect_range: tuple[float, float] = (0.5, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """Crop the square scene to a random aspect and letterbox it back (the black bars inference adds)."""
    size = image.shape[0]
    keep = round(size * rng.uniform(*aspect_range))
    offset = int(rng.integers(0, size - keep + 1))
    if rng.random() < 0.5:
        img, msk = image[offset : offset + keep], mask[offset : offset + keep]
    else:
        img, msk = image[:, offset : offset + keep], mask[:, offset : offset + keep]
    out_img, _ = letterbox(np.ascontiguousarray(img), size)
    out_mask, _ = letterbox(np.ascontiguousarray(msk.astype(np.uint8)), size)
    return out_img, out_mask > 0


@dataclass(frozen=True)
class SynthConfig:
    size_px: int = 128
    coverage_ratio: tuple[float, float] = (MIN_COVERAGE_RATIO, MAX_COVERAGE_RATIO)
    procedural_bg_p: float = 0.3
    extra_coins_p: float = 0.25  # smaller distractor coins in the scene
    hole_p: float = 0.08
    finger_p: float = 0.15
    letterbox_p: float = 0.2
    blend_levels: int = 3


class SceneSynthesizer:
    """Deterministic scene generator: ``scene(i)`` depends only on ``(seed, i)`` and the inputs.

    ``coins`` are (image RGB, bool mask) pairs of real photos; ``backgrounds`` are coin-free photos. The label
    marks every coin in the scene (the pipeline later keeps the largest); ``scene`` also returns the mask of
    the main (largest) coin alone for evaluating the largest-component rule.
    """

    def __init__(self, coins: Sequence[tuple[np.ndarray, np.ndarray]], backgrounds: Sequence[np.ndarray],
                 cfg: SynthConfig = SynthConfig(), seed: int = 0) -> None:
        if not coins:
            raise DatasetError("scene synthesis needs at least one labelled coin photo")
        self.coins = [coin_square(img, m) for img, m in coins]
        self.backgrounds = list(backgrounds)
        self.cfg = cfg
        self.seed = seed

    def _coin_layer(self, rng: np.random.Generator, coverage: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
        coin, mask = self.coins[int(rng.integers(0, len(self.coins)))]
        if rng.random() < self.cfg.hole_p:
            coin, mask = punch_hole(coin, mask, rng)
        canvas, canvas_mask, _ = pad_coin(coin, mask, self.cfg.size_px, rng, coverage_ratio=coverage)
        return jitter_coin(canvas, canvas_mask, rng)

    def scene(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(image RGB uint8 SxSx3, mask of all coins bool SxS, mask of the largest coin bool SxS)."""
        rng = np.random.default_rng([self.seed, index])
        cfg = self.cfg
        background = jitter_background(crop_background(self.backgrounds, cfg.size_px, rng,
                                                       procedural_p=cfg.procedural_bg_p), rng)
        coin, main_mask = self._coin_layer(rng, cfg.coverage_ratio)
        layers = [(coin, main_mask)]
        if rng.random() < cfg.extra_coins_p and main_mask.any():
            main_ratio = cfg.size_px**2 / max(1, main_mask.sum())
            for _ in range(int(rng.integers(1, 3))):
                # distractors are at most half the main coin's area so the largest-coin rule is well defined
                lo = max(cfg.coverage_ratio[0], main_ratio * 2.5)
                extra, extra_mask = self._coin_layer(rng, (lo, max(lo * 1.01, min(lo * 6.0, 150.0))))
                # a gap of background around the main coin: touching coins would merge into one component
                extra_mask &= ~cv2.dilate(main_mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
                layers.append((extra, extra_mask))
        image = background
        full_mask = np.zeros_like(main_mask)
        for layer, layer_mask in reversed(layers):  # main coin last, on top
            image = pyramid_blend(merge_with_mask(layer, image, layer_mask), image, layer_mask, cfg.blend_levels)
            full_mask = (full_mask & ~layer_mask) | layer_mask
        if rng.random() < cfg.finger_p:
            image, main_mask = occlude_with_finger(image, main_mask, rng)
            full_mask = full_mask & ~(layers[0][1] & ~main_mask)
        image = noise_and_shadows(image, rng)
        if rng.random() < cfg.letterbox_p:
            stacked = np.stack([full_mask, main_mask], axis=-1).astype(np.uint8)
            image2, _ = random_letterbox(image, full_mask, np.random.default_rng([self.seed, index, 1]))
            both = [random_letterbox(image, stacked[..., k] > 0, np.random.default_rng([self.seed, index, 1]))[1]
                    for k in range(2)]
            image, full_mask, main_mask = image2, both[0], both[1]
        return image, full_mask, main_mask
