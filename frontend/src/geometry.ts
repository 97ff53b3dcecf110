/**
 * Contour geometry shared with the server (annotation/services/geometry.py):
 * points in patient LPS mm, a slice's pixel grid from ImagePositionPatient (centre of the first
 * pixel), ImageOrientationPatient and PixelSpacing, and the even-odd fill at pixel centres.
 * Pure functions: no Cornerstone, no DOM.
 */

export type Vec3 = [number, number, number];
export type Ring = Vec3[];
/** [column, row] continuous pixel coordinates. */
export type Px = [number, number];

export interface SliceGrid {
  rows: number;
  columns: number;
  positionLps: Vec3;
  /** Along a row: increasing column index. */
  rowDirection: Vec3;
  /** Down a column: increasing row index. */
  columnDirection: Vec3;
  /** [between rows, between columns] mm. */
  pixelSpacing: [number, number];
}

export interface Geometry {
  schema_version: 1;
  polygons: Ring[];
  holes?: Ring[];
}

const dot = (a: Vec3, b: Vec3): number => a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
const sub = (a: Vec3, b: Vec3): Vec3 => [a[0] - b[0], a[1] - b[1], a[2] - b[2]];

export function lpsToPixel(grid: SliceGrid, point: Vec3): Px {
  const d = sub(point, grid.positionLps);
  return [dot(d, grid.rowDirection) / grid.pixelSpacing[1], dot(d, grid.columnDirection) / grid.pixelSpacing[0]];
}

export function pixelToLps(grid: SliceGrid, [column, row]: Px): Vec3 {
  const [p, r, c] = [grid.positionLps, grid.rowDirection, grid.columnDirection];
  const u = column * grid.pixelSpacing[1];
  const v = row * grid.pixelSpacing[0];
  return [p[0] + u * r[0] + v * c[0], p[1] + u * r[1] + v * c[1], p[2] + u * r[2] + v * c[2]];
}

/** Even-odd fill of closed rings (pixel coordinates) at pixel centres; row-major Uint8Array. */
export function rasterizeEvenOdd(rings: Px[][], rows: number, columns: number): Uint8Array {
  const crossings: Array<[number, number]> = [];
  for (const ring of rings) {
    const n = ring.length;
    if (n < 3) continue;
    for (let e = 0; e < n; e++) {
      const [x0, y0] = ring[e]!;
      const [x1, y1] = ring[(e + 1) % n]!;
      const first = Math.ceil(Math.min(y0, y1));
      const stop = Math.ceil(Math.max(y0, y1));
      for (let y = first; y < stop; y++) {
        const t = (y - y0) / (y1 - y0);
        crossings.push([y, x0 + t * (x1 - x0)]);
      }
    }
  }
  crossings.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  const mask = new Uint8Array(rows * columns);
  for (let k = 0; k + 1 < crossings.length; k += 2) {
    const [row, xa] = crossings[k]!;
    const xb = crossings[k + 1]![1];
    if (row < 0 || row >= rows) continue;
    const start = Math.min(Math.max(Math.ceil(xa), 0), columns);
    const stop = Math.min(Math.max(Math.ceil(xb), 0), columns);
    mask.fill(1, row * columns + start, row * columns + stop);
  }
  return mask;
}

export function rasterizeRings(grid: SliceGrid, rings: Ring[]): Uint8Array {
  return rasterizeEvenOdd(
    rings.map((ring) => ring.map((p) => lpsToPixel(grid, p))),
    grid.rows,
    grid.columns,
  );
}

/**
 * Boundaries of a mask as closed rings along pixel edges (corners at half-integers), outer
 * boundaries counter-clockwise and holes clockwise in (column, row) space. Filling them with
 * the even-odd rule gives the mask back exactly. Diagonal neighbours are kept apart (4-connected).
 */
export function traceMask(mask: Uint8Array, rows: number, columns: number): Px[][] {
  const inside = (r: number, c: number): boolean =>
    r >= 0 && r < rows && c >= 0 && c < columns && mask[r * columns + c] !== 0;
  // Directed boundary edges keyed by their start corner (corner (x, y) ~ pixel edge grid).
  const W = columns + 1;
  const next = new Map<number, number[]>();
  const add = (x0: number, y0: number, x1: number, y1: number): void => {
    const key = y0 * W + x0;
    const list = next.get(key);
    const value = y1 * W + x1;
    if (list) list.push(value);
    else next.set(key, [value]);
  };
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < columns; c++) {
      if (!inside(r, c)) continue;
      // Keep the inside on the left when walking (x right, y down).
      if (!inside(r - 1, c)) add(c + 1, r, c, r); // top edge, walking left
      if (!inside(r + 1, c)) add(c, r + 1, c + 1, r + 1); // bottom edge, walking right
      if (!inside(r, c - 1)) add(c, r, c, r + 1); // left edge, walking down
      if (!inside(r, c + 1)) add(c + 1, r + 1, c + 1, r); // right edge, walking up
    }
  }
  const rings: Px[][] = [];
  const dir = (a: number, b: number): [number, number] => [(b % W) - (a % W), Math.floor(b / W) - Math.floor(a / W)];
  while (next.size > 0) {
    const [startKey, startList] = next.entries().next().value as [number, number[]];
    let from = startKey;
    let to = startList.pop()!;
    if (startList.length === 0) next.delete(startKey);
    const corners: number[] = [from];
    let guard = 0;
    while (to !== startKey && guard++ < 4 * rows * columns + 8) {
      corners.push(to);
      const options = next.get(to);
      if (!options || options.length === 0) break;
      let pick = 0;
      if (options.length > 1) {
        // At a corner shared by two diagonal pixels, turn so that they stay separate:
        // prefer the turn towards the inside (left turn in this orientation).
        const [dx, dy] = dir(from, to);
        pick = options.findIndex((o) => {
          const [ex, ey] = dir(to, o);
          return dx * ey - dy * ex < 0;
        });
        if (pick < 0) pick = 0;
      }
      const chosen = options.splice(pick, 1)[0]!;
      if (options.length === 0) next.delete(to);
      from = to;
      to = chosen;
    }
    const ring: Px[] = corners.map((k) => [(k % W) - 0.5, Math.floor(k / W) - 0.5]);
    const simplified = removeCollinear(ring);
    if (simplified.length >= 3) rings.push(simplified);
  }
  return rings;
}

export function removeCollinear(ring: Px[]): Px[] {
  const n = ring.length;
  const out: Px[] = [];
  for (let i = 0; i < n; i++) {
    const a = ring[(i + n - 1) % n]!;
    const b = ring[i]!;
    const c = ring[(i + 1) % n]!;
    const cross = (b[0] - a[0]) * (c[1] - b[1]) - (b[1] - a[1]) * (c[0] - b[0]);
    if (Math.abs(cross) > 1e-9) out.push(b);
  }
  return out;
}

/** Douglas-Peucker on a closed ring; keeps vertices within `tolerance` pixels. */
export function simplifyRing(ring: Px[], tolerance: number): Px[] {
  if (ring.length <= 4 || tolerance <= 0) return ring;
  const keep = new Uint8Array(ring.length);
  const far = (a: Px, b: Px, p: Px): number => {
    const [dx, dy] = [b[0] - a[0], b[1] - a[1]];
    const len = Math.hypot(dx, dy);
    if (len === 0) return Math.hypot(p[0] - a[0], p[1] - a[1]);
    return Math.abs(dx * (a[1] - p[1]) - dy * (a[0] - p[0])) / len;
  };
  const split = (i: number, j: number): void => {
    let best = -1;
    let worst = tolerance;
    for (let k = i + 1; k < j; k++) {
      const d = far(ring[i]!, ring[j]!, ring[k]!);
      if (d > worst) {
        worst = d;
        best = k;
      }
    }
    if (best >= 0) {
      keep[best] = 1;
      split(i, best);
      split(best, j);
    }
  };
  // Split the ring at its first vertex and the vertex farthest from it.
  let opposite = 1;
  let dmax = -1;
  for (let k = 1; k < ring.length; k++) {
    const d = Math.hypot(ring[k]![0] - ring[0]![0], ring[k]![1] - ring[0]![1]);
    if (d > dmax) {
      dmax = d;
      opposite = k;
    }
  }
  keep[0] = 1;
  keep[opposite] = 1;
  split(0, opposite);
  const closing: Px[] = [...ring.slice(opposite), ring[0]!];
  const keepTail = new Uint8Array(closing.length);
  const splitTail = (i: number, j: number): void => {
    let best = -1;
    let worst = tolerance;
    for (let k = i + 1; k < j; k++) {
      const d = far(closing[i]!, closing[j]!, closing[k]!);
      if (d > worst) {
        worst = d;
        best = k;
      }
    }
    if (best >= 0) {
      keepTail[best] = 1;
      splitTail(i, best);
      splitTail(best, j);
    }
  };
  splitTail(0, closing.length - 1);
  const out: Px[] = [];
  for (let k = 0; k <= opposite; k++) if (keep[k]) out.push(ring[k]!);
  for (let k = 1; k < closing.length - 1; k++) if (keepTail[k]) out.push(closing[k]!);
  return out.length >= 3 ? out : ring;
}

/** Mask → rings in LPS mm (simplified by at most `tolerancePx`). */
export function maskToRings(grid: SliceGrid, mask: Uint8Array, tolerancePx = 0.3): Ring[] {
  return traceMask(mask, grid.rows, grid.columns).map((ring) =>
    simplifyRing(ring, tolerancePx).map((px) => pixelToLps(grid, px)),
  );
}

/** Union of regions (each a set of even-odd rings), re-traced as rings. */
export function unionRings(grid: SliceGrid, ...regions: Ring[][]): Ring[] {
  const mask = new Uint8Array(grid.rows * grid.columns);
  for (const rings of regions) {
    const part = rasterizeRings(grid, rings);
    for (let i = 0; i < mask.length; i++) if (part[i]) mask[i] = 1;
  }
  return maskToRings(grid, mask);
}

export function ringsOverlap(grid: SliceGrid, a: Ring[], b: Ring[]): boolean {
  if (a.length === 0 || b.length === 0) return false;
  const ma = rasterizeRings(grid, a);
  const mb = rasterizeRings(grid, b);
  for (let i = 0; i < ma.length; i++) if (ma[i] && mb[i]) return true;
  return false;
}

export function toGeometry(rings: Ring[]): Geometry {
  return { schema_version: 1, polygons: rings.map((ring) => ring.map((p) => [p[0], p[1], p[2]] as Vec3)) };
}

export function fromGeometry(geometry: Geometry): Ring[] {
  return [...geometry.polygons, ...(geometry.holes ?? [])];
}

export function countPixels(mask: Uint8Array): number {
  let n = 0;
  for (let i = 0; i < mask.length; i++) n += mask[i] ? 1 : 0;
  return n;
}
