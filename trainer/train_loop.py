"""The training loop both trainers share: device, mixed precision, the run folder and its bookkeeping.

A run folder holds ``config.yaml`` (the resolved config), ``history.json`` / ``history.csv`` (one row per
epoch), ``curves.png``, ``last.pt`` (weights + ``training_state``: what ``--resume`` needs) and ``best.pt``
(weights of the best epoch so far). The checkpoint format is :mod:`coinvision.trainer.checkpoint`'s.

What differs between the segmenter and the embedder - optimizers, the step, validation, the epoch's row and
its score - stays in ``seg_train`` / ``emb_train``; they call :class:`TrainingRun` for the rest.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import cv2
import torch
from coinvision.sdk.errors import ModelLoadError
from coinvision.trainer.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from coinvision.trainer.config_io import config_to_dict, save_config
from torch import nn

__all__ = ["Amp", "RunConfig", "TrainingRun", "choose_device", "write_history"]

log = logging.getLogger(__name__)

PlotFn = Callable[[list[dict[str, Any]], Path], None]


class RunConfig(Protocol):
    """The fields of a trainer config that the loop reads (both ``SegmenterConfig`` and ``EmbedderConfig``)."""

    out_dir: str
    device: str
    seed: int
    num_threads: int
    amp: bool


def choose_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when present, else CPU; anything else is a torch device name."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Amp:
    """Mixed precision where it helps: float16 autocast with loss scaling on CUDA. Off (``enabled=False``) or
    on any other device it is a pass-through, so those runs are exactly the fp32 runs."""

    def __init__(self, device: torch.device, enabled: bool) -> None:
        if enabled and device.type != "cuda":
            log.info("amp: mixed precision is CUDA only; training in float32 on %s", device)
        self.enabled = enabled and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.enabled)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=torch.float16)

    def backward_step(self, loss: torch.Tensor, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        """``loss.backward()`` then ``step()`` each optimizer (scaled when enabled: a step with inf/NaN
        gradients is skipped and the scale shrinks)."""
        self.scaler.scale(loss).backward()
        for optimizer in optimizers:
            self.scaler.step(optimizer)
        self.scaler.update()


def write_history(history: list[dict[str, Any]], out_dir: Path, plot: PlotFn | None = None) -> None:
    """``history.json``, ``history.csv`` (columns: every key in first-seen order, since a later epoch may add
    one) and, with ``plot``, ``curves.png``."""
    (out_dir / "history.json").write_text(json.dumps(history, indent=2))
    fields = list(dict.fromkeys(k for row in history for k in row))
    with (out_dir / "history.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(history)
    if plot is not None:
        plot(history, out_dir / "curves.png")


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


class TrainingRun:
    """One run of ``kind``: sets threads and the seed, writes ``config.yaml``, picks the device; then per epoch
    :meth:`train_epoch`, :meth:`record` and :meth:`save`; :meth:`finish` returns ``best.pt``.

    ``best`` is the best epoch score so far (any comparable value; ``initial_best`` must lose to every real
    score). Construct it before building the model: it seeds torch, so the weights are the same each run.
    """

    def __init__(self, kind: str, cfg: RunConfig, *, plot: PlotFn, initial_best: Any) -> None:
        torch.set_num_threads(cfg.num_threads)
        cv2.setNumThreads(cfg.num_threads)
        torch.manual_seed(cfg.seed)
        self.kind, self.cfg, self.plot = kind, cfg, plot
        self.out_dir = Path(cfg.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.out_dir / "config.yaml")
        self.device = choose_device(cfg.device)
        self.amp = Amp(self.device, cfg.amp)
        self.history: list[dict[str, Any]] = []
        self.best: Any = initial_best
        self.start_epoch = 0

    @property
    def last_path(self) -> Path:
        return self.out_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.out_dir / "best.pt"

    def resume(self, model: nn.Module) -> dict[str, Any] | None:
        """Load ``last.pt`` into ``model`` and take its history and epoch; returns its ``training_state`` for
        the trainer to restore its optimizers and schedules (``None``: nothing to resume, start afresh)."""
        if not self.last_path.is_file():
            log.warning("--resume: %s does not exist, starting from scratch", self.last_path)
            return None
        ckpt = load_checkpoint(self.last_path, expected_kind=self.kind)
        model.load_state_dict(ckpt.state_dict)
        state = ckpt.training_state
        self.history, self.start_epoch = state["history"], ckpt.epoch
        if self.amp.enabled and "amp_scaler" in state:
            self.amp.scaler.load_state_dict(state["amp_scaler"])
        log.info("resumed from %s at epoch %d", self.last_path, self.start_epoch)
        return state

    def train_epoch(self, batches: Iterable[Any], step: Callable[[Any], float], *, steps: int, desc: str,
                    progress: bool) -> float:
        """Run ``step(batch)`` (returns the batch loss) over ``batches`` under a progress bar showing the
        running mean; returns the epoch's mean loss over ``steps``."""
        from tqdm import tqdm

        running = 0.0
        bar = tqdm(batches, total=steps, desc=desc, disable=not progress)
        for i, batch in enumerate(bar, start=1):
            running += step(batch)
            bar.set_postfix(loss=f"{running / i:.4f}")
        return running / max(1, steps)

    def record(self, row: dict[str, Any]) -> None:
        """Append the epoch's row and rewrite the history files and curves."""
        self.history.append(row)
        write_history(self.history, self.out_dir, self.plot)

    def improved(self, score: Any) -> bool:
        """Whether ``score`` beats the best so far (then it becomes the best)."""
        is_best = score > self.best
        self.best = max(self.best, score)
        return is_best

    def save(self, model: nn.Module, epoch: int, metrics: dict[str, Any], training_state: dict[str, Any], *,
             is_best: bool, best_config: Any = None, best_state: dict[str, Any] | None = None) -> None:
        """``last.pt`` after ``epoch`` (0-based) with ``training_state``; with ``is_best`` also ``best.pt``
        (``best_config`` replaces the run's config there, ``best_state`` is its training state)."""
        weights = _cpu_state(model)
        if self.amp.enabled:
            training_state = {**training_state, "amp_scaler": self.amp.scaler.state_dict()}
        save_checkpoint(self.last_path, Checkpoint(self.kind, config_to_dict(self.cfg), weights, metrics, epoch + 1,
                                                   training_state))
        if is_best:
            config = config_to_dict(best_config if best_config is not None else self.cfg)
            save_checkpoint(self.best_path, Checkpoint(self.kind, config, weights, metrics, epoch + 1,
                                                       best_state or {}))

    def finish(self) -> Path:
        if not self.best_path.is_file():
            raise ModelLoadError(f"{self.out_dir}: no epoch finished, so there is no best.pt; raise epochs or "
                                 "delete last.pt to start again")
        return self.best_path
