"""Data augmentation of the U-Net comparator (Chassagnon et al. 2020): in-plane rigid moves.

"Random rotations (between -10° and 10°) and translations (between 0 and 20 pixels per axis)",
no local deformations. The paper's slices are 512 x 512; at another input size the translation
scales with it (20 px at 512 is 10 px at 256), so the physical range stays the same.

AtlasNet uses no conventional augmentation: its registrations to the templates are the
augmentation.

Tensors are ``[N, C, H, W]`` images and ``[N, H, W]`` label maps (``j`` rows, ``i`` columns).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class RigidAugmentation:
    """Random rotation about the slice centre and translation, per slice.

    Attributes:
        max_rotation_deg: angles are uniform in ``[-max, +max]`` degrees.
        max_translation_px: shifts are uniform in ``[-max, +max]`` pixels per axis at
            ``reference_size_px`` (the paper's "0 to 20 pixels", either direction).
        reference_size_px: slice size the translation is given for (512).
        probability: chance that a slice is moved at all.
    """

    max_rotation_deg: float = 10.0
    max_translation_px: float = 20.0
    reference_size_px: int = 512
    probability: float = 1.0

    def __call__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        generator: torch.Generator,
        valid: torch.Tensor | None = None,
        fill_value: float = -1.0,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Move each slice of a batch; the labels (and ``valid``) move with it.

        Args:
            images: ``[N, C, H, W]`` float (normalised CT; ``fill_value`` enters at the border,
                -1 being the bottom of the HU window, i.e. air).
            labels: ``[N, H, W]`` integer label maps (nearest-neighbour; 0 enters at the border).
            generator: the seeded random stream (on the images' device).
            valid: optional ``[N, H, W]`` mask of annotated pixels (0 enters at the border).
            fill_value: image value outside the slice.

        Returns:
            ``(images, labels, valid)`` moved, same shapes and dtypes.
        """
        n, _, height, width = images.shape
        device = images.device
        u = torch.rand((n, 4), generator=generator, device=device)
        angle = (2.0 * u[:, 0] - 1.0) * math.radians(self.max_rotation_deg)
        scale = self.max_translation_px / float(self.reference_size_px)
        # affine_grid works in normalised coordinates where the slice spans [-1, 1]: a shift of
        # d pixels is 2 d / size.
        shift_x = (2.0 * u[:, 1] - 1.0) * scale * 2.0
        shift_y = (2.0 * u[:, 2] - 1.0) * scale * 2.0
        apply = (u[:, 3] < self.probability).to(images.dtype)
        angle, shift_x, shift_y = angle * apply, shift_x * apply, shift_y * apply
        cos, sin = torch.cos(angle), torch.sin(angle)
        # Output pixel p samples input at R p + t (normalised (x, y) = (i, j)); square slices
        # keep the rotation isotropic, otherwise the aspect ratio is compensated.
        aspect = width / height
        theta = torch.zeros((n, 2, 3), dtype=images.dtype, device=device)
        theta[:, 0, 0] = cos
        theta[:, 0, 1] = -sin / aspect
        theta[:, 1, 0] = sin * aspect
        theta[:, 1, 1] = cos
        theta[:, 0, 2] = shift_x
        theta[:, 1, 2] = shift_y
        grid = F.affine_grid(theta, [n, 1, height, width], align_corners=False)
        moved = (
            F.grid_sample(
                images - fill_value,
                grid,
                mode="bilinear",
                padding_mode="zeros",
                align_corners=False,
            )
            + fill_value
        )
        moved_labels = (
            F.grid_sample(
                labels[:, None].to(images.dtype),
                grid,
                mode="nearest",
                padding_mode="zeros",
                align_corners=False,
            )[:, 0]
            .round()
            .to(labels.dtype)
        )
        moved_valid = None
        if valid is not None:
            moved_valid = (
                F.grid_sample(
                    valid[:, None].to(images.dtype),
                    grid,
                    mode="nearest",
                    padding_mode="zeros",
                    align_corners=False,
                )[:, 0]
                > 0.5
            ).to(valid.dtype)
        return moved, moved_labels, moved_valid
