"""Teacher labels: a label folder rewritten with a release segmenter's own masks (``coinvision data
teacher-labels``), on the bundled sample photos and the release models."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from coinvision.cli.main import main as cli
from coinvision.sdk.errors import DatasetError
from coinvision.sdk.images import load_image
from coinvision.sdk.segmenter import Segmenter
from coinvision.trainer.seg_labels import label_datasets, load_mask, teacher_labels

ROOT = Path(__file__).resolve().parents[2]
DATASET = ROOT / "examples" / "sample_coins" / "euro_phone"
MODELS = ROOT / "models" / "release"


@pytest.fixture(scope="module")
def labels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("labels")
    label_datasets([DATASET], out, progress=False)
    return out


def _rows(folder: Path) -> list[dict[str, str]]:
    with (folder / "manifest.csv").open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_cli_writes_the_release_pipelines_masks_and_keeps_the_other_columns(labels: Path, tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "teacher"
    assert cli(["data", "teacher-labels", str(labels), str(DATASET), "--out", str(out), "--models", str(MODELS),
                "--threads", "1"]) == 0
    old_rows, new_rows = _rows(labels), _rows(out)
    assert len(new_rows) == len(old_rows) > 0
    assert f"{len(old_rows)} label(s) replaced" in capsys.readouterr().out
    segmenter = Segmenter.from_dir(MODELS, num_threads=1)
    for old, new in zip(old_rows, new_rows, strict=True):
        assert new["method"] == "teacher"
        assert {k: v for k, v in new.items() if k != "method"} == {k: v for k, v in old.items() if k != "method"}
        expected = segmenter.segment(load_image(DATASET / new["file"])).mask
        np.testing.assert_array_equal(load_mask(out / new["mask"]), expected)


def test_no_coin_keeps_the_old_label_and_another_coin_is_counted(labels: Path, tmp_path: Path) -> None:
    calls = []

    def teacher(rgb: np.ndarray) -> np.ndarray | None:
        calls.append(rgb.shape)
        if len(calls) == 1:
            return None  # the teacher found no coin
        corner = np.zeros(rgb.shape[:2], bool)
        corner[:4, :4] = True  # a "coin" far from any label
        return corner

    report = teacher_labels(labels, tmp_path / "out", [DATASET], teacher, progress=False)
    rows = _rows(tmp_path / "out")
    assert (report.replaced, report.kept, report.disagreed) == (len(rows) - 1, 1, len(rows) - 1)
    assert rows[0]["method"] == _rows(labels)[0]["method"]
    np.testing.assert_array_equal(load_mask(tmp_path / "out" / rows[0]["mask"]), load_mask(labels / rows[0]["mask"]))
    assert load_mask(tmp_path / "out" / rows[1]["mask"]).sum() == 16


def test_a_mask_of_another_size_is_refused_with_the_photo_named(labels: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"euro_phone.*the teacher's mask is \(5, 5\).*load_image"):
        teacher_labels(labels, tmp_path / "out", [DATASET], lambda rgb: np.ones((5, 5), bool), progress=False)


def test_missing_labels_or_writing_over_them_is_refused(labels: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"manifest.csv does not exist; create the labels"):
        teacher_labels(tmp_path / "nowhere", tmp_path / "out", [DATASET], lambda rgb: None, progress=False)
    before = (labels / "manifest.csv").read_bytes()
    with pytest.raises(DatasetError, match="is the label folder itself"):
        teacher_labels(labels, labels, [DATASET], lambda rgb: None, progress=False)
    assert (labels / "manifest.csv").read_bytes() == before
