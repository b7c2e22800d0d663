"""The WSGI entry point uWSGI loads: `{{ cookiecutter.project_slug }}.wsgi:application`."""

from .app import create_app

application = create_app()
