"""Run the app on a loopback port in a background thread, with fresh tokens (tests, the demo, benchmarks).

Production uses gunicorn (see README); this is werkzeug's threaded server, stopped cleanly by ``stop()``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from coinvision.sync_server.config import ServerConfig
from coinvision.sync_server.state import ServerState
from flask import Flask
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

__all__ = ["LocalServer", "QuietRequestHandler", "start_local_server"]


class QuietRequestHandler(WSGIRequestHandler):
    """werkzeug's handler without software versions in the ``Server`` header (they help attackers only)."""

    def version_string(self) -> str:
        return "coinvision"


@dataclass
class LocalServer:
    app: Flask
    server: BaseWSGIServer
    maintainer_token: str
    device_token: str
    public_key: str  # base64 Ed25519 public key, what devices ship with
    thread: threading.Thread = field(repr=False)
    _stopped: bool = field(default=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.server.host}:{self.server.port}"

    @property
    def state(self) -> ServerState:
        return self.app.extensions["coinvision"]

    def stop(self) -> None:
        """Stop serving and close the port and database pool (safe to call twice)."""
        if self._stopped:
            return
        self._stopped = True
        self.server.shutdown()
        self.thread.join(timeout=10)
        self.server.server_close()
        self.state.engine.dispose()

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_local_server(config: ServerConfig, host: str = "127.0.0.1", port: int = 0) -> LocalServer:
    """Create the app, a maintainer and a device token, and serve on ``host:port`` (0 = any free port)."""
    from coinvision.sync_server.app import create_app
    from coinvision.sync_server.auth import create_token
    from coinvision.sync_server.signing import public_key_b64

    app = create_app(config)
    st: ServerState = app.extensions["coinvision"]
    with st.sessions() as session:
        maintainer = create_token(session, "maintainer", "local server")
        device = create_token(session, "device", "local server")
    server = make_server(host, port, app, threaded=True, request_handler=QuietRequestHandler)
    thread = threading.Thread(target=server.serve_forever, name="coinvision-local-server", daemon=True)
    thread.start()
    return LocalServer(app, server, maintainer, device, public_key_b64(st.signing_key), thread)
