"""The ``coinvision`` command. Each code folder contributes subcommands through its own ``cli.register``.

Subcommand modules import their heavy dependencies (torch, tensorflow, flask) inside the handlers, so
``coinvision --help`` and the SDK commands work on an SDK-only install.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from coinvision.sdk.errors import CoinVisionError

__all__ = ["main"]

# Order = order in --help.
_COMMAND_MODULES = (
    "coinvision.cli.train_commands",
    "coinvision.cli.export_commands",
    "coinvision.cli.pack_commands",
    "coinvision.cli.sdk_commands",
    "coinvision.cli.server_commands",
    "coinvision.cli.catalog_commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coinvision", description="Offline coin recognition: train, export, pack, recognize, serve."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("coinvision"):
                continue  # that part of the project is not built yet
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    # faiss logs each CPU-feature build it could not load (a two-line traceback per try) at INFO
    logging.getLogger("faiss.loader").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except CoinVisionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        print(
            f"error: this command needs the Python package {exc.name!r}, which is not installed; "
            "install the matching extra, e.g. pip install 'coinvision[all]'",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
