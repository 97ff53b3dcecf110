"""Lung/ILD segmentation pipeline: ``preprocess → infer → postprocess → write``, timed per stage.

Shaped like MONAI Label's ``basic_infer``: each stage is a method that can be overridden, and the
seconds spent in each one are returned with the result (``timings_s``): ``read`` (when the input is
a path), ``preprocess``, ``infer`` (plus the engine's own stages as ``infer/<stage>``),
``postprocess``, ``write`` (when an output path is given) and ``total``.

Example::

    result = run_segmentation(Path("ct.nii.gz"), engine="classical", output=Path("labels.nii.gz"))
    print(result.extent_pct)
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from inference.segmentation.engines import Engine, SegmentationResult, get_engine
from inference.volume import GeometryError, Volume

HU_MIN = -1024
HU_MAX = 3071


class SegmentationPipeline:
    """Runs one engine on one CT; see the module docstring for the stages.

    Args:
        engine: an :class:`~inference.segmentation.engines.Engine`, or its registry name.
        weights: weights folder for a named network engine (ignored by ``"classical"``).
        device: ``"cpu"`` or ``"cuda"`` (``"cuda:N"``).

    Raises:
        EngineUnavailable: when a named engine cannot be built.
    """

    def __init__(
        self,
        engine: Engine | str = "classical",
        *,
        weights: Path | None = None,
        device: str = "cpu",
    ) -> None:
        self.engine: Engine = (
            get_engine(engine, weights=weights, device=device)
            if isinstance(engine, str)
            else engine
        )

    def __call__(
        self, source: Volume | Path | str, *, output: Path | None = None
    ) -> SegmentationResult:
        """Segment ``source`` (a ``Volume`` in HU, or a DICOM folder / NIfTI / NRRD / MHA path).

        Returns:
            The result on the input's grid, with ``timings_s`` per stage.

        Raises:
            GeometryError: if the image is not a 3D scalar volume, or the engine returns a label map
                on another grid.
            ValueError: if the engine returns labels other than 0, 1, 2.
            OSError: if the input cannot be read or the output cannot be written.
        """
        timings: dict[str, float] = {}
        start = time.perf_counter()
        if isinstance(source, Volume):
            ct = source
        else:
            from inference.imageio import read_image

            ct = read_image(Path(source))
            timings["read"] = time.perf_counter() - start

        t = time.perf_counter()
        prepared = self.preprocess(ct)
        timings["preprocess"] = time.perf_counter() - t

        t = time.perf_counter()
        raw = self.infer(prepared)
        timings["infer"] = time.perf_counter() - t
        for stage, seconds in raw.timings_s.items():
            timings[f"infer/{stage}"] = seconds

        t = time.perf_counter()
        result = self.postprocess(raw, ct)
        timings["postprocess"] = time.perf_counter() - t

        if output is not None:
            t = time.perf_counter()
            self.write(result, Path(output))
            timings["write"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - start
        return replace(result, timings_s=timings)

    def preprocess(self, ct: Volume) -> Volume:
        """Check the CT and bring it to ``int16`` HU clipped to ``[-1024, 3071]``.

        Values below -1024 (padding outside the field of view, e.g. -2048 or -3024) become air.

        Raises:
            GeometryError: if the array is empty or not a real-valued numeric type.
        """
        array = ct.array
        if array.size == 0:
            raise GeometryError("the CT volume is empty")
        if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
            raise GeometryError(f"CT voxels must be numbers in HU, got dtype {array.dtype}")
        if array.dtype == np.int16 and array.min() >= HU_MIN and array.max() <= HU_MAX:
            return ct
        if np.issubdtype(array.dtype, np.floating):
            clipped = np.rint(np.clip(array, HU_MIN, HU_MAX))
        else:
            clipped = np.clip(array, HU_MIN, HU_MAX)
        return ct.with_array(clipped.astype(np.int16))

    def infer(self, ct: Volume) -> SegmentationResult:
        """Run the engine."""
        return self.engine.predict(ct)

    def postprocess(self, raw: SegmentationResult, ct: Volume) -> SegmentationResult:
        """Check the label map is on the CT's grid and recompute volumes from it.

        Raises:
            GeometryError: if the label map is not on the CT's grid.
            ValueError: if it holds a label other than 0, 1, 2.
        """
        if not raw.label_map.same_grid(ct):
            raise GeometryError(
                f"engine {raw.engine!r} returned a label map on another grid than the CT"
            )
        return SegmentationResult.from_label_map(
            raw.label_map,
            engine=raw.engine,
            version=raw.version,
            timings_s=raw.timings_s,
            lungs_lr=raw.lungs_lr,
            parameters=raw.parameters,
        )

    def write(self, result: SegmentationResult, output: Path) -> None:
        """Write the label map (``uint8``, the input's geometry) with ``inference.imageio``."""
        from inference.imageio import write_image

        output.parent.mkdir(parents=True, exist_ok=True)
        write_image(result.label_map, output)


def run_segmentation(
    source: Volume | Path | str,
    *,
    engine: Engine | str = "classical",
    weights: Path | None = None,
    device: str = "cpu",
    output: Path | None = None,
) -> SegmentationResult:
    """Segment one CT with one engine; see :class:`SegmentationPipeline`.

    Args:
        source: CT ``Volume`` in HU (array ``[k, j, i]``, LPS geometry), or a path to a DICOM
            folder, NIfTI, NRRD or MHA file.
        engine: engine or registry name (``"classical"``, ``"atlasnet"``, ``"unet"``).
        weights: weights folder for a network engine.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        output: where to write the label map (format from the suffix), or ``None``.

    Raises:
        EngineUnavailable: the engine cannot be built.
        GeometryError, ValueError, OSError: see :meth:`SegmentationPipeline.__call__`.
    """
    pipeline = SegmentationPipeline(engine, weights=weights, device=device)
    return pipeline(source, output=output)
