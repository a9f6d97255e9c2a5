"""The server's embedder: the SDK's Recognizer on ONNX Runtime, so server vectors equal device vectors.

Everything the server needs from the models goes through :func:`load_reference_embedder`; a photo's result is
the SDK's own :class:`~coinvision.sdk.recognizer.Embedding` (vector, segmentation, crop, timings).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
from coinvision.sdk.errors import ModelLoadError
from coinvision.sdk.recognizer import Embedding, Recognizer

__all__ = ["ReferenceEmbedder", "load_reference_embedder"]

log = logging.getLogger(__name__)


class ReferenceEmbedder:
    """The server's shared Recognizer, safe to call from request threads: calls are serialised (ONNX sessions
    are thread-safe, the Python glue around them is not)."""

    def __init__(self, recognizer: Recognizer) -> None:
        self._recognizer = recognizer
        self._lock = threading.Lock()
        self.fingerprint = recognizer.fingerprint
        self.dim = recognizer.dim
        self.unknown_threshold: float = recognizer.unknown_threshold

    def embed(self, image: np.ndarray) -> Embedding:
        """One decoded RGB photo (``coinvision.sdk.images.load_image``) through segmentation and the embedder."""
        with self._lock:
            return self._recognizer.embed(image)


def load_reference_embedder(models_dir: Path, runtime: str = "onnx", num_threads: int = 1) -> ReferenceEmbedder:
    """Load the release segmenter + embedder from ``models_dir`` (``segmenter.onnx``, ``embedder.onnx`` + sidecars)."""
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        raise ModelLoadError(f"{models_dir}: models folder not found; pass --models DIR with the release exports")
    recognizer = Recognizer.from_dir(models_dir, runtime=runtime, num_threads=num_threads)
    log.info("embedder %s loaded from %s (%s, dim %d)", recognizer.fingerprint, models_dir, runtime, recognizer.dim)
    return ReferenceEmbedder(recognizer)
