"""Rendered and thumbnail resources (PS3.18 8.3.5, 9.5): a frame as PNG or JPEG.

CT is shown in a lung window (level −600 HU, width 1500 HU) unless the request says otherwise:
this is a lung-disease reading tool, and the mediastinal window a file may carry hides
exactly the reticulation and ground glass readers are looking for.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from core.exceptions import ApplicationError
from studies.dicomweb import selectors
from studies.dicomweb.multipart import parse_accept, type_matches
from studies.dicomweb.selectors import Scope
from studies.dicomweb.wado import not_acceptable, not_found
from studies.services import storage

LUNG_WINDOW = (-600.0, 1500.0)
THUMBNAIL_SIZE = (128, 128)
RENDER_TYPES = ("image/png", "image/jpeg")


@dataclass(frozen=True)
class RenderParams:
    media_type: str
    window: tuple[float, float, str] | None = None
    viewport: tuple[int, ...] | None = None
    quality: int = 90


def _floats(name: str, text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise ApplicationError(f"{name} must be comma-separated numbers, not {text!r}") from None


def parse_params(query: dict[str, str], accept_header: str | None, thumbnail: bool) -> RenderParams:
    """Query parameters (``accept`` wins over the header, as browsers cannot set one on <img>)."""
    media_type = _media_type(query.get("accept"), accept_header)
    window = None
    if text := query.get("window"):
        parts = text.split(",")
        values = _floats("window", ",".join(parts[:2]))
        function = (parts[2] if len(parts) > 2 else "linear").strip().lower()
        if (
            len(values) != 2
            or values[1] <= 0
            or function not in ("linear", "linear-exact", "sigmoid")
        ):
            raise ApplicationError(
                "window must be center,width[,linear|linear-exact|sigmoid] with width > 0"
            )
        window = (values[0], values[1], function)
    viewport = None
    if text := query.get("viewport"):
        values = _floats("viewport", text)
        if len(values) not in (2, 6) or values[0] <= 0 or values[1] <= 0:
            raise ApplicationError("viewport must be vw,vh or vw,vh,sx,sy,sw,sh with vw, vh > 0")
        viewport = tuple(int(v) for v in values)
    elif thumbnail:
        viewport = THUMBNAIL_SIZE
    quality = 90
    if text := query.get("quality"):
        if not text.isdigit() or not 1 <= int(text) <= 100:
            raise ApplicationError("quality must be an integer from 1 to 100")
        quality = int(text)
    return RenderParams(media_type, window, viewport, quality)


def _media_type(param: str | None, header: str | None) -> str:
    if param:
        for item in param.split(","):
            chosen = item.split(";")[0].strip().lower()
            if chosen in RENDER_TYPES:
                return chosen
        raise not_acceptable(f"rendered images are image/png or image/jpeg, not {param!r}")
    for choice in parse_accept(header):
        for candidate in ("image/jpeg", "image/png"):
            if type_matches(choice.part_type, candidate):
                return candidate
    raise not_acceptable("rendered images are image/png or image/jpeg")


def _representative(scope: Scope, study_uid: str, series_uid: str | None) -> tuple[str, str, int]:
    """The middle instance of a series (or of a study's first series) for thumbnails."""
    rows = list(
        selectors.instances_under(scope, study_uid, series_uid).values_list(
            "file", "dicom_json", "series_id"
        )
    )
    if not rows:
        raise not_found(f"series {series_uid}" if series_uid else f"study {study_uid}")
    first_series = [r for r in rows if r[2] == rows[0][2]]
    file, text, _ = first_series[len(first_series) // 2]
    return file, text, 1


def render(
    scope: Scope,
    params: RenderParams,
    study_uid: str,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    frame: int | None = None,
) -> bytes:
    if sop_uid is None:
        file, text, number = _representative(scope, study_uid, series_uid)
    else:
        assert series_uid is not None
        row = (
            selectors.instance_in(scope, study_uid, series_uid, sop_uid)
            .values_list("file", "dicom_json", "number_of_frames")
            .first()
        )
        if row is None:
            raise not_found(f"instance {sop_uid}")
        file, text, count = row
        number = frame or 1
        if not 1 <= number <= count:
            raise not_found(f"frame {number} (the instance has {count})")
    header = json.loads(text) if text else {}
    return render_frame(storage.absolute(file), number - 1, header, params)


def _first(header: dict[str, Any], key: str, default: Any = None) -> Any:
    value = header.get(key, {}).get("Value")
    return value[0] if value else default


def render_frame(path: Any, index: int, header: dict[str, Any], params: RenderParams) -> bytes:
    """Decode one frame, apply the modality LUT and a VOI window, scale, encode."""
    from pydicom.pixels import pixel_array

    array = pixel_array(str(path), index=index)
    if not header:
        import pydicom

        from studies.dicomweb.dicomjson import instance_dict

        header = instance_dict(pydicom.dcmread(path, stop_before_pixels=True))
    photometric = str(_first(header, "00280004", "MONOCHROME2"))
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        image = Image.fromarray(array[..., :3].astype(np.uint8), "RGB")
    else:
        values = array.astype(np.float32) * float(_first(header, "00281053", 1) or 1) + float(
            _first(header, "00281052", 0) or 0
        )
        center, width, function = _window(header, params, values)
        if function == "sigmoid":
            scaled = 255.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
        elif function == "linear-exact":
            scaled = ((values - center) / width + 0.5) * 255.0
        else:  # PS3.3 C.11.2.1.2.1
            scaled = ((values - (center - 0.5)) / max(width - 1.0, 1.0) + 0.5) * 255.0
        pixels = np.clip(scaled, 0, 255).astype(np.uint8)
        if photometric == "MONOCHROME1":
            pixels = 255 - pixels
        image = Image.fromarray(pixels, "L")
    if params.viewport is not None:
        image = _apply_viewport(image, params.viewport)
    buffer = io.BytesIO()
    if params.media_type == "image/jpeg":
        image.save(buffer, "JPEG", quality=params.quality)
    else:
        image.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def _window(
    header: dict[str, Any], params: RenderParams, values: np.ndarray
) -> tuple[float, float, str]:
    if params.window is not None:
        return params.window
    if str(_first(header, "00080060", "")) == "CT":
        return (*LUNG_WINDOW, "linear")
    center, width = _first(header, "00281050"), _first(header, "00281051")
    if center is not None and width:
        return float(center), float(width), "linear"
    low, high = float(values.min()), float(values.max())
    return (low + high) / 2, max(high - low, 1.0), "linear"


def _apply_viewport(image: Image.Image, viewport: tuple[int, ...]) -> Image.Image:
    if len(viewport) == 6:
        sx, sy, sw, sh = viewport[2:]
        if sw and sh:
            image = image.crop((sx, sy, sx + sw, sy + sh))
    width, height = viewport[0], viewport[1]
    scale = min(width / image.width, height / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR)
