"""bench_sdk_latency's quick variant on 2 photos, so it cannot rot: the Python reference (ONNX + TFLite), the
Kotlin Bench (java -cp, compiled by the driver when missing) and sdk_js/scripts/bench.mjs each time the same photos
against the same pack and agree with the reference on the top-1. No timing assertions. Skips with the reason when
mvn/java/node or the built SDKs are missing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmarks import bench_sdk_latency as bench

ROOT = Path(__file__).resolve().parents[2]


def _missing() -> str | None:
    for tool in ("mvn", "java", "node"):
        if shutil.which(tool) is None:
            return f"{tool} is not on PATH"
    if not (ROOT / "sdk_kotlin" / "target" / "classes" / "org" / "coinvision" / "sdk" / "Recognizer.class").is_file():
        return "the Kotlin SDK is not built (cd sdk_kotlin && mvn -q -B test)"
    if not (Path.home() / ".m2" / "repository" / "com" / "microsoft" / "onnxruntime").is_dir():
        return "~/.m2 holds no ONNX Runtime jar (cd sdk_kotlin && mvn -q -B test)"
    if not (ROOT / "sdk_js" / "dist" / "node" / "index.js").is_file():
        return "the TypeScript SDK is not built (cd sdk_js && npm install && npm run build)"
    if not (ROOT / "sdk_js" / "node_modules" / "onnxruntime-node").is_dir():
        return "sdk_js/node_modules has no onnxruntime-node (cd sdk_js && npm install)"
    if not (ROOT / "models" / "release" / "segmenter.onnx").is_file():
        return "no release ONNX models in models/release"
    return None


def test_catalog_holds_out_odd_positions() -> None:
    catalog, queries = bench.catalog_and_queries(quick=False, count=None)
    assert len(queries) == 160 and len(set(queries)) == 160
    assert len(catalog) == 96 and len({coin for coin, _ in catalog}) == 32
    assert queries[0].startswith("examples/sample_coins/euro_phone/")
    assert queries[1].startswith("examples/sample_coins/coins211/")


@pytest.mark.skipif(_missing() is not None, reason=_missing() or "")
def test_quick_run_on_two_photos(tmp_path: Path) -> None:
    out = tmp_path / "sdk_latency.json"
    rc = bench.main(["--quick", "--photos", "2", "--warmup", "1", "--out", str(out)])
    data = json.loads(out.read_text())
    assert rc == 0, data["results"]["skipped"]
    assert {"benchmark", "date_utc", "hardware", "command", "table", "results"} <= data.keys()
    runs = data["results"]["runs"]
    assert set(runs) == set(bench.SDKS)
    for sdk, run in runs.items():
        assert [p["file"] for p in run["photos"]] == data["results"]["photos"], sdk
        summary = run["summary"]
        assert summary["total"]["n"] == 2 and summary["total"]["median_ms"] > 0, sdk
        assert 0 <= summary["decode"]["median_ms"] < summary["total"]["median_ms"], sdk
        if sdk != "python-onnx":
            assert summary["top1_agreement"] == 1.0, (sdk, summary["disagreements"])
    assert len(data["table"]) == len(bench.SDKS)
    assert all("load avg 1 min (before-after)" in row for row in data["table"])
