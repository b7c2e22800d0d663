"""The cache: Flask-Caching on CACHE_URL, in each worker's memory or one Redis for every worker and host."""

import redis
from flask import Flask
from flask_caching import Cache

from . import settings

cache = Cache()
# A Redis that answers nothing within 2 s counts as down: pages then skip the cache, /health says 503.
REDIS_OPTIONS = {"socket_timeout": 2, "socket_connect_timeout": 2}


def is_server() -> bool:
    """True when the cache is a server that can be down (Redis), not this process's memory."""
    return not settings.CACHE_URL.startswith("memory://")


def config() -> dict:
    """Flask-Caching's configuration for CACHE_URL."""
    if not is_server():
        return {"CACHE_TYPE": "SimpleCache"}
    return {
        "CACHE_TYPE": "RedisCache",
        "CACHE_REDIS_URL": settings.CACHE_URL,
        # Keys of this service only, so that services (and the Celery broker) can share one Redis.
        "CACHE_KEY_PREFIX": settings.CACHE_PREFIX,
        "CACHE_OPTIONS": REDIS_OPTIONS,
    }


def ping() -> None:
    """Ask the cache server for PONG on a connection of its own; raises when it is down."""
    with redis.Redis.from_url(settings.CACHE_URL, **REDIS_OPTIONS) as client:
        client.ping()


def init_app(app: Flask) -> None:
    cache.init_app(app, config=config())
