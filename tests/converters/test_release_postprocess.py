"""Setting a released segmenter's post-processing (or the embedder's crop) in place: every file and sidecar says it,
release.json follows, the weights stay, and a refused change leaves the release as it was."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from coinvision.converters.manifest import digest
from coinvision.converters.metadata import read_embedded_metadata
from coinvision.converters.release_postprocess import main, set_release_postprocess
from coinvision.sdk.errors import ConfigError, ConversionError
from coinvision.sdk.model_meta import ModelMetadata, sidecar_path
from coinvision.sdk.runtimes import load_model

RELEASE = Path(__file__).resolve().parents[2] / "models" / "release"
NAMES = ("segmenter.onnx", "segmenter.tflite")


@pytest.fixture
def release(tmp_path: Path) -> Path:
    return _release_of(tmp_path, NAMES)


def _release_of(tmp_path: Path, names: tuple[str, ...]) -> Path:
    """The shipped ``names`` (Core ML left out: it needs coremltools) with a release.json of their own."""
    out = tmp_path / "release"
    out.mkdir()
    files = {}
    for name in names:
        shutil.copyfile(RELEASE / name, out / name)
        shutil.copyfile(sidecar_path(RELEASE / name), sidecar_path(out / name))
        size, sha256 = digest(out / name)
        files[name] = {"from": name, "bytes": size, "sha256": sha256}
    (out / "release.json").write_text(json.dumps({"files": files}))
    return out


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_sets_every_file_and_sidecar_keeps_the_weights(release: Path) -> None:
    square = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    before = {name: load_model(release / name, 1).predict(square) for name in NAMES}
    extra = set_release_postprocess(release, {"tile_frac": 0.7})
    assert extra["tile_frac"] == 0.7 and extra["single_pass_box_frac"] == 0.8  # the rest stays
    info = json.loads((release / "release.json").read_text())
    assert info["postprocess"] == {"segmenter": {"tile_frac": 0.7}}
    for name in NAMES:
        meta = ModelMetadata.read_sidecar(release / name)
        assert read_embedded_metadata(release / name).extra == meta.extra
        assert meta.extra["tile_frac"] == 0.7
        assert digest(release / name)[1] == info["files"][name]["sha256"]
        np.testing.assert_array_equal(load_model(release / name, 1).predict(square), before[name])
    set_release_postprocess(release, {"tile_frac": None})  # null removes the key: no tiles
    assert all("tile_frac" not in ModelMetadata.read_sidecar(release / name).extra for name in NAMES)


def test_refused_changes_leave_the_release_as_it_was(release: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = _snapshot(release)
    with pytest.raises(ConfigError, match="size_px: not segmenter keys that leave the weights"):
        set_release_postprocess(release, {"size_px": 160})
    with pytest.raises(ConfigError, match=r"segmenter.onnx: segmenter tile_frac=1.5: must be in \[0.25, 1\)"):
        set_release_postprocess(release, {"tile_frac": 1.5})
    assert main([str(release), "--set", "tile_frac=0.2"]) == 2
    assert "tile_frac=0.2" in capsys.readouterr().err
    assert _snapshot(release) == before
    (release / "segmenter.tflite").write_bytes(b"not the shipped file")
    with pytest.raises(ConversionError, match=r"segmenter\.tflite differs from its sha256"):
        set_release_postprocess(release, {"tile_frac": 0.6})


def test_embedder_crop_mask_is_set_like_the_segmenters_values(tmp_path: Path) -> None:
    from coinvision.sdk.recognizer import CropParams

    names = ("embedder.onnx", "embedder.tflite")
    release = _release_of(tmp_path, names)
    square = np.random.default_rng(1).integers(0, 256, (160, 160, 3), dtype=np.uint8)
    before = {name: load_model(release / name, 1).predict(square) for name in names}
    with pytest.raises(ConfigError, match=r"embedder.onnx: crop_mask='circle': must be one of \('exact', 'conv"):
        set_release_postprocess(release, {"crop_mask": "circle"}, kind="embedder")
    with pytest.raises(ConfigError, match="tile_frac: not embedder keys"):
        set_release_postprocess(release, {"tile_frac": 0.4}, kind="embedder")
    assert main([str(release), "--kind", "embedder", "--set", "crop_mask=convex_hull"]) == 0
    info = json.loads((release / "release.json").read_text())
    assert info["postprocess"] == {"embedder": {"crop_mask": "convex_hull"}}
    for name in names:
        meta = ModelMetadata.read_sidecar(release / name)
        assert read_embedded_metadata(release / name).extra == meta.extra
        assert CropParams.from_metadata(meta).crop_mask == "convex_hull"
        assert digest(release / name)[1] == info["files"][name]["sha256"]
        np.testing.assert_array_equal(load_model(release / name, 1).predict(square), before[name])
