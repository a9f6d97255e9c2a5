"""The parity helper's figures against hand-computed answers, and the target bookkeeping."""

from __future__ import annotations

import numpy as np
import pytest
from coinvision.converters.parity import (
    TARGETS,
    ParitySet,
    ParityTarget,
    check_parity,
    measure_parity,
    parity_failures,
    parse_target_overrides,
    target_for,
)
from coinvision.sdk.errors import ConversionError


def _lookup(table: dict[int, np.ndarray]):
    """A predictor that answers from a table keyed by the square's first pixel (the image id)."""
    return lambda square: table[int(square[0, 0, 0])]


def _squares(n: int) -> list[np.ndarray]:
    return [np.full((8, 8, 3), i, np.uint8) for i in range(n)]


def _unit(deg: float) -> np.ndarray:
    rad = np.deg2rad(deg)
    return np.array([np.cos(rad), np.sin(rad)], np.float32)


def test_catalog_split_alternates_within_each_label() -> None:
    labels = ["a", "a", "b", "a", "b", "c"]
    assert ParitySet(_squares(6), labels).catalog_mask().tolist() == [True, False, True, True, False, True]
    assert ParitySet(_squares(4)).catalog_mask().tolist() == [True, False, True, False]


def test_embedder_figures_on_a_hand_built_2d_example() -> None:
    # images 0,2 = catalog (labels a, b at 0 and 90 degrees); 1,3 = queries (a near 10, b near 80 degrees)
    ref = {0: _unit(0), 1: _unit(10), 2: _unit(90), 3: _unit(80)}
    # the candidate moves query 3 to 30 degrees (its nearest catalog entry becomes 'a') and query 1 by 2 degrees
    got = {0: _unit(0), 1: _unit(12), 2: _unit(90), 3: _unit(30)}
    parity_set = ParitySet(_squares(4), ["a", "a", "b", "b"])
    figures = measure_parity("embedder", _lookup(ref), _lookup(got), parity_set)
    assert figures["n_catalog"] == 2 and figures["n_queries"] == 2
    assert figures["cosine_min"] == pytest.approx(np.cos(np.deg2rad(50)), abs=1e-6)
    assert figures["cosine_mean"] == pytest.approx((2 + np.cos(np.deg2rad(2)) + np.cos(np.deg2rad(50))) / 4, abs=1e-6)
    assert figures["nn_top1_agreement"] == 0.5
    assert figures["recall1_reference"] == 1.0 and figures["recall1_candidate"] == 0.5
    assert figures["recall1_drop_points"] == pytest.approx(50.0)
    result = check_parity("embedder", "int8_full", _lookup(ref), _lookup(got), parity_set)
    assert not result.passed
    assert any(f.startswith("cosine_min 0.64279 < 0.97") for f in result.failures)
    assert "recall1_drop_points 50 > 1" in result.failures


def test_embedder_without_labels_reports_agreement_only() -> None:
    ref = {i: _unit(10 * i) for i in range(4)}
    figures = measure_parity("embedder", _lookup(ref), _lookup(ref), _squares(4))
    assert figures["cosine_min"] == pytest.approx(1.0) and figures["nn_top1_agreement"] == 1.0
    assert "recall1_drop_points" not in figures


def test_segmenter_figures_on_a_hand_built_mask() -> None:
    ref_logits = np.full((1, 4, 4), -3.0, np.float32)
    ref_logits[0, :2, :2] = 3.0  # 4 coin pixels
    moved = ref_logits.copy()
    moved[0, 2, 2] = 0.5  # one extra coin pixel (p > 0.5): IoU 4/5
    ref = {0: ref_logits, 1: ref_logits}
    got = {0: ref_logits, 1: moved}
    figures = measure_parity("segmenter", _lookup(ref), _lookup(got), _squares(2), threshold=0.5)
    assert figures["iou_min"] == pytest.approx(0.8)
    assert figures["iou_mean"] == pytest.approx(0.9)
    assert figures["max_abs_logit_diff"] == pytest.approx(3.5)
    # at threshold 0.7 (logit 0.847) the extra pixel stays background: identical masks
    assert measure_parity("segmenter", _lookup(ref), _lookup(got), _squares(2), threshold=0.7)["iou_min"] == 1.0
    assert parity_failures("segmenter", "fp16", figures) == ["iou_mean 0.90000 < 0.99"]


def test_tiers_and_overrides() -> None:
    assert target_for("embedder", "palette6") == TARGETS["embedder"]["int8"]
    assert target_for("segmenter", "int8_dynamic").iou_mean == 0.97
    with pytest.raises(ConversionError, match="unknown quantization 'int3'"):
        target_for("embedder", "int3")
    table = parse_target_overrides(["embedder.fp32.cosine_min=0.5", "segmenter.int8.max_abs_logit_diff=2"])
    assert table["embedder"]["fp32"].cosine_min == 0.5
    assert table["segmenter"]["int8"] == ParityTarget(iou_mean=0.97, max_abs_logit_diff=2.0)
    assert TARGETS["embedder"]["fp32"].cosine_min == 0.9999  # the table itself is untouched
    assert parity_failures("segmenter", "int8_full", {"iou_mean": 0.98, "max_abs_logit_diff": 2.5}, table) == [
        "max_abs_logit_diff 2.5 > 2"
    ]
    assert parse_target_overrides(["embedder.int8.recall1_drop_points=none"])["embedder"]["int8"].recall1_drop_points \
        is None


def test_empty_input_and_unknown_kind_are_errors() -> None:
    with pytest.raises(ConversionError, match="at least one image"):
        measure_parity("embedder", _lookup({}), _lookup({}), [])
    with pytest.raises(ConversionError, match="unknown model kind 'detector'"):
        measure_parity("detector", _lookup({0: _unit(0)}), _lookup({0: _unit(0)}), _squares(1))


def test_embedder_parity_averages_rotated_views_like_the_sdk() -> None:
    """A candidate that sees every input turned by 90 degrees disagrees with the reference view by view, but
    with 4 averaged views (the set of views is the same) the device's vectors are identical."""
    rng = np.random.default_rng(0)
    projection = rng.normal(size=(8 * 8 * 3, 16)).astype(np.float32)

    def reference(square: np.ndarray) -> np.ndarray:
        return square[::4, ::4].astype(np.float32).reshape(-1) @ projection

    def turned(square: np.ndarray) -> np.ndarray:
        return reference(np.ascontiguousarray(np.rot90(square)))

    squares = [rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8) for _ in range(6)]
    single = measure_parity("embedder", reference, turned, ParitySet(squares, rotations=1))
    averaged = measure_parity("embedder", reference, turned, ParitySet(squares, rotations=4))
    assert single["cosine_min"] < 0.9
    assert averaged["cosine_min"] > 0.9999 and averaged["rotations"] == 4.0
