"""How far a release's embedding moves when the same photo is decoded from slightly different bytes.

Phones decode JPEG with different libraries (libjpeg-turbo, ImageIO, jpeg-js in the TypeScript SDK), a level or two
apart per pixel; a crop that moves the vector far moves scores near the unknown threshold and swaps close coins.
Each sample photo is embedded as loaded and after one JPEG re-encode at each ``--quality`` (Pillow), through each
``--models`` folder's SDK pipeline (TFLite int8, one thread); the table gives the cosine between the two vectors.

    git worktree add /tmp/prev 8c5f0cd   # the release before the whitening
    python -m benchmarks.bench_embed_stability --models /tmp/prev/models/release models/release   # ~1 min
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS_DIR, ROOT, write_result

__all__ = ["main", "reencode"]


def reencode(rgb: np.ndarray, quality: int) -> np.ndarray:
    """``rgb`` after one JPEG round trip at ``quality`` (Pillow)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, nargs="+", default=[ROOT / "models" / "release"])
    parser.add_argument("--photos", type=Path, default=ROOT / "examples" / "sample_coins")
    parser.add_argument("--count", type=int, default=60, help="photos (the first, sorted by path)")
    parser.add_argument("--quality", type=int, nargs="+", default=[95, 85])
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "embed_stability.json")
    args = parser.parse_args(argv)
    from coinvision.sdk import Recognizer
    from coinvision.sdk.images import load_image

    photos = sorted(args.photos.rglob("*.jpg"))[:args.count]
    table = []
    for models in args.models:
        recognizer = Recognizer.from_dir(models, runtime="tflite", num_threads=1)
        for quality in args.quality:
            cosines = []
            for path in photos:
                rgb = load_image(path)
                a, b = recognizer.embed(rgb).vector, recognizer.embed(reencode(rgb, quality)).vector
                cosines.append(float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)))
            c = np.array(cosines)
            row = {"models": str(models), "embedder": recognizer.embedder_meta.fingerprint, "jpeg_quality": quality,
                   "cosine mean": float(c.mean()), "cosine p10": float(np.percentile(c, 10)),
                   "cosine min": float(c.min())}
            print(" | ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()),
                  flush=True)
            table.append(row)
    path = write_result("embed_stability", {"photos": len(photos), "source": str(args.photos)}, table, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
