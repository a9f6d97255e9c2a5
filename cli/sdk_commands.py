"""The pipeline's commands, on the SDK alone: ``recognize`` (photos -> coin names, as a phone does it), ``embed``
(a folder of photos -> an ``.npz`` of embeddings), ``segment`` (photos -> coin masks) and ``eval retrieval``
(Recall@k of a catalog/query folder pair). All of them run with the SDK extra only (TFLite by default);
``--runtime torch`` runs the trainer's checkpoints through the same pipeline and needs the train extra.

``coinvision recognize`` output is a public interface: keep the JSON keys and the table layout stable.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from coinvision.sdk.recognizer import Result

from coinvision.cli.options import add_model_options, load_recognizer, load_segmenter, positive_int
from coinvision.sdk.files import list_images

__all__ = ["register", "result_to_json"]


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

    recognizer = load_recognizer(args)
    recognizer.load_pack(args.pack)
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


def _cmd_embed(args: argparse.Namespace) -> int:
    import numpy as np
    from coinvision.sdk.errors import DatasetError, ImageError
    from tqdm import tqdm

    files = list_images(args.image_dir)
    recognizer = load_recognizer(args)
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


def _cmd_segment(args: argparse.Namespace) -> int:
    import cv2
    import numpy as np
    from coinvision.sdk.errors import DatasetError, ImageError
    from coinvision.sdk.images import load_image
    from tqdm import tqdm

    files = list_images(args.image_dir)
    segmenter = load_segmenter(args)
    written = no_coin = tiled = skipped = 0
    for path in tqdm(files, desc="segment", unit="img", disable=args.quiet):
        try:
            image = load_image(path)
        except ImageError as exc:  # one bad photo does not stop the others
            tqdm.write(f"warning: skipped {exc}", file=sys.stderr)
            skipped += 1
            continue
        seg = segmenter.segment(image, two_pass=not args.one_pass)
        mask = np.zeros(image.shape[:2], np.uint8) if seg.mask is None else seg.mask.astype(np.uint8) * 255
        no_coin += seg.mask is None
        tiled += seg.tiled and seg.mask is not None
        target = args.out / path.relative_to(args.image_dir).with_suffix(".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(target), mask):
            raise DatasetError(f"could not write {target}; check that the output folder is writable")
        written += 1
    print(f"wrote {written} mask(s) to {args.out}; no coin found in {no_coin} (their masks are all 0); "
          f"{tiled} coin(s) found only by the closer look at tiles of the photo (small in it); "
          f"skipped {skipped} unreadable image(s)")
    return 1 if skipped else 0


def _cmd_eval_retrieval(args: argparse.Namespace) -> int:
    from coinvision.sdk.evaluation import evaluate_folders, format_table

    recognizer = load_recognizer(args, embedder_checkpoint=args.checkpoint)

    def embed(image):
        return recognizer.embed(image).vector

    metrics = evaluate_folders(args.catalog_dir, args.query_dir, embed, distractor_dir=args.distractors,
                               distractors_per_class=args.distractors_per_class, unknown_target=args.calibrate_unknown)
    print(format_table(metrics, title=f"{args.runtime} {args.models or 'release models'}"))
    if args.plot:
        from coinvision.trainer.plotting import plot_recall_at_k  # matplotlib: the train extra

        print(f"plot: {plot_recall_at_k(metrics, args.plot)}")
    return 0


def _unknown_share(value: str) -> float:
    share = float(value)
    if not 0.0 <= share < 1.0:
        raise argparse.ArgumentTypeError(f"{share}: a share in [0, 1), e.g. 0.05")
    return share


def eval_subparsers(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The ``eval`` group's subparsers, created on first use (other command modules may add evaluations)."""
    if "eval" not in sub.choices:
        evaluate = sub.add_parser("eval", help="evaluate models")
        evaluate.add_subparsers(dest="eval_command", metavar="WHAT", required=True)
    return sub.choices["eval"]._subparsers._group_actions[0]


def register(sub: argparse._SubParsersAction) -> None:
    rec = sub.add_parser("recognize", help="name the coin in each photo (offline, with the release models + a pack)")
    rec.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="photo file(s)")
    rec.add_argument("--pack", required=True, type=Path, help="catalog embedding pack (coinvision pack build)")
    rec.add_argument("--top-k", type=positive_int, default=5, help="matches to report per photo (default 5)")
    rec.add_argument("--json", action="store_true", help="one JSON object per photo instead of a table")
    add_model_options(rec)
    rec.set_defaults(func=_cmd_recognize)

    emb = sub.add_parser("embed", help="embed every photo under a folder through the full pipeline -> .npz")
    emb.add_argument("image_dir", type=Path, metavar="IMAGE_DIR")
    emb.add_argument("--out", type=Path, required=True, help="output .npz (paths, embeddings, no_coin)")
    add_model_options(emb, torch=True)
    emb.add_argument("--quiet", action="store_true", help="no progress bar")
    emb.set_defaults(func=_cmd_embed)

    segment = sub.add_parser("segment", help="write a 0/255 coin mask PNG for every image under a folder")
    segment.add_argument("image_dir", type=Path, help="folder of images (searched recursively)")
    segment.add_argument("--out", type=Path, required=True, help="mask folder (same relative paths, .png)")
    add_model_options(segment, torch=True)
    segment.add_argument("--one-pass", action="store_true", help="skip the second (refinement) pass")
    segment.add_argument("--quiet", action="store_true", help="no progress bar")
    segment.set_defaults(func=_cmd_segment)

    retrieval = eval_subparsers(sub).add_parser("retrieval", help="Recall@k / MAP@R of two <class>/<image> folders")
    retrieval.add_argument("catalog_dir", type=Path, help="reference photos, <class>/<image>")
    retrieval.add_argument("query_dir", type=Path, help="photos to search, <class>/<image>")
    add_model_options(retrieval, torch=True)
    retrieval.add_argument("--checkpoint", type=Path, default=None,
                           help="torch: embedder checkpoint to use instead of <models>/embedder.pt")
    retrieval.add_argument("--plot", type=Path, default=None,
                           help="also write the Recall@k bar chart (PNG; needs matplotlib)")
    retrieval.add_argument("--distractors", type=Path, default=None, metavar="DIR",
                           help="<class>/<image> folder of more coins (e.g. the training classes) added to the catalog")
    retrieval.add_argument("--distractors-per-class", type=positive_int, default=3)
    retrieval.add_argument("--calibrate-unknown", type=_unknown_share, default=None, metavar="SHARE",
                           help="also print the cosine threshold that lets SHARE (e.g. 0.05) of unknown coins through")
    retrieval.set_defaults(func=_cmd_eval_retrieval)
