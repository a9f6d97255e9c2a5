"""One way to write a chart to PNG (training curves, benchmark plots, diagnostics): headless, folder created,
figure closed even when drawing fails."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from coinvision.sdk.evaluation import DESIGN_RECALL

if TYPE_CHECKING:
    from coinvision.sdk.evaluation import RetrievalMetrics

__all__ = ["plot_recall_at_k", "png_figure"]


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


def plot_recall_at_k(metrics: RetrievalMetrics, out_png: str | Path, title: str = "Recall@k, unseen classes") -> Path:
    """Bar chart of Recall@k with the design's bar as markers."""
    ks = list(metrics.recall_at)
    pos = np.arange(len(ks))
    with png_figure(out_png, figsize=(6, 4)) as (_, ax):
        bars = ax.bar(pos, [metrics.recall_at[k] for k in ks], color="tab:blue", label="measured")
        ax.bar_label(bars, fmt="%.3f")
        design = [(i, DESIGN_RECALL[k]) for i, k in enumerate(ks) if k in DESIGN_RECALL]
        if design:
            ax.scatter(*zip(*design, strict=True), marker="_", s=900, color="tab:red", label="design bar", zorder=3)
        ax.set_xticks(pos, [str(k) for k in ks])
        ax.set(title=title, xlabel="k (catalog classes shown)", ylabel="Recall@k", ylim=(0, 1.08))
        ax.legend(loc="lower right")
        ax.grid(axis="y", alpha=0.3)
    return Path(out_png)
