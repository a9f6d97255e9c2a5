"""Assemble ``models/release`` (what ships in git and what the SDK, the server and the demo load by default)
from one ``coinvision export --check`` run.

    python -m coinvision.converters.release runs/export_release models/release [--tflite-default fp16]

The release set stays under the repository's 40 MB budget: ONNX fp32 for the server, ONE TFLite variant per
model under the SDK's default name (``<kind>.tflite``; its embedded metadata says which quantization it is),
the full-int8 / fp16 TFLite files that are not the default (while they fit), and the smallest Core ML variant.
The export run's ``export.json`` is copied alongside, so every shipped file keeps its sha256 and parity figures.
Nothing unproven ships: a run that was not parity-checked is refused, a required file (ONNX, default TFLite) that
missed its target is refused, and an optional file that missed is left out and listed under ``not_shipped`` in
``release.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from coinvision.converters.manifest import MANIFEST_NAME, digest, read_manifest
from coinvision.sdk.errors import ConversionError
from coinvision.sdk.model_meta import sidecar_path

__all__ = ["assemble_release"]

KINDS = ("segmenter", "embedder")
TFLITE_VARIANTS = {"fp32": "{kind}.tflite", "fp16": "{kind}.fp16.tflite", "int8_dynamic": "{kind}.int8_dynamic.tflite",
                   "int8": "{kind}.int8.tflite"}
OPTIONAL_TFLITE = ("int8", "fp16")  # shipped beside the default when they passed parity and fit, in this order
MAX_RELEASE_BYTES = 40_000_000  # the repository's budget for shipped models (decimal MB)


def _copy(src: Path, dst: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copyfile(src, dst)
    shutil.copyfile(sidecar_path(src), sidecar_path(dst))


def assemble_release(export_dir: Path, release_dir: Path, *, tflite_default: str = "fp16",
                     coreml_variant: str = "palette6") -> dict[str, int]:
    """Copy the chosen files of a checked export run into ``release_dir`` (replaced atomically)."""
    manifest = read_manifest(export_dir)
    if not manifest.get("check") or not manifest.get("parity_checked"):
        raise ConversionError(f"{export_dir / MANIFEST_NAME}: the export run was not parity-checked; re-run "
                              "coinvision export with --check before releasing")
    passed = {f["file"]: (f.get("parity") or {}).get("passed") for f in manifest.get("files", [])}
    if tflite_default not in TFLITE_VARIANTS:
        raise ConversionError(f"unknown TFLite variant {tflite_default!r}; valid: {', '.join(TFLITE_VARIANTS)}")
    required: dict[str, Path] = {}
    optional: dict[str, Path] = {}
    for kind in KINDS:
        required[f"{kind}.onnx"] = export_dir / f"{kind}.onnx"
        required[f"{kind}.tflite"] = export_dir / TFLITE_VARIANTS[tflite_default].format(kind=kind)
        for variant in OPTIONAL_TFLITE:
            if variant != tflite_default:
                name = TFLITE_VARIANTS[variant].format(kind=kind)
                optional[name] = export_dir / name
        required[f"{kind}.{coreml_variant}.mlpackage"] = export_dir / f"{kind}.{coreml_variant}.mlpackage"
    missing = [str(p) for p in required.values() if not p.exists()]
    if missing:
        raise ConversionError(f"export run is missing {', '.join(missing)}; export every kind and variant first")
    failed = [src.name for src in required.values() if passed.get(src.name) is False]
    if failed:
        raise ConversionError(f"{export_dir}: {', '.join(failed)} missed their parity targets (see "
                              f"{MANIFEST_NAME}); fix them or release another --tflite-default")
    not_shipped = {name: "parity target missed" if passed.get(src.name) is False else "not exported"
                   for name, src in optional.items() if passed.get(src.name) is not True}
    plan = dict(required)
    total = sum(digest(p)[0] for p in plan.values())
    if total > MAX_RELEASE_BYTES:
        raise ConversionError(f"release set would be {total / 1e6:.1f} MB, over the {MAX_RELEASE_BYTES / 1e6:.0f} MB "
                              "budget; pick a smaller --tflite-default")
    for name, src in optional.items():
        if name in not_shipped:
            continue
        size = digest(src)[0]
        if total + size > MAX_RELEASE_BYTES:
            not_shipped[name] = f"over the {MAX_RELEASE_BYTES / 1e6:.0f} MB budget (export it with make release-models)"
            continue
        plan[name] = src
        total += size
    staging = release_dir.with_name(release_dir.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name, src in plan.items():
        _copy(src, staging / name)
    release = {"source_export": str(export_dir), "tflite_default": tflite_default, "not_shipped": not_shipped,
               "files": {}}
    for name, src in plan.items():
        size, sha256 = digest(staging / name)
        release["files"][name] = {"from": src.name, "bytes": size, "sha256": sha256}
    (staging / "release.json").write_text(json.dumps(release, indent=2) + "\n")
    shutil.copyfile(export_dir / MANIFEST_NAME, staging / MANIFEST_NAME)
    # the model card, the training records and the data-package marker live here, not in the export run
    for keep in ("README.md", "training", "__init__.py"):
        if (release_dir / keep).exists():
            shutil.move(str(release_dir / keep), staging / keep)
    if release_dir.exists():
        shutil.rmtree(release_dir)
    staging.rename(release_dir)
    return {name: info["bytes"] for name, info in release["files"].items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export_dir", type=Path)
    parser.add_argument("release_dir", type=Path)
    parser.add_argument("--tflite-default", default="fp16", choices=tuple(TFLITE_VARIANTS))
    parser.add_argument("--coreml-variant", default="palette6")
    args = parser.parse_args(argv)
    try:
        sizes = assemble_release(args.export_dir, args.release_dir, tflite_default=args.tflite_default,
                                 coreml_variant=args.coreml_variant)
    except ConversionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, size in sizes.items():
        print(f"  {name:34s} {size / 1e6:6.2f} MB")
    for name, why in json.loads((args.release_dir / "release.json").read_text())["not_shipped"].items():
        print(f"  {name:34s} not shipped: {why}")
    print(f"release set: {sum(sizes.values()) / 1e6:.1f} MB in {args.release_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
