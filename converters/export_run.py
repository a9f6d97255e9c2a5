"""One export run: trainer checkpoints -> ONNX / TFLite (4 quantizations) / Core ML (variants) + ``export.json``.

Everything that can be wrong with the request (names, folders, photo counts, checkpoints) is checked before the
first conversion. Files are written into a staging folder inside ``out_dir`` and moved into place only when
every conversion succeeded, so a crash never leaves a half-written set beside the previous good one. With
``check`` every file is compared with its PyTorch source on real photos (``parity``) and the figures go into the
manifest; the run still writes its files when a target is missed (the manifest says which, and the CLI exits
non-zero), so a miss can be inspected.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coinvision.converters.coreml_export import (
    COREML_VARIANTS,
    check_variant,
    convert_coreml_fp16,
    coreml_can_predict,
    coreml_filename,
    export_coreml,
    validate_coreml,
)
from coinvision.converters.manifest import digest, tool_versions, write_manifest
from coinvision.converters.metadata import FORMAT_LAYOUT, read_embedded_metadata
from coinvision.converters.onnx_export import export_onnx
from coinvision.converters.parity import ParitySet, ParityTarget, check_parity
from coinvision.converters.photo_inputs import PhotoSquares, SegmentFn, list_photos, model_squares, pick_evenly
from coinvision.converters.tflite_export import (
    CALIBRATED_QUANTIZATIONS,
    INT8_WEIGHT_QUANTIZATIONS,
    MIN_CALIBRATION_IMAGES,
    TFLITE_QUANTIZATIONS,
    check_quantization,
    convert_tflite_fp32,
    export_tflite,
    tflite_filename,
)
from coinvision.sdk.errors import ConversionError, ModelLoadError
from coinvision.sdk.model_meta import ModelMetadata, sidecar_path
from coinvision.sdk.preprocess import to_model_input
from coinvision.sdk.recognizer import CropParams
from coinvision.sdk.segmenter import DEFAULT_SEGMENT_THRESHOLD, SegmenterParams
from coinvision.trainer.trained_model import TrainedModel, load_trained_model

__all__ = ["DEFAULT_QUANTIZATIONS", "FORMATS", "ExportOptions", "embedder_segment_fn", "run_export", "validate_options"]

log = logging.getLogger(__name__)

FORMATS = ("onnx", "tflite", "coreml")
DEFAULT_QUANTIZATIONS = ("fp32", "fp16", "int8_dynamic", "int8_full")
COREML_SKIP_REASON = "skipped: Core ML predictions need macOS"


@dataclass(frozen=True)
class ExportOptions:
    checkpoints: tuple[Path, ...]
    out_dir: Path
    formats: tuple[str, ...] = FORMATS
    quantizations: tuple[str, ...] = DEFAULT_QUANTIZATIONS  # TFLite
    coreml_variants: tuple[str, ...] = ("fp16",)
    calibration_dir: Path | None = None
    calibration_count: int = MIN_CALIBRATION_IMAGES
    int8_keep_float_regex: str | None = None  # ops left float in int8_full / int16x8 (see tflite_export)
    bias_correction: bool = True  # int8-weight variants, when calibration photos are given
    check: bool = False
    check_images: Path | None = None
    check_count: int = 200
    targets: Mapping[str, Mapping[str, ParityTarget]] | None = None  # None = parity.TARGETS
    num_threads: int = 1

    def to_dict(self) -> dict[str, Any]:
        """The resolved options, as recorded in ``export.json``."""
        d = dataclasses.asdict(self)
        d["targets"] = None if self.targets is None else {
            kind: {tier: {k: v for k, v in dataclasses.asdict(t).items() if v is not None} for tier, t in tiers.items()}
            for kind, tiers in self.targets.items()
        }
        return {k: [str(x) for x in v] if k == "checkpoints" else str(v) if isinstance(v, Path) else v
                for k, v in d.items()}

    @property
    def needs_calibration(self) -> bool:
        return "tflite" in self.formats and any(q in CALIBRATED_QUANTIZATIONS for q in self.quantizations)

    @property
    def uses_calibration(self) -> bool:
        """Calibration photos are required (int8_full, int16x8) or given for int8_dynamic's bias correction."""
        return self.needs_calibration or (
            self.calibration_dir is not None and "tflite" in self.formats
            and any(q in INT8_WEIGHT_QUANTIZATIONS for q in self.quantizations)
        )


def _names(values: tuple[str, ...], valid: tuple[str, ...], what: str) -> None:
    unknown = [v for v in values if v not in valid]
    if unknown:
        raise ConversionError(f"unknown {what} {', '.join(map(repr, unknown))}; valid: {', '.join(valid)}")
    if not values:
        raise ConversionError(f"no {what} given; valid: {', '.join(valid)}")


def validate_options(o: ExportOptions) -> None:
    """Every check that needs no model: names, folders, counts. Raises :class:`ConversionError`."""
    if not o.checkpoints:
        raise ConversionError("no checkpoint given; pass one or more trainer checkpoints (segmenter and/or embedder)")
    _names(o.formats, FORMATS, "format")
    if "tflite" in o.formats:
        _names(o.quantizations, TFLITE_QUANTIZATIONS, "quantization")
        for q in o.quantizations:
            check_quantization(q)
    if "coreml" in o.formats:
        _names(o.coreml_variants, COREML_VARIANTS, "Core ML variant")
        for v in o.coreml_variants:
            check_variant(v)
    if o.uses_calibration:
        wanted = [q for q in o.quantizations if q in CALIBRATED_QUANTIZATIONS]
        if o.calibration_dir is None:
            raise ConversionError(
                f"{', '.join(wanted)} needs real calibration photos: pass --calibration DIR "
                f"(>= {MIN_CALIBRATION_IMAGES} photos for a release) or drop it from --quant"
            )
        if o.calibration_count < 1:
            raise ConversionError(f"--calibration-count {o.calibration_count}: must be >= 1")
        found = len(list_photos(o.calibration_dir, what="calibration folder"))
        if found < o.calibration_count:
            raise ConversionError(
                f"calibration folder {o.calibration_dir} has {found} photo(s), fewer than the "
                f"{o.calibration_count} asked for (--calibration-count); add photos or lower the count"
            )
        if o.calibration_count < MIN_CALIBRATION_IMAGES:
            log.warning("calibrating on %d photos, below the release floor of %d", o.calibration_count,
                        MIN_CALIBRATION_IMAGES)
    elif "tflite" in o.formats and "int8_dynamic" in o.quantizations and o.bias_correction:
        log.warning("int8_dynamic without --calibration: no bias correction (pass --calibration DIR for it)")
    if o.check:
        if o.check_images is None:
            raise ConversionError("--check needs --check-images DIR (real photos, searched recursively)")
        if o.check_count < 2:
            raise ConversionError(f"--check-count {o.check_count}: must be >= 2")
        if not list_photos(o.check_images, what="check-images folder"):
            raise ConversionError(f"check-images folder {o.check_images} has no photos (.jpg/.png/.webp/.bmp)")
    if o.num_threads < 1:
        raise ConversionError(f"--threads {o.num_threads}: must be >= 1")


def _load_sources(o: ExportOptions) -> list[TrainedModel]:
    sources = [load_trained_model(path) for path in o.checkpoints]
    kinds = [s.kind for s in sources]
    duplicated = sorted({k for k in kinds if kinds.count(k) > 1})
    if duplicated:
        raise ModelLoadError(f"two {duplicated[0]} checkpoints in one export would write the same files; "
                             "export them into different --out folders")
    return sorted(sources, key=lambda s: s.kind != "segmenter")  # the segmenter first: the embedder uses it


@dataclass
class _Inputs:
    """Per kind: the calibration squares and the parity set, both made before any conversion."""

    calibration: dict[str, PhotoSquares] = field(default_factory=dict)
    parity: dict[str, ParitySet] = field(default_factory=dict)
    check_info: dict[str, Any] = field(default_factory=dict)
    calibration_info: dict[str, Any] = field(default_factory=dict)


def _torch_segment_fn(segmenter: TrainedModel) -> SegmentFn:
    """The SDK's two-pass segmentation (parameters from the metadata) run by the PyTorch segmenter."""
    from coinvision.sdk.segmenter import Segmenter
    from coinvision.trainer.torch_runtime import torch_loaded_model

    return Segmenter(torch_loaded_model(segmenter.model, segmenter.meta, segmenter.checkpoint)).segment


def embedder_segment_fn(sources: list[TrainedModel]):
    """``(segment_fn | None, description)``: how the embedder's crops are made, as close to the device as possible:
    the segmenter of this run, else the segmenter checkpoint the embedder was trained with, else letterbox."""
    embedder = next((s for s in sources if s.kind == "embedder"), None)
    if embedder is not None and embedder.meta.extra.get("background_removal") is False:
        return None, "letterboxed whole photo (the embedder was trained without background removal)"
    segmenter = next((s for s in sources if s.kind == "segmenter"), None)
    if segmenter is not None:
        return _torch_segment_fn(segmenter), "coin_crop with two-pass masks of the PyTorch segmenter in this run"
    config = embedder.config if embedder is not None else {}
    trained_with = config.get("segmenter_checkpoint")
    if trained_with and Path(trained_with).is_file():
        segmenter = load_trained_model(trained_with)
        return _torch_segment_fn(segmenter), (
            f"coin_crop with two-pass masks of {trained_with} (the embedder's training segmenter)")
    models_dir, runtime = config.get("segmenter_models_dir"), config.get("segmenter_runtime", "onnx")
    if models_dir and runtime != "torch" and Path(models_dir, f"segmenter.{runtime}").is_file():
        from coinvision.sdk.segmenter import Segmenter

        return Segmenter.from_dir(models_dir, runtime=runtime).segment, (
            f"coin_crop with two-pass masks of {models_dir}/segmenter.{runtime} (the embedder's segmenter)")
    return None, "letterboxed whole photo (no segmenter in this export run or in the embedder's config)"


def _prepare_inputs(o: ExportOptions, sources: list[TrainedModel]) -> _Inputs:
    inputs = _Inputs()
    segment, crops = embedder_segment_fn(sources)
    crop_params = {s.kind: CropParams.from_metadata(s.meta) for s in sources}
    crop_kwargs = {kind: {"crop_margin_frac": p.crop_margin_frac, "interpolation": p.interpolation}
                   for kind, p in crop_params.items()}
    calibration_paths: list[Path] = []
    if o.uses_calibration and o.calibration_dir is not None:  # validate_options demands the folder
        calibration_paths = pick_evenly(list_photos(o.calibration_dir), o.calibration_count)
        inputs.calibration_info = {"dir": str(o.calibration_dir), "requested": o.calibration_count,
                                   "release_floor": MIN_CALIBRATION_IMAGES,
                                   "meets_release_floor": o.calibration_count >= MIN_CALIBRATION_IMAGES}
        for s in sources:
            squares = model_squares(s.kind, calibration_paths, o.calibration_dir, s.meta.input.size_px, segment,
                                    **crop_kwargs[s.kind])
            if len(squares.squares) < o.calibration_count:
                raise ConversionError(
                    f"calibration folder {o.calibration_dir}: only {len(squares.squares)} of "
                    f"{o.calibration_count} photos are readable ({squares.skipped[0]}); add photos or lower the count"
                )
            inputs.calibration[s.kind] = squares
            inputs.calibration_info[s.kind] = {
                "used": len(squares.squares),
                "preprocessing": "letterboxed whole photo" if s.kind == "segmenter" else crops,
            }
    if o.check and o.check_images is not None:
        used = {p.resolve() for p in calibration_paths}
        candidates = [p for p in list_photos(o.check_images) if p.resolve() not in used]
        if len(candidates) < 2:
            raise ConversionError(f"check-images folder {o.check_images}: fewer than 2 photos left after removing "
                                  "the calibration photos; pass a folder of other photos")
        paths = pick_evenly(candidates, o.check_count)
        inputs.check_info = {"dir": str(o.check_images), "excluded_calibration_photos": len(used & {
            p.resolve() for p in list_photos(o.check_images)})}
        for s in sources:
            squares = model_squares(s.kind, paths, o.check_images, s.meta.input.size_px, segment,
                                    **crop_kwargs[s.kind])
            rotations = int(s.meta.extra.get("embed_rotations", 1)) if s.kind == "embedder" else 1
            inputs.parity[s.kind] = ParitySet(squares.squares, squares.labels, squares.sources, rotations)
            inputs.check_info[s.kind] = {
                "images": len(squares.squares),
                "skipped": len(squares.skipped),
                "labelled": squares.labels is not None,
                "preprocessing": "letterboxed whole photo" if s.kind == "segmenter" else crops,
            }
    return inputs


def _nhwc_calibration(squares: PhotoSquares, meta: ModelMetadata) -> list:
    spec = dataclasses.replace(meta.input, layout=FORMAT_LAYOUT["tflite"])
    return [to_model_input(square, spec) for square in squares.squares]


class _Run:
    """State of one run: staging folder, manifest entries, failures."""

    def __init__(self, o: ExportOptions, inputs: _Inputs, report: Callable[[str], None]) -> None:
        self.o, self.inputs, self.report = o, inputs, report
        self.stage = o.out_dir / f".export-staging-{os.getpid()}"
        self.entries: list[dict[str, Any]] = []
        self.failures: list[str] = []

    def record(self, source: TrainedModel, path: Path, fmt: str, quantization: str, convert_s: float,
               step_s: float = 0.0) -> None:
        """``convert_s``: the conversion this file shares with its siblings; ``step_s``: its own
        quantization / compression step."""
        size, sha = digest(path)
        entry: dict[str, Any] = {
            "file": path.name, "kind": source.kind, "format": fmt, "quantization": quantization,
            "size_bytes": size, "sha256": sha, "convert_s": round(convert_s, 2), "step_s": round(step_s, 2),
            "input_layout": FORMAT_LAYOUT[fmt],
        }
        sidecar = ModelMetadata.read_sidecar(path)
        if fmt == "coreml":
            try:
                entry["validation"] = validate_coreml(path, expected=sidecar)
                embedded = ModelMetadata.from_dict(entry["validation"]["metadata"])
            except ConversionError as exc:
                entry["validation"] = {"error": str(exc)}
                self.failures.append(f"{path.name}: {exc}")
                embedded = None
        else:
            embedded = read_embedded_metadata(path)
        entry["metadata_roundtrip"] = embedded == sidecar
        if embedded is not None and embedded != sidecar:
            self.failures.append(f"{path.name}: metadata embedded in the file differs from {sidecar_path(path).name}")
        if self.o.check:
            entry["parity"] = self._parity(source, path, fmt, quantization)
        self.entries.append(entry)
        line = f"{path.name}: {size / 1e6:.2f} MB, convert {convert_s:.1f} s + {step_s:.1f} s"
        if "parity" in entry:
            line += f", parity {_summary(entry['parity'])}"
        self.report(line)

    def _parity(self, source: TrainedModel, path: Path, fmt: str, quantization: str) -> dict[str, Any]:
        from coinvision.sdk.runtimes import predictor_for
        from coinvision.trainer.torch_runtime import torch_predictor

        if fmt == "coreml" and not coreml_can_predict():
            return {"skipped": COREML_SKIP_REASON, "passed": None}
        threshold = (SegmenterParams.from_metadata(source.meta).threshold if source.kind == "segmenter"
                     else DEFAULT_SEGMENT_THRESHOLD)
        result = check_parity(
            source.kind, quantization, torch_predictor(source.model, source.meta.input),
            predictor_for(path, self.o.num_threads), self.inputs.parity[source.kind],
            threshold=threshold, targets=self.o.targets,
        )
        self.failures.extend(f"{path.name}: {f}" for f in result.failures)
        return result.to_dict()

    def export_source(self, s: TrainedModel) -> None:
        o = self.o
        if "onnx" in o.formats:
            started = time.perf_counter()
            path = export_onnx(s.model, s.meta, self.stage / f"{s.kind}.onnx")
            self.record(s, path, "onnx", "fp32", time.perf_counter() - started)
        if "tflite" in o.formats:
            started = time.perf_counter()
            fp32 = convert_tflite_fp32(s.model, s.meta.input.size_px)
            convert_s = time.perf_counter() - started
            calibration = (_nhwc_calibration(self.inputs.calibration[s.kind], s.meta)
                           if s.kind in self.inputs.calibration else None)
            for q in o.quantizations:
                started = time.perf_counter()
                path = export_tflite(
                    s.model, s.meta, self.stage / tflite_filename(s.kind, q), quantization=q,
                    calibration=calibration if q in INT8_WEIGHT_QUANTIZATIONS else None, fp32_bytes=fp32,
                    keep_float_regex=o.int8_keep_float_regex, bias_correction=o.bias_correction,
                )
                self.record(s, path, "tflite", q, convert_s, time.perf_counter() - started)
        if "coreml" in o.formats:
            started = time.perf_counter()
            base = convert_coreml_fp16(s.model, s.meta)
            convert_s = time.perf_counter() - started
            for v in o.coreml_variants:
                started = time.perf_counter()
                # one k-means worker whatever --threads says: coremltools forks its worker pool, and a fork after
                # TensorFlow / JAX started their threads hung the export here (palettize at 0/213 for 15 min)
                path = export_coreml(s.model, s.meta, self.stage / coreml_filename(s.kind, v), variant=v, base=base)
                self.record(s, path, "coreml", v, convert_s, time.perf_counter() - started)

    def publish(self) -> None:
        """Move the staged files (and sidecars) into ``out_dir``, replacing older ones of the same name."""
        for staged in sorted(self.stage.iterdir()):
            target = self.o.out_dir / staged.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(staged, target)
        self.stage.rmdir()


def _summary(parity: Mapping[str, Any]) -> str:
    if "skipped" in parity:
        return parity["skipped"]
    f = parity["figures"]
    keys = ("cosine_mean", "cosine_min", "nn_top1_agreement", "recall1_drop_points") if "cosine_mean" in f else (
        "iou_mean", "iou_min", "max_abs_logit_diff")
    text = " ".join(f"{k}={f[k]:.4f}" for k in keys if k in f)
    return f"{'PASS' if parity['passed'] else 'FAIL'} {text}"


def run_export(o: ExportOptions, report: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Validate, export every requested file, check parity (``o.check``), write ``export.json``; return it."""
    report = report or (lambda line: log.info("%s", line))
    validate_options(o)
    import torch

    torch.set_num_threads(o.num_threads)
    started = time.perf_counter()
    sources = _load_sources(o)
    inputs = _prepare_inputs(o, sources)
    o.out_dir.mkdir(parents=True, exist_ok=True)
    run = _Run(o, inputs, report)
    shutil.rmtree(run.stage, ignore_errors=True)
    run.stage.mkdir()
    try:
        for s in sources:
            run.export_source(s)
        run.publish()
    except BaseException:
        shutil.rmtree(run.stage, ignore_errors=True)
        raise
    manifest = {
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "options": o.to_dict(),
        "total_s": round(time.perf_counter() - started, 1),
        "tools": tool_versions(),
        "sources": [
            {"kind": s.kind, "checkpoint": str(s.checkpoint), "checkpoint_sha256": s.checkpoint_sha256,
             "fingerprint": s.meta.fingerprint, "architecture": s.meta.architecture, "epoch": s.epoch,
             "input_size_px": s.meta.input.size_px}
            for s in sources
        ],
        "calibration": inputs.calibration_info or None,
        "check": inputs.check_info or None,
        "files": run.entries,
        "parity_checked": bool(o.check),
        "parity_skipped": [e["file"] for e in run.entries if "skipped" in e.get("parity", {})],
        "passed": not run.failures,
        "failures": run.failures,
    }
    write_manifest(o.out_dir, manifest)
    return manifest
