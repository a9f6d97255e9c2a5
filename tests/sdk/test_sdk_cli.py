"""``coinvision recognize`` and ``coinvision embed`` end to end on the tiny exports and the bundled photos."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from coinvision.cli.main import main
from coinvision.sdk.recognizer import Recognizer

JSON_KEYS = {"image", "unknown", "matches", "timings_ms", "coin_found"}


def _photos(sample_root: Path, n: int = 3) -> list[Path]:
    classes = sorted((sample_root / "euro_phone" / "images").iterdir())[:n]
    return [sorted(c.glob("*.jpg"))[0] for c in classes]


@pytest.fixture(scope="module")
def catalog_pack(tiny_models_dir: Path, sample_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pack of the tiny embedder's vectors of 3 euro photos, one coin each (coin id = class folder)."""
    packlib = pytest.importorskip("coinvision.sdk.pack")
    rec = Recognizer.from_dir(tiny_models_dir, runtime="onnx", num_threads=1)
    photos = _photos(sample_root)
    vectors = np.stack([rec.embed(p).vector for p in photos])
    coin_ids = [p.parent.name for p in photos]
    records = [packlib.CoinRecord(cid, label=f"{cid} euro coin") for cid in coin_ids]
    data = packlib.build_pack(vectors, coin_ids, records, catalog_id="sample", catalog_version=1,
                              model_fingerprint=rec.fingerprint, quant="fp32")
    path = tmp_path_factory.mktemp("pack") / "sample.pack"
    path.write_bytes(data)
    return path


def _recognize(capsys, *args: object) -> tuple[int, str, str]:
    rc = main(["recognize", *map(str, args)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_recognize_json_lines(tiny_models_dir: Path, catalog_pack: Path, sample_root: Path, capsys) -> None:
    photos = _photos(sample_root)
    rc, out, _ = _recognize(capsys, *photos, "--pack", catalog_pack, "--models", tiny_models_dir, "--json",
                            "--top-k", 2, "--threads", 1)
    assert rc == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["image"] for line in lines] == [str(p) for p in photos]
    for line, photo in zip(lines, photos, strict=True):
        assert set(line) == JSON_KEYS
        assert isinstance(line["unknown"], bool) and isinstance(line["coin_found"], bool)
        assert len(line["matches"]) == 2
        assert all(set(m) == {"coin_id", "label", "score"} for m in line["matches"])
        # a catalog photo finds its own coin at cosine ~1 (fp32 pack, same models)
        assert line["matches"][0]["coin_id"] == photo.parent.name and line["matches"][0]["score"] > 0.9999
        assert line["matches"][0]["label"] == f"{photo.parent.name} euro coin"
        assert line["unknown"] is False
        assert {"decode", "segment_pass1", "crop", "embed", "search", "total"} <= set(line["timings_ms"])


def test_recognize_table_and_onnx_runtime(tiny_models_dir: Path, catalog_pack: Path, sample_root: Path, capsys):
    photo = _photos(sample_root)[1]
    rc, out, _ = _recognize(capsys, photo, "--pack", catalog_pack, "--models", tiny_models_dir,
                            "--runtime", "onnx", "--threads", 1)
    assert rc == 0
    first, header, best = out.splitlines()[:3]
    assert first.startswith(f"{photo}: {photo.parent.name}  [coin found; unknown below 0.500]")
    assert header.split() == ["rank", "coin_id", "score", "label"]
    assert best.split()[:2] == ["1", photo.parent.name]
    assert "ms: decode" in out and "segment_pass2" in out and "search" in out


def test_recognize_skips_unreadable_photo_and_fails_at_the_end(tiny_models_dir, catalog_pack, sample_root, tmp_path,
                                                               capsys) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    good = _photos(sample_root)[0]
    rc, out, err = _recognize(capsys, bad, good, "--pack", catalog_pack, "--models", tiny_models_dir, "--json",
                              "--threads", 1)
    assert rc == 1
    assert "broken.jpg" in err and "1 of 2 image(s) could not be read" in err
    assert [json.loads(line)["image"] for line in out.splitlines()] == [str(good)]


def test_recognize_refuses_pack_of_another_model(tiny_models_dir, sample_root, tmp_path, capsys) -> None:
    packlib = pytest.importorskip("coinvision.sdk.pack")
    data = packlib.build_pack(np.eye(64)[:1], ["x"], [], catalog_id="other", catalog_version=1,
                              model_fingerprint="feedfacefeedface")
    pack = tmp_path / "other.pack"
    pack.write_bytes(data)
    rc, out, err = _recognize(capsys, _photos(sample_root)[0], "--pack", pack, "--models", tiny_models_dir)
    assert rc == 2 and out == ""
    assert err.startswith("error: ") and "feedfacefeedface" in err
    assert Recognizer.from_dir(tiny_models_dir, runtime="onnx").fingerprint in err


def test_recognize_missing_models_folder_is_a_clear_error(catalog_pack, sample_root, tmp_path, capsys) -> None:
    rc, _, err = _recognize(capsys, _photos(sample_root)[0], "--pack", catalog_pack, "--models", tmp_path / "none")
    assert rc == 2 and "models folder" in err and "does not exist" in err


@pytest.fixture
def photo_dir(sample_root: Path, tmp_path: Path) -> Path:
    """Four real photos in two nested folders, plus a corrupt one and a non-image file."""
    root = tmp_path / "photos"
    for i, photo in enumerate(_photos(sample_root, 4)):
        target = root / ("b" if i % 2 else "a") / f"{i}_{photo.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, target)
    (root / "a" / "zz_corrupt.jpg").write_bytes(b"")
    (root / "notes.txt").write_text("not an image")
    return root


def _embed(capsys, *args: object) -> tuple[int, str, str]:
    rc = main(["embed", *map(str, args), "--quiet"])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_embed_writes_paths_unit_embeddings_and_no_coin(tiny_models_dir, photo_dir: Path, tmp_path, capsys) -> None:
    results = {}
    for runtime in ("tflite", "onnx"):
        out_file = tmp_path / f"{runtime}.npz"
        rc, out, err = _embed(capsys, photo_dir, "--out", out_file, "--runtime", runtime,
                              "--models", tiny_models_dir, "--threads", 1)
        assert rc == 0
        assert "skipped 1 unreadable image(s)" in out and "zz_corrupt.jpg" in err
        with np.load(out_file) as data:
            results[runtime] = {key: data[key] for key in data.files}
    data = results["tflite"]
    expected = sorted(p.relative_to(photo_dir).as_posix() for p in photo_dir.rglob("*.jpg") if p.stat().st_size)
    assert data["paths"].tolist() == expected
    assert data["embeddings"].dtype == np.float32 and data["embeddings"].shape == (4, 64)
    np.testing.assert_allclose(np.linalg.norm(data["embeddings"], axis=1), 1.0, atol=1e-5)
    assert data["no_coin"].dtype == bool and data["no_coin"].shape == (4,)
    assert str(data["fingerprint"]) == Recognizer.from_dir(tiny_models_dir, runtime="onnx").fingerprint
    # the same photos through the other runtime: same order, same vectors
    assert results["onnx"]["paths"].tolist() == expected
    cosines = np.sum(data["embeddings"] * results["onnx"]["embeddings"], axis=1)
    assert cosines.min() > 0.999


def test_embed_matches_the_recognizer(tiny_models_dir, photo_dir: Path, tmp_path, capsys) -> None:
    out_file = tmp_path / "e.npz"
    assert _embed(capsys, photo_dir, "--out", out_file, "--runtime", "onnx", "--models", tiny_models_dir)[0] == 0
    rec = Recognizer.from_dir(tiny_models_dir, runtime="onnx", num_threads=1)
    with np.load(out_file) as data:
        for rel, vector, no_coin in zip(data["paths"], data["embeddings"], data["no_coin"], strict=True):
            emb = rec.embed(photo_dir / str(rel))
            np.testing.assert_allclose(vector, emb.vector, atol=1e-6)
            assert bool(no_coin) == (not emb.segmentation.found)


def test_embed_errors_are_clear(tiny_models_dir, tmp_path, photo_dir, capsys) -> None:
    rc, _, err = _embed(capsys, tmp_path / "missing", "--out", tmp_path / "x.npz", "--models", tiny_models_dir)
    assert rc == 2 and "does not exist" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err = _embed(capsys, empty, "--out", tmp_path / "x.npz", "--models", tiny_models_dir)
    assert rc == 2 and "no images" in err
    # the torch runtime reads the trainer's checkpoints, which an export folder lacks
    pytest.importorskip("torch")
    rc, _, err = _embed(capsys, photo_dir, "--out", tmp_path / "x.npz", "--runtime", "torch",
                        "--models", tiny_models_dir)
    assert rc == 2 and err.startswith("error: ") and "segmenter.pt" in err
    assert not (tmp_path / "x.npz").exists()


def test_embed_torch_runtime_equals_the_torch_recognizer(photo_dir: Path, tmp_path: Path, capsys) -> None:
    """Random-weight trainer checkpoints (smp U-Net + timm embedder, toy size): ``embed --runtime torch`` writes the
    vectors of the one torch pipeline, ``trainer.torch_runtime.torch_recognizer`` (segment -> coin_crop ->
    embedder)."""
    torch = pytest.importorskip("torch")
    from coinvision.converters.tiny_models import TINY_EMBEDDING_DIM, write_tiny_checkpoints
    from coinvision.sdk.images import load_image
    from coinvision.trainer.torch_runtime import torch_recognizer, torch_segmenter

    torch.set_num_threads(1)
    models = tmp_path / "models"
    write_tiny_checkpoints(models)
    out_file = tmp_path / "torch.npz"
    rc, out, _ = _embed(capsys, photo_dir, "--out", out_file, "--runtime", "torch", "--models", models,
                        "--threads", 1)
    assert rc == 0 and "torch" in out
    reference = torch_recognizer(models / "segmenter.pt", models / "embedder.pt")
    segmenter = torch_segmenter(models / "segmenter.pt")
    no_coin = 0
    with np.load(out_file) as data:
        assert data["embeddings"].shape == (4, TINY_EMBEDDING_DIM)
        for rel, vector in zip(data["paths"], data["embeddings"], strict=True):
            expected = reference.embed(photo_dir / str(rel))
            no_coin += not expected.segmentation.found
            alone = segmenter.segment(load_image(photo_dir / str(rel)))
            assert (alone.mask is None) == (expected.segmentation.mask is None), rel
            if alone.mask is not None:  # the recognizer's segmentation is torch_segmenter's
                np.testing.assert_array_equal(alone.mask, expected.segmentation.mask)
            assert float(vector @ expected.vector) > 0.9999, rel
        assert int(data["no_coin"].sum()) == no_coin
