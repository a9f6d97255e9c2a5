"""Application factory. ``create_app()`` reads ``COINVISION_DATA_DIR`` / ``COINVISION_DB_URL`` /
``COINVISION_MODELS_DIR`` when no arguments are given (that is how gunicorn starts it)."""

from __future__ import annotations

import logging
from pathlib import Path

import faiss
from coinvision.sync_server.api_errors import register_error_handlers
from coinvision.sync_server.config import ServerConfig
from coinvision.sync_server.db import make_engine, make_sessionmaker, upgrade_database
from coinvision.sync_server.signing import load_or_create_key, public_key_b64
from coinvision.sync_server.state import ServerState
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flask import Flask, Response, g
from werkzeug.middleware.proxy_fix import ProxyFix

__all__ = ["SECURITY_HEADERS", "create_app", "prepare_data_dir"]

log = logging.getLogger(__name__)

# The web page keeps a token in localStorage: no script, style, frame or form target but our own, no framing
# (clickjacking), no MIME sniffing, no Referer leaving the site. (`Server` carries no version: the development
# server's handler says "coinvision" (live.QuietRequestHandler), gunicorn says "gunicorn", nginx with
# `server_tokens off` says "nginx".)
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def _private_dir(path: Path) -> None:
    """The data dir holds the signing key, photos and (SQLite) the database: owner only (0700)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_mode & 0o077:
        log.warning("data dir %s was open to others (mode %o); setting it to 0700", path, path.stat().st_mode & 0o777)
        path.chmod(0o700)


def prepare_data_dir(cfg: ServerConfig) -> Ed25519PrivateKey:
    """Create (or tighten) the data dir and create the signing key on first use; the server's first start and
    ``coinvision token create`` (the first setup step) both do this, so ``keys public`` works right after it."""
    _private_dir(cfg.data_dir)
    return load_or_create_key(cfg.key_path)


def create_app(
    config: ServerConfig | None = None,
    *,
    data_dir: str | Path | None = None,
    db_url: str | None = None,
    models_dir: str | Path | None = None,
    migrate: bool = True,
) -> Flask:
    cfg = config or ServerConfig.resolve(data_dir=data_dir, db_url=db_url, models_dir=models_dir)
    key = prepare_data_dir(cfg)
    engine = make_engine(cfg.db_url)
    if migrate:
        upgrade_database(engine)
    faiss.omp_set_num_threads(max(1, cfg.num_threads))
    st = ServerState(
        config=cfg, engine=engine, sessions=make_sessionmaker(engine), signing_key=key
    )
    # Replicas on one bucket must sign with one key: refuse to start with another (devices would refuse it).
    st.files.check_signing_key(public_key_b64(key))
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = cfg.max_request_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["coinvision"] = st
    if cfg.trusted_proxies:
        # request.remote_addr (rate limits) becomes the client's address as the trusted proxy saw it.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=cfg.trusted_proxies, x_proto=cfg.trusted_proxies)  # type: ignore[method-assign]

    @app.after_request
    def _security_headers(resp: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            resp.headers.setdefault(name, value)
        return resp

    @app.before_request
    def _open_session() -> None:
        g.db = st.sessions()

    @app.teardown_request
    def _close_session(_exc: BaseException | None) -> None:
        db = g.pop("db", None)
        if db is not None:
            db.close()  # rolls back whatever was not committed

    from coinvision.sync_server.api import bp as api_bp
    from coinvision.sync_server.openapi import bp as openapi_bp
    from coinvision.sync_server.web import bp as web_bp
    from coinvision.sync_server.webapp_routes import bp as webapp_bp

    app.register_blueprint(api_bp)
    app.register_blueprint(openapi_bp)
    app.register_blueprint(web_bp)
    app.register_blueprint(webapp_bp)  # the offline phone app, /app/
    register_error_handlers(app)
    log.info("coinvision sync server: data %s, db %s, files %s", cfg.data_dir,
             engine.url.render_as_string(hide_password=True), st.files.describe())
    return app
