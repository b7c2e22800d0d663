"""The WSGI entry point uWSGI loads: `{{ cookiecutter.project_slug }}.wsgi:application`."""

import atexit

from .app import create_app

application = create_app()

try:
    import uwsgi
except ImportError:  # outside uWSGI: tests, bin/reload's import check
    uwsgi = None
if uwsgi is not None:
    # uwsgi.ini skips the interpreter's teardown when a worker exits, and Python's exit hooks
    # with it; uWSGI calls this instead, so Sentry still sends what it holds and logs are flushed.
    uwsgi.atexit = atexit._run_exitfuncs
