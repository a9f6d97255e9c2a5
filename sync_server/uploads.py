"""Upload checks: everything is refused before anything is written (size, type, name, pixels, decoding).

Each photo is decoded once (``coinvision.sdk.images.load_image``); the RGB array travels on to the embedder and
the thumbnail. Refusals are domain errors (:mod:`coinvision.sync_server.errors`).
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from dataclasses import dataclass

import numpy as np
from coinvision.sdk.errors import ImageError
from coinvision.sdk.images import load_image
from coinvision.sync_server.errors import InvalidInputError, TooLargeError, UnsupportedFormatError
from PIL import Image, UnidentifiedImageError
from werkzeug.datastructures import FileStorage

__all__ = [
    "ALLOWED_FORMATS", "ALLOWED_IMAGE_TYPES", "DecodedUpload", "decode_upload", "decode_uploads", "overlay_png",
    "thumbnail_jpeg",
]

# Declared content types accepted, and the formats the bytes themselves must be (Pillow's names). Pillow reads
# some forty formats; only these three are decoded here, whatever the request claims. MPO is a JPEG with extra
# frames (stereo or depth, written by some cameras and phones): only its primary JPEG image is decoded.
ALLOWED_IMAGE_TYPES = {"image/jpeg", "image/png", "image/webp"}
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP")
_SAFE_NAME = re.compile(r"^[\w\- .()]{1,200}$")


@dataclass(frozen=True)
class DecodedUpload:
    filename: str
    data: bytes
    sha256: str
    image: np.ndarray  # RGB uint8 HxWx3, EXIF-rotated, longer side <= 2048
    width: int  # as stored (before downscaling)
    height: int


@dataclass(frozen=True)
class _Probed:
    filename: str
    data: bytes
    width: int
    height: int


def _check_filename(name: str | None) -> str:
    name = name or "upload"
    if "/" in name or "\\" in name or ".." in name or "\x00" in name or not _SAFE_NAME.match(name):
        raise InvalidInputError(
            "bad_filename", f"file name {name!r} is not allowed; use a plain name without folders or '..'"
        )
    return name


def _open_allowed(data: bytes, name: str) -> Image.Image:
    """Open with only the allowed decoders: a GIF, ICO, PCX, TIFF ... declared as image/jpeg is refused here."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise TooLargeError("too_many_pixels", f"{name}: decompression bomb refused ({exc})") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UnsupportedFormatError(
            "unsupported_image_format",
            f"{name}: not a JPEG, PNG or WebP image (judged by its bytes, not its name or content type); "
            "convert it to JPEG",
        ) from exc
    frames = getattr(img, "n_frames", 1) if img.format != "MPO" else 1
    if frames != 1:
        img.close()
        raise UnsupportedFormatError(
            "multi_frame_image",
            f"{name}: an animated {img.format} with {frames} frames; send a single still photo",
        )
    return img


def _probe(file: FileStorage, *, max_bytes: int, max_pixels: int) -> _Probed:
    name = _check_filename(file.filename)
    mimetype = (file.mimetype or "").lower()
    if mimetype not in ALLOWED_IMAGE_TYPES:
        raise UnsupportedFormatError(
            "unsupported_media_type",
            f"{name}: content type {mimetype or 'missing'!r} is not accepted; send one of "
            + ", ".join(sorted(ALLOWED_IMAGE_TYPES)),
        )
    data = file.stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise TooLargeError("image_too_large", f"{name}: more than {max_bytes} bytes; downscale or recompress it")
    if not data:
        raise InvalidInputError("empty_image", f"{name}: empty file")
    # Read only the header first: a small file that claims a huge canvas (decompression bomb) stops here.
    with _open_allowed(data, name) as probe:
        width, height = probe.size
    if width * height > max_pixels:
        raise TooLargeError(
            "too_many_pixels",
            f"{name}: {width}x{height} ({width * height / 1e6:.1f} MP) is above the {max_pixels / 1e6:.0f} MP limit "
            "here; downscale it",
        )
    return _Probed(name, data, width, height)


def _decode(p: _Probed) -> DecodedUpload:
    try:
        with _open_allowed(p.data, p.filename) as img:
            image = load_image(img)
    except ImageError as exc:
        raise InvalidInputError("bad_image", f"{p.filename}: {exc}") from exc
    return DecodedUpload(p.filename, p.data, hashlib.sha256(p.data).hexdigest(), image, p.width, p.height)


def decode_uploads(
    files: list[FileStorage], *, max_bytes: int, max_pixels: int, max_total_pixels: int
) -> list[DecodedUpload]:
    """Check every file's header, the request's pixel budget, then decode: the costly step runs last."""
    probed = [_probe(f, max_bytes=max_bytes, max_pixels=max_pixels) for f in files]
    total = sum(p.width * p.height for p in probed)
    if total > max_total_pixels:
        raise TooLargeError(
            "too_many_pixels",
            f"the {len(probed)} images hold {total / 1e6:.0f} MP together, above the {max_total_pixels / 1e6:.0f} MP "
            "per request; send fewer or smaller images per request",
        )
    return [_decode(p) for p in probed]


def decode_upload(file: FileStorage, *, max_bytes: int, max_pixels: int) -> DecodedUpload:
    return decode_uploads([file], max_bytes=max_bytes, max_pixels=max_pixels, max_total_pixels=max_pixels)[0]


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
