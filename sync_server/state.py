"""What one server process holds: settings, database, signing key, file storage, the embedder, the Faiss indexes."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

import numpy as np
from coinvision.sdk.errors import CoinVisionError
from coinvision.sync_server.config import ServerConfig
from coinvision.sync_server.embedding import ReferenceEmbedder, load_reference_embedder
from coinvision.sync_server.errors import UnavailableError
from coinvision.sync_server.index import CatalogIndex, IndexOptions, IndexRegistry
from coinvision.sync_server.models import Catalog, Coin, ReferenceImage
from coinvision.sync_server.ratelimit import RateLimiter
from coinvision.sync_server.storage import FileStore, open_store
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flask import current_app
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

__all__ = ["ServerState", "state"]

log = logging.getLogger(__name__)


@dataclass
class ServerState:
    config: ServerConfig
    engine: Engine
    sessions: sessionmaker[Session]
    signing_key: Ed25519PrivateKey
    registry: IndexRegistry = field(default_factory=IndexRegistry)
    search_limiter: RateLimiter = field(init=False)
    files: FileStore = field(init=False)
    _embedder: ReferenceEmbedder | None = None
    _embedder_lock: threading.Lock = field(default_factory=threading.Lock)
    _publish_locks: dict[str, threading.Lock] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.search_limiter = RateLimiter(self.config.search_per_minute, self.config.search_burst)
        self.files = open_store(self.config)

    def unknown_threshold(self) -> float | None:
        """The cosine below which a search answers "unknown": the embedder's calibrated threshold."""
        if self.config.models_dir is None:
            return None
        return self.embedder().unknown_threshold

    def publish_lock(self, catalog_id: str) -> threading.Lock:
        with self._embedder_lock:
            return self._publish_locks.setdefault(catalog_id, threading.Lock())

    def embedder(self) -> ReferenceEmbedder:
        """The release embedder, loaded on first use (:class:`UnavailableError` when the server has no models)."""
        if self._embedder is None:
            with self._embedder_lock:
                if self._embedder is None:
                    if self.config.models_dir is None:
                        raise UnavailableError(
                            "no_models",
                            "this server has no models; restart it with --models DIR (the release exports)",
                        )
                    try:
                        self._embedder = load_reference_embedder(
                            self.config.models_dir, self.config.runtime, self.config.num_threads
                        )
                    except CoinVisionError as exc:
                        raise UnavailableError("models_unavailable", str(exc)) from exc
        return self._embedder

    def fingerprint(self, session: Session, catalog_id: str) -> str | None:
        """The model fingerprint whose vectors this catalog is indexed/published with."""
        if self.config.models_dir is not None:
            return self.embedder().fingerprint
        # Without models (read-only replica): the newest references' fingerprint.
        return session.scalar(
            select(ReferenceImage.model_fingerprint)
            .where(ReferenceImage.catalog_id == catalog_id)
            .order_by(ReferenceImage.id.desc())
            .limit(1)
        )

    def index_options(self) -> IndexOptions:
        """How this server indexes catalogs (``index_kind``, ``index_approx_min_vectors``)."""
        return IndexOptions(kind=self.config.index_kind, approx_min_vectors=self.config.index_approx_min_vectors)

    def index_for(self, session: Session, catalog: Catalog) -> CatalogIndex:
        """The catalog's current index; rebuilt from the database when another worker changed the catalog."""
        current = self.registry.peek(catalog.id)
        if current is not None and current.generation == catalog.generation:
            return current
        with self.registry.build_lock(catalog.id):
            current = self.registry.peek(catalog.id)
            if current is not None and current.generation == catalog.generation:
                return current
            index = load_index(session, catalog, self.fingerprint(session, catalog.id), self.index_options())
            self.registry.swap(catalog.id, index)
            return index


def load_index(
    session: Session, catalog: Catalog, fingerprint: str | None, options: IndexOptions | None = None
) -> CatalogIndex:
    rows = session.execute(
        select(ReferenceImage.id, ReferenceImage.embedding, ReferenceImage.embedding_dim, Coin.coin_id)
        .join(Coin, Coin.id == ReferenceImage.coin_pk)
        .where(ReferenceImage.catalog_id == catalog.id, ReferenceImage.model_fingerprint == (fingerprint or ""))
        .order_by(ReferenceImage.id)
    ).all()
    dim = rows[0].embedding_dim if rows else 1
    vectors = (
        np.stack([np.frombuffer(r.embedding, dtype="<f4") for r in rows]) if rows else np.zeros((0, dim), np.float32)
    )
    ids = np.array([r.id for r in rows], dtype=np.int64)
    log.info("built index for catalog %s: %d references (generation %d)", catalog.id, len(rows), catalog.generation)
    return CatalogIndex(dim, ids, vectors, [r.coin_id for r in rows], generation=catalog.generation,
                        options=options)


def state() -> ServerState:
    return current_app.extensions["coinvision"]
