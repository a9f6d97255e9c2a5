"""Coin datasets on disk -> typed records.

A dataset folder holds ``images/<class_id>/<file>`` and ``classes.csv`` (``class_id,name,...``), and
optionally ``manifest.csv`` (``file,class_id[,source_photo]``) that groups crops of one source photo.

Class rules of the design: each side of a coin is its own class; issues that differ only by year are one
class; a commemorative design is its own class. A :class:`CoinClass` is therefore ``coin_id`` + ``side``;
sets that do not label the side use ``side="unknown"``.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path

from coinvision.sdk.errors import DatasetError
from coinvision.sdk.files import IMAGE_SUFFIXES
from PIL import Image, UnidentifiedImageError

__all__ = ["CoinClass", "CoinDataset", "CoinImage", "list_backgrounds", "load_dataset"]

log = logging.getLogger(__name__)

REQUIRED_CLASS_COLUMNS = ("class_id", "name")
# Sets whose images show one known side. euro_phone shows the common (value) side, numbered "reverse"
# as catalogues (Numista, uCoin) do; the national side is the obverse.
KNOWN_SIDES = {"euro_phone": "reverse"}


@dataclass(frozen=True)
class CoinClass:
    dataset: str
    class_id: str  # as in classes.csv
    name: str  # denomination as written, e.g. "5 Cents"
    country: str = ""
    currency: str = ""
    side: str = "unknown"  # "obverse" | "reverse" | "unknown"

    @property
    def key(self) -> str:
        """Globally unique class key, ``<dataset>/<class_id>``."""
        return f"{self.dataset}/{self.class_id}"

    @property
    def coin_id(self) -> str:
        """The coin (both sides share it); equals :attr:`key` while sides are unlabelled."""
        return self.key

    @property
    def denomination(self) -> str:
        return self.name

    @property
    def label(self) -> str:
        parts = [self.name, self.currency if self.currency else "", self.country]
        return ", ".join(p for p in parts if p)


@dataclass(frozen=True)
class CoinImage:
    path: Path
    coin_class: CoinClass
    group: str  # images of one group (a source photo) always land in the same split

    @property
    def class_key(self) -> str:
        return self.coin_class.key

    @property
    def label(self) -> str:
        return self.coin_class.label


@dataclass
class CoinDataset:
    name: str
    root: Path
    classes: dict[str, CoinClass]  # class_id -> class
    images: list[CoinImage]
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def images_per_class(self) -> dict[str, int]:
        counts = {cid: 0 for cid in self.classes}
        for img in self.images:
            counts[img.coin_class.class_id] += 1
        return counts


def _read_csv(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise DatasetError(
                    f"{path}: missing column(s) {missing}; the header must include {list(required)}"
                )
            return list(reader)
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc}); save it as UTF-8 CSV") from exc


def _image_ok(path: Path) -> str | None:
    """None when the file decodes as an image header, else the reason."""
    if path.stat().st_size == 0:
        return "empty file"
    try:
        with Image.open(path) as im:
            im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return f"not a readable image ({exc.__class__.__name__})"
    return None


def load_dataset(root: str | Path, *, name: str | None = None, verify_images: bool = True) -> CoinDataset:
    """Load ``root`` (``images/<class_id>/*`` + ``classes.csv``). Corrupt images are skipped and counted."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} does not exist; pass the folder that holds images/ and classes.csv")
    classes_csv = root / "classes.csv"
    if not classes_csv.is_file():
        raise DatasetError(f"{classes_csv} is missing; a dataset needs classes.csv with columns class_id,name")
    images_dir = root / "images"
    if not images_dir.is_dir():
        raise DatasetError(f"{images_dir} is missing; put images under images/<class_id>/<file>")
    name = name or root.name
    side = KNOWN_SIDES.get(name, "unknown")
    classes: dict[str, CoinClass] = {}
    for row in _read_csv(classes_csv, REQUIRED_CLASS_COLUMNS):
        cid = row["class_id"].strip()
        classes[cid] = CoinClass(
            dataset=name,
            class_id=cid,
            name=row["name"].strip(),
            country=(row.get("country") or "").strip(),
            currency=(row.get("currency") or "").strip(),
            side=(row.get("side") or side).strip() or side,
        )
    groups: dict[str, str] = {}
    manifest = root / "manifest.csv"
    if manifest.is_file():
        for row in _read_csv(manifest, ("file",)):
            if row.get("source_photo"):
                groups[row["file"]] = row["source_photo"]

    images: list[CoinImage] = []
    skipped: list[tuple[Path, str]] = []
    for class_dir in sorted(p for p in images_dir.iterdir() if p.is_dir()):
        if class_dir.name not in classes:
            raise DatasetError(
                f"{class_dir}: class id {class_dir.name!r} is not in {classes_csv}; add a row for it or "
                "remove the folder"
            )
        files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DatasetError(f"{class_dir}: class folder has no images (.jpg/.png/...); add images or remove it")
        for path in files:
            reason = _image_ok(path) if verify_images else None
            if reason:
                log.warning("skipping %s: %s", path, reason)
                skipped.append((path, reason))
                continue
            rel = path.relative_to(root).as_posix()
            images.append(CoinImage(path=path, coin_class=classes[class_dir.name], group=groups.get(rel, rel)))
    if not images:
        raise DatasetError(f"{root}: no readable images found under images/<class_id>/")
    present = {img.coin_class.class_id for img in images}
    classes = {cid: c for cid, c in classes.items() if cid in present}
    return CoinDataset(name=name, root=root, classes=classes, images=images, skipped=skipped)


def list_backgrounds(root: str | Path) -> list[Path]:
    """Coin-free background photos: ``root/images/*`` (or ``root/*``)."""
    root = Path(root)
    base = root / "images" if (root / "images").is_dir() else root
    if not base.is_dir():
        raise DatasetError(f"background folder {root} does not exist")
    files = sorted(p for p in base.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DatasetError(f"{base}: no background images found")
    return files
