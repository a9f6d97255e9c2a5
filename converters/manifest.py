"""``export.json``: one manifest per export run (files, sizes, sha256, quantization, parity figures, pass/fail)."""

from __future__ import annotations

import hashlib
import json
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from coinvision.sdk.files import write_atomic

__all__ = ["MANIFEST_NAME", "digest", "read_manifest", "tool_versions", "write_manifest"]

MANIFEST_NAME = "export.json"
SCHEMA_VERSION = 1
_TOOLS = ("coinvision", "torch", "timm", "segmentation-models-pytorch", "onnx", "onnxruntime", "litert-torch",
          "ai-edge-quantizer", "ai-edge-litert", "coremltools")


def digest(path: str | Path) -> tuple[int, str]:
    """``(size_bytes, sha256 hex)`` of a file, or of a folder (``.mlpackage``): sorted relative paths + contents."""
    path = Path(path)
    sha = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    size = 0
    for file in files:
        if file is not path:
            sha.update(file.relative_to(path).as_posix().encode() + b"\0")
        with file.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                sha.update(chunk)
        size += file.stat().st_size
    return size, sha.hexdigest()


def tool_versions() -> dict[str, str]:
    out = {}
    for name in _TOOLS:
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def write_manifest(out_dir: str | Path, manifest: dict[str, Any]) -> Path:
    path = Path(out_dir) / MANIFEST_NAME
    payload = json.dumps({"schema_version": SCHEMA_VERSION, **manifest}, indent=2, sort_keys=False) + "\n"
    return write_atomic(path, payload.encode("utf-8"))


def read_manifest(out_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(out_dir) / MANIFEST_NAME).read_text())
