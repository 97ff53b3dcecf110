"""The drill-down picture: one slice with two raters' masks overlaid, as PNG.

Rater A is drawn in amber, rater B in cyan (outline plus a light fill); the CT is shown in the
lung window, like the viewer. Every mask is fetched through the blinding selectors: a reader's
contours through ``contours_visible_to``, an engine's output only when
``model_output_visible_to`` allows it, the STAPLE consensus for coordinators only. Anything the
user may not see is "not found".
"""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from PIL import Image
from scipy import ndimage

from annotation.models import ReadingCase
from annotation.selectors import (
    assignments_for,
    contours_visible_to,
    is_coordinator,
    latest_contours,
    model_output_visible_to,
)
from annotation.services.geometry import unpack_mask
from core.exceptions import ApplicationError
from reports.services import agreement, engines
from studies.dicomweb.render import RenderParams, render_frame
from studies.models import Instance
from studies.services import storage

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser

    from core.models import User

COLOURS = ((255, 191, 0), (0, 200, 255))
MIN_SIZE = 512


def _not_found(what: str) -> ApplicationError:
    return ApplicationError(f"{what} not found", status_code=404)


def rater_mask(
    user: User | AnonymousUser,
    case: ReadingCase,
    rater: str,
    structure: str,
    instance: Instance,
) -> npt.NDArray[np.bool_]:
    """One rater's mask on the slice, or 404 when ``user`` may not see it."""
    shape = (int(instance.rows), int(instance.columns))
    uid = instance.sop_instance_uid
    if rater == agreement.STAPLE:
        if not is_coordinator(user):
            raise _not_found("consensus")
        mask = agreement.consensus_mask(case, structure, uid)
        if mask is None:
            raise _not_found("consensus (fewer than two submitted reads)")
        return mask
    if rater.startswith("e:"):
        if not model_output_visible_to(user, case):
            raise _not_found("model output")
        found = engines.engine_masks_for(instance.series, rater[2:])
        if found is None or uid not in found:
            raise _not_found("model output for this slice")
        lung, ild = found[uid]
        return ild if structure == "ild" else lung
    parts = rater.split(":")
    if len(parts) not in (2, 3) or parts[0] != "r" or not parts[1].isdigit():
        raise ApplicationError(f"unknown rater {rater!r}")
    assignment = (
        assignments_for(user)
        .filter(case=case, reader_id=int(parts[1]), is_repeat=len(parts) == 3)
        .first()
    )
    if assignment is None:
        raise _not_found("read")
    visible = contours_visible_to(user).filter(assignment=assignment)
    if not is_coordinator(user) and assignment.contours.exists() and not visible.exists():
        # e.g. the reader's first read while their repeat read of the case is open
        raise _not_found("read")
    contour = (
        latest_contours(visible.filter(structure=structure, referenced_sop_instance_uid=uid))
        .order_by("-version")
        .first()
    )
    if contour is None:
        return np.zeros(shape, dtype=bool)
    return unpack_mask(bytes(contour.mask), contour.mask_rows, contour.mask_columns)


def _outline(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    return np.asarray(mask & ~ndimage.binary_erosion(mask, border_value=0))


def overlay_png(instance: Instance, masks: list[npt.NDArray[np.bool_]]) -> bytes:
    header: dict[str, Any] = json.loads(instance.dicom_json) if instance.dicom_json else {}
    base = Image.open(
        io.BytesIO(
            render_frame(storage.absolute(instance.file), 0, header, RenderParams("image/png"))
        )
    ).convert("RGB")
    scale = max(1, MIN_SIZE // max(base.width, base.height))
    pixels = np.asarray(base, dtype=np.float64)
    pixels = np.repeat(np.repeat(pixels, scale, axis=0), scale, axis=1)
    for mask, colour in zip(masks, COLOURS, strict=False):
        if mask.shape != (base.height, base.width):
            raise ApplicationError("mask and image sizes differ")
        big = np.repeat(np.repeat(mask, scale, axis=0), scale, axis=1)
        tint = np.asarray(colour, dtype=np.float64)
        pixels[big] = 0.75 * pixels[big] + 0.25 * tint
        pixels[_outline(big)] = tint
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def compare_png(
    user: User | AnonymousUser,
    *,
    case: ReadingCase,
    sop_instance_uid: str,
    structure: str,
    rater_a: str,
    rater_b: str,
) -> bytes:
    uids = list(case.slice_sop_instance_uids or []) + list(
        case.baseline_slice_sop_instance_uids or []
    )
    if sop_instance_uid not in uids:
        raise _not_found("slice")
    instance = (
        Instance.objects.select_related("series").filter(sop_instance_uid=sop_instance_uid).first()
    )
    if instance is None:
        raise _not_found("slice")
    masks = [rater_mask(user, case, rater, structure, instance) for rater in (rater_a, rater_b)]
    return overlay_png(instance, masks)
