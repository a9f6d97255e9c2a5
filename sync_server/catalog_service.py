"""Catalog operations: add reference photos, publish, delete; what the API routes call once they have parsed a
request.

Nothing here knows HTTP. Every function takes the server's state (settings, file storage, embedder, indexes,
signing key) and a database session, does the whole operation (rows, files, the catalog's generation, the
in-memory index) and raises :mod:`coinvision.sync_server.errors` kinds when it refuses;
``api_errors.STATUS_OF`` turns those into HTTP statuses.

Generations: every change to a catalog's references bumps ``Catalog.generation`` in the same transaction. A
worker whose in-memory index carries the old generation updates it in place (:func:`_index_added`,
:func:`_index_removed`); any other worker sees the mismatch on its next read and rebuilds from the database.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from coinvision.sdk.errors import CoinVisionError, PackError
from coinvision.sdk.recognizer import Embedding
from coinvision.sync_server.cleanup import prune_old_packs, remove_unreferenced_photos
from coinvision.sync_server.errors import (
    ConflictError,
    ContentRejectedError,
    GoneError,
    InvalidInputError,
    NotFoundError,
    StoredDataError,
)
from coinvision.sync_server.index import DuplicatePair
from coinvision.sync_server.models import Catalog, CatalogVersion, Coin, ReferenceImage
from coinvision.sync_server.publish import checked_version, latest_version, publish_catalog, version_by_key
from coinvision.sync_server.state import ServerState
from coinvision.sync_server.storage import StoredFileCorruptError, StoredFileMissingError
from coinvision.sync_server.uploads import DecodedUpload, thumbnail_jpeg
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

__all__ = [
    "COIN_FIELDS",
    "COIN_ID",
    "AddedReference",
    "AddedReferences",
    "CoinDeleted",
    "PublishOutcome",
    "VersionFile",
    "add_references",
    "check_coin_id",
    "create_catalog",
    "delete_catalog",
    "delete_coin",
    "delete_reference",
    "get_catalog",
    "get_coin",
    "pending_changes",
    "publish",
    "save_coin",
    "upload_target",
    "version_file",
]

log = logging.getLogger(__name__)

COIN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# Field -> longest value the column holds (PostgreSQL refuses longer ones; SQLite would silently keep them).
COIN_FIELDS = {"label": 200, "country": 100, "currency": 100, "denomination": 100, "side": 32, "years": 100}
_BAD_COIN_ID = "coin id must be 1-128 chars of letters, digits, '.', '-', '_'"


# ---------------------------------------------------------------- lookups
def get_catalog(session: Session, catalog_id: str) -> Catalog:
    cat = session.get(Catalog, catalog_id)
    if cat is None:
        raise NotFoundError("catalog_not_found", f"no catalog {catalog_id!r}; list them with GET /v1/catalogs")
    return cat


def get_coin(session: Session, catalog_id: str, coin_id: str) -> Coin:
    coin = _find_coin(session, catalog_id, coin_id)
    if coin is None:
        raise NotFoundError("coin_not_found", f"no coin {coin_id!r} in catalog {catalog_id!r}")
    return coin


def _find_coin(session: Session, catalog_id: str, coin_id: str) -> Coin | None:
    return session.scalar(select(Coin).where(Coin.catalog_id == catalog_id, Coin.coin_id == coin_id))


def check_coin_id(coin_id: str) -> None:
    if not COIN_ID.match(coin_id):
        raise InvalidInputError("bad_coin_id", _BAD_COIN_ID)


# ---------------------------------------------------------------- catalogs
def create_catalog(session: Session, catalog_id: str, name: str) -> Catalog:
    """A new, empty catalog (``ConflictError`` when the id is taken, also by a concurrent request)."""
    if session.get(Catalog, catalog_id) is not None:
        raise ConflictError("catalog_exists", f"catalog {catalog_id!r} already exists")
    # Generations start at the creation time in ms: a catalog deleted and created again under the same id never
    # reuses a generation another worker's in-memory index of the old catalog still carries.
    cat = Catalog(id=catalog_id, name=name, generation=time.time_ns() // 1_000_000)
    session.add(cat)
    try:
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        raise ConflictError("catalog_exists", f"catalog {catalog_id!r} already exists") from exc
    return cat


def delete_catalog(st: ServerState, session: Session, catalog_id: str) -> int:
    """Remove a catalog, its coins, references, versions and their files; returns how many photo files went.
    Devices keep their cached packs."""
    cat = get_catalog(session, catalog_id)
    shas = set(session.scalars(select(ReferenceImage.sha256).where(ReferenceImage.catalog_id == catalog_id)).all())
    session.execute(ReferenceImage.__table__.delete().where(ReferenceImage.catalog_id == catalog_id))
    session.delete(cat)
    session.commit()
    st.registry.drop(catalog_id)
    removed = remove_unreferenced_photos(session, st.files, shas)
    st.files.remove_catalog_files(catalog_id)
    return removed


# ---------------------------------------------------------------- coins
def save_coin(
    session: Session, catalog_id: str, coin_id: str, fields: Mapping[str, str], extra: dict[str, str] | None
) -> tuple[Coin, bool]:
    """Create or update a coin's metadata (``extra`` None: keep it); returns the coin and whether it is new."""
    get_catalog(session, catalog_id)
    check_coin_id(coin_id)
    coin = _find_coin(session, catalog_id, coin_id)
    created = coin is None
    coin = _with_fields(session, coin, catalog_id, coin_id, fields)
    if extra is not None:
        coin.extra = extra
    try:
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        raise ConflictError("coin_conflict", f"coin {coin_id!r} was created concurrently; retry") from exc
    return coin, created


# ---------------------------------------------------------------- reference photos
@dataclass(frozen=True)
class AddedReference:
    row: ReferenceImage
    embedding: Embedding  # the SDK's result: vector, segmentation (.found: a coin was seen), crop


@dataclass(frozen=True)
class AddedReferences:
    coin: Coin
    coin_created: bool
    references: list[AddedReference]


def upload_target(session: Session, catalog_id: str, coin_id: str, *, create: bool) -> Coin | None:
    """The coin photos are added to, or None when it does not exist yet and ``create`` allows making it.
    Routes call this before decoding the photos, so a request for a missing coin fails before the costly part."""
    coin = _find_coin(session, catalog_id, coin_id)
    if coin is None:
        if not create:
            raise NotFoundError("coin_not_found", f"no coin {coin_id!r} in catalog {catalog_id!r}; create it with "
                                "PUT first or send the form field create=1")
        check_coin_id(coin_id)
    return coin


def _with_fields(session: Session, coin: Coin | None, catalog_id: str, coin_id: str, fields: Mapping[str, str]) -> Coin:
    """``coin`` (a new one, added to the session, when None) with ``fields`` set."""
    if coin is None:
        coin = Coin(catalog_id=catalog_id, coin_id=coin_id, extra={})
        session.add(coin)
    for f, value in fields.items():
        setattr(coin, f, value)
    return coin


def add_references(
    st: ServerState,
    session: Session,
    catalog_id: str,
    coin_id: str,
    photos: Sequence[DecodedUpload],
    *,
    fields: Mapping[str, str] | None = None,
    create: bool = False,
) -> AddedReferences:
    """Embed ``photos`` and add them as references of a coin, all or nothing.

    Every photo is embedded before anything is written: one that cannot be embedded refuses the whole call
    (:class:`ContentRejectedError`). Then, in one transaction: the coin (created when missing and ``create``;
    ``fields`` set), the photo files (content-addressed), one reference row each, the catalog's generation;
    after the commit, the in-memory index.
    """
    cat = get_catalog(session, catalog_id)
    coin = upload_target(session, catalog_id, coin_id, create=create)
    if not photos:
        raise InvalidInputError("no_image", "no photo to add; send at least one")
    embedder = st.embedder()
    embedded: list[Embedding] = []
    for photo in photos:
        try:
            embedded.append(embedder.embed(photo.image))
        except CoinVisionError as exc:
            raise ContentRejectedError("embedding_failed", f"{photo.filename}: {exc}") from exc
    vectors = np.stack([e.vector for e in embedded]).astype("<f4")
    created = coin is None
    coin = _with_fields(session, coin, catalog_id, coin_id, fields or {})
    session.flush()
    rows = []
    for photo, vec in zip(photos, vectors, strict=True):
        st.files.put_photo(photo.sha256, photo.data)
        rows.append(ReferenceImage(
            coin_pk=coin.id, catalog_id=catalog_id, sha256=photo.sha256, filename=photo.filename,
            width_px=photo.width, height_px=photo.height,
            embedding=vec.tobytes(), embedding_dim=int(vec.shape[0]), model_fingerprint=embedder.fingerprint,
            thumbnail_jpeg=thumbnail_jpeg(photo.image),
        ))
    session.add_all(rows)
    old_gen, new_gen = _bump_generation(session, cat)
    try:
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        raise ConflictError("coin_conflict", f"coin {coin_id!r} was created concurrently; retry") from exc
    _index_added(st, catalog_id, rows, vectors, coin.coin_id, old_gen, new_gen)
    return AddedReferences(coin, created, [AddedReference(r, e) for r, e in zip(rows, embedded, strict=True)])


@dataclass(frozen=True)
class CoinDeleted:
    images_removed: int  # reference rows
    photos_removed: int  # photo files no other reference names


def delete_coin(st: ServerState, session: Session, catalog_id: str, coin_id: str) -> CoinDeleted:
    """Delete a coin, its references and the photo files nothing else names."""
    cat = get_catalog(session, catalog_id)
    coin = get_coin(session, catalog_id, coin_id)
    refs = [(i.id, i.sha256) for i in coin.images]
    old_gen, new_gen = _bump_generation(session, cat)
    session.delete(coin)
    session.commit()
    _index_removed(st, catalog_id, [r[0] for r in refs], old_gen, new_gen)
    removed = remove_unreferenced_photos(session, st.files, {r[1] for r in refs})
    return CoinDeleted(len(refs), removed)


def delete_reference(st: ServerState, session: Session, image_id: int) -> bool:
    """Delete one reference image; True when its photo file went too (no other reference names it)."""
    ref = session.get(ReferenceImage, image_id)
    if ref is None:
        raise NotFoundError("image_not_found", f"no reference image {image_id}")
    cat = get_catalog(session, ref.catalog_id)
    sha = ref.sha256
    old_gen, new_gen = _bump_generation(session, cat)
    session.delete(ref)
    session.commit()
    _index_removed(st, cat.id, [image_id], old_gen, new_gen)
    return bool(remove_unreferenced_photos(session, st.files, {sha}))


def _bump_generation(session: Session, cat: Catalog) -> tuple[int, int]:
    """Atomically increment the catalog's generation (row-locked, so concurrent writers never share a value)."""
    new = session.execute(
        update(Catalog).where(Catalog.id == cat.id).values(generation=Catalog.generation + 1)
        .returning(Catalog.generation)
    ).scalar_one()
    return new - 1, new


def _index_added(st: ServerState, catalog_id: str, rows: list[ReferenceImage], vectors: np.ndarray, coin_id: str,
                 old_gen: int, new_gen: int) -> None:
    current = st.registry.peek(catalog_id)
    if current is not None and current.generation == old_gen and (not len(current) or current.dim == vectors.shape[1]):
        st.registry.swap(
            catalog_id, current.with_added(np.array([r.id for r in rows]), vectors, [coin_id] * len(rows), new_gen)
        )
    # Otherwise the next reader sees the generation mismatch and rebuilds from the database.


def _index_removed(st: ServerState, catalog_id: str, ref_ids: list[int], old_gen: int, new_gen: int) -> None:
    current = st.registry.peek(catalog_id)
    if current is not None and current.generation == old_gen:
        st.registry.swap(catalog_id, current.without(ref_ids, new_gen))


# ---------------------------------------------------------------- publish
@dataclass(frozen=True)
class PublishOutcome:
    version: CatalogVersion
    replayed: bool  # an earlier attempt with the same idempotency key made this version; nothing new was made
    skipped_coins: list[str]  # coins without a reference embedded by the current model
    near_duplicates: list[DuplicatePair]


def publish(
    st: ServerState, session: Session, catalog_id: str, *, strict: bool = False, idempotency_key: str | None = None
) -> PublishOutcome:
    """Freeze version N+1 (signed record, full pack, delta from N) and prune files past the retention.

    With ``idempotency_key`` a retry returns the version the first attempt made (``replayed``). ``strict``
    refuses to publish while different coins have near-duplicate references (:class:`ConflictError`).
    """
    cat = get_catalog(session, catalog_id)
    if idempotency_key is not None and (done := version_by_key(session, catalog_id, idempotency_key)) is not None:
        return _replayed(st, done)
    fingerprint = st.fingerprint(session, catalog_id)
    if fingerprint is None:
        raise ConflictError("nothing_to_publish", f"catalog {catalog_id!r} has no embedded reference images")
    dupes = st.index_for(session, cat).near_duplicates(st.config.duplicate_cosine)
    if strict and dupes:
        raise ConflictError("near_duplicates", f"{len(dupes)} pairs of different coins look alike; "
                            "fix them or publish without strict", [p.__dict__ for p in dupes])
    # One publish per catalog at a time in this process; across processes the unique version key decides.
    with st.publish_lock(catalog_id):
        if idempotency_key is not None and (done := version_by_key(session, catalog_id, idempotency_key)):
            return _replayed(st, done)  # the first attempt finished while this one waited for the lock
        result = publish_catalog(session, st.files, cat, fingerprint, st.config.pack_quant, st.signing_key,
                                 idempotency_key)
    if result.replayed:
        return _replayed(st, result.version)
    cfg = st.config
    prune_old_packs(session, st.files, catalog_id, cfg.pack_retention_versions, cfg.orphan_grace_s)
    return PublishOutcome(result.version, False, result.skipped_coins, dupes)


def _replayed(st: ServerState, v: CatalogVersion) -> PublishOutcome:
    return PublishOutcome(checked_version(st.signing_key, v), True, [], [])


# ---------------------------------------------------------------- published versions
@dataclass(frozen=True)
class VersionFile:
    path: Path
    name: str
    sha256: str


def version_file(st: ServerState, session: Session, catalog_id: str, version: int, kind: str) -> VersionFile:
    """The stored pack (``kind="pack"``) or delta (``"delta"``) of a version, checked against its signed record:
    :class:`GoneError` once past the retention, :class:`StoredDataError` when the bytes changed on disk."""
    get_catalog(session, catalog_id)
    row = session.scalar(
        select(CatalogVersion).where(CatalogVersion.catalog_id == catalog_id, CatalogVersion.version == version)
    )
    if row is None:
        raise NotFoundError("version_not_found", f"catalog {catalog_id!r} has no version {version}")
    checked_version(st.signing_key, row)
    if kind == "pack":
        name, sha, size = row.pack_file, row.pack_sha256, row.pack_size
    else:
        name, sha, size = row.delta_file, row.delta_sha256, row.delta_size
    if name is None or sha is None or size is None:
        raise NotFoundError("no_delta", f"version {version} has no delta; download the full pack")
    try:
        path = st.files.pack_file(catalog_id, name, size, sha)
    except StoredFileMissingError as exc:
        raise GoneError("pack_missing", f"the file of version {version} is no longer kept on the server "
                        "(older than the retention); download the newest version's full pack") from exc
    except StoredFileCorruptError as exc:
        log.error("%s v%d: the stored bytes do not match the signed record (%s)", catalog_id, version, exc)
        raise StoredDataError("pack_corrupt", f"the stored file of version {version} fails its integrity check; "
                              "the server refuses to serve it") from exc
    return VersionFile(path, name, sha)


def pending_changes(st: ServerState, session: Session, catalog_id: str) -> dict[str, Any]:
    """What publishing now would change since the newest version (read from that version's pack)."""
    from coinvision.sdk import pack as packlib

    get_catalog(session, catalog_id)
    fingerprint = st.fingerprint(session, catalog_id)
    coins = session.scalars(select(Coin).where(Coin.catalog_id == catalog_id).order_by(Coin.coin_id)).all()
    counts = dict(session.execute(
        select(ReferenceImage.coin_pk, func.count()).where(
            ReferenceImage.catalog_id == catalog_id, ReferenceImage.model_fingerprint == (fingerprint or ""))
        .group_by(ReferenceImage.coin_pk)
    ).all())
    now = {c.coin_id: (c, counts.get(c.id, 0)) for c in coins}
    publishable = {cid for cid, (_, n) in now.items() if n}
    latest = latest_version(session, catalog_id)
    base: dict[str, tuple[dict[str, Any], int]] = {}
    if latest is not None:
        checked_version(st.signing_key, latest)
        try:
            pack = packlib.read_pack(
                st.files.pack_file(catalog_id, latest.pack_file, latest.pack_size, latest.pack_sha256))
        except (PackError, StoredFileMissingError, StoredFileCorruptError) as exc:
            raise GoneError("pack_missing", f"the newest version's pack cannot be read ({exc})") from exc
        refs: dict[str, int] = {}
        for cid in pack.coin_ids:
            refs[cid] = refs.get(cid, 0) + 1
        base = {cid: ({**{f: getattr(r, f) for f in COIN_FIELDS}, "extra": dict(r.extra)}, refs.get(cid, 0))
                for cid, r in pack.records.items()}
    added = sorted(publishable - set(base))
    removed = sorted(set(base) - publishable)
    edited, photos = [], []
    for cid in sorted(publishable & set(base)):
        coin, n = now[cid]
        meta, n_before = base[cid]
        current = {**{f: getattr(coin, f) for f in COIN_FIELDS}, "extra": dict(coin.extra or {})}
        fields = [f for f in (*COIN_FIELDS, "extra") if current[f] != meta[f]]
        if fields:
            edited.append({"coin_id": cid, "fields": fields})
        if n != n_before:
            photos.append({"coin_id": cid, "before": n_before, "now": n})
    return {
        "catalog_id": catalog_id, "since_version": latest.version if latest else None,
        "added": added, "removed": removed, "edited": edited, "photos_changed": photos,
        "without_photos": sorted(set(now) - publishable),
        "unchanged": not (added or removed or edited or photos),
    }
