"""Does an exported model compute what the PyTorch model computes? Figures, on real photos, never a bare bool.

``measure_parity`` runs a reference predictor (PyTorch) and a candidate (any runtime, see ``runners``) on the
same model-input squares and returns the figures; ``parity_failures`` compares them with the issue's targets.

- embedder: cosine(reference, candidate) per image (mean, min); top-1 agreement of nearest-neighbour search
  against a catalog embedded by the reference; with labels, Recall@1 of both and the drop in points.
- segmenter: mask IoU per image at the release threshold (mean, min), max |logit difference|.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from coinvision.sdk.errors import ConversionError

from coinvision.converters.runners import Predictor

__all__ = ["TARGETS", "ParityTarget", "measure_parity", "parity_failures", "target_for"]


@dataclass(frozen=True)
class ParityTarget:
    cosine_mean: float | None = None
    cosine_min: float | None = None
    recall1_drop_points: float | None = None
    iou_mean: float | None = None


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


def target_for(kind: str, quantization: str) -> ParityTarget:
    if kind not in TARGETS:
        raise ConversionError(f"unknown model kind {kind!r}; valid: {', '.join(TARGETS)}")
    tier = quantization if quantization in ("fp32", "fp16") else "int8"  # every integer variant
    return TARGETS[kind][tier]


def _run(predict: Predictor, squares: Sequence[np.ndarray]) -> np.ndarray:
    return np.stack([np.asarray(predict(s), dtype=np.float32) for s in squares])


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def measure_parity(
    kind: str,
    reference: Predictor,
    candidate: Predictor,
    squares: Sequence[np.ndarray],
    *,
    threshold: float = 0.5,
    catalog_squares: Sequence[np.ndarray] | None = None,
    labels: Sequence[str] | None = None,
    catalog_labels: Sequence[str] | None = None,
) -> dict[str, float]:
    """Figures comparing ``candidate`` with ``reference`` on ``squares`` (model-input sized RGB uint8)."""
    if not squares:
        raise ConversionError("parity needs at least one image")
    if kind == "embedder":
        return _embedder_parity(reference, candidate, squares, catalog_squares, labels, catalog_labels)
    if kind == "segmenter":
        return _segmenter_parity(reference, candidate, squares, threshold)
    raise ConversionError(f"unknown model kind {kind!r}; valid: embedder, segmenter")


def _embedder_parity(reference, candidate, squares, catalog_squares, labels, catalog_labels) -> dict[str, float]:
    ref = _unit(_run(reference, squares))
    got = _unit(_run(candidate, squares))
    cos = np.sum(ref * got, axis=1)
    figures = {"n_images": float(len(squares)), "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min())}
    if catalog_squares:
        catalog = _unit(_run(reference, catalog_squares))
        nn_ref = np.argmax(ref @ catalog.T, axis=1)
        nn_got = np.argmax(got @ catalog.T, axis=1)
        figures["n_catalog"] = float(len(catalog_squares))
        figures["nn_top1_agreement"] = float(np.mean(nn_ref == nn_got))
        if labels is not None and catalog_labels is not None:
            cat = np.asarray(catalog_labels)
            truth = np.asarray(labels)
            r_ref = float(np.mean(cat[nn_ref] == truth))
            r_got = float(np.mean(cat[nn_got] == truth))
            figures["recall1_reference"] = r_ref
            figures["recall1_candidate"] = r_got
            figures["recall1_drop_points"] = 100.0 * (r_ref - r_got)
    return figures


def _segmenter_parity(reference, candidate, squares, threshold: float) -> dict[str, float]:
    ref = _run(reference, squares).reshape(len(squares), -1)
    got = _run(candidate, squares).reshape(len(squares), -1)
    # threshold on probability == threshold on logit; compare logits to avoid sigmoid saturation hiding drift
    logit_threshold = float(np.log(threshold / (1.0 - threshold)))
    m_ref, m_got = ref >= logit_threshold, got >= logit_threshold
    inter = np.sum(m_ref & m_got, axis=1)
    union = np.sum(m_ref | m_got, axis=1)
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)  # both empty: identical masks
    prob_diff = np.abs(1.0 / (1.0 + np.exp(-ref)) - 1.0 / (1.0 + np.exp(-got)))
    return {
        "n_images": float(len(squares)),
        "iou_mean": float(iou.mean()),
        "iou_min": float(iou.min()),
        "max_abs_logit_diff": float(np.max(np.abs(ref - got))),
        "max_abs_prob_diff": float(prob_diff.max()),
        "reference_foreground_frac": float(m_ref.mean()),
    }


def parity_failures(kind: str, quantization: str, figures: dict[str, float]) -> list[str]:
    """Human-readable list of missed targets (empty = passed)."""
    target = target_for(kind, quantization)
    failures: list[str] = []

    def at_least(name: str, floor: float | None) -> None:
        if floor is not None and name in figures and figures[name] < floor:
            failures.append(f"{name} {figures[name]:.5f} < {floor}")

    at_least("cosine_mean", target.cosine_mean)
    at_least("cosine_min", target.cosine_min)
    at_least("iou_mean", target.iou_mean)
    drop = figures.get("recall1_drop_points")
    if target.recall1_drop_points is not None and drop is not None and drop > target.recall1_drop_points:
        failures.append(f"recall1_drop_points {drop:.2f} > {target.recall1_drop_points}")
    return failures
