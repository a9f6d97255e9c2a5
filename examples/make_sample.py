"""Rebuild ``examples/sample_coins`` (the bundled sample) from the full data set.

    python examples/make_sample.py ../shared/data

Seeded: 24 coins211 classes and all 8 euro_phone classes, 5 images each (euro: 5 different source
photos), and 4 backgrounds. Same layout as the full sets, so every loader works on it.
"""

from __future__ import annotations

import argparse
import csv
import random
import shutil
from pathlib import Path

from coinvision.trainer.data import list_backgrounds, load_dataset

OUT = Path(__file__).resolve().parent / "sample_coins"


def _copy_set(src_root: Path, n_classes: int | None, per_class: int, rng: random.Random) -> None:
    ds = load_dataset(src_root)
    dst = OUT / ds.name
    class_ids = sorted(ds.classes)
    if n_classes is not None:
        class_ids = sorted(rng.sample(class_ids, n_classes))
    rows = []
    for cid in class_ids:
        imgs = [i for i in ds.images if i.coin_class.class_id == cid]
        by_group: dict[str, list] = {}
        for img in imgs:
            by_group.setdefault(img.group, []).append(img)
        groups = sorted(by_group)
        rng.shuffle(groups)
        for g in groups[:per_class]:
            img = by_group[g][0]
            rel = img.path.relative_to(ds.root)
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(img.path, dst / rel)
            rows.append((rel.as_posix(), cid, g))
    with (src_root / "classes.csv").open(newline="") as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        kept = [r for r in reader if r["class_id"] in class_ids]
    with (dst / "classes.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(kept)
    with (dst / "manifest.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "class_id", "source_photo"])
        writer.writerows(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data_root", type=Path, help="folder holding coins211/, euro_phone/, backgrounds/")
    args = parser.parse_args()
    rng = random.Random(20261122)
    if OUT.exists():
        shutil.rmtree(OUT)
    _copy_set(args.data_root / "coins211", 24, 5, rng)
    _copy_set(args.data_root / "euro_phone", None, 5, rng)
    bg_dst = OUT / "backgrounds" / "images"
    bg_dst.mkdir(parents=True)
    for path in rng.sample(list_backgrounds(args.data_root / "backgrounds"), 4):
        shutil.copyfile(path, bg_dst / path.name)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
