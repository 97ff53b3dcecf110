/// <reference types="vitest/config" />
import { defineConfig } from 'vite';

// Django serves dist/ as static files under /static/ on the same origin as /dicomweb/ and the
// API (module workers must be same-origin). Dev: `npm run dev` proxies to a Django on :8000.
export default defineConfig({
  base: '/static/',
  worker: { format: 'es' },
  optimizeDeps: {
    exclude: ['@cornerstonejs/dicom-image-loader'],
    include: [
      'dicom-parser',
      '@cornerstonejs/dicom-image-loader > @cornerstonejs/codec-libjpeg-turbo-8bit/decodewasmjs',
      '@cornerstonejs/dicom-image-loader > @cornerstonejs/codec-charls/decodewasmjs',
      '@cornerstonejs/dicom-image-loader > @cornerstonejs/codec-openjpeg/decodewasmjs',
      '@cornerstonejs/dicom-image-loader > @cornerstonejs/codec-openjph/wasmjs',
      '@cornerstonejs/dicom-image-loader > @cornerstonejs/codec-libjxl/decodewasmjs',
    ],
  },
  server: {
    host: '127.0.0.1',
    port: 5173,
    strictPort: true,
    proxy: { '/dicomweb': 'http://127.0.0.1:8000', '/api': 'http://127.0.0.1:8000' },
  },
  build: {
    target: 'es2022',
    outDir: 'dist',
    emptyOutDir: true,
    manifest: true,
    chunkSizeWarningLimit: 6000,
    rollupOptions: { input: ['src/main.ts', 'src/longitudinal.ts'] },
  },
  test: {
    include: ['src/**/*.test.ts'],
    environment: 'node',
  },
});
