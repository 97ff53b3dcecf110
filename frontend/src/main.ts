/** Entry point of the viewer page (annotation/templates/annotation/viewer.html). */

import { init as csInit, setUseCPURendering } from '@cornerstonejs/core';
import { init as dicomImageLoaderInit } from '@cornerstonejs/dicom-image-loader';
import { init as csToolsInit } from '@cornerstonejs/tools';

import './style.css';
import { Viewer, type ViewerConfig } from './viewer';

declare global {
  interface Window {
    ild?: { viewer: Viewer | null; error: string | null; ready: boolean };
  }
}

async function boot(): Promise<void> {
  const root = document.getElementById('viewer-root');
  if (!root) return;
  window.ild = { viewer: null, error: null, ready: false };
  const ds = root.dataset;
  const config: ViewerConfig = {
    assignmentId: ds.assignmentId ?? '',
    apiRoot: ds.apiRoot ?? '/api/v1/reading/',
    dicomwebRoot: `${window.location.origin}${ds.dicomwebRoot ?? '/dicomweb'}`,
    worklistUrl: ds.worklistUrl ?? '/reading/',
    nextUrl: ds.nextUrl ?? '/reading/next/',
    isReader: ds.isReader === 'true',
    csrfToken: document.querySelector<HTMLMetaElement>('meta[name="csrf-token"]')?.content ?? '',
    // ?render=cpu: canvas rendering for machines without usable WebGL (no brush there).
    cpuRendering: new URLSearchParams(window.location.search).get('render') === 'cpu',
  };
  csInit();
  if (config.cpuRendering) setUseCPURendering(true);
  // Decoding native CT frames is cheap; two workers keep a 2-core machine responsive.
  dicomImageLoaderInit({ maxWebWorkers: Math.max(1, Math.min(4, (navigator.hardwareConcurrency || 2) - 0)) });
  csToolsInit();
  const viewer = new Viewer(config);
  window.ild.viewer = viewer;
  try {
    await viewer.start(root);
    window.ild.ready = true;
    root.dataset.ready = 'true';
  } catch (error) {
    window.ild.error = String(error);
    root.dataset.error = String(error);
    root.append(Object.assign(document.createElement('p'), { className: 'ild-error', textContent: `Viewer error: ${String(error)}` }));
    throw error;
  }
}

void boot();
