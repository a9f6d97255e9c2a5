"""Writes sdk_kotlin/testdata/decoded/<photo id>.png: each conformance photo decoded by the reference SDK
(coinvision.sdk.images.load_image: Pillow/libjpeg-turbo, EXIF orientation, RGB), stored losslessly as PNG.

The Kotlin conformance test compares javax.imageio's JPEG decoding with these pixels (a few levels apart) and starts
the later stages from them, so a decoder difference cannot hide a pipeline bug. Uses only the public Python SDK.

    OMP_NUM_THREADS=1 .venv/bin/python sdk_kotlin/tools/gen_decoded.py
"""

from __future__ import annotations

import json
from pathlib import Path

from coinvision.sdk.images import load_image
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "sdk_kotlin" / "testdata" / "decoded"


def main() -> None:
    kit = json.loads((ROOT / "conformance" / "kit.json").read_text())
    OUT.mkdir(parents=True, exist_ok=True)
    for photo in kit["photos"]:
        rgb = load_image(ROOT / "conformance" / photo["file"])
        Image.fromarray(rgb).save(OUT / f"{photo['id']}.png", optimize=True)
        print(photo["id"], rgb.shape)


if __name__ == "__main__":
    main()
