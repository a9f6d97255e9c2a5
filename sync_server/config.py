"""Server settings: one frozen dataclass, filled from arguments, then ``COINVISION_*`` environment, then defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

__all__ = ["ServerConfig"]


@dataclass(frozen=True)
class ServerConfig:
    data_dir: Path
    db_url: str
    models_dir: Path | None = None
    # Upload limits: whole request, one image's pixels, images per request.
    max_request_bytes: int = 32 * 1024 * 1024
    max_image_bytes: int = 12 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_images_per_request: int = 16
    # Two references of different coins closer than this cosine are flagged before publishing.
    duplicate_cosine: float = 0.97
    manifest_ttl_s: int = 7 * 24 * 3600
    pack_quant: str = "int8"
    runtime: str = "onnx"
    num_threads: int = 1
    search_top_k_max: int = 50

    @classmethod
    def resolve(
        cls,
        *,
        data_dir: str | Path | None = None,
        db_url: str | None = None,
        models_dir: str | Path | None = None,
        **overrides: object,
    ) -> ServerConfig:
        data = Path(data_dir or os.environ.get("COINVISION_DATA_DIR") or "coinvision-data").resolve()
        url = db_url or os.environ.get("COINVISION_DB_URL") or f"sqlite:///{data / 'coinvision.db'}"
        models = models_dir or os.environ.get("COINVISION_MODELS_DIR") or None
        cfg = cls(data_dir=data, db_url=url, models_dir=Path(models).resolve() if models else None)
        return replace(cfg, **overrides) if overrides else cfg

    @property
    def packs_dir(self) -> Path:
        return self.data_dir / "packs"

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images"

    @property
    def key_path(self) -> Path:
        return self.data_dir / "signing_key.pem"
