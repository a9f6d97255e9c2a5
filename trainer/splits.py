"""Seeded, group-wise splits written to CSV so every tool evaluates on the same images.

- ``train`` / ``val_seen``: images of training classes (``val_seen`` = held-out groups, for validation loss);
- ``catalog`` / ``query``: classes never seen in training; per class, some groups become the catalog
  (reference images) and the rest are queries. This is the retrieval test of the design.

Splitting is by ``group`` (a source photo; every image is its own group where no manifest says so), so
crops of one photo never sit on both sides of a split.
"""

from __future__ import annotations

import csv
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from coinvision.sdk.errors import DatasetError
from coinvision.trainer.data import CoinDataset, CoinImage

__all__ = [
    "SPLITS",
    "SplitConfig",
    "SplitRow",
    "make_splits",
    "materialize_splits",
    "read_splits",
    "resolve_rows",
    "write_splits",
]

SPLITS = ("train", "val_seen", "catalog", "query")
CSV_COLUMNS = ("dataset", "file", "class_key", "group", "split")


@dataclass(frozen=True)
class SplitConfig:
    seed: int = 0
    val_class_frac: float = 0.2  # per dataset, share of classes held out of training entirely
    val_seen_frac: float = 0.15  # per training class, share of groups held out for validation loss
    catalog_groups_per_class: int = 3  # per unseen class, groups that form the catalog; the rest are queries

    def __post_init__(self) -> None:
        if not 0.0 < self.val_class_frac < 1.0:
            raise ValueError(f"val_class_frac={self.val_class_frac}: must be in (0, 1)")
        if not 0.0 <= self.val_seen_frac < 1.0:
            raise ValueError(f"val_seen_frac={self.val_seen_frac}: must be in [0, 1)")
        if self.catalog_groups_per_class < 1:
            raise ValueError("catalog_groups_per_class must be >= 1")


@dataclass(frozen=True)
class SplitRow:
    dataset: str
    file: str  # relative to the dataset root
    class_key: str
    group: str
    split: str


def _by_group(images: list[CoinImage]) -> dict[str, list[CoinImage]]:
    groups: dict[str, list[CoinImage]] = defaultdict(list)
    for img in images:
        groups[img.group].append(img)
    return groups


def make_splits(datasets: list[CoinDataset], cfg: SplitConfig = SplitConfig()) -> list[SplitRow]:
    rng = random.Random(cfg.seed)
    rows: list[SplitRow] = []
    for ds in datasets:
        by_class: dict[str, list[CoinImage]] = defaultdict(list)
        for img in ds.images:
            by_class[img.coin_class.class_id].append(img)
        class_ids = sorted(by_class)
        rng.shuffle(class_ids)
        n_val = max(1, round(cfg.val_class_frac * len(class_ids))) if len(class_ids) >= 2 else 0
        val_classes = set(class_ids[:n_val])
        for cid in sorted(by_class):
            groups = _by_group(by_class[cid])
            names = sorted(groups)
            rng.shuffle(names)
            if cid in val_classes:
                n_catalog = min(cfg.catalog_groups_per_class, max(1, len(names) - 1))
                assignment = {g: ("catalog" if i < n_catalog else "query") for i, g in enumerate(names)}
            else:
                n_seen = int(cfg.val_seen_frac * len(names))
                if n_seen == 0 and cfg.val_seen_frac > 0 and len(names) >= 3:
                    n_seen = 1
                assignment = {g: ("val_seen" if i < n_seen else "train") for i, g in enumerate(names)}
            for g in sorted(groups):
                for img in groups[g]:
                    rows.append(
                        SplitRow(ds.name, img.path.relative_to(ds.root).as_posix(), img.class_key, g, assignment[g])
                    )
    return rows


def write_splits(rows: list[SplitRow], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS)
        for r in rows:
            writer.writerow([r.dataset, r.file, r.class_key, r.group, r.split])
    return path


def read_splits(path: str | Path) -> list[SplitRow]:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"split file {path} does not exist; create it with `coinvision data split`")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(f"{path}: missing column(s) {missing}; expected {list(CSV_COLUMNS)}")
        rows = [SplitRow(**{c: row[c] for c in CSV_COLUMNS}) for row in reader]
    bad = sorted({r.split for r in rows} - set(SPLITS))
    if bad:
        raise DatasetError(f"{path}: unknown split name(s) {bad}; valid: {list(SPLITS)}")
    return rows


def resolve_rows(rows: list[SplitRow], datasets: list[CoinDataset]) -> dict[str, list[CoinImage]]:
    """Split name -> images, matching rows to loaded datasets (fails if a row's image is missing)."""
    index = {(ds.name, img.path.relative_to(ds.root).as_posix()): img for ds in datasets for img in ds.images}
    out: dict[str, list[CoinImage]] = {s: [] for s in SPLITS}
    for r in rows:
        img = index.get((r.dataset, r.file))
        if img is None:
            raise DatasetError(
                f"split row {r.dataset}/{r.file} has no image in the loaded datasets; regenerate the split "
                "file for this data (coinvision data split)"
            )
        out[r.split].append(img)
    return out


def class_folder_name(class_key: str) -> str:
    """``coins211/42`` -> ``coins211__42``: one folder level per class, as ``<class>/<image>`` tools expect."""
    return class_key.replace("/", "__")


def materialize_splits(rows: list[SplitRow], datasets: list[CoinDataset], out_dir: str | Path) -> dict[str, int]:
    """Lay the split out as ``out_dir/<split>/<class>/<dataset>__<image>`` symlinks; returns images per split.

    This is the ``<class>/<image>`` layout that ``coinvision eval retrieval`` and ``coinvision export
    --check-images`` read, so every tool can evaluate on exactly the trainer's held-out classes without copying
    the photos. Re-running replaces the links (the split may have changed), never the photos they point to.
    """
    out_dir = Path(out_dir)
    resolve_rows(rows, datasets)  # fails, naming the row, before any link is touched
    roots = {ds.name: ds.root for ds in datasets}
    for split in SPLITS:
        if (out_dir / split).exists():
            for old in (out_dir / split).rglob("*"):
                if old.is_symlink():
                    old.unlink()
    counts = dict.fromkeys(SPLITS, 0)
    for r in rows:
        dest = out_dir / r.split / class_folder_name(r.class_key) / f"{r.dataset}__{r.file.replace('/', '__')}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.symlink_to((roots[r.dataset] / r.file).resolve())
        counts[r.split] += 1
    return counts
