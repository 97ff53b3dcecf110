"""Background work for reading studies: computing a case's protocol slices (lung mask → slices)."""

from __future__ import annotations

from annotation.models import ReadingCase
from annotation.services.setup import compute_protocol
from core.tasks import task


@task(queue="cpu", soft_time_limit=1800)
def compute_case_protocol(*, case_pk: str) -> None:
    # Claim: only a PENDING case is computed, so a redelivered message does nothing twice.
    claimed = ReadingCase.objects.filter(
        pk=case_pk, protocol_status=ReadingCase.ProtocolStatus.PENDING
    ).first()
    if claimed is None:
        return
    compute_protocol(claimed)
