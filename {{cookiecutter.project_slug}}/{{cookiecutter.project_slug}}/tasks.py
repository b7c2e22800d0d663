"""The Celery app and the service's background tasks.

The worker runs beside uWSGI (deploy/uwsgi.ini, attach-daemon2) with the threads pool:
`celery --app {{ cookiecutter.project_slug }}.tasks worker --pool threads`.
"""

from celery import Celery, signals
from kombu.transport import sqlalchemy as kombu_sqlalchemy

from . import observability, settings

# The sqla broker polls once a second by default; a class attribute is the only knob that works
# (polling_interval in broker_transport_options reaches create_engine and fails with a TypeError).
kombu_sqlalchemy.Transport.polling_interval = 0.1
# The embedded broker and result backend are SQLite files under DATA_DIR: senders need it too.
settings.make_state_dirs()

celery = Celery("{{ cookiecutter.project_slug }}")
celery.conf.update(
    broker_url=settings.CELERY_BROKER_URL,
    result_backend=settings.CELERY_RESULT_BACKEND,
    broker_connection_retry_on_startup=True,
    # Acknowledge after the task ran: a worker killed mid-task gets its task redelivered.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    worker_concurrency=settings.CELERY_CONCURRENCY,
    task_time_limit=settings.CELERY_TASK_TIME_LIMIT,
    task_soft_time_limit=max(1, settings.CELERY_TASK_TIME_LIMIT - 5),
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_expires=24 * 3600,
)
if settings.CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    # Redis redelivers unacknowledged tasks (those of a killed worker) after visibility_timeout; it
    # must exceed the longest task. kombu looks for them every 10 s but scans only every 10th time
    # by default, which would add up to 100 s more: throttle 1 scans each time.
    # (Only for Redis: the sqla transport hands every transport option to create_engine.)
    celery.conf.broker_transport_options = {
        "visibility_timeout": 2 * settings.CELERY_TASK_TIME_LIMIT + 60,
        "unacked_restore_throttle": 1,
    }


@signals.worker_init.connect
def _init_worker(**_):
    """Set up logging and Sentry in the worker before any task runs."""
    observability.init()


@celery.task
def add(x: int, y: int) -> int:
    """An example task. Safe to run twice: it has no side effects."""
    return x + y
