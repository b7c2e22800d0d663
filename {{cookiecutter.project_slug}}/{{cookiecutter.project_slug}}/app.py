"""The Flask application factory: the parts of the web app, in the order they are set up."""

from flask import Flask

from . import assets, cache, observability, settings, views


def create_app() -> Flask:
    # Logging and error tracking first, so that a failure further down is reported.
    observability.init()
    # SQLite files, sockets and uploads need their directories before the first request.
    settings.make_state_dirs()
    # Static files are served by nginx (and uWSGI's static-map), never by Flask.
    app = Flask(__name__, static_folder=None)
    app.config.update(
        SECRET_KEY=settings.SECRET_KEY,
        DEBUG=settings.DEBUG,
        # Requests for other Host headers get 400 instead of building URLs for them.
        TRUSTED_HOSTS=settings.ALLOWED_HOSTS,
        MAX_CONTENT_LENGTH=10 * 1024 * 1024,
    )
    # Hashed asset URLs from the manifest written by the static build.
    assets.init_app(app)
    # The cache the pages use (CACHE_URL): in-process, or Redis shared by every worker.
    cache.init_app(app)
    # The pages and /health.
    views.init_app(app)
    return app
