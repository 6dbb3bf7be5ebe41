#!/usr/bin/env python3
"""The Django project of the worker interop tests (crates/switchboard-server/tests/worker_django.rs).

Run as `python manage.py runworker thumbnails-generate`: Channels' own worker, with the
ChannelNameRouter of workersite/asgi.py, on the channels_redis layer that the environment
names (workersite/settings.py).
"""
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "workersite.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
