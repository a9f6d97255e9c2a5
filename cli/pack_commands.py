"""``coinvision pack build`` (a folder of reference photos -> a pack, offline) and ``coinvision pack info``.

Catalog folder layouts accepted by ``pack build``:

- ``CATALOG_DIR/<coin_id>/<image>`` with an optional ``CATALOG_DIR/classes.csv``;
- the dataset layout ``CATALOG_DIR/images/<class_id>/<image>`` + ``CATALOG_DIR/classes.csv`` (the bundled
  samples in examples/sample_coins).

``classes.csv`` needs a ``class_id`` column (the coin id); ``label`` (or ``name``), ``country``, ``currency``,
``denomination``, ``side`` and ``years`` fill the coin record, any other non-empty column goes to ``extra``
(``n_images`` is a count, not metadata, and is ignored).
"""

from __future__ import annotations

import argparse
import csv
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from coinvision.cli.options import add_model_options, load_recognizer
from coinvision.sdk.errors import DatasetError, ImageError
from coinvision.sdk.files import IMAGE_SUFFIXES, list_images, write_atomic
from coinvision.sdk.pack import ALL_QUANTS, DELTA_MAGIC, FORMAT_VERSION, CoinRecord, Pack, read_delta, read_pack

__all__ = ["CatalogCoin", "register", "scan_catalog"]

log = logging.getLogger(__name__)
_RECORD_COLUMNS = ("country", "currency", "denomination", "side", "years")
_IGNORED_COLUMNS = frozenset({"class_id", "label", "name", "n_images"})


@dataclass(frozen=True)
class CatalogCoin:
    record: CoinRecord
    images: tuple[Path, ...]


def _read_classes_csv(path: Path) -> dict[str, CoinRecord]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: cannot read the classes CSV ({exc}); save it as UTF-8 CSV") from exc
    if rows and "class_id" not in rows[0]:
        raise DatasetError(f"{path}: no class_id column (found {', '.join(rows[0])}); name the coin id column class_id")
    records: dict[str, CoinRecord] = {}
    for line, row in enumerate(rows, start=2):
        coin_id = (row.get("class_id") or "").strip()
        if not coin_id:
            raise DatasetError(f"{path}:{line}: empty class_id; every row needs the coin id")
        if coin_id in records:
            raise DatasetError(f"{path}:{line}: class_id {coin_id!r} appears twice; keep one row per coin")
        values = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
        extra = {k: v for k, v in sorted(values.items()) if k and v and k not in _IGNORED_COLUMNS
                 and k not in _RECORD_COLUMNS}
        records[coin_id] = CoinRecord(
            coin_id=coin_id, label=values.get("label") or values.get("name", ""),
            **{c: values.get(c, "") for c in _RECORD_COLUMNS}, extra=extra,
        )
    return records


def _images_in(folder: Path) -> tuple[Path, ...]:
    return tuple(list_images(folder, recursive=False, required=False))


def scan_catalog(catalog_dir: Path) -> tuple[list[CatalogCoin], list[str]]:
    """The coins (sorted by id) with their reference photos, and warnings (coins listed without photos...)."""
    catalog_dir = Path(catalog_dir)
    if not catalog_dir.is_dir():
        raise DatasetError(f"catalog folder {catalog_dir} does not exist; pass a folder of <coin_id>/<image> photos")
    images_dir = catalog_dir / "images"
    dataset_layout = images_dir.is_dir() and any(p.is_dir() for p in images_dir.iterdir())
    coins_root = images_dir if dataset_layout else catalog_dir
    classes_csv = catalog_dir / "classes.csv"
    records = _read_classes_csv(classes_csv) if classes_csv.is_file() else {}
    coins: list[CatalogCoin] = []
    warnings: list[str] = []
    for folder in sorted(p for p in coins_root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = _images_in(folder)
        if not images:
            warnings.append(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}); coin {folder.name!r} skipped")
            continue
        coins.append(CatalogCoin(records.get(folder.name, CoinRecord(coin_id=folder.name)), images))
    found = {c.record.coin_id for c in coins}
    unlisted = sorted(set(records) - found)
    if unlisted:
        warnings.append(f"{len(unlisted)} coins of classes.csv have no image folder: {', '.join(unlisted[:10])}")
    if not coins:
        layout = "images/<class_id>/<image>" if dataset_layout else "<coin_id>/<image>"
        raise DatasetError(f"{catalog_dir}: no coin folder with images found; lay the catalog out as {layout}")
    return coins, warnings


def _cmd_build(args: argparse.Namespace) -> int:
    import numpy as np
    from coinvision.sdk import pack as packlib
    from coinvision.sdk.images import load_image
    from tqdm import tqdm

    coins, warnings = scan_catalog(args.catalog_dir)
    for warning in warnings:
        print(f"warning: {warning}")
    recognizer = load_recognizer(args)
    vectors: list[np.ndarray] = []
    vector_coins: list[str] = []
    no_coin: list[Path] = []
    unreadable: list[str] = []
    jobs = [(coin, path) for coin in coins for path in coin.images]
    for coin, path in tqdm(jobs, desc="embedding", unit="img"):
        try:
            emb = recognizer.embed(load_image(path))
        except ImageError as exc:
            unreadable.append(str(exc))
            continue
        if not emb.segmentation.found:
            no_coin.append(path)
        vectors.append(np.asarray(emb.vector, dtype=np.float32))
        vector_coins.append(coin.record.coin_id)
    embedded = set(vector_coins)
    dropped = [c.record.coin_id for c in coins if c.record.coin_id not in embedded]
    if not vectors:
        raise DatasetError(f"{args.catalog_dir}: none of the {len(jobs)} images could be read; nothing to pack")
    pack = packlib.Pack.from_vectors(
        np.stack(vectors), vector_coins, [c.record for c in coins if c.record.coin_id in embedded],
        catalog_id=args.catalog_id or Path(args.catalog_dir).resolve().name, catalog_version=args.catalog_version,
        model_fingerprint=recognizer.fingerprint, quant=args.quant, created_at=args.created_at,
    )
    data = pack.to_bytes()
    write_atomic(args.out, data)
    print(f"images:   {len(jobs)} found, {len(vectors)} embedded, {len(no_coin)} with no coin found "
          f"(whole photo embedded), {len(unreadable)} unreadable (skipped)")
    for problem in unreadable[:10]:
        print(f"  skipped: {problem}")
    if dropped:
        print(f"coins dropped (no readable image): {', '.join(dropped[:10])}")
    print(f"wrote {args.out}: catalog {pack.catalog_id!r} v{pack.catalog_version}, {pack.coin_count} coins, "
          f"{pack.vector_count} vectors, {pack.quant}, dim {pack.dim}, model {pack.model_fingerprint}, "
          f"{len(data)} bytes, sha256 {pack.sha256}")
    return 0


def _print_pack(path: Path, pack: Pack, coins_shown: int) -> None:
    data = pack.to_bytes()
    vec_bytes = pack.vector_bytes
    created = datetime.fromtimestamp(pack.created_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    n = max(pack.vector_count, 1)
    print(f"pack:         {path}")
    print(f"format:       v{FORMAT_VERSION} {pack.quant}, metric {pack.metric}, dim {pack.dim}")
    print(f"catalog:      {pack.catalog_id} v{pack.catalog_version} (created {created})")
    print(f"model:        {pack.model_fingerprint}")
    print(f"counts:       {pack.coin_count} coins, {pack.vector_count} vectors")
    print(f"size:         {len(data)} bytes = header 64 + vectors {vec_bytes} + coin table "
          f"{len(data) - 96 - vec_bytes} + sha256 32")
    print(f"bytes/vector: {vec_bytes / n:.1f} (vector + coin index{' + scale' if pack.quant == 'int8' else ''}), "
          f"{len(data) / n:.1f} with the coin table")
    print(f"sha256:       {pack.sha256}")
    per_coin: dict[str, int] = {}
    for cid in pack.coin_ids:
        per_coin[cid] = per_coin.get(cid, 0) + 1
    countries = sorted({r.country for r in pack.records.values() if r.country})
    print(f"coin table:   {pack.coin_count} coins, {len(countries)} countries"
          + (f" ({', '.join(countries[:8])}{', ...' if len(countries) > 8 else ''})" if countries else ""))
    records = list(pack.records.values())[:coins_shown]
    if records:
        width = max(len("coin_id"), *(len(r.coin_id) for r in records))
        print(f"  {'coin_id':<{width}}  vectors  label / country / currency / denomination / side / years")
        for r in records:
            fields = " / ".join(x for x in (r.label, r.country, r.currency, r.denomination, r.side, r.years) if x)
            extra = f"  {r.extra}" if r.extra else ""
            print(f"  {r.coin_id:<{width}}  {per_coin[r.coin_id]:>7}  {fields}{extra}")
        if pack.coin_count > len(records):
            print(f"  ... {pack.coin_count - len(records)} more (--coins N to show more)")


def _cmd_info(args: argparse.Namespace) -> int:
    path: Path = args.pack
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError:
        magic = b""  # read_pack names the problem
    if magic == DELTA_MAGIC:
        d = read_delta(path)
        print(f"delta:       {path} ({path.stat().st_size} bytes)")
        print(f"catalog:      {d.catalog_id} v{d.base_version} -> v{d.new_version}, {d.quant}, dim {d.dim}")
        print(f"model:        {d.model_fingerprint}")
        print(f"removed:     {len(d.removed)} coins {', '.join(d.removed[:10])}")
        print(f"added/changed: {len(d.upserts)} coins, {len(d.coin_index)} vectors "
              f"{', '.join(r.coin_id for r in d.upserts[:10])}")
        print(f"base sha256: {d.base_sha256}")
        print(f"new sha256:  {d.new_sha256}")
        return 0
    _print_pack(path, read_pack(path), args.coins)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    pack = sub.add_parser("pack", help="build and inspect catalog embedding packs")
    pack_sub = pack.add_subparsers(dest="pack_command", metavar="ACTION", required=True)

    build = pack_sub.add_parser("build", help="embed a folder of reference photos into a pack (offline)")
    build.add_argument("catalog_dir", type=Path,
                       help="<coin_id>/<image> folders (or images/<class_id>/...), optional classes.csv")
    build.add_argument("--out", type=Path, required=True, help="pack file to write")
    build.add_argument("--quant", choices=ALL_QUANTS, default="int8", help="vector storage (default int8)")
    add_model_options(build)
    build.add_argument("--catalog-id", default=None, help="default: the catalog folder's name")
    build.add_argument("--catalog-version", type=int, default=1)
    build.add_argument("--created-at", type=int, default=None, help="unix seconds (default now; fix it for "
                       "reproducible bytes)")
    build.set_defaults(func=_cmd_build)

    info = pack_sub.add_parser("info", help="header, counts, bytes/vector, sha256 and coin table of a pack")
    info.add_argument("pack", type=Path, help="pack (or delta) file")
    info.add_argument("--coins", type=int, default=20, help="coins listed (default 20)")
    info.set_defaults(func=_cmd_info)
