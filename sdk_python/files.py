"""Files on disk, the same way for every package: which files are photos, content hashes, atomic writes.

Files the SDK, the server and the tools replace are written atomically: temp file in the same folder, fsync,
rename. A crash or a failed write never leaves a half-written pack, state or manifest where the last good one was."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from coinvision.sdk.errors import DatasetError

__all__ = ["IMAGE_SUFFIXES", "is_image_file", "list_images", "sha256_file", "write_atomic"]

# Photo files every command accepts (what Pillow decodes here and on the phones' platforms).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})


def is_image_file(path: Path) -> bool:
    """A photo by its suffix; hidden files (``.DS_Store``, editor temp files) never are."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file()


def list_images(folder: str | Path, *, recursive: bool = True, required: bool = True) -> list[Path]:
    """Every photo under ``folder`` (recursively by default), sorted by path.

    ``required``: raise :class:`DatasetError` when the folder is missing or holds no photo.
    """
    folder = Path(folder)
    if not folder.is_dir():
        if required:
            raise DatasetError(f"image folder {folder} does not exist; pass a folder of photos")
        return []
    files = sorted(p for p in (folder.rglob("*") if recursive else folder.iterdir()) if is_image_file(p))
    if not files and required:
        raise DatasetError(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found")
    return files


def write_atomic(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks (checkpoints and weights run to hundreds of MB)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
