/**
 * Automatic saving of contour edits, one slot per (structure, slice). Never loses a stroke:
 * every change is written to localStorage before it is sent, a send that fails on the network is
 * retried (same client_edit_id, so a retry of a save that did land is idempotent), and pending
 * edits left by a closed tab are sent again on the next load. A 409 goes to `onConflict`.
 */

import { ApiError, ConflictError, NetworkError, type ContourData, type SaveRequest, type Structure } from './api';
import { toGeometry, type Ring } from './geometry';

export interface SlotKey {
  structure: Structure;
  sop: string;
}

export const keyOf = (k: SlotKey): string => `${k.structure}|${k.sop}`;

export function parseKey(key: string): SlotKey {
  const [structure, sop] = key.split('|') as [Structure, string];
  return { structure, sop };
}

interface Slot {
  /** The server version the current rings are based on (0: nothing saved yet). */
  version: number;
  rings: Ring[];
  dirty: boolean;
  editId: string;
  inFlight: boolean;
  conflict: ContourData | null;
}

interface PendingRecord {
  version: number;
  rings: Ring[];
  editId: string;
}

export type SaveStatus = 'saved' | 'saving' | 'offline' | 'conflict' | 'locked' | 'error';

export interface SaveQueueOptions {
  save: (payload: SaveRequest) => Promise<ContourData>;
  storage: Pick<Storage, 'getItem' | 'setItem' | 'removeItem'> | null;
  storageKey: string;
  debounceMs?: number;
  newId?: () => string;
  setTimer?: (fn: () => void, ms: number) => unknown;
  clearTimer?: (handle: unknown) => void;
  onStatus?: (status: SaveStatus, detail: { pending: number; message?: string }) => void;
  onConflict?: (key: SlotKey, mine: Ring[], latest: ContourData | null) => void;
  onSaved?: (key: SlotKey, contour: ContourData) => void;
}

export class SaveQueue {
  private readonly slots = new Map<string, Slot>();
  private timer: unknown = null;
  private retryMs = 0;
  private readonly opts: Required<Omit<SaveQueueOptions, 'onStatus' | 'onConflict' | 'onSaved' | 'storage'>> &
    SaveQueueOptions;
  private flushing: Promise<void> | null = null;
  private locked = false;

  constructor(options: SaveQueueOptions) {
    this.opts = {
      debounceMs: 600,
      newId: () => crypto.randomUUID(),
      setTimer: (fn, ms) => setTimeout(fn, ms),
      clearTimer: (h) => clearTimeout(h as ReturnType<typeof setTimeout>),
      ...options,
    };
  }

  /** Server state of a slot (from the initial load or a conflict resolution). */
  setBase(key: SlotKey, version: number, rings: Ring[]): void {
    const slot = this.slot(key);
    if (slot.dirty) return; // a local edit wins until it is saved or resolved
    slot.version = version;
    slot.rings = rings;
  }

  rings(key: SlotKey): Ring[] {
    return this.slots.get(keyOf(key))?.rings ?? [];
  }

  version(key: SlotKey): number {
    return this.slots.get(keyOf(key))?.version ?? 0;
  }

  keys(): SlotKey[] {
    return [...this.slots.keys()].map(parseKey);
  }

  pending(): number {
    let n = 0;
    for (const slot of this.slots.values()) if (slot.dirty) n++;
    return n;
  }

  /** A local edit: persisted now, sent after the debounce. */
  change(key: SlotKey, rings: Ring[]): void {
    if (this.locked) return;
    const slot = this.slot(key);
    slot.rings = rings;
    slot.dirty = true;
    slot.editId = this.opts.newId();
    this.persist();
    this.status();
    this.schedule(this.opts.debounceMs);
  }

  /** Re-queue edits a previous page left in localStorage (call after setBase for loaded slots). */
  restorePending(saved: Map<string, ContourData>): number {
    const records = this.readStorage();
    let restored = 0;
    for (const [key, record] of Object.entries(records)) {
      const server = saved.get(key);
      if (server && server.client_edit_id === record.editId) continue; // it did land
      const slot = this.slot(parseKey(key));
      slot.version = record.version;
      slot.rings = record.rings;
      slot.dirty = true;
      slot.editId = record.editId;
      restored++;
    }
    this.persist();
    if (restored) this.schedule(0);
    return restored;
  }

  resolveConflict(key: SlotKey, rings: Ring[], choice: 'mine' | 'theirs' | 'merged'): void {
    const slot = this.slot(key);
    const latest = slot.conflict;
    slot.conflict = null;
    slot.version = latest?.version ?? 0;
    if (choice === 'theirs') {
      slot.rings = rings;
      slot.dirty = false;
      this.persist();
      this.status();
      return;
    }
    this.change(key, rings);
  }

  /** Send every dirty slot now; resolves when nothing is in flight. */
  async flush(): Promise<void> {
    if (this.timer !== null) {
      this.opts.clearTimer(this.timer);
      this.timer = null;
    }
    if (this.flushing) {
      await this.flushing;
    }
    this.flushing = this.sendAll().finally(() => {
      this.flushing = null;
    });
    await this.flushing;
  }

  setLocked(): void {
    this.locked = true;
    this.status();
  }

  private async sendAll(): Promise<void> {
    for (const [key, slot] of this.slots) {
      if (!slot.dirty || slot.inFlight || slot.conflict || this.locked) continue;
      const { structure, sop } = parseKey(key);
      const sent = { rings: slot.rings, editId: slot.editId };
      slot.inFlight = true;
      this.status();
      try {
        const contour = await this.opts.save({
          structure,
          referenced_sop_instance_uid: sop,
          base_version: slot.version,
          geometry: toGeometry(sent.rings),
          client_edit_id: sent.editId,
        });
        slot.version = contour.version;
        if (slot.editId === sent.editId) slot.dirty = false;
        this.retryMs = 0;
        this.opts.onSaved?.({ structure, sop }, contour);
      } catch (error) {
        if (error instanceof ConflictError) {
          slot.conflict = error.latest;
          this.opts.onConflict?.({ structure, sop }, slot.rings, error.latest);
        } else if (error instanceof NetworkError) {
          this.retryMs = Math.min(this.retryMs ? this.retryMs * 2 : 1000, 15000);
          this.schedule(this.retryMs);
        } else if (error instanceof ApiError && error.status === 423) {
          this.locked = true;
        } else {
          this.retryMs = Math.min(this.retryMs ? this.retryMs * 2 : 2000, 30000);
          this.schedule(this.retryMs);
          this.opts.onStatus?.('error', { pending: this.pending(), message: String((error as Error).message) });
        }
      } finally {
        slot.inFlight = false;
      }
    }
    this.persist();
    this.status();
    // Edits made while a send was in flight go in the next round.
    if (!this.locked && this.retryMs === 0 && [...this.slots.values()].some((s) => s.dirty && !s.conflict)) {
      this.schedule(this.opts.debounceMs);
    }
  }

  private schedule(ms: number): void {
    if (this.timer !== null) this.opts.clearTimer(this.timer);
    this.timer = this.opts.setTimer(() => {
      this.timer = null;
      void this.flush();
    }, ms);
  }

  private slot(key: SlotKey): Slot {
    const k = keyOf(key);
    let slot = this.slots.get(k);
    if (!slot) {
      slot = { version: 0, rings: [], dirty: false, editId: '', inFlight: false, conflict: null };
      this.slots.set(k, slot);
    }
    return slot;
  }

  private readStorage(): Record<string, PendingRecord> {
    try {
      const raw = this.opts.storage?.getItem(this.opts.storageKey);
      return raw ? (JSON.parse(raw) as Record<string, PendingRecord>) : {};
    } catch {
      return {};
    }
  }

  private persist(): void {
    if (!this.opts.storage) return;
    const records: Record<string, PendingRecord> = {};
    for (const [key, slot] of this.slots) {
      if (slot.dirty) records[key] = { version: slot.version, rings: slot.rings, editId: slot.editId };
    }
    try {
      if (Object.keys(records).length) this.opts.storage.setItem(this.opts.storageKey, JSON.stringify(records));
      else this.opts.storage.removeItem(this.opts.storageKey);
    } catch {
      // Storage full or disabled: the in-memory queue still retries.
    }
  }

  private status(): void {
    const pending = this.pending();
    let status: SaveStatus = 'saved';
    if (this.locked) status = 'locked';
    else if ([...this.slots.values()].some((s) => s.conflict)) status = 'conflict';
    else if (this.retryMs > 0 && pending) status = 'offline';
    else if (pending) status = 'saving';
    this.opts.onStatus?.(status, { pending });
  }
}
