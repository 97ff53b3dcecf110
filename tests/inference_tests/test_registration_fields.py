"""Displacement fields, Jacobians and resampling: exact answers on tiny grids (no registration)."""

from __future__ import annotations

import numpy as np
import pytest

from inference.registration import (
    affine_displacement,
    compose,
    folding_fraction,
    invert_displacement,
    jacobian_determinant,
    log_jacobian,
    lung_regions,
    regional_means,
    resample_isotropic,
    resample_to_grid,
    summarize_jacobian,
    warp_volume,
)
from inference.registration.fieldio import read_displacement, write_displacement
from inference.registration.fields import grid_points_lps
from inference.registration.resample import crop_to_mask, dilate_mask
from inference.registration.synthetic import shrinkage_field, sinusoidal_field
from inference.volume import GeometryError, Volume

# Index axes that do not line up with LPS: i runs to the patient's right (-x), j to superior
# (+z), k to anterior (-y). Catches any (i, j, k) / (x, y, z) / [k, j, i] mix-up.
OBLIQUE = np.array([[-1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


def grid(shape=(12, 14, 16), spacing=(1.5, 2.0, 2.5), direction=None, origin=(3.0, -7.0, 11.0)):
    return Volume(
        np.zeros(shape, dtype=np.float32),
        spacing,
        origin,
        np.eye(3) if direction is None else direction,
    )


def linear_image(volume: Volume, weights=(0.5, -1.25, 2.0), offset=10.0) -> Volume:
    """Intensity a . x + b of the LPS position: trilinear interpolation reproduces it exactly."""
    points = grid_points_lps(volume)
    return volume.with_array((points @ np.array(weights) + offset).astype(np.float32))


@pytest.mark.parametrize("direction", [None, OBLIQUE], ids=["identity", "oblique"])
def test_warp_samples_moving_at_x_plus_u_in_lps(direction):
    fixed = grid(direction=direction)
    # A larger moving grid centred on the fixed one, so that every x + u(x) falls inside it.
    centre = fixed.index_to_lps((np.array(fixed.shape_kji[::-1]) - 1) / 2.0)
    direction_m = np.eye(3) if direction is None else direction
    origin = centre - direction_m @ np.full(3, 29 * 2.0 / 2)
    moving = linear_image(
        grid(shape=(30, 30, 30), spacing=(2.0, 2.0, 2.0), direction=direction, origin=origin)
    )
    rng = np.random.default_rng(0)
    u = rng.uniform(-2.0, 2.0, (*fixed.shape_kji, 3)).astype(np.float32)

    warped = warp_volume(moving, u, fixed, "linear")

    expected = (grid_points_lps(fixed) + u) @ np.array([0.5, -1.25, 2.0]) + 10.0
    assert warped.same_grid(fixed)
    np.testing.assert_allclose(warped.array, expected, atol=1e-3)


def test_warp_nearest_keeps_labels_and_dtype():
    labels = grid().with_array(
        np.random.default_rng(1).integers(0, 3, (12, 14, 16)).astype(np.uint8)
    )
    u = np.zeros((*labels.shape_kji, 3), dtype=np.float32)
    u[..., 0] = 2 * 1.5  # two voxels along i (identity direction, spacing_i = 1.5 mm)

    warped = warp_volume(labels, u, labels, "nearest")

    assert warped.array.dtype == np.uint8
    np.testing.assert_array_equal(warped.array[:, :, :-2], labels.array[:, :, 2:])


def test_warp_fills_outside_with_default_value():
    moving = grid().with_array(np.full((12, 14, 16), 5.0, dtype=np.float32))
    u = np.full((*moving.shape_kji, 3), 1000.0, dtype=np.float32)

    warped = warp_volume(moving, u, moving, "linear", default_value=-1000.0)

    np.testing.assert_allclose(warped.array, -1000.0)


def test_warp_rejects_field_off_grid():
    with pytest.raises(GeometryError):
        warp_volume(grid(), np.zeros((3, 3, 3, 3), dtype=np.float32), grid(), "linear")


@pytest.mark.parametrize("direction", [None, OBLIQUE], ids=["identity", "oblique"])
def test_invert_then_compose_gives_identity(direction):
    fixed = grid(shape=(24, 24, 24), spacing=(2.0, 2.0, 2.0), direction=direction)
    centre = fixed.index_to_lps(np.array([11.5, 11.5, 11.5]))
    u = shrinkage_field(
        fixed, centre_lps_mm=centre, sigma_mm=10.0, strength=0.2
    ) + sinusoidal_field(fixed, amplitude_mm=1.5, wavelength_mm=60.0)

    v = invert_displacement(u, fixed)
    round_trip = compose(u, v, first_grid=fixed)

    inner = (slice(4, -4),) * 3
    assert np.abs(round_trip[inner]).max() < 0.1  # 5% of a voxel: trilinear sampling of u
    assert np.abs(u[inner]).max() > 1.0  # the test is not vacuous


def test_invert_onto_another_grid():
    fixed = grid(shape=(20, 20, 20), spacing=(2.0, 2.0, 2.0))
    case = grid(shape=(16, 18, 20), spacing=(2.5, 2.2, 2.0), origin=(5.0, -3.0, 12.0))
    u = sinusoidal_field(fixed, amplitude_mm=1.0, wavelength_mm=50.0) + 2.0

    v = invert_displacement(u, fixed, output_grid=case)

    assert v.shape == (*case.shape_kji, 3)
    back = compose(v, u, first_grid=case, second_grid=fixed)
    assert np.abs(back[3:-3, 3:-3, 3:-3]).max() < 0.1


def test_affine_displacement_is_t_of_x_minus_x():
    g = grid(direction=OBLIQUE)
    matrix = np.eye(4)
    matrix[:3, :3] = np.diag([1.1, 0.9, 1.0])
    matrix[:3, 3] = [1.0, 2.0, 3.0]

    u = affine_displacement(matrix, g)

    points = grid_points_lps(g)
    np.testing.assert_allclose(u, points @ matrix[:3, :3].T + matrix[:3, 3] - points, atol=1e-4)


@pytest.mark.parametrize("direction", [None, OBLIQUE], ids=["identity", "oblique"])
def test_jacobian_of_affine_field_is_product_of_scales(direction):
    g = grid(direction=direction)
    matrix = np.eye(4)
    matrix[:3, :3] = np.array([[1.1, 0.05, 0.0], [0.0, 0.9, 0.02], [0.01, 0.0, 0.95]])

    det = jacobian_determinant(affine_displacement(matrix, g), g.spacing_mm, direction=g.direction)

    np.testing.assert_allclose(det, np.linalg.det(matrix[:3, :3]), rtol=1e-4)


def test_jacobian_ignoring_direction_is_wrong_for_anisotropic_oblique_grid():
    """Guard for the test above: the direction matrix really matters."""
    g = grid(direction=OBLIQUE)
    matrix = np.eye(4)
    matrix[:3, :3] = np.diag([1.2, 1.0, 1.0])
    u = affine_displacement(matrix, g)

    with_direction = jacobian_determinant(u, g.spacing_mm, direction=g.direction)
    without = jacobian_determinant(u, g.spacing_mm)

    np.testing.assert_allclose(with_direction, 1.2, rtol=1e-4)
    assert not np.allclose(without, 1.2, rtol=1e-2)


def test_log_jacobian_at_shrinkage_centre_is_three_log_one_minus_strength():
    g = grid(shape=(41, 41, 41), spacing=(1.0, 1.0, 1.0), origin=(-20.0, -20.0, -20.0))
    u = shrinkage_field(g, centre_lps_mm=(0.0, 0.0, 0.0), sigma_mm=8.0, strength=0.1)

    logjac = log_jacobian(u, g.spacing_mm)

    assert logjac[20, 20, 20] == pytest.approx(3 * np.log(0.9), abs=5e-3)
    assert logjac[20, 20, 20] < 0  # shrinkage is negative
    assert abs(logjac[0, 0, 0]) < 1e-3


def test_folded_voxels_are_counted_and_clipped():
    g = grid()
    u = np.zeros((*g.shape_kji, 3), dtype=np.float32)
    u[..., 0] = -2.0 * grid_points_lps(g)[..., 0]  # x -> -x: det = -1 everywhere
    mask = np.zeros(g.shape_kji, dtype=np.uint8)
    mask[2:6, 2:6, 2:6] = 1

    det = jacobian_determinant(u, g.spacing_mm)
    logjac, summary = summarize_jacobian(u, g, g.with_array(mask), epsilon=1e-3)

    np.testing.assert_allclose(det, -1.0, atol=1e-4)
    assert folding_fraction(det) == 1.0
    assert summary.folding_fraction == 1.0
    assert summary.clipped_fraction == 1.0
    np.testing.assert_allclose(logjac, np.log(1e-3), rtol=1e-5)


def test_regions_split_in_physical_lps_terms_whatever_the_index_order():
    # k increases towards the feet and j towards the front: index halves are LPS-reversed.
    flipped = np.array([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]])
    g = grid(shape=(10, 10, 10), spacing=(1.0, 1.0, 1.0), direction=flipped)
    mask = np.zeros(g.shape_kji, dtype=np.uint8)
    mask[:, :, :5] = 1  # right lung: smaller i = smaller x
    mask[:, :, 5:] = 2
    values = np.zeros(g.shape_kji, dtype=np.float32)
    values[:5] = -1.0  # small k = larger z = superior
    values[:, 5:] += 10.0  # large j = smaller y = anterior

    regions = lung_regions(g.with_array(mask))
    means = regional_means(values, g.with_array(mask))

    assert means["superior"] == pytest.approx(-1.0 + 5.0)
    assert means["inferior"] == pytest.approx(5.0)
    assert means["anterior"] == pytest.approx(-0.5 + 10.0)
    assert means["posterior"] == pytest.approx(-0.5)
    assert means["superior_posterior"] == pytest.approx(-1.0)
    assert regions["right_lung"].sum() == regions["left_lung"].sum() == 500


def test_resample_isotropic_keeps_extent_and_labels():
    volume = Volume(
        np.random.default_rng(2).integers(0, 3, (10, 20, 20)).astype(np.uint8),
        (0.8, 0.8, 2.0),
        (1.0, 2.0, 3.0),
        OBLIQUE,
    )

    iso = resample_isotropic(volume, 1.0, interpolation="nearest")

    assert iso.spacing_mm == (1.0, 1.0, 1.0)
    assert iso.shape_kji == (19, 16, 16)
    assert iso.origin_lps_mm == volume.origin_lps_mm
    np.testing.assert_allclose(iso.direction, OBLIQUE)
    assert set(np.unique(iso.array)) <= {0, 1, 2}
    assert iso.array.dtype == np.uint8


def test_resample_to_grid_of_linear_image_is_exact_inside():
    source = linear_image(grid(shape=(20, 20, 20), spacing=(1.0, 1.0, 1.0), direction=OBLIQUE))
    inside = tuple(source.index_to_lps([3.0, 3.0, 3.0]))
    target = grid(shape=(6, 6, 6), spacing=(1.7, 1.3, 1.1), direction=OBLIQUE, origin=inside)

    out = resample_to_grid(source, target, interpolation="linear")

    expected = grid_points_lps(target) @ np.array([0.5, -1.25, 2.0]) + 10.0
    np.testing.assert_allclose(out.array, expected, atol=1e-3)


def test_crop_and_dilate_mask():
    g = grid(shape=(20, 20, 20), spacing=(1.0, 1.0, 2.0))
    mask = np.zeros(g.shape_kji, dtype=np.uint8)
    mask[10, 10, 10] = 1

    cropped, box = crop_to_mask(g, g.with_array(mask), margin_mm=2.0)
    dilated = dilate_mask(g.with_array(mask), 2.0)

    assert cropped.shape_kji == (3, 5, 5)
    np.testing.assert_allclose(cropped.index_to_lps([0, 0, 0]), g.index_to_lps([8, 8, 9]))
    assert box[0] == slice(9, 12)
    assert dilated.array.sum() == 3 * 5 * 5


def test_displacement_file_round_trip_keeps_lps_components(tmp_path):
    g = grid(direction=OBLIQUE)
    u = np.random.default_rng(3).normal(size=(*g.shape_kji, 3)).astype(np.float32)

    write_displacement(u, g, tmp_path / "u.nii.gz")
    back, back_grid = read_displacement(tmp_path / "u.nii.gz")

    np.testing.assert_allclose(back, u, atol=1e-6)
    assert back_grid.same_grid(g)
