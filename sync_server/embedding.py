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
from coinvision.sdk.preprocess import Segmentation, coin_crop, to_model_input, two_pass_segment

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


class _OnnxPipeline:
    """Used only while ``coinvision.sdk.recognizer`` is absent: the same spec functions on ONNX Runtime."""

    @dataclass(frozen=True)
    class _Out:
        vector: np.ndarray
        segmentation: Segmentation

    def __init__(self, models_dir: Path, num_threads: int) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = num_threads
        opts.inter_op_num_threads = 1
        self.seg_meta = ModelMetadata.read_sidecar(models_dir / "segmenter.onnx")
        self.emb_meta = ModelMetadata.read_sidecar(models_dir / "embedder.onnx")
        providers = ["CPUExecutionProvider"]
        self.seg = ort.InferenceSession(str(models_dir / "segmenter.onnx"), opts, providers=providers)
        self.emb = ort.InferenceSession(str(models_dir / "embedder.onnx"), opts, providers=providers)

    def _predict(self, square: np.ndarray) -> np.ndarray:
        x = to_model_input(square, self.seg_meta.input)
        logits = self.seg.run(None, {self.seg.get_inputs()[0].name: x})[0]
        logits = logits.reshape(self.seg_meta.input.size_px, self.seg_meta.input.size_px)
        return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)

    def embed(self, image: np.ndarray) -> _OnnxPipeline._Out:
        seg = two_pass_segment(
            image, self._predict, size_px=self.seg_meta.input.size_px, threshold=self.seg_meta.threshold or 0.5
        )
        crop = coin_crop(image, seg.mask, self.emb_meta.input.size_px)
        x = to_model_input(crop, self.emb_meta.input)
        vec = self.emb.run(None, {self.emb.get_inputs()[0].name: x})[0].reshape(-1)
        return _OnnxPipeline._Out(vec.astype(np.float32), seg)


def load_embedder(models_dir: Path, runtime: str = "onnx", num_threads: int = 1) -> Embedder:
    """Load the release segmenter + embedder from ``models_dir`` (``segmenter.onnx``, ``embedder.onnx`` + sidecars)."""
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        raise ModelLoadError(f"{models_dir}: models folder not found; pass --models DIR with the release exports")
    meta = ModelMetadata.read_sidecar(models_dir / f"embedder.{runtime}")
    try:
        from coinvision.sdk.recognizer import Recognizer
    except ModuleNotFoundError:
        recognizer: object = _OnnxPipeline(models_dir, num_threads)
    else:
        recognizer = Recognizer.from_dir(models_dir, runtime=runtime, num_threads=num_threads)
    log.info("embedder %s loaded from %s (%s, dim %s)", meta.fingerprint, models_dir, runtime, meta.embedding_dim)
    return Embedder(recognizer, meta.fingerprint, int(meta.embedding_dim or 0))
