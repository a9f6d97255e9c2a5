"""Assemble ``models/release`` (what ships in git and what the SDK, the server and the demo load by default)
from one ``coinvision export --check`` run.

    python -m coinvision.converters.release runs/export_release models/release [--tflite-default fp16] \
        [--onnx-variant fp16_weights | --onnx-variant segmenter=int8_weights] [--kinds embedder]

The release set stays under the repository's 40 MB budget: ONNX for the server and the ONNX Runtime SDKs (fp32, or
``fp16_weights`` / ``int8_weights``: float32 compute, weights stored in fewer bytes by ``converters.onnx_weights``,
each with a passing parity record ``<file>.parity.json`` against its fp32 source, found in the export run's folder;
one form for every kind, or one per kind as ``KIND=FORM``), ONE TFLite variant per
model under the SDK's default name (``<kind>.tflite``; its embedded metadata says which quantization it is),
the full-int8 / fp16 TFLite files that are not the default (while they fit), and the smallest Core ML variant.
The export run's ``export.json`` is copied alongside, so every shipped file keeps its sha256 and parity figures.
Nothing unproven ships: a run that was not parity-checked is refused, a required file (ONNX, default TFLite) that
missed its target is refused, and an optional file that missed is left out and listed under ``not_shipped`` in
``release.json``.

``--kinds``: the model kinds this export run replaces; the others are carried over from the current release with
their files, ``release.json`` entries and export record (``export_<kind>.json``), e.g. a new embedder beside the
segmenter already shipped.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from coinvision.converters.manifest import MANIFEST_NAME, digest, read_manifest
from coinvision.converters.onnx_weights import FORMS
from coinvision.sdk.errors import ConversionError
from coinvision.sdk.model_meta import sidecar_path

__all__ = ["assemble_release", "released_files"]

KINDS = ("segmenter", "embedder")
TFLITE_VARIANTS = {"fp32": "{kind}.tflite", "fp16": "{kind}.fp16.tflite", "int8_dynamic": "{kind}.int8_dynamic.tflite",
                   "int8": "{kind}.int8.tflite"}
# keys: the metadata's ``quantization`` of each form (``onnx_weights.FORMS``), so a released file names its own
ONNX_VARIANTS = {"fp32": "{kind}.onnx", **{form: f"{{kind}}.{infix}.onnx" for form, infix in FORMS.items()}}
OPTIONAL_TFLITE = ("int8", "fp16")  # shipped beside the default when they passed parity and fit, in this order
MAX_RELEASE_BYTES = 40_000_000  # the repository's budget for shipped models (decimal MB)
CARRIED = "carried over from an earlier release"


def _copy(src: Path, dst: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copyfile(src, dst)
    shutil.copyfile(sidecar_path(src), sidecar_path(dst))


def _onnx_parity(path: Path) -> bool | None:
    """The ``onnx_weights`` parity verdict recorded beside a stored-weights ONNX file (None: no record)."""
    record = path.with_name(path.name + ".parity.json")
    return bool(json.loads(record.read_text()).get("passed")) if record.is_file() else None


def _quantization(path: Path) -> str:
    return json.loads(sidecar_path(path).read_text()).get("quantization", "fp32")


def released_files(release_dir: Path, kind: str) -> tuple[dict, dict[str, Path]]:
    """``release.json`` of ``release_dir`` and its files of ``kind``, each checked against its recorded sha256."""
    info_path = release_dir / "release.json"
    if not info_path.is_file():
        raise ConversionError(f"{release_dir} has no release.json: there is no released {kind}; export it")
    info = json.loads(info_path.read_text())
    names = [name for name in info.get("files", {}) if name.startswith(f"{kind}.")]
    if not names:
        raise ConversionError(f"{info_path} lists no {kind} files; export the {kind}")
    for name in names:
        if digest(release_dir / name)[1] != info["files"][name]["sha256"]:
            raise ConversionError(f"{release_dir / name} differs from its sha256 in {info_path}; restore it "
                                  "(git checkout) first")
    return info, {name: release_dir / name for name in names}


def _carried(release_dir: Path, kind: str) -> tuple[dict[str, Path], dict[str, dict], Path | None]:
    """The current release's files of ``kind`` (checked against their recorded sha256), their entries and record."""
    info, files = released_files(release_dir, kind)
    entries = {name: info["files"][name] for name in files}
    source = info.get(f"{kind}_source", MANIFEST_NAME)
    return files, entries, (release_dir / source) if (release_dir / source).is_file() else None


def assemble_release(export_dir: Path, release_dir: Path, *, tflite_default: str = "fp16",
                     coreml_variant: str = "palette6", onnx_variant: str | dict[str, str] = "fp32",
                     kinds: tuple[str, ...] = KINDS) -> dict[str, int]:
    """Copy the chosen files of a checked export run into ``release_dir`` (replaced atomically); kinds not in
    ``kinds`` keep the current release's files. ``onnx_variant``: one form for every kind, or ``{kind: form}``
    (a released kind left out is fp32, a carried kind left out is carried in its released form)."""
    if not kinds or set(kinds) - set(KINDS):
        raise ConversionError(f"kinds {kinds!r}: pick from {', '.join(KINDS)}")
    if isinstance(onnx_variant, str):
        variants: dict[str, str | None] = dict.fromkeys(KINDS, onnx_variant)
    else:
        if set(onnx_variant) - set(KINDS):
            raise ConversionError(f"ONNX variants {onnx_variant!r}: kinds are {', '.join(KINDS)}")
        variants = {k: onnx_variant.get(k, "fp32" if k in kinds else None) for k in KINDS}
    for variant in variants.values():
        if variant is not None and variant not in ONNX_VARIANTS:
            raise ConversionError(f"unknown ONNX variant {variant!r}; valid: {', '.join(ONNX_VARIANTS)}")
    manifest = read_manifest(export_dir)
    if not manifest.get("check") or not manifest.get("parity_checked"):
        raise ConversionError(f"{export_dir / MANIFEST_NAME}: the export run was not parity-checked; re-run "
                              "coinvision export with --check before releasing")
    passed = {f["file"]: (f.get("parity") or {}).get("passed") for f in manifest.get("files", [])}
    if tflite_default not in TFLITE_VARIANTS:
        raise ConversionError(f"unknown TFLite variant {tflite_default!r}; valid: {', '.join(TFLITE_VARIANTS)}")
    required: dict[str, Path] = {}
    optional: dict[str, Path] = {}
    carried: dict[str, Path] = {}
    carried_entries: dict[str, dict] = {}
    carried_records: dict[str, Path | None] = {}
    for kind in KINDS:
        variant = variants[kind]
        if kind not in kinds:
            files, entries, carried_records[kind] = _carried(release_dir, kind)
            carried.update(files)
            carried_entries.update(entries)
            released = _quantization(files[f"{kind}.onnx"])
            if variant is None or released == variant:
                continue  # the requested form (or none asked): carried as is, with its parity record
            del carried[f"{kind}.onnx"]
            if variant == "fp32":
                raise ConversionError(f"the released {kind}.onnx is {released}, not fp32; carry it with "
                                      f"--onnx-variant {kind}={released}")
        variant = variant or "fp32"  # a released kind not asked for is fp32
        onnx = export_dir / ONNX_VARIANTS[variant].format(kind=kind)
        if variant != "fp32" and _onnx_parity(onnx) is not True:
            raise ConversionError(f"{onnx}: no passing parity record ({onnx.name}.parity.json); write it with "
                                  f"python -m coinvision.converters.onnx_weights <{kind}.onnx> {onnx} --form "
                                  f"{variant} --check-images ...")
        required[f"{kind}.onnx"] = onnx
        if kind not in kinds:
            continue
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
    plan = {**required, **carried}
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
    release: dict = {"source_export": str(export_dir), "tflite_default": tflite_default, "onnx_variant": onnx_variant,
                     "not_shipped": not_shipped, "files": {}}
    for name, src in plan.items():
        size, sha256 = digest(staging / name)
        origin = src.name
        if name in carried:
            origin = carried_entries[name]["from"]
            if not origin.startswith(CARRIED):
                origin = f"{CARRIED} ({origin})"
        elif name.endswith(".onnx") and src.parent == export_dir and src.name != name:
            origin = f"{src.name} ({_quantization(src)}; parity: {src.name}.parity.json)"
            shutil.copyfile(src.with_name(src.name + ".parity.json"), staging / f"{src.name}.parity.json")
        release["files"][name] = {"from": origin, "bytes": size, "sha256": sha256}
    for kind in KINDS:
        record = carried_records.get(kind)
        if kind not in kinds:
            for parity in release_dir.glob(f"{kind}.*.parity.json"):
                shutil.copyfile(parity, staging / parity.name)
        if kind not in kinds and record is not None:
            shutil.copyfile(record, staging / f"export_{kind}.json")
            release[f"{kind}_source"] = f"export_{kind}.json"
        elif kind in kinds:
            release[f"{kind}_source"] = MANIFEST_NAME
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
    parser.add_argument("--onnx-variant", nargs="+", default=["fp32"], metavar="[KIND=]FORM",
                        help=f"ONNX form for every kind, or per kind (segmenter=int8_weights); forms: "
                             f"{', '.join(ONNX_VARIANTS)}")
    parser.add_argument("--kinds", default=",".join(KINDS),
                        help="comma list: the kinds this run replaces; the others stay as released")
    args = parser.parse_args(argv)
    try:
        per_kind = dict(v.split("=", 1) for v in args.onnx_variant if "=" in v)
        plain = [v for v in args.onnx_variant if "=" not in v]
        if plain and (per_kind or len(plain) > 1):
            raise ConversionError(f"--onnx-variant {' '.join(args.onnx_variant)}: give one FORM, or KIND=FORM pairs")
        sizes = assemble_release(args.export_dir, args.release_dir, tflite_default=args.tflite_default,
                                 coreml_variant=args.coreml_variant, onnx_variant=plain[0] if plain else per_kind,
                                 kinds=tuple(k for k in args.kinds.split(",") if k))
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
