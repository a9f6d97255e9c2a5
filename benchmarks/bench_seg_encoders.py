"""Segmenter encoder trade-off: parameters, fp32 size and CPU latency of the U-Net per encoder, next to the
validation IoU of every encoder we actually trained, so the release default is picked on measured figures.

    python -m benchmarks.bench_seg_encoders --quick     # MobileNetV2 + EfficientNet-B0, 10 timed runs
    python -m benchmarks.bench_seg_encoders             # + EfficientNet-B1..B4, 30 timed runs
    python -m benchmarks.bench_seg_encoders --runs runs/segmenter/mnv2 runs/segmenter/effb0

Size and latency come from randomly initialised models (weights do not change either); latency is PyTorch eager,
one image, median over the timed runs after warm-up, 1 thread and all threads. IoU comes from each training
run's ``history.json`` (the epoch the trainer kept as best.pt) and its ``config.yaml`` (encoder, input size, steps):
an encoder without a run has no IoU in the table, never an estimate. The PNG plots real IoU@0.5 against latency.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, median_ms, write_result

__all__ = ["encoder_cost", "trained_runs"]

log = logging.getLogger(__name__)

QUICK_ENCODERS = ("tu-mobilenetv2_100", "tu-efficientnet_b0")
ALL_ENCODERS = (*QUICK_ENCODERS, "tu-efficientnet_b1", "tu-efficientnet_b2", "tu-efficientnet_b3",
                "tu-efficientnet_b4")


def encoder_cost(encoder: str, size_px: int, *, timed_runs: int, threads: tuple[int, ...]) -> dict[str, Any]:
    """Parameters, fp32 bytes and median latency (ms) per thread count of an untrained U-Net."""
    import torch
    from coinvision.trainer.seg_config import SegmenterConfig
    from coinvision.trainer.seg_model import build_segmenter, count_parameters

    model = build_segmenter(SegmenterConfig(encoder=encoder, size_px=size_px)).eval()
    params = count_parameters(model)
    x = torch.rand(1, 3, size_px, size_px)
    latency: dict[str, float] = {}
    previous = torch.get_num_threads()
    try:
        for n in threads:
            torch.set_num_threads(n)
            with torch.inference_mode():
                latency[f"{n}t"] = median_ms(lambda: model(x), timed_runs)
    finally:
        torch.set_num_threads(previous)
    return {"encoder": encoder, "size_px": size_px, "params": params, "fp32_mb": params * 4 / 1e6,
            "latency_ms": latency}


def trained_runs(run_dirs: list[Path]) -> dict[str, dict[str, Any]]:
    """Run folder -> its best.pt epoch and budget, for each folder that has a history."""
    import yaml

    found: dict[str, dict[str, Any]] = {}
    for run in run_dirs:
        history_path, config_path = run / "history.json", run / "config.yaml"
        if not history_path.is_file() or not config_path.is_file():
            log.warning("%s has no history.json/config.yaml; skipped", run)
            continue
        history = json.loads(history_path.read_text())
        cfg = yaml.safe_load(config_path.read_text())
        # the trainer's own best.pt rule: mean of synthetic and real IoU@0.5
        best = max(history, key=lambda row: row["synthetic_iou@0.5"] + row["real_iou@0.5"])
        found[run.name] = {
            "run": str(run),
            "encoder": cfg["encoder"],
            "size_px": cfg["size_px"],
            "pretrained": bool(cfg.get("pretrained_path")),
            "epochs_run": len(history),
            "train_samples": len(history) * cfg["steps_per_epoch"] * cfg["batch_size"],
            "train_minutes": sum(row.get("epoch_s", 0.0) for row in history) / 60.0,
            "best_epoch": best["epoch"],
            **{k: best[k] for k in ("synthetic_iou@0.3", "synthetic_iou@0.5", "real_iou@0.3", "real_iou@0.5")},
        }
    return found


def _plot(rows: list[dict[str, Any]], out_png: Path) -> None:
    from coinvision.trainer.plotting import png_figure

    with png_figure(out_png, figsize=(8.5, 4.8), dpi=120) as (_, ax):
        for row in rows:
            if row.get("real_iou@0.5") is None:
                continue
            ax.scatter(row["latency_1t_ms"], row["real_iou@0.5"], s=20 + 8 * row["params_m"])
            ax.annotate(f"{row['run']}: {row['encoder']} {row['size_px']}px\n{row['train_samples']} samples",
                        (row["latency_1t_ms"], row["real_iou@0.5"]), textcoords="offset points", xytext=(6, 4),
                        fontsize=8)
        ax.set_xlabel("PyTorch CPU latency, 1 thread (ms)")
        ax.set_ylabel("real-photo IoU@0.5 (trainer validation)")
        ax.set_title("Segmenter U-Net encoders: quality vs cost (marker area ~ parameters)", fontsize=10)
        ax.margins(x=0.35, y=0.15)
        ax.grid(alpha=0.3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="two encoders, 10 timed runs")
    parser.add_argument("--encoders", nargs="+", default=None, help="smp encoder names (default: by --quick)")
    parser.add_argument("--size-px", type=int, default=128, help="input size for size/latency (default 128)")
    parser.add_argument("--runs", nargs="*", type=Path, default=None,
                        help="training run folders (default: every runs/segmenter/*)")
    parser.add_argument("--out", type=Path, default=None, help="result JSON (default benchmarks/results/)")
    parser.add_argument("--plot", type=Path, default=ROOT / "benchmarks" / "results" / "seg_encoders.png")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    encoders = args.encoders or (QUICK_ENCODERS if args.quick else ALL_ENCODERS)
    timed_runs = 10 if args.quick else 30
    threads = tuple(dict.fromkeys((1, os.cpu_count() or 1)))
    run_dirs = args.runs if args.runs is not None else sorted((ROOT / "runs" / "segmenter").glob("*"))
    trained = trained_runs([p for p in run_dirs if p.is_dir()])

    costs = {}
    for encoder in dict.fromkeys([*encoders, *(t["encoder"] for t in trained.values())]):
        for size in sorted({args.size_px, *(t["size_px"] for t in trained.values() if t["encoder"] == encoder)}):
            print(f"timing {encoder} at {size} px ...", flush=True)
            costs[f"{encoder}@{size}"] = encoder_cost(encoder, size, timed_runs=timed_runs, threads=threads)

    table = []
    untrained = [key for key in costs if not any(f"{t['encoder']}@{t['size_px']}" == key for t in trained.values())]
    for run_name, key in [*((name, f"{t['encoder']}@{t['size_px']}") for name, t in trained.items()),
                          *((None, key) for key in untrained)]:
        cost, run = costs[key], trained.get(run_name, {})
        table.append({
            "run": run_name or "(not trained)",
            "encoder": cost["encoder"],
            "size_px": cost["size_px"],
            "params_m": cost["params"] / 1e6,
            "fp32_mb": cost["fp32_mb"],
            "latency_1t_ms": cost["latency_ms"]["1t"],
            f"latency_{threads[-1]}t_ms": cost["latency_ms"][f"{threads[-1]}t"],
            "pretrained": run.get("pretrained"),
            "train_samples": run.get("train_samples"),
            "synthetic_iou@0.5": run.get("synthetic_iou@0.5"),
            "real_iou@0.3": run.get("real_iou@0.3"),
            "real_iou@0.5": run.get("real_iou@0.5"),
        })
        print(f"{run_name or '-':12s} {key:28s} {cost['params'] / 1e6:6.2f} M  {cost['latency_ms']['1t']:7.1f} ms/1t  "
              f"real IoU@0.5 {run.get('real_iou@0.5', float('nan')):.3f}")
    _plot(table, args.plot)
    path = write_result("seg_encoders", {"costs": costs, "trained": trained, "timed_runs": timed_runs,
                                         "plot": str(args.plot.relative_to(ROOT)) if args.plot.is_relative_to(ROOT)
                                         else str(args.plot)}, table, args.out)
    print(f"wrote {path} and {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
