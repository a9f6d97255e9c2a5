"""Options every model-running command shares (``--models``, ``--runtime``, ``--threads``) and the one way
they turn into the SDK's ``Recognizer`` / ``Segmenter``: the same defaults for every command.

``--models`` defaults to :func:`coinvision.sdk.model_meta.default_models_dir` (``$COINVISION_MODELS_DIR``, else the
release models installed with coinvision), so the commands work from any working directory. ``--runtime
torch`` runs the trainer's checkpoints (``segmenter.pt`` / ``embedder.pt`` in ``--models``) through the same
SDK pipeline (``coinvision.trainer.torch_runtime``); it needs the ``train`` extra.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from coinvision.sdk.recognizer import RUNTIMES

if TYPE_CHECKING:
    from coinvision.sdk.recognizer import Recognizer
    from coinvision.sdk.segmenter import Segmenter

__all__ = ["DEFAULT_RUNTIME", "add_model_options", "load_recognizer", "load_segmenter", "models_dir", "positive_int"]

DEFAULT_RUNTIME = RUNTIMES[0]  # the SDK's default (tflite): what a phone runs
TORCH = "torch"


def positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n}: must be >= 1")
    return n


def add_model_options(parser: argparse.ArgumentParser, *, torch: bool = False) -> None:
    """``--models``, ``--runtime`` (``torch`` too when the command offers it) and ``--threads``."""
    runtimes = (*RUNTIMES, TORCH) if torch else RUNTIMES
    parser.add_argument("--models", type=Path, default=None, metavar="DIR",
                        help="exported models folder (default: $COINVISION_MODELS_DIR, else the installed release "
                             "models)" + ("; torch: the folder of segmenter.pt / embedder.pt" if torch else ""))
    parser.add_argument("--runtime", choices=runtimes, default=DEFAULT_RUNTIME,
                        help=f"model runtime (default {DEFAULT_RUNTIME}; coreml only on macOS)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="runtime threads (default: the runtime's own choice)")


def models_dir(args: argparse.Namespace) -> Path:
    from coinvision.sdk.model_meta import default_models_dir

    return args.models if args.models is not None else default_models_dir()


def _checkpoint(folder: Path, name: str) -> Path:
    from coinvision.sdk.errors import ModelLoadError

    path = folder / name
    if not path.is_file():
        raise ModelLoadError(f"{path}: --runtime torch needs the trainer checkpoint {name} in --models; "
                             "pass the folder holding it, or use --runtime tflite/onnx with exported models")
    return path


def load_recognizer(args: argparse.Namespace, *, embedder_checkpoint: Path | None = None) -> Recognizer:
    folder = models_dir(args)
    if args.runtime == TORCH:
        from coinvision.trainer.torch_runtime import torch_recognizer

        return torch_recognizer(_checkpoint(folder, "segmenter.pt"),
                                embedder_checkpoint or _checkpoint(folder, "embedder.pt"), args.threads)
    from coinvision.sdk.recognizer import Recognizer

    return Recognizer.from_dir(folder, runtime=args.runtime, num_threads=args.threads)


def load_segmenter(args: argparse.Namespace) -> Segmenter:
    folder = models_dir(args)
    if args.runtime == TORCH:
        from coinvision.trainer.torch_runtime import torch_segmenter

        return torch_segmenter(_checkpoint(folder, "segmenter.pt"), args.threads)
    from coinvision.sdk.segmenter import Segmenter

    return Segmenter.from_dir(folder, runtime=args.runtime, num_threads=args.threads)
