"""Fixtures of the benchmark tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

SAMPLE_EURO = Path(__file__).parents[2] / "examples" / "sample_coins" / "euro_phone" / "images"
SPLIT_CLASSES = ("1c", "10c", "1e")


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


@pytest.fixture(scope="module")
def sample_split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three euro_phone classes, 2 catalog and 2 query photos each, linked as ``coinvision data split`` links; the
    same classes stand in for training classes (4 train, 1 val_seen photo each)."""
    root = tmp_path_factory.mktemp("outline_split")
    for cls in SPLIT_CLASSES:
        photos = sorted((SAMPLE_EURO / cls).glob("*.jpg"))
        for split, chosen in (("catalog", photos[:2]), ("query", photos[2:4]), ("train", photos[:4]),
                              ("val_seen", photos[4:5])):
            for photo in chosen:
                link = root / split / f"euro_phone__{cls}" / photo.name
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(photo.resolve())
    return root
