"""Segmentation engines: the common result type and the registry that names them.

An *engine* turns a CT ``Volume`` (Hounsfield units) into a label map on the same grid:

* ``0`` background (outside the lungs),
* ``1`` lung without interstitial lung disease (ILD),
* ``2`` ILD (ground glass, reticulation, honeycombing; not separated by pattern, as in
  Chassagnon et al. 2020).

The lung is ``1 ∪ 2``. Every engine records its ``name`` and ``version`` in its results so an
output can always be traced to what produced it.

Engines are found by name through :func:`get_engine`. ``"classical"`` (no weights, CPU) is always
available. ``"atlasnet"`` and ``"unet"`` are reserved for the networks: a module that provides one calls
:func:`register_engine` when it is imported, and :data:`ENGINE_MODULES` lists the modules
:func:`get_engine` imports to find it. Until one does, :func:`get_engine` raises
:class:`EngineUnavailable`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from inference.volume import GeometryError, Volume

BACKGROUND = 0
LUNG = 1
ILD = 2
LABEL_NAMES: Mapping[int, str] = {BACKGROUND: "background", LUNG: "lung without ILD", ILD: "ILD"}

RESERVED_ENGINES = ("atlasnet", "unet")
"""Names kept for the networks of Chassagnon et al. 2020 (registered by their own modules)."""

ENGINE_MODULES: dict[str, tuple[str, ...]] = {
    "atlasnet": ("inference.networks.engines", "inference.networks.atlasnet"),
    "unet": ("inference.networks.engines", "inference.networks.unet"),
}
"""Modules :func:`get_engine` imports, in order, when a reserved name is not registered yet; the
first that registers the name wins (a module registers by calling :func:`register_engine` when
it is imported)."""


class EngineUnavailable(RuntimeError):
    """The engine asked for cannot run here (unknown name, not built yet, weights missing...)."""


@dataclass(frozen=True)
class SliceMeasure:
    """Lung and ILD volumes in one axial slice of the label map.

    Attributes:
        index_k: slice index ``k`` in the label map's array ``[k, j, i]``.
        z_mm: LPS ``z`` (superior positive) of the slice centre, millimetres.
        lung_ml: lung volume (labels 1 and 2) in the slice, millilitres.
        ild_ml: ILD volume (label 2) in the slice, millilitres.
    """

    index_k: int
    z_mm: float
    lung_ml: float
    ild_ml: float

    def as_dict(self) -> dict[str, float | int]:
        return {
            "index_k": self.index_k,
            "z_mm": self.z_mm,
            "lung_ml": self.lung_ml,
            "ild_ml": self.ild_ml,
        }


@dataclass(frozen=True)
class SegmentationResult:
    """A lung/ILD label map with the quantities derived from it.

    Build it with :meth:`from_label_map`, which checks the labels and computes the volumes.

    Attributes:
        label_map: ``uint8`` volume ``[k, j, i]`` with 0 background, 1 lung without ILD, 2 ILD, on
            the grid of the CT it was computed from.
        engine: engine name (``"classical"``, ``"atlasnet"``...).
        version: engine version string (changes whenever the output can change).
        lung_ml: lung volume (labels 1 and 2), millilitres.
        ild_ml: ILD volume (label 2), millilitres.
        extent_pct: ``ild_ml / lung_ml * 100``; ``0.0`` when there is no lung.
        per_slice: one :class:`SliceMeasure` per slice ``k`` that contains lung, ascending ``k``.
        timings_s: seconds per stage (keys depend on who filled them: the engine's own stages, or
            the pipeline's ``preprocess``/``infer``/``postprocess``/``write``/``total``).
        lungs_lr: optional ``uint8`` volume, same grid, 0 outside, 1 right lung, 2 left lung.
        parameters: the engine parameters that produced the result (for provenance).
    """

    label_map: Volume
    engine: str
    version: str
    lung_ml: float
    ild_ml: float
    extent_pct: float
    per_slice: tuple[SliceMeasure, ...]
    timings_s: dict[str, float] = field(default_factory=dict)
    lungs_lr: Volume | None = None
    parameters: dict[str, object] = field(default_factory=dict)

    @classmethod
    def from_label_map(
        cls,
        label_map: Volume,
        *,
        engine: str,
        version: str,
        timings_s: Mapping[str, float] | None = None,
        lungs_lr: Volume | None = None,
        parameters: Mapping[str, object] | None = None,
    ) -> SegmentationResult:
        """Wrap a label map and compute lung/ILD volumes, extent and per-slice values.

        Args:
            label_map: volume ``[k, j, i]`` holding only 0, 1 and 2 (any integer dtype; stored as
                ``uint8``).
            engine: engine name.
            version: engine version.
            timings_s: seconds per stage.
            lungs_lr: optional right/left lung labels on the same grid (0/1 right/2 left).
            parameters: engine parameters, for provenance.

        Raises:
            ValueError: if the label map holds a value other than 0, 1, 2.
            GeometryError: if ``lungs_lr`` is not on the label map's grid.
        """
        labels = np.asarray(label_map.array)
        if labels.dtype != np.uint8:
            if labels.size and (labels.min() < 0 or labels.max() > ILD):
                raise ValueError(f"label map values must be 0, 1 or 2; got {np.unique(labels)}")
            labels = labels.astype(np.uint8)
        elif labels.size and labels.max() > ILD:
            raise ValueError(f"label map values must be 0, 1 or 2; got {np.unique(labels)}")
        label_volume = label_map.with_array(labels) if labels is not label_map.array else label_map
        if lungs_lr is not None and not lungs_lr.same_grid(label_volume):
            raise GeometryError("lungs_lr is not on the grid of the label map")
        voxel_ml = label_volume.voxel_volume_ml
        lung_per_slice = np.count_nonzero(labels, axis=(1, 2))
        ild_per_slice = np.count_nonzero(labels == ILD, axis=(1, 2))
        lung_ml = float(lung_per_slice.sum()) * voxel_ml
        ild_ml = float(ild_per_slice.sum()) * voxel_ml
        extent_pct = 100.0 * ild_ml / lung_ml if lung_ml > 0 else 0.0
        z_mm = _slice_centre_z_mm(label_volume)
        per_slice = tuple(
            SliceMeasure(
                index_k=int(k),
                z_mm=float(z_mm[k]),
                lung_ml=float(lung_per_slice[k]) * voxel_ml,
                ild_ml=float(ild_per_slice[k]) * voxel_ml,
            )
            for k in np.flatnonzero(lung_per_slice)
        )
        return cls(
            label_map=label_volume,
            engine=engine,
            version=version,
            lung_ml=lung_ml,
            ild_ml=ild_ml,
            extent_pct=extent_pct,
            per_slice=per_slice,
            timings_s=dict(timings_s or {}),
            lungs_lr=lungs_lr,
            parameters=dict(parameters or {}),
        )

    def summary(self) -> dict[str, object]:
        """JSON-ready summary: volumes (mL), extent (%), per-slice values, timings (s), engine."""
        return {
            "engine": self.engine,
            "version": self.version,
            "lung_ml": round(self.lung_ml, 3),
            "ild_ml": round(self.ild_ml, 3),
            "extent_pct": round(self.extent_pct, 3),
            "per_slice": [
                {
                    "index_k": s.index_k,
                    "z_mm": round(s.z_mm, 3),
                    "lung_ml": round(s.lung_ml, 4),
                    "ild_ml": round(s.ild_ml, 4),
                }
                for s in self.per_slice
            ],
            "timings_s": {name: round(seconds, 4) for name, seconds in self.timings_s.items()},
            "parameters": self.parameters,
        }


def _slice_centre_z_mm(volume: Volume) -> npt.NDArray[np.float64]:
    """LPS ``z`` (mm) of the centre of every slice ``k``."""
    n_k, n_j, n_i = volume.shape_kji
    index = np.zeros((n_k, 3))
    index[:, 0] = (n_i - 1) / 2.0
    index[:, 1] = (n_j - 1) / 2.0
    index[:, 2] = np.arange(n_k)
    return volume.index_to_lps(index)[:, 2]


@runtime_checkable
class Engine(Protocol):
    """Something that segments lungs and ILD on a CT volume.

    ``predict`` takes a CT in Hounsfield units, array ``[k, j, i]`` in any orientation, and returns
    a :class:`SegmentationResult` whose label map is on the CT's grid.
    """

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    def predict(self, ct: Volume) -> SegmentationResult: ...


EngineFactory = Callable[..., Engine]
"""``factory(*, weights: Path | None, device: str) -> Engine``."""

_REGISTRY: dict[str, EngineFactory] = {}


def register_engine(name: str, factory: EngineFactory, *, replace: bool = False) -> None:
    """Make ``get_engine(name, ...)`` build engines with ``factory(weights=..., device=...)``.

    Raises:
        ValueError: if ``name`` is already registered and ``replace`` is false.
    """
    if name in _REGISTRY and not replace:
        raise ValueError(f"engine {name!r} is already registered")
    _REGISTRY[name] = factory


def available_engines() -> tuple[str, ...]:
    """Names that :func:`get_engine` knows, registered or reserved, sorted."""
    _ensure_builtin()
    return tuple(sorted(set(_REGISTRY) | set(RESERVED_ENGINES)))


def get_engine(name: str, *, weights: Path | None = None, device: str = "cpu") -> Engine:
    """Build the engine called ``name``.

    Args:
        name: ``"classical"``, or a reserved/registered name (``"atlasnet"``, ``"unet"``).
        weights: folder or file with the model weights (ignored by ``"classical"``).
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Raises:
        EngineUnavailable: unknown name, a reserved engine whose module is not there yet, or an
            engine that cannot start (missing weights, no CUDA...).
        ValueError: a malformed ``device``.
    """
    _check_device(device)
    _ensure_builtin()
    if name not in _REGISTRY:
        _import_provider(name)
    factory = _REGISTRY.get(name)
    if factory is None:
        if name in RESERVED_ENGINES:
            raise EngineUnavailable(
                f"engine {name!r} is reserved but not available yet (no module has registered it);"
                " use 'classical'"
            )
        raise EngineUnavailable(f"unknown engine {name!r}; known: {', '.join(available_engines())}")
    return factory(weights=weights, device=device)


def _check_device(device: str) -> None:
    if device == "cpu" or device == "cuda":
        return
    if device.startswith("cuda:") and device[5:].isdigit():
        return
    raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def _import_provider(name: str) -> None:
    """Import the modules that may register ``name`` until one does.

    Raises:
        EngineUnavailable: if a provider module exists but cannot be imported.
    """
    for module in ENGINE_MODULES.get(name, ()):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name is not None and module.startswith(error.name):
                continue  # that provider is not there (yet)
            raise EngineUnavailable(
                f"engine {name!r}: importing {module} failed: {error}"
            ) from error
        except ImportError as error:
            raise EngineUnavailable(
                f"engine {name!r}: importing {module} failed: {error}"
            ) from error
        if name in _REGISTRY:
            return


def _ensure_builtin() -> None:
    if "classical" not in _REGISTRY:
        # Imported here: classical.py imports this module for the result types.
        from inference.segmentation.classical import ClassicalEngine

        register_engine("classical", ClassicalEngine.create, replace=True)
