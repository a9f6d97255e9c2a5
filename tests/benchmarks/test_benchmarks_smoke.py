"""The benchmark scripts on tiny inputs, so they cannot rot: every core function runs, its correctness checks
hold, and ``main`` writes the JSON the README table is made from. No timing assertions (speed lives in the
benchmarks' own output)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faiss")
pytest.importorskip("usearch")
pytest.importorskip("torch")

from benchmarks import bench_latency, bench_search, bench_segmentation


def _read(path: Path) -> dict:
    data = json.loads(path.read_text())
    assert {"benchmark", "date_utc", "hardware", "command", "table", "results"} <= set(data)
    return data


# ------------------------------------------------------------------------------------------------- search


def test_topk_agreement_counts_shared_ids_ignoring_order() -> None:
    truth = np.array([[1, 2, 3], [4, 5, 6]])
    found = np.array([[3, 2, 1], [4, 9, -1]])
    assert bench_search.topk_agreement(found, truth) == pytest.approx(4 / 6)


def test_clustered_unit_vectors_are_unit_and_clustered() -> None:
    rng = np.random.default_rng(0)
    x = bench_search.clustered_unit_vectors(500, 64, cluster_size=50, spread=0.05, rng=rng)
    assert x.shape == (500, 64) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    nearest = np.sort(x @ x.T, axis=1)[:, -2]  # best neighbour other than itself
    assert np.median(nearest) > 0.8  # members of a cluster, not random 64-d directions (~0.3)


def test_search_run_size_exact_methods_agree_and_quantized_packs_are_smaller() -> None:
    cfg = bench_search.SearchConfig(batch_queries=30, single_queries=4, cluster_size=20, min_time_s=0.0,
                                    max_repeats=1)
    rows = {r["method"].split(" (")[0]: r for r in bench_search.run_size(2000, cfg, progress=lambda _: None)}
    assert {"pack int8", "pack fp16", "pack fp32", "faiss IndexFlatIP fp32", "usearch exact fp32",
            "usearch HNSW fp32"} <= set(rows)
    for name in ("pack fp32", "faiss IndexFlatIP fp32", "usearch exact fp32"):
        assert rows[name]["top10_agreement"] >= bench_search.EXACT_MIN_AGREEMENT
    assert rows["pack int8"]["top10_agreement"] > 0.8
    sizes = [rows[f"pack {q}"]["bytes_per_vector"] for q in ("int8", "fp16", "fp32")]
    assert sizes == sorted(sizes) and sizes[0] < sizes[2] / 2
    assert rows["faiss IVFFlat fp32"]["top10_agreement"] > 0.9  # approximate: no exactness bar, a sanity floor
    timed = [r for r in rows.values() if "skipped" not in r]  # GPU rows are skipped, with the reason, without a GPU
    assert all(r["batch_queries_per_s"] > 0 and r["single_queries_per_s"] > 0 for r in timed)
    assert all(r["skipped"] for r in rows.values() if "skipped" in r)


def test_search_main_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "search.json"
    assert bench_search.main(["--sizes", "1000", "--out", str(out)]) == 0
    data = _read(out)
    assert data["benchmark"] == "search"
    # 3 packs, faiss flat, 2 usearch, 2 faiss IVF (nprobe 8, 32), faiss GPU (a skipped row without a GPU)
    assert len(data["table"]) == 9 and {r["vectors"] for r in data["table"]} == {1000}


# ------------------------------------------------------------------------------------------- segmentation


def test_mask_iou_edge_cases() -> None:
    a = np.zeros((4, 4), bool)
    a[:2] = True
    assert bench_segmentation.mask_iou(a, a) == 1.0
    assert bench_segmentation.mask_iou(a, ~a) == 0.0
    assert bench_segmentation.mask_iou(None, a) == 0.0
    assert bench_segmentation.mask_iou(None, np.zeros((4, 4), bool)) == 1.0


def test_segmentation_evaluate_model_on_sample_photos(tiny_models_dir: Path, sample_root: Path) -> None:
    from coinvision.sdk.images import load_image
    from coinvision.trainer.seg_labels import auto_label

    models = [bench_segmentation.exported_model(p) for p in bench_segmentation.discover_exported(tiny_models_dir)]
    assert {m.runtime for m in models} == {"onnx", "tflite"}
    photos = sorted((sample_root / "euro_phone" / "images").rglob("*.jpg"))[:3]
    images = [(img, auto_label(img).mask) for img in map(load_image, photos)]
    assert all(mask is not None for _, mask in images)
    for model in models:
        bench_segmentation.check_model(model, images[0][0])
        scores = bench_segmentation.evaluate_model(model, images)
        assert scores["images"] == 3
        for passes in ("1_pass", "2_pass"):
            assert set(scores[passes]) == {"iou@0.3", "iou@0.5", "no_coin_frac@0.3", "no_coin_frac@0.5"}
            assert all(0.0 <= v <= 1.0 for v in scores[passes].values())


def test_segmentation_main_skips_missing_models_and_reports_reference(
    tiny_models_dir: Path, mini_sample_root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "segmentation.json"
    rc = bench_segmentation.main(["--models", str(tiny_models_dir), "--checkpoint", str(tmp_path / "none.pt"),
                                  "--sample-data", "--sample-root", str(mini_sample_root), "--synthetic", "3",
                                  "--real", "3", "--out", str(out)])
    assert rc == 0
    results = _read(out)["results"]
    assert results["design_reference"] == {"iou@0.3": 0.976, "iou@0.5": 0.960}
    assert results["synthetic_scenes"] == 3 and results["real_photos"] == 3
    assert {m["runtime"] for m in results["models"]} == {"onnx", "tflite"}
    assert [s["model"] for s in results["skipped"]] == ["torch"]
    assert "sample" in results["data_source"]


# ------------------------------------------------------------------------------------------------ latency


def test_latency_discovers_pairs_and_names_missing_variants(tiny_models_dir: Path, tmp_path: Path) -> None:
    found, skipped = bench_latency.discover_pipelines(tiny_models_dir)
    assert [s.name for s in found] == ["onnx", "tflite fp32"] and all(s.from_dir for s in found)
    assert {s["runtime"] for s in skipped} == {"tflite fp16", "tflite int8"}
    found, skipped = bench_latency.discover_pipelines(tmp_path / "absent")
    assert not found and {s["runtime"] for s in skipped} == set(bench_latency.EXPECTED_RUNTIMES)


def test_latency_pipeline_checked_then_timed(tiny_models_dir: Path, sample_root: Path) -> None:
    photos = bench_latency.sample_photos(sample_root, count=3)
    spec = bench_latency.discover_pipelines(tiny_models_dir)[0][0]
    recognizer = bench_latency.sdk_recognizer(spec, num_threads=1)
    recognizer.load_pack(bench_latency.build_catalog_pack(recognizer, photos, catalog_size=50, seed=0))
    check = bench_latency.sanity_check(recognizer, photos, min_found_frac=0.0)
    assert check["photos"] == 3
    stages = bench_latency.time_pipeline(recognizer, photos, runs=4, warmup=1)
    assert {"segment_pass1", "crop", "embed", "search", "total"} <= set(stages)
    assert stages["total"]["n"] == 4 and stages["total"]["median_ms"] > 0
    with pytest.raises(RuntimeError, match="min-found-frac"):
        bench_latency.sanity_check(recognizer, photos, min_found_frac=1.01)


def test_latency_main_reports_ratios_vs_torch(tiny_models_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "latency.json"
    rc = bench_latency.main(["--models", str(tiny_models_dir), "--threads", "1", "--runs", "20", "--warmup", "1",
                             "--photos", "2", "--catalog-size", "100", "--min-found-frac", "0", "--out", str(out)])
    assert rc == 0
    results = _read(out)["results"]
    assert results["torch_same_weights_as_exports"] is True
    by_runtime = {m["runtime"]: m for m in results["measured"]}
    assert set(by_runtime) == {"torch", "onnx", "tflite fp32"}
    assert by_runtime["torch"]["ratio_vs_torch"]["total"] == pytest.approx(1.0)
    assert by_runtime["onnx"]["ratio_vs_torch"]["total"] > 0
    assert by_runtime["onnx"]["cosine_vs_torch"] > 0.999  # same weights: the exports embed like PyTorch
    assert {s["runtime"] for s in results["skipped"]} == {"tflite fp16", "tflite int8"}


def test_seg_encoders_reads_trained_runs_and_times_each_encoder(tmp_path: Path) -> None:
    import yaml

    from benchmarks import bench_seg_encoders

    run = tmp_path / "runs" / "mnv2"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(
        {"encoder": "tu-mobilenetv2_100", "size_px": 64, "steps_per_epoch": 4, "batch_size": 2}))
    history = [{"epoch": e, "epoch_s": 30.0, "synthetic_iou@0.3": s, "synthetic_iou@0.5": s,
                "real_iou@0.3": r, "real_iou@0.5": r} for e, s, r in ((1, 0.5, 0.7), (2, 0.7, 0.9), (3, 0.75, 0.8))]
    (run / "history.json").write_text(json.dumps(history))
    (tmp_path / "runs" / "empty").mkdir()  # no history: skipped, not an error

    trained = bench_seg_encoders.trained_runs(sorted((tmp_path / "runs").iterdir()))
    assert list(trained) == ["mnv2"]
    best = trained["mnv2"]
    assert (best["best_epoch"], best["real_iou@0.5"], best["train_samples"], best["train_minutes"]) == (2, 0.9, 24, 1.5)

    out, png = tmp_path / "enc.json", tmp_path / "enc.png"
    rc = bench_seg_encoders.main(["--encoders", "tu-mobilenetv2_100", "--size-px", "64", "--runs", str(run),
                                  "--out", str(out), "--plot", str(png)])
    assert rc == 0 and png.stat().st_size > 0
    rows = json.loads(out.read_text())["table"]
    assert [(r["run"], r["encoder"], r["size_px"]) for r in rows] == [("mnv2", "tu-mobilenetv2_100", 64)]
    assert rows[0]["real_iou@0.5"] == 0.9 and rows[0]["params_m"] > 0 and rows[0]["latency_1t_ms"] > 0


def test_plot_runs_reports_best_epoch_and_refuses_unknown_metric(tmp_path: Path, capsys) -> None:
    from benchmarks import plot_runs

    runs = []
    for name, values in (("a", [0.2, 0.5, 0.4]), ("b", [0.1, 0.15, 0.3])):
        run = tmp_path / name
        run.mkdir()
        (run / "history.json").write_text(json.dumps([{"epoch": i + 1, "recall@1": v} for i, v in enumerate(values)]))
        runs.append(run)
    histories = {run: json.loads((run / "history.json").read_text()) for run in runs}
    assert plot_runs.best_epochs(histories, "recall@1") == {str(runs[0]): (2, 0.5), str(runs[1]): (3, 0.3)}
    png = tmp_path / "cmp.png"
    assert plot_runs.main([*map(str, runs), "--out", str(png)]) == 0 and png.stat().st_size > 0
    assert plot_runs.main([*map(str, runs), "--metric", "map@r", "--out", str(png)]) == 2
    assert plot_runs.main([str(tmp_path / "none"), "--out", str(png)]) == 2
    assert "no column 'map@r'" in capsys.readouterr().err


def test_release_checkpoint_prefers_the_release_source_over_the_newest_run(tmp_path: Path) -> None:
    import os

    from coinvision.sdk.files import sha256_file

    from benchmarks.common import release_checkpoint

    runs, models = tmp_path / "runs", tmp_path / "release"
    paths = []
    for i, name in enumerate(("released", "later_experiment")):
        path = runs / "embedder" / name / "best.pt"
        path.parent.mkdir(parents=True)
        path.write_bytes(name.encode())
        os.utime(path, (1_000_000 + i, 1_000_000 + i))
        paths.append(path)
    assert release_checkpoint("embedder", models, runs) == paths[1]  # no release yet: the newest
    models.mkdir()
    (models / "embedder.onnx.meta.json").write_text(json.dumps({"extra": {"checkpoint_sha256": sha256_file(paths[0])}}))
    assert release_checkpoint("embedder", models, runs) == paths[0]
    assert release_checkpoint("segmenter", models, runs) is None


def test_int8_variants_report_parity_size_and_latency(sample_root: Path, tmp_path: Path) -> None:
    pytest.importorskip("litert_torch")
    from coinvision.converters.tiny_models import write_tiny_checkpoints

    from benchmarks import bench_int8

    ckpt = write_tiny_checkpoints(tmp_path / "ckpt")["embedder"]
    variants = (bench_int8.Variant("fp16", "fp16"), bench_int8.Variant("full int8, plain", "int8_full",
                                                                        bias_correction=False))
    rows, info = bench_int8.run_variants(ckpt, sample_root / "coins211", sample_root / "euro_phone",
                                         calibration_count=6, check_count=8, variants=variants, latency_runs=2)
    assert [r["variant"] for r in rows] == ["fp16", "full int8, plain"]
    assert info["n_calibration"] == 6 and info["n_check"] == 8
    assert rows[0]["cosine_min"] > 0.999 and rows[0]["passes_target"]
    assert rows[1]["bytes"] < rows[0]["bytes"] and rows[1]["latency_1t_ms"] > 0
    assert all(-1.0 <= r["cosine_min"] <= r["cosine_mean"] <= 1.0 + 1e-6 for r in rows)
