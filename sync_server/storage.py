"""Files on disk are written once, atomically (``coinvision.sdk.fileio.write_atomic``), never modified."""

from __future__ import annotations

import hashlib
from pathlib import Path

from coinvision.sdk.fileio import write_atomic

__all__ = ["sha256_file", "write_atomic"]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
