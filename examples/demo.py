"""`make demo`: the end-to-end slice that exists so far, on the bundled sample coins."""

from __future__ import annotations

import sys
from pathlib import Path

from coinvision.sdk.cli import main as coinvision

SAMPLE = Path(__file__).resolve().parent / "sample_coins"


def main() -> int:
    for name in ("coins211", "euro_phone"):
        rc = coinvision(["data", "stats", str(SAMPLE / name)])
        if rc:
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
