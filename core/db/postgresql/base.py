"""Django's PostgreSQL backend, with its connection health check run at most once a second.

With ``CONN_HEALTH_CHECKS`` Django sends ``SELECT 1`` before the first query of every request
on a persistent connection: one more round trip to the server per request, a quarter of a
study search's time (QIDO-RS, the study list a viewer asks for again and again). Here a
connection that passed its check less than ``CHECKED_FOR_S`` ago is not checked again.

What that costs: a connection that breaks within that second (the server restarted) fails
the request that uses it, as it would if it broke between the check and the query. Django
then finds the error at the end of the request (``close_if_unusable_or_obsolete``), closes the
connection, and the next request opens a new one.
"""

from __future__ import annotations

import time

from django.db.backends.postgresql import base

CHECKED_FOR_S = 1.0


class DatabaseWrapper(base.DatabaseWrapper):
    health_check_done: bool
    checked_at: float | None = None

    def connect(self) -> None:
        super().connect()
        self.checked_at = time.monotonic()  # a new connection has just answered

    def close_if_health_check_failed(self) -> None:
        recent = self.checked_at is not None and time.monotonic() - self.checked_at < CHECKED_FOR_S
        if self.connection is not None and recent:
            self.health_check_done = True  # what Django's check would set, without the query
            return
        super().close_if_health_check_failed()
        if self.connection is not None:
            self.checked_at = time.monotonic()
