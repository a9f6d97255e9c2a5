"""The console script as a user runs it: a subprocess, real sample data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "examples" / "sample_coins"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coinvision.cli.main", *args], capture_output=True, text=True, timeout=300
    )


def test_help_lists_subcommands() -> None:
    out = _run("--help")
    assert out.returncode == 0
    assert "data" in out.stdout


def test_data_stats_prints_counts_and_splits() -> None:
    out = _run("data", "stats", str(SAMPLE / "euro_phone"))
    assert out.returncode == 0, out.stderr
    assert "classes: 8" in out.stdout and "images:  40" in out.stdout
    assert "catalog" in out.stdout and "query" in out.stdout


def test_bad_dataset_gives_clear_error_not_traceback(tmp_path: Path) -> None:
    out = _run("data", "stats", str(tmp_path / "missing"))
    assert out.returncode == 2
    assert out.stderr.startswith("error: dataset root") and "Traceback" not in out.stderr


def test_data_split_writes_csv(tmp_path: Path) -> None:
    out = _run("data", "split", str(SAMPLE / "coins211"), str(SAMPLE / "euro_phone"), "--out", str(tmp_path / "s.csv"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "s.csv").read_text().startswith("dataset,file,class_key,group,split")
