from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from coinvision.sdk.errors import DatasetError
from coinvision.trainer.data import list_backgrounds, load_dataset

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sample_coins"


def _copy(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(SAMPLE / name, tmp_path / name))


def test_load_dataset_reads_sample_records() -> None:
    ds = load_dataset(SAMPLE / "coins211")
    assert len(ds.classes) == 24
    assert len(ds.images) == 120
    first = ds.images[0]
    assert first.path.is_file()
    assert first.coin_class.country and first.coin_class.currency
    assert first.class_key == f"coins211/{first.coin_class.class_id}"
    assert first.coin_class.side == "unknown"
    assert first.label.startswith(first.coin_class.denomination)


def test_load_dataset_groups_euro_phone_by_source_photo() -> None:
    ds = load_dataset(SAMPLE / "euro_phone")
    assert {c.side for c in ds.classes.values()} == {"reverse"}
    groups = [img.group for img in ds.images]
    assert all(g.startswith("IMG_") for g in groups)


def test_load_dataset_missing_root_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nope")


def test_load_dataset_missing_column_names_the_file(tmp_path: Path) -> None:
    root = _copy("coins211", tmp_path)
    (root / "classes.csv").write_text("id,title\n1,x\n")
    with pytest.raises(DatasetError, match=r"classes\.csv: missing column"):
        load_dataset(root)


def test_load_dataset_unknown_class_folder_names_the_fix(tmp_path: Path) -> None:
    root = _copy("coins211", tmp_path)
    src = next((root / "images").iterdir())
    shutil.copytree(src, root / "images" / "99999")
    with pytest.raises(DatasetError, match=r"'99999' is not in .*classes\.csv; add a row"):
        load_dataset(root)


def test_load_dataset_empty_class_folder_is_an_error(tmp_path: Path) -> None:
    root = _copy("coins211", tmp_path)
    folder = next((root / "images").iterdir())
    for f in folder.iterdir():
        f.unlink()
    with pytest.raises(DatasetError, match="has no images"):
        load_dataset(root)


def test_load_dataset_skips_and_counts_corrupt_images(tmp_path: Path) -> None:
    root = _copy("coins211", tmp_path)
    folder = next((root / "images").iterdir())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    (folder / "empty.png").write_bytes(b"")
    ds = load_dataset(root)
    assert len(ds.images) == 120
    assert sorted(p.name for p, _ in ds.skipped) == ["broken.jpg", "empty.png"]


def test_list_backgrounds_finds_sample_photos(tmp_path: Path) -> None:
    assert len(list_backgrounds(SAMPLE / "backgrounds")) == 4
    with pytest.raises(DatasetError, match="no background images"):
        list_backgrounds(tmp_path)
