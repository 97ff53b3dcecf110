"""Upload files left by a killed process are swept; stored instances and writes in progress
are not."""

from __future__ import annotations

import os
import time

import pytest
from django.core.management import CommandError, call_command

from core.tasks import route_task
from studies.models import Instance
from studies.services import storage
from studies.services.ingest import ingest_datasets_bytes
from tests.dicom_builders import ct_series_bytes

pytestmark = pytest.mark.django_db


def test_abandoned_upload_files_are_removed_and_nothing_else(project, capsys):
    ingest_datasets_bytes([(f"f{n}", d) for n, d in enumerate(ct_series_bytes(2))], project=project)
    stored = [storage.absolute(i.file) for i in Instance.objects.all()]
    old = storage.write_temp_beside(Instance.objects.first().file + "-killed", b"half an upload")
    fresh = storage.write_temp_beside(Instance.objects.first().file + "-writing", b"in progress")
    hours_ago = time.time() - 2 * 3600
    os.utime(old, (hours_ago, hours_ago))
    for path in stored:  # stored files are never candidates, however old
        os.utime(path, (hours_ago, hours_ago))

    call_command("sweep_incoming", "--dry-run")
    assert str(old) in capsys.readouterr().out and old.exists()

    call_command("sweep_incoming")
    assert "removed 1 abandoned upload file(s)" in capsys.readouterr().out
    assert not old.exists()
    assert fresh.exists()  # written a moment ago: an upload may still be storing it
    assert all(path.exists() for path in stored)

    call_command("sweep_incoming", "--older-than", "0")
    assert not fresh.exists()


def test_a_negative_age_is_refused():
    with pytest.raises(CommandError, match="zero or more minutes"):
        call_command("sweep_incoming", "--older-than", "-5")


def test_celery_beat_sweeps_every_hour_with_the_same_rule(project, settings):
    from webapp.celery import app

    app.loader.import_default_modules()  # what a worker does at start: autodiscovers tasks
    [entry] = [e for e in settings.CELERY_BEAT_SCHEDULE.values() if "sweep" in e["task"]]
    assert entry["schedule"] == 3600.0
    sweep = app.tasks[entry["task"]]
    assert route_task(entry["task"], (), {}, {}) == {"queue": "default"}

    ingest_datasets_bytes([(f"f{n}", d) for n, d in enumerate(ct_series_bytes(2))], project=project)
    first = Instance.objects.first().file
    old = storage.write_temp_beside(first + "-killed", b"half an upload")
    fresh = storage.write_temp_beside(first + "-writing", b"in progress")
    hours_ago = time.time() - 2 * 3600
    os.utime(old, (hours_ago, hours_ago))

    assert sweep.apply().get() == 1
    assert not old.exists() and fresh.exists()
    assert all(storage.absolute(i.file).exists() for i in Instance.objects.all())
