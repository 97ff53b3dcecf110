"""Web workers and ingest helpers keep freed heap memory for their next large request."""

from __future__ import annotations

import platform
from unittest import mock

import pytest

from core import memory


class FakeLibc:
    def __init__(self, answer: int = 1) -> None:
        self.calls: list[tuple[int, int]] = []
        self.answer = answer

    def mallopt(self, parameter: int, value: int) -> int:
        self.calls.append((parameter, value))
        return self.answer


def test_both_thresholds_are_raised_on_glibc(monkeypatch):
    libc = FakeLibc()
    monkeypatch.setattr(memory.platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.setattr(memory.ctypes, "CDLL", lambda name: libc)
    assert memory.keep_freed_memory() is True
    assert libc.calls == [
        (memory.M_MMAP_THRESHOLD, 32 * 1024 * 1024),
        (memory.M_TRIM_THRESHOLD, 64 * 1024 * 1024),
    ]


def test_a_refused_setting_is_reported(monkeypatch):
    monkeypatch.setattr(memory.platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.setattr(memory.ctypes, "CDLL", lambda name: FakeLibc(answer=0))
    assert memory.keep_freed_memory() is False


def test_nothing_is_called_where_the_c_library_is_not_glibc(monkeypatch):
    monkeypatch.setattr(memory.platform, "libc_ver", lambda: ("", ""))
    cdll = mock.Mock()
    monkeypatch.setattr(memory.ctypes, "CDLL", cdll)
    assert memory.keep_freed_memory() is False
    cdll.assert_not_called()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_the_real_c_library_takes_both_settings():
    assert memory.keep_freed_memory() is True


def test_each_gunicorn_worker_keeps_freed_memory_and_starts_its_helpers(monkeypatch, settings):
    from webapp import gunicorn_conf

    settings.INGEST_HELPER_PROCESSES = 3
    calls: list[object] = []
    monkeypatch.setattr(memory, "keep_freed_memory", lambda: calls.append("memory"))
    with mock.patch(
        "studies.services.prepare.start_helpers", side_effect=lambda n: calls.append(n)
    ):
        gunicorn_conf.post_worker_init(object())
    assert calls == ["memory", 3]
