"""One validation metric per epoch for several training runs on one chart (candidate comparisons in the model card).

    python -m benchmarks.plot_runs runs/embedder/mnv2 runs/embedder/effb0 --metric recall@1 \\
        --out models/release/training/embedder_candidates.png

Reads each run's ``history.json`` (written by the trainers every epoch) and its ``config.yaml`` for the label;
prints the best epoch of each run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["best_epochs"]


def _label(run: Path) -> str:
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else {}
    arch = cfg.get("backbone") or cfg.get("encoder") or run.name
    start = "pretrained" if cfg.get("pretrained_path") else "from scratch"
    return f"{run.name}: {arch}, {start}, {cfg.get('size_px', '?')} px"


def best_epochs(histories: dict[Path, list[dict]], metric: str) -> dict[str, tuple[int, float]]:
    """Run folder -> (best epoch, its ``metric``)."""
    out = {}
    for run, history in histories.items():
        best = max(history, key=lambda row: row[metric])
        out[str(run)] = (int(best["epoch"]), float(best[metric]))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="training run folders (with history.json)")
    parser.add_argument("--metric", default="recall@1", help="history column (e.g. recall@1, real_iou@0.5)")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args(argv)
    missing = [str(r) for r in args.runs if not (r / "history.json").is_file()]
    if missing:
        print(f"error: no history.json in {', '.join(missing)}; train first (coinvision train ...)", file=sys.stderr)
        return 2
    histories = {run: json.loads((run / "history.json").read_text()) for run in args.runs}
    for run, history in histories.items():
        if any(args.metric not in row for row in history):
            print(f"error: {run}/history.json has no column {args.metric!r}", file=sys.stderr)
            return 2
    from coinvision.trainer.plotting import png_figure

    with png_figure(args.out, figsize=(6.5, 4), dpi=120) as (_, ax):
        for run, history in histories.items():
            ax.plot([row["epoch"] for row in history], [row[args.metric] for row in history], "o-", label=_label(run))
        ax.set_xlabel("epoch")
        ax.set_ylabel(args.metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for run, (epoch, value) in best_epochs(histories, args.metric).items():
        print(f"{run}: best {args.metric} {value:.4f} at epoch {epoch}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
