"""The small web page for maintainers and users (static HTML + JS over the JSON API, token kept in the browser)."""

from __future__ import annotations

from flask import Blueprint, Response, render_template

__all__ = ["bp"]

bp = Blueprint("web", __name__, template_folder="templates", static_folder="static", static_url_path="/static")


@bp.get("/")
def index() -> Response:
    return Response(render_template("index.html"), mimetype="text/html")
