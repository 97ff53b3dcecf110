"""A worker coming up starts building the default worsening classifier when it will need it."""

from __future__ import annotations

import sys
from unittest import mock

from jobs import tasks


def test_a_worker_builds_the_default_classifier_in_its_own_process(tmp_path, monkeypatch, settings):
    monkeypatch.setenv("ILD_MODELS_DIR", str(tmp_path))
    settings.WORSENING_CLASSIFIER = "default"
    with mock.patch.object(tasks.subprocess, "Popen") as popen:
        started = tasks.build_the_default_worsening_model()
    assert started is popen.return_value
    command = popen.call_args.args[0]
    assert command[0] == sys.executable
    assert "default_model()" in command[-1]
    assert popen.call_args.kwargs["start_new_session"] is True


def test_nothing_is_built_when_the_model_is_there_or_not_wanted(tmp_path, monkeypatch, settings):
    monkeypatch.setenv("ILD_MODELS_DIR", str(tmp_path))
    with mock.patch.object(tasks.subprocess, "Popen") as popen:
        settings.WORSENING_CLASSIFIER = "off"
        assert tasks.build_the_default_worsening_model() is None
        settings.WORSENING_CLASSIFIER = str(tmp_path / "my-model")
        assert tasks.build_the_default_worsening_model() is None
        settings.WORSENING_CLASSIFIER = "default"
        (tmp_path / "worsening").mkdir()
        (tmp_path / "worsening" / "metadata.json").write_text("{}")
        assert tasks.build_the_default_worsening_model() is None
    popen.assert_not_called()


def test_the_build_is_tied_to_the_worker_ready_signal():
    from celery.signals import worker_ready

    receivers = [ref() for _, ref in worker_ready.receivers]
    assert tasks.build_the_default_worsening_model in receivers
