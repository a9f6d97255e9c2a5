"""The server's embedder: the SDK's Recognizer on ONNX Runtime, so server vectors equal device vectors.

Everything the server needs from the models goes through :func:`load_embedder` and :class:`ImageEmbedding`.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from coinvision.sdk.errors import ModelLoadError
from coinvision.sdk.model_meta import ModelMetadata

__all__ = ["Embedder", "ImageEmbedding", "load_embedder"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageEmbedding:
    vector: np.ndarray  # float32 (D,), L2-normalised
    mask: np.ndarray | None  # bool HxW on the decoded image, None when no coin was found
    bbox: tuple[int, int, int, int] | None


class Embedder:
    """Thread-safe wrapper: one Recognizer, calls serialised (ONNX sessions are, the Python glue is not)."""

    def __init__(self, recognizer: object, fingerprint: str, dim: int) -> None:
        self._recognizer = recognizer
        self._lock = threading.Lock()
        self.fingerprint = fingerprint
        self.dim = dim

    def embed(self, image: np.ndarray) -> ImageEmbedding:
        with self._lock:
            emb = self._recognizer.embed(image)  # type: ignore[attr-defined]
        seg = emb.segmentation
        vec = np.asarray(emb.vector, dtype=np.float32).reshape(-1)
        return ImageEmbedding(vector=vec, mask=seg.mask if seg is not None else None, bbox=seg.bbox if seg else None)


def load_embedder(models_dir: Path, runtime: str = "onnx", num_threads: int = 1) -> Embedder:
    """Load the release segmenter + embedder from ``models_dir`` (``segmenter.onnx``, ``embedder.onnx`` + sidecars)."""
    from coinvision.sdk.recognizer import Recognizer

    if not Path(models_dir).is_dir():
        raise ModelLoadError(f"{models_dir}: models folder not found; pass --models DIR with the release exports")
    meta = ModelMetadata.read_sidecar(Path(models_dir) / f"embedder.{runtime}")
    recognizer = Recognizer.from_dir(models_dir, runtime=runtime, num_threads=num_threads)
    log.info("embedder %s loaded from %s (%s, dim %s)", meta.fingerprint, models_dir, runtime, meta.embedding_dim)
    return Embedder(recognizer, meta.fingerprint, int(meta.embedding_dim or 0))
