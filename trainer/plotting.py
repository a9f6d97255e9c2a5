"""One way to write a chart to PNG (training curves, benchmark plots, diagnostics): headless, folder created,
figure closed even when drawing fails."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["png_figure"]


@contextmanager
def png_figure(out_png: str | Path, *, figsize: tuple[float, float], ncols: int = 1, dpi: int = 100
               ) -> Iterator[tuple[Any, Any]]:
    """``with png_figure(path, figsize=(6, 4)) as (fig, ax): ax.plot(...)`` writes ``path`` on exit.
    ``ax`` is an array of ``ncols`` axes when ``ncols > 1``."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=figsize)
    try:
        yield fig, axes
        fig.tight_layout()
        out_png = Path(out_png)
        out_png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out_png, dpi=dpi)
    finally:
        plt.close(fig)
