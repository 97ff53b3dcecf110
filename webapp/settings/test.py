"""Test overrides only; DATABASE_URL and CELERY_BROKER_URL still come from the environment."""

from __future__ import annotations

import tempfile
from pathlib import Path

from webapp.settings.base import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
STORAGE_ROOT = Path(tempfile.mkdtemp(prefix="ild-test-storage-"))
CELERY_TASK_ALWAYS_EAGER = True
DEIDENTIFICATION_SECRET = "test-deidentification-secret"
# Registration job tests that exercise the classifier point this at a tiny model they train.
WORSENING_CLASSIFIER = "off"
# Ingest prepares every file in the test's process; the tests of the helper processes (and the
# ingest tests, run both ways) set it themselves.
INGEST_HELPER_PROCESSES = 0
