/**
 * Pure pieces of the longitudinal viewer: the registration's slice correspondence in the
 * viewer's stack order (and its inverse), and the log-Jacobian colour bar.
 * No Cornerstone, no DOM.
 *
 * The registration job gives, per baseline *volume* slice k (``log_jacobian_baseline.npz``'s
 * ``sop_instance_uids``), the matching follow-up slice (``followup_slice_for_baseline_slice``,
 * ``followup_sop_for_baseline_slice``). Volume order and the viewer's head-first stack order
 * need not agree, so the link goes through SOP Instance UIDs.
 */

export interface SliceCorrespondence {
  /** Baseline SOP Instance UID of each baseline volume slice k. */
  baselineSops: string[];
  /** Follow-up SOP Instance UID matching each baseline volume slice k. */
  followupSops: string[];
}

/**
 * For each baseline stack index, the follow-up stack index the registration matches it with.
 * A baseline image the job does not know (or whose match is not in the follow-up stack) gets
 * the match of the nearest baseline image that has one; with no match at all, -1.
 */
export function followupIndexByBaselineIndex(
  baselineStackSops: readonly string[],
  followupStackSops: readonly string[],
  correspondence: SliceCorrespondence,
): number[] {
  if (correspondence.baselineSops.length !== correspondence.followupSops.length) {
    throw new Error('the slice correspondence lists differ in length');
  }
  const followupIndex = new Map<string, number>();
  followupStackSops.forEach((sop, index) => followupIndex.set(sop, index));
  const matchOf = new Map<string, number>();
  correspondence.baselineSops.forEach((sop, k) => {
    const index = followupIndex.get(correspondence.followupSops[k]!);
    if (index !== undefined) matchOf.set(sop, index);
  });
  const direct = baselineStackSops.map((sop) => matchOf.get(sop) ?? -1);
  return direct.map((value, i) => {
    if (value >= 0) return value;
    for (let d = 1; d < direct.length; d++) {
      const below = direct[i - d];
      if (below !== undefined && below >= 0) return below;
      const above = direct[i + d];
      if (above !== undefined && above >= 0) return above;
    }
    return -1;
  });
}

/**
 * The baseline stack index to show beside follow-up stack index ``followupIndex``: among the
 * baseline slices mapped to it, the one nearest ``currentBaseline`` (so scrolling the follow-up
 * through a run of equal matches does not jump); if none maps to it exactly, one of those whose
 * match is nearest to it (again nearest ``currentBaseline`` on a tie). -1 for an empty map.
 */
export function baselineIndexForFollowupIndex(
  forward: readonly number[],
  followupIndex: number,
  currentBaseline = 0,
): number {
  let best = -1;
  let bestGap = Infinity;
  let bestDistance = Infinity;
  forward.forEach((mapped, i) => {
    if (mapped < 0) return;
    const gap = Math.abs(mapped - followupIndex);
    const distance = Math.abs(i - currentBaseline);
    if (gap < bestGap || (gap === bestGap && distance < bestDistance)) {
      best = i;
      bestGap = gap;
      bestDistance = distance;
    }
  });
  return best;
}

export type Rgb = [number, number, number];

/** The overlay's blue-white-red scale (jobs/apis.py ``_diverging_lut``): shrinkage … expansion. */
export const DIVERGING_ANCHORS: readonly Rgb[] = [
  [5, 48, 97],
  [67, 147, 195],
  [247, 247, 247],
  [214, 96, 77],
  [103, 0, 31],
];

/** Colour of a log-Jacobian value on the scale clipped to ±range (as the server paints it). */
export function colourOf(value: number, range: number): Rgb {
  if (!(range > 0)) throw new Error(`range must be positive, got ${range}`);
  const clipped = Number.isFinite(value) ? Math.max(-range, Math.min(range, value)) : 0;
  // The server quantizes to 256 entries; do the same so a legend matches the overlay's pixels.
  const t = Math.round(((clipped + range) / (2 * range)) * 255) / 255;
  const segments = DIVERGING_ANCHORS.length - 1;
  const position = t * segments;
  const lower = Math.min(segments - 1, Math.floor(position));
  const f = position - lower;
  const a = DIVERGING_ANCHORS[lower]!;
  const b = DIVERGING_ANCHORS[lower + 1]!;
  // numpy's astype(uint8) truncates.
  return [0, 1, 2].map((c) => Math.floor(a[c]! + f * (b[c]! - a[c]!))) as Rgb;
}

/** A CSS linear-gradient (left = −range = shrinkage, right = +range = expansion). */
export function colourBarGradient(range: number, steps = 16): string {
  const stops: string[] = [];
  for (let s = 0; s <= steps; s++) {
    const value = -range + (2 * range * s) / steps;
    stops.push(`rgb(${colourOf(value, range).join(', ')}) ${((100 * s) / steps).toFixed(2)}%`);
  }
  return `linear-gradient(to right, ${stops.join(', ')})`;
}

export interface ColourBarTick {
  /** Position from the left, 0…1. */
  at: number;
  value: number;
  label: string;
}

/** Ticks of the colour bar: −range, 0, +range, with signs (−0.25, 0, +0.25). */
export function colourBarTicks(range: number): ColourBarTick[] {
  const digits = range >= 1 ? 1 : range >= 0.1 ? 2 : 3;
  const label = (v: number): string => (v === 0 ? '0' : `${v > 0 ? '+' : '\u2212'}${Math.abs(v).toFixed(digits)}`);
  return [
    { at: 0, value: -range, label: label(-range) },
    { at: 0.5, value: 0, label: '0' },
    { at: 1, value: range, label: label(range) },
  ];
}

/** The range a user typed, clamped to what the overlay API accepts (0.01…5); NaN → fallback. */
export function clampRange(value: number, fallback = 0.25): number {
  if (!Number.isFinite(value) || value <= 0) return fallback;
  return Math.min(5, Math.max(0.01, value));
}

/** Log-Jacobian as a volume change in percent (exp(x) − 1), for the legend. */
export function volumeChangePct(logJacobian: number): number {
  return (Math.exp(logJacobian) - 1) * 100;
}
