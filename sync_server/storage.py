"""The server's file storage: where reference photos, packs and deltas live, how they are written and verified.

Everything the server keeps outside the database goes through :class:`LocalFileStore` (one folder for photos,
one for each catalog's pack and delta files), so a later storage backend (S3) replaces this one class.

Files are written once, atomically (``coinvision.sdk.files.write_atomic``), never modified; names are content
addressed (photos by their sha256, packs and deltas by version and sha256 prefix). Before a pack or delta is
served its bytes are checked against the signed version record's sha256, once per file per process
(:meth:`LocalFileStore.file_matches`): files are immutable, so a file whose inode, size and mtime are unchanged
still has the bytes that were hashed.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from coinvision.sdk.files import sha256_file, write_atomic

__all__ = ["LocalFileStore", "StoredFile"]

_verified: dict[tuple[str, int, int, int], str] = {}
_verified_lock = threading.Lock()
_MAX_VERIFIED = 4096


@dataclass(frozen=True)
class StoredFile:
    """A stored file as cleanup sees it: its name (a photo's sha256, a pack file's name) and age."""

    name: str
    path: Path
    mtime: float


class LocalFileStore:
    """Photos under ``images_dir/<sha[:2]>/<sha>.img``; each catalog's pack and delta files under
    ``packs_dir/<catalog_id>/<name>``."""

    def __init__(self, images_dir: Path, packs_dir: Path) -> None:
        self.images_dir = Path(images_dir)
        self.packs_dir = Path(packs_dir)

    # ------------------------------------------------------------------------------------ photos
    def photo_path(self, sha256: str) -> Path:
        """Where an uploaded reference photo is kept (content-addressed: one file per distinct photo)."""
        return self.images_dir / sha256[:2] / f"{sha256}.img"

    def put_photo(self, sha256: str, data: bytes) -> None:
        write_atomic(self.photo_path(sha256), data)

    def remove_photo(self, sha256: str) -> bool:
        """Delete a photo file; False when it was already gone."""
        try:
            self.photo_path(sha256).unlink()
        except FileNotFoundError:
            return False
        return True

    def photos(self) -> Iterator[StoredFile]:
        """Every stored photo (``name`` is its sha256)."""
        if not self.images_dir.is_dir():
            return
        for path in self.images_dir.glob("*/*"):
            if path.is_file():
                yield StoredFile(path.name.split(".")[0], path, path.stat().st_mtime)

    # ------------------------------------------------------------------------------------ packs and deltas
    def pack_path(self, catalog_id: str, name: str) -> Path:
        """Where a catalog's pack or delta file ``name`` is kept."""
        return self.packs_dir / catalog_id / name

    def put_pack_file(self, catalog_id: str, name: str, data: bytes) -> None:
        write_atomic(self.pack_path(catalog_id, name), data)

    def has_pack_file(self, catalog_id: str, name: str) -> bool:
        return self.pack_path(catalog_id, name).is_file()

    def pack_files(self, catalog_id: str) -> Iterator[StoredFile]:
        """Every file kept for ``catalog_id`` (packs, deltas and leftovers of interrupted publishes)."""
        folder = self.packs_dir / catalog_id
        if not folder.is_dir():
            return
        for path in folder.iterdir():
            if path.is_file():
                yield StoredFile(path.name, path, path.stat().st_mtime)

    def remove_pack_file(self, catalog_id: str, name: str) -> None:
        self.pack_path(catalog_id, name).unlink(missing_ok=True)

    def catalogs_with_files(self) -> list[str]:
        """Catalog ids that have a pack folder (including catalogs deleted while a publish was running)."""
        if not self.packs_dir.is_dir():
            return []
        return sorted(p.name for p in self.packs_dir.iterdir() if p.is_dir())

    def remove_catalog_files(self, catalog_id: str) -> None:
        shutil.rmtree(self.packs_dir / catalog_id, ignore_errors=True)

    def file_matches(self, catalog_id: str, name: str, size: int, sha256: str) -> bool:
        """True when the stored file holds exactly ``size`` bytes hashing to ``sha256`` (memoised per file
        identity: inode, size and mtime)."""
        path = self.pack_path(catalog_id, name)
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
