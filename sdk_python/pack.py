"""The catalog embedding pack: one little-endian, versioned, checksummed file of reference vectors + coin table.

``build_pack`` writes it, ``read_pack`` parses it strictly (only :class:`~coinvision.sdk.errors.PackError`
subclasses come out of hostile bytes, and no allocation larger than the input), ``Pack.search`` finds the
nearest coins, and ``build_delta`` / ``apply_delta`` ship the changes between two versions. Bytes are
canonical: ``read_pack(b).to_bytes() == b``, and applying a delta reproduces the new pack byte for byte.
The byte layout is specified in docs/PACK_FORMAT.md for the Swift/Kotlin SDKs.
"""

from __future__ import annotations

import hashlib
import itertools
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np
from coinvision.sdk import pack_ivfpq, pack_search
from coinvision.sdk.errors import (
    PackBuildError,
    PackChecksumError,
    PackDeltaError,
    PackDimError,
    PackError,
    PackFingerprintError,
    PackFormatError,
    PackIOError,
    PackMagicError,
    PackQueryError,
    PackTruncatedError,
    PackVersionError,
)

__all__ = [
    "ALL_QUANTS",
    "FORMAT_VERSION",
    "QUANTS",
    "CoinRecord",
    "Delta",
    "Pack",
    "apply_delta",
    "build_delta",
    "build_pack",
    "check_dim",
    "check_fingerprint",
    "read_delta",
    "read_pack",
]

FORMAT_VERSION = 1
PACK_MAGIC = b"CVPK"
DELTA_MAGIC = b"CVPD"
HEADER_BYTES = 64
CHECKSUM_BYTES = 32
MAX_DIM = 4096
MAX_STRING_BYTES = 0xFFFF
MAX_EXTRA_ITEMS = 0xFFFF
MAX_PACK_BYTES = 1 << 31  # 2 GiB: ~29M int8 vectors of dim 64, far beyond any coin catalog
# The encodings that deltas support; ``ivfpq`` (world-sized catalogs, docs/PACK_FORMAT.md section 8) ships as
# full packs only: its codebooks are trained per pack, so a delta's codes would not fit another version's.
QUANTS = ("int8", "fp16", "fp32")
ALL_QUANTS = (*QUANTS, "ivfpq")
_QUANT_CODE = {"int8": 1, "fp16": 2, "fp32": 3, "ivfpq": 4}
_QUANT_DTYPE = {"int8": np.dtype("<i1"), "fp16": np.dtype("<f2"), "fp32": np.dtype("<f4"), "ivfpq": np.dtype("u1")}
# list_count, nprobe, subspace_count, code_bits, reserved: the 16 bytes that open an ivfpq vector section.
_IVF_HEADER = struct.Struct("<HHHH8s")
_IVF_CODE_BITS = 8
_METRIC_CODE = {"cosine": 1}
_INT8_MAX = 127
_U32_MAX = 0xFFFFFFFF
_I64 = (-(1 << 63), (1 << 63) - 1)
_RECORD_FIELDS = ("coin_id", "label", "country", "currency", "denomination", "side", "years")
# 7 empty strings (2-byte lengths) + a 2-byte extra count: the smallest possible coin record.
_MIN_RECORD_BYTES = 2 * len(_RECORD_FIELDS) + 2

# magic, version, quant, metric, dim, flags, vector_count, coin_count, catalog_version, created_at,
# table_bytes, reserved
_PACK_HEADER = struct.Struct("<4sHBBHHIIIqI28s")
# magic, version, quant, metric, dim, flags, vector_count, upsert_coin_count, removed_coin_count,
# new_created_at, table_bytes, base_catalog_version, new_catalog_version, reserved
_DELTA_HEADER = struct.Struct("<4sHBBHHIIIqIII20s")
assert _PACK_HEADER.size == HEADER_BYTES and _DELTA_HEADER.size == HEADER_BYTES
assert _IVF_HEADER.size == pack_ivfpq.INDEX_HEADER_BYTES

_FIX_BUILD = "rebuild the pack with `coinvision pack build` or download it again"


@dataclass(frozen=True)
class CoinRecord:
    """What a catalog knows about one coin; ``coin_id`` is its key in the pack."""

    coin_id: str
    label: str = ""
    country: str = ""
    currency: str = ""
    denomination: str = ""
    side: str = ""
    years: str = ""
    extra: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- encoding


def _text(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise PackBuildError(f"{what} must be a str, got {type(value).__name__} {value!r}")
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PackBuildError(f"{what} {value!r} is not valid Unicode text ({exc.reason}); fix the text") from exc
    if len(raw) > MAX_STRING_BYTES:
        raise PackBuildError(
            f"{what} is {len(raw)} bytes as UTF-8, above the {MAX_STRING_BYTES}-byte limit; shorten it"
        )
    return struct.pack("<H", len(raw)) + raw


def _record_bytes(rec: CoinRecord) -> bytes:
    where = f"coin {rec.coin_id!r}"
    parts = [_text(getattr(rec, name), f"{where} {name}") for name in _RECORD_FIELDS]
    if not isinstance(rec.extra, Mapping):
        raise PackBuildError(f"{where} extra must be a dict[str, str], got {type(rec.extra).__name__}")
    if len(rec.extra) > MAX_EXTRA_ITEMS:
        raise PackBuildError(f"{where} has {len(rec.extra)} extra items, above the {MAX_EXTRA_ITEMS} limit")
    parts.append(struct.pack("<H", len(rec.extra)))
    for key in sorted(rec.extra, key=lambda k: (not isinstance(k, str), str(k))):
        if not isinstance(key, str) or not key:
            raise PackBuildError(f"{where} extra key {key!r} must be a non-empty str")
        parts.append(_text(key, f"{where} extra key"))
        parts.append(_text(rec.extra[key], f"{where} extra[{key!r}]"))
    return b"".join(parts)


def _seal(body: bytes) -> bytes:
    return body + hashlib.sha256(body).digest()


# ---------------------------------------------------------------------------------------------- decoding


class _Cursor:
    """Bounds-checked sequential reader over one section of the input."""

    def __init__(self, buf: memoryview, start: int, end: int, section: str) -> None:
        self.buf, self.pos, self.end, self.section = buf, start, end, section

    def take(self, n: int, what: str) -> memoryview:
        if n > self.end - self.pos:
            raise PackFormatError(
                f"{self.section}: {what} at byte {self.pos} runs past the end of the section; the file is corrupt, "
                f"{_FIX_BUILD}"
            )
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def u16(self, what: str) -> int:
        return int.from_bytes(self.take(2, what), "little")

    def text(self, what: str) -> str:
        raw = self.take(self.u16(what), what)
        try:
            return bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PackFormatError(f"{self.section}: {what} is not valid UTF-8 ({exc.reason}); {_FIX_BUILD}") from exc

    def record(self) -> CoinRecord:
        values = [self.text(f"coin {name}") for name in _RECORD_FIELDS]
        if not values[0]:
            raise PackFormatError(f"{self.section}: a coin has an empty coin_id; {_FIX_BUILD}")
        extra: dict[str, str] = {}
        previous = ""
        for _ in range(self.u16("extra count")):
            key = self.text("extra key")
            if key <= previous:  # also rejects the empty key
                raise PackFormatError(
                    f"{self.section}: extra keys of coin {values[0]!r} are not unique, non-empty and sorted; "
                    f"{_FIX_BUILD}"
                )
            extra[key] = self.text("extra value")
            previous = key
        return CoinRecord(*values, extra=extra)

    def finish(self) -> None:
        if self.pos != self.end:
            raise PackFormatError(f"{self.section}: {self.end - self.pos} unexpected bytes at its end; {_FIX_BUILD}")


def _as_buffer(source: bytes | bytearray | memoryview | str | Path, kind: str) -> memoryview:
    if isinstance(source, bytes | bytearray | memoryview):
        return memoryview(source).cast("B")
    if not isinstance(source, str | Path):
        raise PackIOError(f"cannot read a {kind} from a {type(source).__name__}; pass bytes or a file path")
    path = Path(source)
    try:
        size = path.stat().st_size
        if size > MAX_PACK_BYTES:
            raise PackIOError(f"{path}: {size} bytes is above the {MAX_PACK_BYTES}-byte {kind} limit; not a pack")
        return memoryview(path.read_bytes())
    except FileNotFoundError as exc:
        raise PackIOError(f"{path}: no such {kind} file; check the path (or sync the catalog first)") from exc
    except IsADirectoryError as exc:
        raise PackIOError(f"{path}: is a directory, not a {kind} file; pass the .pack file") from exc
    except OSError as exc:
        raise PackIOError(f"{path}: cannot read the {kind} file ({exc.strerror or exc}); check permissions") from exc


def _check_envelope(buf: memoryview, magic: bytes, kind: str, name: str) -> None:
    """Magic and format version: the two checks that must come before any other field is trusted."""
    head = bytes(buf[:4])
    other = DELTA_MAGIC if magic == PACK_MAGIC else PACK_MAGIC
    truncated = f"{name} is only {len(buf)} bytes: truncated (interrupted download); download it again"
    if len(head) < 4 and magic.startswith(head):
        raise PackTruncatedError(truncated)
    if head == other:
        hint = ("this is a delta pack: apply it to its base with apply_delta(base, delta)" if kind == "pack"
                else "this is a full pack, not a delta: read it with read_pack")
        raise PackMagicError(f"{name}: {hint}")
    if head != magic:
        raise PackMagicError(
            f"{name} does not start with the {kind} magic {magic!r} (found {head!r}): not a coinvision {kind}; "
            "check that the right file was downloaded"
        )
    if len(buf) < 6:
        raise PackTruncatedError(truncated)
    version = int.from_bytes(buf[4:6], "little")
    if version > FORMAT_VERSION:
        raise PackVersionError(
            f"{name} uses format version {version}, newer than the {FORMAT_VERSION} this SDK reads; update the "
            "app/SDK (or ask the server for a version-1 pack)"
        )
    if version != FORMAT_VERSION:
        raise PackFormatError(f"{name} declares format version {version}, which never existed; the file is corrupt")
    if len(buf) < HEADER_BYTES + CHECKSUM_BYTES:
        raise PackTruncatedError(
            f"{name} is {len(buf)} bytes, less than the {HEADER_BYTES + CHECKSUM_BYTES}-byte minimum: truncated "
            "(interrupted download); download it again"
        )


def _check_length_and_checksum(buf: memoryview, expected: int, name: str) -> None:
    if len(buf) < expected:
        raise PackTruncatedError(
            f"{name} is {len(buf)} bytes but its header describes {expected}: truncated (interrupted download or "
            "corrupt header); download it again"
        )
    if len(buf) > expected:
        raise PackFormatError(
            f"{name} is {len(buf)} bytes but its header describes {expected}: {len(buf) - expected} trailing bytes "
            "(two files concatenated or a corrupt header); download it again"
        )
    body = buf[: expected - CHECKSUM_BYTES]
    if hashlib.sha256(body).digest() != bytes(buf[expected - CHECKSUM_BYTES :]):
        raise PackChecksumError(
            f"{name}: sha256 of the content does not match the stored checksum: corrupted in transit or on disk; "
            "download it again"
        )


def _decode_header_codes(quant_code: int, metric_code: int, dim: int, flags: int, reserved: bytes, name: str) -> str:
    quant = {v: k for k, v in _QUANT_CODE.items()}.get(quant_code)
    if quant is None:
        raise PackFormatError(
            f"{name}: unknown quantization code {quant_code} (1=int8, 2=fp16, 3=fp32, 4=ivfpq); {_FIX_BUILD}"
        )
    if metric_code != _METRIC_CODE["cosine"]:
        raise PackFormatError(f"{name}: unknown metric code {metric_code} (1=cosine); {_FIX_BUILD}")
    if not 1 <= dim <= MAX_DIM:
        raise PackFormatError(f"{name}: embedding dim {dim} is outside 1..{MAX_DIM}; {_FIX_BUILD}")
    if flags or any(reserved):
        raise PackFormatError(f"{name}: reserved header bytes are not zero (written by an unknown tool); {_FIX_BUILD}")
    return quant


def _vector_bytes(n: int, dim: int, quant: str) -> int:
    """Bytes of the vector section: coin index (u32) + scale (f32, int8 only) + the vector itself (not ivfpq)."""
    return n * (4 + (4 if quant == "int8" else 0) + dim * _QUANT_DTYPE[quant].itemsize)


def _read_ivf_header(buf: memoryview, dim: int, name: str) -> tuple[int, int, int]:
    """``(lists, nprobe, subspaces)`` of an ivfpq vector section, each checked (docs/PACK_FORMAT.md 8.1)."""
    if len(buf) < HEADER_BYTES + pack_ivfpq.INDEX_HEADER_BYTES + CHECKSUM_BYTES:
        raise PackTruncatedError(f"{name} is {len(buf)} bytes, too short for its ivfpq index header: truncated "
                                 "(interrupted download); download it again")
    lists, nprobe, subspaces, code_bits, reserved = _IVF_HEADER.unpack_from(buf, HEADER_BYTES)
    if lists < 1:
        raise PackFormatError(f"{name}: ivfpq list_count is 0 (must be 1..65535); {_FIX_BUILD}")
    if not 1 <= nprobe <= lists:
        raise PackFormatError(f"{name}: ivfpq nprobe {nprobe} is outside 1..list_count ({lists}); {_FIX_BUILD}")
    if subspaces < 1 or dim % subspaces:
        raise PackFormatError(
            f"{name}: ivfpq subspace_count {subspaces} does not divide dim {dim} (must be >= 1); {_FIX_BUILD}"
        )
    if code_bits != _IVF_CODE_BITS:
        raise PackFormatError(f"{name}: ivfpq code_bits {code_bits} is not 8 (the only code size); {_FIX_BUILD}")
    if any(reserved):
        raise PackFormatError(f"{name}: ivfpq reserved bytes are not zero (written by an unknown tool); {_FIX_BUILD}")
    return lists, nprobe, subspaces


def _read_ivf_section(
    buf: memoryview, n: int, dim: int, lists: int, nprobe: int, subspaces: int
) -> tuple[pack_ivfpq.IvfPqIndex, np.ndarray, np.ndarray]:
    """Index, coin index and codes of an ivfpq section — copies (the input may be reused)."""
    pos = HEADER_BYTES + pack_ivfpq.INDEX_HEADER_BYTES
    offsets = np.frombuffer(buf, dtype="<u4", count=lists + 1, offset=pos).astype(np.int64)
    pos += 4 * (lists + 1)
    centroids = np.frombuffer(buf, dtype="<f4", count=lists * dim, offset=pos).astype(np.float32).reshape(lists, dim)
    pos += 4 * lists * dim
    book_count = pack_ivfpq.CODEBOOK_SIZE * dim
    codebooks = np.frombuffer(buf, dtype="<f4", count=book_count, offset=pos).astype(np.float32).reshape(
        subspaces, pack_ivfpq.CODEBOOK_SIZE, dim // subspaces)
    pos += 4 * book_count
    coin_index = np.frombuffer(buf, dtype="<u4", count=n, offset=pos).astype(np.uint32)
    pos += 4 * n
    codes = np.frombuffer(buf, dtype=np.uint8, count=n * subspaces, offset=pos).reshape(n, subspaces).copy()
    return pack_ivfpq.IvfPqIndex(centroids, codebooks, offsets, nprobe), coin_index, codes


def _ivf_problem(index: pack_ivfpq.IvfPqIndex, coin_index: np.ndarray, codes: np.ndarray, coins: int) -> str | None:
    """What is wrong with an ivfpq section (None when canonical): offsets, finiteness, coin index order."""
    n = len(coin_index)
    if (n == 0) != (coins == 0):
        return f"{n} vectors but {coins} coins (every coin needs at least one vector)"
    offsets = index.offsets
    if offsets[0] != 0 or offsets[-1] != n or np.any(np.diff(offsets) < 0):
        return f"ivfpq list offsets do not run from 0 to vector_count ({n}) without decreasing"
    if not (np.all(np.isfinite(index.centroids)) and np.all(np.isfinite(index.codebooks))):
        return "an ivfpq centroid or codebook entry holds NaN or infinity"
    if n:
        if int(coin_index.max()) >= coins:
            return f"a coin index is >= coin_count ({coins})"
        if np.any(np.bincount(coin_index.astype(np.int64), minlength=coins) == 0):
            return "a coin has no vector"
        # Canonical order: within a list, vectors ascend by coin (the builder's stable order).
        steps = np.diff(coin_index.astype(np.int64))
        list_starts = np.zeros(n, dtype=bool)
        list_starts[offsets[1:-1][offsets[1:-1] < n]] = True
        if np.any((steps < 0) & ~list_starts[1:]):
            return "vectors of an ivfpq list are not in coin order"
    if codes.shape != (n, index.subspaces):
        return "ivfpq codes do not match the vector count"
    return None


def _read_vectors(
    buf: memoryview, n: int, dim: int, quant: str
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Coin index, int8 scales (or None), vectors — copies of the file's arrays (the input may be reused)."""
    pos = HEADER_BYTES
    coin_index = np.frombuffer(buf, dtype="<u4", count=n, offset=pos).astype(np.uint32)
    pos += 4 * n
    scales = None
    if quant == "int8":
        scales = np.frombuffer(buf, dtype="<f4", count=n, offset=pos).astype(np.float32)
        pos += 4 * n
    data = np.frombuffer(buf, dtype=_QUANT_DTYPE[quant], count=n * dim, offset=pos).reshape(n, dim)
    return coin_index, scales, data.astype(data.dtype.newbyteorder("="))


def _array_problem(
    coin_index: np.ndarray, scales: np.ndarray | None, data: np.ndarray, coins: int, quant: str
) -> str | None:
    """What is wrong with a vector section (None when canonical): grouping, scales, codes, finiteness."""
    n = len(coin_index)
    if (n == 0) != (coins == 0):
        return f"{n} vectors but {coins} coins (every coin needs at least one vector)"
    if n:
        steps = np.diff(coin_index.astype(np.int64))
        if coin_index[0] != 0 or coin_index[-1] != coins - 1 or np.any((steps != 0) & (steps != 1)):
            return "vectors are not grouped by coin in coin-table order, or a coin has no vector"
    if scales is not None and not (np.all(np.isfinite(scales)) and np.all(scales > 0)):
        return "an int8 scale is zero, negative or not finite"
    if quant == "int8":
        if np.any(data == -128):
            return "an int8 code is -128 (codes are symmetric, -127..127)"
    elif not np.all(np.isfinite(data)):
        return "a vector holds NaN or infinity"
    if n and not np.all(np.any(data != 0, axis=1)):
        return "a vector is all zeros (cosine undefined)"
    return None


# ---------------------------------------------------------------------------------------------- the pack


class Pack:
    """An immutable, validated pack. Make one with :func:`read_pack`, :meth:`from_vectors` or :func:`apply_delta`.

    The constructor checks the canonical form (coins sorted and unique, vectors grouped by coin in coin
    order, finite non-zero vectors) and raises :class:`PackFormatError` otherwise.
    """

    __slots__ = (
        "_bytes", "_catalog_id", "_catalog_version", "_coin_index", "_coin_order", "_created_at", "_data", "_dim",
        "_inv_norm", "_ivf", "_model_fingerprint", "_quant", "_records", "_records_map", "_scales", "_sha256",
        "_starts", "_stops", "_vector_coin_ids",
    )
    __hash__ = None  # type: ignore[assignment]

    def __init__(
        self,
        *,
        catalog_id: str,
        catalog_version: int,
        created_at: int,
        model_fingerprint: str,
        quant: str,
        coin_index: np.ndarray,
        scales: np.ndarray | None,
        data: np.ndarray,
        records: Sequence[CoinRecord],
        ivf: pack_ivfpq.IvfPqIndex | None = None,
        dim: int | None = None,
    ) -> None:
        # ivfpq: ``data`` holds the (N, M) uint8 codes in list order, ``ivf`` the index, ``dim`` the vector size.
        self._ivf = ivf
        self._dim = int(dim if dim is not None else data.shape[1])
        self._catalog_id = catalog_id
        self._catalog_version = int(catalog_version)
        self._created_at = int(created_at)
        self._model_fingerprint = model_fingerprint
        self._quant = quant
        self._coin_index = coin_index
        self._scales = scales
        self._data = data
        self._records = tuple(records)
        self._bytes: bytes | None = None
        self._sha256: str | None = None
        self._validate()
        arrays = [self._coin_index, self._scales, self._data]
        if ivf is not None:
            arrays += [ivf.centroids, ivf.codebooks, ivf.offsets]
        for arr in arrays:
            if arr is not None:
                arr.flags.writeable = False
        self._coin_order = tuple(r.coin_id for r in self._records)
        self._records_map = MappingProxyType({r.coin_id: r for r in self._records})
        n = len(self._coin_index)
        changes = np.flatnonzero(np.diff(self._coin_index.astype(np.int64))) + 1
        self._starts = np.concatenate([[0], changes]).astype(np.int64) if n else np.zeros(0, np.int64)
        self._stops = np.concatenate([changes, [n]]).astype(np.int64) if n else np.zeros(0, np.int64)
        if ivf is None:
            self._inv_norm = (1.0 / pack_search.row_norms(self._data)).astype(np.float32)
        else:
            norms = pack_ivfpq.decoded_norms(ivf, self._data)
            if not np.all(norms > 0):
                raise PackFormatError(f"pack {catalog_id!r}: an ivfpq vector decodes to all zeros (cosine undefined); "
                                      f"{_FIX_BUILD}")
            self._inv_norm = (1.0 / norms).astype(np.float32)
        self._vector_coin_ids: tuple[str, ...] | None = None

    def _validate(self) -> None:
        name = f"pack {self._catalog_id!r} v{self._catalog_version}"
        if not self._catalog_id or not self._model_fingerprint:
            raise PackFormatError(f"{name}: empty catalog id or model fingerprint; {_FIX_BUILD}")
        ids = [r.coin_id for r in self._records]
        if any(b <= a for a, b in itertools.pairwise(ids)):
            raise PackFormatError(f"{name}: coin table is not sorted by coin id or has duplicates; {_FIX_BUILD}")
        if (self._quant == "ivfpq") != (self._ivf is not None):
            raise PackFormatError(f"{name}: quant {self._quant!r} does not match the presence of an ivfpq index")
        if self._ivf is not None:
            problem = _ivf_problem(self._ivf, self._coin_index, self._data, len(self._records))
        else:
            problem = _array_problem(self._coin_index, self._scales, self._data, len(self._records), self._quant)
        if problem:
            raise PackFormatError(f"{name}: {problem}; {_FIX_BUILD}")

    @classmethod
    def from_vectors(
        cls,
        vectors: np.ndarray,
        vector_coin_ids: Sequence[str],
        records: Sequence[CoinRecord],
        *,
        catalog_id: str,
        catalog_version: int,
        model_fingerprint: str,
        quant: str = "int8",
        created_at: int | None = None,
        ivfpq: pack_ivfpq.IvfPqParams | None = None,
    ) -> Pack:
        """A pack of reference vectors ``(N, dim)`` (any scale; L2-normalised here) and their coins; its bytes are
        :meth:`to_bytes` (made once, kept), its sha256 :attr:`sha256`.

        ``vector_coin_ids[i]`` names the coin of ``vectors[i]``; a coin without a record in ``records`` gets an empty
        one; a record without any vector is an error. Vectors are stored grouped by coin (coins sorted by id),
        keeping the given order within a coin. ``created_at`` defaults to now (unix seconds).

        ``quant="ivfpq"`` trains the index on these vectors (``ivfpq`` parameters, default
        :func:`~coinvision.sdk.pack_ivfpq.default_params`) and stores the vectors list by list, by coin within a
        list (docs/PACK_FORMAT.md section 8).
        """
        if quant not in _QUANT_CODE:
            raise PackBuildError(f"quant={quant!r} is not supported; use one of {', '.join(ALL_QUANTS)}")
        catalog_id = _check_name(catalog_id, "catalog_id")
        model_fingerprint = _check_name(model_fingerprint, "model_fingerprint")
        catalog_version = _check_int(catalog_version, 0, _U32_MAX, "catalog_version")
        created_at = _check_int(int(time.time()) if created_at is None else created_at, *_I64, "created_at")
        try:
            vecs = np.asarray(vectors, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise PackBuildError(f"vectors are not a numeric array ({exc}); pass an (N, dim) float array") from exc
        if vecs.ndim != 2 or not 1 <= vecs.shape[1] <= MAX_DIM:
            raise PackBuildError(f"vectors have shape {vecs.shape}; pass an (N, dim) array with 1 <= dim <= {MAX_DIM}")
        ids = list(vector_coin_ids)
        if len(ids) != len(vecs):
            raise PackBuildError(f"{len(vecs)} vectors but {len(ids)} vector_coin_ids; pass one coin id per vector")
        if len(vecs) > _U32_MAX:
            raise PackBuildError(f"{len(vecs)} vectors is above the format's {_U32_MAX} limit")
        if not np.all(np.isfinite(vecs)):
            bad = int(np.flatnonzero(~np.all(np.isfinite(vecs), axis=1))[0])
            raise PackBuildError(f"vector {bad} (coin {ids[bad]!r}) holds NaN or infinity; re-embed that image")
        norms = np.sqrt(np.einsum("ij,ij->i", vecs, vecs))
        if np.any(norms == 0):
            bad = int(np.flatnonzero(norms == 0)[0])
            raise PackBuildError(f"vector {bad} (coin {ids[bad]!r}) is all zeros; re-embed that image")

        by_id: dict[str, CoinRecord] = {}
        for rec in records:
            if not isinstance(rec, CoinRecord):
                raise PackBuildError(f"records must be CoinRecord objects, got {type(rec).__name__}")
            if not isinstance(rec.coin_id, str) or not rec.coin_id:
                raise PackBuildError(f"a record has coin_id {rec.coin_id!r}; coin ids must be non-empty str")
            if rec.coin_id in by_id:
                raise PackBuildError(f"coin {rec.coin_id!r} has two records; pass one record per coin")
            _record_bytes(rec)  # validates every field now, with the coin named in the message
            by_id[rec.coin_id] = rec
        for cid in dict.fromkeys(ids):
            if cid not in by_id:
                by_id[_check_name(cid, "vector coin id")] = CoinRecord(coin_id=cid)
        orphans = sorted(set(by_id) - set(ids))
        if orphans:
            raise PackBuildError(
                f"coins {orphans[:5]} have a record but no vector; add a reference vector or drop them"
            )
        coin_order = sorted(by_id)
        position = {cid: i for i, cid in enumerate(coin_order)}
        coin_index = np.array([position[c] for c in ids], dtype=np.uint32)
        order = np.argsort(coin_index, kind="stable")
        unit = vecs[order] / norms[order][:, None]
        if quant == "ivfpq":
            return cls._from_unit_ivfpq(
                unit, coin_index[order], [_normalised_record(by_id[c]) for c in coin_order], ivfpq,
                catalog_id=catalog_id, catalog_version=catalog_version, created_at=created_at,
                model_fingerprint=model_fingerprint,
            )
        scales, data = _quantize(unit, quant)
        return cls(
            catalog_id=catalog_id, catalog_version=catalog_version, created_at=created_at,
            model_fingerprint=model_fingerprint, quant=quant, coin_index=coin_index[order], scales=scales, data=data,
            records=[_normalised_record(by_id[c]) for c in coin_order],
        )

    @classmethod
    def _from_unit_ivfpq(
        cls, unit: np.ndarray, coin_index: np.ndarray, records: list[CoinRecord],
        params: pack_ivfpq.IvfPqParams | None, **header: object,
    ) -> Pack:
        n, dim = unit.shape
        if n == 0:
            raise PackBuildError("an ivfpq pack needs at least one vector to train its index; use quant='int8'")
        p = params or pack_ivfpq.default_params(n, dim)
        if not isinstance(p, pack_ivfpq.IvfPqParams):
            raise PackBuildError(f"ivfpq={p!r} must be an IvfPqParams")
        if not 1 <= p.lists <= 0xFFFF or not 1 <= p.nprobe <= p.lists:
            raise PackBuildError(f"ivfpq lists={p.lists}, nprobe={p.nprobe}: need 1 <= nprobe <= lists <= 65535")
        if p.subspaces < 1 or dim % p.subspaces:
            raise PackBuildError(f"ivfpq subspaces={p.subspaces} must divide dim {dim}; e.g. 32 for 64-d vectors")
        index, order, codes = pack_ivfpq.encode(unit, p)
        return cls(
            quant="ivfpq", coin_index=coin_index[order], scales=None, data=codes, records=records, ivf=index, dim=dim,
            **header,  # type: ignore[arg-type]
        )

    # ------------------------------------------------------------------------------------------ header
    @property
    def catalog_id(self) -> str:
        return self._catalog_id

    @property
    def catalog_version(self) -> int:
        return self._catalog_version

    @property
    def created_at(self) -> int:
        """Unix seconds, UTC."""
        return self._created_at

    @property
    def model_fingerprint(self) -> str:
        return self._model_fingerprint

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def quant(self) -> str:
        return self._quant

    @property
    def metric(self) -> str:
        return "cosine"

    # ------------------------------------------------------------------------------------------ content
    @property
    def coin_ids(self) -> list[str]:
        """The coin id of every vector, in vector order."""
        if self._vector_coin_ids is None:
            order = self._coin_order
            self._vector_coin_ids = tuple(order[i] for i in self._coin_index.tolist())
        return list(self._vector_coin_ids)

    @property
    def records(self) -> Mapping[str, CoinRecord]:
        """Read-only ``{coin_id: CoinRecord}``, in coin id order."""
        return self._records_map

    @property
    def vector_count(self) -> int:
        return len(self._coin_index)

    @property
    def coin_count(self) -> int:
        return len(self._records)

    @property
    def vector_bytes(self) -> int:
        """Size of the vector section: vectors + per-vector coin index (+ int8 scale; + the ivfpq index); the coin
        table excluded."""
        if self._ivf is not None:
            return pack_ivfpq.section_bytes(self.vector_count, self.dim, self._ivf.lists, self._ivf.subspaces)
        return _vector_bytes(self.vector_count, self.dim, self._quant)

    def vectors_of(self, coin_id: str) -> np.ndarray:
        """Dequantised float32 vectors of one coin, ``(n, dim)``."""
        try:
            i = self._coin_order.index(coin_id)
        except ValueError:
            raise PackQueryError(f"coin {coin_id!r} is not in pack {self._catalog_id!r}") from None
        if self._ivf is not None:
            return self.vectors_f32()[self._coin_index == i]
        return self.vectors_f32()[self._starts[i] : self._stops[i]]

    def vectors_f32(self) -> np.ndarray:
        """Dequantised ``(N, dim)`` float32: int8 ``code * scale``, fp16 widened, fp32 as stored, ivfpq
        ``centroid + residual`` (in the pack's vector order: list by list)."""
        if self._ivf is not None:
            return pack_ivfpq.decode(self._ivf, pack_ivfpq.list_of_vectors(self._ivf.offsets), self._data)
        if self._scales is not None:
            return self._data.astype(np.float32) * self._scales[:, None]
        return self._data.astype(np.float32)

    @property
    def sha256(self) -> str:
        """Hex sha256 of :meth:`to_bytes` (computed once: a pack never changes)."""
        if self._sha256 is None:
            self._sha256 = hashlib.sha256(self.to_bytes()).hexdigest()
        return self._sha256

    # ------------------------------------------------------------------------------------------ search
    def _queries(self, queries: object, batch: bool) -> np.ndarray:
        try:
            q = np.asarray(queries, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise PackQueryError(f"query is not a numeric array ({exc}); pass the embedding vector") from exc
        if not batch and q.ndim == 2 and q.shape[0] == 1:
            q = q[0]
        want = f"({self.dim},)" if not batch else f"(Q, {self.dim})"
        if (q.ndim != (2 if batch else 1)) or q.shape[-1] != self.dim:
            raise PackDimError(
                f"query has shape {q.shape} but pack {self._catalog_id!r} holds {self.dim}-d vectors of model "
                f"{self._model_fingerprint}: pass a {want} embedding from that model"
            )
        q = q.reshape(-1, self.dim)
        if not np.all(np.isfinite(q)):
            raise PackQueryError("query holds NaN or infinity; check the embedder output")
        norms = np.sqrt(np.einsum("ij,ij->i", q, q))
        if np.any(norms == 0):
            raise PackQueryError("query is all zeros: cosine is undefined; check the embedder output")
        return q / norms[:, None]

    def search(self, query: np.ndarray, k: int = 5, *, rescore: bool = False) -> list[tuple[str, float]]:
        """Top-``k`` coins ``(coin_id, cosine)`` for one ``(dim,)`` query, best first.

        A coin's score is the max cosine over its vectors. ``rescore=True`` recomputes the scores of a shortlist
        (``k + 16`` coins) in float64, so the order no longer depends on float32 rounding.
        """
        return self.search_batch(self._queries(query, batch=False), k, rescore=rescore)[0]

    def search_batch(self, queries: np.ndarray, k: int = 5, *, rescore: bool = False) -> list[list[tuple[str, float]]]:
        """:meth:`search` for each row of ``queries`` ``(Q, dim)``."""
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 0:
            raise PackQueryError(f"k={k!r}: pass the number of coins wanted (an integer >= 1)")
        q64 = self._queries(queries, batch=True)
        if self.vector_count == 0 or k == 0:
            return [[] for _ in range(len(q64))]
        if self._ivf is not None:
            return [self._search_ivf(self._ivf, q, int(k), rescore) for q in q64]
        shortlist = int(k) + pack_search.RESCORE_EXTRA if rescore else int(k)
        results: list[list[tuple[str, float]]] = []
        for start in range(0, len(q64), 256):  # bounded (Q, coins) score matrix
            chunk = q64[start : start + 256]
            scores = pack_search.coin_scores(self._data, self._inv_norm, self._starts, chunk.astype(np.float32))
            for q, row, best in zip(chunk, scores, pack_search.top_k(scores, shortlist), strict=True):
                values = row[best].astype(np.float64)
                if rescore:
                    values = pack_search.rescore_float64(self._data, self._starts, self._stops, q, best)
                    order = np.lexsort((best, -values))[: int(k)]
                    best, values = best[order], values[order]
                results.append([(self._coin_order[i], float(v)) for i, v in zip(best, values, strict=True)])
        return results

    def _search_ivf(
        self, ivf: pack_ivfpq.IvfPqIndex, q64: np.ndarray, k: int, rescore: bool
    ) -> list[tuple[str, float]]:
        """ivfpq search (docs/PACK_FORMAT.md 8.3): only coins with a vector in the probed lists are candidates."""
        ids, scores = pack_ivfpq.probed_scores(ivf, self._data, self._inv_norm, q64.astype(np.float32))
        if rescore:
            # Float64 from the dequantised vectors: the order no longer depends on float32 lookup-table sums.
            lists = pack_ivfpq.list_of_vectors(ivf.offsets)[ids]
            rows = pack_ivfpq.decode(ivf, lists, self._data[ids]).astype(np.float64)
            scores = (rows @ q64) / np.sqrt(np.einsum("ij,ij->i", rows, rows))
        coins = self._coin_index[ids].astype(np.int64)
        # The top k coins are among the vectors scoring >= the (8k)-th best score (a coin left out scores below
        # every kept vector), so a partition avoids sorting the whole scan when those hold k coins.
        shortlist = 8 * k
        if len(scores) > 4 * shortlist:
            threshold = np.partition(scores, len(scores) - shortlist)[len(scores) - shortlist]
            keep = np.flatnonzero(scores >= threshold)
            if len(np.unique(coins[keep])) >= k:
                coins, scores = coins[keep], scores[keep]
        # Best vector per coin: sort by (coin, -score), keep each coin's first row.
        order = np.lexsort((-scores, coins))
        first = np.ones(len(order), dtype=bool)
        first[1:] = coins[order][1:] != coins[order][:-1]
        cand, best = coins[order][first], scores[order][first]
        top = np.lexsort((cand, -best))[:k]
        return [(self._coin_order[c], float(v)) for c, v in zip(cand[top].tolist(), best[top].tolist(), strict=True)]

    # ------------------------------------------------------------------------------------------ bytes
    def _table(self) -> bytes:
        parts = [_text(self._catalog_id, "catalog id"), _text(self._model_fingerprint, "model fingerprint")]
        parts += [_record_bytes(r) for r in self._records]
        return b"".join(parts)

    def to_bytes(self) -> bytes:
        """The canonical bytes of this pack (``read_pack(p.to_bytes())`` equals ``p``)."""
        if self._bytes is None:
            table = self._table()
            header = _PACK_HEADER.pack(
                PACK_MAGIC, FORMAT_VERSION, _QUANT_CODE[self._quant], _METRIC_CODE["cosine"], self.dim, 0,
                self.vector_count, self.coin_count, self._catalog_version, self._created_at, len(table), bytes(28),
            )
            if self._ivf is not None:
                ivf = self._ivf
                arrays = [
                    _IVF_HEADER.pack(ivf.lists, ivf.nprobe, ivf.subspaces, _IVF_CODE_BITS, bytes(8)),
                    ivf.offsets.astype("<u4").tobytes(), ivf.centroids.astype("<f4").tobytes(),
                    ivf.codebooks.astype("<f4").tobytes(), self._coin_index.astype("<u4").tobytes(),
                    self._data.astype(np.uint8).tobytes(),
                ]
            else:
                arrays = [self._coin_index.astype("<u4").tobytes()]
                if self._scales is not None:
                    arrays.append(self._scales.astype("<f4").tobytes())
                arrays.append(self._data.astype(_QUANT_DTYPE[self._quant]).tobytes())
            self._bytes = _seal(header + b"".join(arrays) + table)
        return self._bytes

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pack) and self.to_bytes() == other.to_bytes()

    def __repr__(self) -> str:
        return (
            f"Pack(catalog_id={self._catalog_id!r}, catalog_version={self._catalog_version}, quant={self._quant!r}, "
            f"dim={self.dim}, coins={self.coin_count}, vectors={self.vector_count}, "
            f"model_fingerprint={self._model_fingerprint!r})"
        )


# ---------------------------------------------------------------------------------------------- build / read


def _check_int(value: object, lo: int, hi: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not lo <= int(value) <= hi:
        raise PackBuildError(f"{what}={value!r} must be an integer in {lo}..{hi}")
    return int(value)


def _check_name(value: object, what: str) -> str:
    _text(value, what)
    if not value:
        raise PackBuildError(f"{what} must not be empty")
    return str(value)


def _quantize(unit: np.ndarray, quant: str) -> tuple[np.ndarray | None, np.ndarray]:
    """Unit float64 rows -> (int8 scales or None, stored rows). Formulas in docs/PACK_FORMAT.md."""
    if quant == "fp32":
        return None, unit.astype(np.float32)
    if quant == "fp16":
        return None, unit.astype(np.float16)
    scales = (np.max(np.abs(unit), axis=1) / _INT8_MAX).astype(np.float32)
    codes = np.clip(np.rint(unit / scales.astype(np.float64)[:, None]), -_INT8_MAX, _INT8_MAX).astype(np.int8)
    return scales, codes


def build_pack(
    vectors: np.ndarray,
    vector_coin_ids: Sequence[str],
    records: Sequence[CoinRecord],
    *,
    catalog_id: str,
    catalog_version: int,
    model_fingerprint: str,
    quant: str = "int8",
    created_at: int | None = None,
    ivfpq: pack_ivfpq.IvfPqParams | None = None,
) -> bytes:
    """The bytes of :meth:`Pack.from_vectors` (same arguments). A caller that also needs the parsed pack or its
    sha256 calls ``Pack.from_vectors`` instead: the pack keeps its bytes, nothing is parsed again."""
    return Pack.from_vectors(
        vectors, vector_coin_ids, records, catalog_id=catalog_id, catalog_version=catalog_version,
        model_fingerprint=model_fingerprint, quant=quant, created_at=created_at, ivfpq=ivfpq,
    ).to_bytes()


def _normalised_record(rec: CoinRecord) -> CoinRecord:
    """A copy with ``extra`` as a plain dict in key order (what a reader gets back)."""
    return CoinRecord(
        rec.coin_id, rec.label, rec.country, rec.currency, rec.denomination, rec.side, rec.years,
        extra={k: rec.extra[k] for k in sorted(rec.extra)},
    )


def read_pack(
    source: bytes | bytearray | memoryview | str | Path,
    *,
    expected_fingerprint: str | None = None,
    expected_dim: int | None = None,
) -> Pack:
    """Parse and verify a pack (bytes or a file path). Raises :class:`PackError` subclasses only.

    Check order: magic, format version, length against the header, sha256, then every field. With
    ``expected_fingerprint`` / ``expected_dim`` it also refuses a pack made by another embedder.
    """
    name = f"pack file {source}" if isinstance(source, str | Path) else "pack"
    buf = _as_buffer(source, "pack")
    try:
        pack = _parse_pack(buf, name)
    except PackError:
        raise
    except (ValueError, TypeError, struct.error, OverflowError, MemoryError) as exc:  # defence in depth
        raise PackFormatError(f"{name}: malformed ({type(exc).__name__}: {exc}); {_FIX_BUILD}") from exc
    if expected_fingerprint is not None:
        check_fingerprint(pack, expected_fingerprint)
    if expected_dim is not None:
        check_dim(pack, expected_dim)
    return pack


def _parse_pack(buf: memoryview, name: str) -> Pack:
    _check_envelope(buf, PACK_MAGIC, "pack", name)
    (_, _, quant_code, metric_code, dim, flags, n, coins, version, created_at, table_bytes, reserved) = (
        _PACK_HEADER.unpack_from(buf, 0)
    )
    quant = _decode_header_codes(quant_code, metric_code, dim, flags, reserved, name)
    ivf_shape = _read_ivf_header(buf, dim, name) if quant == "ivfpq" else None
    vector_bytes = (pack_ivfpq.section_bytes(n, dim, ivf_shape[0], ivf_shape[2]) if ivf_shape
                    else _vector_bytes(n, dim, quant))
    # Sizes are checked against the real byte length before anything is allocated from them.
    expected = HEADER_BYTES + vector_bytes + table_bytes + CHECKSUM_BYTES
    _check_length_and_checksum(buf, expected, name)
    if coins > n or coins * _MIN_RECORD_BYTES > table_bytes:
        raise PackFormatError(f"{name}: header claims {coins} coins for {n} vectors and a {table_bytes}-byte table; "
                              f"{_FIX_BUILD}")
    ivf = None
    if ivf_shape:
        ivf, coin_index, data = _read_ivf_section(buf, n, dim, *ivf_shape)
        scales = None
    else:
        coin_index, scales, data = _read_vectors(buf, n, dim, quant)
    cur = _Cursor(buf, HEADER_BYTES + vector_bytes, expected - CHECKSUM_BYTES, f"{name} table")
    catalog_id = cur.text("catalog id")
    fingerprint = cur.text("model fingerprint")
    records = [cur.record() for _ in range(coins)]
    cur.finish()
    return Pack(
        catalog_id=catalog_id, catalog_version=version, created_at=created_at, model_fingerprint=fingerprint,
        quant=quant, coin_index=coin_index, scales=scales, data=data, records=records, ivf=ivf, dim=dim,
    )


def check_fingerprint(pack: Pack, expected: str) -> None:
    """Refuse a pack whose vectors were made by another embedder (not comparable with this one's)."""
    if pack.model_fingerprint != expected:
        raise PackFingerprintError(
            f"pack {pack.catalog_id!r} v{pack.catalog_version} was embedded by model {pack.model_fingerprint}, but "
            f"the embedder in use is {expected}: embeddings of different models are not comparable; rebuild the pack "
            "with this model (coinvision pack build) or sync the catalog for this model"
        )


def check_dim(pack: Pack, expected: int) -> None:
    if pack.dim != expected:
        raise PackDimError(
            f"pack {pack.catalog_id!r} holds {pack.dim}-d vectors but the embedder outputs {expected}-d ones; "
            "use a pack built with this embedder"
        )


# ---------------------------------------------------------------------------------------------- deltas


@dataclass(frozen=True, eq=False)
class Delta:
    """A parsed delta: what changed from ``base_version`` to ``new_version`` of one catalog."""

    catalog_id: str
    model_fingerprint: str
    quant: str
    dim: int
    base_version: int
    new_version: int
    new_created_at: int
    base_sha256: str
    new_sha256: str
    removed: tuple[str, ...]
    upserts: tuple[CoinRecord, ...]  # added or changed coins; their vectors replace the base's entirely
    coin_index: np.ndarray = field(repr=False)  # (M,) index into upserts
    scales: np.ndarray | None = field(repr=False)
    data: np.ndarray = field(repr=False)


def _coin_slice(pack: Pack, i: int) -> tuple[np.ndarray, np.ndarray | None]:
    s, e = pack._starts[i], pack._stops[i]
    return pack._data[s:e], (pack._scales[s:e] if pack._scales is not None else None)


def build_delta(base: Pack, new: Pack) -> bytes:
    """The delta that turns ``base`` into ``new`` (same catalog, model, quantization and dim; newer version)."""
    problems = []
    if "ivfpq" in (base.quant, new.quant):
        problems.append("ivfpq packs have per-version codebooks, so they ship as full packs only")
    if base.catalog_id != new.catalog_id:
        problems.append(f"catalogs differ ({base.catalog_id!r} vs {new.catalog_id!r})")
    if base.model_fingerprint != new.model_fingerprint:
        problems.append(f"models differ ({base.model_fingerprint} vs {new.model_fingerprint})")
    if (base.quant, base.dim) != (new.quant, new.dim):
        problems.append(f"layouts differ ({base.quant}/{base.dim}-d vs {new.quant}/{new.dim}-d)")
    if new.catalog_version <= base.catalog_version:
        problems.append(f"new version {new.catalog_version} is not after base version {base.catalog_version}")
    if problems:
        raise PackDeltaError(f"cannot build a delta: {'; '.join(problems)}; ship the full pack instead")
    base_pos = {cid: i for i, cid in enumerate(base._coin_order)}
    new_records = dict(zip(new._coin_order, new._records, strict=True))
    removed = [cid for cid in base._coin_order if cid not in new_records]
    upserts: list[int] = []
    for j, cid in enumerate(new._coin_order):
        i = base_pos.get(cid)
        if i is not None and base._records[i] == new._records[j]:
            (bd, bs), (nd, ns) = _coin_slice(base, i), _coin_slice(new, j)
            if np.array_equal(bd, nd) and (bs is None or np.array_equal(bs.view(np.uint32), ns.view(np.uint32))):
                continue
        upserts.append(j)
    sel = (
        np.concatenate([np.arange(new._starts[j], new._stops[j]) for j in upserts]).astype(np.int64)
        if upserts else np.zeros(0, np.int64)
    )
    remap = np.zeros(new.coin_count, dtype=np.uint32)
    remap[upserts] = np.arange(len(upserts), dtype=np.uint32)
    table = b"".join(
        [_text(new.catalog_id, "catalog id"), _text(new.model_fingerprint, "model fingerprint"),
         hashlib.sha256(base.to_bytes()).digest(), hashlib.sha256(new.to_bytes()).digest()]
        + [_text(cid, "removed coin id") for cid in removed]
        + [_record_bytes(new._records[j]) for j in upserts]
    )
    header = _DELTA_HEADER.pack(
        DELTA_MAGIC, FORMAT_VERSION, _QUANT_CODE[new.quant], _METRIC_CODE["cosine"], new.dim, 0, len(sel),
        len(upserts), len(removed), new.created_at, len(table), base.catalog_version, new.catalog_version, bytes(20),
    )
    arrays = [remap[new._coin_index[sel]].astype("<u4").tobytes()]
    if new._scales is not None:
        arrays.append(new._scales[sel].astype("<f4").tobytes())
    arrays.append(new._data[sel].astype(_QUANT_DTYPE[new.quant]).tobytes())
    return _seal(header + b"".join(arrays) + table)


def read_delta(source: bytes | bytearray | memoryview | str | Path) -> Delta:
    """Parse and verify a delta pack (structure and sha256 only; :func:`apply_delta` checks it fits the base)."""
    name = f"delta file {source}" if isinstance(source, str | Path) else "delta"
    buf = _as_buffer(source, "delta")
    try:
        return _parse_delta(buf, name)
    except PackError:
        raise
    except (ValueError, TypeError, struct.error, OverflowError, MemoryError) as exc:  # defence in depth
        raise PackFormatError(f"{name}: malformed ({type(exc).__name__}: {exc}); download it again") from exc


def _parse_delta(buf: memoryview, name: str) -> Delta:
    _check_envelope(buf, DELTA_MAGIC, "delta", name)
    (_, _, quant_code, metric_code, dim, flags, n, n_upserts, n_removed, created_at, table_bytes, base_version,
     new_version, reserved) = _DELTA_HEADER.unpack_from(buf, 0)
    quant = _decode_header_codes(quant_code, metric_code, dim, flags, reserved, name)
    if quant == "ivfpq":
        raise PackFormatError(f"{name}: declares ivfpq vectors, which deltas never carry (ivfpq packs ship whole); "
                              "download the full pack")
    expected = HEADER_BYTES + _vector_bytes(n, dim, quant) + table_bytes + CHECKSUM_BYTES
    _check_length_and_checksum(buf, expected, name)
    if n_upserts > n or n_upserts * _MIN_RECORD_BYTES + n_removed * 2 + 4 + 2 * CHECKSUM_BYTES > table_bytes:
        raise PackFormatError(f"{name}: header counts do not fit its table; download it again")
    if new_version <= base_version:
        raise PackFormatError(f"{name}: goes from v{base_version} to v{new_version}, not forward; download it again")
    coin_index, scales, data = _read_vectors(buf, n, dim, quant)
    cur = _Cursor(buf, HEADER_BYTES + _vector_bytes(n, dim, quant), expected - CHECKSUM_BYTES, f"{name} table")
    catalog_id = cur.text("catalog id")
    fingerprint = cur.text("model fingerprint")
    base_sha = bytes(cur.take(CHECKSUM_BYTES, "base sha256")).hex()
    new_sha = bytes(cur.take(CHECKSUM_BYTES, "new sha256")).hex()
    removed = tuple(cur.text("removed coin id") for _ in range(n_removed))
    upserts = tuple(cur.record() for _ in range(n_upserts))
    cur.finish()
    if not catalog_id or not fingerprint:
        raise PackFormatError(f"{name}: empty catalog id or model fingerprint; download it again")
    if any(b <= a for a, b in itertools.pairwise(removed)) or "" in removed:
        raise PackFormatError(f"{name}: removed coin ids are not sorted, unique and non-empty; download it again")
    up_ids = [r.coin_id for r in upserts]
    if any(b <= a for a, b in itertools.pairwise(up_ids)) or set(up_ids) & set(removed):
        raise PackFormatError(f"{name}: changed coins are not sorted and unique, or also removed; download it again")
    problem = _array_problem(coin_index, scales, data, n_upserts, quant)
    if problem:
        raise PackFormatError(f"{name}: {problem}; download it again")
    return Delta(
        catalog_id=catalog_id, model_fingerprint=fingerprint, quant=quant, dim=dim, base_version=base_version,
        new_version=new_version, new_created_at=created_at, base_sha256=base_sha, new_sha256=new_sha,
        removed=removed, upserts=upserts, coin_index=coin_index, scales=scales, data=data,
    )


def apply_delta(base: Pack, delta: bytes | bytearray | memoryview | str | Path | Delta) -> Pack:
    """The new pack: ``base`` with the delta's removed coins dropped and its changed coins replaced.

    Refuses (:class:`PackDeltaError`, :class:`PackFingerprintError`) a delta made for another catalog, model,
    base version or base content; the result is verified against the new pack's sha256 carried in the delta.
    """
    d = delta if isinstance(delta, Delta) else read_delta(delta)
    if base.quant == "ivfpq":
        raise PackDeltaError(f"pack {base.catalog_id!r} is ivfpq: its versions ship as full packs, not deltas; "
                             "download the full pack")
    if d.catalog_id != base.catalog_id:
        raise PackDeltaError(
            f"delta is for catalog {d.catalog_id!r}, not {base.catalog_id!r}; use that catalog's delta"
        )
    if d.model_fingerprint != base.model_fingerprint:
        raise PackFingerprintError(
            f"delta carries vectors of model {d.model_fingerprint} but the base pack is from model "
            f"{base.model_fingerprint}; download the full pack"
        )
    if d.base_version != base.catalog_version:
        raise PackDeltaError(
            f"delta goes from v{d.base_version} to v{d.new_version} but the base pack is v{base.catalog_version}; "
            "apply deltas in order or download the full pack"
        )
    if d.new_version <= base.catalog_version:
        raise PackDeltaError(f"delta would move v{base.catalog_version} to v{d.new_version}: not forward")
    if (d.quant, d.dim) != (base.quant, base.dim):
        raise PackDeltaError(f"delta holds {d.quant}/{d.dim}-d vectors but the base pack {base.quant}/{base.dim}-d; "
                             "download the full pack")
    if base.sha256 != d.base_sha256:
        raise PackDeltaError(
            f"base pack v{base.catalog_version} differs from the one the delta was made from (sha256 "
            f"{base.sha256[:16]}… vs {d.base_sha256[:16]}…); download the full pack"
        )
    try:
        return _merge(base, d)
    except PackError:
        raise
    except (ValueError, TypeError, IndexError) as exc:  # defence in depth: a Delta built by hand
        raise PackDeltaError(f"delta does not apply ({type(exc).__name__}: {exc}); download the full pack") from exc


def _merge(base: Pack, d: Delta) -> Pack:
    dropped = set(d.removed) | {r.coin_id for r in d.upserts}
    missing = sorted(set(d.removed) - set(base._coin_order))
    if missing:
        raise PackDeltaError(f"delta removes coins {missing[:5]} that the base pack does not have; download the full "
                             "pack")
    kept = [i for i, cid in enumerate(base._coin_order) if cid not in dropped]
    coin_order = sorted([base._coin_order[i] for i in kept] + [r.coin_id for r in d.upserts])
    position = {cid: i for i, cid in enumerate(coin_order)}
    base_new_pos = np.array(
        [-1 if cid in dropped else position[cid] for cid in base._coin_order], dtype=np.int64
    )
    keep_vec = base_new_pos[base._coin_index.astype(np.int64)] >= 0 if base.vector_count else np.zeros(0, bool)
    up_pos = np.array([position[r.coin_id] for r in d.upserts], dtype=np.int64)
    coin_index = np.concatenate(
        [base_new_pos[base._coin_index[keep_vec].astype(np.int64)], up_pos[d.coin_index.astype(np.int64)]]
    )
    # Each coin's vectors come from one source only, so a stable sort keeps their order within the coin.
    order = np.argsort(coin_index, kind="stable")
    data = np.concatenate([base._data[keep_vec], d.data])[order]
    scales = None
    if base._scales is not None and d.scales is not None:
        scales = np.concatenate([base._scales[keep_vec], d.scales])[order]
    records_by_id = {r.coin_id: r for r in d.upserts}
    records_by_id.update({base._coin_order[i]: base._records[i] for i in kept})
    try:
        pack = Pack(
            catalog_id=base.catalog_id, catalog_version=d.new_version, created_at=d.new_created_at,
            model_fingerprint=base.model_fingerprint, quant=base.quant, coin_index=coin_index[order].astype(np.uint32),
            scales=scales, data=data, records=[records_by_id[c] for c in coin_order],
        )
    except PackFormatError as exc:
        raise PackDeltaError(f"delta v{d.base_version}->v{d.new_version} yields an invalid pack ({exc}); download "
                             "the full pack") from exc
    if pack.sha256 != d.new_sha256:
        raise PackDeltaError(
            f"pack rebuilt from delta v{d.base_version}->v{d.new_version} does not match the published pack's sha256; "
            "download the full pack"
        )
    return pack
