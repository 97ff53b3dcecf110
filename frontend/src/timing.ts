/**
 * Reading time: dwell per slice and time on the case, counted only while the page is visible.
 * Pure bookkeeping (a clock is injected); the viewer sends `drain()` to the API periodically.
 */

import type { TimingEvent } from './api';

export class ReadingClock {
  private slice: { sop: string; since: number; startedAt: Date } | null = null;
  private caseSince: number | null = null;
  private caseStartedAt: Date | null = null;
  private events: TimingEvent[] = [];
  private visible = true;

  constructor(private readonly now: () => number = () => performance.now(), private readonly wall: () => Date = () => new Date()) {}

  start(sop: string | null): void {
    this.caseSince = this.now();
    this.caseStartedAt = this.wall();
    if (sop) this.enterSlice(sop);
  }

  enterSlice(sop: string): void {
    if (this.slice?.sop === sop) return;
    this.closeSlice();
    if (this.visible) this.slice = { sop, since: this.now(), startedAt: this.wall() };
    else this.slice = { sop, since: -1, startedAt: this.wall() };
  }

  setVisible(visible: boolean): void {
    if (visible === this.visible) return;
    if (!visible) {
      const sop = this.slice?.sop ?? null;
      this.closeSlice();
      this.closeCase();
      this.visible = false;
      if (sop) this.slice = { sop, since: -1, startedAt: this.wall() };
    } else {
      this.visible = true;
      this.caseSince = this.now();
      this.caseStartedAt = this.wall();
      if (this.slice) this.slice = { sop: this.slice.sop, since: this.now(), startedAt: this.wall() };
    }
  }

  /** Events so far (open intervals are cut at now and continue). */
  drain(): TimingEvent[] {
    if (this.visible) {
      const sop = this.slice?.sop ?? null;
      this.closeSlice();
      this.closeCase();
      this.caseSince = this.now();
      this.caseStartedAt = this.wall();
      if (sop) this.slice = { sop, since: this.now(), startedAt: this.wall() };
    }
    const out = this.events;
    this.events = [];
    return out;
  }

  private closeSlice(): void {
    if (this.slice && this.slice.since >= 0) {
      const ms = Math.round(this.now() - this.slice.since);
      if (ms > 0)
        this.events.push({ kind: 'slice', sop_instance_uid: this.slice.sop, started_at: this.slice.startedAt.toISOString(), duration_ms: ms });
    }
    this.slice = null;
  }

  private closeCase(): void {
    if (this.caseSince !== null && this.caseStartedAt) {
      const ms = Math.round(this.now() - this.caseSince);
      if (ms > 0) this.events.push({ kind: 'case', started_at: this.caseStartedAt.toISOString(), duration_ms: ms });
    }
    this.caseSince = null;
  }
}
