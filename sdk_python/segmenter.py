"""The segmenter stage of the pipeline: a loaded segmenter model plus its post-processing values, photo -> mask.

``Segmenter`` runs the spec's two-pass segmentation (``preprocess.two_pass_segment``) with the parameters of
the model's own metadata (:class:`SegmenterParams`), on any runtime: the exported files through
:meth:`Segmenter.from_dir`, the trainer's PyTorch checkpoints through ``coinvision.trainer.torch_runtime``.
``Recognizer`` composes one. No torch here.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from coinvision.sdk.errors import ConfigError
from coinvision.sdk.model_meta import ModelMetadata
from coinvision.sdk.preprocess import (
    DEFAULT_MARGIN_FRAC,
    DEFAULT_MIN_AREA_FRAC,
    DEFAULT_SEGMENT_THRESHOLD,
    PredictFn,
    Segmentation,
    sigmoid,
    two_pass_segment,
)
from coinvision.sdk.runtimes import (
    LoadedModel,
    check_model_output,
    check_models_dir,
    check_pipeline_metadata,
    load_pipeline_model,
)

__all__ = ["Segmenter", "SegmenterParams"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmenterParams:
    """How a segmenter's probability map becomes the coin mask (spec step 2); read from its metadata."""

    size_px: int  # model input side (metadata input.size_px)
    threshold: float = DEFAULT_SEGMENT_THRESHOLD  # probability; a pixel is coin when prob >= threshold
    margin_frac: float = DEFAULT_MARGIN_FRAC  # second-pass square crop margin per side
    min_area_frac: float = DEFAULT_MIN_AREA_FRAC  # smaller components are no coin
    pad_value: int = 0  # letterbox padding (metadata input.pad_value)
    split_touching: bool = False  # spec 2.6: cut touching coins apart before keeping the largest (v2 models)

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"segmenter threshold={self.threshold}: must be a probability in (0, 1), e.g. 0.5")
        if self.margin_frac < 0.0:
            raise ConfigError(f"segmenter margin_frac={self.margin_frac}: must be >= 0, e.g. {DEFAULT_MARGIN_FRAC}")
        if not 0.0 <= self.min_area_frac < 1.0:
            raise ConfigError(f"segmenter min_area_frac={self.min_area_frac}: must be in [0, 1), "
                              f"e.g. {DEFAULT_MIN_AREA_FRAC}")

    @classmethod
    def from_metadata(cls, meta: ModelMetadata) -> SegmenterParams:
        """``threshold``, ``input.size_px`` / ``input.pad_value`` and ``extra`` (``margin_frac``,
        ``min_area_frac``, ``split_touching``); what the metadata leaves out takes the spec default."""
        extra = meta.extra
        return cls(
            size_px=meta.input.size_px,
            threshold=float(meta.threshold or DEFAULT_SEGMENT_THRESHOLD),
            margin_frac=float(extra.get("margin_frac", DEFAULT_MARGIN_FRAC)),
            min_area_frac=float(extra.get("min_area_frac", DEFAULT_MIN_AREA_FRAC)),
            pad_value=meta.input.pad_value,
            split_touching=bool(extra.get("split_touching", False)),
        )


class Segmenter:
    """A segmenter model of any runtime with its :class:`SegmenterParams`. Build with :meth:`from_dir` (exported
    files) or ``coinvision.trainer.torch_runtime.torch_segmenter`` (a PyTorch checkpoint)."""

    def __init__(self, model: LoadedModel, params: SegmenterParams | None = None) -> None:
        """``params`` default to the model's metadata; the model runs once on a blank input (a file whose
        output does not fit its metadata fails here)."""
        check_pipeline_metadata(model, "segmenter")
        self.model = model
        self.meta: ModelMetadata = model.meta
        self.params = params if params is not None else SegmenterParams.from_metadata(model.meta)
        check_model_output(model, self.params.size_px**2)

    @classmethod
    def from_dir(cls, models_dir: str | Path, *, runtime: str = "tflite", num_threads: int | None = None) -> Segmenter:
        """``segmenter.<ext>`` (+ its ``.meta.json``) of ``models_dir``; ``runtime``: "tflite" (default), "onnx",
        or "coreml" (macOS only). ``num_threads=None`` lets the runtime choose."""
        models_dir = Path(models_dir)
        check_models_dir(models_dir, runtime, ("segmenter",))
        segmenter = cls(load_pipeline_model(models_dir, "segmenter", runtime, num_threads))
        log.info("segmenter loaded from %s (%s): %s", models_dir, runtime, segmenter.meta.fingerprint)
        return segmenter

    def with_params(self, **changes: object) -> Segmenter:
        """The same loaded model with some parameters replaced (e.g. ``threshold=0.3``); nothing is reloaded."""
        other = object.__new__(Segmenter)
        other.model, other.meta = self.model, self.meta
        other.params = dataclasses.replace(self.params, **changes)
        return other

    def probability(self, square: np.ndarray) -> np.ndarray:
        """``size_px`` square uint8 RGB -> coin probability map (float32, ``size_px`` square)."""
        size = self.params.size_px
        # NCHW 1xSxS or NHWC SxSx1: either way the map is the reshaped array
        return sigmoid(np.asarray(self.model.predict(square), np.float32).reshape(size, size))

    def segment(self, image: np.ndarray, *, two_pass: bool = True) -> Segmentation:
        """Decoded ``HxWx3`` uint8 RGB photo -> the coin mask at the photo's size (``mask`` None: no coin)."""
        return self._segment(image, self.probability, two_pass)

    def segment_timed(self, image: np.ndarray, start: float | None = None) -> tuple[Segmentation, dict[str, float]]:
        """:meth:`segment` plus its time per pass in ms: ``segment_pass1`` and, when it ran, ``segment_pass2``.
        ``start``: a ``time.perf_counter()`` reading the first pass counts from (default: now), so a caller's
        stage timings add up to its total."""
        call_starts: list[float] = []

        def predict(square: np.ndarray) -> np.ndarray:
            call_starts.append(time.perf_counter())
            return self.probability(square)

        start = time.perf_counter() if start is None else start
        segmentation = self._segment(image, predict, True)
        end = time.perf_counter()
        second_pass = call_starts[1] if len(call_starts) > 1 else None
        timings = {"segment_pass1": ((second_pass or end) - start) * 1000.0}
        if second_pass is not None:
            timings["segment_pass2"] = (end - second_pass) * 1000.0
        return segmentation, timings

    def _segment(self, image: np.ndarray, predict: PredictFn, two_pass: bool) -> Segmentation:
        p = self.params
        return two_pass_segment(image, predict, size_px=p.size_px, threshold=p.threshold, margin_frac=p.margin_frac,
                                min_area_frac=p.min_area_frac, pad_value=p.pad_value, two_pass=two_pass,
                                split_touching=p.split_touching)
