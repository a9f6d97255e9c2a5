"""SDK subcommands: ``recognize`` (photos -> coin names, as a phone does it) and ``embed`` (a folder of photos ->
an ``.npz`` of embeddings through the full pipeline).

``coinvision recognize`` output is a public interface: keep the JSON keys and the table layout stable.
Heavy imports (torch for ``embed --runtime torch``) happen inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from coinvision.sdk.recognizer import Recognizer, Result

from coinvision.sdk.files import list_images

__all__ = ["register", "result_to_json"]

DEFAULT_MODELS_DIR = Path("models/release")


def result_to_json(image: str, result: Result) -> dict[str, Any]:
    """The JSON line ``coinvision recognize --json`` prints for one photo (a stable interface)."""
    return {
        "image": image,
        "unknown": result.unknown,
        "matches": [{"coin_id": m.coin_id, "label": m.label, "score": round(m.score, 6)} for m in result.matches],
        "timings_ms": {stage: round(ms, 3) for stage, ms in result.timings_ms.items()},
        "coin_found": result.segmentation.found,
    }


def _print_table(image: str, result: Result) -> None:
    status = "UNKNOWN coin" if result.unknown else f"{result.matches[0].coin_id}"
    coin = "coin found" if result.segmentation.found else "no coin found (whole photo used)"
    print(f"{image}: {status}  [{coin}; unknown below {result.threshold:.3f}]")
    if result.matches:
        width = max(len("coin_id"), *(len(m.coin_id) for m in result.matches))
        print(f"  {'rank':>4}  {'coin_id':<{width}}  {'score':>7}  label")
        for rank, m in enumerate(result.matches, start=1):
            print(f"  {rank:>4}  {m.coin_id:<{width}}  {m.score:>7.4f}  {m.label}")
    stages = "  ".join(f"{stage} {ms:.1f}" for stage, ms in result.timings_ms.items())
    print(f"  ms: {stages}")


def _cmd_recognize(args: argparse.Namespace) -> int:
    from coinvision.sdk.errors import ImageError
    from coinvision.sdk.recognizer import Recognizer

    recognizer = Recognizer.from_dir(args.models, runtime=args.runtime, num_threads=args.threads, pack=args.pack)
    failed = 0
    for image in args.images:
        try:
            result = recognizer.recognize(image, top_k=args.top_k)
        except ImageError as exc:  # one bad photo does not stop the others
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        if args.json:
            print(json.dumps(result_to_json(str(image), result)), flush=True)
        else:
            _print_table(str(image), result)
    if failed:
        print(f"{failed} of {len(args.images)} image(s) could not be read", file=sys.stderr)
    return 1 if failed else 0


def _torch_recognizer(models_dir: Path, num_threads: int | None) -> Recognizer:
    """The trainer's PyTorch checkpoints (``segmenter.pt``, ``embedder.pt``) behind the same pipeline code."""
    import torch
    from coinvision.converters.runners import torch_predictor
    from coinvision.sdk.errors import ModelLoadError
    from coinvision.sdk.recognizer import Recognizer
    from coinvision.sdk.runtimes import LoadedModel
    from coinvision.trainer.segmenter import load_segmenter, segmenter_metadata

    try:
        from coinvision.trainer.embedder import embedder_metadata, load_embedder
    except ImportError as exc:
        raise ModelLoadError(
            f"--runtime torch needs coinvision.trainer.embedder, which this install lacks ({exc}); "
            "use --runtime onnx or --runtime tflite with exported models"
        ) from exc
    torch.set_num_threads(num_threads or 1)
    seg_path, emb_path = models_dir / "segmenter.pt", models_dir / "embedder.pt"
    seg_model, seg_cfg, seg_ckpt = load_segmenter(seg_path)
    emb_model, emb_cfg, emb_ckpt = load_embedder(emb_path)
    seg_meta = segmenter_metadata(seg_cfg, seg_ckpt.fingerprint)
    emb_meta = embedder_metadata(emb_cfg, emb_ckpt.fingerprint)
    return Recognizer(
        LoadedModel(seg_path, seg_meta, torch_predictor(seg_model, seg_meta.input)),
        LoadedModel(emb_path, emb_meta, torch_predictor(emb_model, emb_meta.input)),
    )


def _cmd_embed(args: argparse.Namespace) -> int:
    import numpy as np
    from coinvision.sdk.errors import DatasetError, ImageError
    from coinvision.sdk.recognizer import Recognizer
    from tqdm import tqdm

    files = list_images(args.image_dir)
    if args.runtime == "torch":
        recognizer = _torch_recognizer(args.models, args.threads)
    else:
        recognizer = Recognizer.from_dir(args.models, runtime=args.runtime, num_threads=args.threads)
    paths: list[str] = []
    vectors: list[np.ndarray] = []
    no_coin: list[bool] = []
    skipped = 0
    for path in tqdm(files, desc="embed", unit="img", disable=args.quiet):
        try:
            emb = recognizer.embed(path)
        except ImageError as exc:
            tqdm.write(f"warning: skipped {exc}", file=sys.stderr)
            skipped += 1
            continue
        paths.append(path.relative_to(args.image_dir).as_posix())
        vectors.append(emb.vector)
        no_coin.append(not emb.segmentation.found)
    if not paths:
        raise DatasetError(f"{args.image_dir}: none of its {len(files)} image(s) could be read; nothing written")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("wb") as fh:  # a file object: np.savez would otherwise append ".npz" to any other name
        np.savez(
            fh,
            paths=np.asarray(paths, dtype=str),
            embeddings=np.asarray(vectors, dtype=np.float32).reshape(len(vectors), recognizer.dim),
            no_coin=np.asarray(no_coin, dtype=bool),
            fingerprint=np.asarray(recognizer.fingerprint),
        )
    tmp.replace(out)
    print(
        f"wrote {out}: {len(paths)} embeddings (dim {recognizer.dim}, embedder {recognizer.fingerprint}, "
        f"{args.runtime}); no coin found in {sum(no_coin)}; skipped {skipped} unreadable image(s)"
    )
    return 0


def _threads(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n}: need at least 1 thread")
    return n


def _top_k(value: str) -> int:
    k = int(value)
    if k < 1:
        raise argparse.ArgumentTypeError(f"{k}: top-k must be >= 1")
    return k


def register(sub: argparse._SubParsersAction) -> None:
    rec = sub.add_parser("recognize", help="name the coin in each photo (offline, with the release models + a pack)")
    rec.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="photo file(s)")
    rec.add_argument("--pack", required=True, type=Path, help="catalog embedding pack (coinvision pack build)")
    rec.add_argument("--top-k", type=_top_k, default=5, help="matches to report per photo (default 5)")
    rec.add_argument("--json", action="store_true", help="one JSON object per photo instead of a table")
    rec.add_argument("--models", type=Path, default=DEFAULT_MODELS_DIR, help="exported models folder")
    rec.add_argument("--runtime", choices=("tflite", "onnx"), default="tflite", help="model runtime")
    rec.add_argument("--threads", type=_threads, default=None, help="runtime threads (default: runtime's own)")
    rec.set_defaults(func=_cmd_recognize)

    emb = sub.add_parser("embed", help="embed every photo under a folder through the full pipeline -> .npz")
    emb.add_argument("image_dir", type=Path, metavar="IMAGE_DIR")
    emb.add_argument("--out", type=Path, required=True, help="output .npz (paths, embeddings, no_coin)")
    emb.add_argument("--runtime", choices=("torch", "onnx", "tflite"), default="tflite",
                     help="torch uses segmenter.pt/embedder.pt checkpoints in --models")
    emb.add_argument("--models", type=Path, default=DEFAULT_MODELS_DIR, help="models folder")
    emb.add_argument("--threads", type=_threads, default=None, help="runtime threads (default: runtime's own)")
    emb.add_argument("--quiet", action="store_true", help="no progress bar")
    emb.set_defaults(func=_cmd_embed)
