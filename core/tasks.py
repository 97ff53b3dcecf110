"""The house task decorator: every Celery task in the project is declared through ``task``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import shared_task  # noqa: TID251 - the one place allowed to use it

QUEUES = ("default", "cpu", "gpu")
# Task name → queue, filled by ``task`` and read by the Celery router ``route_task``.
ROUTES: dict[str, str] = {}


class TransientError(Exception):
    """A failure worth retrying (a busy database, a lost broker connection)."""


def task(
    *, queue: str = "default", soft_time_limit: int = 3600, max_retries: int = 3
) -> Callable[[Callable[..., Any]], Any]:
    """Declare a task: late acks, a queue, time limits and retries with backoff on TransientError."""
    if queue not in QUEUES:
        raise ValueError(f"unknown queue {queue!r}; use one of {QUEUES}")

    def decorate(func: Callable[..., Any]) -> Any:
        ROUTES[f"{func.__module__}.{func.__name__}"] = queue
        return shared_task(
            acks_late=True,
            reject_on_worker_lost=True,
            soft_time_limit=soft_time_limit,
            time_limit=soft_time_limit + 60,
            autoretry_for=(TransientError,),
            retry_backoff=True,
            retry_backoff_max=600,
            max_retries=max_retries,
        )(func)

    return decorate


def route_task(name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any) -> Any:
    """Celery router: the queue each task was declared with."""
    queue = ROUTES.get(name)
    return {"queue": queue} if queue else None
