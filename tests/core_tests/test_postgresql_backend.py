"""The PostgreSQL backend checks a persistent connection's health at most once a second."""

from __future__ import annotations

import pytest
from django.db import connection

from core.db.postgresql import base

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(
        connection.vendor != "postgresql", reason="needs DATABASE_URL=postgres://..."
    ),
]


@pytest.fixture
def wrapper():
    settings = {**connection.settings_dict, "CONN_HEALTH_CHECKS": True, "CONN_MAX_AGE": 60}
    db = base.DatabaseWrapper(settings, alias="health-check-test")
    db.ensure_connection()
    yield db
    db.close()


def count_checks(db, monkeypatch):
    calls = []
    real = db.is_usable

    def is_usable():
        calls.append(1)
        return real()

    monkeypatch.setattr(db, "is_usable", is_usable)
    return calls


def start_request(db):
    """What Django does around each request: reset the flag, then check before a query."""
    db.close_if_unusable_or_obsolete()
    db.close_if_health_check_failed()


def test_a_connection_checked_within_the_second_is_not_checked_again(wrapper, monkeypatch):
    calls = count_checks(wrapper, monkeypatch)
    for _ in range(5):
        start_request(wrapper)
    assert calls == []  # the new connection answered a moment ago
    monkeypatch.setattr(base, "CHECKED_FOR_S", 0.0)
    for _ in range(3):
        start_request(wrapper)
    assert calls == [1, 1, 1]  # every request, as Django does it


def test_a_broken_connection_is_replaced_once_it_is_due_for_a_check(wrapper, monkeypatch):
    with wrapper.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (first_pid,) = cursor.fetchone()
    with connection.cursor() as cursor:  # the server ends the connection, as a restart would
        cursor.execute("SELECT pg_terminate_backend(%s)", [first_pid])
    monkeypatch.setattr(base, "CHECKED_FOR_S", 0.0)
    start_request(wrapper)
    assert wrapper.connection is None  # found dead and closed
    with wrapper.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (second_pid,) = cursor.fetchone()
    assert second_pid != first_pid
