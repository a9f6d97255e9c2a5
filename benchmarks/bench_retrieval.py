"""Retrieval quality on coin classes the embedder never saw: Recall@1/2/5/10/20 (catalog classes, as a pack
ranks coins) and MAP@R, for the PyTorch checkpoint, every exported runtime file, and fp32/fp16/int8 pack vectors.

    python -m benchmarks.bench_retrieval --quick                      # <= 15 queries per class
    python -m benchmarks.bench_retrieval --models models/release      # every query of the trainer's split

The split is the trainer's own: the checkpoint's saved config goes through ``trainer.emb_data.
load_embedding_data`` (same data roots, split seed / file, held-out class fraction and query cap), so the
catalog and query photos are exactly those of the training's unseen-class validation. Sources:

- ``pytorch``: the checkpoint on the crops the training validated on (``--torch-source cache``: the crop
  cache, i.e. the torch segmenter -> ``coin_crop`` output stored losslessly, embedded with
  ``trainer.emb_train.embed_samples``), or the full torch pipeline photo by photo (``--torch-source pipeline``:
  the SDK's ``Recognizer`` with the PyTorch embedder, ``trainer.torch_runtime``). On the full split the cache
  variant must reproduce the Recall@1 stored in the checkpoint (a check that the split was rebuilt right).
- every ``embedder.onnx`` / ``embedder.tflite`` / ``embedder.<quant>.tflite`` in ``--models``: the SDK pipeline
  (``Recognizer``: two-pass segmentation, crop, embed) from the photo files, with the segmenter of the same
  runtime/quantization from the same folder (``segmenter.<quant>.tflite``, else ``segmenter.tflite``, recorded).
  Each runtime embeds its own catalog. Where it has the checkpoint's weights, its cosine to the PyTorch
  vectors of the same photos is reported too.
- ``pack <quant>``: the PyTorch catalog vectors built into a pack (``build_pack``) at fp32 / fp16 / int8 and
  searched with ``Pack.search_batch`` (coin = class), the PyTorch query vectors as queries; Recall@1 cost of
  fp16 / int8 vs fp32 in points (goal: <= 0.3 for int8). MAP@R of a pack uses its dequantised vectors.

Before anything is reported every source's vectors are checked: finite, unit norm, one per catalog / query
photo of the split. With ``--quick`` a runtime whose estimated embedding time exceeds ``--runtime-budget-s`` is
skipped and recorded (on a 2-core machine static int8 TFLite can be the slow one).
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from benchmarks.common import (
    MISSING_INPUTS_EXIT,
    ROOT,
    default_tflite_name,
    release_checkpoint,
    seed_everything,
    write_result,
)

__all__ = [
    "PACK_QUANTS",
    "RuntimeSpec",
    "check_vectors",
    "discover_runtimes",
    "embed_with_recognizer",
    "main",
    "pack_quantization",
    "pack_search_ranks",
]

log = logging.getLogger(__name__)

DEFAULT_MODELS = Path("models/release")
PACK_QUANTS = ("fp32", "fp16", "int8")
INT8_RECALL1_GOAL_POINTS = 0.3  # the design's allowance for int8 pack vectors
UNIT_NORM_TOL = 1e-3
QUICK_QUERIES_PER_CLASS = 15
QUICK_RUNTIME_BUDGET_S = 120.0  # per runtime: `make bench` runs every benchmark in <= 10 min
# fp32 pack search and faiss rank the same float32 cosines; only near-exact ties may order differently
MAX_FP32_PACK_MISMATCH_FRAC = 0.01
# torch on cached crops vs the Recall@1 the trainer stored: same crops, same weights, same queries
MAX_CHECKPOINT_RECALL_DIFF = 0.01


class BudgetExceeded(RuntimeError):
    """A runtime would take longer than the quick run's budget."""


# ------------------------------------------------------------------------------------------------ checks


def check_vectors(name: str, vectors: np.ndarray, expected_rows: int, dim: int | None = None) -> None:
    """Finite unit vectors, one per photo; raises RuntimeError naming the source and what is wrong."""
    if vectors.ndim != 2 or len(vectors) != expected_rows:
        raise RuntimeError(f"{name}: {vectors.shape} embeddings for {expected_rows} photos of the split")
    if dim is not None and vectors.shape[1] != dim:
        raise RuntimeError(f"{name}: embedding dim {vectors.shape[1]}, expected {dim}")
    if not np.all(np.isfinite(vectors)):
        raise RuntimeError(f"{name}: embeddings hold NaN/inf")
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
    worst = float(np.max(np.abs(norms - 1.0)))
    if worst > UNIT_NORM_TOL:
        raise RuntimeError(f"{name}: embeddings are not unit vectors (|norm - 1| up to {worst:.2e})")


# ----------------------------------------------------------------------------------------------- runtimes


@dataclass(frozen=True)
class RuntimeSpec:
    """One exported embedder file and the segmenter it runs with."""

    name: str  # "onnx", "tflite fp32", "tflite fp16", "tflite int8_dynamic", ...
    runtime: str  # "onnx" | "tflite"
    segmenter: Path
    embedder: Path
    note: str = ""

    @property
    def from_dir(self) -> bool:
        """Default file names, which ``Recognizer.from_dir`` loads (variants go through the constructor)."""
        return self.segmenter.name == f"segmenter.{self.runtime}" and self.embedder.name == f"embedder.{self.runtime}"


def discover_runtimes(models_dir: str | Path) -> tuple[list[RuntimeSpec], list[dict[str, str]]]:
    """Embedder files in ``models_dir`` with their segmenter, and what could not be paired (with the reason)."""
    models_dir = Path(models_dir)
    found: list[RuntimeSpec] = []
    skipped: list[dict[str, str]] = []
    if not models_dir.is_dir():
        return found, [{"source": "exported runtimes", "reason": f"models folder {_rel(models_dir)} does not exist"}]
    candidates = [("onnx", "onnx", "embedder.onnx", ["segmenter.onnx"]),
                  (default_tflite_name(models_dir), "tflite", "embedder.tflite", ["segmenter.tflite"])]
    for path in sorted(models_dir.glob("embedder.*.tflite")):
        quant = path.name[len("embedder."):-len(".tflite")]
        candidates.append((f"tflite {quant}", "tflite", path.name, [f"segmenter.{quant}.tflite", "segmenter.tflite"]))
    for name, runtime, emb, segs in candidates:
        if not (models_dir / emb).is_file():
            continue
        seg = next((s for s in segs if (models_dir / s).is_file()), None)
        if seg is None:
            reason = f"{' / '.join(segs)} not found beside {emb} in {_rel(models_dir)}"
            skipped.append({"source": name, "reason": reason})
            continue
        note = "" if seg == segs[0] else f"no {segs[0]}: ran with {seg}"
        found.append(RuntimeSpec(name, runtime, models_dir / seg, models_dir / emb, note))
    if not found and not skipped:
        skipped.append({"source": "exported runtimes",
                        "reason": f"no embedder.onnx / embedder*.tflite in {_rel(models_dir)}"})
    return found, skipped


def load_recognizer(spec: RuntimeSpec, num_threads: int):
    from coinvision.sdk.recognizer import Recognizer
    from coinvision.sdk.runtimes import load_model

    if spec.from_dir:
        return Recognizer.from_dir(spec.embedder.parent, runtime=spec.runtime, num_threads=num_threads)
    return Recognizer(load_model(spec.segmenter, num_threads), load_model(spec.embedder, num_threads))


def embed_with_recognizer(recognizer, image_paths: Sequence[Path], *, budget_s: float | None = None,
                          check_every: int = 8) -> tuple[np.ndarray, int]:
    """Photo files -> (``(N, D)`` vectors, photos where no coin was found). With ``budget_s``, raises
    :class:`BudgetExceeded` as soon as the projected time for all photos is above it."""
    started = time.perf_counter()
    vectors, no_coin = [], 0
    for i, path in enumerate(image_paths, start=1):
        emb = recognizer.embed(path)
        vectors.append(emb.vector)
        no_coin += not emb.segmentation.found
        if budget_s is not None and i % check_every == 0:
            projected = (time.perf_counter() - started) / i * len(image_paths)
            if projected > budget_s:
                raise BudgetExceeded(f"projected {projected:.0f} s for {len(image_paths)} photos after {i} "
                                     f"(budget {budget_s:.0f} s)")
    return np.stack(vectors).astype(np.float32), no_coin


# ---------------------------------------------------------------------------------------------- pack quant


def pack_search_ranks(pack, queries: np.ndarray, labels: Sequence[str], k: int) -> np.ndarray:
    """0-based rank of each query's coin among ``pack.search_batch`` results (``k`` = not in the top k)."""
    hits = pack.search_batch(queries, k=k)
    ranks = np.full(len(labels), k, dtype=np.int64)
    for i, (label, found) in enumerate(zip(labels, hits, strict=True)):
        ids = [coin_id for coin_id, _ in found]
        if label in ids:
            ranks[i] = ids.index(label)
    return ranks


def pack_quantization(catalog: np.ndarray, catalog_labels: Sequence[str], queries: np.ndarray,
                      query_labels: Sequence[str], *, quants: Sequence[str] = PACK_QUANTS,
                      ks: Sequence[int] | None = None, fingerprint: str = "bench-retrieval") -> dict[str, Any]:
    """Recall@k of ``Pack.search_batch`` (coin = class) for packs of ``catalog`` at each quantization, MAP@R on
    the dequantised vectors, pack size and the Recall@1 cost vs fp32 in points.

    Checked first: the fp32 pack must rank like exact cosine search over the same vectors
    (``sdk.evaluation.evaluate_retrieval``), up to near-tie swaps; RuntimeError otherwise.
    """
    from coinvision.sdk.evaluation import RECALL_KS, class_ranks, evaluate_retrieval
    from coinvision.sdk.pack import Pack

    ks = tuple(ks or RECALL_KS)
    catalog_labels, query_labels = [str(x) for x in catalog_labels], [str(x) for x in query_labels]
    answerable = np.isin(query_labels, catalog_labels)
    if not answerable.any():
        raise RuntimeError("no query class is in the catalog")
    q = np.ascontiguousarray(queries[answerable], dtype=np.float32)
    q_labels = [lab for lab, ok in zip(query_labels, answerable, strict=True) if ok]
    codes = {lab: i for i, lab in enumerate(sorted(set(catalog_labels)))}
    exact = class_ranks(q, np.array([codes[lab] for lab in q_labels]), np.ascontiguousarray(catalog, np.float32),
                        np.array([codes[lab] for lab in catalog_labels]))
    out: dict[str, Any] = {"n_queries": len(q), "n_unanswerable": int((~answerable).sum()),
                           "n_catalog": len(catalog), "n_catalog_classes": len(codes), "quants": {}}
    for quant in quants:
        pack = Pack.from_vectors(catalog, catalog_labels, [], catalog_id="bench-retrieval", catalog_version=1,
                                 model_fingerprint=fingerprint, quant=quant, created_at=0)
        ranks = pack_search_ranks(pack, q, q_labels, k=max(ks))
        metrics = evaluate_retrieval(q, q_labels, pack.vectors_f32(), pack.coin_ids, ks=ks)
        out["quants"][quant] = {
            "recall_at": {int(k): float(np.mean(ranks < k)) for k in ks},
            "map_at_r": metrics.map_at_r,  # on the dequantised vectors (a pack search returns coins, not vectors)
            "recall_at_dequantised_exact": metrics.recall_at,
            "pack_bytes": len(pack.to_bytes()),
            "vector_bytes": pack.vector_bytes,
            "bytes_per_vector": pack.vector_bytes / pack.vector_count,
        }
        if quant == "fp32":
            mismatched = {int(k): int(np.sum((ranks < k) != (exact < k))) for k in ks}
            out["fp32_pack_vs_exact_mismatched_queries"] = mismatched
            if max(mismatched.values()) > MAX_FP32_PACK_MISMATCH_FRAC * len(q):
                raise RuntimeError(f"fp32 pack search disagrees with exact cosine search on {mismatched} queries "
                                   f"(hit@k) of {len(q)}: the pack search or the label mapping is wrong")
    base = out["quants"].get("fp32")
    if base is not None:
        for entry in out["quants"].values():
            entry["recall@1_cost_points_vs_fp32"] = 100.0 * (base["recall_at"][1] - entry["recall_at"][1])
        if "int8" in out["quants"]:
            cost = out["quants"]["int8"]["recall@1_cost_points_vs_fp32"]
            out["int8_recall@1_cost_points"] = cost
            out["int8_goal_points"] = INT8_RECALL1_GOAL_POINTS
            out["int8_goal_met"] = bool(cost <= INT8_RECALL1_GOAL_POINTS)
    return out


# ------------------------------------------------------------------------------------------------ helpers


def _rel(path: str | Path) -> str:
    p = Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def _existing(path: str | Path) -> Path:
    """A path as given if it exists from here, else relative to the repository root (configs and defaults
    name paths relative to the root, where the trainer ran)."""
    p = Path(path)
    return p if p.is_absolute() or p.exists() or not (ROOT / p).exists() else ROOT / p


def _resolve_config_paths(cfg):
    """The checkpoint config's relative paths, resolved the way the trainer (run from the root) saw them."""
    def opt(p: str | None) -> str | None:
        return str(_existing(p)) if p else p

    cache = Path(cfg.crop_cache_dir)
    return replace(cfg, data_roots=tuple(str(_existing(r)) for r in cfg.data_roots), split_file=opt(cfg.split_file),
                   segmenter_checkpoint=opt(cfg.segmenter_checkpoint),
                   segmenter_models_dir=opt(cfg.segmenter_models_dir),
                   crop_cache_dir=str(cache if cache.is_absolute() or cache.exists() else ROOT / cache))


def cap_per_class(samples: Sequence[Any], per_class: int, seed: int) -> list[Any]:
    """At most ``per_class`` samples of each ``class_key`` (seeded choice, split order kept); 0 = all."""
    if per_class <= 0:
        return list(samples)
    by_class: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        by_class.setdefault(s.class_key, []).append(i)
    rng = random.Random(seed)
    keep = {i for key in sorted(by_class) for i in (rng.sample(by_class[key], per_class)
                                                   if len(by_class[key]) > per_class else by_class[key])}
    return [s for i, s in enumerate(samples) if i in keep]


def _metrics_entry(source: str, metrics, seconds: float, n_images: int, **extra: Any) -> dict[str, Any]:
    return {"source": source, "recall_at": metrics.recall_at, "map_at_r": metrics.map_at_r,
            "class_mean_recall@1": metrics.class_mean_recall_at_1,
            "recall@1_by_dataset": metrics.recall_at_1_by_group, "n_queries": metrics.n_query,
            "n_catalog": metrics.n_catalog, "n_catalog_classes": metrics.n_catalog_classes,
            "n_unanswerable": metrics.n_unanswerable, "embed_s": seconds,
            "images_per_s": n_images / seconds if seconds > 0 else None, **extra}


def _cosine_stats(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    cos = np.sum(a.astype(np.float64) * b, axis=1)
    return {"mean": float(cos.mean()), "p5": float(np.percentile(cos, 5)), "min": float(cos.min())}


def _row(source: str, recall_at: dict[int, float] | None, map_at_r: Any, n_queries: Any, n_catalog: Any,
         note: str = "") -> dict[str, Any]:
    from coinvision.sdk.evaluation import RECALL_KS

    row: dict[str, Any] = {"source": source}
    row.update({f"recall@{k}": (recall_at or {}).get(k, "") for k in RECALL_KS})
    row.update({"map@r": map_at_r, "n_queries": n_queries, "n_catalog": n_catalog, "note": note})
    return row


def _segmenter_of_cache(folder: Path | None) -> str | None:
    """``seg-<fingerprint>_<size>px_m<margin>`` -> fingerprint; None for letterboxed crops."""
    name = folder.name if folder else ""
    return name.split("_", 1)[0].removeprefix("seg-") if name.startswith("seg-") else None


@dataclass
class _Split:
    catalog: list[Any]
    query: list[Any]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def catalog_labels(self) -> list[str]:
        return [s.class_key for s in self.catalog]

    @property
    def query_labels(self) -> list[str]:
        return [s.class_key for s in self.query]

    @property
    def query_groups(self) -> list[str]:
        return [s.dataset for s in self.query]


def load_split(cfg, queries_per_class: int, seed: int) -> _Split:
    """The trainer's catalog / query split of unseen classes (``load_embedding_data``), queries optionally capped."""
    from coinvision.trainer.emb_data import load_embedding_data

    data = load_embedding_data(cfg, progress=False)
    query = cap_per_class(data.query, queries_per_class, seed)
    catalog_classes = sorted({s.class_key for s in data.catalog})
    info = {
        "data_roots": [_rel(r) for r in cfg.data_roots], "split_file": cfg.split_file, "split_seed": cfg.split_seed,
        "val_class_frac": cfg.val_class_frac, "trainer_max_queries_per_class": cfg.max_queries_per_class,
        "bench_queries_per_class_cap": queries_per_class or None,
        "unseen_classes": len(catalog_classes), "training_classes": len(data.class_keys),
        "catalog_photos": len(data.catalog), "query_photos_in_split": len(data.query), "query_photos_used": len(query),
        "photos_without_coin_in_crop_cache": data.no_coin,
        "crop_cache": _rel(data.cache_folder) if data.cache_folder else None,
        "crop_cache_segmenter_fingerprint": _segmenter_of_cache(data.cache_folder),
    }
    if set(catalog_classes) & set(data.class_keys):
        raise RuntimeError("the rebuilt split has catalog classes that were trained on; the split is not unseen")
    return _Split(list(data.catalog), query, info)


# --------------------------------------------------------------------------------------------------- main


def _torch_vectors(args: argparse.Namespace, model, cfg, split: _Split, checkpoint: Path, fingerprint: str
                   ) -> tuple[np.ndarray, np.ndarray, dict]:
    import torch
    from coinvision.trainer.emb_train import embed_samples

    if args.torch_source == "cache":
        cat = embed_samples(model, split.catalog, cfg, torch.device("cpu"))
        query = embed_samples(model, split.query, cfg, torch.device("cpu"))
        source = {"kind": "crop_cache", "folder": split.info["crop_cache"],
                  "how": "the training's cached crops (torch segmenter -> coin_crop, lossless PNG) embedded with "
                         "trainer.emb_train.embed_samples: exactly what the trainer validated on"}
        return cat, query, source
    from coinvision.sdk.recognizer import Recognizer
    from coinvision.trainer.emb_data import SegmenterCropSource, make_crop_source
    from coinvision.trainer.emb_model import embedder_metadata
    from coinvision.trainer.torch_runtime import torch_loaded_model

    crop_source = make_crop_source(cfg)  # the segmenter the embedder's config names, as the training used
    if not isinstance(crop_source, SegmenterCropSource):
        raise SystemExit("--torch-source pipeline needs a segmenter; this embedder was trained without background "
                         "removal, use --torch-source cache")
    recognizer = Recognizer(crop_source.segmenter,
                            torch_loaded_model(model, embedder_metadata(cfg, fingerprint), checkpoint))
    paths = [s.image_path for s in split.catalog] + [s.image_path for s in split.query]
    vectors, no_coin = embed_with_recognizer(recognizer, paths)
    cat, query = vectors[: len(split.catalog)], vectors[len(split.catalog):]
    source = {"kind": "torch_pipeline", "crop_source": crop_source.key, "photos_without_coin": no_coin,
              "how": "trainer.torch_runtime: the SDK's Recognizer with the PyTorch embedder, photo by photo "
                     "(the config's segmenter -> coin_crop -> embedder)"}
    return cat, query, source


def _evaluate(name: str, cat: np.ndarray, query: np.ndarray, split: _Split, dim: int | None):
    from coinvision.sdk.evaluation import evaluate_retrieval

    check_vectors(f"{name} catalog", cat, len(split.catalog), dim)
    check_vectors(f"{name} queries", query, len(split.query), dim)
    metrics = evaluate_retrieval(query, split.query_labels, cat, split.catalog_labels,
                                 query_groups=split.query_groups)
    if metrics.n_query != len(split.query) or metrics.n_catalog != len(split.catalog):
        raise RuntimeError(f"{name}: scored {metrics.n_query}/{metrics.n_catalog} query/catalog photos, the split "
                           f"has {len(split.query)}/{len(split.catalog)}")
    return metrics


def _run_runtime(spec: RuntimeSpec, args: argparse.Namespace, split: _Split, budget_s: float | None,
                 checkpoint_fingerprint: str, torch_vecs: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
    recognizer = load_recognizer(spec, args.threads)
    paths = [s.image_path for s in split.catalog] + [s.image_path for s in split.query]
    started = time.perf_counter()
    vectors, no_coin = embed_with_recognizer(recognizer, paths, budget_s=budget_s)
    seconds = time.perf_counter() - started
    cat, query = vectors[: len(split.catalog)], vectors[len(split.catalog):]
    metrics = _evaluate(spec.name, cat, query, split, recognizer.dim)
    same_weights = recognizer.fingerprint == checkpoint_fingerprint
    cosine = _cosine_stats(vectors, np.vstack(torch_vecs)) if same_weights and \
        vectors.shape[1] == torch_vecs[0].shape[1] else None
    return _metrics_entry(
        spec.name, metrics, seconds, len(paths), files=[_rel(spec.segmenter), _rel(spec.embedder)],
        embedder_quantization=recognizer.embedder_meta.quantization,
        segmenter_quantization=recognizer.segmenter_meta.quantization,
        embedder_fingerprint=recognizer.fingerprint, segmenter_fingerprint=recognizer.segmenter_meta.fingerprint,
        same_weights_as_checkpoint=same_weights, cosine_vs_pytorch=cosine, photos_without_coin=no_coin,
        same_segmenter_as_crop_cache=recognizer.segmenter_meta.fingerprint == split.info[
            "crop_cache_segmenter_fingerprint"],
        note=spec.note)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"at most {QUICK_QUERIES_PER_CLASS} queries per class; runtimes over the time budget "
                             "are skipped")
    parser.add_argument("--checkpoint", default=None,
                        help="embedder checkpoint (default: the one --models was exported from, else the newest)")
    parser.add_argument("--models", default=str(DEFAULT_MODELS), help="folder of exported models")
    parser.add_argument("--threads", type=int, default=1, help="threads for torch, the runtimes, numpy and faiss")
    parser.add_argument("--torch-source", choices=("cache", "pipeline"), default="cache",
                        help="PyTorch on the training's crop cache, or the full torch pipeline photo by photo")
    parser.add_argument("--queries-per-class", type=int,
                        help=f"cap on queries per class on top of the split (default: quick "
                             f"{QUICK_QUERIES_PER_CLASS}, else the trainer's split unchanged)")
    parser.add_argument("--runtime-budget-s", type=float,
                        help=f"skip a runtime projected to take longer (default: quick {QUICK_RUNTIME_BUDGET_S:g}, "
                             "else no limit)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="JSON path (default benchmarks/results/retrieval.json)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    seed_everything(args.seed)
    queries_per_class = args.queries_per_class if args.queries_per_class is not None else \
        (QUICK_QUERIES_PER_CLASS if args.quick else 0)
    budget_s = args.runtime_budget_s if args.runtime_budget_s is not None else \
        (QUICK_RUNTIME_BUDGET_S if args.quick else None)
    budget_s = budget_s if budget_s else None

    import cv2
    import torch
    from coinvision.sdk.errors import CoinVisionError
    from coinvision.sdk.evaluation import DESIGN_RECALL
    from coinvision.trainer.emb_model import load_embedder

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(1)  # pre/post-processing single-threaded, as on the phone's caller thread
    models = _existing(args.models)
    checkpoint = _existing(args.checkpoint) if args.checkpoint else release_checkpoint("embedder", models)
    if checkpoint is None:
        print("bench_retrieval: no embedder checkpoint under runs/embedder/*/best.pt (training outputs are not in the "
              "repository); pass --checkpoint, or train one with `make models`", file=sys.stderr)
        return MISSING_INPUTS_EXIT
    with threadpool_limits(args.threads):
        try:
            model, cfg, ckpt = load_embedder(checkpoint)
            cfg = _resolve_config_paths(cfg)
            started = time.perf_counter()
            split = load_split(cfg, queries_per_class, args.seed)
        except CoinVisionError as exc:
            print(f"bench_retrieval: cannot rebuild the unseen-class split from {checkpoint}: {exc}\n"
                  "  pass --checkpoint with a trained embedder whose data_roots exist (train one with "
                  "`coinvision train embedder`)", file=sys.stderr)
            return MISSING_INPUTS_EXIT
        print(f"split from {_rel(checkpoint)} (epoch {ckpt.epoch}, fingerprint {ckpt.fingerprint}): "
              f"{len(split.catalog)} catalog + {len(split.query)} query photos of {split.info['unseen_classes']} "
              f"unseen classes ({time.perf_counter() - started:.0f} s)", flush=True)

        measured: list[dict[str, Any]] = []
        skipped: list[dict[str, str]] = []
        failed: list[dict[str, str]] = []

        started = time.perf_counter()
        cat, query, torch_source = _torch_vectors(args, model, cfg, split, checkpoint, ckpt.fingerprint)
        seconds = time.perf_counter() - started
        metrics = _evaluate("pytorch", cat, query, split, cfg.embedding_dim)
        torch_entry = _metrics_entry("pytorch", metrics, seconds, len(cat) + len(query), torch_source=torch_source,
                                     embedder_fingerprint=ckpt.fingerprint)
        stored = ckpt.metrics.get("recall@1")
        full_split = queries_per_class == 0 and args.torch_source == "cache"
        torch_entry["checkpoint_recall@1"] = stored
        if stored is not None and full_split:
            diff = abs(metrics.recall_at[1] - float(stored))
            torch_entry["checkpoint_recall@1_diff"] = diff
            if diff > MAX_CHECKPOINT_RECALL_DIFF:
                print(f"bench_retrieval: PyTorch Recall@1 {metrics.recall_at[1]:.4f} on the rebuilt split differs "
                      f"from the {stored:.4f} stored in {checkpoint}: the split or the crops are not the ones the "
                      "training validated on; nothing written", file=sys.stderr)
                return 1
        measured.append(torch_entry)
        stored_note = f"[checkpoint stored R@1 {stored:.4f}]  " if stored is not None else ""
        print(f"  pytorch ({torch_source['kind']}): R@1 {metrics.recall_at[1]:.4f}  MAP@R {metrics.map_at_r:.4f}  "
              f"{stored_note}{seconds:.0f} s", flush=True)

        specs, skipped_specs = discover_runtimes(_existing(args.models))
        skipped.extend(skipped_specs)
        for spec in specs:
            try:
                entry = _run_runtime(spec, args, split, budget_s, ckpt.fingerprint, (cat, query))
            except BudgetExceeded as exc:
                skipped.append({"source": spec.name, "reason": f"--quick time budget: {exc}"})
                print(f"  {spec.name}: skipped ({exc})", flush=True)
                continue
            except Exception as exc:  # a runtime that cannot load or fails its checks is recorded, not scored
                failed.append({"source": spec.name, "reason": f"{type(exc).__name__}: {exc}"})
                print(f"  {spec.name}: FAILED: {exc}", flush=True)
                continue
            measured.append(entry)
            cosine = entry["cosine_vs_pytorch"]
            print(f"  {spec.name}: R@1 {entry['recall_at'][1]:.4f}  MAP@R {entry['map_at_r']:.4f}  "
                  f"{entry['embed_s']:.0f} s" + (f"  cos vs torch mean {cosine['mean']:.4f} min {cosine['min']:.4f}"
                                                 if cosine else "  (other weights than the checkpoint)"), flush=True)

        packs = pack_quantization(cat, split.catalog_labels, query, split.query_labels, fingerprint=ckpt.fingerprint)
        packs["vectors_from"] = "pytorch"
        for quant, entry in packs["quants"].items():
            print(f"  pack {quant}: R@1 {entry['recall_at'][1]:.4f}  MAP@R {entry['map_at_r']:.4f}  "
                  f"cost {entry['recall@1_cost_points_vs_fp32']:+.2f} pts  {entry['bytes_per_vector']:.0f} B/vector",
                  flush=True)

    table = [_row("design bar (their data)", dict(DESIGN_RECALL), "", "", "", "reference")]
    for e in measured:
        note = "same weights as checkpoint" if e.get("same_weights_as_checkpoint") else ""
        if e["source"] == "pytorch":
            note = f"torch, {e['torch_source']['kind']}"
        elif e.get("same_weights_as_checkpoint") is False:
            note = f"other weights ({e['embedder_fingerprint']}) than the checkpoint"
        note = "; ".join(n for n in (note, e.get("note", "")) if n)
        table.append(_row(e["source"], e["recall_at"], e["map_at_r"], e["n_queries"], e["n_catalog"], note))
    for quant, entry in packs["quants"].items():
        table.append(_row(f"pack {quant}", entry["recall_at"], entry["map_at_r"], packs["n_queries"],
                          packs["n_catalog"], f"R@1 cost vs fp32 {entry['recall@1_cost_points_vs_fp32']:+.2f} pts, "
                          f"{entry['bytes_per_vector']:.0f} B/vector"))
    for status, entries in (("skipped", skipped), ("FAILED", failed)):
        table.extend(_row(e["source"], None, "", "", "", f"{status}: {e['reason']}") for e in entries)
    results = {
        "checkpoint": _rel(checkpoint), "checkpoint_epoch": ckpt.epoch, "checkpoint_fingerprint": ckpt.fingerprint,
        "checkpoint_metrics": {k: v for k, v in ckpt.metrics.items() if isinstance(v, int | float)},
        "models_dir": _rel(_existing(args.models)), "threads": args.threads, "seed": args.seed, "quick": args.quick,
        "runtime_budget_s": budget_s, "split": split.info, "design_recall": DESIGN_RECALL,
        "recall_definition": "share of queries whose class is among the top-k catalog classes (class score = best "
                             "cosine of its vectors, as a pack ranks coins); MAP@R: pytorch-metric-learning",
        "measured": measured, "pack_quantization": packs, "skipped": skipped, "failed": failed,
    }
    path = write_result("retrieval", results, table, args.out)
    print(f"wrote {path}")
    return 1 if failed else 0  # skipped sources are recorded with their reason, not failures


if __name__ == "__main__":
    sys.exit(main())
