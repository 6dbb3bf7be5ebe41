"""Settings of the worker interop project: Channels and one channels_redis layer, from the
environment the test sets:

  SWITCHBOARD_WORKER_LAYER   core | pubsub
  SWITCHBOARD_WORKER_REDIS   the Redis URL
  SWITCHBOARD_WORKER_PREFIX  the key prefix (the Rust side uses the same)
"""
import os

SECRET_KEY = "test-only, not secret"
DEBUG = False
ALLOWED_HOSTS = []
INSTALLED_APPS = ["channels"]
DATABASES = {}
USE_TZ = True
ASGI_APPLICATION = "workersite.asgi.application"

BACKENDS = {
    "core": "channels_redis.core.RedisChannelLayer",
    "pubsub": "channels_redis.pubsub.RedisPubSubChannelLayer",
}
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": BACKENDS[os.environ["SWITCHBOARD_WORKER_LAYER"]],
        "CONFIG": {
            "hosts": [os.environ["SWITCHBOARD_WORKER_REDIS"]],
            "prefix": os.environ["SWITCHBOARD_WORKER_PREFIX"],
        },
    }
}
