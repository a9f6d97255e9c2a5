"""``coinvision serve``, ``token create|list|revoke``, ``keys public``, ``cleanup``. Flask is imported in handlers."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from coinvision.sync_server.config import ServerConfig
    from sqlalchemy.orm import Session

__all__ = ["register"]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", dest="db_url", default=None,
                   help="SQLAlchemy URL (default: $COINVISION_DB_URL or sqlite in the data dir)")
    p.add_argument("--data-dir", default=None, help="packs, images, signing key (default: $COINVISION_DATA_DIR "
                   "or ./coinvision-data)")
    p.add_argument("--storage", default=None,
                   help="where photos, packs and deltas live: s3://BUCKET/PREFIX, shared by replicas (default: "
                   "$COINVISION_STORAGE, else the data dir); a non-AWS endpoint via $COINVISION_S3_ENDPOINT_URL, "
                   "credentials via the usual AWS_* variables")


def register(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="run the catalog sync server (development server; see "
                           "docs/DEPLOYMENT.md for gunicorn behind nginx)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    _common(serve)
    serve.add_argument("--models", dest="models_dir", default=None,
                       help="folder with the release segmenter/embedder ONNX exports + sidecars")
    serve.set_defaults(func=_serve)

    token = sub.add_parser("token", help="API tokens: create, list, revoke")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    create = token_sub.add_parser("create", help="create a token and print it (shown once; stored hashed)")
    create.add_argument("--scope", choices=("maintainer", "device"), required=True)
    create.add_argument("--label", default="")
    create.add_argument("--expires-in", default=None,
                        help="12h, 90d, 2w or never (default: 90d for maintainer, never for device tokens, which "
                        "ship inside app builds)")
    _common(create)
    create.set_defaults(func=_token_create)
    listing = token_sub.add_parser("list", help="list tokens (id, scope, label, created, expires, state); "
                                   "secrets are not stored and never shown")
    listing.add_argument("--json", action="store_true", help="one JSON array instead of a table")
    _common(listing)
    listing.set_defaults(func=_token_list)
    revoke = token_sub.add_parser("revoke", help="revoke a token by its id (see token list); takes effect at once")
    revoke.add_argument("token_id", type=int)
    _common(revoke)
    revoke.set_defaults(func=_token_revoke)

    keys = sub.add_parser("keys", help="manifest signing key")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    public = keys_sub.add_parser("public", help="print the Ed25519 public key (base64) devices verify with; reads "
                                 "the existing key, never creates one")
    public.add_argument("--data-dir", default=None)
    public.set_defaults(func=_keys_public)

    cleanup = sub.add_parser("cleanup", help="remove photo files no reference names and pack files older than the "
                             "retention (run it from cron)")
    _common(cleanup)
    cleanup.set_defaults(func=_cleanup)


def _config(args: argparse.Namespace) -> ServerConfig:
    from coinvision.sync_server.config import ServerConfig

    return ServerConfig.resolve(data_dir=args.data_dir, db_url=getattr(args, "db_url", None),
                                models_dir=getattr(args, "models_dir", None), storage=getattr(args, "storage", None))


def _session(cfg: ServerConfig) -> Session:
    from coinvision.sync_server.db import make_engine, make_sessionmaker, upgrade_database

    engine = make_engine(cfg.db_url)
    upgrade_database(engine)
    return make_sessionmaker(engine)()


def _serve(args: argparse.Namespace) -> int:
    from coinvision.sync_server.app import create_app
    from coinvision.sync_server.live import QuietRequestHandler
    from werkzeug.serving import run_simple

    app = create_app(_config(args))
    print(f"serving on http://{args.host}:{args.port}", flush=True)
    run_simple(args.host, args.port, app, threaded=True, use_reloader=False, request_handler=QuietRequestHandler)
    return 0


def _token_create(args: argparse.Namespace) -> int:
    from coinvision.sync_server.app import prepare_data_dir
    from coinvision.sync_server.auth import DEFAULT_EXPIRY, create_token, parse_duration

    expires_in = parse_duration(args.expires_in or DEFAULT_EXPIRY[args.scope])
    cfg = _config(args)
    prepare_data_dir(cfg)  # the first setup step: the data dir and its signing key exist from here on
    with _session(cfg) as session:
        print(create_token(session, args.scope, args.label, expires_in))
    return 0


def _token_list(args: argparse.Namespace) -> int:
    from coinvision.sync_server.auth import list_tokens, token_info

    with _session(_config(args)) as session:
        rows = [token_info(t) for t in list_tokens(session)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no tokens; create one with: coinvision token create --scope maintainer")
        return 0
    cols = ("id", "scope", "state", "created_at", "expires_at", "label")
    table = [[str(r[c] if r[c] is not None else "never") for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in table)) for i, c in enumerate(cols)]
    for row in [list(cols), *table]:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _token_revoke(args: argparse.Namespace) -> int:
    from coinvision.sync_server.auth import revoke_token

    with _session(_config(args)) as session:
        row = revoke_token(session, args.token_id)
        print(f"revoked token {row.id} ({row.scope}{', ' + row.label if row.label else ''})")
    return 0


def _keys_public(args: argparse.Namespace) -> int:
    from coinvision.sync_server.signing import load_key, public_key_b64

    print(public_key_b64(load_key(_config(args).key_path)))
    return 0


def _cleanup(args: argparse.Namespace) -> int:
    from coinvision.sync_server.cleanup import remove_orphans
    from coinvision.sync_server.storage import open_store

    cfg = _config(args)
    with _session(cfg) as session:
        report = remove_orphans(session, open_store(cfg), cfg.pack_retention_versions, cfg.orphan_grace_s)
    print(f"removed {report.photos_removed} photo file(s) and {report.pack_files_removed} pack/delta file(s)")
    return 0
