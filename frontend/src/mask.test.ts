import { describe, expect, it } from 'vitest';

import { decodeMask, unpackBits } from './mask';

async function zlib(bytes: Uint8Array): Promise<Uint8Array> {
  const stream = new Blob([bytes as BlobPart]).stream().pipeThrough(new CompressionStream('deflate'));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

describe('masks from the API', () => {
  it('unpacks bits MSB first, as numpy.packbits packs them', () => {
    expect(Array.from(unpackBits(new Uint8Array([0b10100000]), 4))).toEqual([1, 0, 1, 0]);
  });

  it('decodes zlib + base64 + packbits', async () => {
    const compressed = await zlib(Uint8Array.from([0b11110000, 0b00001111]));
    const data = btoa(String.fromCharCode(...compressed));
    const mask = await decodeMask({ rows: 4, columns: 4, encoding: 'packbits', data });
    expect(Array.from(mask)).toEqual([1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1]);
  });
});
