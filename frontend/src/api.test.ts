import { describe, expect, it } from 'vitest';

import { ApiError, ConflictError, NetworkError, ReadingApi } from './api';

type Call = { url: string; init: RequestInit };

function fakeFetch(status: number, body: unknown, calls: Call[] = []) {
  return async (url: string, init?: RequestInit) => {
    calls.push({ url, init: init ?? {} });
    return new Response(body === undefined ? '' : JSON.stringify(body), { status });
  };
}

const payload = {
  structure: 'ild' as const,
  referenced_sop_instance_uid: '1.2.3',
  base_version: 0,
  geometry: { schema_version: 1 as const, polygons: [] },
  client_edit_id: 'e1',
};

describe('ReadingApi', () => {
  it('posts contours as JSON with the CSRF token, same-origin', async () => {
    const calls: Call[] = [];
    const api = new ReadingApi('/api/v1/reading/', 'tok', fakeFetch(201, { id: 'c1', version: 1 }, calls));
    await expect(api.saveContour('A1', payload)).resolves.toMatchObject({ version: 1 });
    expect(calls[0]!.url).toBe('/api/v1/reading/assignments/A1/contours/');
    expect(calls[0]!.init.method).toBe('POST');
    expect(calls[0]!.init.credentials).toBe('same-origin');
    expect((calls[0]!.init.headers as Record<string, string>)['X-CSRFToken']).toBe('tok');
    expect(JSON.parse(String(calls[0]!.init.body))).toEqual(payload);
  });

  it('turns a 409 into a ConflictError carrying the latest version', async () => {
    const api = new ReadingApi('/r/', 't', fakeFetch(409, { detail: 'conflict', latest: { version: 3 } }));
    const error = await api.saveContour('A', payload).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ConflictError);
    expect((error as ConflictError).latest?.version).toBe(3);
  });

  it('separates refusals (4xx) from retryable failures (network, 5xx)', async () => {
    const refused = await new ReadingApi('/r/', 't', fakeFetch(423, { detail: 'locked' })).submit('A').catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(ApiError);
    expect((refused as ApiError).status).toBe(423);
    expect((refused as ApiError).message).toBe('locked');
    const down = await new ReadingApi('/r/', 't', fakeFetch(502, undefined)).submit('A').catch((e: unknown) => e);
    expect(down).toBeInstanceOf(NetworkError);
    const offline = await new ReadingApi('/r/', 't', async () => {
      throw new TypeError('Failed to fetch');
    })
      .contours('A')
      .catch((e: unknown) => e);
    expect(offline).toBeInstanceOf(NetworkError);
  });

  it('reads the contour list', async () => {
    const api = new ReadingApi('/r/', 't', fakeFetch(200, { results: [{ id: 'x' }] }));
    await expect(api.contours('A')).resolves.toEqual([{ id: 'x' }]);
  });
});
