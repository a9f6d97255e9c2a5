"""Disk cleanup: photos of deleted references, files of versions past the retention, leftovers of crashes.

- :func:`remove_unreferenced_photos` runs right after a delete commits: a photo file goes when no reference row
  (in any catalog: files are content-addressed and shared) names its sha256 any more.
- :func:`prune_old_packs` runs after every publish: the pack and delta files of the newest
  ``pack_retention_versions`` versions stay; older versions' files go (their rows stay as history and their
  downloads answer 410). Devices on an old version then download the newest full pack.
- :func:`remove_orphans` (``coinvision cleanup``, e.g. from cron) removes files nothing names that are older than
  ``orphan_grace_s``: a publish or upload writes its files before its database commit, so younger unnamed files
  may belong to a request still running.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from coinvision.sync_server.models import CatalogVersion, ReferenceImage
from coinvision.sync_server.storage import image_path
from sqlalchemy import select
from sqlalchemy.orm import Session

__all__ = [
    "CleanupReport", "prune_old_packs", "remove_catalog_packs", "remove_orphans", "remove_unreferenced_photos",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CleanupReport:
    photos_removed: int
    pack_files_removed: int


def _referenced_shas(session: Session, shas: Iterable[str] | None = None) -> set[str]:
    q = select(ReferenceImage.sha256).distinct()
    if shas is not None:
        q = q.where(ReferenceImage.sha256.in_(list(shas)))
    return set(session.scalars(q).all())


def remove_unreferenced_photos(session: Session, images_dir: Path, shas: Iterable[str]) -> int:
    """Delete the photo files among ``shas`` that no reference row names any more. Returns how many went."""
    shas = set(shas)
    if not shas:
        return 0
    still = _referenced_shas(session, shas)
    removed = 0
    for sha in shas - still:
        path = image_path(images_dir, sha)
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    return removed


def remove_catalog_packs(packs_dir: Path, catalog_id: str) -> None:
    shutil.rmtree(packs_dir / catalog_id, ignore_errors=True)


def _version_files(v: CatalogVersion) -> set[str]:
    return {n for n in (v.pack_file, v.delta_file) if n}


def prune_old_packs(session: Session, packs_dir: Path, catalog_id: str, keep: int, grace_s: float) -> int:
    """Keep the files of the newest ``keep`` versions; remove older versions' files and stale unnamed ones."""
    versions = session.scalars(
        select(CatalogVersion).where(CatalogVersion.catalog_id == catalog_id).order_by(CatalogVersion.version.desc())
    ).all()
    kept: set[str] = set().union(*(_version_files(v) for v in versions[:keep])) if versions else set()
    old: set[str] = set().union(*(_version_files(v) for v in versions[keep:])) if versions else set()
    folder = packs_dir / catalog_id
    if not folder.is_dir():
        return 0
    now = time.time()
    removed = 0
    for path in folder.iterdir():
        if not path.is_file() or path.name in kept:
            continue
        stale = now - path.stat().st_mtime > grace_s
        if path.name in old or stale:
            path.unlink(missing_ok=True)
            removed += 1
    if removed:
        log.info("catalog %s: removed %d pack/delta files (keeping %d versions)", catalog_id, removed, keep)
    return removed


def remove_orphans(session: Session, images_dir: Path, packs_dir: Path, keep: int, grace_s: float) -> CleanupReport:
    """Photos no reference names and pack files of no kept version, older than ``grace_s`` (all catalogs)."""
    now = time.time()
    photos = 0
    if images_dir.is_dir():
        named = _referenced_shas(session)
        for path in images_dir.glob("*/*"):
            if path.is_file() and path.name.split(".")[0] not in named and now - path.stat().st_mtime > grace_s:
                path.unlink(missing_ok=True)
                photos += 1
    packs = 0
    if packs_dir.is_dir():
        for folder in packs_dir.iterdir():
            if folder.is_dir():
                packs += prune_old_packs(session, packs_dir, folder.name, keep, grace_s)
    return CleanupReport(photos, packs)
