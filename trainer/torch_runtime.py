"""PyTorch as one more runtime of the SDK's pipeline: the torch reference pipeline IS the SDK's code.

``torch_recognizer`` / ``torch_segmenter`` put the trainer's checkpoints behind ``coinvision.sdk``'s
``Recognizer`` / ``Segmenter``: the same two-pass segmentation, crop, rotation averaging and search as a phone,
only the predictors run PyTorch. The converters' parity checks, the benchmarks, the embedder's crop cache and
the ``--runtime torch`` commands all go through here, so there is no second copy of the pipeline to drift.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from coinvision.sdk.model_meta import ModelMetadata
from coinvision.sdk.preprocess import InputSpec, to_model_input
from coinvision.sdk.recognizer import Recognizer
from coinvision.sdk.runtimes import LoadedModel, Predictor
from coinvision.sdk.segmenter import Segmenter

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "load_torch_embedder_model",
    "load_torch_segmenter_model",
    "torch_loaded_model",
    "torch_predictor",
    "torch_recognizer",
    "torch_segmenter",
]


def torch_predictor(model: nn.Module, input_spec: InputSpec) -> Predictor:
    """A PyTorch model as an SDK predictor: square uint8 RGB -> the raw model output of that one image (batch
    dimension dropped). PyTorch takes NCHW whatever ``input_spec.layout`` says (exports declare NHWC)."""
    spec = dataclasses.replace(input_spec, layout="NCHW")
    model = model.eval()

    @torch.inference_mode()
    def predict(square: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(to_model_input(square, spec))).float().cpu().numpy()[0]

    return predict


def torch_loaded_model(model: nn.Module, meta: ModelMetadata, path: str | Path) -> LoadedModel:
    """A PyTorch model already in hand (an export run's source, a test's tiny model) as the SDK's
    :class:`LoadedModel`; ``path`` names it in error messages."""
    return LoadedModel(path=Path(path), meta=meta, predict=torch_predictor(model, meta.input))


def _set_threads(num_threads: int | None) -> None:
    if num_threads is not None:
        torch.set_num_threads(num_threads)


def load_torch_segmenter_model(seg_ckpt: str | Path) -> LoadedModel:
    """A segmenter checkpoint with the metadata an export of it would carry (``segmenter_metadata``)."""
    from coinvision.trainer.seg_model import load_segmenter, segmenter_metadata

    model, cfg, ckpt = load_segmenter(seg_ckpt)
    return torch_loaded_model(model, segmenter_metadata(cfg, ckpt.fingerprint), seg_ckpt)


def load_torch_embedder_model(emb_ckpt: str | Path) -> LoadedModel:
    """An embedder checkpoint with the metadata an export of it would carry (``embedder_metadata``)."""
    from coinvision.trainer.emb_model import embedder_metadata, load_embedder

    model, cfg, ckpt = load_embedder(emb_ckpt)
    return torch_loaded_model(model, embedder_metadata(cfg, ckpt.fingerprint), emb_ckpt)


def torch_segmenter(seg_ckpt: str | Path, num_threads: int | None = 1) -> Segmenter:
    """The SDK's :class:`Segmenter` over a PyTorch segmenter checkpoint; parameters from its metadata.
    ``num_threads=None`` leaves PyTorch's thread count as it is."""
    _set_threads(num_threads)
    return Segmenter(load_torch_segmenter_model(seg_ckpt))


def torch_recognizer(seg_ckpt: str | Path, emb_ckpt: str | Path, num_threads: int | None = 1) -> Recognizer:
    """The SDK's :class:`Recognizer` with PyTorch predictors for both checkpoints (the torch reference pipeline).
    ``num_threads=None`` leaves PyTorch's thread count as it is."""
    _set_threads(num_threads)
    return Recognizer(load_torch_segmenter_model(seg_ckpt), load_torch_embedder_model(emb_ckpt))
