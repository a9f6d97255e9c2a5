"""The views benchmark's pick: the best mean over the pick sets, the fewest views within a tie, whatever the held-out
columns say."""

from __future__ import annotations

from benchmarks.bench_seg_views import CANDIDATES, TIE_IOU, pick


def test_candidates_cover_every_allowed_view_count_with_and_without_the_split() -> None:
    from coinvision.sdk.segmenter import VIEWS_ALLOWED

    assert sorted({(c["views"], c["split_touching"]) for c in CANDIDATES}) == sorted(
        (v, s) for v in VIEWS_ALLOWED for s in (False, True))


def test_pick_takes_the_best_pick_mean_prefers_fewer_views_in_a_tie_and_ignores_held_out_figures() -> None:
    rows = [
        {"views": 1, "split_touching": True, "pick mean": 0.911, "held-out: real photos": 0.99},
        {"views": 2, "split_touching": False, "pick mean": 0.9145, "held-out: real photos": 0.99},
        {"views": 4, "split_touching": False, "pick mean": 0.916, "held-out: real photos": 0.10},
    ]
    assert pick(rows)["views"] == 4
    assert pick(rows, tie_iou=0.002)["views"] == 2  # 4 views within the tie of 2: the cheaper one
    assert pick(rows[:1])["views"] == 1
    assert TIE_IOU == 0.001
