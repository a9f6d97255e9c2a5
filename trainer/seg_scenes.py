"""Synthesized segmentation scenes: :class:`SceneSynthesizer` composes training scenes from labelled coin photos
and backgrounds with the design's recipe, one named function per step:

1. :func:`pad_coin` - the coin covers between 1:1 and 1:36 of the output area;
2. :func:`crop_background` - random window of a background photo or a :func:`procedural_texture`;
3. :func:`jitter_coin` / :func:`jitter_background` - rotate / blur / brightness, separately;
4. :func:`merge_with_mask` - hard composite;
5. :func:`pyramid_blend` - Gaussian/Laplacian pyramid blend so the seam has no sharp edge;
6. :func:`noise_and_shadows` - sensor noise and cast shadows (albumentations).

Extras: :func:`punch_hole` (holed coins), :func:`occlude_with_finger`, smaller distractor coins
(the largest coin is the one the pipeline keeps), :func:`random_letterbox` (the padding the inference
letterbox adds). Hard cases (v2): multi-coin scenes (:func:`place_coin`, 2-5 coins touching or overlapping,
``SynthConfig.multi_coin_p``), :func:`skin_texture` backgrounds (a hand under the coin), :func:`add_glare`,
:func:`cast_coin_shadow`, :func:`match_background_colour` (a coin of the background's colour).

Every random choice flows from one ``numpy.random.Generator``, so a scene is a pure function of
``(seed, index)``. The recipe's settings are :class:`~coinvision.trainer.seg_config.SynthConfig`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np
from coinvision.sdk.errors import DatasetError
from coinvision.sdk.preprocess import letterbox
from coinvision.trainer.seg_config import MAX_COVERAGE_RATIO, MIN_COVERAGE_RATIO, SynthConfig

__all__ = [
    "SceneSynthesizer",
    "add_glare",
    "cast_coin_shadow",
    "coin_square",
    "crop_background",
    "jitter_background",
    "jitter_coin",
    "match_background_colour",
    "merge_with_mask",
    "noise_and_shadows",
    "occlude_with_finger",
    "pad_coin",
    "place_coin",
    "procedural_texture",
    "punch_hole",
    "pyramid_blend",
    "random_letterbox",
    "skin_texture",
]


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
    x0 = int(rng.integers(0, size_px - side + 1))
    y0 = int(rng.integers(0, size_px - side + 1))
    canvas, canvas_mask = place_coin(coin, mask, size_px, side, x0, y0)
    return canvas, canvas_mask, (size_px * size_px) / (side * side)


def place_coin(coin: np.ndarray, mask: np.ndarray, size_px: int, side: int, x0: int,
               y0: int) -> tuple[np.ndarray, np.ndarray]:
    """The square coin layer resized to ``side`` with its top-left corner at ``(x0, y0)`` of a black
    ``size_px`` canvas; parts past the canvas edge are cut off. Returns (canvas RGB, canvas mask)."""
    side = max(4, int(side))
    coin_r = cv2.resize(coin, (side, side), interpolation=cv2.INTER_AREA if side < coin.shape[0] else cv2.INTER_LINEAR)
    mask_r = cv2.resize(mask.astype(np.uint8), (side, side), interpolation=cv2.INTER_NEAREST).astype(bool)
    coin_r[~mask_r] = 0  # resampling bleeds coin colour past the (nearest-neighbour) mask edge
    canvas = np.zeros((size_px, size_px, 3), np.uint8)
    canvas_mask = np.zeros((size_px, size_px), bool)
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x0 + side, size_px), min(y0 + side, size_px)
    if cx1 > cx0 and cy1 > cy0:
        canvas[cy0:cy1, cx0:cx1] = coin_r[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
        canvas_mask[cy0:cy1, cx0:cx1] = mask_r[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
    return canvas, canvas_mask


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


def skin_texture(size_px: int, rng: np.random.Generator) -> np.ndarray:
    """A palm under the coin: smooth skin tones with soft shading and faint creases."""
    field = np.zeros((size_px, size_px), np.float32)
    for octave in (2, 4, 8):
        small = rng.random((octave, octave)).astype(np.float32)
        field += cv2.resize(small, (size_px, size_px), interpolation=cv2.INTER_CUBIC) / octave
    field = (field - field.min()) / max(float(field.max() - field.min()), 1e-6)
    skin = np.array([rng.uniform(150, 240), rng.uniform(100, 185), rng.uniform(75, 155)], np.float32)
    out = skin[None, None, :] * (0.7 + 0.4 * field[..., None])
    for _ in range(int(rng.integers(0, 4))):  # palm creases
        p0 = tuple(int(v) for v in rng.integers(0, size_px, 2))
        p1 = tuple(int(v) for v in rng.integers(0, size_px, 2))
        crease = np.zeros((size_px, size_px), np.float32)
        cv2.line(crease, p0, p1, 1.0, thickness=max(1, size_px // 96))
        out *= 1.0 - 0.25 * cv2.GaussianBlur(crease, (0, 0), 1.0)[..., None]
    return np.clip(out, 0, 255).astype(np.uint8)


def add_glare(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A soft specular highlight on the coin (a lamp or window reflected by the metal); the mask is unchanged."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return image
    r = math.sqrt(len(xs) / math.pi)
    k = int(rng.integers(0, len(xs)))
    blob = np.zeros(mask.shape, np.float32)
    axes = (max(1, round(r * rng.uniform(0.15, 0.5))), max(1, round(r * rng.uniform(0.05, 0.25))))
    cv2.ellipse(blob, (int(xs[k]), int(ys[k])), axes, float(rng.uniform(0, 180)), 0, 360, 1.0, thickness=cv2.FILLED)
    blob = cv2.GaussianBlur(blob, (0, 0), max(1.0, axes[1] / 2)) * mask * rng.uniform(0.5, 0.95)
    out = image.astype(np.float32) * (1 - blob[..., None]) + 255.0 * blob[..., None]
    return np.clip(out, 0, 255).astype(np.uint8)


def cast_coin_shadow(background: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Darken the background under a soft, offset copy of the coin's mask (its drop shadow)."""
    area = int(mask.sum())
    if area == 0:
        return background
    r = math.sqrt(area / math.pi)
    angle = rng.uniform(0, 2 * math.pi)
    shift = r * rng.uniform(0.05, 0.25)
    matrix = np.float32([[1, 0, shift * math.cos(angle)], [0, 1, shift * math.sin(angle)]])
    h, w = mask.shape
    shadow = cv2.warpAffine(mask.astype(np.float32), matrix, (w, h))
    shadow = cv2.GaussianBlur(shadow, (0, 0), max(1.0, r * rng.uniform(0.05, 0.2)))
    out = background.astype(np.float32) * (1 - rng.uniform(0.3, 0.6) * shadow[..., None])
    return np.clip(out, 0, 255).astype(np.uint8)


def match_background_colour(background: np.ndarray, coin: np.ndarray, mask: np.ndarray,
                            rng: np.random.Generator) -> np.ndarray:
    """Shift the background's mean colour onto the coin's (a brass coin on a wooden table, a silver coin on
    grey stone), keeping the background's texture."""
    if not mask.any():
        return background
    bg = background.astype(np.float32)
    target = coin[mask].astype(np.float32).mean(axis=0) + rng.normal(0, 8, 3)
    out = bg - bg.reshape(-1, 3).mean(axis=0) + target
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
    """Crop the square scene to a random aspect and letterbox it back (the black bars inference adds). ``mask``: one
    H x W mask, or several stacked H x W x K (each resized on its own)."""
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

MAX_OTHER_VISIBLE = 0.8  # in a multi-coin scene every other coin shows at most this share of the main coin's area


def _visible_masks(masks: Sequence[np.ndarray]) -> list[np.ndarray]:
    """What each of the bottom-to-top layer ``masks`` shows once the layers above it are drawn."""
    above = np.zeros_like(masks[0])
    visible = []
    for mask in reversed(masks):
        visible.append(mask & ~above)
        above = above | mask
    return visible[::-1]


def _chance(rng: np.random.Generator, p: float) -> bool:
    """``p`` == 0 draws nothing, so adding an option leaves the scenes of configs without it unchanged."""
    return p > 0 and rng.random() < p


class SceneSynthesizer:
    """Deterministic scene generator: ``scene(i)`` depends only on ``(seed, i)`` and the inputs.

    ``coins`` are (image RGB, bool mask) pairs of real photos; ``backgrounds`` are coin-free photos. ``scene``
    returns the mask of every coin in the scene and the mask of the main (largest visible) coin alone: the
    coin the pipeline must keep. Which of the two a model learns is ``SegmenterConfig.label``.
    """

    def __init__(self, coins: Sequence[tuple[np.ndarray, np.ndarray]], backgrounds: Sequence[np.ndarray],
                 cfg: SynthConfig | None = None, seed: int = 0) -> None:
        if not coins:
            raise DatasetError("scene synthesis needs at least one labelled coin photo")
        self.coins = [coin_square(img, m) for img, m in coins]
        self.backgrounds = list(backgrounds)
        self.cfg = cfg if cfg is not None else SynthConfig()
        self.seed = seed

    def _pick_coin(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
        """``(image, mask, index into coins)`` of a coin drawn for the scene."""
        source = int(rng.integers(0, len(self.coins)))
        coin, mask = self.coins[source]
        if rng.random() < self.cfg.hole_p:
            coin, mask = punch_hole(coin, mask, rng)
        return coin, mask, source

    def _coin_layer(self, rng: np.random.Generator,
                    coverage: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, int]:
        coin, mask, source = self._pick_coin(rng)
        canvas, canvas_mask, _ = pad_coin(coin, mask, self.cfg.size_px, rng, coverage_ratio=coverage)
        return *jitter_coin(canvas, canvas_mask, rng), source

    def _background(self, rng: np.random.Generator) -> np.ndarray:
        cfg = self.cfg
        if _chance(rng, cfg.skin_bg_p):
            return jitter_background(skin_texture(cfg.size_px, rng), rng)
        return jitter_background(crop_background(self.backgrounds, cfg.size_px, rng,
                                                 procedural_p=cfg.procedural_bg_p), rng)

    def _multi_coin_layers(self, rng: np.random.Generator
                           ) -> tuple[list[tuple[np.ndarray, np.ndarray]], int, list[int]]:
        """Bottom-to-top coin layers of a 2-5 coin scene, the main coin's index among them and each layer's index
        into ``coins``. Extra coins are
        smaller (``other_area``) and touch, overlap or lie apart from the earlier ones; one whose visible part
        comes within ``MAX_OTHER_VISIBLE`` of the main coin's visible area is left out, so "the largest coin"
        is never a close call."""
        cfg, size = self.cfg, self.cfg.size_px
        lo = max(cfg.coverage_ratio[0], 3.0)
        hi = max(lo * 1.01, min(cfg.coverage_ratio[1], 25.0))
        ratio = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
        main_side = max(8, round(size / math.sqrt(ratio)))
        coin, mask, source = self._pick_coin(rng)
        coin, mask = jitter_coin(coin, mask, rng)
        x0 = int(rng.integers(0, size - main_side + 1))
        y0 = int(rng.integers(0, size - main_side + 1))
        placed = [(x0 + main_side / 2, y0 + main_side / 2, main_side / 2)]  # centre x, y, radius
        layers = [(True, *place_coin(coin, mask, size, main_side, x0, y0), source)]  # (is_main, rgb, mask, source)
        for _ in range(int(rng.integers(cfg.multi_coins[0], cfg.multi_coins[1] + 1)) - 1):
            side = max(6, round(main_side * math.sqrt(rng.uniform(*cfg.other_area))))
            coin, mask, source = self._pick_coin(rng)
            coin, mask = jitter_coin(coin, mask, rng)
            if rng.random() < cfg.touch_p:
                ax, ay, ar = placed[int(rng.integers(0, len(placed)))]
                angle = rng.uniform(0, 2 * math.pi)
                dist = (ar + side / 2) * rng.uniform(0.65, 1.04)  # overlapping ... just touching
                cx, cy = ax + dist * math.cos(angle), ay + dist * math.sin(angle)
            else:
                cx, cy = rng.uniform(0, size), rng.uniform(0, size)
            layer = (False, *place_coin(coin, mask, size, side, round(cx - side / 2), round(cy - side / 2)), source)
            if rng.random() < cfg.on_top_p:
                layers.append(layer)
            else:
                layers.insert(0, layer)
            placed.append((cx, cy, side / 2))
        while True:
            visible = _visible_masks([m for _, _, m, _ in layers])
            main = next(i for i, layer in enumerate(layers) if layer[0])
            main_area = int(visible[main].sum())
            worst = max((i for i in range(len(layers)) if i != main), key=lambda i: int(visible[i].sum()),
                        default=None)
            if worst is None or visible[worst].sum() <= MAX_OTHER_VISIBLE * main_area:
                return [(rgb, m) for _, rgb, m, _ in layers], main, [k for *_, k in layers]
            layers.pop(worst)

    def scene(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(image RGB uint8 SxSx3, mask of all coins bool SxS, mask of the largest coin bool SxS)."""
        return self.scene_with_source(index)[:3]

    def scene_with_source(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """:meth:`scene` and the index into ``coins`` of the photo its largest coin was cut from (what a
        recognizer should name)."""
        rng = np.random.default_rng([self.seed, index])
        cfg = self.cfg
        background = self._background(rng)
        if _chance(rng, cfg.multi_coin_p):
            stack, main_index, sources = self._multi_coin_layers(rng)  # bottom to top
        else:
            coin, main_mask, source = self._coin_layer(rng, cfg.coverage_ratio)
            layers, sources = [(coin, main_mask)], [source]
            if rng.random() < cfg.extra_coins_p and main_mask.any():
                main_ratio = cfg.size_px**2 / max(1, main_mask.sum())
                for _ in range(int(rng.integers(1, 3))):
                    # distractors are at most half the main coin's area so the largest-coin rule is well defined
                    lo = max(cfg.coverage_ratio[0], main_ratio * 2.5)
                    extra, extra_mask, source = self._coin_layer(rng, (lo, max(lo * 1.01, min(lo * 6.0, 150.0))))
                    # a gap of background around the main coin: touching coins would merge into one component
                    extra_mask &= ~cv2.dilate(main_mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
                    layers.append((extra, extra_mask))
                    sources.append(source)
            stack, sources, main_index = layers[::-1], sources[::-1], len(layers) - 1  # main coin last, on top
        full_mask = np.zeros((cfg.size_px, cfg.size_px), bool)
        for _, layer_mask in stack:
            full_mask |= layer_mask
        if _chance(rng, cfg.bg_match_p):
            background = match_background_colour(background, *stack[main_index], rng)
        if _chance(rng, cfg.coin_shadow_p):
            background = cast_coin_shadow(background, full_mask, rng)
        image = background
        for layer, layer_mask in stack:
            image = pyramid_blend(merge_with_mask(layer, image, layer_mask), image, layer_mask, cfg.blend_levels)
        visible = _visible_masks([m for _, m in stack])
        main_mask = visible[main_index]
        if rng.random() < cfg.finger_p:
            image, occluded = occlude_with_finger(image, main_mask, rng)
            full_mask = full_mask & ~(main_mask & ~occluded)
            main_mask = visible[main_index] = occluded
        if _chance(rng, cfg.glare_p):
            image = add_glare(image, main_mask, rng)
        image = noise_and_shadows(image, rng)
        if rng.random() < cfg.letterbox_p:
            image, full_mask, main_mask, main_index = self._letterboxed(image, full_mask, visible, main_index, index)
        return image, full_mask, main_mask, sources[main_index]

    def _letterboxed(self, image: np.ndarray, full_mask: np.ndarray, visible: list[np.ndarray], main_index: int,
                     index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """The scene cut to a random aspect and letterboxed, with its masks and the labelled layer's index. The
        crop may cut the main coin down below another coin, or out of the picture: the label is then the coin that
        is largest in what is left, as the pipeline's largest-coin rule sees it."""
        stack = np.stack([full_mask, *visible], axis=-1)  # one crop and one resize for the image and every mask
        out_image, out_stack = random_letterbox(image, stack, np.random.default_rng([self.seed, index, 1]))
        kept = [out_stack[..., k] for k in range(1, out_stack.shape[-1])]
        largest = max(range(len(kept)), key=lambda k: (int(kept[k].sum()), k == main_index))
        return out_image, out_stack[..., 0], kept[largest], largest
