"""Which failures are worth retrying, and what to tell a radiologist about the others."""

from __future__ import annotations

from django.db import InterfaceError, OperationalError

from core.tasks import TransientError

WHAT = {
    "volume_check": "The volume check",
    "segmentation": "The segmentation",
    "registration": "The registration",
}


def is_transient(error: BaseException) -> bool:
    """A lost database connection, a busy GPU: the same job may well succeed a little later."""
    if isinstance(error, TransientError | OperationalError | InterfaceError):
        return True
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return isinstance(error, torch.cuda.OutOfMemoryError)


def readable_failure(kind: str, error: BaseException, *, time_limit_s: int | None = None) -> str:
    """One or two sentences a radiologist can act on; the traceback stays in the worker log."""
    from celery.exceptions import SoftTimeLimitExceeded

    from inference.dicom.series import DicomSeriesError
    from inference.imageio import ImageIOError
    from inference.registration.base import BackendUnavailableError, RegistrationError
    from inference.segmentation.engines import EngineUnavailable
    from inference.volume import GeometryError
    from jobs.seg_export import SegExportError
    from jobs.series_volume import SliceMappingError

    what = WHAT.get(kind, "The job")
    if isinstance(error, SoftTimeLimitExceeded):
        minutes = f" ({time_limit_s // 60} min)" if time_limit_s else ""
        return (
            f"{what} took longer than its time limit{minutes} and was stopped. Ask the "
            "coordinator to run it on a GPU worker or with coarser settings."
        )
    if isinstance(error, DicomSeriesError | SliceMappingError):
        return f"{what} failed: the CT series cannot be used as one volume. {error}"
    if isinstance(error, FileNotFoundError):
        return (
            f"{what} failed: a stored file of this series is missing ({error}). "
            "Re-import the series."
        )
    if isinstance(error, EngineUnavailable):
        return f"{what} could not start: the segmentation engine is not available here. {error}"
    if isinstance(error, BackendUnavailableError):
        return f"{what} could not start: the registration backend is not available here. {error}"
    if isinstance(error, RegistrationError):
        return f"{what} did not converge to a usable result: {error}"
    if isinstance(error, GeometryError | ImageIOError):
        return f"{what} failed: the image geometry cannot be used. {error}"
    if isinstance(error, SegExportError):
        return f"{what} failed while writing the DICOM SEG: {error}"
    if isinstance(error, ValueError):
        return f"{what} failed: {error}"
    if isinstance(error, MemoryError):
        return f"{what} ran out of memory on the worker; ask the coordinator to use a larger one."
    return (
        f"{what} failed unexpectedly ({type(error).__name__}: {error}). "
        "The technical details are in the worker log."
    )
