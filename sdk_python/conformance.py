"""The conformance kit: golden files per pipeline stage that every SDK port (Swift, Kotlin, TypeScript) must
reproduce, and the runner that checks this reference SDK against them.

    python -m coinvision.sdk.conformance check conformance/            # figures per stage, exit 1 on a miss
    python -m coinvision.sdk.conformance generate conformance/ --photos P.jpg ... --catalog DIR

The kit (layout in ``conformance/README.md``) holds, for a handful of photos and each runtime (TFLite int8, ONNX
fp32): the decoded RGB (sha256 + shape), the letterbox parameters and square, the int8 input tensor (quantized
with the TFLite input tensor's scale / zero point), the first-pass mask logits, the segmentation outcome (mask,
box, passes), the embedder's crop and its int8 input tensor, the embedding and the top-k against a golden pack,
plus that pack's signed manifest and the public key that verifies it. Tolerances travel in ``kit.json``.

Only the SDK's public functions are used, so the checker exercises exactly what the ports mirror.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import logging
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from coinvision.sdk.errors import CoinVisionError, ConfigError, ModelLoadError, SyncError
from coinvision.sdk.images import load_image
from coinvision.sdk.model_meta import ModelMetadata, default_models_dir
from coinvision.sdk.pack import CoinRecord, Pack, read_pack
from coinvision.sdk.preprocess import letterbox, rotation_views, to_model_input
from coinvision.sdk.recognizer import Recognizer, Result
from coinvision.sdk.runtimes import LoadedModel, load_model, quantize_tensor
from coinvision.sdk.sync_client import SyncClient, canonical_json
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = ["KIT_FORMAT", "TOLERANCES", "CheckReport", "StageFigure", "check_kit", "generate_kit", "main"]

log = logging.getLogger(__name__)

KIT_FORMAT = 1
RUNTIMES = ("tflite", "onnx")
TOP_K = 5
CATALOG_ID = "conformance"
# Fixed so that regenerating the kit from the same inputs writes the same bytes (pack header, manifest).
PACK_CREATED_AT = 1767225600  # 2026-01-01T00:00:00Z
MANIFEST_ISSUED_AT = "2026-01-01T00:00:00Z"
MANIFEST_EXPIRES_AT = "2100-01-01T00:00:00Z"
# A throw-away signing key derived from a public phrase: Ed25519 signatures are deterministic, so the manifest's
# bytes are reproducible. Anyone can derive it: never trust it outside this kit.
_KEY_SEED = hashlib.sha256(b"coinvision conformance kit: public test key, never trusted").digest()

# What a port must meet, per stage (the reference SDK itself shows 0 everywhere on the machine that generated
# the kit). "lsb": steps of an int8 tensor; "levels": uint8 pixel values.
TOLERANCES: dict[str, float] = {
    "letterbox_max_abs_levels": 1.0,  # OpenCV's bilinear is fixed point (11-bit weights): a float port is +-1
    "seg_input_max_abs_lsb": 1.0,
    "tflite_logits_max_abs_lsb": 2.0,  # int8 kernels of other TFLite builds (XNNPACK vs reference) round apart
    "onnx_logits_max_abs": 2e-3,  # fp32 logits; other summation orders
    "mask_min_iou": 0.99,
    "bbox_max_abs_px": 1.0,
    "crop_mean_abs_levels": 1.0,
    "embed_input_max_abs_lsb": 2.0,
    "embedding_min_cosine": 0.999,
    "score_max_abs": 2e-3,
}


@dataclass(frozen=True)
class StageFigure:
    """One measured figure of one stage: ``value`` against ``limit`` (``kind``: ``"max"`` means value <= limit,
    ``"min"`` value >= limit, ``"equal"`` value == limit exactly)."""

    photo: str  # photo id, or "" for kit-wide stages (pack, manifest)
    runtime: str  # "tflite" | "onnx" | "" (runtime-independent stages)
    stage: str
    metric: str
    value: float | str
    limit: float | str
    kind: str

    @property
    def ok(self) -> bool:
        if self.kind == "equal":
            return self.value == self.limit
        if self.kind == "max":
            return float(self.value) <= float(self.limit)
        return float(self.value) >= float(self.limit)


@dataclass(frozen=True)
class CheckReport:
    figures: tuple[StageFigure, ...]

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.figures)

    @property
    def failures(self) -> tuple[StageFigure, ...]:
        return tuple(f for f in self.figures if not f.ok)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "figures": [{**asdict(f), "ok": f.ok} for f in self.figures]}


# ---------------------------------------------------------------------------------------------- helpers


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha256(path: Path) -> str:
    return _sha256(path.read_bytes())


def _tflite_tensor_params(path: Path) -> dict[str, dict[str, Any]]:
    """The input and output tensors' dtype, scale and zero point: what a port quantizes / dequantizes with."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    params = {}
    details = (("input", interpreter.get_input_details()[0]), ("output", interpreter.get_output_details()[0]))
    for name, detail in details:
        scale, zero = detail["quantization"]
        params[name] = {"dtype": np.dtype(detail["dtype"]).name, "scale": float(scale), "zero_point": int(zero),
                        "shape": [int(v) for v in detail["shape"]]}
    return params


def _detail(params: dict[str, Any]) -> dict[str, Any]:
    """A ``quantize_tensor`` detail from the kit's tensor params."""
    return {"dtype": np.dtype(params["dtype"]).type, "quantization": (params["scale"], params["zero_point"])}


def _raw_output(dequantized: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """Back from the SDK's dequantized float output to the int8 tensor the interpreter produced (exact: the
    dequantized values are (q - zero) * scale)."""
    if params["dtype"] == "float32":
        return dequantized.astype(np.float32)
    q = np.round(dequantized.astype(np.float64) / params["scale"] + params["zero_point"])
    return q.astype(np.dtype(params["dtype"]))


def _signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(_KEY_SEED)


def _public_key_b64() -> str:
    raw = _signing_key().public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = int(np.logical_or(a, b).sum())
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum()) / union


def _save_mask(path: Path, mask: np.ndarray) -> None:
    np.save(path, np.packbits(mask.astype(bool), axis=None))


def _load_mask(path: Path, shape: Sequence[int]) -> np.ndarray:
    bits = np.load(path)
    return np.unpackbits(bits, count=int(np.prod(shape))).reshape(shape).astype(bool)


# ---------------------------------------------------------------------------------------------- the stages


@dataclass(frozen=True)
class _Stages:
    """What the reference pipeline computes for one photo on one runtime."""

    rgb: np.ndarray
    square: np.ndarray
    box: dict[str, Any]
    seg_input: np.ndarray | None  # int8 (TFLite) or None (ONNX takes float)
    logits: np.ndarray  # first-pass mask logits as the runtime's output tensor (int8 TFLite, float32 ONNX)
    result: Result
    embed_input: np.ndarray | None  # int8, rotation view 0


def _run_stages(photo: Path, seg_model: LoadedModel, recognizer: Recognizer,
                params: dict[str, dict[str, Any]] | None) -> _Stages:
    rgb = load_image(photo)
    seg_meta = recognizer.segmenter_meta
    square, box = letterbox(rgb, seg_meta.input.size_px, seg_meta.input.pad_value)
    dequantized = np.asarray(seg_model.predict(square), np.float32).reshape(square.shape[:2])
    seg_params = params["segmenter"] if params else None
    if seg_params is not None:
        seg_input = quantize_tensor(to_model_input(square, seg_meta.input), _detail(seg_params["input"]))
        logits = _raw_output(dequantized, seg_params["output"])
    else:
        seg_input, logits = None, dequantized
    result = recognizer.recognize(photo, top_k=TOP_K)
    emb_meta = recognizer.embedder_meta
    embed_input = None
    if params:
        view0 = rotation_views(result.crop, recognizer.embed_rotations, fill_value=emb_meta.input.pad_value)[0]
        embed_input = quantize_tensor(to_model_input(view0, emb_meta.input), _detail(params["embedder"]["input"]))
    return _Stages(
        rgb=rgb, square=square,
        box={"scale": box.scale, "pad_x": box.pad_x, "pad_y": box.pad_y, "src_h": box.src_h, "src_w": box.src_w},
        seg_input=seg_input, logits=logits, result=result, embed_input=embed_input,
    )


def _segmentation_json(result: Result) -> dict[str, Any]:
    seg = result.segmentation
    return {
        "found": seg.found,
        "passes": seg.passes,
        "tiled": seg.tiled,
        "bbox": list(map(int, seg.bbox)) if seg.bbox is not None else None,
        "mask_area": int(seg.mask.sum()) if seg.mask is not None else 0,
        "first_pass_area": int(seg.first_pass_mask.sum()) if seg.first_pass_mask is not None else 0,
    }


# ---------------------------------------------------------------------------------------------- generate


def _build_pack(catalog: Path, recognizer: Recognizer) -> Pack:
    """One coin per class folder of ``catalog/images/<class>/``, its photos embedded by ``recognizer``."""
    vectors, ids = [], []
    classes = sorted(p for p in (catalog / "images").iterdir() if p.is_dir())
    if not classes:
        raise ConfigError(f"catalog {catalog}: no images/<class_id>/ folders; pass a dataset folder like "
                          "examples/sample_coins/euro_phone")
    for folder in classes:
        for photo in sorted(folder.glob("*.jpg")):
            vectors.append(recognizer.embed(photo).vector)
            ids.append(folder.name)
    records = [CoinRecord(coin_id=c.name, label=c.name) for c in classes]
    return Pack.from_vectors(np.stack(vectors), ids, records, catalog_id=CATALOG_ID, catalog_version=1,
                             model_fingerprint=recognizer.fingerprint, quant="int8", created_at=PACK_CREATED_AT)


def _signed_manifest(pack: Pack, size: int) -> dict[str, Any]:
    """The manifest a sync server would serve for this pack (same fields, ``sync_server.api.manifest``)."""
    payload = {
        "format": 1, "catalog_id": CATALOG_ID, "issued_at": MANIFEST_ISSUED_AT, "expires_at": MANIFEST_EXPIRES_AT,
        "version": pack.catalog_version,
        "created_at": datetime.fromtimestamp(pack.created_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model_fingerprint": pack.model_fingerprint, "coin_count": pack.coin_count,
        "vector_count": pack.vector_count, "quant": pack.quant,
        "pack": {"url": "pack/golden.pack", "size": size, "sha256": pack.sha256}, "delta": None,
    }
    key = _signing_key()
    public_raw = base64.b64decode(_public_key_b64())
    return {"payload": payload, "signature": base64.b64encode(key.sign(canonical_json(payload))).decode("ascii"),
            "key_id": _sha256(public_raw)[:16]}


def _write_json(path: Path, doc: Any) -> None:
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def generate_kit(kit_dir: str | Path, photos: Sequence[str | Path], catalog: str | Path,
                 models_dir: str | Path | None = None) -> Path:
    """Write the kit for ``photos`` (copied into the kit) with the models of ``models_dir`` (default: the
    release models) and a golden pack of ``catalog``'s photos. Replaces an existing kit's files."""
    kit = Path(kit_dir)
    models = Path(models_dir) if models_dir is not None else default_models_dir()
    catalog = Path(catalog)
    if not photos:
        raise ConfigError("no photos given; pass --photos with a few sample photos (examples/sample_coins)")
    for sub in ("photos", "golden", "pack"):
        shutil.rmtree(kit / sub, ignore_errors=True)
        (kit / sub).mkdir(parents=True)

    recognizers = {rt: Recognizer.from_dir(models, runtime=rt, num_threads=1) for rt in RUNTIMES}
    seg_models = {rt: load_model(models / f"segmenter.{rt}", num_threads=1) for rt in RUNTIMES}
    pack = _build_pack(catalog, recognizers["tflite"])
    pack_bytes = pack.to_bytes()
    (kit / "pack" / "golden.pack").write_bytes(pack_bytes)
    _write_json(kit / "pack" / "manifest.json", _signed_manifest(pack, len(pack_bytes)))
    (kit / "pack" / "public_key.b64").write_text(_public_key_b64() + "\n")
    for recognizer in recognizers.values():
        recognizer.load_pack(pack)

    model_info: dict[str, Any] = {}
    for rt in RUNTIMES:
        model_info[rt] = {}
        for kind in ("segmenter", "embedder"):
            path = models / f"{kind}.{rt}"
            meta = ModelMetadata.read_sidecar(path)
            entry: dict[str, Any] = {"file": path.name, "sha256": _file_sha256(path), "fingerprint": meta.fingerprint,
                                     "quantization": meta.quantization}
            if rt == "tflite":
                entry["tensors"] = _tflite_tensor_params(path)
            model_info[rt][kind] = entry
    tflite_params = {kind: model_info["tflite"][kind]["tensors"] for kind in ("segmenter", "embedder")}

    photo_entries = []
    for source in map(Path, photos):
        folder = source.parent.parent if source.parent.name == "images" else source.parent  # backgrounds/images/x
        photo_id = f"{folder.name}_{source.stem}"
        target = kit / "photos" / f"{photo_id}{source.suffix.lower()}"
        shutil.copyfile(source, target)
        out = kit / "golden" / photo_id
        expected: dict[str, Any] = {}
        for rt in RUNTIMES:
            stages = _run_stages(target, seg_models[rt], recognizers[rt], tflite_params if rt == "tflite" else None)
            (out / rt).mkdir(parents=True, exist_ok=True)
            if rt == "tflite":  # runtime-independent stages, once
                expected["decode"] = {"shape": list(stages.rgb.shape), "sha256": _sha256(stages.rgb.tobytes())}
                expected["letterbox"] = stages.box
                np.save(out / "letterbox.npy", stages.square)
                np.save(out / "seg_input_int8.npy", stages.seg_input)
            np.save(out / rt / "mask_logits.npy", stages.logits)
            res = stages.result
            if res.segmentation.mask is not None:
                _save_mask(out / rt / "mask.npy", res.segmentation.mask)
            np.save(out / rt / "crop.npy", res.crop)
            if stages.embed_input is not None:
                np.save(out / rt / "embed_input_int8.npy", stages.embed_input)
            np.save(out / rt / "embedding.npy", res.sides[0].vector.astype(np.float32))
            expected[rt] = {
                "segmentation": _segmentation_json(res),
                "crop_sha256": _sha256(res.crop.tobytes()),
                "top_k": [{"coin_id": m.coin_id, "score": round(m.score, 6)} for m in res.matches],
                "unknown": res.unknown,
                "unknown_threshold": res.threshold,
            }
        _write_json(out / "expected.json", expected)
        photo_entries.append({"id": photo_id, "file": f"photos/{target.name}", "source": source.as_posix()})

    _write_json(kit / "kit.json", {
        "format": KIT_FORMAT,
        "regenerate": "python -m coinvision.sdk.conformance generate conformance/ --photos "
                      + " ".join(p.as_posix() for p in map(Path, photos))
                      + f" --catalog {catalog.as_posix()} --models {models.as_posix()}",
        "top_k": TOP_K,
        "models": model_info,
        "tolerances": TOLERANCES,
        "pack": {"file": "pack/golden.pack", "sha256": pack.sha256, "size": len(pack_bytes),
                 "catalog_id": CATALOG_ID, "coins": pack.coin_count, "vectors": pack.vector_count,
                 "source": catalog.as_posix()},
        "manifest": {"file": "pack/manifest.json", "public_key_file": "pack/public_key.b64",
                     "verify_at": MANIFEST_ISSUED_AT},
        "photos": photo_entries,
    })
    log.info("conformance kit written to %s: %d photos, %d runtimes", kit, len(photo_entries), len(RUNTIMES))
    return kit


# ---------------------------------------------------------------------------------------------- check


def _read_kit(kit: Path) -> dict[str, Any]:
    path = kit / "kit.json"
    if not path.is_file():
        raise ConfigError(f"{path} is missing: {kit} is not a conformance kit (the repository's is conformance/; "
                          "write one with `python -m coinvision.sdk.conformance generate`)")
    doc = json.loads(path.read_text())
    if doc.get("format") != KIT_FORMAT:
        raise ConfigError(f"{path}: kit format {doc.get('format')!r}, this SDK reads format {KIT_FORMAT}; "
                          "regenerate the kit or upgrade coinvision")
    return doc


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0


def _check_pack_and_manifest(kit: Path, doc: dict[str, Any], add) -> Pack:
    pack_bytes = (kit / doc["pack"]["file"]).read_bytes()
    add("", "", "pack", "sha256", _sha256(pack_bytes), doc["pack"]["sha256"], "equal")
    pack = read_pack(pack_bytes)
    add("", "", "pack", "coins", pack.coin_count, doc["pack"]["coins"], "equal")
    add("", "", "pack", "vectors", pack.vector_count, doc["pack"]["vectors"], "equal")
    manifest = json.loads((kit / doc["manifest"]["file"]).read_text())
    public_key = (kit / doc["manifest"]["public_key_file"]).read_text().strip()
    verified = "verified"
    with tempfile.TemporaryDirectory() as cache:
        client = SyncClient("http://offline.invalid", CATALOG_ID, cache, public_key,
                            expected_fingerprint=pack.model_fingerprint)
        try:
            payload = client.verify_manifest(manifest, now=datetime.fromisoformat(doc["manifest"]["verify_at"]))
        except SyncError as exc:  # the reason becomes the figure, not a crash
            verified, payload = f"refused: {exc}", {}
    add("", "", "manifest", "signature", verified, "verified", "equal")
    add("", "", "manifest", "pack_sha256", payload.get("pack", {}).get("sha256", ""), pack.sha256, "equal")
    add("", "", "manifest", "pack_size", payload.get("pack", {}).get("size", -1), len(pack_bytes), "equal")
    return pack


def check_kit(kit_dir: str | Path, models_dir: str | Path | None = None) -> CheckReport:
    """Run this SDK on the kit's photos and measure every stage against the goldens (tolerances from kit.json).
    Never raises on a mismatch: a miss is a figure whose ``ok`` is False."""
    kit = Path(kit_dir)
    doc = _read_kit(kit)
    models = Path(models_dir) if models_dir is not None else default_models_dir()
    tol = doc["tolerances"]
    figures: list[StageFigure] = []

    def add(photo: str, runtime: str, stage: str, metric: str, value: Any, limit: Any, kind: str) -> None:
        figures.append(StageFigure(photo, runtime, stage, metric, value, limit, kind))

    for rt, kinds in doc["models"].items():
        for kind, info in kinds.items():
            if not (models / info["file"]).is_file():
                raise ModelLoadError(f"{models / info['file']} is missing: the kit was written with the release models "
                                     f"({info['file']}, sha256 {info['sha256'][:12]}…); pass --models models/release")
            add("", rt, f"model:{kind}", "sha256", _file_sha256(models / info["file"]), info["sha256"], "equal")
    pack = _check_pack_and_manifest(kit, doc, add)
    tflite_params = {kind: doc["models"]["tflite"][kind]["tensors"] for kind in ("segmenter", "embedder")}
    recognizers = {rt: Recognizer.from_dir(models, runtime=rt, num_threads=1, pack=pack) for rt in RUNTIMES}
    seg_models = {rt: load_model(models / f"segmenter.{rt}", num_threads=1) for rt in RUNTIMES}

    for entry in doc["photos"]:
        pid, photo = entry["id"], kit / entry["file"]
        golden = kit / "golden" / pid
        expected = json.loads((golden / "expected.json").read_text())
        for rt in RUNTIMES:
            s = _run_stages(photo, seg_models[rt], recognizers[rt], tflite_params if rt == "tflite" else None)
            if rt == "tflite":
                add(pid, "", "decode", "shape", "x".join(map(str, s.rgb.shape)),
                    "x".join(map(str, expected["decode"]["shape"])), "equal")
                add(pid, "", "decode", "sha256", _sha256(s.rgb.tobytes()), expected["decode"]["sha256"], "equal")
                for key, want in expected["letterbox"].items():
                    add(pid, "", "letterbox", key, s.box[key], want, "equal")
                add(pid, "", "letterbox", "square_max_abs_levels",
                    _max_abs(s.square, np.load(golden / "letterbox.npy")), tol["letterbox_max_abs_levels"], "max")
                add(pid, "", "seg_input_int8", "max_abs_lsb",
                    _max_abs(s.seg_input, np.load(golden / "seg_input_int8.npy")), tol["seg_input_max_abs_lsb"], "max")
            want_rt = expected[rt]
            logits_metric, logits_tol = (("max_abs_lsb", tol["tflite_logits_max_abs_lsb"]) if rt == "tflite"
                                         else ("max_abs", tol["onnx_logits_max_abs"]))
            add(pid, rt, "mask_logits", logits_metric, _max_abs(s.logits, np.load(golden / rt / "mask_logits.npy")),
                logits_tol, "max")
            seg, want_seg = _segmentation_json(s.result), want_rt["segmentation"]
            add(pid, rt, "segmentation", "found", str(seg["found"]), str(want_seg["found"]), "equal")
            add(pid, rt, "segmentation", "passes", seg["passes"], want_seg["passes"], "equal")
            add(pid, rt, "segmentation", "tiled", str(seg["tiled"]), str(want_seg.get("tiled", False)), "equal")
            if want_seg["found"] and seg["found"]:
                bbox_diff = float(np.max(np.abs(np.subtract(seg["bbox"], want_seg["bbox"]))))
                add(pid, rt, "segmentation", "bbox_max_abs_px", bbox_diff, tol["bbox_max_abs_px"], "max")
                want_mask = _load_mask(golden / rt / "mask.npy", s.rgb.shape[:2])
                add(pid, rt, "segmentation", "mask_iou", _mask_iou(s.result.segmentation.mask, want_mask),
                    tol["mask_min_iou"], "min")
            crop_want = np.load(golden / rt / "crop.npy")
            crop_mean = (float(np.mean(np.abs(s.result.crop.astype(np.float64) - crop_want)))
                         if crop_want.shape == s.result.crop.shape else float("inf"))
            add(pid, rt, "crop", "mean_abs_levels", crop_mean, tol["crop_mean_abs_levels"], "max")
            if s.embed_input is not None:
                add(pid, rt, "embed_input_int8", "max_abs_lsb",
                    _max_abs(s.embed_input, np.load(golden / rt / "embed_input_int8.npy")),
                    tol["embed_input_max_abs_lsb"], "max")
            vector, want_vec = s.result.sides[0].vector, np.load(golden / rt / "embedding.npy")
            cosine = float(vector @ want_vec) if vector.shape == want_vec.shape else -1.0
            add(pid, rt, "embedding", "cosine", cosine, tol["embedding_min_cosine"], "min")
            got_ids = [m.coin_id for m in s.result.matches]
            add(pid, rt, "top_k", "coin_ids", " ".join(got_ids), " ".join(m["coin_id"] for m in want_rt["top_k"]),
                "equal")
            score_diff = max((abs(m.score - w["score"]) for m, w in zip(s.result.matches, want_rt["top_k"],
                                                                      strict=False)), default=0.0)
            add(pid, rt, "top_k", "score_max_abs", score_diff, tol["score_max_abs"], "max")
            add(pid, rt, "top_k", "unknown", str(s.result.unknown), str(want_rt["unknown"]), "equal")
    return CheckReport(tuple(figures))


# ---------------------------------------------------------------------------------------------- command line


def _format_value(value: float | str) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    text = str(value)
    return text if len(text) <= 40 else text[:18] + "…" + text[-18:]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coinvision.sdk.conformance", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="check this SDK against a kit; exit 1 when a stage misses its tolerance")
    check.add_argument("kit", type=Path)
    check.add_argument("--models", type=Path, default=None, help="models folder (default: the release models)")
    check.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")
    gen = sub.add_parser("generate", help="(re)write a kit from photos, a catalog and the models")
    gen.add_argument("kit", type=Path)
    gen.add_argument("--photos", type=Path, nargs="+", required=True)
    gen.add_argument("--catalog", type=Path, required=True, help="dataset folder (images/<class>/) for the pack")
    gen.add_argument("--models", type=Path, default=None, help="models folder (default: the release models)")
    args = parser.parse_args(argv)
    try:
        if args.command == "generate":
            kit = generate_kit(args.kit, args.photos, args.catalog, args.models)
            size = sum(p.stat().st_size for p in kit.rglob("*") if p.is_file())
            print(f"kit written to {kit} ({size / 1e6:.2f} MB)")
            return 0
        report = check_kit(args.kit, args.models)
    except CoinVisionError as exc:  # a missing kit or model file: the message names it and the fix
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for f in report.figures:
        where = "/".join(x for x in (f.photo, f.runtime) if x) or "kit"
        op = {"max": "<=", "min": ">=", "equal": "=="}[f.kind]
        print(f"{'ok  ' if f.ok else 'MISS'} {where:<32} {f.stage + '.' + f.metric:<34} "
              f"{_format_value(f.value):>20} {op} {_format_value(f.limit)}")
    if args.json is not None:
        args.json.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    print(f"{len(report.figures) - len(report.failures)}/{len(report.figures)} figures within tolerance")
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
