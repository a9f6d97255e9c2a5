"""``coinvision serve``, ``coinvision token create``, ``coinvision keys public``. Flask is imported in handlers."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", dest="db_url", default=None,
                   help="SQLAlchemy URL (default: $COINVISION_DB_URL or sqlite in the data dir)")
    p.add_argument("--data-dir", default=None, help="packs, images, signing key (default: $COINVISION_DATA_DIR "
                   "or ./coinvision-data)")


def register(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="run the catalog sync server (development server; see README for gunicorn)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    _common(serve)
    serve.add_argument("--models", dest="models_dir", default=None,
                       help="folder with the release segmenter/embedder ONNX exports + sidecars")
    serve.set_defaults(func=_serve)

    token = sub.add_parser("token", help="API tokens")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    create = token_sub.add_parser("create", help="create a token and print it (shown once; stored hashed)")
    create.add_argument("--scope", choices=("maintainer", "device"), required=True)
    create.add_argument("--label", default="")
    _common(create)
    create.set_defaults(func=_token_create)

    keys = sub.add_parser("keys", help="manifest signing key")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    public = keys_sub.add_parser("public", help="print the Ed25519 public key (base64) devices verify with")
    public.add_argument("--data-dir", default=None)
    public.set_defaults(func=_keys_public)


def _serve(args: argparse.Namespace) -> int:
    from coinvision.sync_server.app import create_app
    from werkzeug.serving import run_simple

    app = create_app(data_dir=args.data_dir, db_url=args.db_url, models_dir=args.models_dir)
    print(f"serving on http://{args.host}:{args.port}", flush=True)
    run_simple(args.host, args.port, app, threaded=True, use_reloader=False)
    return 0


def _token_create(args: argparse.Namespace) -> int:
    from coinvision.sync_server.auth import create_token
    from coinvision.sync_server.config import ServerConfig
    from coinvision.sync_server.db import make_engine, make_sessionmaker, upgrade_database

    cfg = ServerConfig.resolve(data_dir=args.data_dir, db_url=args.db_url)
    engine = make_engine(cfg.db_url)
    upgrade_database(engine)
    with make_sessionmaker(engine)() as session:
        print(create_token(session, args.scope, args.label))
    engine.dispose()
    return 0


def _keys_public(args: argparse.Namespace) -> int:
    from coinvision.sync_server.config import ServerConfig
    from coinvision.sync_server.signing import load_or_create_key, public_key_b64

    cfg = ServerConfig.resolve(data_dir=args.data_dir)
    print(public_key_b64(load_or_create_key(cfg.key_path)))
    return 0
