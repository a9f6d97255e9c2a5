"""The on-device recognition pipeline: photo in, coin named (or "unknown"), exactly as a phone does it.

``Recognizer`` chains the steps of ``docs/PIPELINE_SPEC.md`` using only the reference functions of
``coinvision.sdk.preprocess``: decode → two-pass segmentation → background-removed crop → embedding → cosine
search of the loaded pack. Every size, threshold and normalisation comes from the models' metadata.

A ``Recognizer`` is not thread-safe (TFLite interpreters are not): use one per thread or serialise calls.
Loading a pack is atomic: a pack that fails to parse or was built by another embedder is refused and the
previous pack stays in use.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from coinvision.sdk.errors import ConfigError, ModelLoadError, PackError
from coinvision.sdk.images import ImageSource, load_image
from coinvision.sdk.model_meta import ModelMetadata
from coinvision.sdk.preprocess import (
    CROP_MASKS,
    DEFAULT_CROP_MARGIN_FRAC,
    INTERPOLATIONS,
    coin_crop,
    mean_unit_vector,
    rotation_views,
)
from coinvision.sdk.runtimes import (
    RUNTIMES,
    LoadedModel,
    check_model_output,
    check_models_dir,
    check_pipeline_metadata,
    load_pipeline_model,
)
from coinvision.sdk.segmenter import Segmentation, Segmenter

if TYPE_CHECKING:
    from coinvision.sdk.pack import CoinRecord, Pack

__all__ = [
    "DEFAULT_UNKNOWN_THRESHOLD",
    "RUNTIMES",
    "CropParams",
    "Embedding",
    "Match",
    "Recognizer",
    "Result",
    "embed_rotations_of",
    "fuse_pair_scores",
]

log = logging.getLogger(__name__)


# Used only when neither the caller nor the embedder's metadata gives a threshold. It is NOT calibrated:
# release embedders carry the threshold calibrated on held-out coins in their metadata (`threshold`).
DEFAULT_UNKNOWN_THRESHOLD = 0.5



@dataclass(frozen=True)
class CropParams:
    """How a photo and its mask become the embedder's input (spec steps 3-4); read from the embedder metadata."""

    crop_margin_frac: float = DEFAULT_CROP_MARGIN_FRAC  # coin_crop margin per side
    background_removal: bool = True  # False: the embedder saw whole letterboxed photos, so it gets those
    embed_rotations: int = 1  # vectors of this many rotated views are averaged
    interpolation: str = "bilinear"  # how coin_crop shrinks the crop (metadata input.interpolation)
    crop_mask: str = "exact"  # which pixels the crop keeps: the mask's, or its "convex_hull" (fingers, coins on top)

    def __post_init__(self) -> None:
        if self.crop_margin_frac < 0.0:
            raise ConfigError(f"crop_margin_frac={self.crop_margin_frac}: must be >= 0, "
                              f"e.g. {DEFAULT_CROP_MARGIN_FRAC}")
        if not isinstance(self.embed_rotations, int) or isinstance(self.embed_rotations, bool) or not (
                1 <= self.embed_rotations <= 64):
            raise ConfigError(f"embed_rotations={self.embed_rotations!r}: must be an integer in [1, 64]")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"interpolation={self.interpolation!r}: must be one of {INTERPOLATIONS}")
        if self.crop_mask not in CROP_MASKS:
            raise ConfigError(f"crop_mask={self.crop_mask!r}: must be one of {CROP_MASKS}")

    @classmethod
    def from_metadata(cls, meta: ModelMetadata) -> CropParams:
        """``extra`` (``crop_margin_frac``, ``background_removal``, ``embed_rotations``, ``crop_mask``) and
        ``input.interpolation``; what the metadata leaves out takes the spec default."""
        extra = meta.extra
        return cls(
            crop_margin_frac=float(extra.get("crop_margin_frac", DEFAULT_CROP_MARGIN_FRAC)),
            background_removal=bool(extra.get("background_removal", True)),
            embed_rotations=embed_rotations_of(meta),
            interpolation=meta.input.interpolation,
            crop_mask=extra.get("crop_mask", "exact"),
        )


@dataclass(frozen=True)
class Embedding:
    """One photo through the pipeline up to the embedder."""

    vector: np.ndarray  # float32 (D,), unit L2 norm
    segmentation: Segmentation  # .found is False when no coin was found (then the whole photo was embedded)
    crop: np.ndarray  # uint8 SxSx3 RGB: what the embedder saw
    timings_ms: dict[str, float]  # decode, segment_pass1, [segment_pass2], crop, embed, total


@dataclass(frozen=True)
class Match:
    coin_id: str  # recognize: the pack's coin id; recognize_pair: the coin group (see fuse_pair_scores)
    label: str
    score: float  # cosine similarity (recognize_pair: the fused score)
    record: CoinRecord | None  # the pack's metadata of the coin (None if the pack has no record for it)


@dataclass(frozen=True)
class Result:
    matches: list[Match]  # best first, at most top_k
    unknown: bool  # best score below `threshold` (or no match at all): do not name the coin
    segmentation: Segmentation  # recognize_pair: the obverse photo's
    timings_ms: dict[str, float]
    crop: np.ndarray  # recognize_pair: the obverse photo's
    threshold: float = DEFAULT_UNKNOWN_THRESHOLD
    sides: tuple[Embedding, ...] = field(default=(), repr=False)  # the embedded photo(s), obverse first

    @property
    def best(self) -> Match | None:
        return self.matches[0] if self.matches else None


@dataclass(frozen=True)
class _PackState:
    pack: Pack
    records: Mapping[str, CoinRecord]  # taken once: Pack.records builds a fresh mapping on every access

    @property
    def coin_count(self) -> int:
        return len(self.records)

    def match(self, coin_id: str, score: float, group: str | None = None) -> Match:
        record = self.records.get(coin_id)
        return Match(coin_id=group or coin_id, label=record.label if record else "", score=float(score),
                     record=record)

    def group_of(self, coin_id: str) -> str:
        record = self.records.get(coin_id)
        return (record.extra.get("coin_group") or coin_id) if record is not None else coin_id


def _ms(start: float, end: float) -> float:
    return (end - start) * 1000.0


def fuse_pair_scores(
    obverse_hits: Sequence[tuple[str, float]],
    reverse_hits: Sequence[tuple[str, float]],
    group_of: Callable[[str], str] = lambda coin_id: coin_id,
) -> list[tuple[str, float, str]]:
    """Fuse the searches of the two photos of one coin into ``(group, fused score, best coin id)``, best first.

    The rule (the mobile SDKs implement the same):

    1. Coins are grouped by ``group_of(coin_id)`` (the pack record's ``extra["coin_group"]``, else the coin id),
       because a catalog may store each side of a coin as its own class.
    2. A group's score on one photo is the best score of its coins on that photo.
    3. The fused score is the mean of the group's two photo scores, so it stays a cosine-like number that the
       unknown threshold applies to.
    4. A group missing from one photo's list gets that list's lowest score: a coin that matches only one side
       is penalised, never dropped. (``Recognizer.recognize_pair`` scores every coin on both photos, so this
       only matters for callers passing truncated lists.)

    ``best coin id`` is the group member with the single highest photo score (its record names the match).
    Ties are broken by group name, so the order is deterministic.
    """
    sides: list[dict[str, float]] = [{}, {}]
    best_member: dict[str, tuple[float, str]] = {}
    for side, hits in zip(sides, (obverse_hits, reverse_hits), strict=True):
        for coin_id, score in hits:
            group, score = group_of(coin_id), float(score)
            side[group] = max(score, side.get(group, -np.inf))
            if score > best_member.get(group, (-np.inf, ""))[0]:
                best_member[group] = (score, coin_id)
    floors = [min((float(score) for _, score in hits), default=0.0) for hits in (obverse_hits, reverse_hits)]
    fused = [
        (group, (sides[0].get(group, floors[0]) + sides[1].get(group, floors[1])) / 2.0, member)
        for group, (_, member) in best_member.items()
    ]
    return sorted(fused, key=lambda item: (-item[1], item[0]))


class Recognizer:
    """Segmenter + embedder (+ an optional pack). Build with :meth:`from_dir`."""

    def __init__(
        self, segmenter: LoadedModel | Segmenter, embedder: LoadedModel, *, unknown_threshold: float | None = None
    ) -> None:
        """Takes loaded models of any runtime (``coinvision.trainer.torch_runtime`` passes PyTorch predictors);
        the segmenter may come as a :class:`Segmenter` (its parameters then stay as they are)."""
        self.segmenter: Segmenter = segmenter if isinstance(segmenter, Segmenter) else Segmenter(segmenter)
        check_pipeline_metadata(embedder, "embedder")
        self._embedder = embedder
        self.segmenter_meta: ModelMetadata = self.segmenter.meta
        self.embedder_meta: ModelMetadata = embedder.meta
        self.fingerprint: str = embedder.meta.fingerprint
        self.dim: int = int(embedder.meta.embedding_dim or 0)
        self.crop_params: CropParams = CropParams.from_metadata(embedder.meta)
        self.embed_rotations: int = self.crop_params.embed_rotations
        self.unknown_threshold: float = _resolve_threshold(unknown_threshold, embedder.meta)
        self._pack_state: _PackState | None = None
        check_model_output(embedder, self.dim)

    # ------------------------------------------------------------------------------------------ loading

    @classmethod
    def from_dir(
        cls,
        models_dir: str | Path,
        *,
        runtime: str = "tflite",
        num_threads: int | None = None,
        pack: Pack | str | Path | bytes | None = None,
        unknown_threshold: float | None = None,
    ) -> Recognizer:
        """Load ``segmenter.<ext>`` and ``embedder.<ext>`` (+ ``.meta.json`` sidecars) from ``models_dir``.

        ``runtime``: "tflite" (default), "onnx", or "coreml" (macOS only). ``num_threads=None`` lets the
        runtime choose. ``pack``: loaded with :meth:`load_pack` when given.
        """
        models_dir = Path(models_dir)
        check_models_dir(models_dir, runtime, ("segmenter", "embedder"))
        models = [load_pipeline_model(models_dir, kind, runtime, num_threads) for kind in ("segmenter", "embedder")]
        recognizer = cls(models[0], models[1], unknown_threshold=unknown_threshold)
        log.info(
            "recognizer loaded from %s (%s): segmenter %s, embedder %s (dim %d), unknown below %.3f",
            models_dir, runtime, recognizer.segmenter_meta.fingerprint, recognizer.fingerprint, recognizer.dim,
            recognizer.unknown_threshold,
        )
        if pack is not None:
            recognizer.load_pack(pack)
        return recognizer

    # ------------------------------------------------------------------------------------------- packs

    @property
    def pack(self) -> Pack | None:
        state = self._pack_state
        return state.pack if state is not None else None

    def load_pack(self, pack: Pack | str | Path | bytes) -> None:
        """Use ``pack`` (a parsed Pack, a file path or the pack's bytes) for :meth:`recognize`.

        Refuses (PackError subclasses) a pack that does not parse, was built by another embedder (model
        fingerprint, both named), or has another dimension or metric; the previous pack then stays in use.
        """
        from coinvision.sdk.pack import Pack, check_dim, check_fingerprint, read_pack

        parsed = pack if isinstance(pack, Pack) else read_pack(pack)
        check_fingerprint(parsed, self.fingerprint)
        check_dim(parsed, self.dim)
        if parsed.metric != "cosine":
            raise PackError(f"pack {parsed.catalog_id}: metric {parsed.metric!r} is not supported (cosine only)")
        self._pack_state = _PackState(parsed, parsed.records)
        log.info(
            "pack %s v%d loaded: %d coins, %d vectors (%s)", parsed.catalog_id, parsed.catalog_version,
            self._pack_state.coin_count, len(parsed.coin_ids), parsed.quant,
        )

    def _require_pack(self) -> _PackState:
        state = self._pack_state
        if state is None:
            raise PackError(
                "no pack loaded; call load_pack(PACK) or pass pack=... to Recognizer.from_dir "
                "(build one with `coinvision pack build`)"
            )
        return state

    # ------------------------------------------------------------------------------------------ pipeline

    def embed(self, image: ImageSource) -> Embedding:
        """Decode (arrays are validated and bounded the same way), segment twice, crop, embed."""
        start = time.perf_counter()
        rgb = load_image(image)
        decoded = time.perf_counter()
        segmentation, segment_ms = self.segmenter.segment_timed(rgb, start=decoded)
        segmented = decoded + sum(segment_ms.values()) / 1000.0  # where the segmenter's clock stopped
        crop = self.coin_crop(rgb, segmentation.mask)
        cropped = time.perf_counter()
        vector = self.embed_crop(crop)
        embedded = time.perf_counter()

        timings = {"decode": _ms(start, decoded), **segment_ms}
        timings.update(crop=_ms(segmented, cropped), embed=_ms(cropped, embedded), total=_ms(start, embedded))
        return Embedding(vector=vector, segmentation=segmentation, crop=crop, timings_ms=timings)

    def coin_crop(self, rgb: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        """Spec step 3: the embedder's square input around ``mask`` (a segmenter's, or one you have), background
        removed when the embedder's metadata says so. No coin (``None``): the whole photo letterboxed, which still
        gets embedded."""
        crop_params, emb_spec = self.crop_params, self.embedder_meta.input
        mask = mask if crop_params.background_removal else None
        return coin_crop(rgb, mask, emb_spec.size_px, margin_frac=crop_params.crop_margin_frac,
                         fill_value=emb_spec.pad_value, interpolation=crop_params.interpolation,
                         crop_mask=crop_params.crop_mask)

    def embed_crop(self, crop: np.ndarray) -> np.ndarray:
        """Spec step 4: one vector per rotated view of :meth:`coin_crop`'s square, averaged and re-normalised
        (quantized runtimes drift a little from unit length, so even a single view is normalised again)."""
        views = rotation_views(crop, self.crop_params.embed_rotations, fill_value=self.embedder_meta.input.pad_value)
        return mean_unit_vector(np.stack([
            np.asarray(self._embedder.predict(view), dtype=np.float32).reshape(-1) for view in views]))

    def recognize(self, image: ImageSource, top_k: int = 5) -> Result:
        """Embed the photo and search the loaded pack: the ``top_k`` best coins, ``unknown`` when the best
        cosine is below :attr:`unknown_threshold`."""
        _check_top_k(top_k)
        state = self._require_pack()  # one snapshot: a concurrent load_pack cannot mix packs in one result
        emb = self.embed(image)
        searched = time.perf_counter()
        hits = state.pack.search(emb.vector, k=top_k)
        matches = [state.match(coin_id, score) for coin_id, score in hits]
        search_ms = _ms(searched, time.perf_counter())
        timings = {stage: ms for stage, ms in emb.timings_ms.items() if stage != "total"}
        timings.update(search=search_ms, total=emb.timings_ms["total"] + search_ms)  # stages in order, total last
        return Result(
            matches=matches,
            unknown=self._is_unknown(matches),
            segmentation=emb.segmentation,
            timings_ms=timings,
            crop=emb.crop,
            threshold=self.unknown_threshold,
            sides=(emb,),
        )

    def recognize_pair(self, obverse: ImageSource, reverse: ImageSource, top_k: int = 5) -> Result:
        """Both sides of one coin: every coin of the pack is scored on both photos, scores are fused per coin
        group with :func:`fuse_pair_scores` (mean of the group's best score on each photo), and the fused
        score decides ``unknown``. Timings carry ``obverse.<stage>`` and ``reverse.<stage>`` keys."""
        _check_top_k(top_k)
        state = self._require_pack()
        sides = (self.embed(obverse), self.embed(reverse))
        searched = time.perf_counter()
        hits = [state.pack.search(side.vector, k=state.coin_count) for side in sides]
        fused = fuse_pair_scores(hits[0], hits[1], state.group_of)
        matches = [state.match(member, score, group) for group, score, member in fused[:top_k]]
        search_ms = _ms(searched, time.perf_counter())
        timings: dict[str, float] = {}
        for name, side in zip(("obverse", "reverse"), sides, strict=True):
            timings.update({f"{name}.{stage}": ms for stage, ms in side.timings_ms.items()})
        timings["search"] = search_ms
        timings["total"] = sides[0].timings_ms["total"] + sides[1].timings_ms["total"] + search_ms
        return Result(
            matches=matches,
            unknown=self._is_unknown(matches),
            segmentation=sides[0].segmentation,
            timings_ms=timings,
            crop=sides[0].crop,
            threshold=self.unknown_threshold,
            sides=sides,
        )

    def _is_unknown(self, matches: Sequence[Match]) -> bool:
        return not matches or matches[0].score < self.unknown_threshold


# ---------------------------------------------------------------------------------------------- helpers


def embed_rotations_of(meta: ModelMetadata) -> int:
    """The embedder metadata's ``extra["embed_rotations"]`` (1 when absent: models before rotation averaging)."""
    value = meta.extra.get("embed_rotations", 1)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 64:
        raise ModelLoadError(f"embedder metadata embed_rotations={value!r}: must be an integer in [1, 64]; "
                             "re-export the model")
    return value


def _check_top_k(top_k: Any) -> None:
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise ConfigError(f"top_k={top_k!r}: must be an integer >= 1")


def _resolve_threshold(explicit: float | None, embedder_meta: ModelMetadata) -> float:
    value = explicit if explicit is not None else embedder_meta.threshold
    value = DEFAULT_UNKNOWN_THRESHOLD if value is None else float(value)
    if not -1.0 <= value <= 1.0 or not np.isfinite(value):
        raise ConfigError(f"unknown_threshold={value}: a cosine threshold must be in [-1, 1]")
    return value
