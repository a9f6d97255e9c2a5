"""The scene recognition benchmark on the bundled sample photos and the release models: query photos found through
the split's links, each figure what its definition says, the whole command end to end."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from coinvision.sdk.evaluation import list_class_folder
from coinvision.sdk.images import load_image
from coinvision.trainer.seg_labels import label_datasets, load_mask

from benchmarks.bench_scene_recognition import SceneSet, labelled_queries, main, score_models
from benchmarks.bench_segmentation import data_config
from benchmarks.common import MISSING_INPUTS_EXIT, ROOT

SAMPLE = ROOT / "examples" / "sample_coins"
MODELS = ROOT / "models" / "release"
CLASSES = ("1c", "50c", "2e")


@pytest.fixture(scope="module")
def sample_split(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A materialised split of three euro_phone classes (2 catalog, 3 query, 2 train photos each, linked as
    ``coinvision data split --materialize`` links them), its labels and a segmenter config naming both."""
    root = tmp_path_factory.mktemp("scene_split")
    dataset = SAMPLE / "euro_phone"
    for cls in CLASSES:
        photos = sorted((dataset / "images" / cls).glob("*.jpg"))
        for split, chosen in (("catalog", photos[:2]), ("query", photos[2:5])):
            for photo in chosen:
                link = root / "split" / split / f"euro_phone__{cls}" / f"euro_phone__images__{cls}__{photo.name}"
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(photo.resolve())
        train = root / "split" / "train" / f"euro_phone__other_{cls}"
        train.mkdir(parents=True)
        for photo in photos[:2]:
            shutil.copy(photo, train / photo.name)
    label_datasets([dataset], root / "labels", progress=False)
    config = root / "segmenter.yaml"
    config.write_text(yaml.safe_dump({"data_roots": [str(dataset)], "backgrounds_root": str(SAMPLE / "backgrounds"),
                                      "labels_dir": str(root / "labels"), "size_px": 128}))
    return root / "split", config


def test_labelled_queries_follow_the_split_links_to_their_labels(sample_split, caplog) -> None:
    split, config = sample_split
    cfg = data_config(None, 128, config)
    photos, classes, masks = labelled_queries(split / "query", cfg)
    assert len(photos) == 9 and sorted(set(classes)) == sorted(f"euro_phone__{c}" for c in CLASSES)
    for photo, mask in zip(photos, masks, strict=True):
        assert mask.name == photo.resolve().with_suffix(".png").name
        assert load_mask(mask).shape == load_image(photo).shape[:2]
    unlabelled = split / "query" / "euro_phone__1c" / "unlabelled.jpg"
    shutil.copy(photos[0], unlabelled)  # a copy, not a link: no manifest row names it
    try:
        with caplog.at_level(logging.WARNING):
            assert len(labelled_queries(split / "query", cfg)[0]) == 9
        assert "1 of 10 query photos have no segmentation label" in caplog.text
    finally:
        unlabelled.unlink()


def test_scores_are_what_they_say_on_photos_shown_as_their_own_scenes(sample_split) -> None:
    """Each query photo is its own "scene", its label the auto-label: the pipeline's hit is then the photo's hit,
    and the true-mask and segmenter-miss columns add up."""
    split, config = sample_split
    cfg = data_config(None, 128, config)
    photos, classes, masks = labelled_queries(split / "query", cfg)
    scenes = SceneSet("photos", [load_image(p) for p in photos], [load_mask(m) for m in masks],
                      list(range(len(photos))))
    catalog = list_class_folder(split / "catalog")
    train = list_class_folder(split / "train")
    (row,) = score_models(MODELS, "tflite", 1, [scenes], photos, classes, catalog, train, sheet_dir=None)
    assert row["scenes"] == 9 and row["recall@1"] == row["recall@1 photo"]
    assert row["recall@1"] >= 5 / 9  # phone photos of euro coins against two catalogue photos per class
    assert row["recall@1 true mask"] == pytest.approx(row["recall@1"] + row["segmenter misses"]
                                                      - row["true mask misses"])
    assert row["iou@0.5"] > 0.85  # the release segmenter on clean single-coin photos, against Hough labels
    assert row["recall@1 with distractors"] <= row["recall@1"] + 1e-9  # more catalog coins can only take hits
    assert sum(b["scenes"] for b in row["by coin side"].values()) == 9
    corners = [np.zeros_like(label) for label in scenes.labels]  # a "label" on the background: the true mask
    for corner in corners:                                          # column must follow it, the pipeline not
        corner[:24, :24] = True
    (wrong,) = score_models(MODELS, "tflite", 1, [SceneSet("corners", scenes.images, corners, scenes.sources)],
                            photos, classes, catalog, train, sheet_dir=None)
    assert wrong["recall@1"] == row["recall@1"] and wrong["iou@0.5"] < 0.05
    assert wrong["recall@1 true mask"] < row["recall@1 true mask"]


def test_main_writes_every_set_for_every_models_folder(sample_split, tmp_path) -> None:
    split, config = sample_split
    out = tmp_path / "scene_recognition.json"
    assert main(["--split", str(split), "--data-config", str(config), "--scenes", "6", "--size-px", "256",
                 "--models", str(MODELS), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [row["set"] for row in result["table"]] == ["scenes 256 px", "2-5 coins 256 px"]
    assert result["results"]["query_photos"] == 9 and result["results"]["distractors"] == 6
    for row in result["table"]:
        assert row["scenes"] == 6
        for key in ("recall@1", "recall@1 true mask", "recall@1 photo", "iou@0.5", "segmenter misses"):
            assert 0.0 <= row[key] <= 1.0
        assert np.isclose(row["recall@1 true mask"],
                          row["recall@1"] + row["segmenter misses"] - row["true mask misses"])
        if row["segmenter misses"]:  # a contact sheet of them beside the JSON
            assert Path(row["sheet"]).is_file() and Path(row["sheet"]).parent == tmp_path
        else:
            assert "sheet" not in row


def test_missing_split_or_labels_is_reported_as_missing_inputs(sample_split, tmp_path, capsys) -> None:
    split, config = sample_split
    assert main(["--split", str(tmp_path / "nowhere"), "--data-config", str(config)]) == MISSING_INPUTS_EXIT
    assert "make split" in capsys.readouterr().err
    unlabelled = yaml.safe_load(config.read_text()) | {"labels_dir": str(tmp_path / "empty_labels")}
    (tmp_path / "empty_labels").mkdir()
    (tmp_path / "empty_labels" / "manifest.csv").write_text("dataset,file,mask,method,cx,cy,radius,score,refined\n")
    other = tmp_path / "segmenter.yaml"
    other.write_text(yaml.safe_dump(unlabelled))
    assert main(["--split", str(split), "--data-config", str(other)]) == MISSING_INPUTS_EXIT
    assert "has a segmentation label" in capsys.readouterr().err
