"""The training loop both trainers share: device, mixed precision, the run folder and its bookkeeping.

A run folder holds ``config.yaml`` (the resolved config), ``history.json`` / ``history.csv`` (one row per
epoch), ``curves.png``, ``last.pt`` (weights + ``training_state``: what ``--resume`` needs) and ``best.pt``
(weights of the best epoch so far). The checkpoint format is :mod:`coinvision.trainer.checkpoint`'s.

What differs between the segmenter and the embedder - optimizers, the step, validation, the epoch's row and
its score - stays in ``seg_train`` / ``emb_train``; they call :class:`TrainingRun` for the rest.

Distributed: under ``torchrun --nproc_per_node N`` (``WORLD_SIZE`` > 1 in the environment) the run joins the
process group (gloo on CPU, nccl on CUDA, one GPU per process by ``LOCAL_RANK``). Every rank builds the same model
from the same seed; :meth:`TrainingRun.distribute` wraps the trained module in ``DistributedDataParallel``, so
gradients are averaged and the replicas stay identical; the trainers give each rank its own batches. Rank 0 alone
validates and writes (config, history, curves, checkpoints, progress); the others wait for it after
:meth:`TrainingRun.end_epoch`, which also makes the buffers (BatchNorm statistics, rank-local in training) rank 0's
and checks that every replica holds the same weights. ``batch_size`` is per process: N processes train on N times
the batch per step. With one process none of this runs and training is exactly what it was.
"""

from __future__ import annotations

import atexit
import contextlib
import csv
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

import cv2
import torch
from coinvision.sdk.errors import CoinVisionError, ModelLoadError
from coinvision.trainer.checkpoint import Checkpoint, fingerprint_state_dict, load_checkpoint, save_checkpoint
from coinvision.trainer.config_io import config_to_dict, save_config
from torch import nn

__all__ = ["Amp", "DistributedError", "Distribution", "RunConfig", "TrainingRun", "choose_device", "init_distributed",
           "write_history"]

log = logging.getLogger(__name__)

PlotFn = Callable[[list[dict[str, Any]], Path], None]


class RunConfig(Protocol):
    """The fields of a trainer config that the loop reads (both ``SegmenterConfig`` and ``EmbedderConfig``)."""

    out_dir: str
    device: str
    seed: int
    num_threads: int
    amp: bool


def choose_device(name: str, local_rank: int | None = None) -> torch.device:
    """``"auto"`` -> CUDA when present, else CPU; anything else is a torch device name. With ``local_rank`` (a
    distributed run) a CUDA device is that process's own GPU."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else torch.device(name)
    if local_rank is not None and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


class DistributedError(CoinVisionError):
    """A distributed run went wrong (ranks disagree, the process group does not match the environment)."""


# Rank 0 validates while the others wait at a barrier: a long validation must not trip the default 30 min timeout.
_PROCESS_GROUP_TIMEOUT = timedelta(hours=2)


def _leave_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


@dataclass(frozen=True)
class Distribution:
    """Where this process stands in a ``torchrun`` job (rank 0 of 1 when not launched by one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> Distribution:
    """Join the process group ``torchrun`` describes in the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR``/``MASTER_PORT``): nccl when the run trains on CUDA, gloo otherwise. One process (no
    ``WORLD_SIZE``, or 1) -> rank 0 of 1 and no process group."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distribution()
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = choose_device(device_name, local_rank)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise DistributedError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) here; start "
                                   "at most one process per GPU (torchrun --nproc_per_node)")
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=_PROCESS_GROUP_TIMEOUT)
        # Left at exit, not after a run: a second training in the same process (the segmenter, then the
        # embedder) reuses it; joining torchrun's store again after destroying the group hangs.
        atexit.register(_leave_process_group)
        log.info("rank %d of %d joined the %s process group", rank, world, backend)
    if dist.get_world_size() != world or dist.get_rank() != rank:
        raise DistributedError(f"the process group says rank {dist.get_rank()} of {dist.get_world_size()}, the "
                               f"environment {rank} of {world}; launch the training with torchrun")
    return Distribution(rank, world, local_rank)


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
        self.dist = init_distributed(cfg.device)
        torch.manual_seed(cfg.seed)  # the same on every rank: every replica starts from the same weights
        self.kind, self.cfg, self.plot = kind, cfg, plot
        self.out_dir = Path(cfg.out_dir)
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.out_dir / "config.yaml")
        self.device = choose_device(cfg.device, self.dist.local_rank if self.dist.enabled else None)
        self.amp = Amp(self.device, cfg.amp)
        self.history: list[dict[str, Any]] = []
        self.best: Any = initial_best
        self.start_epoch = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 (or the only process): the one that validates, writes and prints."""
        return self.dist.is_main

    @property
    def rank(self) -> int:
        return self.dist.rank

    @property
    def world_size(self) -> int:
        return self.dist.world_size

    def distribute(self, module: nn.Module) -> nn.Module:
        """``module`` wrapped in ``DistributedDataParallel`` (rank 0's weights broadcast now, gradients averaged
        across ranks in every backward); ``module`` itself with one process. Wrap again after a ``requires_grad``
        change: DDP synchronises the parameters that needed gradients when it was built."""
        if not self.dist.enabled:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)

    def barrier(self) -> None:
        if self.dist.enabled:
            import torch.distributed as dist

            dist.barrier()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (and fills the caches on disk), the other ranks after it (and read them)."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def mean_across_ranks(self, value: float) -> float:
        """The mean of a per-rank scalar (the epoch's training loss) over the ranks; ``value`` with one process."""
        if not self.dist.enabled:
            return value
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item()) / self.world_size

    def end_epoch(self, model: nn.Module) -> str | None:
        """After an epoch's steps, on every rank: make the buffers rank 0's (BatchNorm statistics are per rank in
        training), check that every replica holds the same weights, and return their fingerprint. With one
        process: ``None``, there is nothing to compare."""
        if not self.dist.enabled:
            return None
        import torch.distributed as dist

        for buffer in model.buffers():
            dist.broadcast(buffer.data, src=0)
        fingerprint = fingerprint_state_dict(model.state_dict())
        prints: list[str | None] = [None] * self.world_size
        dist.all_gather_object(prints, fingerprint)
        if len(set(prints)) != 1:
            raise DistributedError(f"replicas diverged: weight fingerprints by rank {prints}; every rank must run "
                                   "the same number of steps on the same model")
        return fingerprint

    def close(self) -> None:
        """Wait for every rank: rank 0 is the last to finish writing. The process group stays for the next run."""
        self.barrier()

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
        running mean; returns the epoch's mean loss over ``steps`` (averaged over the ranks)."""
        from tqdm import tqdm

        running = 0.0
        bar = tqdm(batches, total=steps, desc=desc, disable=not (progress and self.is_main))
        for i, batch in enumerate(bar, start=1):
            running += step(batch)
            bar.set_postfix(loss=f"{running / i:.4f}")
        return self.mean_across_ranks(running / max(1, steps))

    def record(self, row: dict[str, Any]) -> None:
        """Append the epoch's row and rewrite the history files and curves (rank 0 only)."""
        if not self.is_main:
            return
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
        (``best_config`` replaces the run's config there, ``best_state`` is its training state). Rank 0 only."""
        if not self.is_main:
            return
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
        self.close()  # every rank returns only once rank 0 has written best.pt
        if not self.best_path.is_file():
            raise ModelLoadError(f"{self.out_dir}: no epoch finished, so there is no best.pt; raise epochs or "
                                 "delete last.pt to start again")
        return self.best_path
