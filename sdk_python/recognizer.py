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
from coinvision.sdk.preprocess import Segmentation, coin_crop, mean_unit_vector, rotation_views, two_pass_segment
from coinvision.sdk.runtimes import RUNTIME_SUFFIXES, LoadedModel, check_coreml_platform, load_model

if TYPE_CHECKING:
    from coinvision.sdk.pack import CoinRecord, Pack

__all__ = [
    "DEFAULT_UNKNOWN_THRESHOLD",
    "RUNTIMES",
    "Embedding",
    "Match",
    "Recognizer",
    "Result",
    "embed_rotations_of",
    "fuse_pair_scores",
]

log = logging.getLogger(__name__)

RUNTIMES = tuple(RUNTIME_SUFFIXES)  # "tflite" (default), "onnx", "coreml" (macOS only)

# Used only when neither the caller nor the embedder's metadata gives a threshold. It is NOT calibrated:
# release embedders carry the threshold calibrated on held-out coins in their metadata (`threshold`).
DEFAULT_UNKNOWN_THRESHOLD = 0.5

# Spec defaults (docs/PIPELINE_SPEC.md) for values a segmenter's metadata may override in `extra`.
DEFAULT_MARGIN_FRAC = 0.15
DEFAULT_MIN_AREA_FRAC = 0.002
DEFAULT_SEGMENT_THRESHOLD = 0.5
DEFAULT_CROP_MARGIN_FRAC = 0.05  # embedder metadata `extra["crop_margin_frac"]` overrides

_EXPECTED_OUTPUT = {"segmenter": "mask_logits", "embedder": "embedding"}


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


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    # tanh form: exact sigmoid without exp overflow warnings on large negative logits
    return (0.5 * (1.0 + np.tanh(0.5 * logits))).astype(np.float32)


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
        self, segmenter: LoadedModel, embedder: LoadedModel, *, unknown_threshold: float | None = None
    ) -> None:
        """Takes loaded models of any runtime (the CLI's torch runtime passes PyTorch predictors)."""
        _check_metadata(segmenter, "segmenter")
        _check_metadata(embedder, "embedder")
        self._segmenter = segmenter
        self._embedder = embedder
        self.segmenter_meta: ModelMetadata = segmenter.meta
        self.embedder_meta: ModelMetadata = embedder.meta
        self.fingerprint: str = embedder.meta.fingerprint
        self.dim: int = int(embedder.meta.embedding_dim or 0)
        seg_extra = segmenter.meta.extra
        self._seg_size_px = segmenter.meta.input.size_px
        self._seg_threshold = float(segmenter.meta.threshold or DEFAULT_SEGMENT_THRESHOLD)
        self._margin_frac = float(seg_extra.get("margin_frac", DEFAULT_MARGIN_FRAC))
        self._min_area_frac = float(seg_extra.get("min_area_frac", DEFAULT_MIN_AREA_FRAC))
        # spec 2.6: cut touching coins apart before keeping the largest (segmenter v2 metadata; absent -> off)
        self._split_touching = bool(seg_extra.get("split_touching", False))
        emb_extra = embedder.meta.extra
        self._crop_margin_frac = float(emb_extra.get("crop_margin_frac", DEFAULT_CROP_MARGIN_FRAC))
        # An embedder trained without background removal saw whole letterboxed photos, so it gets those.
        self._background_removal = bool(emb_extra.get("background_removal", True))
        self.embed_rotations: int = embed_rotations_of(embedder.meta)
        self.unknown_threshold: float = _resolve_threshold(unknown_threshold, embedder.meta)
        self._pack_state: _PackState | None = None
        self._check_outputs()

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
        if runtime not in RUNTIMES:
            raise ConfigError(f"runtime {runtime!r} is not supported; use one of {', '.join(RUNTIMES)}")
        models_dir = Path(models_dir)
        suffix = RUNTIME_SUFFIXES[runtime]
        if runtime == "coreml":
            check_coreml_platform(models_dir / f"segmenter{suffix}")
        if not models_dir.is_dir():
            raise ModelLoadError(
                f"models folder {models_dir} does not exist; pass the folder holding segmenter{suffix} and "
                f"embedder{suffix} (the release exports are in models/release)"
            )
        models = []
        for kind in ("segmenter", "embedder"):
            path = models_dir / f"{kind}{suffix}"
            if not path.exists():
                raise ModelLoadError(_missing_model_message(path, kind, runtime))
            model = load_model(path, num_threads)
            if model.meta.runtime_format and model.meta.runtime_format != runtime:
                raise ModelLoadError(
                    f"{path}: its metadata describes a {model.meta.runtime_format!r} model, not {runtime!r}; "
                    "re-export the model so the sidecar .meta.json belongs to this file"
                )
            models.append(model)
        recognizer = cls(models[0], models[1], unknown_threshold=unknown_threshold)
        log.info(
            "recognizer loaded from %s (%s): segmenter %s, embedder %s (dim %d), unknown below %.3f",
            models_dir, runtime, recognizer.segmenter_meta.fingerprint, recognizer.fingerprint, recognizer.dim,
            recognizer.unknown_threshold,
        )
        if pack is not None:
            recognizer.load_pack(pack)
        return recognizer

    def _check_outputs(self) -> None:
        """Run each model once on a blank input: a model whose output does not fit its metadata fails here,
        at load time, with the file named, rather than on the first photo."""
        for model, expected in (
            (self._segmenter, self._seg_size_px**2),
            (self._embedder, self.dim),
        ):
            size = model.meta.input.size_px
            try:
                out = np.asarray(model.predict(np.zeros((size, size, 3), np.uint8)))
            except Exception as exc:  # runtimes raise assorted types (ORT's have no common base)
                raise ModelLoadError(
                    f"{model.path}: running it on a {size}x{size} input failed ({type(exc).__name__}: {exc}); "
                    "its metadata (input size/layout) does not fit the model, re-export it"
                ) from exc
            if out.size != expected:
                raise ModelLoadError(
                    f"{model.path}: output has {out.size} values (shape {out.shape}), its metadata implies "
                    f"{expected}; re-export the model so file and metadata agree"
                )

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

    def _segment_probability(self, square: np.ndarray) -> np.ndarray:
        logits = np.asarray(self._segmenter.predict(square), dtype=np.float32)
        return _sigmoid(logits.reshape(self._seg_size_px, self._seg_size_px))

    def embed(self, image: ImageSource) -> Embedding:
        """Decode (arrays are validated and bounded the same way), segment twice, crop, embed."""
        start = time.perf_counter()
        rgb = load_image(image)
        decoded = time.perf_counter()
        call_starts: list[float] = []

        def predict(square: np.ndarray) -> np.ndarray:
            call_starts.append(time.perf_counter())
            return self._segment_probability(square)

        segmentation = two_pass_segment(
            rgb,
            predict,
            size_px=self._seg_size_px,
            threshold=self._seg_threshold,
            margin_frac=self._margin_frac,
            min_area_frac=self._min_area_frac,
            pad_value=self.segmenter_meta.input.pad_value,
            split_touching=self._split_touching,
        )
        segmented = time.perf_counter()
        emb_spec = self.embedder_meta.input
        # No coin found: coin_crop letterboxes the whole photo (spec step 3), which still gets embedded.
        mask = segmentation.mask if self._background_removal else None
        crop = coin_crop(rgb, mask, emb_spec.size_px, margin_frac=self._crop_margin_frac,
                         fill_value=emb_spec.pad_value, interpolation=emb_spec.interpolation)
        cropped = time.perf_counter()
        # Spec step 4: one vector per rotated view, averaged and re-normalised (quantized runtimes drift a
        # little from unit length, so even a single view is normalised again).
        views = rotation_views(crop, self.embed_rotations, fill_value=emb_spec.pad_value)
        vector = mean_unit_vector(np.stack([
            np.asarray(self._embedder.predict(view), dtype=np.float32).reshape(-1) for view in views]))
        embedded = time.perf_counter()

        second_pass = call_starts[1] if len(call_starts) > 1 else None
        timings = {"decode": _ms(start, decoded), "segment_pass1": _ms(decoded, second_pass or segmented)}
        if second_pass is not None:
            timings["segment_pass2"] = _ms(second_pass, segmented)
        timings.update(crop=_ms(segmented, cropped), embed=_ms(cropped, embedded), total=_ms(start, embedded))
        return Embedding(vector=vector, segmentation=segmentation, crop=crop, timings_ms=timings)

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


def _check_metadata(model: LoadedModel, kind: str) -> None:
    meta = model.meta
    if meta.name != kind:
        raise ModelLoadError(
            f"{model.path}: its metadata says it is the {meta.name!r}, expected the {kind}; "
            "the segmenter and embedder files may be swapped"
        )
    if meta.output != _EXPECTED_OUTPUT[kind]:
        raise ModelLoadError(
            f"{model.path}: the {kind} must output {_EXPECTED_OUTPUT[kind]!r}, its metadata says {meta.output!r}; "
            "re-export it with coinvision export"
        )
    if kind == "embedder" and not (isinstance(meta.embedding_dim, int) and meta.embedding_dim > 0):
        raise ModelLoadError(
            f"{model.path}: embedder metadata has no embedding_dim ({meta.embedding_dim!r}); re-export it"
        )
    if kind == "segmenter" and meta.threshold is not None and not 0.0 < meta.threshold < 1.0:
        raise ModelLoadError(f"{model.path}: segmenter threshold {meta.threshold} is not a probability in (0, 1)")


def _missing_model_message(path: Path, kind: str, runtime: str) -> str:
    present = sorted(
        p.name for p in path.parent.iterdir() if p.name.startswith(("segmenter.", "embedder.")) and
        not p.name.endswith(".json")
    )
    others = [rt for rt, suffix in RUNTIME_SUFFIXES.items()
              if rt != runtime and (path.parent / f"{kind}{suffix}").exists()]
    hint = f"; this folder has {', '.join(present)}" if present else ""
    if others:
        hint += f" (try runtime={others[0]!r})"
    return f"{path}: the {kind} model for runtime {runtime!r} is missing{hint}; export it with `coinvision export`"
