/** Series metadata from our WADO-RS, mapped to a head-first stack with each slice's grid. */

import type { SliceGrid, Vec3 } from './geometry';

export type DicomJson = Record<string, { vr: string; Value?: unknown[]; BulkDataURI?: string }>;

export interface StackSlice {
  sopInstanceUid: string;
  imageId: string;
  grid: SliceGrid;
  /** Signed distance along the slice normal (mm); for axial LPS this is z. */
  position: number;
  metadata: DicomJson;
}

function values(ds: DicomJson, tag: string): unknown[] {
  return ds[tag]?.Value ?? [];
}

function numbers(ds: DicomJson, tag: string, count: number): number[] | null {
  const raw = values(ds, tag).map((v) => Number(v));
  return raw.length >= count && raw.every((v) => Number.isFinite(v)) ? raw.slice(0, count) : null;
}

export function str(ds: DicomJson, tag: string): string {
  const v = values(ds, tag)[0];
  return v === undefined || v === null ? '' : String(v);
}

export function gridOf(ds: DicomJson): SliceGrid {
  const ipp = numbers(ds, '00200032', 3);
  const iop = numbers(ds, '00200037', 6);
  const spacing = numbers(ds, '00280030', 2);
  const rows = Number(values(ds, '00280010')[0]);
  const columns = Number(values(ds, '00280011')[0]);
  if (!ipp || !iop || !spacing || !rows || !columns) {
    throw new Error(`instance ${str(ds, '00080018')} lacks plane geometry`);
  }
  return {
    rows,
    columns,
    positionLps: [ipp[0]!, ipp[1]!, ipp[2]!],
    rowDirection: [iop[0]!, iop[1]!, iop[2]!],
    columnDirection: [iop[3]!, iop[4]!, iop[5]!],
    pixelSpacing: [spacing[0]!, spacing[1]!],
  };
}

function normalOf(grid: SliceGrid): Vec3 {
  const [a, b] = [grid.rowDirection, grid.columnDirection];
  return [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]];
}

/**
 * Sort instances head first (LPS z decreasing, i.e. apex at the top of the stack, as the
 * protocol lists them) and build wadors image ids for the Cornerstone loader.
 */
export function toStack(instances: DicomJson[], dicomwebRoot: string, studyUid: string, seriesUid: string): StackSlice[] {
  const slices = instances.map((ds) => {
    const grid = gridOf(ds);
    const normal = normalOf(grid);
    const p = grid.positionLps;
    // Project on the normal oriented towards the head (+z in LPS).
    const sign = normal[2] < 0 ? -1 : 1;
    const position = sign * (p[0] * normal[0] + p[1] * normal[1] + p[2] * normal[2]);
    const sop = str(ds, '00080018');
    const imageId =
      `wadors:${dicomwebRoot}/studies/${studyUid}/series/${seriesUid}` + `/instances/${sop}/frames/1`;
    return { sopInstanceUid: sop, imageId, grid, position, metadata: ds };
  });
  slices.sort((a, b) => b.position - a.position || a.sopInstanceUid.localeCompare(b.sopInstanceUid));
  return slices;
}

export async function fetchSeriesMetadata(
  dicomwebRoot: string,
  studyUid: string,
  seriesUid: string,
  fetcher: (input: string, init?: RequestInit) => Promise<Response> = (i, n) => fetch(i, n),
): Promise<DicomJson[]> {
  const response = await fetcher(`${dicomwebRoot}/studies/${studyUid}/series/${seriesUid}/metadata`, {
    headers: { Accept: 'application/dicom+json' },
    credentials: 'same-origin',
  });
  if (!response.ok) throw new Error(`series metadata: HTTP ${response.status}`);
  return (await response.json()) as DicomJson[];
}

/** Index of the slice nearest to a position (mm along the head-first normal). */
export function nearestIndex(stack: StackSlice[], position: number): number {
  let best = 0;
  let bestDistance = Infinity;
  stack.forEach((slice, index) => {
    const d = Math.abs(slice.position - position);
    if (d < bestDistance) {
      bestDistance = d;
      best = index;
    }
  });
  return best;
}

export interface LungRange {
  apex: number;
  dome: number;
}

/**
 * Linked scrolling between baseline and follow-up (different frames of reference): the same
 * fraction of the apex→dome range when both are known, else the same fraction of the stack.
 */
export function linkedIndex(
  from: StackSlice[],
  fromIndex: number,
  to: StackSlice[],
  fromRange: LungRange | null,
  toRange: LungRange | null,
): number {
  if (to.length === 0) return 0;
  const position = from[fromIndex]?.position;
  if (position !== undefined && fromRange && toRange && fromRange.apex !== fromRange.dome) {
    const fraction = (position - fromRange.apex) / (fromRange.dome - fromRange.apex);
    return nearestIndex(to, toRange.apex + fraction * (toRange.dome - toRange.apex));
  }
  const fraction = from.length > 1 ? fromIndex / (from.length - 1) : 0;
  return Math.round(fraction * (to.length - 1));
}
