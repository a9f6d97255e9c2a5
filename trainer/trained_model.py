"""Any trainer checkpoint -> its PyTorch model + the metadata its exports carry (dispatch on the checkpoint's
``kind`` to ``seg_model`` / ``emb_model``): what every export, parity check and benchmark starts from."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coinvision.sdk.errors import ConfigError, ModelLoadError
from coinvision.sdk.files import sha256_file
from coinvision.sdk.model_meta import ModelMetadata

__all__ = ["MODEL_KINDS", "TrainedModel", "load_trained_model"]

log = logging.getLogger(__name__)

MODEL_KINDS = ("segmenter", "embedder")


@dataclass(frozen=True)
class TrainedModel:
    kind: str  # "segmenter" | "embedder"
    model: Any  # torch.nn.Module in eval mode, NCHW normalised input
    meta: ModelMetadata  # runtime_format "torch"; exported files restate it per format
    checkpoint: Path
    checkpoint_sha256: str
    epoch: int
    config: dict[str, Any]


def _loader(kind: str):
    """``(load_fn, metadata_fn)`` of the trainer module for ``kind``; both follow the segmenter's shape."""
    if kind == "segmenter":
        from coinvision.trainer.seg_model import load_segmenter, segmenter_metadata

        return load_segmenter, segmenter_metadata
    from coinvision.trainer.emb_model import embedder_metadata, load_embedder

    return load_embedder, embedder_metadata


def load_trained_model(path: str | Path) -> TrainedModel:
    """Load a trainer checkpoint of any kind. Config/weights mismatches raise :class:`ModelLoadError`."""
    from coinvision.trainer.checkpoint import load_checkpoint

    path = Path(path)
    kind = load_checkpoint(path).kind
    if kind not in MODEL_KINDS:
        raise ModelLoadError(f"{path}: checkpoint kind {kind!r} cannot be exported; valid kinds: "
                             f"{', '.join(MODEL_KINDS)}")
    load, metadata = _loader(kind)
    try:
        model, cfg, ckpt = load(path)
    except (ConfigError, TypeError, ValueError) as exc:  # a config the current architecture code does not accept
        raise ModelLoadError(
            f"{path}: the stored {kind} config does not match this code's architecture ({exc})"
        ) from exc
    meta = metadata(cfg, ckpt.fingerprint)
    sha = sha256_file(path)
    meta = dataclasses.replace(
        meta, extra={**meta.extra, "source_checkpoint": path.name, "checkpoint_sha256": sha, "epoch": ckpt.epoch}
    )
    log.info("loaded %s checkpoint %s (fingerprint %s, epoch %d)", kind, path, ckpt.fingerprint, ckpt.epoch)
    return TrainedModel(kind, model.eval(), meta, path, sha, int(ckpt.epoch), dict(ckpt.config))
