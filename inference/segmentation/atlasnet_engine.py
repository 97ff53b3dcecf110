"""The AtlasNet engine (Chassagnon et al., Radiology 2020): N template networks and a majority vote.

A trained AtlasNet model folder (see :mod:`inference.segmentation.weights`) holds N templates —
CTs from the training set, each on its *template grid* (axial, LPS-oriented, the network's
in-plane size; either the case's whole field of view or, by default on the CPU, only its lungs
and a margin, see :func:`inference.training.train.make_template`) with its label map — and one
dual-decoder network per template, trained on every training case registered onto that
template. Where a case maps outside a template grid, that network votes background.

``predict(ct)``, per template ``t``:

1. **register** the case onto template ``t`` with :func:`inference.registration.register` (the
   registration code the longitudinal engine uses), on a coarse isotropic grid
   (``registration.spacing_mm``, e.g. 4-6 mm on CPU, 2-3 mm on GPU): fixed = template (mask:
   its lungs), moving = case (mask: a rough lung mask, for the initial alignment). The field
   ``u`` lies on the coarse template grid: template point ``x`` ↔ case point ``x + u(x)``;
2. **warp** the full-resolution case onto the template grid through ``u`` (trilinear);
3. **predict** every axial slice with network ``t`` (softmax lung and disease probabilities;
   when the model records the class weights it was trained with — the paper's {1, 4} lung and
   {1, 65} disease weights — their prior shift is removed first, see
   :func:`inference.networks.slicewise.remove_class_weights`: without it a network calls ILD
   wherever the disease is more than 1/66 likely, and the ensemble over-segments);
4. **map back** the probabilities through the inverse field
   (:func:`inference.registration.invert_displacement`, coarse case grid), trilinear, onto the
   *vote grid* — the case's slices and field of view at the networks' in-plane resolution (the
   case grid itself when that is no finer) — and vote: network ``t`` votes lung where its lung
   probability is ≥ 0.5, and ILD where both its lung and disease probabilities are ≥ 0.5 (its
   own label 2).

The label map is the simple-majority vote (more than half of the networks; an exact tie, possible
with an even N, goes to the mean probability ≥ 0.5), taken at the CT's resolution from the vote
counts interpolated bilinearly in-plane: 2 where ILD wins (within the winning lung), 1 where
only lung wins, 0 elsewhere. The vote counts are kept (:class:`AtlasNetPrediction`, on the vote
grid) as an uncertainty map: the fraction of networks that called each voxel lung / ILD. Voxels
outside the body (tissue above -500 HU, holes filled) are never lung (``restrict_to_body``).

Arrays are ``[k, j, i]``; geometry in LPS mm; the label map is on the input CT's grid.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from inference.networks.slicewise import (
    body_mask,
    in_plane_grid,
    predict_slices,
    remove_class_weights,
    resize_slices,
)
from inference.registration import register, resample_isotropic
from inference.registration.base import RegistrationResult
from inference.registration.fields import (
    check_displacement,
    invert_displacement,
    lps_to_normalised,
)
from inference.segmentation.engines import (
    ILD,
    LUNG,
    EngineUnavailable,
    SegmentationResult,
    register_engine,
)
from inference.segmentation.weights import (
    InputSpec,
    WeightsError,
    load_network,
    read_metadata,
    recorded_ild_threshold,
    resolve_model_dir,
)
from inference.volume import Volume

ENGINE_NAME = "atlasnet"
ENGINE_VERSION = "1.1.0"


def cpu_registration_params(spacing_mm: float = 6.0) -> dict[str, Any]:
    """Registration parameters for a CPU: two levels (``2 s`` and ``s`` mm) with short runs.

    About 20-40 s per case and template on 2 cores at ``s = 6`` mm. The torch backend's own
    defaults (6 and 3 mm, 120 + 80 iterations) are the GPU setting.
    """
    return {
        "affine_levels_mm": [2.0 * spacing_mm],
        "affine_iterations": [60],
        "levels_mm": [2.0 * spacing_mm, spacing_mm],
        "iterations": [40, 30],
    }


#: :func:`cpu_registration_params` at 6 mm.
CPU_REGISTRATION_PARAMS: dict[str, Any] = cpu_registration_params(6.0)
# Points per slab when mapping between grids (bounded memory on 512 x 512 x 400 CTs).
_SLAB_POINTS = 1 << 19


@dataclass(frozen=True)
class RegistrationSettings:
    """How cases are registered to templates (recorded in the model; training and inference use
    the same settings).

    Attributes:
        backend: :func:`inference.registration.register` backend (``"torch"``, ``"elastix"``).
        spacing_mm: isotropic grid both images are resampled to before registering.
        params: backend parameters (see the backend's ``DEFAULT_PARAMS``).
        inverse_iterations: fixed-point iterations of the inverse field.
        inverse_tolerance_mm: stop the inversion when updates fall below this.
    """

    backend: str = "torch"
    spacing_mm: float = 6.0
    params: Mapping[str, Any] = field(default_factory=lambda: dict(CPU_REGISTRATION_PARAMS))
    inverse_iterations: int = 20
    inverse_tolerance_mm: float = 0.05

    def as_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "spacing_mm": self.spacing_mm,
            "params": dict(self.params),
            "inverse_iterations": self.inverse_iterations,
            "inverse_tolerance_mm": self.inverse_tolerance_mm,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RegistrationSettings:
        """Parse ``metadata["registration"]``.

        Raises:
            WeightsError: a malformed field.
        """
        try:
            settings = cls(
                backend=str(data.get("backend", "torch")),
                spacing_mm=float(data.get("spacing_mm", 6.0)),
                params=dict(data.get("params", CPU_REGISTRATION_PARAMS)),
                inverse_iterations=int(data.get("inverse_iterations", 20)),
                inverse_tolerance_mm=float(data.get("inverse_tolerance_mm", 0.05)),
            )
        except (TypeError, ValueError) as error:
            raise WeightsError(f"metadata registration is malformed: {error}") from error
        if not settings.spacing_mm > 0:
            raise WeightsError("metadata registration.spacing_mm must be positive")
        return settings


@dataclass(frozen=True, eq=False)
class AtlasTemplate:
    """One template: CT (int16 HU) and labels (0/1/2) on the template grid.

    The template grid is axial, LPS-oriented, with the network's in-plane size; its slices are
    the network's input slices. Its pixels need not be square.
    """

    ct: Volume
    labels: Volume
    source_case: str = ""

    def __post_init__(self) -> None:
        if not self.ct.same_grid(self.labels):
            raise WeightsError(f"template {self.source_case}: labels are not on the CT's grid")
        if not np.any(self.labels.array):
            raise WeightsError(f"template {self.source_case}: labels hold no lung")

    def coarse(self, spacing_mm: float) -> tuple[Volume, Volume]:
        """The template CT and its lung mask (uint8) resampled to ``spacing_mm`` isotropic."""
        ct = resample_isotropic(self.ct, spacing_mm, interpolation="linear", default_value=-1024.0)
        lungs = self.labels.with_array((np.asarray(self.labels.array) > 0).astype(np.uint8))
        mask = resample_isotropic(lungs, spacing_mm, interpolation="nearest", default_value=0.0)
        return ct, mask


def rough_lung_mask(ct: Volume) -> Volume:
    """Air inside the body below -400 HU, its largest components (uint8): an initialisation mask.

    Cheap and orientation-free; used only to start the template registration from the lungs'
    centroid. Falls back to the body when no air is found.
    """
    from scipy import ndimage

    hu = np.asarray(ct.array)
    body = body_mask(hu)
    air = (hu < -400) & body
    labels, count = ndimage.label(air)
    if count == 0:
        return ct.with_array(body.astype(np.uint8))
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    keep = np.argsort(sizes)[::-1][:2]
    keep = keep[sizes[keep] >= 0.1 * sizes[keep[0]]]
    return ct.with_array(np.isin(labels, keep).astype(np.uint8))


def _warp_through(
    source: torch.Tensor,
    source_grid: Volume,
    field_lps_mm: npt.NDArray[np.float32],
    field_grid: Volume,
    target_grid: Volume,
    *,
    mode: Literal["bilinear", "nearest"] = "bilinear",
    consume: Any = None,
    device: str = "cpu",
) -> npt.NDArray[np.float32] | None:
    """Sample ``source`` ``[1, C, k, j, i]`` at ``y + w(y)`` for every voxel ``y`` of
    ``target_grid``, ``w`` being a field on ``field_grid`` (trilinear, border-extended).

    Every step runs in torch on ``device``: the target voxel indices go to the field's and the
    source's normalised coordinates through affine maps composed once in float64, so the
    per-point work is two ``grid_sample`` calls and one small matrix product per slab.

    Returns ``[k, j, i, C]`` on the target grid, or ``None`` when ``consume(k0, k1, values)``
    takes each slab instead (bounded memory).
    """
    check_displacement(field_lps_mm, field_grid)
    dev = torch.device(device)
    to_source = lps_to_normalised(source_grid)
    index_to_field = lps_to_normalised(field_grid) @ target_grid.affine_lps
    index_to_source = to_source @ target_grid.affine_lps

    def on_device(matrix: npt.NDArray[np.float64]) -> torch.Tensor:
        return torch.as_tensor(matrix, dtype=torch.float32, device=dev)

    field_linear, field_offset = (
        on_device(index_to_field[:3, :3].T),
        on_device(index_to_field[:3, 3]),
    )
    source_linear, source_offset = (
        on_device(index_to_source[:3, :3].T),
        on_device(index_to_source[:3, 3]),
    )
    displacement_linear = on_device(to_source[:3, :3].T)  # LPS mm -> normalised source units
    field = torch.from_numpy(
        np.ascontiguousarray(np.moveaxis(np.asarray(field_lps_mm, np.float32), -1, 0))
    )[None].to(dev)
    source = source.to(dev)
    channels = int(source.shape[1])
    n_k, n_j, n_i = target_grid.shape_kji
    jj, ii = torch.meshgrid(
        torch.arange(n_j, device=dev, dtype=torch.float32),
        torch.arange(n_i, device=dev, dtype=torch.float32),
        indexing="ij",
    )
    plane = torch.stack([ii.reshape(-1), jj.reshape(-1)], dim=1)  # (i, j) of one slice
    step = max(1, _SLAB_POINTS // max(1, n_j * n_i))
    out = None if consume is not None else np.empty((n_k, n_j, n_i, channels), np.float32)
    with torch.no_grad():
        for k0 in range(0, n_k, step):
            k1 = min(n_k, k0 + step)
            kk = torch.arange(k0, k1, device=dev, dtype=torch.float32)
            index = torch.cat(
                [
                    plane.repeat(k1 - k0, 1),
                    kk.repeat_interleave(plane.shape[0])[:, None],
                ],
                dim=1,
            )
            at_field = (index @ field_linear + field_offset).reshape(1, -1, 1, 1, 3)
            shift = F.grid_sample(
                field, at_field, mode="bilinear", padding_mode="border", align_corners=True
            ).reshape(3, -1)
            at_source = index @ source_linear + source_offset + shift.T @ displacement_linear
            values = F.grid_sample(
                source,
                at_source.reshape(1, -1, 1, 1, 3),
                mode=mode,
                padding_mode="zeros",
                align_corners=True,
            )
            slab = values.reshape(channels, -1).T.reshape(k1 - k0, n_j, n_i, channels)
            result = slab.cpu().numpy()
            if consume is not None:
                consume(k0, k1, result)
            else:
                assert out is not None
                out[k0:k1] = result
    return out


@dataclass(frozen=True, eq=False)
class TemplateMapping:
    """A case registered onto one template, both ways.

    Attributes:
        template_grid: the template grid (network slices).
        case_grid: the case's own grid.
        coarse_template: coarse fixed grid of ``forward``.
        coarse_case: coarse moving grid of ``inverse``.
        forward: ``[k, j, i, 3]`` LPS mm on ``coarse_template``: template ``x`` ↔ case ``x + u``.
        inverse: ``[k, j, i, 3]`` LPS mm on ``coarse_case``: case ``y`` ↔ template ``y + v``.
        registration: the registration result (backend, version, params, timings).
    """

    template_grid: Volume
    case_grid: Volume
    coarse_template: Volume
    coarse_case: Volume
    forward: npt.NDArray[np.float32]
    inverse: npt.NDArray[np.float32]
    registration: RegistrationResult

    def case_to_template(
        self,
        volume: Volume,
        *,
        interpolation: Literal["linear", "nearest"] = "linear",
        default_value: float = 0.0,
        device: str = "cpu",
    ) -> npt.NDArray[np.float32]:
        """A volume on the case grid, resampled onto the template grid: ``[k, j, i]`` float32.

        ``device`` is where the sampling runs (``"cpu"``, ``"cuda[:N]"``).

        Raises:
            ValueError: if ``volume`` is not on the case grid.
        """
        if not volume.same_grid(self.case_grid):
            raise ValueError("volume is not on the case grid of this mapping")
        shifted = np.asarray(volume.array, dtype=np.float32) - np.float32(default_value)
        source = torch.from_numpy(np.ascontiguousarray(shifted))[None, None]
        mode: Literal["bilinear", "nearest"] = (
            "nearest" if interpolation == "nearest" else "bilinear"
        )
        out = _warp_through(
            source,
            self.case_grid,
            self.forward,
            self.coarse_template,
            self.template_grid,
            mode=mode,
            device=device,
        )
        assert out is not None
        return out[..., 0] + np.float32(default_value)

    def template_to_grid(
        self,
        channels: npt.NDArray[np.float32],
        target_grid: Volume,
        consume: Any,
        *,
        device: str = "cpu",
    ) -> None:
        """Map ``[C, k, j, i]`` values on the template grid onto ``target_grid``, slab by slab.

        ``target_grid`` must lie in the case's space (the case grid, or a resampling of it such
        as the vote grid). ``consume(k0, k1, values)`` receives ``[k1 - k0, j, i, C]`` float32
        for target slices ``k0:k1`` (trilinear; 0 outside the template grid).
        """
        source = torch.from_numpy(np.ascontiguousarray(channels, dtype=np.float32))[None]
        _warp_through(
            source,
            self.template_grid,
            self.inverse,
            self.coarse_case,
            target_grid,
            consume=consume,
            device=device,
        )

    def template_to_case(
        self, channels: npt.NDArray[np.float32], consume: Any, *, device: str = "cpu"
    ) -> None:
        """:meth:`template_to_grid` onto the case grid itself."""
        self.template_to_grid(channels, self.case_grid, consume, device=device)


def map_case_to_template(
    template: AtlasTemplate,
    ct: Volume,
    settings: RegistrationSettings,
    *,
    device: str = "cpu",
    coarse_template: tuple[Volume, Volume] | None = None,
    coarse_case: Volume | None = None,
    case_mask: Volume | None = None,
) -> TemplateMapping:
    """Register a case (moving) onto a template (fixed) on the coarse grid; invert the field.

    Args:
        template: the template.
        ct: case CT in HU, any grid/direction.
        settings: registration settings (the model's).
        device: ``"cpu"`` or ``"cuda[:N]"`` for the registration backend.
        coarse_template: ``template.coarse(settings.spacing_mm)`` if already computed.
        coarse_case: ``ct`` resampled to ``settings.spacing_mm`` isotropic, if already computed.
        case_mask: a lung mask on the coarse case grid (default :func:`rough_lung_mask`).

    Raises:
        inference.registration.RegistrationError: the backend failed.
    """
    fixed, fixed_mask = coarse_template or template.coarse(settings.spacing_mm)
    moving = coarse_case
    if moving is None:
        moving = resample_isotropic(
            ct, settings.spacing_mm, interpolation="linear", default_value=-1024.0
        )
    moving_mask = case_mask if case_mask is not None else rough_lung_mask(moving)
    params = dict(settings.params)
    if settings.backend == "torch":
        params.setdefault("device", "cuda" if device.startswith("cuda") else "cpu")
    result = register(
        fixed,
        moving,
        fixed_mask=fixed_mask,
        moving_mask=moving_mask if np.any(moving_mask.array) else None,
        backend=settings.backend,
        params=params,
    )
    inverse = invert_displacement(
        result.displacement,
        fixed,
        output_grid=moving,
        iterations=settings.inverse_iterations,
        tolerance_mm=settings.inverse_tolerance_mm,
    )
    return TemplateMapping(
        template_grid=template.ct,
        case_grid=ct,
        coarse_template=fixed,
        coarse_case=moving,
        forward=result.displacement,
        inverse=inverse,
        registration=result,
    )


@dataclass(frozen=True, eq=False)
class AtlasNetPrediction:
    """The ensemble's result and its votes.

    Attributes:
        result: the majority-vote label map and volumes.
        lung_votes: ``uint8`` ``[k, j, i]``: networks that called the voxel lung, on the *vote
            grid* — the CT's slices and field of view at the networks' in-plane resolution (the
            CT grid itself when that is no finer); resample it with
            ``inference.registration.resample_to_grid`` to overlay it on the CT.
        ild_votes: ``uint8`` ``[k, j, i]``, same grid: networks that called it ILD (inside their
            own lung).
        n_networks: N.
    """

    result: SegmentationResult
    lung_votes: Volume
    ild_votes: Volume
    n_networks: int

    def lung_vote_fraction(self) -> Volume:
        """``float32`` fraction of networks voting lung, per voxel (1 = unanimous lung)."""
        return self.lung_votes.with_array(
            self.lung_votes.array.astype(np.float32) / self.n_networks
        )

    def ild_vote_fraction(self) -> Volume:
        """``float32`` fraction of networks voting ILD, per voxel: the uncertainty map (values
        near 0.5 are contested, 0 and 1 unanimous)."""
        return self.ild_votes.with_array(self.ild_votes.array.astype(np.float32) / self.n_networks)


class AtlasNetEngine:
    """N template networks with majority voting; see the module docstring.

    Args:
        networks: one trained ``DualDecoderSegNet`` per template (same order).
        templates: the templates.
        input_spec: the networks' input (size, HU window).
        registration: case-to-template registration settings.
        model_version: the model folder's version (recorded in results).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        batch_size: slices per forward pass.
        restrict_to_body: no lung outside the body mask.
        class_weights: the ``(lung, disease)`` class weights the networks were trained with;
            their prior shift is removed from the probabilities before voting (``None``: the
            probabilities are voted on as they are).
        ild_threshold: a network votes ILD where its (prior-corrected) ILD probability
            reaches this (0.5, the plain decision, unless the model's training chose another
            on its validation split; see ``inference.training.train``).

    Raises:
        ValueError: if networks and templates differ in number or there are none.
    """

    name = ENGINE_NAME

    def __init__(
        self,
        networks: list[torch.nn.Module],
        templates: list[AtlasTemplate],
        *,
        input_spec: InputSpec,
        registration: RegistrationSettings,
        model_version: str = "untracked",
        device: str = "cpu",
        batch_size: int = 8,
        restrict_to_body: bool = True,
        class_weights: tuple[tuple[float, float], tuple[float, float]] | None = None,
        ild_threshold: float = 0.5,
    ) -> None:
        if not 0.0 < ild_threshold < 1.0:
            raise ValueError(f"ild_threshold must be in (0, 1), got {ild_threshold}")
        if not networks or len(networks) != len(templates):
            raise ValueError(
                f"AtlasNet needs one network per template, got {len(networks)} and {len(templates)}"
            )
        for template in templates:
            if template.ct.shape_kji[1:] != input_spec.in_plane_size:
                raise WeightsError(
                    f"template {template.source_case} is {template.ct.shape_kji[1:]} in-plane, "
                    f"the input spec says {input_spec.in_plane_size}"
                )
        self.networks = [n.to(device).eval() for n in networks]
        self.templates = templates
        self.input_spec = input_spec
        self.registration = registration
        self.model_version = model_version
        self.device = device
        self.batch_size = batch_size
        self.restrict_to_body = restrict_to_body
        self.class_weights = class_weights
        self.ild_threshold = ild_threshold
        self._coarse: dict[int, tuple[Volume, Volume]] = {}

    @property
    def version(self) -> str:
        return f"{ENGINE_VERSION}/{self.model_version}"

    @classmethod
    def from_folder(cls, folder: Path, *, device: str = "cpu", **options: Any) -> AtlasNetEngine:
        """Load a model folder (checked; see :mod:`inference.segmentation.weights`).

        Raises:
            WeightsError: anything wrong with the folder.
        """
        from inference.imageio import read_image

        metadata = read_metadata(folder, model="atlasnet")
        networks = [
            load_network(folder, metadata, t["network"], device=device) for t in metadata.templates
        ]
        templates = []
        for t in metadata.templates:
            try:
                ct, labels = read_image(folder / t["ct"]), read_image(folder / t["labels"])
            except (OSError, ValueError) as error:
                raise WeightsError(f"{folder}: cannot read template {t['ct']}: {error}") from error
            templates.append(
                AtlasTemplate(
                    ct=ct.with_array(np.asarray(ct.array).astype(np.int16)),
                    labels=labels.with_array(np.asarray(labels.array).astype(np.uint8)),
                    source_case=str(t.get("source_case", "")),
                )
            )
        options.setdefault("class_weights", training_class_weights(metadata.training))
        threshold = recorded_ild_threshold(metadata.training)
        if isinstance(threshold, tuple) and len(threshold) != len(networks):
            raise WeightsError(
                f"{folder}: metadata records {len(threshold)} ILD cuts for {len(networks)} networks"
            )
        if threshold is not None:
            options.setdefault("ild_threshold", threshold)
        return cls(
            networks,
            templates,
            input_spec=metadata.input_spec,
            registration=RegistrationSettings.from_dict(metadata.registration),
            model_version=metadata.version,
            device=device,
            **options,
        )

    @classmethod
    def create(cls, *, weights: Path | None = None, device: str = "cpu") -> AtlasNetEngine:
        """The registry factory: ``weights`` folder, or the default trained-in-project folder.

        Raises:
            EngineUnavailable: no model there (the message says how to train one), a model that
                fails its checks, or CUDA asked for but absent.
        """
        _check_cuda(device)
        try:
            folder = resolve_model_dir(weights, "atlasnet")
            return cls.from_folder(folder, device=device)
        except WeightsError as error:
            raise EngineUnavailable(str(error)) from error

    def parameters(self) -> dict[str, object]:
        return {
            "templates": len(self.templates),
            "in_plane_size": list(self.input_spec.in_plane_size),
            "registration": self.registration.as_dict(),
            "restrict_to_body": self.restrict_to_body,
            "class_weights_removed": [list(w) for w in self.class_weights]
            if self.class_weights
            else None,
            "ild_threshold": self.ild_threshold,
            "device": self.device,
        }

    def map_case(self, ct: Volume) -> list[TemplateMapping]:
        """Register ``ct`` onto every template (the expensive step, reusable for several runs)."""
        coarse_case = resample_isotropic(
            ct, self.registration.spacing_mm, interpolation="linear", default_value=-1024.0
        )
        case_mask = rough_lung_mask(coarse_case)
        mappings = []
        for t, template in enumerate(self.templates):
            if t not in self._coarse:
                self._coarse[t] = template.coarse(self.registration.spacing_mm)
            mappings.append(
                map_case_to_template(
                    template,
                    ct,
                    self.registration,
                    device=self.device,
                    coarse_template=self._coarse[t],
                    coarse_case=coarse_case,
                    case_mask=case_mask,
                )
            )
        return mappings

    def predict(self, ct: Volume) -> SegmentationResult:
        """Segment ``ct`` (HU, any grid): the majority-vote label map on its grid."""
        return self.predict_ensemble(ct).result

    def predict_ensemble(
        self, ct: Volume, *, mappings: list[TemplateMapping] | None = None
    ) -> AtlasNetPrediction:
        """Segment ``ct`` and keep the votes (see :class:`AtlasNetPrediction`).

        Args:
            ct: CT in HU, array ``[k, j, i]``, any direction.
            mappings: registrations from :meth:`map_case` (computed when ``None``).

        Raises:
            inference.registration.RegistrationError: a registration failed.
        """
        timings: dict[str, float] = {}
        start = time.perf_counter()
        if mappings is None:
            mappings = self.map_case(ct)
            timings["register"] = time.perf_counter() - start
        if len(mappings) != len(self.networks):
            raise ValueError("one mapping per template is needed")
        n = len(self.networks)
        vote_grid = self.vote_grid(ct)
        votes = _Votes(vote_grid.shape_kji, n)
        timings.update({"warp": 0.0, "network": 0.0, "map_back": 0.0})
        for network, mapping in zip(self.networks, mappings, strict=True):
            channels = self._template_probabilities(ct, network, mapping, timings)
            t = time.perf_counter()
            mapping.template_to_grid(
                channels, vote_grid, votes.consumer(self.ild_threshold), device=self.device
            )
            timings["map_back"] += time.perf_counter() - t
        t = time.perf_counter()
        labels = self._decide(ct, votes.counts(), n)
        timings["vote"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - start
        result = SegmentationResult.from_label_map(
            ct.with_array(labels),
            engine=self.name,
            version=self.version,
            timings_s=timings,
            parameters=self.parameters(),
        )
        return AtlasNetPrediction(
            result=result,
            lung_votes=vote_grid.with_array(votes.lung),
            ild_votes=vote_grid.with_array(votes.ild),
            n_networks=n,
        )

    def vote_grid(self, ct: Volume) -> Volume:
        """The grid votes are counted on: the case's slices at the networks' in-plane
        resolution (no finer than the case's own). The probabilities carry no detail beyond it,
        and mapping back 4x fewer points is what keeps a 512 x 512 x 400 CT within minutes on a
        CPU."""
        return in_plane_grid(
            ct,
            (
                min(ct.shape_kji[1], self.input_spec.in_plane_size[0]),
                min(ct.shape_kji[2], self.input_spec.in_plane_size[1]),
            ),
        )

    def _template_probabilities(
        self,
        ct: Volume,
        network: torch.nn.Module,
        mapping: TemplateMapping,
        timings: dict[str, float],
    ) -> npt.NDArray[np.float32]:
        """``[2, k, j, i]`` prior-corrected P(lung), P(disease) of one network on its template."""
        t = time.perf_counter()
        warped = mapping.case_to_template(ct, default_value=-1024.0, device=self.device)
        timings["warp"] = timings.get("warp", 0.0) + time.perf_counter() - t
        t = time.perf_counter()
        lung_p, disease_p = predict_slices(
            network,
            self.input_spec.normalise(warped),
            device=self.device,
            batch_size=self.batch_size,
        )
        del warped
        if self.class_weights is not None:
            lung_p = np.asarray(remove_class_weights(lung_p, self.class_weights[0]))
            disease_p = np.asarray(remove_class_weights(disease_p, self.class_weights[1]))
        timings["network"] = timings.get("network", 0.0) + time.perf_counter() - t
        return np.stack([lung_p[1], disease_p[1]])

    def case_probabilities(
        self, ct: Volume, mappings: list[TemplateMapping]
    ) -> list[npt.NDArray[np.float32]]:
        """Each network's ``[k, j, i, 2]`` P(lung), P(disease) on :meth:`vote_grid`.

        Holds every network's maps at once: for choosing cuts on small validation cases, not
        for whole CTs (:meth:`predict_ensemble` streams them).
        """
        grid = self.vote_grid(ct)
        out = []
        for network, mapping in zip(self.networks, mappings, strict=True):
            channels = self._template_probabilities(ct, network, mapping, {})
            mapped = np.empty((*grid.shape_kji, 2), np.float32)
            mapping.template_to_grid(channels, grid, _slab_writer(mapped), device=self.device)
            out.append(mapped)
        return out

    def labels_from_probabilities(
        self, ct: Volume, probabilities: Sequence[npt.NDArray[np.float32]], ild_threshold: float
    ) -> npt.NDArray[np.uint8]:
        """The majority-vote label map of ``probabilities`` (from :meth:`case_probabilities`,
        any subset of the networks) at ILD cut ``ild_threshold``: trying cuts without running
        the networks again."""
        grid = self.vote_grid(ct)
        votes = _Votes(grid.shape_kji, len(probabilities))
        for values in probabilities:
            votes.consumer(ild_threshold)(0, values.shape[0], values)
        return self._decide(ct, votes.counts(), len(probabilities))

    def _decide(
        self,
        ct: Volume,
        counts: tuple[
            npt.NDArray[np.uint8],
            npt.NDArray[np.uint8],
            npt.NDArray[np.uint16] | None,
            npt.NDArray[np.uint16] | None,
        ],
        n: int,
    ) -> npt.NDArray[np.uint8]:
        """Majority vote at the CT's resolution (counts interpolated bilinearly in-plane)."""
        lung_votes, ild_votes, lung_sum, ild_sum = counts
        n_k, n_j, n_i = ct.shape_kji
        hu = np.asarray(ct.array)
        # On the CT's own voxels: a body mask taken on the coarser vote grid lets lung through
        # at the skin, where averaging lifts air next to tissue above the threshold.
        inside = body_mask(hu) if self.restrict_to_body else None
        labels = np.zeros((n_k, n_j, n_i), np.uint8)
        arrays = [a for a in (lung_votes, ild_votes, lung_sum, ild_sum) if a is not None]
        for k0 in range(0, n_k, 16):
            k1 = min(n_k, k0 + 16)
            stack = torch.from_numpy(np.stack([a[k0:k1].astype(np.float32) for a in arrays], 1))
            up = resize_slices(stack, (n_j, n_i)).numpy()
            sums = (up[:, 2], up[:, 3]) if len(arrays) == 4 else (None, None)
            lung = _majority(up[:, 0], sums[0], n)
            ild = _majority(up[:, 1], sums[1], n) & lung
            if inside is not None:
                lung &= inside[k0:k1]
                ild &= inside[k0:k1]
            labels[k0:k1] = np.where(ild, ILD, np.where(lung, LUNG, 0))
        return labels


def _slab_writer(out: npt.NDArray[np.float32]) -> Any:
    """``consume(k0, k1, values)`` writing each slab into ``out[k0:k1]``."""

    def write(k0: int, k1: int, values: npt.NDArray[np.float32]) -> None:
        out[k0:k1] = values

    return write


class _Votes:
    """Lung and ILD vote counts of ``n`` networks on a grid, with probability sums (1/255
    units) that break exact ties when ``n`` is even."""

    def __init__(self, shape: tuple[int, int, int], n: int) -> None:
        self.lung = np.zeros(shape, np.uint8)
        self.ild = np.zeros(shape, np.uint8)
        even = n % 2 == 0
        self.lung_sum = np.zeros(shape, np.uint16) if even else None
        self.ild_sum = np.zeros(shape, np.uint16) if even else None

    def consumer(self, cut: float) -> Any:
        """``consume(k0, k1, values [.., 2])`` adding one network's votes at ILD cut ``cut``."""
        # Voting on disease probability + (0.5 - cut) puts the cut, and the tie-break on mean
        # probability, at the cut.
        shift = np.float32(0.5 - cut)

        def vote(k0: int, k1: int, values: npt.NDArray[np.float32]) -> None:
            # A network's ILD is its disease inside its own lung (its label 2).
            lung_p = values[..., 0]
            ild_p = np.minimum(lung_p, np.clip(values[..., 1] + shift, 0, 1))
            self.lung[k0:k1] += lung_p >= 0.5
            self.ild[k0:k1] += ild_p >= 0.5
            if self.lung_sum is not None and self.ild_sum is not None:
                self.lung_sum[k0:k1] += np.rint(lung_p * 255).astype(np.uint16)
                self.ild_sum[k0:k1] += np.rint(ild_p * 255).astype(np.uint16)

        return vote

    def counts(
        self,
    ) -> tuple[
        npt.NDArray[np.uint8],
        npt.NDArray[np.uint8],
        npt.NDArray[np.uint16] | None,
        npt.NDArray[np.uint16] | None,
    ]:
        return self.lung, self.ild, self.lung_sum, self.ild_sum


def training_class_weights(
    training: Mapping[str, Any],
) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """``(lung, disease)`` class weights recorded in a model's ``training.config``, if any.

    Raises:
        WeightsError: weights that are present but malformed.
    """
    config = training.get("config") or {}
    lung, disease = config.get("lung_weights"), config.get("disease_weights")
    if lung is None or disease is None:
        return None
    try:
        pair = (
            (float(lung[0]), float(lung[1])),
            (float(disease[0]), float(disease[1])),
        )
    except (TypeError, ValueError, IndexError) as error:
        raise WeightsError(
            f"metadata training.config class weights are malformed: {error}"
        ) from error
    if len(lung) != 2 or len(disease) != 2 or min(*pair[0], *pair[1]) <= 0:
        raise WeightsError("metadata training.config class weights must be two positive numbers")
    return pair


def _majority(
    votes: npt.NDArray[np.floating] | npt.NDArray[np.integer],
    prob_sum: npt.NDArray[np.floating] | npt.NDArray[np.integer] | None,
    n: int,
) -> npt.NDArray[np.bool_]:
    """More than half the votes; an exact tie goes to mean probability ≥ 0.5.

    ``votes`` counts networks (interpolated counts are fine); ``prob_sum`` sums their
    probabilities in 1/255 units.
    """
    twice = np.asarray(votes, dtype=np.float32) * 2.0
    decided = twice > n
    if prob_sum is not None:
        tie = np.abs(twice - n) < 1e-3
        decided |= tie & (np.asarray(prob_sum, dtype=np.float32) * 2.0 >= n * 255.0 - 1e-3)
    return np.asarray(decided)


def _check_cuda(device: str) -> None:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EngineUnavailable(f"device {device!r} asked for, but CUDA is not available here")


def _factory(*, weights: Path | None = None, device: str = "cpu") -> AtlasNetEngine:
    return AtlasNetEngine.create(weights=weights, device=device)


register_engine(ENGINE_NAME, _factory, replace=True)

__all__ = [
    "CPU_REGISTRATION_PARAMS",
    "ENGINE_NAME",
    "ENGINE_VERSION",
    "AtlasNetEngine",
    "AtlasNetPrediction",
    "AtlasTemplate",
    "RegistrationSettings",
    "TemplateMapping",
    "cpu_registration_params",
    "map_case_to_template",
    "rough_lung_mask",
    "training_class_weights",
]
