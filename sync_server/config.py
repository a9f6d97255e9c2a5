"""Server settings: one frozen dataclass, filled from arguments, then ``COINVISION_*`` environment, then defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from coinvision.sdk.errors import ConfigError

__all__ = ["ServerConfig"]


@dataclass(frozen=True)
class ServerConfig:
    data_dir: Path
    db_url: str
    models_dir: Path | None = None
    # Upload limits: whole request, one image's bytes and pixels, images per request, pixels per request
    # (decoding costs CPU and memory by the pixel, whatever the file size).
    max_request_bytes: int = 32 * 1024 * 1024
    max_image_bytes: int = 12 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_images_per_request: int = 16
    max_request_pixels: int = 200_000_000  # 16 photos of 12 MP fit; 16 canvases of 40 MP do not
    # Photo search is reachable by every app install (device tokens ship inside apps): a lower pixel limit
    # (a 12 MP phone photo fits) and a per-client rate limit (token bucket: ``search_burst`` photos at once,
    # refilled at ``search_per_minute``). Limits are per server process; see docs/DEPLOYMENT.md for nginx.
    max_search_pixels: int = 16_000_000
    search_per_minute: float = 30.0
    search_burst: int = 10
    # Behind a reverse proxy: how many X-Forwarded-For hops to trust for the client address (0: none).
    trusted_proxies: int = 0
    # Published versions whose pack and delta files are kept on disk (older ones answer 410); at least 2.
    pack_retention_versions: int = 5
    # Unreferenced files (photos of deleted images, packs of failed publishes) older than this are removed.
    orphan_grace_s: int = 3600
    # Two references of different coins closer than this cosine are flagged before publishing.
    duplicate_cosine: float = 0.97
    # Catalog search index (sync_server/index.py): "auto" = exact (GPU when there is one), IVF on the CPU from
    # index_approx_min_vectors references; "flat" = always exact; "ivf" = always approximate. Recall and latency
    # behind the default: benchmarks/README.md (search).
    index_kind: str = "auto"
    index_approx_min_vectors: int = 500_000
    manifest_ttl_s: int = 7 * 24 * 3600
    pack_quant: str = "int8"
    runtime: str = "onnx"
    num_threads: int = 1
    search_top_k_max: int = 50
    # The Ed25519 signing key; default: signing_key.pem in the data dir. Never in the database: whoever can
    # only write the database cannot sign a version record (see docs/SYNC_SERVER.md).
    signing_key_path: Path | None = None
    # Where photos, packs and deltas live: None = the data dir's folders (one server); "s3://bucket/prefix" = an
    # S3-compatible bucket that replicas share (docs/DEPLOYMENT.md). ``s3_endpoint_url`` names a non-AWS service
    # (MinIO, Ceph, ...); each replica keeps verified pack copies in data_dir/cache, at most storage_cache_bytes.
    storage: str | None = None
    s3_endpoint_url: str | None = None
    storage_cache_bytes: int = 2 << 30

    @classmethod
    def resolve(
        cls,
        *,
        data_dir: str | Path | None = None,
        db_url: str | None = None,
        models_dir: str | Path | None = None,
        storage: str | None = None,
        **overrides: object,
    ) -> ServerConfig:
        data = Path(data_dir or os.environ.get("COINVISION_DATA_DIR") or "coinvision-data").resolve()
        url = db_url or os.environ.get("COINVISION_DB_URL") or f"sqlite:///{data / 'coinvision.db'}"
        models = models_dir or os.environ.get("COINVISION_MODELS_DIR") or None
        key = os.environ.get("COINVISION_SIGNING_KEY") or None
        store = storage or os.environ.get("COINVISION_STORAGE") or None
        endpoint = os.environ.get("COINVISION_S3_ENDPOINT_URL") or None
        cfg = cls(data_dir=data, db_url=url, models_dir=Path(models).resolve() if models else None,
                  signing_key_path=Path(key).resolve() if key else None, storage=store, s3_endpoint_url=endpoint)
        for name, kind in _ENV_SETTINGS.items():
            raw = os.environ.get(f"COINVISION_{name.upper()}")
            if raw is not None and name not in overrides:
                try:
                    overrides[name] = kind(raw)
                except ValueError as exc:
                    raise ConfigError(f"COINVISION_{name.upper()}={raw!r} is not a valid {kind.__name__}") from exc
        cfg = replace(cfg, **overrides) if overrides else cfg
        cfg.check()
        return cfg

    def check(self) -> None:
        """Refuse settings that cannot work, naming the setting and the fix."""
        if self.pack_retention_versions < 2:
            raise ConfigError(f"pack_retention_versions={self.pack_retention_versions}: keep at least 2 versions "
                              "(devices on the previous version need its delta)")
        for name in ("max_request_pixels", "max_search_pixels", "max_image_pixels", "search_burst"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}: must be at least 1")
        if self.search_per_minute <= 0:
            raise ConfigError(f"search_per_minute={self.search_per_minute}: must be above 0")
        if self.trusted_proxies < 0:
            raise ConfigError(f"trusted_proxies={self.trusted_proxies}: must be 0 or more")
        if self.index_kind not in ("auto", "flat", "ivf"):
            raise ConfigError(f"index_kind={self.index_kind!r}: use 'auto', 'flat' or 'ivf'")
        if self.index_approx_min_vectors < 1:
            raise ConfigError(f"index_approx_min_vectors={self.index_approx_min_vectors}: must be at least 1")
        if self.storage:
            from coinvision.sync_server.storage import parse_s3_url

            parse_s3_url(self.storage)
        if self.s3_endpoint_url and not self.s3_endpoint_url.startswith(("http://", "https://")):
            raise ConfigError(f"COINVISION_S3_ENDPOINT_URL={self.s3_endpoint_url!r}: give the service's http(s):// "
                              "URL, e.g. http://127.0.0.1:9000")
        if self.storage_cache_bytes < 0:
            raise ConfigError(f"storage_cache_bytes={self.storage_cache_bytes}: must be 0 or more")

    @property
    def packs_dir(self) -> Path:
        return self.data_dir / "packs"

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images"

    @property
    def key_path(self) -> Path:
        return self.signing_key_path or self.data_dir / "signing_key.pem"


# Settings an operator may give as COINVISION_<NAME> environment variables (gunicorn starts create_app()).
_ENV_SETTINGS: dict[str, type] = {
    "max_request_pixels": int, "max_search_pixels": int, "search_per_minute": float, "search_burst": int,
    "trusted_proxies": int, "pack_retention_versions": int, "orphan_grace_s": int, "storage_cache_bytes": int,
    "index_kind": str, "index_approx_min_vectors": int,
}
