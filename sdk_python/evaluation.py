"""Retrieval metrics on embeddings: class-level Recall@k, MAP@R, the unknown-coin threshold — numpy only.

The product question is "is the right COIN among the top k coins shown?", so Recall@k here counts distinct
catalog classes, not neighbours: a query's catalog neighbours are ranked by cosine (inner product of unit
vectors), each class takes the rank of its first (best) vector, and a hit at k means the query's class
ranks < k. This equals ranking classes by their best cosine, which is how a pack scores a coin.
PML's ``precision_at_1`` is per neighbour, which agrees with Recall@1 but not with Recall@k for k > 1.

This module is the SDK's, so ``coinvision eval retrieval`` runs on an SDK-only install: exact search is a
matrix product here (evaluation sets are thousands of photos, not millions); faiss stays the server's.
MAP@R is pytorch-metric-learning's definition (``AccuracyCalculator``'s ``mean_average_precision_at_r``), written
in numpy; the tests check both agree.

Queries whose class has no catalog vector cannot be answered; they are counted (``n_unanswerable``) and
left out of every average, as PML does for MAP@R.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from coinvision.sdk.errors import DatasetError
from coinvision.sdk.files import IMAGE_SUFFIXES

__all__ = [
    "DESIGN_RECALL",
    "RECALL_KS",
    "RetrievalMetrics",
    "UnknownCalibration",
    "calibrate_unknown_threshold",
    "class_ranks",
    "evaluate_folders",
    "evaluate_retrieval",
    "first_per_class",
    "format_table",
    "list_class_folder",
    "map_at_r",
]

log = logging.getLogger(__name__)

RECALL_KS = (1, 2, 5, 10, 20)
# The bar from the design document (Recall@k on unseen classes).
DESIGN_RECALL = {1: 0.90, 2: 0.91, 5: 0.96, 10: 0.99, 20: 1.00}


@dataclass(frozen=True)
class RetrievalMetrics:
    recall_at: dict[int, float]  # k -> share of answerable queries whose class is in the top-k catalog classes
    map_at_r: float  # PML mean_average_precision_at_r (catalog neighbours, R = the class's catalog count)
    class_mean_recall_at_1: float  # Recall@1 averaged per query class first (small classes weigh the same)
    recall_at_1_by_group: dict[str, float] = field(default_factory=dict)  # e.g. per dataset
    n_query: int = 0
    n_catalog: int = 0
    n_catalog_classes: int = 0
    n_unanswerable: int = 0  # queries whose class has no catalog vector (left out)
    unknown: UnknownCalibration | None = None  # evaluate_folders(unknown_target=...): the calibrated threshold

    def as_row(self) -> dict[str, float]:
        row: dict[str, float] = {f"recall@{k}": v for k, v in self.recall_at.items()}
        row["map@r"] = self.map_at_r
        row["class_mean_recall@1"] = self.class_mean_recall_at_1
        row.update({f"recall@1[{g}]": v for g, v in self.recall_at_1_by_group.items()})
        return row


def _unit_rows(x: np.ndarray, name: str) -> np.ndarray:
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if x.ndim != 2 or not len(x):
        raise DatasetError(f"{name}: expected a non-empty (N, D) array of embeddings, got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if not np.all(np.isfinite(x)) or np.any(norms == 0):
        raise DatasetError(f"{name}: embeddings contain NaN/inf or zero vectors; check the model output")
    return x / norms


def _encode(query_labels: Sequence[Any], catalog_labels: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    _, codes = np.unique(np.asarray([*map(str, query_labels), *map(str, catalog_labels)]), return_inverse=True)
    return codes[: len(query_labels)], codes[len(query_labels) :]


def class_ranks(query_emb: np.ndarray, query_codes: np.ndarray, catalog_emb: np.ndarray,
                catalog_codes: np.ndarray) -> np.ndarray:
    """0-based rank of each query's class among the distinct catalog classes (by best cosine); a query whose
    class is not in the catalog gets ``n_classes`` (never a hit)."""
    neighbours = _ranked_neighbours(query_emb, catalog_emb)  # every catalog vector, best first
    n_q, n_c = neighbours.shape
    n_codes = int(max(query_codes.max(), catalog_codes.max())) + 1
    ranked_codes = catalog_codes[neighbours]  # (Q, N) class of each neighbour
    # first position at which each class appears in each query's ranking
    first = np.full((n_q, n_codes), n_c, dtype=np.int64)
    rows = np.repeat(np.arange(n_q), n_c)
    np.minimum.at(first, (rows, ranked_codes.ravel()), np.tile(np.arange(n_c), n_q))
    own = first[np.arange(n_q), query_codes]
    rank = np.sum(first < own[:, None], axis=1)  # classes whose best vector comes before the query's class
    return np.where(own < n_c, rank, len(np.unique(catalog_codes)))


def _ranked_neighbours(query_emb: np.ndarray, catalog_emb: np.ndarray) -> np.ndarray:
    """(Q, N) catalog indices of each query, by descending cosine (ties: lower index first)."""
    return np.argsort(-(query_emb @ catalog_emb.T), axis=1, kind="stable")


def map_at_r(query_emb: np.ndarray, query_codes: np.ndarray, catalog_emb: np.ndarray,
             catalog_codes: np.ndarray) -> float:
    """Mean over queries of AP@R: R = the query class's catalog count, precision summed at the relevant
    positions among the first R neighbours, divided by R (Musgrave et al. 2020, as PML computes it)."""
    relevant = catalog_codes[_ranked_neighbours(query_emb, catalog_emb)] == query_codes[:, None]  # (Q, N)
    r = np.bincount(catalog_codes, minlength=int(query_codes.max()) + 1)[query_codes]  # (Q,)
    positions = np.arange(1, relevant.shape[1] + 1)
    within_r = positions[None, :] <= r[:, None]
    precision = np.cumsum(relevant, axis=1) / positions[None, :]
    return float(np.mean(np.sum(precision * relevant * within_r, axis=1) / r))


def evaluate_retrieval(query_emb: np.ndarray, query_labels: Sequence[Any], catalog_emb: np.ndarray,
                       catalog_labels: Sequence[Any], *, ks: Sequence[int] = RECALL_KS,
                       query_groups: Sequence[str] | None = None) -> RetrievalMetrics:
    """Recall@k over catalog classes, MAP@R and per-group Recall@1 for unit (or any non-zero) embeddings.

    ``query_groups`` (one name per query, e.g. the dataset) adds Recall@1 per group.
    """
    q = _unit_rows(query_emb, "query embeddings")
    c = _unit_rows(catalog_emb, "catalog embeddings")
    if len(query_labels) != len(q) or len(catalog_labels) != len(c):
        raise DatasetError(
            f"{len(q)} query / {len(c)} catalog embeddings but {len(query_labels)} / {len(catalog_labels)} labels"
        )
    if q.shape[1] != c.shape[1]:
        raise DatasetError(f"query dim {q.shape[1]} != catalog dim {c.shape[1]}: embed both with the same model")
    q_codes, c_codes = _encode(query_labels, catalog_labels)
    ranks = class_ranks(q, q_codes, c, c_codes)
    answerable = np.isin(q_codes, c_codes)
    n_unanswerable = int((~answerable).sum())
    if n_unanswerable:
        log.warning("%d of %d queries have a class with no catalog image; they are left out", n_unanswerable, len(q))
    if not answerable.any():
        raise DatasetError("no query class appears in the catalog; catalog and query folders must share class names")
    r = ranks[answerable]
    recall = {int(k): float(np.mean(r < k)) for k in ks}
    hit1 = (r < 1).astype(np.float64)
    codes = q_codes[answerable]
    per_class = [hit1[codes == code].mean() for code in np.unique(codes)]
    by_group: dict[str, float] = {}
    if query_groups is not None:
        groups = np.asarray(query_groups, dtype=str)[answerable]
        by_group = {str(g): float(hit1[groups == g].mean()) for g in np.unique(groups)}
    return RetrievalMetrics(
        recall_at=recall,
        map_at_r=map_at_r(q[answerable], codes, c, c_codes),
        class_mean_recall_at_1=float(np.mean(per_class)),
        recall_at_1_by_group=by_group,
        n_query=len(q),
        n_catalog=len(c),
        n_catalog_classes=len(np.unique(c_codes)),
        n_unanswerable=n_unanswerable,
    )


@dataclass(frozen=True)
class UnknownCalibration:
    """Cosine threshold for "unknown coin": a best match below it is reported as unknown."""

    threshold: float
    unknown_accept_rate: float  # share of simulated unknown queries whose best (wrong) match passes
    known_accept_rate: float  # share of known queries whose own class's best cosine passes


def calibrate_unknown_threshold(query_emb: np.ndarray, query_labels: Sequence[Any], catalog_emb: np.ndarray,
                                catalog_labels: Sequence[Any], *, target_unknown_accept: float = 0.05
                                ) -> UnknownCalibration:
    """Simulate unknown coins by hiding each query's own class: its best cosine to the OTHER classes is an
    "unknown" score, its best cosine to its own class a "known" score. The threshold lets through at most
    ``target_unknown_accept`` of the unknown scores."""
    if not 0.0 <= target_unknown_accept < 1.0:
        raise ValueError(f"target_unknown_accept={target_unknown_accept}: must be in [0, 1)")
    q = _unit_rows(query_emb, "query embeddings")
    c = _unit_rows(catalog_emb, "catalog embeddings")
    q_codes, c_codes = _encode(query_labels, catalog_labels)
    sims = q @ c.T
    same = q_codes[:, None] == c_codes[None, :]
    known = np.where(same, sims, -np.inf).max(axis=1)
    unknown = np.where(same, -np.inf, sims).max(axis=1)
    known, unknown = known[np.isfinite(known)], unknown[np.isfinite(unknown)]
    if not len(known) or not len(unknown):
        raise DatasetError("calibration needs queries with a catalog class and a catalog with >= 2 classes")
    threshold = float(np.quantile(unknown, 1.0 - target_unknown_accept, method="higher"))
    threshold = float(np.nextafter(np.float32(threshold), np.float32(2.0)))  # strictly above that unknown
    return UnknownCalibration(threshold, float(np.mean(unknown >= threshold)), float(np.mean(known >= threshold)))


def format_table(metrics: RetrievalMetrics, title: str = "retrieval") -> str:
    lines = [
        f"{title}: {metrics.n_query} queries ({metrics.n_unanswerable} unanswerable), {metrics.n_catalog} catalog "
        f"images in {metrics.n_catalog_classes} classes",
        f"{'k':>4}  {'Recall@k':>8}  {'design':>6}",
    ]
    for k, v in metrics.recall_at.items():
        design = f"{DESIGN_RECALL[k]:.2f}" if k in DESIGN_RECALL else "-"
        lines.append(f"{k:>4}  {v:8.4f}  {design:>6}")
    lines.append(f"MAP@R {metrics.map_at_r:.4f}   class-mean Recall@1 {metrics.class_mean_recall_at_1:.4f}")
    lines.extend(f"Recall@1 [{g}] {v:.4f}" for g, v in metrics.recall_at_1_by_group.items())
    if metrics.unknown is not None:
        u = metrics.unknown
        lines.append(f"unknown-coin threshold {u.threshold:.4f}: lets {u.unknown_accept_rate:.1%} of simulated unknown "
                     f"coins through, accepts {u.known_accept_rate:.1%} of known ones")
    return "\n".join(lines)


def list_class_folder(root: str | Path) -> list[tuple[Path, str]]:
    """``root/<class>/<image>`` (images may sit in sub-folders of a class) -> sorted (path, class) pairs."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist; pass a folder laid out <class>/<image>")
    pairs = [(p, p.relative_to(root).parts[0]) for p in sorted(root.rglob("*"))
             if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and len(p.relative_to(root).parts) >= 2]
    if not pairs:
        raise DatasetError(f"{root}: no images in class sub-folders; lay the folder out as <class>/<image>")
    return pairs


def first_per_class(labels: Sequence[Any], per_class: int) -> list[int]:
    """Indices of the first ``per_class`` items of each label, in order (the distractors a catalog gets)."""
    taken: dict[Any, int] = {}
    keep = []
    for i, label in enumerate(labels):
        if taken.get(label, 0) < per_class:
            taken[label] = taken.get(label, 0) + 1
            keep.append(i)
    return keep


def evaluate_folders(catalog_dir: str | Path, query_dir: str | Path, embed: Callable[[np.ndarray], np.ndarray], *,
                     ks: Sequence[int] = RECALL_KS, progress: bool = True, distractor_dir: str | Path | None = None,
                     distractors_per_class: int = 3, unknown_target: float | None = None) -> RetrievalMetrics:
    """Embed every image of two ``<class>/<image>`` folders with ``embed`` (RGB uint8 -> vector) and score.

    ``distractor_dir``: more classes (e.g. the training classes) whose first ``distractors_per_class`` images join
    the catalog, as in a deployed catalog that holds every coin. Class folders named ``<dataset>__<class>`` (as
    ``coinvision data split --materialize`` writes them) add Recall@1 per dataset. ``unknown_target``: also
    calibrate the unknown-coin threshold that lets this share of simulated unknown coins through."""
    from coinvision.sdk.images import load_image
    from tqdm import tqdm

    def embed_all(pairs: list[tuple[Path, str]], desc: str) -> np.ndarray:
        return np.stack([np.asarray(embed(load_image(p)), np.float32).reshape(-1)
                         for p, _ in tqdm(pairs, desc=desc, disable=not progress)])

    catalog, query = list_class_folder(catalog_dir), list_class_folder(query_dir)
    if distractor_dir is not None:
        extra = list_class_folder(distractor_dir)
        catalog += [extra[i] for i in first_per_class([label for _, label in extra], distractors_per_class)]
    cat_emb = embed_all(catalog, "embed catalog")
    query_emb = embed_all(query, "embed queries")
    groups = [c.split("__", 1)[0] for _, c in query] if all("__" in c for _, c in query) else None
    q_labels, c_labels = [c for _, c in query], [c for _, c in catalog]
    metrics = evaluate_retrieval(query_emb, q_labels, cat_emb, c_labels, ks=ks, query_groups=groups)
    if unknown_target is None:
        return metrics
    calibration = calibrate_unknown_threshold(query_emb, q_labels, cat_emb, c_labels,
                                              target_unknown_accept=unknown_target)
    return dataclasses.replace(metrics, unknown=calibration)
