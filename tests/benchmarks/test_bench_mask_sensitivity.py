"""The outline-sensitivity benchmark on the bundled sample photos and the release models: the moved masks are what
their offset says, the unmoved vectors are the pipeline's own, and the whole command runs end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from coinvision.sdk.evaluation import list_class_folder
from coinvision.sdk.images import load_image
from coinvision.sdk.recognizer import Recognizer

from benchmarks.bench_mask_sensitivity import main, outline_vectors, score_offsets
from benchmarks.common import MISSING_INPUTS_EXIT, ROOT

MODELS = ROOT / "models" / "release"


@pytest.fixture(scope="module")
def recognizer() -> Recognizer:
    return Recognizer.from_dir(MODELS, num_threads=1)


def test_unmoved_vectors_are_the_pipelines_and_moved_ones_differ(sample_split: Path, recognizer: Recognizer) -> None:
    photos = [p for p, _ in list_class_folder(sample_split / "query")]
    vectors, kept = outline_vectors(recognizer, photos, (-1, 0, 1))
    assert vectors.shape == (len(photos), 3, recognizer.dim) and kept == 0
    for i, photo in enumerate(photos):
        np.testing.assert_allclose(vectors[i, 1], recognizer.embed(load_image(photo)).vector, atol=1e-6)
    assert np.all(np.sum(vectors[:, 0] * vectors[:, 1], axis=1) < 0.9999)
    assert np.all(np.sum(vectors[:, 2] * vectors[:, 1], axis=1) < 0.9999)


def test_scores_follow_their_definitions() -> None:
    """Two classes in 2-d. At +1 every vector turns by 90 degrees: moved together the query still meets its class,
    against the unmoved catalog it meets the other; at -1 only the query turns."""
    catalog = np.array([[[1, 0], [1, 0], [0, 1]], [[0, 1], [0, 1], [1, 0]]], np.float32)
    queries = np.array([[[0, 1], [1, 0], [0, 1]]], np.float32)
    rows = score_offsets(catalog, ["a", "b"], queries, ["a"], (-1, 0, 1))
    assert [r["offset_px"] for r in rows] == [-1, 0, 1]
    assert [r["recall@1 both"] for r in rows] == [0.0, 1.0, 1.0]
    assert [r["recall@1 queries"] for r in rows] == [0.0, 1.0, 0.0]
    assert rows[1]["cosine min"] == 1.0 and rows[2]["cosine mean"] == 0.0
    assert rows[0]["cosine mean"] == pytest.approx(2 / 3) and rows[0]["cosine min"] == 0.0


def test_main_writes_rows_and_plot(sample_split: Path, tmp_path: Path) -> None:
    out = tmp_path / "mask_sensitivity.json"
    assert main(["--split", str(sample_split), "--offsets", "1", "-1", "--out", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert [row["offset_px"] for row in payload["table"]] == [-1, 0, 1]
    assert payload["results"]["queries"] == 6 and payload["results"]["catalog"] == 6
    unmoved = payload["table"][1]
    assert unmoved["cosine mean"] == pytest.approx(1.0) and unmoved["recall@1 both"] == unmoved["recall@1 queries"]
    assert out.with_suffix(".png").stat().st_size > 0


def test_trained_coins_take_three_training_photos_per_class_as_the_catalog(sample_split: Path, tmp_path: Path) -> None:
    out = tmp_path / "trained.json"
    assert main(["--split", str(sample_split), "--trained-coins", "--offsets", "1", "--out", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert (results["catalog"], results["queries"], results["classes"]) == (9, 3, "trained")


def test_an_embedder_checkpoint_is_measured_behind_the_release_segmenter(sample_split: Path, tmp_path: Path) -> None:
    from coinvision.trainer.checkpoint import Checkpoint, save_checkpoint
    from coinvision.trainer.config_io import config_to_dict
    from coinvision.trainer.emb_model import EmbedderConfig, build_embedder

    cfg = EmbedderConfig(backbone="mobilenetv2_035", size_px=64, head_hidden_dims=(32,), embedding_dim=8)
    ckpt = save_checkpoint(tmp_path / "tiny" / "best.pt",
                           Checkpoint("embedder", config_to_dict(cfg), build_embedder(cfg).eval().state_dict()))
    out = tmp_path / "with_ckpt.json"
    assert main(["--split", str(sample_split), "--offsets", "1", "--embedder-checkpoints", str(ckpt),
                 "--out", str(out)]) == 0
    table = json.loads(out.read_text())["table"]
    assert [(row["models"], row["offset_px"]) for row in table] == [
        (str(MODELS), 0), (str(MODELS), 1), (str(ckpt), 0), (str(ckpt), 1)]
    assert table[2]["cosine min"] == pytest.approx(1.0) and table[3]["cosine mean"] < 0.9999


def test_missing_split_is_reported_as_missing_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--split", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.json")]) == MISSING_INPUTS_EXIT
    assert "make split" in capsys.readouterr().err
