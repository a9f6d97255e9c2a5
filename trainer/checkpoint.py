"""One checkpoint format for both models: weights + resolved config + metrics + a content fingerprint.

The fingerprint is a hash of the weights alone, so it names *what the model computes*: exported files and
catalog packs carry it, and two files with the same fingerprint produce comparable embeddings. Checkpoints
are written to a temporary file and renamed, so a crash mid-save never destroys the last good one.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from coinvision.sdk.errors import ModelLoadError
from coinvision.trainer.config_io import resolve_config

__all__ = [
    "Checkpoint",
    "fingerprint_state_dict",
    "load_checkpoint",
    "load_model",
    "restore_schedule",
    "save_checkpoint",
]

ConfigT = TypeVar("ConfigT")
ModelT = TypeVar("ModelT", bound=torch.nn.Module)

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
FINGERPRINT_HEX_CHARS = 16


def fingerprint_state_dict(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and raw bytes of every tensor, in sorted key order."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:FINGERPRINT_HEX_CHARS]


@dataclass
class Checkpoint:
    kind: str  # "segmenter" | "embedder"
    config: dict[str, Any]  # the resolved config (config_to_dict of the frozen dataclass)
    state_dict: dict[str, torch.Tensor]
    metrics: dict[str, Any] = field(default_factory=dict)
    epoch: int = 0
    training_state: dict[str, Any] = field(default_factory=dict)  # optimizers, schedulers, RNG: for resume
    fingerprint: str = ""


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt.fingerprint = fingerprint_state_dict(ckpt.state_dict)
    payload = {"format_version": FORMAT_VERSION, **ckpt.__dict__}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    log.info("saved %s checkpoint %s (fingerprint %s)", ckpt.kind, path, ckpt.fingerprint)
    return path


def load_checkpoint(path: str | Path, *, expected_kind: str | None = None) -> Checkpoint:
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"checkpoint {path} does not exist; train one with `coinvision train ...`")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise ModelLoadError(f"checkpoint {path} is unreadable ({exc}); it may be truncated") from exc
    if not isinstance(payload, dict) or "state_dict" not in payload or "kind" not in payload:
        raise ModelLoadError(f"{path} is not a coinvision checkpoint (no kind/state_dict)")
    version = payload.pop("format_version", 0)
    if version > FORMAT_VERSION:
        raise ModelLoadError(f"{path}: checkpoint format {version} is newer than this code ({FORMAT_VERSION})")
    ckpt = Checkpoint(**payload)
    if expected_kind is not None and ckpt.kind != expected_kind:
        raise ModelLoadError(f"{path} is a {ckpt.kind} checkpoint, expected a {expected_kind}")
    actual = fingerprint_state_dict(ckpt.state_dict)
    if ckpt.fingerprint and actual != ckpt.fingerprint:
        raise ModelLoadError(f"{path}: weights do not match the stored fingerprint (corrupt checkpoint)")
    ckpt.fingerprint = actual
    return ckpt


def load_model(
    path: str | Path, kind: str, config_cls: type[ConfigT], build: Callable[[ConfigT], ModelT], *, what: str = ""
) -> tuple[ModelT, ConfigT, Checkpoint]:
    """Rebuild a trained model from its checkpoint: resolved config -> ``build`` -> weights. Returns it in eval mode."""
    ckpt = load_checkpoint(path, expected_kind=kind)
    values = {**ckpt.config, "pretrained_path": None}  # weights come from the checkpoint
    cfg = resolve_config(config_cls, overrides=values)
    model = build(cfg)
    try:
        model.load_state_dict(ckpt.state_dict)
    except RuntimeError as exc:
        raise ModelLoadError(f"{path}: weights do not fit the configured {what or kind} ({exc})") from exc
    return model.eval(), cfg, ckpt


def restore_schedule(scheduler: torch.optim.lr_scheduler.OneCycleLR, saved: dict[str, Any]) -> None:
    """Restore a one-cycle schedule's step count but keep THIS run's length and phases, so resuming with more
    epochs stretches the tail (the saved phases would end the schedule at the old length)."""
    scheduler.load_state_dict({k: v for k, v in saved.items() if k not in ("total_steps", "_schedule_phases")})
