"""Write ``far_coin.png``: a sample coin photographed "from afar" (one sample coin, cut out with its auto-label,
pasted at 78 px across onto a 480x360 sample background). The shipped segmenter's whole-photo pass (128 px)
finds no coin in it; the tiles of docs/PIPELINE_SPEC.md step 2.3 do. The conformance kit uses it.

    python examples/sample_coins/scenes/compose.py
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from coinvision.sdk.images import load_image
from coinvision.trainer.seg_labels import auto_label

HERE = Path(__file__).resolve().parent
COIN = HERE.parent / "euro_phone" / "images" / "2e" / "00b4afe9920a.jpg"
BACKGROUND = HERE.parent / "backgrounds" / "images" / "0377076314c8.jpg"
SIZE_WH = (480, 360)
COIN_PX = 78
TOP_LEFT_XY = (90, 72)


def compose() -> np.ndarray:
    coin = load_image(COIN)
    mask = auto_label(coin).mask
    if mask is None:
        raise SystemExit(f"{COIN}: auto_label found no coin")
    ys, xs = np.nonzero(mask)
    box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    coin, mask = coin[box], mask[box]
    coin = cv2.resize(coin, (COIN_PX, COIN_PX), interpolation=cv2.INTER_AREA)
    mask = cv2.resize(mask.astype(np.uint8), (COIN_PX, COIN_PX), interpolation=cv2.INTER_NEAREST).astype(bool)
    scene = cv2.resize(load_image(BACKGROUND), SIZE_WH, interpolation=cv2.INTER_AREA)
    x, y = TOP_LEFT_XY
    scene[y : y + COIN_PX, x : x + COIN_PX][mask] = coin[mask]
    return scene


if __name__ == "__main__":
    out = HERE / "far_coin.png"
    cv2.imwrite(str(out), cv2.cvtColor(compose(), cv2.COLOR_RGB2BGR))
    print(f"wrote {out}")
