"""What every benchmark shares: where results go, how they are stamped, how the README table is made.

A benchmark's JSON holds its full ``results`` plus a flat ``table`` (list of rows) that the README shows,
stamped with the date, the hardware and the exact command, so every figure can be reproduced.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["RESULTS_DIR", "hardware", "seed_everything", "write_result"]

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"


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
