"""Slice-wise network inference helpers shared by the AtlasNet and U-Net engines.

* :func:`canonical` / :meth:`Canonical.restore`: permute/flip a volume's axes so that array axes
  ``(i, j, k)`` point along LPS ``(+x, +y, +z)`` (SimpleITK ``DICOMOrient``, no resampling), and
  back — the networks always see axial slices in one orientation.
* :func:`resize_slices`: in-plane resampling of ``[K, H, W]`` stacks between edge-aligned grids
  (same field of view, ``F.interpolate`` with ``align_corners=False``; antialiased when shrinking).
* :func:`predict_slices`: a network over ``[K, rows, cols]`` normalised slices in batches, with
  softmax outputs.
* :func:`body_mask`: everything inside the skin (for the "no lung outside the thorax" guard).
* :func:`remove_class_weights`: undo the prior shift that a class-weighted cross-entropy puts
  into a network's softmax, so that 0.5 / the argmax is the unweighted decision again.

Arrays are ``[k, j, i]`` (slices, rows, columns); probability stacks ``[C, k, j, i]``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from inference.volume import Volume

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True, eq=False)
class Canonical:
    """A volume reoriented to LPS axes, and how to bring arrays back to the original grid.

    Attributes:
        volume: the reoriented volume (same voxels, permuted/flipped; direction ≈ identity for
            axis-aligned scans).
        original: the input volume (its grid is where :meth:`restore` goes).
        orientation: the input's DICOM orientation code (e.g. ``"LPS"``, ``"RAI"``).
    """

    volume: Volume
    original: Volume
    orientation: str

    def restore(self, array: npt.NDArray[np.generic]) -> Volume:
        """An array on the canonical grid, as a Volume on the original grid (exact permutation).

        Raises:
            ValueError: if ``array`` is not on the canonical grid's shape.
        """
        if array.shape != self.volume.shape_kji:
            raise ValueError(
                f"array shape {array.shape} is not the canonical {self.volume.shape_kji}"
            )
        if self.orientation == "LPS":
            return self.original.with_array(array)
        import SimpleITK as sitk

        image = self.volume.with_array(np.ascontiguousarray(array)).to_sitk()
        back = Volume.from_sitk(sitk.DICOMOrient(image, self.orientation))
        return self.original.with_array(np.asarray(back.array))


def canonical(volume: Volume) -> Canonical:
    """Reorient ``volume`` so array axes ``(i, j, k)`` run along LPS ``+x, +y, +z``.

    Permutation and flips only (the nearest axis-aligned orientation for oblique scans), so it
    is exact and reversible with :meth:`Canonical.restore`.
    """
    import SimpleITK as sitk

    code = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(
        tuple(float(v) for v in volume.direction.ravel())
    )
    if code == "LPS":
        return Canonical(volume=volume, original=volume, orientation=code)
    oriented = Volume.from_sitk(sitk.DICOMOrient(volume.to_sitk(), "LPS"))
    return Canonical(volume=oriented, original=volume, orientation=code)


def in_plane_grid(volume: Volume, size: tuple[int, int]) -> Volume:
    """The grid with ``volume``'s slices and in-plane field of view, ``size = (rows, cols)``.

    Pixel edges of the first and last rows/columns coincide with the input's (edge-aligned), so
    :func:`resize_slices` maps exactly between the two. Returns a ``uint8`` zero volume.
    """
    n_k, n_j, n_i = volume.shape_kji
    rows, cols = size
    sx, sy, sz = volume.spacing_mm
    new_sx, new_sy = sx * n_i / cols, sy * n_j / rows
    # The first pixel's centre moves from half an old pixel to half a new one inside the edge.
    shift_ijk = np.array([(new_sx - sx) / 2.0 / sx, (new_sy - sy) / 2.0 / sy, 0.0])
    origin = volume.index_to_lps(shift_ijk)
    return Volume(
        np.zeros((n_k, rows, cols), dtype=np.uint8),
        (new_sx, new_sy, sz),
        (float(origin[0]), float(origin[1]), float(origin[2])),
        volume.direction,
    )


def resize_slices(
    stack: torch.Tensor, size: tuple[int, int], *, mode: str = "bilinear"
) -> torch.Tensor:
    """Resample ``[N, C, H, W]`` to ``[N, C, rows, cols]`` between edge-aligned grids.

    ``mode`` ``"bilinear"`` (antialiased when shrinking) or ``"nearest"`` (label maps).
    """
    if tuple(stack.shape[-2:]) == tuple(size):
        return stack
    if mode == "nearest":
        return F.interpolate(stack, size=size, mode="nearest-exact")
    shrinking = stack.shape[-2] > size[0] or stack.shape[-1] > size[1]
    return F.interpolate(
        stack, size=size, mode="bilinear", align_corners=False, antialias=shrinking
    )


def predict_slices(
    network: nn.Module,
    slices: FloatArray,
    *,
    device: str = "cpu",
    batch_size: int = 8,
    out_size: tuple[int, int] | None = None,
    consume: Callable[[int, int, list[torch.Tensor]], None] | None = None,
    decide: Callable[[list[torch.Tensor]], list[torch.Tensor]] | None = None,
) -> list[FloatArray]:
    """Run ``network`` over normalised slices ``[K, H, W]``, softmax per output head.

    Args:
        network: returns logits ``[N, C, h, w]`` or a tuple of such (one per head).
        slices: ``[K, H, W]`` float32, already normalised (see ``InputSpec.normalise``).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        batch_size: slices per forward pass.
        out_size: resample the probabilities to ``(rows, cols)`` (bilinear) before returning.
        consume: if given, called as ``consume(k0, k1, [probs [n, C, h, w] per head])`` per batch
            (on the CPU) and nothing is accumulated; the return value is then ``[]``.
        decide: if given, applied to each batch's probabilities on ``device`` (after
            ``out_size``); what it returns (labels, say: far fewer bytes than probabilities)
            goes to the CPU and to ``consume`` instead.

    Returns:
        One ``[C, K, h, w]`` float32 array per head.
    """
    network = network.to(device).eval()
    outputs: list[list[FloatArray]] = []
    with torch.inference_mode():
        for k0 in range(0, slices.shape[0], batch_size):
            k1 = min(slices.shape[0], k0 + batch_size)
            batch = torch.from_numpy(np.ascontiguousarray(slices[k0:k1], dtype=np.float32))
            logits = network(batch[:, None].to(device))
            heads = logits if isinstance(logits, tuple) else (logits,)
            probs = [torch.softmax(head.float(), dim=1) for head in heads]
            if out_size is not None:
                probs = [resize_slices(p, out_size) for p in probs]
            if decide is not None:
                probs = decide(probs)
            probs = [p.cpu() for p in probs]
            if consume is not None:
                consume(k0, k1, probs)
                continue
            if not outputs:
                outputs = [[] for _ in probs]
            for store, p in zip(outputs, probs, strict=True):
                store.append(p.numpy().transpose(1, 0, 2, 3))
    return [np.concatenate(store, axis=1) for store in outputs]


def remove_class_weights(
    probs: npt.NDArray[np.float32] | torch.Tensor,
    weights: tuple[float, ...] | list[float],
    *,
    axis: int = 0,
) -> npt.NDArray[np.float32] | torch.Tensor:
    """Softmax probabilities of a network trained with class weights ``ω``, prior-corrected.

    Minimising ``-Σ_c ω_c y_c log p̃_c`` drives the softmax towards ``p̃_c ∝ ω_c p_c`` (the
    class frequencies re-weighted by ``ω``), so thresholding ``p̃`` at 0.5 — or taking its
    argmax — calls class ``c`` far too often when ``ω_c`` is large (disease weight 65: ILD as
    soon as ``p > 1/66``). Dividing by ``ω`` and renormalising (logit adjustment,
    ``log p̃_c - log ω_c``) gives back ``p_c``, on which 0.5 / the argmax is the plain Bayes
    decision. Training is untouched.

    Args:
        probs: probabilities (numpy or torch), the classes along ``axis``.
        weights: ``ω_c``, one per class, positive.
        axis: the class axis.

    Raises:
        ValueError: a weight count other than the number of classes, or a weight ≤ 0.
    """
    if len(weights) != probs.shape[axis]:
        raise ValueError(f"{len(weights)} class weights for {probs.shape[axis]} classes")
    if min(weights) <= 0:
        raise ValueError(f"class weights must be positive, got {weights}")
    shape = [1] * probs.ndim
    shape[axis] = len(weights)
    if isinstance(probs, torch.Tensor):
        w = torch.as_tensor(list(weights), dtype=probs.dtype, device=probs.device).reshape(shape)
        scaled = probs / w
        return scaled / scaled.sum(dim=axis, keepdim=True).clamp_min(1e-12)
    w_np = np.asarray(weights, dtype=np.float32).reshape(shape)
    scaled_np = np.asarray(probs, dtype=np.float32) / w_np
    total = np.maximum(scaled_np.sum(axis=axis, keepdims=True), np.float32(1e-12))
    return (scaled_np / total).astype(np.float32)


def body_mask(
    hu: npt.NDArray[np.generic], *, threshold_hu: float = -500.0
) -> npt.NDArray[np.bool_]:
    """Inside the skin: tissue above ``threshold_hu``, largest 3D component, holes filled per slice.

    Args:
        hu: ``[k, j, i]`` CT in HU.

    Returns:
        ``bool`` ``[k, j, i]``; all False when there is no tissue.
    """
    tissue = np.asarray(hu) > threshold_hu
    try:  # 16-bit labels halve the largest array of a 400 x 512 x 512 CT (210 MB, not 420)
        labels, count = ndimage.label(tissue, output=np.uint16)
    except RuntimeError:  # more than 65 535 specks of tissue
        labels, count = ndimage.label(tissue)
    if count == 0:
        return np.zeros(tissue.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    body = labels == int(np.argmax(sizes))
    del labels
    filled = np.empty_like(body)
    for k in range(body.shape[0]):
        filled[k] = ndimage.binary_fill_holes(body[k])
    return filled
