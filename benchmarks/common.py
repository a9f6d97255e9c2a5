"""What every benchmark shares: where results go, how they are stamped, how the README table is made.

A benchmark's JSON holds its full ``results`` plus a flat ``table`` (list of rows) that the README shows,
stamped with the date, the hardware and the exact command, so every figure can be reproduced.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = [
    "MISSING_INPUTS_EXIT",
    "RELEASE_MODELS",
    "RESULTS_DIR",
    "add_compare_models_options",
    "default_tflite_name",
    "hardware",
    "median_ms",
    "release_checkpoint",
    "seed_everything",
    "write_result",
]

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
RELEASE_MODELS = ROOT / "models" / "release"
# Exit status of a benchmark that measured nothing because this checkout lacks its inputs (a training checkpoint,
# the shared photos): run_all reports it as skipped and keeps its previous results file instead of failing.
MISSING_INPUTS_EXIT = 3


def hardware() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = ""
    try:
        import torch

        if torch.cuda.is_available():
            gpu = f", GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return f"{cpu}, {os.cpu_count()} logical cores{gpu}, Python {platform.python_version()}"


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:
        pass


def write_result(name: str, results: dict[str, Any], table: list[dict[str, Any]], out: str | Path | None) -> Path:
    """Write ``{benchmark, date_utc, hardware, command, table, results}`` to ``out`` (default results dir)."""
    path = Path(out) if out else RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
        "hardware": hardware(),
        "command": "python -m benchmarks." + Path(sys.argv[0]).stem + " " + shlex.join(sys.argv[1:]),
        "table": table,
        "results": results,
    }
    path.write_text(json.dumps(payload, indent=2, default=float))
    return path


def release_checkpoint(kind: str, models_dir: Path = ROOT / "models" / "release",
                       runs_dir: Path = ROOT / "runs") -> Path | None:
    """The ``runs/<kind>/*/best.pt`` that ``models_dir`` was exported from (its ONNX metadata records the
    checkpoint's sha256), else the newest one; ``None`` when there is none. The PyTorch reference row of a
    benchmark must be the release model's own source, not whichever experiment ran last."""
    from coinvision.sdk.files import sha256_file

    found = sorted((runs_dir / kind).glob("*/best.pt"), key=lambda p: p.stat().st_mtime)
    meta = models_dir / f"{kind}.onnx.meta.json"
    if meta.is_file():
        wanted = json.loads(meta.read_text()).get("extra", {}).get("checkpoint_sha256")
        for path in reversed(found):
            if wanted and sha256_file(path) == wanted:
                return path
    return found[-1] if found else None


def default_tflite_name(models_dir: Path) -> str:
    """``"tflite <quantization>"`` of the default ``embedder.tflite`` in ``models_dir``, read from its metadata
    (a release ships int8 or fp16 under the default name, so the file name alone says nothing)."""
    from coinvision.sdk.errors import CoinVisionError
    from coinvision.sdk.model_meta import ModelMetadata

    try:
        quantization = ModelMetadata.read_sidecar(Path(models_dir) / "embedder.tflite").quantization or "fp32"
    except (CoinVisionError, OSError, ValueError):
        quantization = "fp32"
    return "tflite " + {"int8_full": "int8"}.get(quantization, quantization)


def median_ms(fn: Callable[[], object], runs: int, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``runs`` calls after ``warmup`` untimed ones."""
    import statistics
    import time

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(1000.0 * (time.perf_counter() - started))
    return statistics.median(times)


def add_compare_models_options(parser: argparse.ArgumentParser) -> None:
    """``--models DIR [DIR ...]`` (default the release), ``--runtime`` (tflite / onnx) and ``--threads`` (1): the
    options of a benchmark that runs each models folder's phone pipeline (``Recognizer.from_dir``) side by side."""
    parser.add_argument("--models", type=Path, nargs="+", default=[RELEASE_MODELS], metavar="DIR",
                        help="models folders to compare (default models/release)")
    parser.add_argument("--runtime", default="tflite", choices=("tflite", "onnx"))
    parser.add_argument("--threads", type=int, default=1)
