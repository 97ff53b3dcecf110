/** Entry point of the longitudinal viewer page (reports/templates/reports/longitudinal_viewer.html). */

import { init as csInit, setUseCPURendering } from '@cornerstonejs/core';
import { init as dicomImageLoaderInit } from '@cornerstonejs/dicom-image-loader';
import { init as csToolsInit } from '@cornerstonejs/tools';

// Inlined, not extracted: a stylesheet imported by both entries would move into their shared
// chunk, out of the reading viewer's manifest entry that annotation/views.py links.
import styles from './style.css?inline';
import { LongitudinalViewer, type LongitudinalData } from './longitudinalViewer';

declare global {
  interface Window {
    ildLongitudinal?: { viewer: LongitudinalViewer | null; error: string | null; ready: boolean };
  }
}

async function boot(): Promise<void> {
  const root = document.getElementById('longitudinal-root');
  const dataNode = document.getElementById('longitudinal-data');
  if (!root || !dataNode) return;
  window.ildLongitudinal = { viewer: null, error: null, ready: false };
  document.head.append(Object.assign(document.createElement('style'), { textContent: styles }));
  const ds = root.dataset;
  const data = JSON.parse(dataNode.textContent ?? '{}') as LongitudinalData;
  csInit();
  // ?render=cpu: canvas rendering for machines without usable WebGL.
  if (new URLSearchParams(window.location.search).get('render') === 'cpu') setUseCPURendering(true);
  dicomImageLoaderInit({ maxWebWorkers: Math.max(1, Math.min(4, navigator.hardwareConcurrency || 2)) });
  csToolsInit();
  const viewer = new LongitudinalViewer({
    data,
    apiRoot: ds.apiRoot ?? '/api/v1/jobs/',
    dicomwebRoot: `${window.location.origin}${ds.dicomwebRoot ?? '/dicomweb'}`,
  });
  window.ildLongitudinal.viewer = viewer;
  try {
    await viewer.start(root);
    window.ildLongitudinal.ready = true;
    root.dataset.ready = 'true';
  } catch (error) {
    window.ildLongitudinal.error = String(error);
    root.dataset.error = String(error);
    root.append(Object.assign(document.createElement('p'), { className: 'ild-error', textContent: `Viewer error: ${String(error)}` }));
    throw error;
  }
}

void boot();
