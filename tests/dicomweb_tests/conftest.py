"""Fixtures for DICOMweb tests: small CT series stored through the real ingest service."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.uid import RLELossless, generate_uid

from studies.models import Series
from studies.services.ingest import ingest_datasets_bytes
from tests.dicom_builders import ct_slice, to_bytes

ROOT = "/dicomweb"


def store_series(project, n: int = 3, *, compress: str | None = None, **kwargs) -> Series:
    study_uid = kwargs.pop("study_uid", generate_uid())
    series_uid = kwargs.pop("series_uid", generate_uid())
    items = []
    for i in range(n):
        ds = ct_slice(study_uid=study_uid, series_uid=series_uid, index=i, **kwargs)
        if compress:
            ds.compress(compress)
        items.append((f"{i}.dcm", to_bytes(ds)))
    report = ingest_datasets_bytes(items, project=project, deidentify=False)
    assert report.stored == n, report.to_dict()
    return Series.objects.get(series_instance_uid=series_uid)


def expected_pixels(index: int, size: int = 16, fill: int = 0) -> bytes:
    pixels = np.arange(size * size, dtype=np.int16).reshape(size, size) + fill + index
    return pixels.astype("<i2").tobytes()


@pytest.fixture
def series(project) -> Series:
    return store_series(project, 3, patient_id="HOSP-001", patient_name="DOE^JANE")


@pytest.fixture
def rle_series(project) -> Series:
    return store_series(
        project, 2, compress=RLELossless, patient_id="HOSP-002", patient_name="ROE^RICHARD"
    )


@pytest.fixture
def other_series(other_project) -> Series:
    return store_series(
        other_project, 2, patient_id="OTHER-9", patient_name="SMITH^ANN", study_date="20230301"
    )


def path_of(series: Series, *rest: str) -> str:
    parts = [ROOT, "studies", series.study.study_instance_uid, "series", series.series_instance_uid]
    return "/".join([*parts, *rest])


def split_multipart(response) -> list[tuple[dict[str, str], bytes]]:
    """Parts of a multipart response, parsed the way Cornerstone does (independent of ours)."""
    content_type = response["Content-Type"]
    boundary = content_type.split("boundary=")[1].split(";")[0].strip('"')
    body = b"".join(response.streaming_content) if response.streaming else response.content
    chunks = body.split(b"--" + boundary.encode())
    parts = []
    for chunk in chunks[1:-1]:
        head, _, content = chunk[2:].partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode().split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip()] = value.strip()
        parts.append((headers, content[:-2]))
    assert chunks[-1].startswith(b"--")
    return parts
