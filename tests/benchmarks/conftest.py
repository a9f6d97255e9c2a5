"""Fixtures of the benchmark tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture
def mini_sample_root(sample_root: Path, tmp_path: Path) -> Path:
    """Two classes of each bundled dataset and the backgrounds: the benchmarks' fallback data path, in seconds."""
    dst = tmp_path / "sample"
    for name in ("coins211", "euro_phone"):
        (dst / name / "images").mkdir(parents=True)
        shutil.copy(sample_root / name / "classes.csv", dst / name / "classes.csv")
        for cls in sorted((sample_root / name / "images").iterdir())[:2]:
            shutil.copytree(cls, dst / name / "images" / cls.name)
    shutil.copytree(sample_root / "backgrounds", dst / "backgrounds")
    return dst
