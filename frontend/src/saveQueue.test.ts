import { describe, expect, it } from 'vitest';

import { ConflictError, NetworkError, type ContourData, type SaveRequest } from './api';
import type { Ring } from './geometry';
import { SaveQueue, type SaveStatus } from './saveQueue';

const ring: Ring = [
  [0, 0, 0],
  [1, 0, 0],
  [0, 1, 0],
];
const key = { structure: 'ild' as const, sop: '1.2.3' };

class MemoryStorage {
  data = new Map<string, string>();
  getItem(k: string): string | null {
    return this.data.get(k) ?? null;
  }
  setItem(k: string, v: string): void {
    this.data.set(k, v);
  }
  removeItem(k: string): void {
    this.data.delete(k);
  }
}

function contour(version: number, editId: string | null = null): ContourData {
  return {
    id: `c${version}`,
    structure: 'ild',
    referenced_sop_instance_uid: key.sop,
    frame_of_reference_uid: '',
    version,
    geometry: { schema_version: 1, polygons: [ring] },
    pixel_count: 1,
    area_mm2: 1,
    author: 'a',
    created: '',
    client_edit_id: editId,
  };
}

function harness(save: (p: SaveRequest) => Promise<ContourData>) {
  const storage = new MemoryStorage();
  const timers: Array<() => void> = [];
  const statuses: SaveStatus[] = [];
  const conflicts: Array<ContourData | null> = [];
  let n = 0;
  const queue = new SaveQueue({
    save,
    storage,
    storageKey: 'k',
    newId: () => `edit-${++n}`,
    setTimer: (fn) => timers.push(fn),
    clearTimer: () => undefined,
    onStatus: (s) => statuses.push(s),
    onConflict: (_k, _mine, latest) => conflicts.push(latest),
  });
  return { queue, storage, timers, statuses, conflicts };
}

describe('SaveQueue', () => {
  it('persists an edit before sending it, then sends it on top of the base version', async () => {
    const sent: SaveRequest[] = [];
    const h = harness(async (p) => {
      sent.push(p);
      return contour(p.base_version + 1, p.client_edit_id);
    });
    h.queue.setBase(key, 4, []);
    h.queue.change(key, [ring]);
    expect(JSON.parse(h.storage.getItem('k')!)['ild|1.2.3'].rings).toEqual([ring]);
    await h.queue.flush();
    expect(sent[0]).toMatchObject({ base_version: 4, referenced_sop_instance_uid: '1.2.3', client_edit_id: 'edit-1' });
    expect(h.queue.version(key)).toBe(5);
    expect(h.queue.pending()).toBe(0);
    expect(h.storage.getItem('k')).toBeNull();
    expect(h.statuses.at(-1)).toBe('saved');
  });

  it('keeps the edit and retries with the same client id when the network fails', async () => {
    const ids: string[] = [];
    let fail = true;
    const h = harness(async (p) => {
      ids.push(p.client_edit_id);
      if (fail) throw new NetworkError('offline');
      return contour(1, p.client_edit_id);
    });
    h.queue.change(key, [ring]);
    await h.queue.flush();
    expect(h.statuses.at(-1)).toBe('offline');
    expect(h.storage.getItem('k')).not.toBeNull();
    fail = false;
    await h.queue.flush();
    expect(ids).toEqual(['edit-1', 'edit-1']);
    expect(h.queue.pending()).toBe(0);
  });

  it('reports a conflict and saves the resolution on top of the latest version', async () => {
    const sent: SaveRequest[] = [];
    let conflict = true;
    const h = harness(async (p) => {
      sent.push(p);
      if (conflict) throw new ConflictError(409, { latest: contour(7) });
      return contour(p.base_version + 1);
    });
    h.queue.change(key, [ring]);
    await h.queue.flush();
    expect(h.conflicts.map((c) => c?.version)).toEqual([7]);
    expect(h.statuses.at(-1)).toBe('conflict');
    conflict = false;
    h.queue.resolveConflict(key, [ring, ring], 'merged');
    await h.queue.flush();
    expect(sent.at(-1)).toMatchObject({ base_version: 7 });
    expect(h.queue.version(key)).toBe(8);
  });

  it('takes theirs without sending anything', async () => {
    const h = harness(async () => {
      throw new ConflictError(409, { latest: contour(2) });
    });
    h.queue.change(key, [ring]);
    await h.queue.flush();
    h.queue.resolveConflict(key, [], 'theirs');
    expect(h.queue.pending()).toBe(0);
    expect(h.queue.version(key)).toBe(2);
  });

  it('re-sends edits a closed tab left behind, unless they did land', async () => {
    const first = harness(async () => {
      throw new NetworkError('offline');
    });
    first.queue.change(key, [ring]);
    const stored = first.storage.getItem('k')!;

    const sent: SaveRequest[] = [];
    const second = harness(async (p) => {
      sent.push(p);
      return contour(1, p.client_edit_id);
    });
    second.storage.setItem('k', stored);
    expect(second.queue.restorePending(new Map())).toBe(1);
    await second.queue.flush();
    expect(sent.map((p) => p.client_edit_id)).toEqual(['edit-1']);

    const third = harness(async (p) => {
      sent.push(p);
      return contour(1);
    });
    third.storage.setItem('k', stored);
    expect(third.queue.restorePending(new Map([['ild|1.2.3', contour(1, 'edit-1')]]))).toBe(0);
  });
});
