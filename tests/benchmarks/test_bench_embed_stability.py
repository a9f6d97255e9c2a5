"""The stability benchmark re-encodes a real photo (a small, real perturbation) and reports how far the shipped
pipeline's vector moves, per release folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from coinvision.sdk.images import load_image

from benchmarks.bench_embed_stability import main, reencode

RELEASE = Path(__file__).resolve().parents[2] / "models" / "release"


def test_reencode_changes_pixels_a_little(sample_root: Path) -> None:
    rgb = load_image(next((sample_root / "euro_phone").rglob("*.jpg")))
    out = reencode(rgb, 90)
    diff = np.abs(out.astype(int) - rgb.astype(int))
    assert out.shape == rgb.shape and 0 < diff.mean() < 3


def test_main_reports_cosines_per_folder_and_quality(sample_root: Path, tmp_path: Path) -> None:
    assert main(["--models", str(RELEASE), "--photos", str(sample_root / "euro_phone"), "--count", "3",
                 "--quality", "90", "--out", str(tmp_path / "s.json")]) == 0
    rows = json.loads((tmp_path / "s.json").read_text())["table"]
    assert len(rows) == 1 and rows[0]["jpeg_quality"] == 90
    assert 0.8 < rows[0]["cosine min"] <= rows[0]["cosine mean"] <= 1.0 + 1e-6
