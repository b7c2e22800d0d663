"""The pages of the service and its health check."""

import logging

from flask import Blueprint, Flask, jsonify, render_template, request
from sqlalchemy import select

from . import cache, db, settings
from .models import Note
{%- if cookiecutter.use_celery %}
from .tasks import celery
{%- endif %}

log = logging.getLogger(__name__)
pages = Blueprint("pages", __name__)


@pages.get("/")
def index():
    return render_template("index.html", release=settings.RELEASE)


# GET /notes is served from the cache for this long; POST /notes clears it (in every worker when the
# cache is Redis; with the in-process cache, other workers catch up within these seconds).
NOTES_CACHE_SECONDS = 30
MAX_NOTE_LENGTH = Note.text.type.length


@pages.post("/notes")
def add_note():
    """Write: store {"text": "..."} as a note; 201 with the note, 400 for a missing or oversized text."""
    text = (request.get_json(silent=True) or {}).get("text")
    if not isinstance(text, str) or not 0 < len(text) <= MAX_NOTE_LENGTH:
        return jsonify(error=f"expected a JSON object with a text of 1 to {MAX_NOTE_LENGTH} characters"), 400
    note = Note(text=text)
    with db.session() as session, session.begin():
        session.add(note)
    try:
        cache.cache.delete_memoized(recent_notes)
    except Exception as error:
        # The note is stored; readers see it once the cached list expires.
        log.warning("cache: could not clear the notes (%s)", type(error).__name__)
    return jsonify(id=note.id, text=note.text), 201


@pages.get("/notes")
def notes():
    """Read: the latest notes, newest first, through the cache."""
    return jsonify(notes=recent_notes())


@cache.cache.memoize(timeout=NOTES_CACHE_SECONDS)
def recent_notes(limit: int = 20) -> list[dict]:
    """The latest notes as JSON-ready dicts (a cache miss, or a cache that is down, reads the database)."""
    with db.session() as session:
        rows = session.scalars(select(Note).order_by(Note.id.desc()).limit(limit))
        return [
            {"id": note.id, "text": note.text, "created_at": note.created_at.isoformat()} for note in rows
        ]


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
        # A Redis cache is a dependency; the in-process one cannot be down.
        "cache": _check("cache", cache.ping) if cache.is_server() else "in-process",
    }
    healthy = all(not state.startswith("error") for state in checks.values())
    body = {"status": "ok" if healthy else "error", "release": settings.RELEASE, **checks}
    return jsonify(body), 200 if healthy else 503


def init_app(app: Flask) -> None:
    app.register_blueprint(pages)
