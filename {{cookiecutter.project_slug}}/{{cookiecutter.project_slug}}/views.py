"""The pages of the service and its health check."""

import logging

from flask import Blueprint, Flask, jsonify, render_template

from . import db, settings
{%- if cookiecutter.use_celery %}
from .tasks import celery
{%- endif %}

log = logging.getLogger(__name__)
pages = Blueprint("pages", __name__)


@pages.get("/")
def index():
    return render_template("index.html", release=settings.RELEASE)


def _check(name, probe):
    """Run one dependency probe; report "ok" or the error's class, never its text (it may hold a URL)."""
    try:
        probe()
    except Exception as error:
        log.warning("health: %s is down (%s)", name, type(error).__name__)
        return f"error: {type(error).__name__}"
    return "ok"
{%- if cookiecutter.use_celery %}


def _ping_broker():
    url = celery.conf.broker_url
    if url.startswith("sqla+"):
        # The embedded broker is a database: probe it directly. kombu's sqla channels keep their
        # pooled connection, and a probe per request would exhaust the pool.
        db.ping(url.removeprefix("sqla+"))
        return
    with celery.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, interval_start=0, timeout=2)
{%- endif %}


@pages.get("/health")
def health():
    """200 with the release and each dependency's state; 503 when a dependency is down."""
    checks = {
        "database": _check("database", db.ping),
{%- if cookiecutter.use_celery %}
        "broker": _check("broker", _ping_broker),
{%- else %}
        "broker": "disabled",
{%- endif %}
    }
    healthy = all(state in ("ok", "disabled") for state in checks.values())
    body = {"status": "ok" if healthy else "error", "release": settings.RELEASE, **checks}
    return jsonify(body), 200 if healthy else 503


def init_app(app: Flask) -> None:
    app.register_blueprint(pages)
