"""Publishing: freeze the catalog as version N+1, write its full pack and the delta from N, then commit.

Crash safety: pack files get new, content-addressed names and are written atomically before the database
row that points at them is committed. A crash at any point leaves version N served and the database as it
was; at worst an unreferenced file stays behind. Versions are monotonic: the (catalog, version) unique key
makes a concurrent second publish fail instead of reusing a number.

Integrity: the version record (every field that names what was published, :func:`version_record`) is signed
with the server key at publish time; :func:`checked_version` verifies it before the version is named in a
manifest or its files are served. A publish may carry an idempotency key: retrying it returns the version the
first attempt made.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from coinvision.sdk.errors import PackError
from coinvision.sync_server.errors import ConflictError, ContentRejectedError, StoredDataError
from coinvision.sync_server.models import Catalog, CatalogVersion, Coin, ReferenceImage
from coinvision.sync_server.signing import sign_record, verify_record
from coinvision.sync_server.storage import FileStore, StoredFileCorruptError, StoredFileMissingError
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

if TYPE_CHECKING:
    from coinvision.sdk.pack import CoinRecord

__all__ = [
    "PublishResult", "checked_version", "iso_utc", "latest_version", "publish_catalog", "version_by_key",
    "version_record",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishResult:
    version: CatalogVersion
    skipped_coins: list[str]  # coins without a reference embedded by the current model
    replayed: bool = False  # an earlier attempt with the same idempotency key made this version


def iso_utc(dt: datetime) -> str:
    if dt.tzinfo is None:  # SQLite hands back naive datetimes; they were stored as UTC
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def version_record(v: CatalogVersion) -> dict[str, Any]:
    """Everything that says what version ``v`` is and which bytes it ships: the signed record."""
    return {
        "catalog_id": v.catalog_id, "version": v.version, "model_fingerprint": v.model_fingerprint,
        "pack_file": v.pack_file, "pack_size": v.pack_size, "pack_sha256": v.pack_sha256,
        "delta_from": v.delta_from, "delta_file": v.delta_file, "delta_size": v.delta_size,
        "delta_sha256": v.delta_sha256, "coin_count": v.coin_count, "vector_count": v.vector_count,
        "quant": v.quant, "created_at": iso_utc(v.created_at),
    }


def checked_version(key: Ed25519PrivateKey, v: CatalogVersion) -> CatalogVersion:
    """``v`` if its record carries the server's signature over exactly these fields; :class:`StoredDataError`
    otherwise (logged)."""
    if not verify_record(key, version_record(v), v.record_signature):
        log.error("catalog %s version %d: the version record does not match its signature (edited in the "
                  "database, or published with another key); refusing to serve it", v.catalog_id, v.version)
        raise StoredDataError(
            "version_record_invalid",
            f"version {v.version} of catalog {v.catalog_id!r} fails its integrity check; the server refuses to "
            "serve it (an operator must investigate the database and publish again)",
        )
    return v


def _records_and_vectors(
    session: Session, catalog_id: str, fingerprint: str
) -> tuple[np.ndarray, list[str], list[CoinRecord], list[str]]:
    from coinvision.sdk.pack import CoinRecord

    coins = session.scalars(select(Coin).where(Coin.catalog_id == catalog_id).order_by(Coin.coin_id)).all()
    refs = session.execute(
        select(ReferenceImage.coin_pk, ReferenceImage.embedding)
        .where(ReferenceImage.catalog_id == catalog_id, ReferenceImage.model_fingerprint == fingerprint)
        .order_by(ReferenceImage.id)
    ).all()
    by_coin: dict[int, list[bytes]] = {}
    for r in refs:
        by_coin.setdefault(r.coin_pk, []).append(r.embedding)
    vectors: list[np.ndarray] = []
    vector_coins: list[str] = []
    records: list[CoinRecord] = []
    skipped: list[str] = []
    for coin in coins:
        embs = by_coin.get(coin.id)
        if not embs:
            skipped.append(coin.coin_id)
            continue
        records.append(
            CoinRecord(
                coin_id=coin.coin_id, label=coin.label, country=coin.country, currency=coin.currency,
                denomination=coin.denomination, side=coin.side, years=coin.years, extra=dict(coin.extra or {}),
            )
        )
        for emb in embs:
            vectors.append(np.frombuffer(emb, dtype="<f4"))
            vector_coins.append(coin.coin_id)
    return (np.stack(vectors) if vectors else np.zeros((0, 0), np.float32)), vector_coins, records, skipped


def publish_catalog(
    session: Session, files: FileStore, catalog: Catalog, fingerprint: str, quant: str,
    key: Ed25519PrivateKey, idempotency_key: str | None = None,
) -> PublishResult:
    """Write version N+1's pack (and the delta from N), then commit its signed row. Raises
    :class:`ConflictError` (nothing to publish, another publish took the number) and
    :class:`ContentRejectedError` (content the pack format refuses)."""
    from coinvision.sdk import pack as packlib

    vectors, vector_coins, records, skipped = _records_and_vectors(session, catalog.id, fingerprint)
    if not records:
        raise ConflictError(
            "nothing_to_publish",
            f"catalog {catalog.id!r} has no coin with a reference image embedded by model {fingerprint}; "
            "upload reference images first",
        )
    previous = session.scalar(
        select(CatalogVersion).where(CatalogVersion.catalog_id == catalog.id).order_by(CatalogVersion.version.desc())
    )
    version = (previous.version if previous else 0) + 1
    try:
        pack = packlib.Pack.from_vectors(
            vectors.astype(np.float32), vector_coins, records,
            catalog_id=catalog.id, catalog_version=version, model_fingerprint=fingerprint, quant=quant,
        )
    except PackError as exc:  # catalog content the pack format refuses: the maintainer must fix it
        raise ContentRejectedError("pack_build_failed", f"catalog {catalog.id!r} cannot be packed: {exc}") from exc
    pack_bytes, pack_sha = pack.to_bytes(), pack.sha256
    pack_name = f"v{version}-{pack_sha[:16]}.pack"
    delta_name = delta_sha = None
    delta_size = None
    delta_bytes = None
    if previous is not None and previous.model_fingerprint == fingerprint:
        try:
            base = packlib.read_pack(
                files.pack_file(catalog.id, previous.pack_file, previous.pack_size, previous.pack_sha256))
            delta_bytes = packlib.build_delta(base, pack)
        except (PackError, StoredFileMissingError, StoredFileCorruptError) as exc:
            # No delta is no harm: devices then download the full pack.
            log.warning("no delta v%d -> v%d for %s: previous pack unusable (%s)", previous.version, version,
                        catalog.id, exc)
        else:
            delta_sha = hashlib.sha256(delta_bytes).hexdigest()
            delta_name = f"v{previous.version}-v{version}-{delta_sha[:16]}.delta"
            delta_size = len(delta_bytes)
    files.put_pack_file(catalog.id, pack_name, pack_bytes)
    if delta_bytes is not None and delta_name is not None:
        files.put_pack_file(catalog.id, delta_name, delta_bytes)
    row = CatalogVersion(
        catalog_id=catalog.id, version=version, model_fingerprint=fingerprint,
        pack_file=pack_name, pack_size=len(pack_bytes), pack_sha256=pack_sha,
        delta_from=previous.version if delta_name else None, delta_file=delta_name,
        delta_size=delta_size, delta_sha256=delta_sha,
        coin_count=len(records), vector_count=len(vector_coins), quant=quant,
        created_at=datetime.now(UTC).replace(microsecond=0), idempotency_key=idempotency_key,
    )
    row.record_signature = sign_record(key, version_record(row))
    session.add(row)
    try:
        session.commit()
    except (IntegrityError, OperationalError) as exc:
        session.rollback()
        if idempotency_key is not None and (done := version_by_key(session, catalog.id, idempotency_key)):
            return PublishResult(done, skipped, replayed=True)  # a concurrent retry of this same publish won
        raise ConflictError(
            "publish_conflict", f"another publish of catalog {catalog.id!r} took version {version}; retry"
        ) from exc
    log.info("published %s v%d: %d coins, %d vectors, %d bytes", catalog.id, version, len(records),
             len(vector_coins), len(pack_bytes))
    return PublishResult(row, skipped)


def latest_version(session: Session, catalog_id: str) -> CatalogVersion | None:
    return session.scalar(
        select(CatalogVersion).where(CatalogVersion.catalog_id == catalog_id).order_by(CatalogVersion.version.desc())
    )


def version_count(session: Session, catalog_id: str) -> int:
    return session.scalar(select(func.count()).where(CatalogVersion.catalog_id == catalog_id)) or 0


def version_by_key(session: Session, catalog_id: str, idempotency_key: str) -> CatalogVersion | None:
    return session.scalar(
        select(CatalogVersion).where(
            CatalogVersion.catalog_id == catalog_id, CatalogVersion.idempotency_key == idempotency_key
        )
    )
