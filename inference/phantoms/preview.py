"""PNG montages of a CT volume for eyeballing phantoms (Pillow only).

``python -m inference.phantoms.preview --out /tmp/phantom_preview.png [--seed S --extent E]``
renders a default-size phantom and writes one axial, coronal and sagittal slice in a lung
window, plus a mediastinal-window axial and the ILD label outline.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from inference.volume import Volume

U8 = npt.NDArray[np.uint8]


def window(hu: npt.NDArray[np.generic], center: float, width: float) -> U8:
    """Map HU to 8-bit grey with a display window."""
    lo = center - width / 2.0
    return np.asarray(
        np.clip((hu.astype(np.float32) - lo) / width, 0.0, 1.0) * 255.0, dtype=np.uint8
    )


def _resize(image: U8, width_px: int, height_px: int) -> U8:
    return np.asarray(
        Image.fromarray(image).resize(
            (max(1, width_px), max(1, height_px)), Image.Resampling.BILINEAR
        )
    )


def montage(
    ct: Volume,
    *,
    labels: Volume | None = None,
    axial_k: int | None = None,
    coronal_j: int | None = None,
    sagittal_i: int | None = None,
    tile_px: int = 384,
) -> U8:
    """RGB montage ``[rows, cols, 3]``: axial, coronal, sagittal (lung window), axial
    (mediastinal window) and, when ``labels`` is given, the axial with ILD (label 2) in red.

    Coronal and sagittal views are resampled to square millimetres with the head up.
    """
    hu = ct.array
    nk, nj, ni = ct.shape_kji
    sx, sy, sz = ct.spacing_mm
    k = nk // 2 if axial_k is None else axial_k
    j = nj // 2 if coronal_j is None else coronal_j
    i = ni // 2 if sagittal_i is None else sagittal_i
    scale = tile_px / max(ni * sx, nj * sy, nk * sz)
    axial = _resize(window(hu[k], -600, 1500), int(ni * sx * scale), int(nj * sy * scale))
    coronal = _resize(
        window(hu[::-1, j, :], -600, 1500), int(ni * sx * scale), int(nk * sz * scale)
    )
    sagittal = _resize(
        window(hu[::-1, :, i], -600, 1500), int(nj * sy * scale), int(nk * sz * scale)
    )
    soft = _resize(window(hu[k], 40, 400), int(ni * sx * scale), int(nj * sy * scale))
    tiles = [np.stack([t] * 3, axis=-1) for t in (axial, coronal, sagittal, soft)]
    if labels is not None:
        grey = window(hu[k], -600, 1500)
        rgb = np.stack([grey] * 3, axis=-1)
        ild = labels.array[k] == 2
        rgb[ild] = (0.55 * rgb[ild] + 0.45 * np.array([255, 40, 40])).astype(np.uint8)
        tiles.append(
            np.asarray(
                Image.fromarray(rgb).resize(
                    (axial.shape[1], axial.shape[0]), Image.Resampling.NEAREST
                )
            )
        )
    height = max(t.shape[0] for t in tiles)
    padded = [np.pad(t, ((0, height - t.shape[0]), (0, 4), (0, 0))) for t in tiles]
    return np.concatenate(padded, axis=1)


def save_montage(path: Path, ct: Volume, **kwargs: object) -> Path:
    """Write ``montage(ct, **kwargs)`` as a PNG and return its path."""
    Image.fromarray(montage(ct, **kwargs)).save(path)  # type: ignore[arg-type]
    return path


def main(argv: list[str] | None = None) -> int:
    from inference.phantoms.generator import make_phantom

    parser = argparse.ArgumentParser(prog="python -m inference.phantoms.preview")
    parser.add_argument("--out", type=Path, default=Path("/tmp/phantom_preview.png"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--extent", type=float, default=20.0)
    parser.add_argument("--shape-kji", type=int, nargs=3, default=None, metavar=("K", "J", "I"))
    args = parser.parse_args(argv)
    kwargs = {} if args.shape_kji is None else {"shape_kji": tuple(args.shape_kji)}
    phantom = make_phantom(seed=args.seed, extent_pct=args.extent, **kwargs)  # type: ignore[arg-type]
    ct, anat = phantom.ct, phantom.anatomy
    k = round(
        (anat.apex_z_mm - 0.72 * anat.lung_height_mm - ct.origin_lps_mm[2]) / ct.spacing_mm[2]
    )
    j = round((anat.center_y_mm + 30.0 - ct.origin_lps_mm[1]) / ct.spacing_mm[1])
    i = round((-65.0 - ct.origin_lps_mm[0]) / ct.spacing_mm[0])
    k = int(np.clip(k, 0, ct.shape_kji[0] - 1))
    j = int(np.clip(j, 0, ct.shape_kji[1] - 1))
    i = int(np.clip(i, 0, ct.shape_kji[2] - 1))
    save_montage(args.out, phantom.ct, labels=phantom.labels, axial_k=k, coronal_j=j, sagittal_i=i)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
