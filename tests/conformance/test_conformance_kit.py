"""The conformance kit (conformance/) that the Swift/Kotlin/TypeScript ports check themselves against: the
reference SDK must reproduce it, and the checker must name the stage where an implementation drifts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from coinvision.sdk.conformance import check_kit, main
from coinvision.sdk.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
KIT = REPO_ROOT / "conformance"
RELEASE_MODELS = REPO_ROOT / "models" / "release"
STAGES = {"decode", "letterbox", "seg_input_int8", "mask_logits", "segmentation", "crop", "embed_input_int8",
          "embedding", "top_k", "pack", "manifest"}


def test_reference_sdk_reproduces_the_kit() -> None:
    report = check_kit(KIT, RELEASE_MODELS)
    assert not report.failures, [f for f in report.failures]
    assert {f.stage for f in report.figures} >= STAGES
    photos = json.loads((KIT / "kit.json").read_text())["photos"]
    # every photo on both runtimes, with the figure values themselves (not only pass/fail)
    cosines = [f.value for f in report.figures if f.stage == "embedding"]
    assert len(cosines) == 2 * len(photos)
    assert min(cosines) > 0.9999
    # the kit covers a photo without a coin (letterboxed whole photo, "unknown") and photos with one
    found = {f.value for f in report.figures if (f.stage, f.metric) == ("segmentation", "found")}
    assert found == {"True", "False"}


def test_kit_stays_small() -> None:
    size = sum(p.stat().st_size for p in KIT.rglob("*") if p.is_file())
    assert size < 3_000_000


@pytest.fixture
def one_photo_kit(tmp_path: Path) -> Path:
    """A copy of the kit reduced to its first photo (one pipeline run per runtime keeps the tests quick)."""
    kit = tmp_path / "kit"
    shutil.copytree(KIT, kit)
    doc = json.loads((kit / "kit.json").read_text())
    doc["photos"] = doc["photos"][:1]
    (kit / "kit.json").write_text(json.dumps(doc))
    return kit


def test_checker_names_the_stage_that_drifted(one_photo_kit: Path) -> None:
    kit = one_photo_kit
    photo_id = json.loads((kit / "kit.json").read_text())["photos"][0]["id"]
    emb_path = kit / "golden" / photo_id / "onnx" / "embedding.npy"
    vector = np.load(emb_path)
    rotated = np.roll(vector, 1)  # another unit vector: an embedder that drifted
    np.save(emb_path, rotated)
    manifest_path = kit / "pack" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["payload"]["version"] = 2  # a payload changed after signing
    manifest_path.write_text(json.dumps(manifest))

    report = check_kit(kit, RELEASE_MODELS)

    missed = {(f.stage, f.metric, f.runtime) for f in report.failures}
    assert missed == {("embedding", "cosine", "onnx"), ("manifest", "signature", ""),
                      ("manifest", "pack_sha256", ""), ("manifest", "pack_size", "")}
    cosine = next(f for f in report.failures if f.stage == "embedding")
    assert cosine.value == pytest.approx(float(vector @ rotated), abs=1e-6)
    assert "does not verify" in str(next(f for f in report.failures if f.metric == "signature").value)


def test_cli_check_prints_figures_and_exit_code(one_photo_kit: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "figures.json"
    assert main(["check", str(one_photo_kit), "--models", str(RELEASE_MODELS), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "embedding.cosine" in printed and "figures within tolerance" in printed
    assert json.loads(out.read_text())["ok"] is True


def test_not_a_kit_is_a_config_error_naming_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="generate"):
        check_kit(tmp_path, RELEASE_MODELS)


def test_missing_models_are_named_with_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(KIT), "--models", str(tmp_path)]) == 2
    assert "pass --models models/release" in capsys.readouterr().err
