"""Trainer subcommands: ``data``. Heavy imports (torch) happen inside the handlers."""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

__all__ = ["register"]


def _cmd_data_stats(args: argparse.Namespace) -> int:
    from coinvision.trainer.data import load_dataset
    from coinvision.trainer.splits import SplitConfig, make_splits

    ds = load_dataset(args.root)
    counts = ds.images_per_class()
    print(f"dataset {ds.name} at {ds.root}")
    print(f"  classes: {len(ds.classes)}")
    print(f"  images:  {len(ds.images)}  (per class min {min(counts.values())}, max {max(counts.values())})")
    print(f"  groups:  {len({i.group for i in ds.images})} (source photos; splits never separate a group)")
    print(f"  skipped: {len(ds.skipped)} unreadable file(s)")
    for path, reason in ds.skipped[:10]:
        print(f"    {path}: {reason}")
    rows = make_splits([ds], SplitConfig(seed=args.seed))
    by_split = Counter(r.split for r in rows)
    classes_by_split = {s: len({r.class_key for r in rows if r.split == s}) for s in by_split}
    print(f"  splits (seed {args.seed}):")
    for split in ("train", "val_seen", "catalog", "query"):
        print(f"    {split:9s} {by_split.get(split, 0):6d} images  {classes_by_split.get(split, 0):4d} classes")
    return 0


def _cmd_data_split(args: argparse.Namespace) -> int:
    from coinvision.trainer.data import load_dataset
    from coinvision.trainer.splits import SplitConfig, make_splits, write_splits

    datasets = [load_dataset(root) for root in args.roots]
    rows = make_splits(datasets, SplitConfig(seed=args.seed, val_class_frac=args.val_class_frac))
    path = write_splits(rows, args.out)
    print(f"wrote {len(rows)} rows to {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="inspect datasets and write splits")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    stats = data_sub.add_parser("stats", help="class/image counts and split sizes of a dataset")
    stats.add_argument("root", type=Path, help="dataset folder (images/<class_id>/..., classes.csv)")
    stats.add_argument("--seed", type=int, default=0)
    stats.set_defaults(func=_cmd_data_stats)

    split = data_sub.add_parser("split", help="write the seeded train/val/catalog/query split CSV")
    split.add_argument("roots", type=Path, nargs="+", help="dataset folders")
    split.add_argument("--out", type=Path, required=True, help="CSV to write")
    split.add_argument("--seed", type=int, default=0)
    split.add_argument("--val-class-frac", type=float, default=0.2)
    split.set_defaults(func=_cmd_data_split)
