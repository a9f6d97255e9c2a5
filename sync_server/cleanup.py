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
import time
from collections.abc import Iterable
from dataclasses import dataclass

from coinvision.sync_server.models import CatalogVersion, ReferenceImage
from coinvision.sync_server.storage import FileStore
from sqlalchemy import select
from sqlalchemy.orm import Session

__all__ = ["CleanupReport", "prune_old_packs", "remove_orphans", "remove_unreferenced_photos"]

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


def remove_unreferenced_photos(session: Session, store: FileStore, shas: Iterable[str]) -> int:
    """Delete the photo files among ``shas`` that no reference row names any more. Returns how many went."""
    shas = set(shas)
    if not shas:
        return 0
    still = _referenced_shas(session, shas)
    return sum(store.remove_photo(sha) for sha in shas - still)


def _version_files(v: CatalogVersion) -> set[str]:
    return {n for n in (v.pack_file, v.delta_file) if n}


def prune_old_packs(session: Session, store: FileStore, catalog_id: str, keep: int, grace_s: float) -> int:
    """Keep the files of the newest ``keep`` versions; remove older versions' files and stale unnamed ones."""
    versions = session.scalars(
        select(CatalogVersion).where(CatalogVersion.catalog_id == catalog_id).order_by(CatalogVersion.version.desc())
    ).all()
    kept: set[str] = set().union(*(_version_files(v) for v in versions[:keep])) if versions else set()
    old: set[str] = set().union(*(_version_files(v) for v in versions[keep:])) if versions else set()
    now = time.time()
    removed = 0
    for f in store.pack_files(catalog_id):
        if f.name in kept:
            continue
        if f.name in old or now - f.mtime > grace_s:
            store.remove_pack_file(catalog_id, f.name)
            removed += 1
    if removed:
        log.info("catalog %s: removed %d pack/delta files (keeping %d versions)", catalog_id, removed, keep)
    return removed


def remove_orphans(session: Session, store: FileStore, keep: int, grace_s: float) -> CleanupReport:
    """Photos no reference names and pack files of no kept version, older than ``grace_s`` (all catalogs)."""
    now = time.time()
    photos = 0
    named = _referenced_shas(session)
    for f in store.photos():
        if f.name not in named and now - f.mtime > grace_s:
            store.remove_photo(f.name)
            photos += 1
    packs = sum(prune_old_packs(session, store, cid, keep, grace_s) for cid in store.catalogs_with_files())
    return CleanupReport(photos, packs)
