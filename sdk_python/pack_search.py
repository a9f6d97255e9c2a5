"""Exact cosine search over a pack's stored vectors: numpy only, vectorised, bounded memory.

The score of a vector is the cosine between the query and the *dequantised* stored vector. For int8 the
per-vector scale cancels out of the cosine, so scores come straight from the codes: ``(codes · q) / ‖codes‖``.
The score of a coin is the max over its vectors (a coin may have several reference photos); results are the
top-k coins, best first, ties broken by coin order in the pack (ascending coin id). docs/PACK_FORMAT.md has
the same rules for the Swift/Kotlin SDKs.
"""

from __future__ import annotations

import numpy as np

__all__ = ["coin_scores", "rescore_float64", "row_norms", "top_k"]

# Vectors converted to float32 per block: memory stays bounded (int8 packs are not inflated 4x as a whole).
_BLOCK_VECTORS = 16384
# Extra coins kept in the shortlist that float64 rescoring may reorder: float32 and float64 scores differ by
# ~1e-7, far less than the gap between the k-th and the (k+16)-th coin of any real catalog.
RESCORE_EXTRA = 16


def row_norms(data: np.ndarray) -> np.ndarray:
    """L2 norm of each stored row, in float64 (int8 sums of squares are exact), one block at a time."""
    out = np.empty(data.shape[0], dtype=np.float64)
    for start in range(0, data.shape[0], _BLOCK_VECTORS):
        rows = data[start : start + _BLOCK_VECTORS].astype(np.float64)
        out[start : start + len(rows)] = np.sqrt(np.einsum("ij,ij->i", rows, rows))
    return out


def coin_scores(
    data: np.ndarray, inv_norm: np.ndarray, coin_starts: np.ndarray, queries: np.ndarray
) -> np.ndarray:
    """``(Q, C)`` float32: max cosine per coin for unit-norm float32 ``queries`` ``(Q, dim)``.

    ``data`` is ``(N, dim)`` int8/float16/float32, ``inv_norm`` ``(N,)`` float32, and ``coin_starts`` the index of
    each coin's first vector (vectors of one coin are contiguous, coins in pack order).
    """
    n = data.shape[0]
    vector_scores = np.empty((queries.shape[0], n), dtype=np.float32)
    for start in range(0, n, _BLOCK_VECTORS):
        stop = min(start + _BLOCK_VECTORS, n)
        block = data[start:stop].astype(np.float32, copy=False)
        vector_scores[:, start:stop] = (queries @ block.T) * inv_norm[start:stop]
    return np.maximum.reduceat(vector_scores, coin_starts, axis=1)


def top_k(scores: np.ndarray, k: int) -> list[np.ndarray]:
    """Per row of ``scores`` ``(Q, C)``: indices of the ``min(k, C)`` best coins, best first, ties by index."""
    n_coins = scores.shape[1]
    k = min(k, n_coins)
    out: list[np.ndarray] = []
    if k == 0:
        return [np.zeros(0, dtype=np.int64) for _ in range(scores.shape[0])]
    # The k-th largest value of each row; every coin scoring at least that is a candidate, so ties at the
    # boundary are resolved by coin order, not by argpartition's arbitrary pick.
    kth = np.partition(scores, n_coins - k, axis=1)[:, n_coins - k]
    for row, threshold in zip(scores, kth, strict=True):
        candidates = np.flatnonzero(row >= threshold)
        order = np.argsort(-row[candidates], kind="stable")
        out.append(candidates[order[:k]])
    return out


def rescore_float64(
    data: np.ndarray, coin_starts: np.ndarray, coin_stops: np.ndarray, query: np.ndarray, coins: np.ndarray
) -> np.ndarray:
    """Float64 max-cosine of the given coins (shortlist) for one query (float64, unit norm)."""
    scores = np.empty(len(coins), dtype=np.float64)
    for i, coin in enumerate(coins):
        rows = data[coin_starts[coin] : coin_stops[coin]].astype(np.float64)
        scores[i] = np.max((rows @ query) / np.sqrt(np.einsum("ij,ij->i", rows, rows)))
    return scores
