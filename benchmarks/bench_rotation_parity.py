"""Parity of the shipped int8 embedder against its fp32 ONNX twin, per view and with the SDK's 4-view rotation
averaging, on every held-out query photo (crops: the shipped segmenter's two-pass masks, SDK preprocessing).

    python -m benchmarks.bench_rotation_parity [--models models/release] [--photos runs/split/query]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

OUT = Path(__file__).parent / "results" / "embedder_rotation_parity.json"


def main(argv: list[str] | None = None) -> int:
    from coinvision.converters.parity import ParitySet, measure_parity
    from coinvision.converters.photo_inputs import list_photos, model_squares
    from coinvision.sdk.recognizer import CropParams
    from coinvision.sdk.runtimes import load_model
    from coinvision.sdk.segmenter import Segmenter

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=Path("models/release"))
    parser.add_argument("--photos", type=Path, default=Path("runs/split/query"), help="<class>/<image> folder")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    segmenter = Segmenter.from_dir(args.models, runtime="onnx", num_threads=1)  # parameters from its metadata
    reference, candidate = load_model(args.models / "embedder.onnx", 1), load_model(args.models / "embedder.tflite", 1)
    meta = candidate.meta
    crop = CropParams.from_metadata(meta)
    squares = model_squares("embedder", list_photos(args.photos), args.photos, meta.input.size_px, segmenter.segment,
                            crop_margin_frac=crop.crop_margin_frac, interpolation=crop.interpolation)
    figures = {}
    for rotations in (1, crop.embed_rotations):
        parity_set = ParitySet(squares.squares, squares.labels, squares.sources, rotations)
        figures[f"rotations_{rotations}"] = measure_parity("embedder", reference.predict, candidate.predict, parity_set)
        print(rotations, {k: round(v, 4) for k, v in figures[f"rotations_{rotations}"].items()}, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "command": "python -m benchmarks.bench_rotation_parity", "reference": "embedder.onnx (fp32)",
        "candidate": f"embedder.tflite ({meta.quantization})", "photos": str(args.photos),
        "crops": "two-pass masks of segmenter.onnx (sdk.segmenter.Segmenter)", "figures": figures}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
