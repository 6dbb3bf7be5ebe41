"""Settings of the benchmark chat: the Channels tutorial chat and nothing else.

No database, templates, static files or HTTP views. Only the channel layer is configurable:

  CHAT_LAYER           memory (default) | redis | pubsub
  REDIS_PORT           port of the redis-server on 127.0.0.1 (default 6390)
  CHAT_CAPACITY        messages per channel for memory and redis (unset: the layer's default, 100)
  CHAT_REDIS_MAX_CONN  redis layer only: the redis-py pool's max_connections (unset: redis-py's
                       default, 100, which is too few when ~1000 clients leave at once)
"""
import os

SECRET_KEY = "benchmark-only"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]  # AllowedHostsOriginValidator checks Origin against this
USE_TZ = True

# auth, contenttypes and sessions are what AuthMiddlewareStack imports; without a session cookie
# it never reaches a database, so none is configured.
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "channels",
    "chat",
]
DATABASES = {}
MIDDLEWARE = []
ROOT_URLCONF = "chatsite.urls"
ASGI_APPLICATION = "chatsite.asgi.application"

# Warnings and errors (e.g. exceptions in consumers) go to stderr; nothing else is logged.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["stderr"], "level": "WARNING"},
}


def _channel_layer():
    kind = os.environ.get("CHAT_LAYER", "memory")
    port = int(os.environ.get("REDIS_PORT", "6390"))
    capacity = os.environ.get("CHAT_CAPACITY")
    config = {}
    if kind == "memory":
        backend = "channels.layers.InMemoryChannelLayer"
    elif kind == "redis":
        backend = "channels_redis.core.RedisChannelLayer"
        max_conn = os.environ.get("CHAT_REDIS_MAX_CONN")
        if max_conn:
            host = {"address": f"redis://127.0.0.1:{port}", "max_connections": int(max_conn)}
        else:
            host = ("127.0.0.1", port)
        config["hosts"] = [host]
    elif kind == "pubsub":  # has no capacity: its local queues are unbounded
        backend = "channels_redis.pubsub.RedisPubSubChannelLayer"
        config["hosts"] = [("127.0.0.1", port)]
        capacity = None
    else:
        raise RuntimeError(f"CHAT_LAYER must be memory, redis or pubsub, not {kind!r}")
    if capacity:
        config["capacity"] = int(capacity)
    return {"BACKEND": backend, "CONFIG": config}


CHANNEL_LAYERS = {"default": _channel_layer()}
