"""bench_retrieval on tiny inputs, so it cannot rot: the pack-quantization scoring on synthetic clustered vectors,
runtime discovery, the correctness checks, and ``main`` end to end on the bundled sample photos with a tiny
random-weight checkpoint and the tiny exported models. No timing assertions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faiss")
pytest.importorskip("torch")
pytest.importorskip("pytorch_metric_learning")

from benchmarks import bench_retrieval
from benchmarks.common import MISSING_INPUTS_EXIT


def _centres(n_classes: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    centres = rng.standard_normal((n_classes, dim))
    return centres / np.linalg.norm(centres, axis=1, keepdims=True)


def _around(centres: np.ndarray, per_class: int, spread: float, rng: np.random.Generator
            ) -> tuple[np.ndarray, list[str]]:
    """``per_class`` unit vectors around each centre, labelled ``set/<centre index>``."""
    labels = np.repeat(np.arange(len(centres)), per_class)
    x = centres[labels] + spread * rng.standard_normal((len(labels), centres.shape[1]))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), [f"set/{i}" for i in labels]


# ------------------------------------------------------------------------------------------- pack quant


def test_pack_quantization_on_clustered_vectors() -> None:
    rng = np.random.default_rng(0)
    centres = _centres(25, 64, rng)
    catalog, cat_labels = _around(centres, 3, spread=0.08, rng=rng)
    queries, query_labels = _around(centres, 6, spread=0.08, rng=rng)
    # one query of a coin the catalog does not hold: left out, counted
    queries = np.vstack([queries, queries[:1]])
    query_labels = [*query_labels, "set/absent"]
    out = bench_retrieval.pack_quantization(catalog, cat_labels, queries, query_labels)
    assert (out["n_queries"], out["n_unanswerable"], out["n_catalog"], out["n_catalog_classes"]) == (150, 1, 75, 25)
    assert set(out["quants"]) == {"fp32", "fp16", "int8"}
    fp32 = out["quants"]["fp32"]
    assert fp32["recall_at"][1] > 0.95  # well-separated clusters
    assert fp32["recall_at"] == pytest.approx(fp32["recall_at_dequantised_exact"])
    assert out["fp32_pack_vs_exact_mismatched_queries"] == {k: 0 for k in (1, 2, 5, 10, 20)}
    recalls = [fp32["recall_at"][k] for k in (1, 2, 5, 10, 20)]
    assert recalls == sorted(recalls)
    assert fp32["recall@1_cost_points_vs_fp32"] == 0.0
    assert out["int8_recall@1_cost_points"] == pytest.approx(
        100 * (fp32["recall_at"][1] - out["quants"]["int8"]["recall_at"][1]))
    assert out["int8_goal_met"] is (out["int8_recall@1_cost_points"] <= 0.3)
    sizes = [out["quants"][q]["bytes_per_vector"] for q in ("int8", "fp16", "fp32")]
    assert sizes == sorted(sizes) and sizes[0] < sizes[2] / 2
    assert 0.0 < fp32["map_at_r"] <= 1.0


def test_pack_quantization_recall_drops_for_confusable_classes() -> None:
    rng = np.random.default_rng(1)
    centres = _centres(20, 16, rng)
    catalog, cat_labels = _around(centres, 2, spread=0.3, rng=rng)
    queries, query_labels = _around(centres, 5, spread=0.3, rng=rng)
    out = bench_retrieval.pack_quantization(catalog, cat_labels, queries, query_labels)
    recall = out["quants"]["fp32"]["recall_at"]
    assert recall[1] < 0.9 and recall[20] == 1.0  # every class is within the top 20 of 20 classes


def test_pack_search_ranks_counts_misses_as_k() -> None:
    from coinvision.sdk.pack import Pack

    vectors = np.eye(4, dtype=np.float32)
    pack = Pack.from_vectors(vectors, ["a", "b", "c", "d"], [], catalog_id="t", catalog_version=1,
                             model_fingerprint="f", quant="fp32", created_at=0)
    queries = np.array([[1, 0.5, 0, 0], [1, 0.5, 0, 0], [0, 0, 0, 1]], np.float32)
    ranks = bench_retrieval.pack_search_ranks(pack, queries, ["a", "b", "c"], k=2)
    assert ranks.tolist() == [0, 1, 2]


# ----------------------------------------------------------------------------------------- checks, discovery


def test_check_vectors_names_the_problem() -> None:
    good = np.eye(3, dtype=np.float32)
    bench_retrieval.check_vectors("x", good, 3, 3)
    with pytest.raises(RuntimeError, match="for 4 photos"):
        bench_retrieval.check_vectors("x", good, 4)
    with pytest.raises(RuntimeError, match="not unit"):
        bench_retrieval.check_vectors("x", 2 * good, 3)
    with pytest.raises(RuntimeError, match="NaN"):
        bench_retrieval.check_vectors("x", np.full((3, 3), np.nan, np.float32), 3)
    with pytest.raises(RuntimeError, match="dim 3, expected 64"):
        bench_retrieval.check_vectors("x", good, 3, 64)


def test_discover_runtimes_pairs_each_embedder_with_its_segmenter(tmp_path: Path) -> None:
    for name in ("segmenter.onnx", "embedder.onnx", "segmenter.tflite", "embedder.tflite", "segmenter.int8.tflite",
                 "embedder.int8.tflite", "embedder.fp16.tflite"):
        (tmp_path / name).write_bytes(b"")
    found, skipped = bench_retrieval.discover_runtimes(tmp_path)
    pairs = {s.name: (s.segmenter.name, s.embedder.name, bool(s.note)) for s in found}
    assert pairs == {
        "onnx": ("segmenter.onnx", "embedder.onnx", False),
        "tflite fp32": ("segmenter.tflite", "embedder.tflite", False),
        "tflite int8": ("segmenter.int8.tflite", "embedder.int8.tflite", False),
        "tflite fp16": ("segmenter.tflite", "embedder.fp16.tflite", True),  # no segmenter.fp16: noted fallback
    }
    assert [s.name for s in found if s.from_dir] == ["onnx", "tflite fp32"]
    assert not skipped
    (tmp_path / "segmenter.onnx").unlink()
    found, skipped = bench_retrieval.discover_runtimes(tmp_path)
    assert "onnx" not in {s.name for s in found} and skipped[0]["source"] == "onnx"
    assert bench_retrieval.discover_runtimes(tmp_path / "absent")[1][0]["source"] == "exported runtimes"


def test_cap_per_class_keeps_order_and_every_class() -> None:
    from coinvision.trainer.emb_data import Sample

    samples = [Sample(Path(f"{c}{i}.png"), f"d/{c}", Path(f"{c}{i}.jpg")) for c in "ab" for i in range(5)][:7]
    capped = bench_retrieval.cap_per_class(samples, 3, seed=0)
    assert [s.class_key for s in capped] == ["d/a"] * 3 + ["d/b"] * 2
    assert capped == [s for s in samples if s in capped]
    assert bench_retrieval.cap_per_class(samples, 0, seed=0) == samples


# ------------------------------------------------------------------------------------------------ end to end


def _tiny_checkpoint(path: Path, sample_root: Path, cache: Path) -> Path:
    """A random-weight embedder checkpoint whose config names the bundled sample as its data (letterboxed)."""
    import torch
    from coinvision.converters.tiny_models import TINY_EMBEDDER_BACKBONE, TINY_EMBEDDING_DIM, TINY_SIZE_PX
    from coinvision.trainer.checkpoint import Checkpoint, save_checkpoint
    from coinvision.trainer.config_io import config_to_dict
    from coinvision.trainer.emb_config import EmbedderConfig
    from coinvision.trainer.emb_model import build_embedder

    torch.manual_seed(0)
    cfg = EmbedderConfig(backbone=TINY_EMBEDDER_BACKBONE, size_px=TINY_SIZE_PX, head_hidden_dims=(32,),
                         embedding_dim=TINY_EMBEDDING_DIM, background_removal=False, crop_cache_dir=str(cache),
                         data_roots=(str(sample_root / "coins211"), str(sample_root / "euro_phone")),
                         max_queries_per_class=3, num_threads=1)
    model = build_embedder(cfg).eval()
    return save_checkpoint(path, Checkpoint("embedder", config_to_dict(cfg), model.state_dict(), epoch=1))


def test_main_scores_torch_runtimes_and_packs_on_the_split(tiny_models_dir: Path, sample_root: Path,
                                                           tmp_path: Path) -> None:
    ckpt = _tiny_checkpoint(tmp_path / "embedder.pt", sample_root, tmp_path / "cache")
    out = tmp_path / "retrieval.json"
    rc = bench_retrieval.main(["--checkpoint", str(ckpt), "--models", str(tiny_models_dir), "--quick",
                               "--queries-per-class", "2", "--out", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["benchmark"] == "retrieval"
    results = data["results"]
    split = results["split"]
    assert split["bench_queries_per_class_cap"] == 2 and 0 < split["query_photos_used"] <= 2 * split["unseen_classes"]
    by_source = {m["source"]: m for m in results["measured"]}
    assert set(by_source) == {"pytorch", "onnx", "tflite fp32"}
    for entry in by_source.values():
        assert (entry["n_queries"], entry["n_catalog"]) == (split["query_photos_used"], split["catalog_photos"])
        assert all(0.0 <= v <= 1.0 for v in entry["recall_at"].values())
    assert by_source["pytorch"]["torch_source"]["kind"] == "crop_cache"
    assert by_source["onnx"]["same_weights_as_checkpoint"] is False and by_source["onnx"]["cosine_vs_pytorch"] is None
    packs = results["pack_quantization"]
    assert packs["n_catalog"] == split["catalog_photos"] and set(packs["quants"]) == {"fp32", "fp16", "int8"}
    assert packs["quants"]["fp32"]["recall_at"]["1"] == pytest.approx(by_source["pytorch"]["recall_at"]["1"],
                                                                     abs=0.02)
    rows = [r["source"] for r in data["table"]]
    assert rows == ["design bar (their data)", "pytorch", "onnx", "tflite fp32", "pack fp32", "pack fp16", "pack int8"]
    assert data["table"][0]["recall@1"] == 0.90 and data["table"][0]["recall@20"] == 1.0


def test_main_without_checkpoint_names_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "retrieval.json"
    assert bench_retrieval.main(["--checkpoint", str(tmp_path / "none.pt"), "--out", str(out)]) == MISSING_INPUTS_EXIT
    assert "--checkpoint" in capsys.readouterr().err and not out.exists()
