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
from coinvision.sdk.recognizer import Recognizer

__all__ = ["Embedder", "ImageEmbedding", "load_embedder"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageEmbedding:
    vector: np.ndarray  # float32 (D,), L2-normalised
    mask: np.ndarray | None  # bool HxW on the decoded image, None when no coin was found
    bbox: tuple[int, int, int, int] | None


class Embedder:
    """Thread-safe wrapper: one Recognizer, calls serialised (ONNX sessions are, the Python glue is not)."""

    def __init__(self, recognizer: Recognizer) -> None:
        self._recognizer = recognizer
        self._lock = threading.Lock()
        self.fingerprint = recognizer.fingerprint
        self.dim = recognizer.dim
        self.unknown_threshold: float = recognizer.unknown_threshold

    def embed(self, image: np.ndarray) -> ImageEmbedding:
        with self._lock:
            emb = self._recognizer.embed(image)
        seg = emb.segmentation
        return ImageEmbedding(vector=emb.vector, mask=seg.mask, bbox=seg.bbox)


def load_embedder(models_dir: Path, runtime: str = "onnx", num_threads: int = 1) -> Embedder:
    """Load the release segmenter + embedder from ``models_dir`` (``segmenter.onnx``, ``embedder.onnx`` + sidecars)."""
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        raise ModelLoadError(f"{models_dir}: models folder not found; pass --models DIR with the release exports")
    recognizer = Recognizer.from_dir(models_dir, runtime=runtime, num_threads=num_threads)
    log.info("embedder %s loaded from %s (%s, dim %d)", recognizer.fingerprint, models_dir, runtime, recognizer.dim)
    return Embedder(recognizer)
