import { describe, expect, it } from 'vitest';

import { ReadingClock } from './timing';

describe('ReadingClock', () => {
  it('counts dwell per slice and the case time, only while visible', () => {
    let now = 0;
    const clock = new ReadingClock(() => now, () => new Date(Date.UTC(2026, 0, 1) + now));
    clock.start('A');
    now = 1000;
    clock.enterSlice('B');
    now = 3000;
    clock.setVisible(false);
    now = 60000; // hidden: not counted
    clock.setVisible(true);
    now = 60500;
    const events = clock.drain();
    const slices = events.filter((e) => e.kind === 'slice').map((e) => [e.sop_instance_uid, e.duration_ms]);
    expect(slices).toEqual([
      ['A', 1000],
      ['B', 2000],
      ['B', 500],
    ]);
    const caseMs = events.filter((e) => e.kind === 'case').reduce((n, e) => n + e.duration_ms, 0);
    expect(caseMs).toBe(3500);
    expect(clock.drain()).toEqual([]);
  });
});
