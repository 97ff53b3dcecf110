"""The U-Net comparator's augmentation: rotations ±10°, translations up to 20 px at 512."""

from __future__ import annotations

import pytest
import torch

from inference.training.augment import RigidAugmentation


def _square() -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.zeros(1, 64, 64, dtype=torch.long)
    labels[0, 24:40, 24:40] = 2
    images = torch.where(labels > 0, 1.0, -1.0)[:, None].float()
    return images, labels


def _centroid(mask: torch.Tensor) -> torch.Tensor:
    rows, cols = torch.nonzero(mask, as_tuple=True)
    return torch.stack([rows.float().mean(), cols.float().mean()])


def test_translations_stay_within_20_px_at_512_scaled_to_the_slice() -> None:
    images, labels = _square()
    moves = RigidAugmentation(max_rotation_deg=0.0, max_translation_px=20.0)
    generator = torch.Generator().manual_seed(0)
    shifts = []
    for _ in range(30):
        _, moved, _ = moves(images, labels, generator=generator)
        shifts.append((_centroid(moved[0] == 2) - _centroid(labels[0] == 2)).abs().max())
    # 20 px at 512 is 2.5 px at 64 (plus half a pixel of nearest-neighbour rounding).
    assert max(float(s) for s in shifts) <= 3.0
    assert max(float(s) for s in shifts) > 0.5


def test_labels_and_valid_move_with_the_image() -> None:
    images, labels = _square()
    valid = torch.ones_like(labels, dtype=torch.bool)
    moves = RigidAugmentation(max_rotation_deg=10.0, max_translation_px=160.0)
    moved_images, moved_labels, moved_valid = moves(
        images, labels, generator=torch.Generator().manual_seed(3), valid=valid
    )
    assert moved_labels.dtype == labels.dtype
    assert set(moved_labels.unique().tolist()) <= {0, 2}
    inside = moved_labels[0] == 2
    assert float(moved_images[0, 0][inside].mean()) > 0.8
    assert moved_valid is not None and not bool(moved_valid.all())  # border came in


def test_rotation_keeps_the_area_and_is_seeded() -> None:
    images, labels = _square()
    moves = RigidAugmentation(max_rotation_deg=10.0, max_translation_px=0.0)
    a = moves(images, labels, generator=torch.Generator().manual_seed(7))[1]
    b = moves(images, labels, generator=torch.Generator().manual_seed(7))[1]
    assert torch.equal(a, b)
    assert int((a == 2).sum()) == pytest.approx(int((labels == 2).sum()), rel=0.1)
