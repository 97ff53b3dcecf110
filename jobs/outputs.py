"""Where a job's files go: a folder named by ``Job.output_key`` under ``STORAGE_ROOT``.

A run writes into a staging folder beside it and, only once every file is written, moves them
into place (one ``os.replace`` per file) and removes files the previous run left that this run
did not write. A rerun therefore overwrites the same names and never leaves two copies, and a
reader never sees a half-written file.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from jobs.models import Job
from studies.services import storage

STAGING_MARK = ".staging-"


class StagedOutputs:
    def __init__(self, job: Job) -> None:
        if not job.output_key:
            raise ValueError(f"job {job.pk} has no output key")
        self.key = job.output_key.rstrip("/")
        self.final = storage.absolute(self.key)
        self.staging = self.final.with_name(f"{self.final.name}{STAGING_MARK}{job.pk}")

    def path(self, name: str) -> Path:
        """Where to write ``name`` now (the staging folder)."""
        return self.staging / name

    def relpath(self, name: str) -> str:
        """The path of ``name`` relative to STORAGE_ROOT once published (for ``Job.result``)."""
        return f"{self.key}/{name}"

    def start(self) -> None:
        # Only one job per output key may be active (DB constraint), so any staging folder
        # beside ours is left over from a run whose worker died.
        for leftover in self.final.parent.glob(f"{self.final.name}{STAGING_MARK}*"):
            shutil.rmtree(leftover, ignore_errors=True)
        self.staging.mkdir(parents=True, exist_ok=True)

    def publish(self) -> None:
        self.final.mkdir(parents=True, exist_ok=True)
        written = {p.name for p in self.staging.iterdir()}
        for name in sorted(written):
            os.replace(self.staging / name, self.final / name)
        for old in self.final.iterdir():
            if old.name not in written and old.is_file():
                old.unlink()
        self.staging.rmdir()

    def discard(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


@contextmanager
def staged_outputs(job: Job) -> Iterator[StagedOutputs]:
    """Write a job's outputs in a staging folder; publish them all if the block succeeds."""
    outputs = StagedOutputs(job)
    outputs.start()
    try:
        yield outputs
    except BaseException:
        outputs.discard()
        raise
    outputs.publish()


def jsonable(value: Any) -> Any:
    """``value`` with numpy scalars/arrays as Python values and NaN/inf as ``None`` (JSONB has
    no NaN)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, int | str | bool) or value is None:
        return value
    return str(value)
