"""Decode any photo a user hands us into an RGB uint8 array, safely and the same way on every platform."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from coinvision.sdk.errors import ImageError
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["MAX_INPUT_PIXELS", "ImageSource", "load_image"]

# A 20000x20000 photo would take 1.2 GB as RGB; phones never produce more than ~50 MP.
MAX_INPUT_PIXELS = 64_000_000
# Images are downscaled to this longer side right after decoding: the pipeline never needs more.
MAX_WORKING_SIDE_PX = 2048

ImageSource = Union[str, Path, bytes, np.ndarray, Image.Image]  # noqa: UP007 - used at runtime


def _open(source: str | Path | bytes, name: str) -> Image.Image:
    try:
        # Pillow's own decompression-bomb guard fires at open() for > 179 MP; ours (MAX_INPUT_PIXELS, lower)
        # runs right after open with a message that names the limit, so Pillow's warning is noise here.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if isinstance(source, bytes):
                if not source:
                    raise ImageError(f"{name}: empty input (0 bytes); pass the bytes of a JPEG/PNG photo")
                return Image.open(io.BytesIO(source))
            path = Path(source)
            if not path.is_file():
                raise ImageError(f"{name}: no such file; check the path")
            if path.stat().st_size == 0:
                raise ImageError(f"{name}: file is empty (0 bytes); re-export or re-copy the photo")
            return Image.open(path)
    except Image.DecompressionBombError as exc:
        raise ImageError(
            f"{name}: image is far above the {MAX_INPUT_PIXELS / 1e6:.0f} MP limit ({exc}); downscale the photo first"
        ) from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{name}: not a readable image (JPEG, PNG, WebP, BMP, TIFF are supported)") from exc
    except OSError as exc:
        raise ImageError(f"{name}: cannot read image: {exc}") from exc


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I") and img.getextrema()[1] > 255:
        # 16-bit grayscale (scanners, some PNG exports): Pillow's convert() clips to 255, scale instead.
        wide = np.asarray(img, dtype=np.uint32)
        img = Image.fromarray((np.minimum(wide, 65535) // 257).astype(np.uint8), mode="L")
    return img if img.mode == "RGB" else img.convert("RGB")  # convert() to the same mode copies


def load_image(source: ImageSource, *, max_side_px: int = MAX_WORKING_SIDE_PX) -> np.ndarray:
    """Return an ``HxWx3`` uint8 RGB array.

    Honours EXIF orientation (phone photos), converts grayscale / RGBA / CMYK / palette to RGB, refuses
    images above :data:`MAX_INPUT_PIXELS` before decoding them (decompression bombs), and downsizes so the
    longer side is at most ``max_side_px`` (bounded memory for huge inputs).
    """
    name = "image" if isinstance(source, bytes | np.ndarray | Image.Image) else str(source)
    if isinstance(source, np.ndarray):
        arr = source
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.dtype != np.uint8:
            raise ImageError(
                f"array image of shape {arr.shape} dtype {arr.dtype}: expected HxWx3 (or HxWx4) uint8 RGB"
            )
        if arr.shape[0] == 0 or arr.shape[1] == 0:
            raise ImageError("array image has zero size; pass a non-empty HxWx3 uint8 array")
        if arr.shape[2] == 3 and max(arr.shape[:2]) <= max_side_px:
            # Already a decoded photo (the server decodes an upload once, then embeds it): nothing to convert,
            # orient or shrink, so no round trip through PIL.
            return np.ascontiguousarray(arr)
        img = Image.fromarray(np.ascontiguousarray(arr[..., :3]))
    else:
        img = source if isinstance(source, Image.Image) else _open(source, name)
    width, height = img.size
    if width == 0 or height == 0:
        raise ImageError(f"{name}: image has zero size")
    if width * height > MAX_INPUT_PIXELS:
        raise ImageError(
            f"{name}: {width}x{height} is {width * height / 1e6:.0f} MP, above the {MAX_INPUT_PIXELS / 1e6:.0f} MP "
            "limit; downscale the photo first"
        )
    try:
        if max(width, height) > max_side_px:
            # draft() lets JPEG decode at 1/2..1/8 scale, so a huge photo never lands in memory whole. It keeps
            # both sides >= the requested ones, so request the aspect-preserving target, not a square.
            scale = max_side_px / max(width, height)
            img.draft("RGB", (max(1, round(width * scale)), max(1, round(height * scale))))
        if isinstance(source, Image.Image):
            img = ImageOps.exif_transpose(img)  # never modify the caller's image
        else:
            ImageOps.exif_transpose(img, in_place=True)  # no full-size copy of a big photo
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            # Transparent pixels become white, as a photo app shows them.
            rgba = img.convert("RGBA")
            canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = Image.alpha_composite(canvas, rgba)
        img = _to_rgb(img)
        if max(img.size) > max_side_px:
            img.thumbnail((max_side_px, max_side_px), Image.Resampling.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"{name}: image is truncated or corrupt ({exc}); re-export the photo") from exc
    return np.ascontiguousarray(arr)
