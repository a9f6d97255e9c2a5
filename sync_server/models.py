"""Database schema (SQLAlchemy 2.x typed ORM). Alembic migrations in ``migrations/`` create exactly this."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = ["ApiToken", "Base", "Catalog", "CatalogVersion", "Coin", "ReferenceImage", "utcnow"]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # sha256 of the secret: a database leak does not hand out working tokens.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    scope: Mapped[str] = mapped_column(String(16))  # "maintainer" | "device"
    label: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked: Mapped[bool] = mapped_column(default=False)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)  # None: never


class Catalog(Base):
    __tablename__ = "catalogs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Bumped on every change to the catalog's references: in-memory indexes compare it to know they are stale
    # (several gunicorn workers each hold their own index).
    generation: Mapped[int] = mapped_column(BigInteger, default=0)

    coins: Mapped[list[Coin]] = relationship(back_populates="catalog", cascade="all, delete-orphan")
    versions: Mapped[list[CatalogVersion]] = relationship(
        back_populates="catalog", cascade="all, delete-orphan", order_by="CatalogVersion.version"
    )


class Coin(Base):
    __tablename__ = "coins"
    __table_args__ = (UniqueConstraint("catalog_id", "coin_id", name="uq_coin_per_catalog"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    catalog_id: Mapped[str] = mapped_column(ForeignKey("catalogs.id", ondelete="CASCADE"), index=True)
    coin_id: Mapped[str] = mapped_column(String(128))
    label: Mapped[str] = mapped_column(String(200), default="")
    country: Mapped[str] = mapped_column(String(100), default="")
    currency: Mapped[str] = mapped_column(String(100), default="")
    denomination: Mapped[str] = mapped_column(String(100), default="")
    side: Mapped[str] = mapped_column(String(32), default="")
    years: Mapped[str] = mapped_column(String(100), default="")
    extra: Mapped[dict] = mapped_column(JSON, default=dict)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    catalog: Mapped[Catalog] = relationship(back_populates="coins")
    images: Mapped[list[ReferenceImage]] = relationship(back_populates="coin", cascade="all, delete-orphan")


class ReferenceImage(Base):
    __tablename__ = "reference_images"

    # Also the Faiss id of the embedding (IndexIDMap), so ids stay stable across incremental updates.
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    coin_pk: Mapped[int] = mapped_column(ForeignKey("coins.id", ondelete="CASCADE"), index=True)
    catalog_id: Mapped[str] = mapped_column(String(64), index=True)
    sha256: Mapped[str] = mapped_column(String(64))
    filename: Mapped[str] = mapped_column(String(255), default="")
    width_px: Mapped[int] = mapped_column(Integer)
    height_px: Mapped[int] = mapped_column(Integer)
    embedding: Mapped[bytes] = mapped_column(LargeBinary)  # float32 little-endian, L2-normalised
    embedding_dim: Mapped[int] = mapped_column(Integer)
    model_fingerprint: Mapped[str] = mapped_column(String(64))
    thumbnail_jpeg: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    coin: Mapped[Coin] = relationship(back_populates="images")


class CatalogVersion(Base):
    __tablename__ = "catalog_versions"
    # The unique pair makes versions monotonic under concurrent publishes: the loser gets an IntegrityError.
    # The idempotency key makes a retried publish (reply lost) return the version it made instead of another.
    __table_args__ = (
        UniqueConstraint("catalog_id", "version", name="uq_version_per_catalog"),
        UniqueConstraint("catalog_id", "idempotency_key", name="uq_version_idempotency_key"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    catalog_id: Mapped[str] = mapped_column(ForeignKey("catalogs.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    model_fingerprint: Mapped[str] = mapped_column(String(64))
    pack_file: Mapped[str] = mapped_column(String(255))
    pack_size: Mapped[int] = mapped_column(BigInteger)
    pack_sha256: Mapped[str] = mapped_column(String(64))
    delta_from: Mapped[int | None] = mapped_column(Integer, nullable=True)
    delta_file: Mapped[str | None] = mapped_column(String(255), nullable=True)
    delta_size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    delta_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    coin_count: Mapped[int] = mapped_column(Integer)
    vector_count: Mapped[int] = mapped_column(Integer)
    quant: Mapped[str] = mapped_column(String(8))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Ed25519 signature (base64) over the version record as published (signing.version_record); the key is not
    # in the database, so editing this row cannot produce a record the server will serve.
    record_signature: Mapped[str | None] = mapped_column(String(100), nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(128), nullable=True)

    catalog: Mapped[Catalog] = relationship(back_populates="versions")
