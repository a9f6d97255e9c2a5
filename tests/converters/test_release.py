"""The release assembler ships only parity-proven files, keeps the model card, and refuses unproven runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from coinvision.converters.manifest import digest, write_manifest
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


def _fp16_onnx(export: Path, kind: str, passed: bool = True, form: str = "fp16_weights") -> None:
    name = f"{kind}.{'fp16w' if form == 'fp16_weights' else 'int8w'}.onnx"
    (export / name).write_bytes(b"half" * 5)
    (export / f"{name}.meta.json").write_text(json.dumps({"quantization": form}))
    (export / f"{name}.parity.json").write_text(json.dumps({"passed": passed}))


def test_release_replaces_one_kind_and_carries_the_other_with_its_record(tmp_path: Path) -> None:
    first = _export_run(tmp_path / "first")
    release = tmp_path / "release"
    assemble_release(first, release, tflite_default="int8")
    segmenter_files = {n: (release / n).read_bytes() for n in ("segmenter.onnx", "segmenter.tflite")}
    second = tmp_path / "second"
    second.mkdir()
    for name in ("embedder.onnx", "embedder.int8.tflite", "embedder.fp16.tflite"):
        (second / name).write_bytes(b"new " + name.encode())
        (second / f"{name}.meta.json").write_text("{}")
    shutil.copytree(first / "embedder.palette6.mlpackage", second / "embedder.palette6.mlpackage")
    (second / "embedder.palette6.mlpackage.meta.json").write_text("{}")
    write_manifest(second, {"check": True, "parity_checked": ["embedder.onnx"],
                            "files": [{"file": "embedder.int8.tflite", "parity": {"passed": True}}]})
    for kind in ("segmenter", "embedder"):
        _fp16_onnx(second, kind)
    assemble_release(second, release, tflite_default="int8", onnx_variant="fp16_weights", kinds=("embedder",))
    info = json.loads((release / "release.json").read_text())
    assert (release / "segmenter.tflite").read_bytes() == segmenter_files["segmenter.tflite"]
    assert (release / "segmenter.onnx").read_bytes() == (release / "embedder.onnx").read_bytes() == b"half" * 5
    assert (release / "embedder.tflite").read_bytes() == b"new embedder.int8.tflite"
    assert info["files"]["segmenter.tflite"]["from"] == "carried over from an earlier release (segmenter.int8.tflite)"
    assert info["segmenter_source"] == "export_segmenter.json" and (release / "export_segmenter.json").is_file()
    assert info["embedder_source"] == "export.json" and info["onnx_variant"] == "fp16_weights"
    assert (release / "embedder.fp16w.onnx.parity.json").is_file()
    # a later embedder-only release carries the float16-weight segmenter as it is, with its record
    (release / "segmenter.onnx.meta.json").write_text(json.dumps({"quantization": "fp16_weights"}))
    info["files"]["segmenter.onnx"]["sha256"] = digest(release / "segmenter.onnx")[1]
    (release / "release.json").write_text(json.dumps(info))
    (second / "segmenter.fp16w.onnx").unlink()
    assemble_release(second, release, tflite_default="int8", onnx_variant="fp16_weights", kinds=("embedder",))
    assert (release / "segmenter.onnx").read_bytes() == b"half" * 5
    assert (release / "segmenter.fp16w.onnx.parity.json").is_file() and (release / "export_segmenter.json").is_file()
    again = json.loads((release / "release.json").read_text())["files"]["segmenter.tflite"]["from"]
    assert again == "carried over from an earlier release (segmenter.int8.tflite)"  # not nested per release


def test_release_refuses_fp16_weight_onnx_without_a_passing_record_and_a_changed_carried_file(
        tmp_path: Path) -> None:
    export = _export_run(tmp_path / "export")
    release = tmp_path / "release"
    assemble_release(export, release, tflite_default="int8")
    _fp16_onnx(export, "segmenter")
    _fp16_onnx(export, "embedder", passed=False)
    with pytest.raises(ConversionError, match=r"embedder\.fp16w\.onnx: no passing parity record"):
        assemble_release(export, release, onnx_variant="fp16_weights", kinds=("embedder",))
    _fp16_onnx(export, "embedder")
    (release / "segmenter.tflite").write_bytes(b"edited")
    with pytest.raises(ConversionError, match="differs from its sha256"):
        assemble_release(export, release, onnx_variant="fp16_weights", kinds=("embedder",))


def test_release_takes_an_onnx_form_per_kind_and_carries_the_other_kind_in_its_own(tmp_path: Path) -> None:
    export = _export_run(tmp_path / "export")
    release = tmp_path / "release"
    _fp16_onnx(export, "embedder")
    assemble_release(export, release, tflite_default="int8", onnx_variant={"embedder": "fp16_weights"})
    assert json.loads((release / "release.json").read_text())["files"]["segmenter.onnx"]["from"] == "segmenter.onnx"
    assert json.loads((release / "embedder.onnx.meta.json").read_text())["quantization"] == "fp16_weights"
    _fp16_onnx(export, "segmenter", form="int8_weights")
    (export / "embedder.fp16w.onnx").unlink()  # not needed: the released embedder is carried in its own form
    assemble_release(export, release, tflite_default="int8", onnx_variant={"segmenter": "int8_weights"},
                     kinds=("segmenter",))
    info = json.loads((release / "release.json").read_text())
    assert json.loads((release / "segmenter.onnx.meta.json").read_text())["quantization"] == "int8_weights"
    assert info["files"]["segmenter.onnx"]["from"] == ("segmenter.int8w.onnx (int8_weights; parity: "
                                                       "segmenter.int8w.onnx.parity.json)")
    assert (release / "segmenter.int8w.onnx.parity.json").is_file()
    assert (release / "embedder.fp16w.onnx.parity.json").is_file()
    assert info["files"]["embedder.onnx"]["from"].startswith("carried over from an earlier release")
    with pytest.raises(ConversionError, match="kinds are segmenter, embedder"):
        assemble_release(export, release, onnx_variant={"decoder": "int8_weights"}, kinds=("segmenter",))
    with pytest.raises(ConversionError, match="unknown ONNX variant 'int4'"):
        assemble_release(export, release, onnx_variant={"segmenter": "int4"}, kinds=("segmenter",))
