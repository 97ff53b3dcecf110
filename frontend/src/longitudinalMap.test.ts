import { describe, expect, it } from 'vitest';

import {
  baselineIndexForFollowupIndex,
  clampRange,
  colourBarGradient,
  colourBarTicks,
  colourOf,
  followupIndexByBaselineIndex,
  volumeChangePct,
} from './longitudinalMap';

// Volume order is feet first (k = 0 lowest), the viewer's stacks are head first.
const baselineByK = ['b0', 'b1', 'b2', 'b3', 'b4'];
// follow-up volume k = 0..5; the registration matches baseline k with follow-up k + 1,
// except the two top slices which both match follow-up k = 5.
const followupByK = ['f0', 'f1', 'f2', 'f3', 'f4', 'f5'];
const correspondence = { baselineSops: baselineByK, followupSops: ['f1', 'f2', 'f3', 'f5', 'f5'] };
const baselineStack = [...baselineByK].reverse(); // b4 b3 b2 b1 b0
const followupStack = [...followupByK].reverse(); // f5 f4 f3 f2 f1 f0

describe('followupIndexByBaselineIndex', () => {
  it('maps stack indices through the SOP Instance UIDs, not by index', () => {
    const forward = followupIndexByBaselineIndex(baselineStack, followupStack, correspondence);
    // b4 → f5 (index 0), b3 → f5 (0), b2 → f3 (2), b1 → f2 (3), b0 → f1 (4)
    expect(forward).toEqual([0, 0, 2, 3, 4]);
  });

  it('gives an unknown baseline image the match of its nearest known neighbour', () => {
    const forward = followupIndexByBaselineIndex(['b4', 'extra', 'b2', 'b1', 'b0'], followupStack, correspondence);
    expect(forward[1]).toBe(0);
    expect(followupIndexByBaselineIndex(['x', 'y'], followupStack, correspondence)).toEqual([-1, -1]);
  });

  it('refuses lists of different lengths', () => {
    expect(() => followupIndexByBaselineIndex(baselineStack, followupStack, { baselineSops: ['b0'], followupSops: [] })).toThrow();
  });
});

describe('baselineIndexForFollowupIndex', () => {
  const forward = [0, 0, 2, 3, 4];

  it('finds the baseline slice mapped to a follow-up slice', () => {
    expect(baselineIndexForFollowupIndex(forward, 2)).toBe(2);
    expect(baselineIndexForFollowupIndex(forward, 4)).toBe(4);
  });

  it('picks the one nearest the current baseline slice among equal matches', () => {
    expect(baselineIndexForFollowupIndex(forward, 0, 0)).toBe(0);
    expect(baselineIndexForFollowupIndex(forward, 0, 4)).toBe(1);
  });

  it('falls back to the nearest mapped slice when nothing maps to it', () => {
    // follow-up index 1 (f4) is the match of no baseline slice: 0 and 2 are one away
    expect(baselineIndexForFollowupIndex(forward, 1, 4)).toBe(2);
    expect(baselineIndexForFollowupIndex(forward, 1, 0)).toBe(0);
    // beyond the last match
    expect(baselineIndexForFollowupIndex(forward, 5, 0)).toBe(4);
  });

  it('is the inverse of the forward map where it is one-to-one', () => {
    for (const i of [2, 3, 4]) expect(baselineIndexForFollowupIndex(forward, forward[i]!, 0)).toBe(i);
    expect(baselineIndexForFollowupIndex([], 3)).toBe(-1);
    expect(baselineIndexForFollowupIndex([-1, -1], 3)).toBe(-1);
  });
});

describe('colour bar', () => {
  it('paints the ends and the middle as the overlay API does', () => {
    // jobs/apis.py: LUT index 0 = (5, 48, 97), 255 = (103, 0, 31), 128 ≈ white
    expect(colourOf(-0.25, 0.25)).toEqual([5, 48, 97]);
    expect(colourOf(-5, 0.25)).toEqual([5, 48, 97]);
    expect(colourOf(0.25, 0.25)).toEqual([103, 0, 31]);
    const middle = colourOf(0, 0.25);
    expect(Math.min(...middle)).toBeGreaterThan(240);
    // numpy: np.interp(128/255 * 4 → 2.0078, …) then astype(uint8)
    expect(middle).toEqual([246, 245, 245]);
    expect(colourOf(Number.NaN, 0.25)).toEqual(middle);
  });

  it('is blue for shrinkage and red for expansion', () => {
    const [r1, , b1] = colourOf(-0.1, 0.25);
    const [r2, , b2] = colourOf(0.1, 0.25);
    expect(b1).toBeGreaterThan(r1 + 40);
    expect(r2).toBeGreaterThan(b2 + 40);
  });

  it('rejects a non-positive range', () => {
    expect(() => colourOf(0, 0)).toThrow();
  });

  it('builds a gradient from shrinkage to expansion with signed ticks', () => {
    const css = colourBarGradient(0.5, 4);
    expect(css.startsWith('linear-gradient(to right, rgb(5, 48, 97) 0.00%')).toBe(true);
    expect(css.endsWith('rgb(103, 0, 31) 100.00%)')).toBe(true);
    expect(colourBarTicks(0.25).map((t) => t.label)).toEqual(['\u22120.25', '0', '+0.25']);
    expect(colourBarTicks(1.5).map((t) => t.label)).toEqual(['\u22121.5', '0', '+1.5']);
    expect(colourBarTicks(0.05).map((t) => t.value)).toEqual([-0.05, 0, 0.05]);
  });

  it('clamps a typed range to what the API accepts', () => {
    expect(clampRange(0.001)).toBe(0.01);
    expect(clampRange(9)).toBe(5);
    expect(clampRange(Number.NaN, 0.3)).toBe(0.3);
    expect(clampRange(-1)).toBe(0.25);
    expect(clampRange(0.4)).toBe(0.4);
  });

  it('reads a log-Jacobian as a volume change', () => {
    expect(volumeChangePct(0)).toBe(0);
    expect(volumeChangePct(Math.log(0.9))).toBeCloseTo(-10, 10);
  });
});
