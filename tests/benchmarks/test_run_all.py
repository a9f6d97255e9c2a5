"""``make bench`` on a checkout without some benchmark's inputs: that benchmark is skipped with its reason and
its previous results kept, a failing one still fails the run; world_pack makes its inputs or says what is missing."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from benchmarks import bench_world_pack, run_all
from benchmarks.common import MISSING_INPUTS_EXIT


@pytest.mark.parametrize(("codes", "want"), [({}, 0), ({"retrieval": MISSING_INPUTS_EXIT}, 0), ({"search": 1}, 1)])
def test_run_all_skips_benchmarks_without_inputs_and_fails_on_errors(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], codes: dict[str, int], want: int
) -> None:
    ran: list[str] = []

    def call(cmd: list[str], cwd: Path) -> int:  # each benchmark is its own process: the boundary faked here
        name = cmd[2].removeprefix("benchmarks.bench_")
        ran.append(name)
        return codes.get(name, 0)

    monkeypatch.setattr(subprocess, "call", call)
    monkeypatch.setattr(run_all, "update_readme", lambda: None)
    assert run_all.main(["--quick", "--only", "retrieval", "--only", "search"]) == want
    out, err = capsys.readouterr()
    assert ran == ["retrieval", "search"]
    assert ("skipped" in out and "retrieval" in out) == (codes.get("retrieval") == MISSING_INPUTS_EXIT)
    assert ("FAILED: search" in err) == (want == 1)


def test_world_pack_names_the_missing_photos_and_uses_existing_embeddings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "emb"
    assert not bench_world_pack.prepare_embeddings(folder, tmp_path / "no-data", split_dir=tmp_path / "split")
    err = capsys.readouterr().err
    assert "catalog.npz" in err and "no-data" in err and "--data" in err
    assert not (tmp_path / "split").exists()
    folder.mkdir()
    for s in bench_world_pack.SPLITS:
        np.savez(folder / f"{s}.npz", embeddings=np.eye(2, 4, dtype=np.float32), no_coin=np.zeros(2, bool),
                 paths=np.array(["a/x.jpg", "b/y.jpg"]))
    assert bench_world_pack.prepare_embeddings(folder, tmp_path / "no-data", split_dir=tmp_path / "split")
    assert list(bench_world_pack.load_embeddings(folder / "query.npz").labels) == ["a", "b"]
