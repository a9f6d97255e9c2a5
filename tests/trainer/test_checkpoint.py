from __future__ import annotations

from pathlib import Path

import pytest
import torch
from coinvision.sdk.errors import ModelLoadError
from coinvision.trainer.checkpoint import Checkpoint, fingerprint_state_dict, load_checkpoint, save_checkpoint


def _ckpt(seed: int = 0) -> Checkpoint:
    torch.manual_seed(seed)
    layer = torch.nn.Linear(4, 2)
    return Checkpoint(kind="embedder", config={"embedding_dim": 2}, state_dict=layer.state_dict(), epoch=3)


def test_checkpoint_round_trip_keeps_weights_and_fingerprint(tmp_path: Path) -> None:
    ckpt = _ckpt()
    path = save_checkpoint(tmp_path / "a.pt", ckpt)
    loaded = load_checkpoint(path, expected_kind="embedder")
    assert loaded.fingerprint == ckpt.fingerprint == fingerprint_state_dict(ckpt.state_dict)
    assert loaded.epoch == 3 and loaded.config == {"embedding_dim": 2}
    assert torch.equal(loaded.state_dict["weight"], ckpt.state_dict["weight"])
    assert not (tmp_path / "a.pt.tmp").exists()


def test_fingerprint_changes_with_weights() -> None:
    assert fingerprint_state_dict(_ckpt(0).state_dict) != fingerprint_state_dict(_ckpt(1).state_dict)


def test_load_checkpoint_wrong_kind_and_truncated_file(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "a.pt", _ckpt())
    with pytest.raises(ModelLoadError, match="is a embedder checkpoint, expected a segmenter"):
        load_checkpoint(path, expected_kind="segmenter")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ModelLoadError, match="unreadable"):
        load_checkpoint(cut)
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt")


def test_load_checkpoint_detects_tampered_weights(tmp_path: Path) -> None:
    ckpt = _ckpt()
    save_checkpoint(tmp_path / "a.pt", ckpt)
    payload = torch.load(tmp_path / "a.pt", weights_only=False)
    payload["state_dict"]["bias"] += 1
    torch.save(payload, tmp_path / "a.pt")
    with pytest.raises(ModelLoadError, match="do not match the stored fingerprint"):
        load_checkpoint(tmp_path / "a.pt")
