/** Masks from the API: bit-packed (MSB first, row-major), zlib-compressed, base64-encoded. */

import type { MaskData } from './api';

export function unpackBits(packed: Uint8Array, count: number): Uint8Array {
  const out = new Uint8Array(count);
  for (let i = 0; i < count; i++) out[i] = (packed[i >> 3]! >> (7 - (i & 7))) & 1;
  return out;
}

export function base64ToBytes(text: string): Uint8Array {
  const binary = atob(text);
  const out = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i);
  return out;
}

export async function inflateZlib(data: Uint8Array): Promise<Uint8Array> {
  const stream = new Blob([data as BlobPart]).stream().pipeThrough(new DecompressionStream('deflate'));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

export async function decodeMask(mask: MaskData): Promise<Uint8Array> {
  const packed = await inflateZlib(base64ToBytes(mask.data));
  return unpackBits(packed, mask.rows * mask.columns);
}
