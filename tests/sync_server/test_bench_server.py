"""benchmarks/bench_server.py on tiny sizes, so it cannot rot: its correctness checks hold and main writes JSON.
No timing assertions (speed lives in the benchmark's own output)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import bench_server


def test_bench_server_builds_are_checked_then_timed() -> None:
    cfg = bench_server.ServerBenchConfig(sizes=(600,), repeats=1)
    rows = {r["measure"]: r for r in bench_server.bench_builds(600, cfg)}
    assert {"index build (CatalogIndex, exact IP, CPU)", "pack build (int8)", "delta build (1% coins changed)",
            "near-duplicate scan (publish)"} <= set(rows)
    assert all(r["n"] == 600 and r["value"] > 0 for r in rows.values())


def test_bench_server_main_loads_a_real_server(tmp_path: Path) -> None:
    out = tmp_path / "server.json"
    rc = bench_server.main(["--sizes", "300", "--load-vectors", "200", "--seconds", "0.5", "--clients", "2",
                            "--servers", "werkzeug", "--out", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["benchmark"] == "server" and data["results"]["load_catalog"]["load_vectors"] == 200
    load = {r["endpoint"]: r for r in data["results"]["load"]}
    assert set(load) == {"manifest (signed)", "pack download (full)", "pack If-None-Match (304)",
                         "search by embedding (top 5)"}
    assert all(r["requests"] > 0 and r["errors"] == 0 for r in load.values())
