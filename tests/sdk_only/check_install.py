"""Run by `make sdk-only` with the python of a FRESH venv holding only `pip install ".[sdk]"`: the SDK installs and
works alone — its public imports, the release models found from any working directory, and every SDK command on
the bundled sample photos — with no torch, tensorflow or faiss present.

Plain Python (no pytest: the SDK venv has only the SDK's dependencies). Exits non-zero on the first failure.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sample_coins" / "euro_phone"
COINVISION = Path(sys.executable).with_name("coinvision")


def run(*args: str, cwd: Path) -> str:
    print("$ coinvision " + " ".join(args), flush=True)
    out = subprocess.run([str(COINVISION), *args], cwd=cwd, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise SystemExit(f"FAILED (exit {out.returncode}): coinvision {' '.join(args)}\n{out.stdout}\n{out.stderr}")
    return out.stdout


def check(condition: bool, what: str) -> None:
    if not condition:
        raise SystemExit(f"FAILED: {what}")
    print(f"ok: {what}", flush=True)


def split_sample(root: Path) -> tuple[Path, Path]:
    """catalog = the first 2 photos of each class, query = the rest (<class>/<image> folders)."""
    catalog, query = root / "catalog", root / "query"
    for class_dir in sorted(p for p in (SAMPLE / "images").iterdir() if p.is_dir()):
        for i, photo in enumerate(sorted(class_dir.glob("*.jpg"))):
            target = (catalog if i < 2 else query) / class_dir.name / photo.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(photo, target)
    return catalog, query


def main() -> int:
    for heavy in ("torch", "tensorflow", "faiss", "timm", "flask"):
        check(importlib.util.find_spec(heavy) is None, f"{heavy} is not installed in the SDK-only venv")
    from coinvision.sdk import Pack, Recognizer, SyncClient, default_models_dir, read_pack  # the public names

    check(all((Pack, Recognizer, SyncClient)), "from coinvision.sdk import Recognizer, Pack, SyncClient")
    sdk_dir = Path(importlib.util.find_spec("coinvision.sdk").submodule_search_locations[0])
    check((sdk_dir / "py.typed").is_file(), f"py.typed ships ({sdk_dir})")
    models = default_models_dir()
    check((models / "segmenter.tflite").is_file() and "site-packages" in str(models),
          f"release models installed with the package ({models})")

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)  # not the checkout: nothing may depend on the working directory
        catalog, query = split_sample(work)
        out = run("segment", str(SAMPLE / "images"), "--out", str(work / "masks"), "--quiet", cwd=work)
        check(len(list((work / "masks").rglob("*.png"))) == 40 and "wrote 40 mask(s)" in out, "segment: 40 masks")
        out = run("embed", str(SAMPLE / "images"), "--out", str(work / "vectors.npz"), "--quiet", cwd=work)
        check("wrote" in out and (work / "vectors.npz").is_file(), "embed: vectors.npz")
        run("pack", "build", str(catalog), "--out", str(work / "catalog.pack"), "--created-at", "0", cwd=work)
        out = run("pack", "info", str(work / "catalog.pack"), cwd=work)
        pack = read_pack(work / "catalog.pack")
        check(len(pack.records) == 8 and pack.catalog_id in out, "pack build + info: an 8-coin pack")
        photos = sorted(query.rglob("*.jpg"))
        out = run("recognize", *map(str, photos), "--pack", str(work / "catalog.pack"), "--json", cwd=work)
        results = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        right = sum(r["matches"][0]["coin_id"] == Path(r["image"]).parent.name for r in results)
        check(len(results) == len(photos), f"recognize: {len(results)} answers, {right} right at rank 1")
        # an install check, not the quality figure (models/release/README.md): 18 of 24 with this release (19 with
        # the previous segmenter), whose frozen embedder branch trades some accuracy on trained coins (the euros
        # here) for coins the model never saw; the bound leaves two photos of room for another CPU's int8 kernels
        check(right >= len(photos) * 2 / 3, "recognize: the sample's euro coins are named (>= 2/3 at rank 1)")
        out = run("eval", "retrieval", str(catalog), str(query), cwd=work)
        check("Recall@k" in out and "MAP@R" in out, "eval retrieval: numpy scoring without faiss")
        print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
