"""Application factory. ``create_app()`` reads ``COINVISION_DATA_DIR`` / ``COINVISION_DB_URL`` /
``COINVISION_MODELS_DIR`` when no arguments are given (that is how gunicorn starts it)."""

from __future__ import annotations

import logging
from pathlib import Path

import faiss
from coinvision.sync_server.api_errors import register_error_handlers
from coinvision.sync_server.config import ServerConfig
from coinvision.sync_server.db import make_engine, make_sessionmaker, upgrade_database
from coinvision.sync_server.signing import load_or_create_key
from coinvision.sync_server.state import ServerState
from flask import Flask, g

__all__ = ["create_app"]

log = logging.getLogger(__name__)


def create_app(
    config: ServerConfig | None = None,
    *,
    data_dir: str | Path | None = None,
    db_url: str | None = None,
    models_dir: str | Path | None = None,
    migrate: bool = True,
) -> Flask:
    cfg = config or ServerConfig.resolve(data_dir=data_dir, db_url=db_url, models_dir=models_dir)
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(cfg.db_url)
    if migrate:
        upgrade_database(engine)
    faiss.omp_set_num_threads(max(1, cfg.num_threads))
    st = ServerState(
        config=cfg, engine=engine, sessions=make_sessionmaker(engine), signing_key=load_or_create_key(cfg.key_path)
    )
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = cfg.max_request_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["coinvision"] = st

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

    app.register_blueprint(api_bp)
    app.register_blueprint(openapi_bp)
    app.register_blueprint(web_bp)
    register_error_handlers(app)
    log.info("coinvision sync server: data %s, db %s", cfg.data_dir, engine.url.render_as_string(hide_password=True))
    return app
