"""Model output (segmentation label maps) for one slice, as a mask on that slice's grid.

Segmentation jobs store their label map as an ``.npz`` (``labels`` ``uint8 [k, j, i]``,
0 background, 1 lung without ILD, 2 ILD; ``sop_instance_uids`` one per ``k``) and name it,
relative to ``STORAGE_ROOT``, in ``Job.result["label_map_npz"]``. Callers must have asked
``annotation.selectors.model_output_visible_to`` first.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from studies.models import Series
from studies.services import storage

ILD_LABEL = 2


def latest_label_map(series: Series) -> tuple[str, Any] | None:
    from jobs.models import Job

    job = (
        Job.objects.filter(series=series, status=Job.Status.SUCCEEDED)
        .filter(result__has_key="label_map_npz")
        .order_by("-finished", "-created")
        .first()
    )
    if job is None:
        return None
    return str(job.result["label_map_npz"]), job


def model_mask(
    series: Series, sop_instance_uid: str, structure: str
) -> npt.NDArray[np.bool_] | None:
    found = latest_label_map(series)
    if found is None:
        return None
    relpath, _ = found
    path = storage.absolute(relpath)
    if not path.exists():
        return None
    from jobs.slices import npz_member, npz_small

    uids = [str(u) for u in npz_small(path, "sop_instance_uids")]
    if sop_instance_uid not in uids:
        return None
    labels = np.asarray(npz_member(path, "labels")[uids.index(sop_instance_uid)])
    if structure == "ild":
        return np.asarray(labels == ILD_LABEL)
    return np.asarray(labels > 0)
