"""The release assembler ships only parity-proven files, keeps the model card, and refuses unproven runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from coinvision.converters.manifest import write_manifest
from coinvision.converters.release import assemble_release
from coinvision.sdk.errors import ConversionError

NAMES = ("{k}.onnx", "{k}.tflite", "{k}.fp16.tflite", "{k}.int8.tflite", "{k}.palette6.mlpackage")


def _export_run(out: Path, failed: tuple[str, ...] = (), checked: bool = True) -> Path:
    out.mkdir()
    files = []
    for kind in ("segmenter", "embedder"):
        for pattern in NAMES:
            name = pattern.format(k=kind)
            path = out / name
            if name.endswith(".mlpackage"):
                path.mkdir()
                (path / "weights.bin").write_bytes(b"w" * 100)
            else:
                path.write_bytes(name.encode() * 10)
            (out / f"{name}.meta.json").write_text("{}")
            files.append({"file": name, "parity": {"passed": name not in failed}})
    write_manifest(out, {"check": checked, "parity_checked": [f["file"] for f in files] if checked else [],
                         "files": files, "failures": [f"{n}: missed" for n in failed]})
    return out


def test_release_ships_default_variant_and_leaves_out_failed_int8(tmp_path: Path) -> None:
    export = _export_run(tmp_path / "export", failed=("embedder.int8.tflite",))
    release = tmp_path / "release"
    release.mkdir()
    (release / "README.md").write_text("model card")
    (release / "__init__.py").write_text('"""data package"""\n')
    assemble_release(export, release, tflite_default="fp16")
    assert (release / "embedder.tflite").read_bytes() == (export / "embedder.fp16.tflite").read_bytes()
    assert (release / "segmenter.int8.tflite").is_file() and not (release / "embedder.int8.tflite").exists()
    assert (release / "README.md").read_text() == "model card"
    assert (release / "__init__.py").is_file()  # the installable models package survives a release
    info = json.loads((release / "release.json").read_text())
    assert info["not_shipped"] == {"embedder.int8.tflite": "parity target missed"}
    assert json.loads((release / "embedder.tflite.meta.json").read_text()) == {}


def test_release_refuses_a_failed_default_and_an_unchecked_run(tmp_path: Path) -> None:
    export = _export_run(tmp_path / "failed", failed=("embedder.fp16.tflite",))
    with pytest.raises(ConversionError, match=r"embedder\.fp16\.tflite"):
        assemble_release(export, tmp_path / "release", tflite_default="fp16")
    assert not (tmp_path / "release").exists()
    unchecked = _export_run(tmp_path / "unchecked", checked=False)
    with pytest.raises(ConversionError, match="not parity-checked"):
        assemble_release(unchecked, tmp_path / "release")


def test_release_with_int8_default_offers_fp16_as_the_optional_variant(tmp_path: Path) -> None:
    export = _export_run(tmp_path / "export")
    release = tmp_path / "release"
    assemble_release(export, release, tflite_default="int8")
    assert (release / "segmenter.tflite").read_bytes() == (export / "segmenter.int8.tflite").read_bytes()
    assert (release / "segmenter.fp16.tflite").is_file() and not (release / "segmenter.int8.tflite").exists()
    assert json.loads((release / "release.json").read_text())["tflite_default"] == "int8"
