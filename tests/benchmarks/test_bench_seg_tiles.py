"""The tile benchmark's pick: the best mean over the pick sets among grids within the cost cap, whatever the held-out
columns say."""

from __future__ import annotations

from benchmarks.bench_seg_tiles import MAX_TILES, pick, tiles_of


def test_tiles_of_counts_the_grid() -> None:
    assert [tiles_of(f) for f in (None, 0.8, 0.5, 0.45, 0.4, 0.34, 0.3, 0.25)] == [0, 4, 4, 9, 9, 9, 16, 16]
    assert MAX_TILES == 9


def test_pick_takes_the_best_pick_mean_within_the_cap_and_ignores_held_out_figures() -> None:
    rows = [
        {"tile_frac": None, "pick mean": 0.65, "held-out: synthetic 384 px": 0.99},
        {"tile_frac": 0.5, "pick mean": 0.87, "held-out: synthetic 384 px": 0.99},
        {"tile_frac": 0.4, "pick mean": 0.91, "held-out: synthetic 384 px": 0.10},
        {"tile_frac": 0.3, "pick mean": 0.95, "held-out: synthetic 384 px": 0.99},  # 4 x 4: over the cap
    ]
    assert pick(rows)["tile_frac"] == 0.4
    assert pick(rows, max_tiles=16)["tile_frac"] == 0.3
    assert pick(rows, max_tiles=4)["tile_frac"] == 0.5
    assert pick(rows[:1])["tile_frac"] is None
