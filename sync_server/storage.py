"""Files on disk are written once, atomically (``coinvision.sdk.files.write_atomic``), never modified.

Before a pack or delta is served its bytes are checked against the signed version record's sha256, once per
file per process (:func:`file_matches`): files are immutable, so a file whose inode, size and mtime are unchanged
still has the bytes that were hashed.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from coinvision.sdk.files import sha256_file, write_atomic

__all__ = ["file_matches", "image_path", "sha256_file", "write_atomic"]

_verified: dict[tuple[str, int, int, int], str] = {}
_verified_lock = threading.Lock()
_MAX_VERIFIED = 4096


def file_matches(path: Path, size: int, sha256: str) -> bool:
    """True when ``path`` holds exactly ``size`` bytes hashing to ``sha256`` (memoised per file identity)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    if st.st_size != size:
        return False
    ident = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
    with _verified_lock:
        known = _verified.get(ident)
    if known is None:
        known = sha256_file(path)
        with _verified_lock:
            if len(_verified) >= _MAX_VERIFIED:
                _verified.clear()
            _verified[ident] = known
    return known == sha256


def image_path(images_dir: Path, sha256: str) -> Path:
    """Where an uploaded reference photo is kept (content-addressed: one file per distinct photo)."""
    return images_dir / sha256[:2] / f"{sha256}.img"
