"""Is a candidate's Recall@1 another than the release's, or noise? Every query through each models folder's phone
pipeline (top-1 right or wrong), and each folder against the first: the queries it gains, those it loses, and the
exact McNemar test's two-sided p (the binomial test of the gains among the queries that changed).

    python -m benchmarks.bench_paired_recall --models models/release /tmp/candidate_release [...]
    python -m benchmarks.bench_paired_recall --models models/release DIR --trained-coins

Why: the release's figures were reached by many changes each kept for scoring higher on these same 975 queries, so a
candidate a few queries below them may be noise; a loss that is one-sided (many queries lost, few gained) is not.
Catalog and queries as ``bench_mask_sensitivity``'s (held-out classes; ``--trained-coins``: the training classes'
first 3 train/ photos as the catalog, val_seen/ as the queries), each cut and embedded by its own folder's pipeline.
Writes ``benchmarks/results/paired_recall.json`` with every folder's per-query hits.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
from coinvision.sdk.recognizer import Recognizer
from scipy.stats import binomtest

from benchmarks.bench_mask_sensitivity import add_split_options, outline_vectors, split_photos, top1_hits
from benchmarks.common import MISSING_INPUTS_EXIT, ROOT, add_compare_models_options, write_result


def pipeline_hits(recognizer: Recognizer, catalog: list[tuple[Path, str]], queries: list[tuple[Path, str]]
                  ) -> np.ndarray:
    """Per query: does the folder's pipeline (its own masks, unmoved) name its class first?"""
    catalog_vectors = outline_vectors(recognizer, [p for p, _ in catalog], [0], "catalog")[0][:, 0]
    query_vectors = outline_vectors(recognizer, [p for p, _ in queries], [0], "queries")[0][:, 0]
    return top1_hits(catalog_vectors, np.array([c for _, c in catalog]), query_vectors,
                     np.array([c for _, c in queries]))


def paired(base: np.ndarray, other: np.ndarray) -> dict[str, Any]:
    """Queries ``other`` gets right that ``base`` misses (gained) and the reverse (lost); exact McNemar p."""
    gained, lost = int((other & ~base).sum()), int((base & ~other).sum())
    p_value = binomtest(gained, gained + lost, 0.5).pvalue if gained + lost else 1.0
    return {"recall@1": float(other.mean()), "gained": gained, "lost": lost, "mcnemar_p": float(p_value)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_compare_models_options(parser)
    add_split_options(parser)
    parser.add_argument("--out", type=Path, default=None, help="JSON (default benchmarks/results/paired_recall.json)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    photos = split_photos(args.split, trained_coins=args.trained_coins, tool="bench_paired_recall")
    if photos is None:
        return MISSING_INPUTS_EXIT
    catalog, queries = photos
    hits: dict[str, np.ndarray] = {}
    for models_dir in args.models:
        recognizer = Recognizer.from_dir(models_dir, runtime=args.runtime, num_threads=args.threads)
        hits[str(models_dir)] = pipeline_hits(recognizer, catalog, queries)
    base_name = str(args.models[0])
    table = [{"models": name, **paired(hits[base_name], h)} for name, h in hits.items()]
    print(f"{'models':<40} {'R@1':>7} {'gained':>7} {'lost':>5} {'McNemar p':>10}   (against {base_name})")
    for row in table:
        print(f"{row['models']:<40.40} {row['recall@1']:>7.4f} {row['gained']:>7d} {row['lost']:>5d} "
              f"{row['mcnemar_p']:>10.3f}")
    out = args.out or ROOT / "benchmarks" / "results" / "paired_recall.json"
    results = {"catalog": len(catalog), "queries": len(queries), "runtime": args.runtime, "base": base_name,
               "classes": "trained" if args.trained_coins else "held-out",
               "query_photos": [str(p.relative_to(args.split)) for p, _ in queries],
               "hits": {name: h.astype(int).tolist() for name, h in hits.items()}}
    path = write_result("paired_recall", results, table, out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
