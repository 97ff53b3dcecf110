"""Production gunicorn settings: ``gunicorn -c python:webapp.gunicorn_conf webapp.wsgi``.

Command-line options (``--bind``, ``--workers``, ...) override these; environment variables
``GUNICORN_WORKERS`` and ``GUNICORN_THREADS`` set the two sizes without a new command line.
"""

from __future__ import annotations

import os

worker_class = "webapp.server.ScrollingThreadWorker"
workers = int(os.environ.get("GUNICORN_WORKERS", "4"))
threads = int(os.environ.get("GUNICORN_THREADS", "2"))
keepalive = 30  # seconds; a viewer keeps its connections between scroll bursts
timeout = 300  # a large STOW upload or an archive export


def post_worker_init(worker: object) -> None:
    """Each worker keeps freed heap memory for its next large request (``core.memory``) and
    starts its ingest helper processes now: the first STOW-RS request it serves finds them
    ready instead of waiting for Python and pydicom to load in them."""
    from django.conf import settings

    from core.memory import keep_freed_memory
    from studies.services.prepare import start_helpers

    keep_freed_memory()
    start_helpers(int(settings.INGEST_HELPER_PROCESSES))
