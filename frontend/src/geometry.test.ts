import { describe, expect, it } from 'vitest';

import {
  lpsToPixel,
  maskToRings,
  pixelToLps,
  rasterizeEvenOdd,
  rasterizeRings,
  traceMask,
  unionRings,
  type Ring,
  type SliceGrid,
} from './geometry';

// The same grid as tests/annotation_tests/test_geometry.py: 16×16 pixels of 2 mm at z = -4.
const GRID: SliceGrid = {
  rows: 16,
  columns: 16,
  positionLps: [-16, -16, -4],
  rowDirection: [1, 0, 0],
  columnDirection: [0, 1, 0],
  pixelSpacing: [2, 2],
};

const square = (x0: number, y0: number, size: number, z = -4): Ring => [
  [x0, y0, z],
  [x0 + size, y0, z],
  [x0 + size, y0 + size, z],
  [x0, y0 + size, z],
];

const count = (mask: Uint8Array): number => mask.reduce((n, v) => n + v, 0);

describe('rasterize (same rule as the server)', () => {
  it('fills the pixel centres inside a square', () => {
    const mask = rasterizeRings(GRID, [square(-10, -10, 8)]);
    expect(count(mask)).toBe(16);
    expect(mask[3 * 16 + 3]).toBe(1);
    expect(mask[7 * 16 + 7]).toBe(0);
  });

  it('cuts holes with the even-odd rule', () => {
    expect(count(rasterizeRings(GRID, [square(-16, -16, 16), square(-12, -12, 4)]))).toBe(64 - 4);
  });

  it('matches the area of a large triangle', () => {
    const mask = rasterizeEvenOdd([[[0, 0], [200, 0], [0, 200]]], 256, 256);
    expect(Math.abs(count(mask) - 20000)).toBeLessThan(250);
  });
});

describe('pixel <-> LPS', () => {
  it('round-trips through a rotated plane', () => {
    const grid: SliceGrid = { ...GRID, rowDirection: [0, 1, 0], columnDirection: [1, 0, 0], positionLps: [0, 0, 0], pixelSpacing: [1, 1] };
    expect(lpsToPixel(grid, [3, 5, 0])).toEqual([5, 3]);
    expect(pixelToLps(grid, [5, 3])).toEqual([3, 5, 0]);
  });
});

describe('traceMask', () => {
  it('gives rings whose even-odd fill is the mask, holes and diagonal pixels included', () => {
    let seed = 7;
    const random = (): number => ((seed = (seed * 16807) % 2147483647) / 2147483647);
    for (let trial = 0; trial < 20; trial++) {
      const rows = 12;
      const columns = 15;
      const mask = new Uint8Array(rows * columns).map(() => (random() > 0.55 ? 1 : 0));
      const rings = traceMask(mask, rows, columns);
      expect(Array.from(rasterizeEvenOdd(rings, rows, columns))).toEqual(Array.from(mask));
    }
  });

  it('returns nothing for an empty mask', () => {
    expect(traceMask(new Uint8Array(9), 3, 3)).toEqual([]);
  });

  it('keeps a painted disc within a pixel after simplification', () => {
    const rows = 64;
    const mask = new Uint8Array(rows * rows);
    for (let r = 0; r < rows; r++) for (let c = 0; c < rows; c++) mask[r * rows + c] = (r - 30) ** 2 + (c - 28) ** 2 < 15 ** 2 ? 1 : 0;
    const grid: SliceGrid = { ...GRID, rows, columns: rows };
    const rings = maskToRings(grid, mask);
    expect(rings.length).toBe(1);
    const back = rasterizeRings(grid, rings);
    let differ = 0;
    for (let i = 0; i < mask.length; i++) differ += mask[i] !== back[i] ? 1 : 0;
    expect(differ).toBeLessThan(8);
    expect(rings[0]!.length).toBeLessThan(120);
  });
});

describe('unionRings', () => {
  it('merges overlapping regions instead of cutting the overlap out', () => {
    const merged = unionRings(GRID, [square(-12, -12, 8)], [square(-8, -8, 8)]);
    expect(count(rasterizeRings(GRID, merged))).toBe(16 + 16 - 4);
  });
});
