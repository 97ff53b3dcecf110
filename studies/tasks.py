"""Upkeep of the study store, run by Celery beat (``CELERY_BEAT_SCHEDULE``)."""

from __future__ import annotations

import logging

from core.tasks import task
from studies.services import storage

logger = logging.getLogger(__name__)


@task(queue="default", soft_time_limit=1800)
def sweep_incoming() -> int:
    """Remove the temporary files of uploads whose process was killed (a worker past its
    timeout, a crash) while the server ran on: ``manage.py sweep_incoming`` on a schedule."""
    removed = storage.remove_abandoned_temps(storage.ABANDONED_AFTER_S)
    if removed:
        logger.warning("removed %d abandoned upload file(s)", removed)
    return removed
