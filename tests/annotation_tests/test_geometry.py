"""Schema checks, LPS → pixel mapping and the even-odd fill (no database)."""

from __future__ import annotations

import numpy as np
import pytest

from annotation.services.geometry import (
    SliceGrid,
    pack_mask,
    rasterize_even_odd,
    rasterize_geometry,
    unpack_mask,
    validate_geometry,
)
from core.exceptions import ApplicationError

GRID = SliceGrid(
    rows=16,
    columns=16,
    position_lps_mm=(-16.0, -16.0, -4.0),
    row_direction=(1.0, 0.0, 0.0),
    column_direction=(0.0, 1.0, 0.0),
    pixel_spacing_mm=(2.0, 2.0),
)


def ring(x0, y0, size, z=-4.0):
    return [[x0, y0, z], [x0 + size, y0, z], [x0 + size, y0 + size, z], [x0, y0 + size, z]]


def test_it_fills_pixel_centres_inside_a_square():
    mask = rasterize_geometry({"schema_version": 1, "polygons": [ring(-10, -10, 8)]}, GRID)
    assert mask.sum() == 16
    # x = -10 mm is column 3, y = -10 mm is row 3
    assert mask[3:7, 3:7].all()


def test_it_cuts_holes_with_the_even_odd_rule():
    geometry = {"schema_version": 1, "polygons": [ring(-16, -16, 16)], "holes": [ring(-12, -12, 4)]}
    mask = rasterize_geometry(geometry, GRID)
    assert mask.sum() == 64 - 4
    assert not mask[2:4, 2:4].any()


def test_it_maps_a_rotated_plane():
    grid = SliceGrid(16, 16, (0.0, 0.0, 0.0), (0.0, 1.0, 0.0), (1.0, 0.0, 0.0), (1.0, 1.0))
    # rows run along x, columns along y
    points = grid.to_pixels([[3.0, 5.0, 0.0]])
    assert points.tolist() == [[5.0, 3.0]]


def test_a_triangle_matches_its_area():
    tri = np.array([[0.0, 0.0], [200.0, 0.0], [0.0, 200.0]])
    mask = rasterize_even_odd([tri], 256, 256)
    assert abs(int(mask.sum()) - 20000) < 250


def test_it_refuses_points_off_the_slice_plane():
    with pytest.raises(ApplicationError, match="off the plane"):
        rasterize_geometry({"schema_version": 1, "polygons": [ring(-10, -10, 8, z=3.0)]}, GRID)


@pytest.mark.parametrize(
    "geometry",
    [
        {"polygons": []},
        {"schema_version": 99, "polygons": []},
        {"schema_version": 1, "polygons": [[[0, 0, 0], [1, 1, 1]]]},
        {"schema_version": 1, "polygons": [[[0, 0], [1, 1], [2, 2]]]},
        {"schema_version": 1, "polygons": [], "colour": "red"},
        {"schema_version": 1, "polygons": [[[0, 0, "a"], [1, 0, 0], [0, 1, 0]]]},
    ],
)
def test_it_refuses_geometry_outside_the_schema(geometry):
    with pytest.raises(ApplicationError):
        validate_geometry(geometry)


def test_masks_round_trip_through_packing():
    mask = np.random.default_rng(0).random((13, 7)) > 0.5
    assert (unpack_mask(pack_mask(mask), 13, 7) == mask).all()
