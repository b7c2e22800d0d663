"""The {{ cookiecutter.project_slug }} service: settings, app, tasks and jobs. See README.md."""
