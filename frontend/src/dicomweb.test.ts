import { describe, expect, it } from 'vitest';

import { fetchSeriesMetadata, linkedIndex, nearestIndex, toStack, type DicomJson } from './dicomweb';

function instance(sop: string, z: number): DicomJson {
  return {
    '00080018': { vr: 'UI', Value: [sop] },
    '00200032': { vr: 'DS', Value: [-100, -120, z] },
    '00200037': { vr: 'DS', Value: [1, 0, 0, 0, 1, 0] },
    '00280030': { vr: 'DS', Value: [0.7, 0.8] },
    '00280010': { vr: 'US', Value: [512] },
    '00280011': { vr: 'US', Value: [256] },
  };
}

describe('toStack', () => {
  it('sorts head first and builds wadors frame image ids', () => {
    const stack = toStack([instance('1.3', -10), instance('1.1', 20), instance('1.2', 5)], 'http://x/dicomweb', 'ST', 'SE');
    expect(stack.map((s) => s.sopInstanceUid)).toEqual(['1.1', '1.2', '1.3']);
    expect(stack[0]!.imageId).toBe('wadors:http://x/dicomweb/studies/ST/series/SE/instances/1.1/frames/1');
    expect(stack[0]!.grid).toEqual({
      rows: 512,
      columns: 256,
      positionLps: [-100, -120, 20],
      rowDirection: [1, 0, 0],
      columnDirection: [0, 1, 0],
      pixelSpacing: [0.7, 0.8],
    });
  });

  it('refuses an instance without plane geometry', () => {
    const broken = instance('9', 0);
    delete broken['00200037'];
    expect(() => toStack([broken], '', '', '')).toThrow(/plane geometry/);
  });
});

describe('linked scrolling', () => {
  const follow = toStack([0, -5, -10, -15, -20].map((z, i) => instance(`f${i}`, z)), '', '', '');
  const base = toStack([50, 40, 30, 20, 10, 0].map((z, i) => instance(`b${i}`, z)), '', '', '');

  it('maps the same fraction of the apex-to-dome range', () => {
    // follow-up apex 0, dome -20; baseline apex 50, dome 0: follow-up z -10 -> baseline z 25
    const index = linkedIndex(follow, 2, base, { apex: 0, dome: -20 }, { apex: 50, dome: 0 });
    expect([2, 3]).toContain(index);
  });

  it('falls back to the same fraction of the stack', () => {
    expect(linkedIndex(follow, 4, base, null, null)).toBe(5);
    expect(nearestIndex(base, 11)).toBe(4);
  });
});

describe('fetchSeriesMetadata', () => {
  it('asks for DICOM JSON and fails on an HTTP error', async () => {
    const calls: Array<[string, RequestInit | undefined]> = [];
    const ok = async (url: string, init?: RequestInit) => {
      calls.push([url, init]);
      return new Response('[]', { status: 200 });
    };
    await expect(fetchSeriesMetadata('/dw', 'S', 'E', ok)).resolves.toEqual([]);
    expect(calls[0]![0]).toBe('/dw/studies/S/series/E/metadata');
    expect((calls[0]![1]!.headers as Record<string, string>).Accept).toBe('application/dicom+json');
    await expect(fetchSeriesMetadata('/dw', 'S', 'E', async () => new Response('', { status: 404 }))).rejects.toThrow(/404/);
  });
});
