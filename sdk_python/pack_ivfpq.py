"""The ``ivfpq`` vector encoding for world-sized packs: an inverted-file coarse quantizer + product-quantized residuals.

A vector ``u`` (unit, 64-d) is stored as the index ``l`` of its nearest of ``L`` coarse centroids (implicit: vectors
are stored list by list) and ``M`` one-byte codes, one per sub-space of ``dim / M`` components, naming the nearest of
256 sub-centroids to the residual ``u - c_l``. Dequantised: ``x = c_l + concat_j B[j][code_j]``. A search scores
only the vectors of the ``nprobe`` lists whose centroids are nearest the query, with one 256-entry lookup table per
sub-space, so it touches a few percent of the codes. Numpy only (the SDK runs on the phone's stack): training is a
seeded Lloyd k-means, deterministic for given inputs. docs/PACK_FORMAT.md (section 8) specifies the bytes and the
search for the Swift/Kotlin/TypeScript SDKs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "CODEBOOK_SIZE",
    "INDEX_HEADER_BYTES",
    "IvfPqIndex",
    "IvfPqParams",
    "decode",
    "default_params",
    "encode",
    "list_of_vectors",
    "probed_scores",
    "section_bytes",
]

CODEBOOK_SIZE = 256  # one byte per sub-space code
INDEX_HEADER_BYTES = 16
_BLOCK = 16384  # rows per block wherever a (rows, centroids) temporary is made: bounded memory at 800k vectors
_TRAIN_PER_LIST = 64  # k-means training points per coarse centroid (capped by N)
_PQ_TRAIN = 32768  # training residuals per sub-space codebook (128 per centroid: plenty in 2 dimensions)
_ITERATIONS = 12


@dataclass(frozen=True)
class IvfPqParams:
    """Build-time shape of the index: ``lists`` coarse centroids, ``subspaces`` codes per vector, ``nprobe``."""

    lists: int
    subspaces: int
    nprobe: int
    seed: int = 0


@dataclass(frozen=True, eq=False)
class IvfPqIndex:
    """What a reader needs besides the codes: centroids ``(L, dim)``, codebooks ``(M, 256, dim/M)`` (float32),
    ``offsets`` ``(L+1,)`` int64 (list ``l`` holds vectors ``offsets[l]..offsets[l+1]-1``) and ``nprobe``."""

    centroids: np.ndarray = field(repr=False)
    codebooks: np.ndarray = field(repr=False)
    offsets: np.ndarray = field(repr=False)
    nprobe: int = 1

    @property
    def lists(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def subspaces(self) -> int:
        return int(self.codebooks.shape[0])


def default_params(n: int, dim: int) -> IvfPqParams:
    """The builder's defaults: 512 to 1024 vectors per list (L a power of two, 1..4096), sub-spaces of 2
    components (32 one-byte codes at dim 64; 4-component sub-spaces lost 1.5 points of Recall@1 on real
    embeddings), nprobe = L/8 (a search scores ~1/8 of the codes). Figures: benchmarks/bench_world_pack.py."""
    lists = 1
    while lists * 2 * 512 <= n and lists < 4096:
        lists *= 2
    subspaces = dim // 2 if dim % 2 == 0 else dim
    return IvfPqParams(lists=lists, subspaces=subspaces, nprobe=max(1, lists // 8))


def section_bytes(n: int, dim: int, lists: int, subspaces: int) -> int:
    """Bytes of an ivfpq vector section (docs/PACK_FORMAT.md 8.1); Python ints, so a hostile header cannot overflow."""
    return (INDEX_HEADER_BYTES + 4 * (lists + 1) + 4 * lists * dim + 4 * CODEBOOK_SIZE * dim
            + n * (4 + subspaces))


# ---------------------------------------------------------------------------------------------- training


def _nearest(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the nearest centre (squared L2) of each row, in blocks; ties -> lowest index (argmin)."""
    c32 = centres.astype(np.float32)
    c_sq = np.einsum("ij,ij->i", c32, c32)
    out = np.empty(len(x), dtype=np.int64)
    for start in range(0, len(x), _BLOCK):
        # float32: twice the BLAS speed of float64; a near-tie may pick the other centre, which costs nothing.
        block = x[start : start + _BLOCK].astype(np.float32)
        out[start : start + len(block)] = np.argmin(c_sq - 2.0 * (block @ c32.T), axis=1)
    return out


def _kmeans(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Lloyd k-means (float64), seeded from distinct random rows; an emptied centre restarts at a random row."""
    centres = x[rng.choice(len(x), size=k, replace=False)].copy()
    for _ in range(_ITERATIONS):
        assign = _nearest(x, centres)
        counts = np.bincount(assign, minlength=k)
        # Per-component bincount: the sums of each cluster's rows (np.add.at is ~50x slower).
        sums = np.stack([np.bincount(assign, weights=x[:, d], minlength=k) for d in range(x.shape[1])], axis=1)
        empty = counts == 0
        centres[~empty] = sums[~empty] / counts[~empty, None]
        if np.any(empty):
            centres[empty] = x[rng.choice(len(x), size=int(empty.sum()), replace=False)]
    return centres


def encode(unit: np.ndarray, params: IvfPqParams) -> tuple[IvfPqIndex, np.ndarray, np.ndarray]:
    """Train on and encode unit rows ``(N, dim)`` float64: ``(index, order, codes)``.

    ``order`` is the stable permutation of the input rows into list order (rows of one list keep their input
    order); ``codes`` ``(N, M)`` uint8 are in that order. The caller checked N >= 1 and ``dim % M == 0``.
    """
    n, dim = unit.shape
    rng = np.random.default_rng(params.seed)
    lists = min(params.lists, n)
    sample = unit[rng.choice(n, size=min(n, lists * _TRAIN_PER_LIST), replace=False)]
    centroids = _kmeans(sample, lists, rng).astype(np.float32)
    assign = _nearest(unit, centroids.astype(np.float64))
    order = np.argsort(assign, kind="stable")
    offsets = np.searchsorted(assign[order], np.arange(lists + 1), side="left").astype(np.int64)
    residual = unit[order] - centroids.astype(np.float64)[assign[order]]
    m, dsub = params.subspaces, dim // params.subspaces
    codebooks = np.empty((m, CODEBOOK_SIZE, dsub), dtype=np.float32)
    codes = np.empty((n, m), dtype=np.uint8)
    train_rows = rng.choice(n, size=min(n, _PQ_TRAIN), replace=False)
    for j in range(m):
        sub = np.ascontiguousarray(residual[:, j * dsub : (j + 1) * dsub])  # strided views defeat BLAS
        train = sub[train_rows]
        # Fewer distinct training rows than 256: pad the codebook by repeating rows (codes stay valid).
        k = min(CODEBOOK_SIZE, len(train))
        book = _kmeans(train, k, rng)
        if k < CODEBOOK_SIZE:
            book = np.concatenate([book, np.repeat(book[:1], CODEBOOK_SIZE - k, axis=0)])
        codebooks[j] = book.astype(np.float32)
        codes[:, j] = _nearest(sub, codebooks[j].astype(np.float64))
    nprobe = max(1, min(params.nprobe, lists))
    return IvfPqIndex(centroids, codebooks, offsets, nprobe), order, codes


# ---------------------------------------------------------------------------------------------- decoding / search


def list_of_vectors(offsets: np.ndarray) -> np.ndarray:
    """List index of every vector ``(N,)`` int64, from the ``(L+1,)`` offsets."""
    return np.repeat(np.arange(len(offsets) - 1, dtype=np.int64), np.diff(offsets))


def decode(index: IvfPqIndex, lists: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Dequantised float32 rows: ``c_l + concat_j B[j][code_j]`` (one float32 addition per component)."""
    m = index.subspaces
    residual = np.concatenate([index.codebooks[j][codes[:, j]] for j in range(m)], axis=1) if len(codes) else (
        np.zeros((0, index.centroids.shape[1]), np.float32))
    return index.centroids[lists] + residual


def decoded_norms(index: IvfPqIndex, codes: np.ndarray) -> np.ndarray:
    """``‖x_i‖`` of every dequantised vector, float64, decoded one block at a time (no (N, dim) copy)."""
    lists = list_of_vectors(index.offsets)
    out = np.empty(len(codes), dtype=np.float64)
    for start in range(0, len(codes), _BLOCK):
        rows = decode(index, lists[start : start + _BLOCK], codes[start : start + _BLOCK]).astype(np.float64)
        out[start : start + len(rows)] = np.sqrt(np.einsum("ij,ij->i", rows, rows))
    return out


def probed_lists(index: IvfPqIndex, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ``nprobe`` lists to scan for a unit float32 query and ``q · c_l`` of every list.

    Lists are ranked by the L2 distance from the query to their centroid, i.e. by ``q · c_l - ‖c_l‖² / 2``
    (ties by list index): the rule that assigned the vectors to lists, so the query's own list comes first
    (ranking by ``q · c_l`` alone favours long centroids: Recall@1 68.6 % instead of 69.0 % at 20k vectors).
    """
    coarse = index.centroids @ query
    half_sq = 0.5 * np.einsum("ij,ij->i", index.centroids, index.centroids)
    order = np.lexsort((np.arange(len(coarse)), -(coarse - half_sq)))
    return order[: index.nprobe], coarse


def probed_scores(
    index: IvfPqIndex, codes: np.ndarray, inv_norm: np.ndarray, query: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(vector ids, cosines)`` float32 of every vector in the probed lists for one unit float32 query.

    ``x_i · q = q · c_l + Σ_j T[j][code_ij]`` with the lookup table ``T[j][k] = q_j · B[j][k]`` (``q_j`` the j-th
    sub-vector of the query), times ``1 / ‖x_i‖``.
    """
    probe, coarse = probed_lists(index, query)
    m, dsub = index.subspaces, index.codebooks.shape[2]
    table = np.einsum("jkd,jd->jk", index.codebooks, query.reshape(m, dsub))
    starts, stops = index.offsets[probe], index.offsets[probe + 1]
    ids = np.concatenate([np.arange(s, e) for s, e in zip(starts.tolist(), stops.tolist(), strict=True)])
    base = np.repeat(coarse[probe], stops - starts)
    sub = codes[ids]
    scores = base.astype(np.float32)
    for j in range(m):
        scores += table[j].take(sub[:, j])
    return ids, scores * inv_norm[ids]
