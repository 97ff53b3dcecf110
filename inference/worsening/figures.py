"""Group-average log-Jacobian maps in template space and their sagittal projections (Figure 5).

Chassagnon et al. (Radiology 2021), Figure 5: "Sagittal projection of mean of Jacobian
determinant maps. A, Two groups of patients according to functional changes. B, Three groups of
patients according to morphologic changes." Here:

* :func:`group_mean_maps`: voxelwise mean of template-space log-Jacobian maps per group;
* :func:`sagittal_projection`: mean over the left-right axis (LPS x) of a template-space map,
  inside the template lung only; NaN where a sagittal ray meets no lung. Rows run from superior
  (top) to inferior, columns from anterior (left) to posterior (right), as a sagittal view seen
  from the patient's left;
* :func:`render_projections`: PNG panels side by side (Pillow only) with a diverging colour scale
  blue (negative log-Jacobian: shrinkage) - white (0) - red (positive: expansion), symmetric about
  0 and shared by the panels, a colour bar with values, panel titles with the group size, and
  orientation letters (S/I, A/P). Grey is outside the lung.
* :func:`figure5`: both panels of the paper (functional, morphologic) in one call.

Sign convention (project-wide): ``log det(I + grad u) < 0`` is shrinkage from baseline to
follow-up.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from inference.volume import GeometryError, Volume

FloatArray = npt.NDArray[np.float32]

# ColorBrewer RdBu (reversed): -1 dark blue ... 0 near-white ... +1 dark red.
_ANCHORS = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])
_COLOURS = np.array(
    [
        [33, 102, 172],
        [103, 169, 207],
        [247, 247, 247],
        [239, 138, 98],
        [178, 24, 43],
    ],
    dtype=np.float64,
)
OUTSIDE_RGB = (150, 150, 150)
BACKGROUND_RGB = (255, 255, 255)
TEXT_RGB = (20, 20, 20)

FUNCTIONAL_GROUPS = ("Functional stability", "Functional worsening")
MORPHOLOGIC_GROUPS = ("Morphologic improvement", "Morphologic stability", "Morphologic worsening")


@dataclass(frozen=True, eq=False)
class GroupMap:
    """Voxelwise mean of ``count`` template-space maps (``[k, j, i]`` float32)."""

    name: str
    mean: FloatArray
    count: int


def group_mean_maps(
    maps: Sequence[npt.NDArray[np.floating]],
    groups: Sequence[Hashable | None],
    *,
    order: Sequence[Hashable] | None = None,
) -> dict[str, GroupMap]:
    """Voxelwise mean map of each group.

    Args:
        maps: template-space maps, all of one shape.
        groups: per map, its group label; ``None`` leaves the map out.
        order: labels in output order (groups with no map give NaN maps with ``count`` 0);
            default: order of first appearance.

    Raises:
        ValueError: lengths differ, maps of different shapes, no maps.
    """
    if len(maps) != len(groups):
        raise ValueError(f"{len(maps)} maps but {len(groups)} group labels")
    if not maps:
        raise ValueError("no maps to average")
    shape = np.shape(maps[0])
    if any(np.shape(m) != shape for m in maps):
        raise ValueError("all maps must have the same shape (one template grid)")
    names: list[Hashable] = list(order) if order is not None else []
    if order is None:
        for label in groups:
            if label is not None and label not in names:
                names.append(label)
    out: dict[str, GroupMap] = {}
    for name in names:
        members = [
            np.asarray(m, dtype=np.float64) for m, g in zip(maps, groups, strict=True) if g == name
        ]
        if members:
            mean = np.mean(members, axis=0).astype(np.float32)
        else:
            mean = np.full(shape, np.nan, dtype=np.float32)
        out[str(name)] = GroupMap(str(name), mean, len(members))
    return out


def _axis_of(direction: npt.NDArray[np.float64], lps_axis: int) -> tuple[int, float]:
    """Array axis (0 = k, 1 = j, 2 = i) most aligned with LPS axis ``lps_axis``, and its sign."""
    column = int(np.argmax(np.abs(direction[lps_axis, :])))  # column index in (i, j, k)
    return 2 - column, float(np.sign(direction[lps_axis, column]))


def sagittal_projection(values: npt.NDArray[np.floating], lung: Volume) -> FloatArray:
    """Mean over the left-right axis inside the lung: ``[rows S→I, cols A→P]`` float32.

    Args:
        values: ``[k, j, i]`` map on ``lung``'s grid.
        lung: the template lung mask (non-zero = lung).

    Returns:
        The projection; NaN where the left-right ray holds no lung voxel.

    Raises:
        GeometryError: shapes differ, or the grid's axes are oblique beyond recognition.
    """
    data = np.asarray(values, dtype=np.float64)
    if data.shape != lung.shape_kji:
        raise GeometryError(f"map shape {data.shape} differs from the lung's {lung.shape_kji}")
    axes = [_axis_of(lung.direction, a) for a in range(3)]
    if len({a for a, _ in axes}) != 3:
        raise GeometryError("cannot match the grid's axes to left-right, AP and SI")
    inside = np.asarray(lung.array) != 0
    (x_axis, _), (_, y_sign), (z_axis, z_sign) = axes
    total = np.where(inside, np.nan_to_num(data), 0.0).sum(axis=x_axis)
    count = inside.sum(axis=x_axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        projection = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    # remaining axes, in array order without x_axis
    remaining = [a for a in (0, 1, 2) if a != x_axis]
    if remaining.index(z_axis) != 0:
        projection = projection.T
    if z_sign > 0:  # superior at the top: rows must run S -> I
        projection = projection[::-1, :]
    if y_sign < 0:  # columns must run A -> P (increasing y)
        projection = projection[:, ::-1]
    return projection.astype(np.float32)


def diverging_rgb(values: npt.NDArray[np.floating], limit: float) -> npt.NDArray[np.uint8]:
    """RGB ``[..., 3]`` of the blue-white-red scale for ``values`` in ``[-limit, +limit]``
    (clipped); NaN gives the grey of :data:`OUTSIDE_RGB`."""
    if not limit > 0:
        raise ValueError(f"limit must be positive, got {limit}")
    data = np.asarray(values, dtype=np.float64)
    t = np.clip(np.nan_to_num(data) / limit, -1.0, 1.0)
    rgb = np.stack([np.interp(t, _ANCHORS, _COLOURS[:, c]) for c in range(3)], axis=-1)
    rgb[~np.isfinite(data)] = OUTSIDE_RGB
    return np.round(rgb).astype(np.uint8)


def nice_limit(projections: Sequence[npt.NDArray[np.floating]], *, floor: float = 0.02) -> float:
    """A symmetric colour limit: the 98th percentile of ``|value|`` over all panels, rounded up
    to 1, 1.5, 2, 2.5, 3, 4, 5, 6 or 8 × 10ⁿ, at least ``floor``."""
    finite = [np.abs(p[np.isfinite(p)]) for p in projections]
    values = np.concatenate(finite) if finite else np.zeros(0)
    raw = float(np.percentile(values, 98)) if values.size else floor
    raw = max(raw, floor)
    exponent = math.floor(math.log10(raw))
    for step in (1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0):
        candidate = step * 10.0**exponent
        if candidate >= raw - 1e-12:
            return float(candidate)
    return raw


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _text_size(draw: Any, text: str, font: Any) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return int(right - left), int(bottom - top)


def render_projections(
    panels: Sequence[tuple[str, npt.NDArray[np.floating]]],
    path: Path | str,
    *,
    title: str,
    limit: float | None = None,
    pixel_scale: int = 4,
    colorbar_label: str = "mean log-Jacobian",
) -> Path:
    """Write a PNG of sagittal projections side by side with a shared diverging colour scale.

    Args:
        panels: ``(panel title, projection [rows S→I, cols A→P])`` pairs.
        path: output ``.png``.
        title: figure title (top line).
        limit: colour scale ``[-limit, +limit]``; default :func:`nice_limit`.
        pixel_scale: screen pixels per template voxel (nearest-neighbour enlargement).
        colorbar_label: text beside the colour bar.

    Returns:
        The path written.

    Raises:
        ValueError: no panels, or a non-positive ``limit``/``pixel_scale``.
    """
    from PIL import Image, ImageDraw

    if not panels:
        raise ValueError("no panels to draw")
    if pixel_scale < 1:
        raise ValueError(f"pixel_scale must be >= 1, got {pixel_scale}")
    scale = float(limit) if limit is not None else nice_limit([p for _, p in panels])
    if not scale > 0:
        raise ValueError(f"limit must be positive, got {limit}")
    title_font, label_font, small_font = _font(18), _font(14), _font(12)
    images = []
    for _, projection in panels:
        rgb = diverging_rgb(projection, scale)
        image = Image.fromarray(rgb, mode="RGB")
        images.append(
            image.resize(
                (image.width * pixel_scale, image.height * pixel_scale), Image.Resampling.NEAREST
            )
        )
    pad, gap = 16, 28
    title_h, panel_title_h, orient_h = 34, 24, 18
    bar_w, bar_gap, bar_text_w = 18, 24, 150
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    columns = [
        max(image.width, _text_size(probe, name, label_font)[0] + 4)
        for (name, _), image in zip(panels, images, strict=True)
    ]
    panel_h = max(im.height for im in images)
    width = pad + sum(columns) + gap * (len(images) - 1)
    width += bar_gap + bar_w + bar_text_w + pad
    width = max(width, pad + _text_size(probe, title, title_font)[0] + pad)
    height = pad + title_h + panel_title_h + panel_h + orient_h + pad + 22
    canvas = Image.new("RGB", (width, height), BACKGROUND_RGB)
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, pad), title, fill=TEXT_RGB, font=title_font)
    top = pad + title_h + panel_title_h
    x = pad
    for (name, _), image, column in zip(panels, images, columns, strict=True):
        tw, _th = _text_size(draw, name, label_font)
        draw.text(
            (x + max(0, (column - tw) // 2), top - panel_title_h),
            name,
            fill=TEXT_RGB,
            font=label_font,
        )
        left = x + (column - image.width) // 2
        canvas.paste(image, (left, top))
        draw.rectangle(
            (left - 1, top - 1, left + image.width, top + image.height), outline=(90, 90, 90)
        )
        # orientation letters: superior/inferior at the left edge, anterior/posterior below
        draw.text((left + 3, top + 2), "S", fill=TEXT_RGB, font=small_font)
        draw.text((left + 3, top + image.height - 16), "I", fill=TEXT_RGB, font=small_font)
        draw.text((left, top + image.height + 3), "A", fill=TEXT_RGB, font=small_font)
        pw, _ = _text_size(draw, "P", small_font)
        draw.text(
            (left + image.width - pw, top + image.height + 3),
            "P",
            fill=TEXT_RGB,
            font=small_font,
        )
        x += column + gap
    # colour bar: +limit at the top (red) to -limit at the bottom (blue)
    bar_x = x - gap + bar_gap
    bar_h = panel_h
    ramp = np.linspace(scale, -scale, bar_h)[:, None].repeat(bar_w, axis=1)
    canvas.paste(Image.fromarray(diverging_rgb(ramp, scale), mode="RGB"), (bar_x, top))
    draw.rectangle((bar_x - 1, top - 1, bar_x + bar_w, top + bar_h), outline=(90, 90, 90))
    for fraction in (1.0, 0.5, 0.0, -0.5, -1.0):
        y = top + round((1.0 - fraction) / 2.0 * (bar_h - 1))
        draw.line((bar_x + bar_w, y, bar_x + bar_w + 4, y), fill=TEXT_RGB)
        label = f"{fraction * scale:+.3f}" if fraction else "0"
        _, th = _text_size(draw, label, small_font)
        draw.text((bar_x + bar_w + 7, y - th // 2 - 1), label, fill=TEXT_RGB, font=small_font)
    draw.text((bar_x, top - panel_title_h), colorbar_label, fill=TEXT_RGB, font=small_font)
    foot = top + panel_h + orient_h + 4
    draw.text(
        (pad, foot),
        "blue: shrinkage (log-Jacobian < 0)   white: no change   red: expansion   grey: outside the lung",
        fill=TEXT_RGB,
        font=small_font,
    )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out, format="PNG")
    return out


def figure5(
    maps: Sequence[npt.NDArray[np.floating]],
    functional: Sequence[bool | None],
    morphologic: Sequence[str | None],
    lung: Volume,
    out_dir: Path | str,
    *,
    limit: float | None = None,
    pixel_scale: int = 4,
    prefix: str = "figure5",
) -> dict[str, Any]:
    """Both panels of Figure 5 from template-space maps.

    Args:
        maps: per patient, the template-space log-Jacobian map ``[k, j, i]``.
        functional: per patient, functional worsening (``None`` leaves the patient out of A).
        morphologic: per patient, ``"improved"``, ``"stable"`` or ``"worse"`` (``None``: out).
        lung: template lung mask.
        out_dir: where ``<prefix>a_functional.png`` and ``<prefix>b_morphologic.png`` go.
        limit: shared colour limit for both figures (default: :func:`nice_limit` over both).
        pixel_scale: screen pixels per template voxel.
        prefix: file name prefix.

    Returns:
        ``{"files": [...], "limit": ..., "groups": {name: {"count", "mean_in_lung"}}}``.
    """
    out = Path(out_dir)
    f_labels = [None if v is None else FUNCTIONAL_GROUPS[int(bool(v))] for v in functional]
    m_names = dict(zip(("improved", "stable", "worse"), MORPHOLOGIC_GROUPS, strict=True))
    m_labels = [None if v is None else m_names[str(v)] for v in morphologic]
    groups_a = group_mean_maps(maps, f_labels, order=FUNCTIONAL_GROUPS)
    groups_b = group_mean_maps(maps, m_labels, order=MORPHOLOGIC_GROUPS)
    proj_a = {n: sagittal_projection(g.mean, lung) for n, g in groups_a.items() if g.count}
    proj_b = {n: sagittal_projection(g.mean, lung) for n, g in groups_b.items() if g.count}
    scale = limit if limit is not None else nice_limit([*proj_a.values(), *proj_b.values()])
    inside = np.asarray(lung.array) != 0
    files = []
    if proj_a:
        files.append(
            render_projections(
                [(f"{n} (n = {groups_a[n].count})", p) for n, p in proj_a.items()],
                out / f"{prefix}a_functional.png",
                title="A. Mean log-Jacobian, sagittal projection: functional changes",
                limit=scale,
                pixel_scale=pixel_scale,
            )
        )
    if proj_b:
        files.append(
            render_projections(
                [
                    (f"{n.split()[1].capitalize()} (n = {groups_b[n].count})", p)
                    for n, p in proj_b.items()
                ],
                out / f"{prefix}b_morphologic.png",
                title="B. Mean log-Jacobian, sagittal projection: morphologic changes",
                limit=scale,
                pixel_scale=pixel_scale,
            )
        )
    summary: dict[str, Any] = {}
    for group in (*groups_a.values(), *groups_b.values()):
        summary[group.name] = {
            "count": group.count,
            "mean_in_lung": float(np.nanmean(group.mean[inside])) if group.count else None,
        }
    return {"files": [str(f) for f in files], "limit": scale, "groups": summary}


def project_groups(groups: Mapping[str, GroupMap], lung: Volume) -> dict[str, FloatArray]:
    """:func:`sagittal_projection` of every non-empty group map."""
    return {name: sagittal_projection(g.mean, lung) for name, g in groups.items() if g.count}
