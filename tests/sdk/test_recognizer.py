"""The SDK's Recognizer on the tiny random-weight exports: loading checks, the pipeline's outputs, runtime and
PyTorch agreement, pack handling (fingerprint refusal, unknown threshold) and the pair-fusion rule.

Random weights name no coin, so these tests assert behaviour (shapes, norms, agreement, the rules) and build
packs whose cosines to the query photos are known by construction."""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from coinvision.sdk.errors import ConfigError, ImageError, ModelLoadError, PackError
from coinvision.sdk.images import load_image
from coinvision.sdk.model_meta import sidecar_path
from coinvision.sdk.preprocess import letterbox
from coinvision.sdk.recognizer import DEFAULT_UNKNOWN_THRESHOLD, Recognizer, fuse_pair_scores
from coinvision.sdk.runtimes import load_model

DIM = 64
PIPELINE_STAGES = {"decode", "segment_pass1", "segment_pass2", "crop", "embed", "total"}


def sample_photos(sample_root: Path, per_dataset: int = 6) -> list[Path]:
    """The first photo of the first ``per_dataset`` classes of each bundled dataset."""
    photos = []
    for dataset in ("euro_phone", "coins211"):
        classes = sorted((sample_root / dataset / "images").iterdir())[:per_dataset]
        photos += [sorted(c.glob("*.jpg"))[0] for c in classes]
    return photos


def _copy_models(src: Path, dst: Path, **sidecar_edits: dict) -> Path:
    """A writable copy of the models folder, with ``{file_name: {key: value}}`` edits to sidecars."""
    shutil.copytree(src, dst)
    for file_name, edits in sidecar_edits.items():
        path = sidecar_path(dst / file_name.replace("__", "."))
        meta = json.loads(path.read_text())
        meta.update(edits)
        path.write_text(json.dumps(meta))
    return dst


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


@pytest.fixture(scope="module")
def tflite_rec(tiny_models_dir: Path) -> Recognizer:
    return Recognizer.from_dir(tiny_models_dir, num_threads=1)


@pytest.fixture(scope="module")
def onnx_rec(tiny_models_dir: Path) -> Recognizer:
    return Recognizer.from_dir(tiny_models_dir, runtime="onnx", num_threads=1)


# ------------------------------------------------------------------------------------------------ loading


def test_from_dir_reads_both_models_metadata(tflite_rec: Recognizer, onnx_rec: Recognizer, tiny_models_dir) -> None:
    for rec, fmt in ((tflite_rec, "tflite"), (onnx_rec, "onnx")):
        assert rec.segmenter_meta.name == "segmenter" and rec.embedder_meta.name == "embedder"
        assert rec.segmenter_meta.runtime_format == rec.embedder_meta.runtime_format == fmt
        assert rec.dim == DIM
        sidecar = json.loads(sidecar_path(tiny_models_dir / f"embedder.{fmt}").read_text())
        assert rec.fingerprint == sidecar["fingerprint"] == rec.embedder_meta.fingerprint
    assert tflite_rec.fingerprint == onnx_rec.fingerprint  # same source weights, comparable vectors
    assert tflite_rec.unknown_threshold == DEFAULT_UNKNOWN_THRESHOLD  # tiny embedder carries no threshold


def test_missing_model_file_names_it_and_the_runtime_that_exists(tiny_models_dir: Path, tmp_path: Path) -> None:
    models = _copy_models(tiny_models_dir, tmp_path / "m")
    (models / "embedder.tflite").unlink()
    with pytest.raises(ModelLoadError, match=r"embedder\.tflite.*missing.*runtime='onnx'"):
        Recognizer.from_dir(models)
    assert Recognizer.from_dir(models, runtime="onnx", num_threads=1).dim == DIM


def test_missing_sidecar_and_missing_folder_are_model_load_errors(tiny_models_dir: Path, tmp_path: Path) -> None:
    models = _copy_models(tiny_models_dir, tmp_path / "m")
    sidecar_path(models / "segmenter.onnx").unlink()
    with pytest.raises(ModelLoadError, match=r"segmenter\.onnx\.meta\.json is missing"):
        Recognizer.from_dir(models, runtime="onnx")
    with pytest.raises(ModelLoadError, match=r"models folder .* does not exist"):
        Recognizer.from_dir(tmp_path / "nowhere")


def test_swapped_or_inconsistent_metadata_is_refused(tiny_models_dir: Path, tmp_path: Path) -> None:
    swapped = _copy_models(tiny_models_dir, tmp_path / "a", segmenter__onnx={"name": "embedder"})
    with pytest.raises(ModelLoadError, match=r"segmenter\.onnx.*'embedder', expected the segmenter"):
        Recognizer.from_dir(swapped, runtime="onnx")
    wrong_dim = _copy_models(tiny_models_dir, tmp_path / "b", embedder__onnx={"embedding_dim": 128})
    with pytest.raises(ModelLoadError, match=r"embedder\.onnx: output has 64 values.*implies 128"):
        Recognizer.from_dir(wrong_dim, runtime="onnx")
    wrong_size = _copy_models(tiny_models_dir, tmp_path / "c", segmenter__tflite={
        "input": {**json.loads(sidecar_path(tiny_models_dir / "segmenter.tflite").read_text())["input"],
                  "size_px": 96}})
    with pytest.raises(ModelLoadError, match=r"segmenter\.tflite: running it on a 96x96 input failed"):
        Recognizer.from_dir(wrong_size)


def test_corrupt_model_file_is_a_model_load_error(tiny_models_dir: Path, tmp_path: Path) -> None:
    models = _copy_models(tiny_models_dir, tmp_path / "m")
    for name in ("segmenter.onnx", "embedder.tflite"):
        data = (models / name).read_bytes()
        (models / name).write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelLoadError, match=r"segmenter\.onnx: ONNX Runtime cannot load it"):
        Recognizer.from_dir(models, runtime="onnx")
    with pytest.raises(ModelLoadError, match=r"embedder\.tflite: the TFLite interpreter cannot load it"):
        Recognizer.from_dir(models)


def test_unsupported_runtime_names_the_choices(tiny_models_dir: Path) -> None:
    with pytest.raises(ConfigError, match="tflite, onnx, coreml"):
        Recognizer.from_dir(tiny_models_dir, runtime="tensorrt")


@pytest.mark.skipif(platform.system() == "Darwin", reason="Core ML can run on macOS")
def test_coreml_runtime_off_macos_is_a_clear_error(tiny_models_dir: Path, tmp_path: Path) -> None:
    for models_dir in (tiny_models_dir, tmp_path / "no_models_here"):  # the platform is named first
        with pytest.raises(ModelLoadError, match=r"Core ML models run only on macOS.*runtime='tflite'"):
            Recognizer.from_dir(models_dir, runtime="coreml")


def test_sdk_never_imports_torch_or_tensorflow(tiny_models_dir: Path, sample_root: Path) -> None:
    code = (
        "import sys; from coinvision.sdk.recognizer import Recognizer; import coinvision.cli.sdk_commands; "
        f"r = Recognizer.from_dir({str(tiny_models_dir)!r}, num_threads=1); "
        f"r.embed({str(sample_photos(sample_root, 1)[0])!r}); "
        "print(sorted(m for m in ('torch', 'tensorflow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------- pipeline


def test_embed_returns_unit_vector_crop_mask_and_stage_timings(tflite_rec: Recognizer, sample_root: Path) -> None:
    path = sample_photos(sample_root, 1)[0]
    image = load_image(path)
    emb = tflite_rec.embed(path)
    assert emb.vector.shape == (DIM,) and emb.vector.dtype == np.float32
    assert abs(float(np.linalg.norm(emb.vector)) - 1.0) < 1e-5
    assert emb.crop.shape == (64, 64, 3) and emb.crop.dtype == np.uint8
    assert emb.segmentation.found and emb.segmentation.passes == 2
    assert emb.segmentation.mask.shape == image.shape[:2]
    assert set(emb.timings_ms) == PIPELINE_STAGES
    assert all(ms >= 0 for ms in emb.timings_ms.values())
    stages = sum(ms for stage, ms in emb.timings_ms.items() if stage != "total")
    assert stages == pytest.approx(emb.timings_ms["total"], rel=1e-6)
    assert (emb.crop == 0).all(axis=2).any()  # background removed: off-mask pixels are black


def test_embed_accepts_decoded_arrays_and_bytes_alike(tflite_rec: Recognizer, sample_root: Path) -> None:
    path = sample_photos(sample_root, 1)[0]
    from_path = tflite_rec.embed(path).vector
    np.testing.assert_array_equal(tflite_rec.embed(load_image(path)).vector, from_path)
    np.testing.assert_array_equal(tflite_rec.embed(path.read_bytes()).vector, from_path)


def test_coin_crop_and_embed_crop_are_embeds_steps_for_a_mask_of_ones_own(tflite_rec: Recognizer,
                                                                            sample_root: Path) -> None:
    """Steps 3 and 4 on their own: the segmenter's mask gives embed's crop and vector exactly; another mask (here
    the photo's left half) another crop; no mask the whole photo letterboxed."""
    image = load_image(sample_photos(sample_root, 1)[0])
    emb = tflite_rec.embed(image)
    crop = tflite_rec.coin_crop(image, emb.segmentation.mask)
    np.testing.assert_array_equal(crop, emb.crop)
    np.testing.assert_array_equal(tflite_rec.embed_crop(crop), emb.vector)
    half = np.zeros(image.shape[:2], bool)
    half[:, : image.shape[1] // 2] = True
    assert not np.array_equal(tflite_rec.coin_crop(image, half), crop)
    np.testing.assert_array_equal(tflite_rec.coin_crop(image, None), letterbox(image, 64)[0])


def test_embed_is_deterministic(onnx_rec: Recognizer, sample_root: Path) -> None:
    path = sample_photos(sample_root, 1)[1]
    a, b = onnx_rec.embed(path), onnx_rec.embed(path)
    np.testing.assert_array_equal(a.vector, b.vector)
    np.testing.assert_array_equal(a.segmentation.mask, b.segmentation.mask)


def test_tflite_and_onnx_agree_on_sample_photos(tflite_rec: Recognizer, onnx_rec: Recognizer, sample_root) -> None:
    for path in sample_photos(sample_root, 3):
        a, b = tflite_rec.embed(path), onnx_rec.embed(path)
        assert float(a.vector @ b.vector) > 0.999, path
        assert a.segmentation.found == b.segmentation.found
        if a.segmentation.found:
            inter = np.logical_and(a.segmentation.mask, b.segmentation.mask).sum()
            union = np.logical_or(a.segmentation.mask, b.segmentation.mask).sum()
            assert inter / union > 0.99, path


def test_no_coin_found_embeds_the_letterboxed_photo(tiny_models_dir: Path, tmp_path: Path, sample_root) -> None:
    # The tiny segmenter's probabilities stay within 0.45..0.6: at threshold 0.9 it finds no coin anywhere.
    models = _copy_models(tiny_models_dir, tmp_path / "m", segmenter__onnx={"threshold": 0.9})
    rec = Recognizer.from_dir(models, runtime="onnx", num_threads=1)
    path = sample_photos(sample_root, 1)[0]
    emb = rec.embed(path)
    assert not emb.segmentation.found and emb.segmentation.mask is None
    assert set(emb.timings_ms) == PIPELINE_STAGES - {"segment_pass2"}
    expected_crop = letterbox(load_image(path), 64)[0]
    np.testing.assert_array_equal(emb.crop, expected_crop)
    assert abs(float(np.linalg.norm(emb.vector)) - 1.0) < 1e-5


def test_bad_image_is_an_image_error(tflite_rec: Recognizer, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a photo")
    with pytest.raises(ImageError, match=r"bad\.jpg"):
        tflite_rec.embed(bad)
    with pytest.raises(ImageError, match="zero size"):
        tflite_rec.embed(np.zeros((0, 10, 3), np.uint8))


def test_sdk_matches_the_torch_pipeline(tflite_rec: Recognizer, onnx_rec: Recognizer, sample_root: Path) -> None:
    """The torch reference pipeline (``trainer.torch_runtime``: the same seeded tiny weights in PyTorch) and the
    exported files on the same photos: masks IoU >= 0.99 and embeddings cosine >= 0.999 for every photo and both
    runtimes."""
    torch = pytest.importorskip("torch")
    from coinvision.converters.tiny_models import tiny_embedder, tiny_segmenter
    from coinvision.trainer.torch_runtime import torch_loaded_model

    torch.set_num_threads(1)
    torch_rec = Recognizer(torch_loaded_model(*tiny_segmenter(), "tiny segmenter"),
                           torch_loaded_model(*tiny_embedder(), "tiny embedder"))
    assert torch_rec.segmenter_meta.fingerprint == tflite_rec.segmenter_meta.fingerprint  # the exported weights
    assert torch_rec.fingerprint == tflite_rec.fingerprint
    photos = sample_photos(sample_root)
    compared = 0
    for path in photos:
        ref = torch_rec.embed(path)
        for rec in (tflite_rec, onnx_rec):
            emb = rec.embed(path)
            assert emb.segmentation.found == ref.segmentation.found, path
            if ref.segmentation.found:
                inter = np.logical_and(emb.segmentation.mask, ref.segmentation.mask).sum()
                assert inter / np.logical_or(emb.segmentation.mask, ref.segmentation.mask).sum() >= 0.99, path
                compared += 1
            assert float(emb.vector @ ref.vector) >= 0.999, path
    assert compared == 2 * len(photos)  # every photo had a mask to compare, in both runtimes


# ------------------------------------------------------------------------------------- segmenter, params

RELEASE = Path(__file__).resolve().parents[2] / "models" / "release"


def test_params_come_from_the_shipped_metadata_and_the_spec_defaults() -> None:
    from coinvision.sdk.model_meta import ModelMetadata
    from coinvision.sdk.recognizer import CropParams
    from coinvision.sdk.segmenter import SegmenterParams

    seg = SegmenterParams.from_metadata(ModelMetadata.read_sidecar(RELEASE / "segmenter.tflite"))
    # one pass for a coin that fills the photo (v3); tiles when the whole photo shows no coin; the second pass
    # averages 2 turns of its crop, and touching coins are no longer cut apart (both picked by bench_seg_views)
    assert seg == SegmenterParams(size_px=128, threshold=0.5, margin_frac=0.15, min_area_frac=0.002, pad_value=0,
                                  split_touching=False, single_pass_box_frac=0.8, tile_frac=0.4, views=2)
    crop = CropParams.from_metadata(ModelMetadata.read_sidecar(RELEASE / "embedder.tflite"))
    # the release embeds 1 view: each runs three backbones (model card, Latency)
    assert crop.embed_rotations == 1 and crop.background_removal and crop.crop_margin_frac == 0.05
    with pytest.raises(ConfigError, match=r"threshold=1\.5.*\(0, 1\)"):
        SegmenterParams(size_px=128, threshold=1.5)
    for bad in (0.2, 1.0):  # tiles smaller than the photo, at most 4 x 4 of them
        with pytest.raises(ConfigError, match=rf"tile_frac={bad}.*\[0\.25, 1\)"):
            SegmenterParams(size_px=128, tile_frac=bad)
    with pytest.raises(ConfigError, match=r"embed_rotations=0"):
        CropParams(embed_rotations=0)


def test_segmenter_from_dir_is_the_recognizers_segmentation(tflite_rec: Recognizer, tiny_models_dir: Path,
                                                            sample_root: Path) -> None:
    from coinvision.sdk.segmenter import Segmenter

    segmenter = Segmenter.from_dir(tiny_models_dir, num_threads=1)
    assert segmenter.params == tflite_rec.segmenter.params
    path = sample_photos(sample_root)[0]
    seg = segmenter.segment(load_image(path))
    assert seg.found and seg.passes == 2
    np.testing.assert_array_equal(seg.mask, tflite_rec.embed(path).segmentation.mask)
    one_pass = segmenter.segment(load_image(path), two_pass=False)
    assert one_pass.passes == 1 and one_pass.mask is not None
    stricter = segmenter.with_params(threshold=0.99)
    assert stricter.model is segmenter.model and stricter.params.threshold == 0.99
    assert segmenter.params.threshold != 0.99  # the original is unchanged
    prob = segmenter.probability(letterbox(load_image(path), segmenter.params.size_px)[0])
    assert prob.dtype == np.float32 and prob.shape == (segmenter.params.size_px,) * 2
    assert prob.min() >= 0.0 and prob.max() <= 1.0


def test_segmenter_from_dir_refuses_an_embedder_file(tiny_models_dir: Path, tmp_path: Path) -> None:
    from coinvision.sdk.segmenter import Segmenter

    models = tmp_path / "m"
    models.mkdir()
    shutil.copyfile(tiny_models_dir / "embedder.onnx", models / "segmenter.onnx")
    shutil.copyfile(sidecar_path(tiny_models_dir / "embedder.onnx"), sidecar_path(models / "segmenter.onnx"))
    with pytest.raises(ModelLoadError, match=r"segmenter\.onnx.*'embedder'.*swapped"):
        Segmenter.from_dir(models, runtime="onnx")
    with pytest.raises(ModelLoadError, match=r"does not exist"):
        Segmenter.from_dir(tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------------- packs

def _fresh_onnx(models_dir: Path) -> Recognizer:
    """A Recognizer of its own (tests load packs into it), built from loaded models as the CLI's torch path does."""
    return Recognizer(load_model(models_dir / "segmenter.onnx", 1), load_model(models_dir / "embedder.onnx", 1))


@pytest.fixture(scope="module")
def pack_module():
    return pytest.importorskip("coinvision.sdk.pack")


def _orthogonal(q: np.ndarray, seed: int) -> np.ndarray:
    r = np.random.default_rng(seed).standard_normal(q.shape)
    r -= (r @ q) * q
    return _unit(r)


def _at_cosine(q: np.ndarray, cosine: float, seed: int) -> np.ndarray:
    """A unit vector whose cosine with unit ``q`` is exactly ``cosine``."""
    return cosine * q + np.sqrt(1.0 - cosine**2) * _orthogonal(q, seed)


def _pack_bytes(pack_module, vectors: dict[str, np.ndarray], fingerprint: str, extra=None, **kw) -> bytes:
    extra = extra or {}
    records = [pack_module.CoinRecord(cid, label=f"coin {cid}", extra=extra.get(cid, {})) for cid in vectors]
    return pack_module.build_pack(
        np.stack(list(vectors.values())), list(vectors), records, catalog_id="test", catalog_version=kw.pop("v", 1),
        model_fingerprint=fingerprint, quant="fp32", **kw,
    )


def test_recognize_without_a_pack_is_a_clear_error(tiny_models_dir: Path, sample_root: Path) -> None:
    fresh = _fresh_onnx(tiny_models_dir)
    with pytest.raises(PackError, match=r"no pack loaded.*load_pack"):
        fresh.recognize(sample_photos(sample_root, 1)[0])


def test_recognize_ranks_coins_and_applies_the_unknown_threshold(
    pack_module, tiny_models_dir: Path, sample_root: Path
) -> None:
    rec = Recognizer.from_dir(tiny_models_dir, runtime="onnx", num_threads=1)
    path = sample_photos(sample_root, 1)[0]
    q = rec.embed(path).vector.astype(np.float64)
    cosines = {"near": 0.8, "mid": 0.55, "far": 0.3, "opposite": -0.4}
    vectors = {cid: _at_cosine(q, c, seed=i) for i, (cid, c) in enumerate(cosines.items())}
    rec.load_pack(_pack_bytes(pack_module, vectors, rec.fingerprint))

    result = rec.recognize(path, top_k=3)
    assert [m.coin_id for m in result.matches] == ["near", "mid", "far"]
    assert [m.score for m in result.matches] == pytest.approx([0.8, 0.55, 0.3], abs=1e-5)
    assert result.matches[0].label == "coin near" and result.matches[0].record.coin_id == "near"
    assert not result.unknown and result.threshold == DEFAULT_UNKNOWN_THRESHOLD  # 0.8 >= 0.5
    assert set(result.timings_ms) == PIPELINE_STAGES | {"search"}
    assert result.timings_ms["total"] >= result.timings_ms["search"] + result.timings_ms["embed"]
    assert result.segmentation.found and result.crop.shape == (64, 64, 3)

    strict = Recognizer.from_dir(tiny_models_dir, runtime="onnx", num_threads=1, unknown_threshold=0.85,
                                 pack=rec.pack)
    strict_result = strict.recognize(path, top_k=2)
    assert strict_result.unknown and strict_result.matches[0].coin_id == "near"  # still listed, not named


def test_unknown_threshold_comes_from_embedder_metadata(pack_module, tiny_models_dir: Path, tmp_path, sample_root):
    models = _copy_models(tiny_models_dir, tmp_path / "m", embedder__onnx={"threshold": 0.9})
    rec = Recognizer.from_dir(models, runtime="onnx", num_threads=1)
    assert rec.unknown_threshold == 0.9
    assert Recognizer.from_dir(models, runtime="onnx", unknown_threshold=0.7).unknown_threshold == 0.7
    path = sample_photos(sample_root, 1)[0]
    q = rec.embed(path).vector.astype(np.float64)
    rec.load_pack(_pack_bytes(pack_module, {"a": _at_cosine(q, 0.85, 0)}, rec.fingerprint))
    assert rec.recognize(path).unknown  # 0.85 < 0.9
    with pytest.raises(ConfigError, match=r"unknown_threshold=1\.5"):
        Recognizer.from_dir(models, runtime="onnx", unknown_threshold=1.5)
    with pytest.raises(ConfigError, match="top_k=0"):
        rec.recognize(path, top_k=0)


def test_pack_of_another_model_is_refused_and_the_previous_pack_stays(
    pack_module, tiny_models_dir: Path, sample_root: Path, tmp_path: Path
) -> None:
    rec = _fresh_onnx(tiny_models_dir)
    path = sample_photos(sample_root, 1)[0]
    q = rec.embed(path).vector.astype(np.float64)
    good = _pack_bytes(pack_module, {"a": _at_cosine(q, 0.9, 0)}, rec.fingerprint)
    pack_file = tmp_path / "good.pack"
    pack_file.write_bytes(good)
    rec.load_pack(pack_file)
    loaded = rec.pack

    other = _pack_bytes(pack_module, {"b": _at_cosine(q, 0.9, 1)}, "0123456789abcdef", v=2)
    with pytest.raises(pack_module.PackFingerprintError) as excinfo:
        rec.load_pack(other)
    assert "0123456789abcdef" in str(excinfo.value) and rec.fingerprint in str(excinfo.value)

    wrong_dim = pack_module.build_pack(
        np.eye(8)[:2], ["x", "y"], [], catalog_id="test", catalog_version=3, model_fingerprint=rec.fingerprint
    )
    with pytest.raises(PackError, match="8-d"):
        rec.load_pack(wrong_dim)
    corrupt = bytearray(good)
    corrupt[len(corrupt) // 2] ^= 0xFF
    with pytest.raises(PackError):
        rec.load_pack(bytes(corrupt))
    with pytest.raises(PackError):
        rec.load_pack(good[:40])

    assert rec.pack is loaded  # every refusal left the last good pack in use
    assert rec.recognize(path, top_k=1).matches[0].coin_id == "a"


def test_fuse_pair_scores_rule() -> None:
    groups = {"x-obv": "x", "x-rev": "x"}
    fused = fuse_pair_scores(
        [("x-obv", 0.9), ("y", 0.85), ("x-rev", 0.4), ("z", 0.2)],
        [("x-rev", 0.8), ("z", 0.6), ("x-obv", 0.3)],
        lambda cid: groups.get(cid, cid),
    )
    as_dict = {group: (score, member) for group, score, member in fused}
    assert as_dict["x"] == pytest.approx(((0.9 + 0.8) / 2, "x-obv"))  # best of each side, averaged
    assert as_dict["z"][0] == pytest.approx((0.2 + 0.6) / 2)
    # y is missing from the reverse list: it gets that list's lowest score (0.3) - penalised, not dropped
    assert as_dict["y"][0] == pytest.approx((0.85 + 0.3) / 2)
    assert [g for g, _, _ in fused] == ["x", "y", "z"]


def test_recognize_pair_fuses_both_sides_per_coin_group(pack_module, tiny_models_dir: Path, sample_root) -> None:
    """A catalog where each side is its own class, grouped by ``record.extra['coin_group']``.

    The random tiny embedder maps all photos close together (angle phi between the two photos' vectors), so the
    pack's vectors are designed in the photos' plane: ``v = c1*obv + c2*e2 + rest`` scores ``c1`` on the obverse
    photo and ``c1*cos(phi) + c2*sin(phi)`` on the reverse one. The lookalike is the obverse photo's best single
    match; only the real coin's group matches both photos, so it wins the pair."""
    rec = _fresh_onnx(tiny_models_dir)
    obverse_path, reverse_path = sample_photos(sample_root, 1)  # one euro photo, one coins211 photo
    obv = rec.embed(obverse_path).vector.astype(np.float64)
    rev = rec.embed(reverse_path).vector.astype(np.float64)
    e2 = rev - (obv @ rev) * obv
    sin_phi = float(np.linalg.norm(e2))
    assert sin_phi > 1e-3, "the two photos embed too close together to tell the fusion apart"
    e2 /= sin_phi

    def designed(c1: float, c2: float, seed: int) -> np.ndarray:
        rest = np.random.default_rng(seed).standard_normal(obv.shape)
        rest -= (rest @ obv) * obv + (rest @ e2) * e2
        return c1 * obv + c2 * e2 + np.sqrt(1 - c1**2 - c2**2) * _unit(rest)

    base = 0.3
    vectors = {
        "lookalike": designed(base + 0.5 * sin_phi, -0.9, 0),  # scores ~ base+0.5s / base-0.4s
        "euro2-obverse": designed(base + 0.4 * sin_phi, 0.0, 1),  # ~ base+0.4s / base+0.4s
        "euro2-reverse": designed(base, 0.9, 2),  # ~ base / base+0.9s
    }
    groups = {"euro2-obverse": {"coin_group": "euro2"}, "euro2-reverse": {"coin_group": "euro2"}}
    rec.load_pack(_pack_bytes(pack_module, vectors, rec.fingerprint, extra=groups))

    assert rec.recognize(obverse_path, top_k=3).matches[0].coin_id == "lookalike"
    result = rec.recognize_pair(obverse_path, reverse_path, top_k=5)
    assert [m.coin_id for m in result.matches] == ["euro2", "lookalike"]
    stored = {cid: _unit(rec.pack.vectors_of(cid)[0].astype(np.float64)) for cid in vectors}
    expected = {  # independent restatement of the rule: mean over the photos of the group's best cosine
        "euro2": (max(obv @ stored["euro2-obverse"], obv @ stored["euro2-reverse"])
                  + max(rev @ stored["euro2-obverse"], rev @ stored["euro2-reverse"])) / 2,
        "lookalike": (obv @ stored["lookalike"] + rev @ stored["lookalike"]) / 2,
    }
    for match in result.matches:
        assert match.score == pytest.approx(expected[match.coin_id], abs=1e-6)
    # the member with the single best photo score names the group: the reverse class, on the reverse photo
    assert result.matches[0].record.coin_id == "euro2-reverse" and result.matches[0].label == "coin euro2-reverse"
    assert result.unknown  # fused best ~0.3 is below the default 0.5 threshold
    assert len(result.sides) == 2 and result.segmentation is result.sides[0].segmentation
    assert {"obverse.embed", "reverse.embed", "search", "total"} <= set(result.timings_ms)


@pytest.mark.parametrize("runtime", ["tflite", "onnx"])
def test_release_segmenter_tiles_find_a_far_coin_its_first_pass_misses(runtime: str) -> None:
    """examples/sample_coins/scenes/far_coin.png: a 2-euro sample coin pasted 78 px across into a 480x360 sample
    background (scenes/compose.py). The whole-photo pass sees it at 21 px and finds nothing; the tiles find it."""
    from coinvision.sdk.images import load_image
    from coinvision.sdk.segmenter import Segmenter

    scenes = Path(__file__).resolve().parents[2] / "examples" / "sample_coins" / "scenes"
    image = load_image(scenes / "far_coin.png")
    segmenter = Segmenter.from_dir(RELEASE, runtime=runtime, num_threads=1)
    assert not segmenter.with_params(tile_frac=None).segment(image).found
    seg = segmenter.segment(image)
    assert seg.found and seg.tiled and seg.passes == 2
    x, y, side = 90, 72, 78  # where compose.py pasted the coin
    inside = seg.mask[y : y + side, x : x + side].sum()
    assert inside >= 0.98 * seg.mask.sum()  # nothing outside the coin's square
    assert 0.8 < inside / (np.pi * (side / 2) ** 2) < 1.1  # and about the coin's disc


def test_segment_timed_counts_the_tiles_in_the_first_pass() -> None:
    from coinvision.sdk.images import load_image
    from coinvision.sdk.segmenter import Segmenter

    segmenter = Segmenter.from_dir(RELEASE, runtime="tflite", num_threads=1)
    samples = Path(__file__).resolve().parents[2] / "examples" / "sample_coins"
    far, timings = segmenter.segment_timed(load_image(samples / "scenes" / "far_coin.png"))
    assert far.tiled and far.passes == 2 and set(timings) == {"segment_pass1", "segment_pass2"}
    blank, timings = segmenter.segment_timed(load_image(next((samples / "backgrounds" / "images").glob("*.jpg"))))
    assert not blank.found and blank.tiled and set(timings) == {"segment_pass1"}  # tiles ran, no second pass
