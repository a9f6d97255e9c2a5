"""Pipeline latency on real photos: per stage (segment pass 1, pass 2, crop, embed, search) and whole pipeline,
median and p90, per runtime (ONNX, TFLite fp32 and every quantized TFLite pair present) and thread count, with
the PyTorch eager pipeline timed in the same run as the reference (ratios, not only milliseconds).

    python -m benchmarks.bench_latency --quick                 # 20 timed runs per setting
    python -m benchmarks.bench_latency --models models/release --runs 100
    python -m benchmarks.bench_latency --quick --threads 1 --photo-files examples/sample_coins/scenes/far_coin.png

The SDK side is ``Recognizer`` (``from_dir`` for ``segmenter/embedder.{onnx,tflite}``, the constructor for
``<kind>.<quant>.tflite`` pairs) and its own ``timings_ms``; the PyTorch side runs the trainer's checkpoints
(``trainer.seg_model.load_segmenter`` + ``trainer.emb_model.load_embedder``) behind the same ``Recognizer`` code,
so both time identical pre/post-processing and differ only in the model runtime. When the exports are the tiny
test models, the reference is the tiny PyTorch models they were exported from. Whether the reference has the
same weights as the exports (fingerprints) is recorded: a ratio between different networks is flagged.

Before anything is timed every pipeline must embed the photos to finite unit vectors, find a coin on at least
``--min-found-frac`` of them, and retrieve each photo among the top 5 of a pack that holds its own embedding.
Photos are decoded once (camera frames arrive decoded), so ``decode`` is only the input check.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from benchmarks.common import ROOT, default_tflite_name, release_checkpoint, seed_everything, write_result

__all__ = [
    "STAGES",
    "PipelineSpec",
    "build_catalog_pack",
    "discover_pipelines",
    "main",
    "sanity_check",
    "time_pipeline",
    "torch_reference",
]

log = logging.getLogger(__name__)

STAGES = ("segment_pass1", "segment_pass2", "crop", "embed", "search", "total")
DEFAULT_MODELS = ROOT / "models" / "release"
SAMPLE_DATA = ROOT / "examples" / "sample_coins"
EXPECTED_RUNTIMES = ("onnx", "tflite fp32", "tflite fp16", "tflite int8")


@dataclass(frozen=True)
class PipelineSpec:
    """One SDK runtime setting: which files make the segmenter + embedder pair."""

    name: str  # "onnx", "tflite fp32", "tflite fp16", ...
    runtime: str  # "onnx" | "tflite"
    segmenter: Path
    embedder: Path

    @property
    def from_dir(self) -> bool:
        """The default file names, which ``Recognizer.from_dir`` loads."""
        return self.segmenter.name == f"segmenter.{self.runtime}" and self.embedder.name == f"embedder.{self.runtime}"


def discover_pipelines(models_dir: str | Path) -> tuple[list[PipelineSpec], list[dict[str, str]]]:
    """Pairs present in ``models_dir`` and the expected ones that are not (with the reason)."""
    models_dir = Path(models_dir)
    found: list[PipelineSpec] = []
    skipped: list[dict[str, str]] = []

    def pair(name: str, runtime: str, seg: str, emb: str) -> None:
        missing = [f for f in (seg, emb) if not (models_dir / f).is_file()]
        if missing:
            skipped.append({"runtime": name, "reason": f"{', '.join(missing)} not found in {_rel(models_dir)}"})
        else:
            found.append(PipelineSpec(name, runtime, models_dir / seg, models_dir / emb))

    pair("onnx", "onnx", "segmenter.onnx", "embedder.onnx")
    pair(default_tflite_name(models_dir), "tflite", "segmenter.tflite", "embedder.tflite")
    quants = sorted({p.name.split(".")[1] for kind in ("segmenter", "embedder")
                     for p in models_dir.glob(f"{kind}.*.tflite")} if models_dir.is_dir() else set())
    for quant in quants:
        pair(f"tflite {quant}", "tflite", f"segmenter.{quant}.tflite", f"embedder.{quant}.tflite")
    named = {s.name for s in found} | {s["runtime"] for s in skipped}
    for name in EXPECTED_RUNTIMES:
        if name not in named and not any(n.startswith(name) for n in named):
            quant = name.split()[-1]
            skipped.append({"runtime": name, "reason": f"no segmenter.{quant}*.tflite / embedder.{quant}*.tflite "
                                                       f"in {_rel(models_dir)}"})
    return found, skipped


def _rel(path: str | Path) -> str:
    p = Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def sample_photos(sample_root: Path = SAMPLE_DATA, count: int = 10) -> list[tuple[str, np.ndarray]]:
    """``count`` real photos, alternating between the bundled datasets, one per class, decoded."""
    from coinvision.sdk.images import load_image

    per_set = []
    for name in ("euro_phone", "coins211"):
        classes = sorted(p for p in (sample_root / name / "images").iterdir() if p.is_dir())
        per_set.append([sorted(c.glob("*.jpg"))[0] for c in classes])
    paths = [p for group in zip(*per_set, strict=False) for p in group][:count]
    return [(_rel(p), load_image(p)) for p in paths]


# ---------------------------------------------------------------------------------------------- recognizers


def sdk_recognizer(spec: PipelineSpec, num_threads: int):
    from coinvision.sdk.recognizer import Recognizer
    from coinvision.sdk.runtimes import load_model

    if spec.from_dir:
        return Recognizer.from_dir(spec.segmenter.parent, runtime=spec.runtime, num_threads=num_threads)
    return Recognizer(load_model(spec.segmenter, num_threads), load_model(spec.embedder, num_threads))


@dataclass
class TorchReference:
    """The PyTorch eager pipeline: models + metadata, wrapped in a Recognizer per thread count."""

    description: str
    seg: tuple[Any, Any, str]  # (torch module, ModelMetadata, source path)
    emb: tuple[Any, Any, str]

    def recognizer(self, num_threads: int):
        import torch
        from coinvision.sdk.recognizer import Recognizer
        from coinvision.trainer.torch_runtime import torch_loaded_model

        torch.set_num_threads(num_threads)
        return Recognizer(torch_loaded_model(*self.seg), torch_loaded_model(*self.emb))

    @property
    def fingerprints(self) -> tuple[str, str]:
        return self.seg[1].fingerprint, self.emb[1].fingerprint


def _checkpoint_reference(seg_ckpt: Path, emb_ckpt: Path) -> TorchReference:
    from coinvision.trainer.emb_model import embedder_metadata, load_embedder
    from coinvision.trainer.seg_model import load_segmenter, segmenter_metadata

    seg_model, seg_cfg, seg_c = load_segmenter(seg_ckpt)
    emb_model, emb_cfg, emb_c = load_embedder(emb_ckpt)
    return TorchReference(f"checkpoints {_rel(seg_ckpt)} + {_rel(emb_ckpt)}",
                          (seg_model, segmenter_metadata(seg_cfg, seg_c.fingerprint), _rel(seg_ckpt)),
                          (emb_model, embedder_metadata(emb_cfg, emb_c.fingerprint), _rel(emb_ckpt)))


def _tiny_reference() -> TorchReference:
    from coinvision.converters.tiny_models import tiny_embedder, tiny_segmenter

    seg_model, seg_meta = tiny_segmenter()
    emb_model, emb_meta = tiny_embedder()
    return TorchReference("tiny test models (coinvision.converters.tiny_models)", (seg_model, seg_meta, "tiny"),
                          (emb_model, emb_meta, "tiny"))


def torch_reference(export_fingerprints: tuple[str, str] | None, export_architectures: tuple[str, str] | None,
                    seg_ckpt: Path | None, emb_ckpt: Path | None) -> tuple[TorchReference | None, str]:
    """The reference with the exports' weights when one exists; else the checkpoints (flagged). -> (ref, why)."""
    if export_architectures and all(a.startswith("tiny-") for a in export_architectures):
        ref = _tiny_reference()
        if ref.fingerprints == export_fingerprints:
            return ref, "the exports are the tiny test models; their PyTorch source has the same weights"
    if seg_ckpt is None or emb_ckpt is None or not seg_ckpt.is_file() or not emb_ckpt.is_file():
        missing = [what for what, p in (("segmenter", seg_ckpt), ("embedder", emb_ckpt))
                   if p is None or not p.is_file()]
        return None, "; ".join(f"no {m} checkpoint (runs/{m}/*/best.pt or --{m}-checkpoint)" for m in missing)
    ref = _checkpoint_reference(seg_ckpt, emb_ckpt)
    if export_fingerprints and ref.fingerprints != export_fingerprints:
        return ref, (f"checkpoint fingerprints {ref.fingerprints} differ from the exports' {export_fingerprints}: "
                     "ratios compare different networks")
    return ref, "checkpoints with the exports' weights" if export_fingerprints else "checkpoints (no exports)"


# ---------------------------------------------------------------------------------------------- measuring


def build_catalog_pack(recognizer, photos: list[tuple[str, np.ndarray]], catalog_size: int, seed: int):
    """An int8 pack of this embedder: the photos' own embeddings (coin id = photo path) plus random unit
    vectors up to ``catalog_size`` (search cost grows with the catalog; random fillers never outrank a photo's
    own vector)."""
    from coinvision.sdk.pack import Pack

    vectors = [recognizer.embed(image).vector for _, image in photos]
    rng = np.random.default_rng(seed)
    filler = rng.standard_normal((max(0, catalog_size - len(vectors)), recognizer.dim)).astype(np.float32)
    ids = [path for path, _ in photos] + [f"filler/{i:07d}" for i in range(len(filler))]
    return Pack.from_vectors(np.concatenate([np.stack(vectors), filler]), ids, [], catalog_id="bench-latency",
                             catalog_version=1, model_fingerprint=recognizer.fingerprint, quant="int8", created_at=0)


def sanity_check(recognizer, photos: list[tuple[str, np.ndarray]], min_found_frac: float) -> dict[str, Any]:
    """Unit-norm finite vectors, a coin found on enough photos, each photo retrieved from the pack (top 5).
    Raises RuntimeError naming the failed check."""
    found, misses = 0, []
    for path, image in photos:
        result = recognizer.recognize(image, top_k=5)
        vector = result.sides[0].vector
        norm = float(np.linalg.norm(vector))
        if vector.shape != (recognizer.dim,) or not np.all(np.isfinite(vector)) or abs(norm - 1.0) > 1e-3:
            raise RuntimeError(f"{path}: embedding shape {vector.shape}, norm {norm:.6f} is not a finite unit vector")
        found += result.segmentation.found
        if path not in [m.coin_id for m in result.matches]:
            misses.append(path)
    found_frac = found / len(photos)
    if found_frac < min_found_frac:
        raise RuntimeError(f"a coin was found on {found}/{len(photos)} photos, below --min-found-frac "
                           f"{min_found_frac}")
    if misses:
        raise RuntimeError(f"{len(misses)} photo(s) not retrieved in the top 5 of a pack holding their own "
                           f"embedding, e.g. {misses[0]}")
    return {"found_frac": found_frac, "photos": len(photos)}


def time_pipeline(recognizer, photos: list[tuple[str, np.ndarray]], runs: int, warmup: int) -> dict[str, Any]:
    """``recognize`` on the photos in turn: per-stage median / p90 / n over ``runs`` calls after ``warmup``."""
    for i in range(warmup):
        recognizer.recognize(photos[i % len(photos)][1])
    per_stage: dict[str, list[float]] = {s: [] for s in STAGES}
    for i in range(runs):
        timings = recognizer.recognize(photos[i % len(photos)][1]).timings_ms
        for stage in STAGES:
            if stage in timings:
                per_stage[stage].append(timings[stage])
    # min is kept too: on a shared machine it is the figure least touched by other processes' time slices
    return {stage: {"median_ms": float(np.median(v)), "p90_ms": float(np.percentile(v, 90)), "min_ms": float(min(v)),
                    "n": len(v)} for stage, v in per_stage.items() if v}


def _cosines(vectors: np.ndarray, reference: np.ndarray | None) -> float | None:
    if reference is None or reference.shape != vectors.shape:
        return None
    return float(np.mean(np.sum(vectors * reference, axis=1)))


def _thread_counts(spec: str) -> list[int]:
    counts = []
    for part in spec.split(","):
        n = (os.cpu_count() or 1) if part.strip() == "all" else int(part)
        if n not in counts:
            counts.append(n)
    return counts


# -------------------------------------------------------------------------------------------------- main


def _measure_setting(name: str, source: Any, n: int, photos: list[tuple[str, np.ndarray]], runs: int,
                     args: argparse.Namespace, packs: dict[str, Any], failed: list[dict[str, str]]) -> dict | None:
    """Load, check, time one runtime at ``n`` threads; ``None`` (and an entry in ``failed``) when it cannot."""
    try:
        recognizer = source.recognizer(n) if name == "torch" else sdk_recognizer(source, n)
        if recognizer.fingerprint not in packs:
            packs[recognizer.fingerprint] = build_catalog_pack(recognizer, photos, args.catalog_size, args.seed)
        recognizer.load_pack(packs[recognizer.fingerprint])
        check = sanity_check(recognizer, photos, args.min_found_frac)
    except Exception as exc:  # a runtime that cannot load or fails its check is recorded, not timed
        failed.append({"runtime": name, "threads": str(n), "reason": f"{type(exc).__name__}: {exc}"})
        print(f"  {name} x{n}: FAILED before timing: {exc}", flush=True)
        return None
    vectors = np.stack([recognizer.embed(image).vector for _, image in photos])
    return {"runtime": name, "threads": n, "stages": time_pipeline(recognizer, photos, runs, args.warmup), **check,
            "files": None if name == "torch" else [_rel(source.segmenter), _rel(source.embedder)],
            "vectors": vectors}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20 timed runs on 10 photos per setting")
    parser.add_argument("--models", default=str(DEFAULT_MODELS), help="folder of exported models")
    parser.add_argument("--segmenter-checkpoint", help="PyTorch reference (default: the release's source)")
    parser.add_argument("--embedder-checkpoint", help="PyTorch reference (default: the release's source)")
    parser.add_argument("--threads", default="1,all", help="comma-separated thread counts; 'all' = every core")
    parser.add_argument("--runs", type=int, help="timed runs per setting (default 100, quick 20; at least 20)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--photos", type=int, help="sample photos cycled through (default 20, quick 10)")
    parser.add_argument("--photo-files", type=Path, nargs="+",
                        help="time these photos instead of the samples, e.g. examples/sample_coins/scenes/"
                             "far_coin.png (a coin only the segmenter's tiles find)")
    parser.add_argument("--catalog-size", type=int, default=10_000, help="vectors in the searched int8 pack")
    parser.add_argument("--min-found-frac", type=float, default=0.5,
                        help="share of photos on which a coin must be found before timing")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="JSON path (default benchmarks/results/latency.json)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    seed_everything(args.seed)
    runs = max(20, args.runs or (20 if args.quick else 100))
    if args.photo_files:
        from coinvision.sdk.images import load_image

        photos = [(_rel(p), load_image(p)) for p in args.photo_files]
    else:
        photos = sample_photos(count=args.photos or (10 if args.quick else 20))
    threads = _thread_counts(args.threads)
    import cv2

    cv2.setNumThreads(1)  # pre/post-processing stays single-threaded, as it is on the phone's caller thread

    specs, skipped = discover_pipelines(args.models)
    exported_meta = None
    if specs:
        from coinvision.sdk.model_meta import ModelMetadata

        exported_meta = (ModelMetadata.read_sidecar(specs[0].segmenter), ModelMetadata.read_sidecar(specs[0].embedder))
    models = Path(args.models)
    seg_ckpt = Path(args.segmenter_checkpoint) if args.segmenter_checkpoint else release_checkpoint("segmenter", models)
    emb_ckpt = Path(args.embedder_checkpoint) if args.embedder_checkpoint else release_checkpoint("embedder", models)
    reference, reference_note = torch_reference(
        tuple(m.fingerprint for m in exported_meta) if exported_meta else None,
        tuple(m.architecture for m in exported_meta) if exported_meta else None, seg_ckpt, emb_ckpt)
    same_weights = reference is not None and exported_meta is not None and \
        reference.fingerprints == tuple(m.fingerprint for m in exported_meta)
    print(f"torch reference: {reference.description if reference else 'none'} ({reference_note})", flush=True)
    if reference is None:
        skipped.append({"runtime": "torch", "reason": reference_note})

    settings: list[tuple[str, Any]] = ([("torch", reference)] if reference else []) + [(s.name, s) for s in specs]
    measured: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    torch_vectors: np.ndarray | None = None
    packs: dict[str, Any] = {}
    for name, source in settings:
        for n in threads:
            # numpy's BLAS (the pack search) gets the same thread budget as the model runtime: left at every
            # core, a 1x64 @ 64xN product pays thread wake-ups that dwarf it (60x on a busy 2-core machine)
            with threadpool_limits(n):
                entry = _measure_setting(name, source, n, photos, runs, args, packs, failed)
            if entry is None:
                continue
            vectors = entry.pop("vectors")
            if name == "torch" and torch_vectors is None:
                torch_vectors = vectors
            entry["cosine_vs_torch"] = _cosines(vectors, torch_vectors) if same_weights else None
            measured.append(entry)
            stages = entry["stages"]
            total = stages["total"]
            print(f"  {name:<22} x{n}: total median {total['median_ms']:.2f} ms  p90 {total['p90_ms']:.2f} ms  "
                  + "  ".join(f"{s} {stages[s]['median_ms']:.2f}" for s in STAGES[:-1] if s in stages), flush=True)

    torch_by_threads = {e["threads"]: e for e in measured if e["runtime"] == "torch"}
    table: list[dict[str, Any]] = []
    for entry in measured:
        ref = torch_by_threads.get(entry["threads"])
        entry["ratio_vs_torch"] = {
            s: entry["stages"][s]["median_ms"] / ref["stages"][s]["median_ms"]
            for s in STAGES if ref and s in entry["stages"] and s in ref["stages"] and ref["stages"][s]["median_ms"] > 0
        }
        st = entry["stages"]
        row: dict[str, Any] = {"runtime": entry["runtime"], "threads": entry["threads"]}
        row.update({f"{s} ms": st[s]["median_ms"] if s in st else "" for s in STAGES[:-1]})
        row.update({"total ms (median)": st["total"]["median_ms"], "total ms (p90)": st["total"]["p90_ms"],
                    "total ms (min)": st["total"]["min_ms"],
                    "total vs torch": entry["ratio_vs_torch"].get("total", "")})
        table.append(row)
    for entry in skipped + failed:
        table.append({"runtime": entry["runtime"], "threads": entry.get("threads", ""),
                      "total ms (median)": "skipped" if entry in skipped else "failed",
                      "total vs torch": entry["reason"]})
    results = {
        "runs": runs, "warmup": args.warmup, "photos": [p for p, _ in photos], "catalog_vectors": args.catalog_size,
        "pack_quant": "int8", "thread_counts": threads, "cpu_count": os.cpu_count(),
        "torch_reference": reference.description if reference else None, "torch_reference_note": reference_note,
        "torch_same_weights_as_exports": same_weights, "models_dir": _rel(args.models),
        "ratio_definition": "runtime median / torch median at the same thread count (< 1: faster than torch)",
        "measured": measured, "skipped": skipped, "failed": failed,
    }
    path = write_result("latency", results, table, args.out)
    print(f"wrote {path}")
    return 1 if failed else 0  # skipped runtimes are recorded with their reason, not failures


if __name__ == "__main__":
    sys.exit(main())
