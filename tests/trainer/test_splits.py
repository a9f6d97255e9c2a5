from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest
from coinvision.sdk.errors import DatasetError
from coinvision.trainer.data import load_dataset
from coinvision.trainer.splits import (
    SplitConfig,
    make_splits,
    materialize_splits,
    read_splits,
    resolve_rows,
    write_splits,
)

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sample_coins"


@pytest.fixture(scope="module")
def datasets():
    return [load_dataset(SAMPLE / "coins211"), load_dataset(SAMPLE / "euro_phone")]


def test_make_splits_unseen_classes_never_reach_training(datasets) -> None:
    rows = make_splits(datasets, SplitConfig(seed=3))
    train_classes = {r.class_key for r in rows if r.split in ("train", "val_seen")}
    unseen = {r.class_key for r in rows if r.split in ("catalog", "query")}
    assert unseen and train_classes
    assert not train_classes & unseen
    for key in unseen:  # every unseen class has both references and queries
        splits = {r.split for r in rows if r.class_key == key}
        assert splits == {"catalog", "query"}


def test_make_splits_keeps_source_photo_groups_together(datasets) -> None:
    rows = make_splits(datasets, SplitConfig(seed=1))
    split_of_group: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        split_of_group[(r.dataset, r.group)].add(r.split)
    assert all(len(s) == 1 for s in split_of_group.values())


def test_make_splits_is_seeded(datasets) -> None:
    assert make_splits(datasets, SplitConfig(seed=5)) == make_splits(datasets, SplitConfig(seed=5))
    assert make_splits(datasets, SplitConfig(seed=5)) != make_splits(datasets, SplitConfig(seed=6))


def test_split_csv_round_trip_resolves_images(datasets, tmp_path: Path) -> None:
    rows = make_splits(datasets)
    path = write_splits(rows, tmp_path / "splits.csv")
    assert read_splits(path) == rows
    by_split = resolve_rows(rows, datasets)
    assert sum(len(v) for v in by_split.values()) == 160


def test_read_splits_rejects_unknown_split_names(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    path.write_text("dataset,file,class_key,group,split\nx,a.jpg,x/1,g,holdout\n")
    with pytest.raises(DatasetError, match="unknown split name"):
        read_splits(path)


def test_resolve_rows_names_a_missing_image(datasets, tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    path.write_text("dataset,file,class_key,group,split\ncoins211,images/1/gone.jpg,coins211/1,g,train\n")
    with pytest.raises(DatasetError, match=r"gone\.jpg has no image"):
        resolve_rows(read_splits(path), datasets)


def test_split_config_rejects_bad_fractions() -> None:
    with pytest.raises(ValueError, match="val_class_frac"):
        SplitConfig(val_class_frac=1.5)


def test_materialize_splits_links_each_photo_under_split_and_class(datasets, tmp_path: Path) -> None:
    rows = make_splits(datasets, SplitConfig(seed=2))
    counts = materialize_splits(rows, datasets, tmp_path / "split")
    assert counts == {s: sum(r.split == s for r in rows) for s in ("train", "val_seen", "catalog", "query")}
    query = sorted((tmp_path / "split" / "query").rglob("*.*"))
    assert len(query) == counts["query"]
    for link in query:  # <split>/<class>/<image>: the class folder is the label eval/parity tools read
        assert link.is_symlink() and link.resolve().is_file()
        assert "/" not in link.parent.name and link.parent.name.replace("__", "/", 1) in {r.class_key for r in rows}
    # a re-run with another seed replaces the links instead of failing on the old ones
    rows2 = make_splits(datasets, SplitConfig(seed=3))
    counts2 = materialize_splits(rows2, datasets, tmp_path / "split")
    assert sum(1 for p in (tmp_path / "split").rglob("*") if p.is_symlink()) == sum(counts2.values()) == len(rows2)
