"""Upload checks: everything is refused before anything is written (size, type, name, pixels, decoding)."""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from dataclasses import dataclass

import numpy as np
from coinvision.sdk.errors import ImageError
from coinvision.sdk.imageio import load_image
from coinvision.sync_server.api_errors import ApiError
from PIL import Image, UnidentifiedImageError
from werkzeug.datastructures import FileStorage

__all__ = ["ALLOWED_IMAGE_TYPES", "DecodedUpload", "decode_upload", "thumbnail_jpeg"]

ALLOWED_IMAGE_TYPES = {"image/jpeg", "image/png", "image/webp", "image/bmp", "image/tiff"}
_SAFE_NAME = re.compile(r"^[\w\- .()]{1,200}$")


@dataclass(frozen=True)
class DecodedUpload:
    filename: str
    data: bytes
    sha256: str
    image: np.ndarray  # RGB uint8 HxWx3, EXIF-rotated, longer side <= 2048


def _check_filename(name: str | None) -> str:
    name = name or "upload"
    if "/" in name or "\\" in name or ".." in name or "\x00" in name or not _SAFE_NAME.match(name):
        raise ApiError(
            400, "bad_filename", f"file name {name!r} is not allowed; use a plain name without folders or '..'"
        )
    return name


def decode_upload(file: FileStorage, *, max_bytes: int, max_pixels: int) -> DecodedUpload:
    name = _check_filename(file.filename)
    mimetype = (file.mimetype or "").lower()
    if mimetype not in ALLOWED_IMAGE_TYPES:
        raise ApiError(
            415, "unsupported_media_type",
            f"{name}: content type {mimetype or 'missing'!r} is not an image type; send one of "
            + ", ".join(sorted(ALLOWED_IMAGE_TYPES)),
        )
    data = file.stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ApiError(413, "image_too_large", f"{name}: more than {max_bytes} bytes; downscale or recompress it")
    if not data:
        raise ApiError(400, "empty_image", f"{name}: empty file")
    # Read only the header first: a small file that claims a huge canvas (decompression bomb) stops here.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                width, height = probe.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ApiError(413, "too_many_pixels", f"{name}: decompression bomb refused ({exc})") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ApiError(400, "not_an_image", f"{name}: not a readable image (JPEG, PNG, WebP, BMP, TIFF)") from exc
    if width * height > max_pixels:
        raise ApiError(
            413, "too_many_pixels",
            f"{name}: {width}x{height} is above the {max_pixels / 1e6:.0f} MP limit; downscale it",
        )
    try:
        image = load_image(data)
    except ImageError as exc:
        raise ApiError(400, "bad_image", f"{name}: {exc}") from exc
    return DecodedUpload(name, data, hashlib.sha256(data).hexdigest(), image)


def thumbnail_jpeg(image: np.ndarray, side_px: int = 160) -> bytes:
    img = Image.fromarray(image)
    img.thumbnail((side_px, side_px), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def overlay_png(image: np.ndarray, mask: np.ndarray | None, side_px: int = 384) -> bytes:
    """The photo with the coin mask tinted green and the rest dimmed: what the segmenter saw."""
    out = image.astype(np.float32)
    if mask is not None:
        m = mask[..., None]
        green = np.array([40, 220, 90], np.float32)
        out = np.where(m, 0.6 * out + 0.4 * green, 0.45 * out)
    img = Image.fromarray(out.clip(0, 255).astype(np.uint8))
    img.thumbnail((side_px, side_px), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
