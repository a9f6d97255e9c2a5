"""Does an exported model compute what the PyTorch model computes? Figures, on real photos, never a bare bool.

``measure_parity`` runs a reference predictor (PyTorch: ``trainer.torch_runtime.torch_predictor``) and a candidate
(any runtime: ``sdk.runtimes.predictor_for`` opens ONNX, TFLite and, on macOS, Core ML files) on the same
model-input squares (``photo_inputs``) and returns the figures;
``check_parity`` adds the targets and the list of misses.

- embedder: cosine(reference, candidate) per image (mean, min) over every image; nearest-neighbour search of
  the candidate's query embeddings against a catalog embedded by the reference (as on a phone: the pack comes
  from the server's model): top-1 agreement with the reference's own search; with labels, Recall@1 of both and
  the drop in points. Catalog/query split: alternate images of each label (or of the whole set without labels).
- segmenter: mask IoU per image at the release threshold (mean, min), max |logit difference|.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from coinvision.sdk.errors import ConversionError
from coinvision.sdk.preprocess import mean_unit_vector, rotation_views
from coinvision.sdk.runtimes import Predictor
from coinvision.sdk.segmenter import DEFAULT_SEGMENT_THRESHOLD, sigmoid

__all__ = [
    "QUANTIZATION_TIER",
    "TARGETS",
    "ParityResult",
    "ParitySet",
    "ParityTarget",
    "check_parity",
    "measure_parity",
    "parity_failures",
    "parse_target_overrides",
    "target_for",
]


@dataclass(frozen=True)
class ParityTarget:
    cosine_mean: float | None = None  # floors
    cosine_min: float | None = None
    iou_mean: float | None = None
    iou_min: float | None = None
    recall1_drop_points: float | None = None  # ceilings
    max_abs_logit_diff: float | None = None


_CEILINGS = ("recall1_drop_points", "max_abs_logit_diff")
TIERS = ("fp32", "fp16", "int8")

# The targets. fp32/fp16 "cosine >= x" is held for every image (min); int8: mean and min separately.
TARGETS: dict[str, dict[str, ParityTarget]] = {
    "embedder": {
        "fp32": ParityTarget(cosine_mean=0.9999, cosine_min=0.9999, recall1_drop_points=1.0),
        "fp16": ParityTarget(cosine_mean=0.999, cosine_min=0.999, recall1_drop_points=1.0),
        "int8": ParityTarget(cosine_mean=0.99, cosine_min=0.97, recall1_drop_points=1.0),
    },
    "segmenter": {
        "fp32": ParityTarget(iou_mean=0.99),
        "fp16": ParityTarget(iou_mean=0.99),
        "int8": ParityTarget(iou_mean=0.97),
    },
}

# Every exported quantization / Core ML variant -> the target tier it is held to.
QUANTIZATION_TIER = {
    "fp32": "fp32",
    "fp16": "fp16",
    "int8_dynamic": "int8",
    "int8_full": "int8",
    "int16x8": "int8",
    "w8": "int8",
    "palette8": "int8",
    "palette6": "int8",
    "fp16_weights": "fp16",  # ONNX weights stored as float16 (converters.onnx_weights)
    "int8_weights": "int8",  # ONNX weights stored as int8
}


def target_for(kind: str, quantization: str, targets: Mapping[str, Mapping[str, ParityTarget]] | None = None):
    table = TARGETS if targets is None else targets
    if kind not in table:
        raise ConversionError(f"unknown model kind {kind!r}; valid: {', '.join(table)}")
    if quantization not in QUANTIZATION_TIER:
        raise ConversionError(f"unknown quantization {quantization!r}; valid: {', '.join(QUANTIZATION_TIER)}")
    return table[kind][QUANTIZATION_TIER[quantization]]


def parse_target_overrides(specs: Sequence[str]) -> dict[str, dict[str, ParityTarget]]:
    """``["embedder.int8.cosine_min=0.95", ...]`` -> a copy of :data:`TARGETS` with those values replaced."""
    table = {kind: dict(tiers) for kind, tiers in TARGETS.items()}
    fields = [f.name for f in dataclasses.fields(ParityTarget)]
    for spec in specs:
        key, sep, value = spec.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) != 3:
            raise ConversionError(f"target {spec!r}: write KIND.TIER.FIELD=VALUE, e.g. embedder.int8.cosine_min=0.97")
        kind, tier, name = parts
        if kind not in table or tier not in TIERS or name not in fields:
            raise ConversionError(
                f"target {spec!r}: kind one of {', '.join(table)}; tier one of {', '.join(TIERS)}; "
                f"field one of {', '.join(fields)}"
            )
        try:
            number = None if value.strip().lower() == "none" else float(value)
        except ValueError as exc:
            raise ConversionError(f"target {spec!r}: {value!r} is not a number (or 'none')") from exc
        table[kind][tier] = dataclasses.replace(table[kind][tier], **{name: number})
    return table


@dataclass(frozen=True)
class ParitySet:
    """The squares a parity check runs on; for the embedder also which ones form the catalog."""

    squares: list[np.ndarray]
    labels: list[str] | None = None
    sources: list[str] | None = None
    rotations: int = 1  # embedder: vectors are averaged over this many rotated views, as the SDK does

    def catalog_mask(self) -> np.ndarray:
        """Alternate images of each label (first, third, ...) form the catalog, the rest are queries."""
        keys = self.labels if self.labels is not None else [""] * len(self.squares)
        seen: dict[str, int] = {}
        mask = np.zeros(len(self.squares), bool)
        for i, key in enumerate(keys):
            mask[i] = seen.get(key, 0) % 2 == 0
            seen[key] = seen.get(key, 0) + 1
        return mask


@dataclass(frozen=True)
class ParityResult:
    kind: str
    quantization: str
    figures: dict[str, float]
    target: ParityTarget
    failures: list[str]

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        target = {k: v for k, v in dataclasses.asdict(self.target).items() if v is not None}
        return {"figures": self.figures, "target": target, "passed": self.passed, "failures": self.failures}


def _run(predict: Predictor, squares: Sequence[np.ndarray]) -> np.ndarray:
    return np.stack([np.asarray(predict(s), dtype=np.float32) for s in squares])


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def measure_parity(
    kind: str,
    reference: Predictor,
    candidate: Predictor,
    inputs: ParitySet | Sequence[np.ndarray],
    *,
    threshold: float = DEFAULT_SEGMENT_THRESHOLD,
) -> dict[str, float]:
    """Figures comparing ``candidate`` with ``reference`` on the squares (model-input sized RGB uint8)."""
    parity_set = inputs if isinstance(inputs, ParitySet) else ParitySet(list(inputs))
    if not parity_set.squares:
        raise ConversionError("parity needs at least one image")
    if kind == "embedder":
        return _embedder_parity(reference, candidate, parity_set)
    if kind == "segmenter":
        return _segmenter_parity(reference, candidate, parity_set.squares, threshold)
    raise ConversionError(f"unknown model kind {kind!r}; valid: embedder, segmenter")


def _embed_views(predict: Predictor, squares: Sequence[np.ndarray], rotations: int) -> np.ndarray:
    """Unit vectors as the device computes them: ``rotation_views`` of each square, averaged."""
    if rotations == 1:
        return _unit(_run(predict, squares))
    return np.stack([mean_unit_vector(_run(predict, rotation_views(square, rotations))) for square in squares])


def _embedder_parity(reference: Predictor, candidate: Predictor, parity_set: ParitySet) -> dict[str, float]:
    ref = _embed_views(reference, parity_set.squares, parity_set.rotations)
    got = _embed_views(candidate, parity_set.squares, parity_set.rotations)
    cos = np.sum(ref * got, axis=1)
    figures = {"n_images": float(len(cos)), "rotations": float(parity_set.rotations),
               "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min())}
    in_catalog = parity_set.catalog_mask()
    if in_catalog.all() or not in_catalog.any():
        return figures  # one image: no search to compare
    catalog = ref[in_catalog]
    nn_ref = np.argmax(ref[~in_catalog] @ catalog.T, axis=1)
    nn_got = np.argmax(got[~in_catalog] @ catalog.T, axis=1)
    figures["n_catalog"] = float(in_catalog.sum())
    figures["n_queries"] = float((~in_catalog).sum())
    figures["nn_top1_agreement"] = float(np.mean(nn_ref == nn_got))
    if parity_set.labels is not None:
        labels = np.asarray(parity_set.labels)
        cat_labels, truth = labels[in_catalog], labels[~in_catalog]
        r_ref = float(np.mean(cat_labels[nn_ref] == truth))
        r_got = float(np.mean(cat_labels[nn_got] == truth))
        figures["recall1_reference"] = r_ref
        figures["recall1_candidate"] = r_got
        figures["recall1_drop_points"] = 100.0 * (r_ref - r_got)
    return figures


def _segmenter_parity(reference, candidate, squares, threshold: float) -> dict[str, float]:
    ref = _run(reference, squares).reshape(len(squares), -1)
    got = _run(candidate, squares).reshape(len(squares), -1)
    if ref.shape != got.shape:
        raise ConversionError(f"segmenter outputs differ in size: reference {ref.shape}, candidate {got.shape}")
    # threshold on probability == threshold on logit; compare logits to avoid sigmoid saturation hiding drift
    logit_threshold = float(np.log(threshold / (1.0 - threshold)))
    m_ref, m_got = ref >= logit_threshold, got >= logit_threshold
    inter = np.sum(m_ref & m_got, axis=1)
    union = np.sum(m_ref | m_got, axis=1)
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)  # both empty: identical masks
    prob_diff = np.abs(sigmoid(ref) - sigmoid(got))
    return {
        "n_images": float(len(squares)),
        "iou_mean": float(iou.mean()),
        "iou_min": float(iou.min()),
        "max_abs_logit_diff": float(np.max(np.abs(ref - got))),
        "max_abs_prob_diff": float(prob_diff.max()),
        "reference_foreground_frac": float(m_ref.mean()),
    }


def parity_failures(
    kind: str,
    quantization: str,
    figures: Mapping[str, float],
    targets: Mapping[str, Mapping[str, ParityTarget]] | None = None,
) -> list[str]:
    """Human-readable list of missed targets (empty = passed). A figure that was not measured is not a miss."""
    target = target_for(kind, quantization, targets)
    failures: list[str] = []
    for name, bound in dataclasses.asdict(target).items():
        if bound is None or name not in figures:
            continue
        value = figures[name]
        if name in _CEILINGS and value > bound:
            failures.append(f"{name} {value:.5g} > {bound:g}")
        elif name not in _CEILINGS and value < bound:
            failures.append(f"{name} {value:.5f} < {bound:g}")
    return failures


def check_parity(
    kind: str,
    quantization: str,
    reference: Predictor,
    candidate: Predictor,
    inputs: ParitySet | Sequence[np.ndarray],
    *,
    threshold: float = DEFAULT_SEGMENT_THRESHOLD,
    targets: Mapping[str, Mapping[str, ParityTarget]] | None = None,
) -> ParityResult:
    """Measure and hold the figures to the targets of ``quantization``'s tier."""
    figures = measure_parity(kind, reference, candidate, inputs, threshold=threshold)
    target = target_for(kind, quantization, targets)
    return ParityResult(kind, quantization, figures, target, parity_failures(kind, quantization, figures, targets))
