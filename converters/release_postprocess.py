"""Change a released model's pipeline values that are not weights, in every shipped file, without re-exporting:
the segmenter's post-processing (spec step 2: how its probability map becomes the mask) or the embedder's crop
(spec step 3: which pixels of the photo it sees).

    python -m coinvision.converters.release_postprocess models/release --set tile_frac=0.5
    python -m coinvision.converters.release_postprocess models/release --kind embedder --set crop_mask=convex_hull

Segmenter: the keys ``coinvision train segmenter-postprocess`` sets on a checkpoint
(``trainer.seg_model.POSTPROCESS_KEYS``; the release rebuild, ``make release-segmenter``, sets them there). Embedder:
``EMBEDDER_CROP_KEYS`` (``make release-embedder-branch`` sets them after its export). Each ``<kind>.*`` file of
``release.json`` is checked against its recorded sha256, gets the new values in its embedded metadata and its
sidecar, and its ``release.json`` entry is rewritten (bytes, sha256, the values under ``postprocess``). The new
values are checked the way every SDK reads them (``SegmenterParams`` / ``CropParams``) before anything is written;
the folder is rebuilt beside the release and swapped in, so a failure leaves the release as it was.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from coinvision.converters.manifest import digest
from coinvision.converters.metadata import rewrite_metadata
from coinvision.converters.release import released_files
from coinvision.sdk.errors import CoinVisionError, ConfigError
from coinvision.sdk.model_meta import ModelMetadata
from coinvision.sdk.recognizer import CropParams
from coinvision.sdk.segmenter import SegmenterParams
from coinvision.trainer.config_io import parse_overrides
from coinvision.trainer.seg_model import POSTPROCESS_KEYS

__all__ = ["EMBEDDER_CROP_KEYS", "set_release_postprocess"]

# embedder metadata ``extra`` keys of the crop (spec steps 3-4) that leave the weights as they are
EMBEDDER_CROP_KEYS = ("crop_margin_frac", "crop_mask", "embed_rotations")
KINDS: dict[str, tuple[tuple[str, ...], Callable[[ModelMetadata], object]]] = {
    "segmenter": (POSTPROCESS_KEYS, SegmenterParams.from_metadata),
    "embedder": (EMBEDDER_CROP_KEYS, CropParams.from_metadata),
}


def set_release_postprocess(release_dir: str | Path, changes: dict[str, Any],
                            kind: str = "segmenter") -> dict[str, Any]:
    """Write ``changes`` (``kind``'s keys, see the module docstring; ``None`` removes a key) into every released
    ``kind`` file. Returns its ``extra`` as it now reads."""
    release_dir = Path(release_dir)
    if kind not in KINDS:
        raise ConfigError(f"kind {kind!r}: use one of {', '.join(KINDS)}")
    keys, check = KINDS[kind]
    unknown = sorted(set(changes) - set(keys))
    if unknown:
        raise ConfigError(f"{', '.join(unknown)}: not {kind} keys that leave the weights as they are; these are "
                          f"{', '.join(keys)}")
    info, files = released_files(release_dir, kind)
    updated = {name: _with_changes(ModelMetadata.read_sidecar(path), changes) for name, path in files.items()}
    for name, meta in updated.items():
        try:
            check(meta)
        except (ConfigError, TypeError, ValueError) as exc:
            raise ConfigError(f"{release_dir / name}: {exc}") from exc
    staging = release_dir.with_name(release_dir.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(release_dir, staging)
    for name, meta in updated.items():
        rewrite_metadata(staging / name, meta)
        size, sha256 = digest(staging / name)
        info["files"][name].update(bytes=size, sha256=sha256)
    info.setdefault("postprocess", {}).setdefault(kind, {}).update(changes)
    (staging / "release.json").write_text(json.dumps(info, indent=2) + "\n")
    previous = release_dir.with_name(release_dir.name + ".previous")
    shutil.rmtree(previous, ignore_errors=True)
    release_dir.rename(previous)
    staging.rename(release_dir)
    shutil.rmtree(previous)
    return next(iter(updated.values())).extra


def _with_changes(meta: ModelMetadata, changes: dict[str, Any]) -> ModelMetadata:
    extra = dict(meta.extra)
    for key, value in changes.items():
        if key == "threshold":
            continue
        if value is None:
            extra.pop(key, None)
        else:
            extra[key] = value
    threshold = changes.get("threshold", meta.threshold)
    return dataclasses.replace(meta, extra=extra, threshold=threshold)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("release_dir", type=Path, help="the release folder, e.g. models/release")
    parser.add_argument("--kind", choices=tuple(KINDS), default="segmenter", help="which model (default segmenter)")
    parser.add_argument("--set", nargs="+", required=True, metavar="KEY=VALUE",
                        help=f"segmenter: {', '.join(POSTPROCESS_KEYS)}; embedder: {', '.join(EMBEDDER_CROP_KEYS)}; "
                             "VALUE null removes the key")
    args = parser.parse_args(argv)
    try:
        extra = set_release_postprocess(args.release_dir, parse_overrides(args.set), args.kind)
    except CoinVisionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    values = {key: extra.get(key) for key in KINDS[args.kind][0] if key in extra}
    what = "post-processing" if args.kind == "segmenter" else "crop"
    print(f"{args.release_dir}: {args.kind} {what} now {json.dumps(values, sort_keys=True)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
