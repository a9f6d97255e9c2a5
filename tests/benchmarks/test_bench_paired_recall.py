"""The paired Recall@1 comparison: gains, losses and McNemar's exact p as defined, and the command end to end on the
bundled photos with the release and a copy of it whose segmenter threshold differs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from benchmarks.bench_paired_recall import main, paired
from benchmarks.common import MISSING_INPUTS_EXIT, ROOT

MODELS = ROOT / "models" / "release"


def test_gains_losses_and_exact_mcnemar_p() -> None:
    base = np.array([1, 1, 0, 0, 1], bool)
    row = paired(base, np.array([1, 0, 1, 1, 1], bool))
    assert (row["gained"], row["lost"], row["recall@1"]) == (2, 1, 0.8)
    assert row["mcnemar_p"] == pytest.approx(1.0)  # 2 of 3 changed queries gained: nothing one-sided
    one_sided = paired(np.ones(20, bool), np.r_[np.zeros(8, bool), np.ones(12, bool)])
    assert (one_sided["gained"], one_sided["lost"]) == (0, 8)
    assert one_sided["mcnemar_p"] == pytest.approx(2 / 2**8)  # two-sided binomial, all 8 changes one way
    assert paired(base, base) == {"recall@1": 0.6, "gained": 0, "lost": 0, "mcnemar_p": 1.0}


def test_main_compares_each_folder_with_the_first(sample_split: Path, tmp_path: Path) -> None:
    from coinvision.converters.release_postprocess import main as postprocess

    other = tmp_path / "other"
    shutil.copytree(MODELS, other)
    assert postprocess([str(other), "--kind", "segmenter", "--set", "threshold=0.9"]) == 0
    out = tmp_path / "paired.json"
    assert main(["--models", str(MODELS), str(other), "--split", str(sample_split), "--out", str(out)]) == 0
    payload = json.loads(out.read_text())
    results, table = payload["results"], payload["table"]
    assert (results["catalog"], results["queries"], results["base"]) == (6, 6, str(MODELS))
    assert [row["models"] for row in table] == [str(MODELS), str(other)]
    assert (table[0]["gained"], table[0]["lost"], table[0]["mcnemar_p"]) == (0, 0, 1.0)
    for row in table:
        hits = results["hits"][row["models"]]
        assert len(hits) == 6 and row["recall@1"] == pytest.approx(np.mean(hits))
    base, cand = np.array(results["hits"][str(MODELS)]), np.array(results["hits"][str(other)])
    assert table[1]["gained"] == int(((cand == 1) & (base == 0)).sum())
    assert table[1]["lost"] == int(((cand == 0) & (base == 1)).sum())


def test_missing_split_is_reported_as_missing_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--split", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.json")]) == MISSING_INPUTS_EXIT
    assert "make split" in capsys.readouterr().err
