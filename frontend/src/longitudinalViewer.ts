/**
 * The longitudinal viewer (read-only): baseline and follow-up CT side by side, the registration's
 * log-Jacobian as a colour overlay on the baseline, and scrolling linked through the
 * registration's slice correspondence (not by slice index).
 *
 * The overlay is the job's RGBA PNG of the displayed baseline image
 * (GET /api/v1/jobs/<id>/overlay/?sop=…&range=…), drawn on a canvas above the baseline viewport
 * with the image's own geometry: the PNG's pixel corners go through the slice grid to LPS mm
 * (geometry.ts) and through the viewport's camera to the canvas, so it follows zoom and pan.
 */

import { RenderingEngine, Enums, imageLoadPoolManager, type Types } from '@cornerstonejs/core';
import { wadors } from '@cornerstonejs/dicom-image-loader';
import * as csTools from '@cornerstonejs/tools';

import { fetchSeriesMetadata, toStack, type StackSlice } from './dicomweb';
import { pixelToLps } from './geometry';
import {
  baselineIndexForFollowupIndex,
  clampRange,
  colourBarGradient,
  colourBarTicks,
  followupIndexByBaselineIndex,
  type SliceCorrespondence,
} from './longitudinalMap';

const { ToolGroupManager, WindowLevelTool, PanTool, ZoomTool, StackScrollTool, Enums: ToolEnums } = csTools;
const { MouseBindings } = ToolEnums;

const ENGINE = 'ild-longitudinal';
const BASE = 'BASELINE';
const FOLLOW = 'FOLLOWUP';
const TOOLGROUP = 'tg-longitudinal';
const LUNG_WINDOW = { lower: -1350, upper: 150 };
const MEDIASTINAL_WINDOW = { lower: -135, upper: 215 };
const OVERLAY_CACHE_SIZE = 160;

export interface SeriesRef {
  study_instance_uid: string;
  series_instance_uid: string;
}

/** What the page embeds (reports/views_viewer.py). */
export interface LongitudinalData {
  job_id: string;
  baseline: SeriesRef;
  followup: SeriesRef;
  /** Per baseline volume slice k: its SOP Instance UID (log_jacobian_baseline.npz). */
  baseline_sops: string[];
  /** Per baseline volume slice k: the job's follow-up slice (result) and its SOP. */
  followup_slice_for_baseline_slice: number[];
  followup_sop_for_baseline_slice: string[];
  range: number;
}

export interface LongitudinalConfig {
  data: LongitudinalData;
  apiRoot: string;
  dicomwebRoot: string;
}

interface OverlayImage {
  bitmap: ImageBitmap;
  followupSop: string;
  followupIndex: number;
}

function el<K extends keyof HTMLElementTagNameMap>(tag: K, attrs: Record<string, string> = {}, text = ''): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text) node.textContent = text;
  return node;
}

export class LongitudinalViewer {
  baseStack: StackSlice[] = [];
  followStack: StackSlice[] = [];
  /** Follow-up stack index for each baseline stack index (through the registration). */
  forward: number[] = [];
  showOverlay = true;
  range: number;
  opacity = 1;
  /** The overlay last drawn: baseline SOP and the follow-up slice its response named. */
  lastOverlay: { baselineSop: string; followupSop: string; followupIndex: number; range: number } | null = null;
  overlayRequests = 0;

  private engine!: RenderingEngine;
  private baseVp!: Types.IStackViewport;
  private followVp!: Types.IStackViewport;
  private overlays = new Map<string, OverlayImage>();
  /** Slices whose overlay the API does not have (404), by overlay key. */
  private noOverlay = new Set<string>();
  private overlayLoop: Promise<void> | null = null;
  private overlayDirty = false;
  // Indices a viewport was sent to by the other one: their STACK_NEW_IMAGE must not link back
  // (a follow-up slice no baseline slice maps to would otherwise be pulled away at once, and a
  // fast wheel on one side would fight with the late arrivals on the other).
  private sentBase = new Set<number>();
  private sentFollow = new Set<number>();
  private ui!: {
    root: HTMLElement;
    base: HTMLDivElement;
    follow: HTMLDivElement;
    canvas: HTMLCanvasElement;
    baseLabel: HTMLElement;
    followLabel: HTMLElement;
    toggle: HTMLButtonElement;
    rangeInput: HTMLInputElement;
    opacityInput: HTMLInputElement;
    message: HTMLElement;
    bar: HTMLElement | null;
    ticks: HTMLElement | null;
  };

  constructor(private readonly config: LongitudinalConfig) {
    this.range = clampRange(config.data.range);
  }

  async start(root: HTMLElement): Promise<void> {
    this.buildUi(root);
    const { baseline, followup } = this.config.data;
    const [baseInstances, followInstances] = await Promise.all([
      fetchSeriesMetadata(this.config.dicomwebRoot, baseline.study_instance_uid, baseline.series_instance_uid),
      fetchSeriesMetadata(this.config.dicomwebRoot, followup.study_instance_uid, followup.series_instance_uid),
    ]);
    this.baseStack = toStack(baseInstances, this.config.dicomwebRoot, baseline.study_instance_uid, baseline.series_instance_uid);
    this.followStack = toStack(followInstances, this.config.dicomwebRoot, followup.study_instance_uid, followup.series_instance_uid);
    for (const slice of [...this.baseStack, ...this.followStack]) wadors.metaDataManager.add(slice.imageId, slice.metadata as never);
    const correspondence: SliceCorrespondence = {
      baselineSops: this.config.data.baseline_sops,
      followupSops: this.config.data.followup_sop_for_baseline_slice,
    };
    this.forward = followupIndexByBaselineIndex(
      this.baseStack.map((s) => s.sopInstanceUid),
      this.followStack.map((s) => s.sopInstanceUid),
      correspondence,
    );
    if (this.forward.every((v) => v < 0)) throw new Error('the registration matches no slice of these series');

    this.setupEngine();
    this.setupTools();
    // Open in the middle of the baseline stack (mid-lung on a chest CT).
    const start = Math.floor(this.baseStack.length / 2);
    const followStart = Math.max(0, this.forward[start] ?? 0);
    await Promise.all([
      this.baseVp.setStack(
        this.baseStack.map((s) => s.imageId),
        start,
      ),
      this.followVp.setStack(
        this.followStack.map((s) => s.imageId),
        followStart,
      ),
    ]);
    for (const vp of [this.baseVp, this.followVp]) {
      vp.setProperties({ voiRange: LUNG_WINDOW });
      vp.render();
      csTools.utilities.stackPrefetch.enable(vp.element);
    }
    this.baseVp.element.addEventListener(Enums.Events.STACK_NEW_IMAGE, () => this.onBaselineSlice());
    this.followVp.element.addEventListener(Enums.Events.STACK_NEW_IMAGE, () => this.onFollowupSlice());
    // Every render of the baseline (scroll, zoom, pan, window) redraws the overlay in place.
    this.baseVp.element.addEventListener(Enums.Events.IMAGE_RENDERED, () => this.drawOverlay());
    window.addEventListener('resize', () => {
      this.engine.resize(true, true);
      this.drawOverlay();
    });
    this.bindKeys();
    this.updateLabels();
    await this.refreshOverlay();
  }

  // -------------------------------------------------------------------------------------------
  // Viewports and linked scrolling

  private setupEngine(): void {
    this.engine = new RenderingEngine(ENGINE);
    this.engine.setViewports([
      { viewportId: BASE, type: Enums.ViewportType.STACK, element: this.ui.base, defaultOptions: { background: [0, 0, 0] } },
      { viewportId: FOLLOW, type: Enums.ViewportType.STACK, element: this.ui.follow, defaultOptions: { background: [0, 0, 0] } },
    ]);
    this.baseVp = this.engine.getViewport(BASE) as Types.IStackViewport;
    this.followVp = this.engine.getViewport(FOLLOW) as Types.IStackViewport;
    imageLoadPoolManager.setMaxSimultaneousRequests(Enums.RequestType.Prefetch, 6);
    imageLoadPoolManager.setMaxSimultaneousRequests(Enums.RequestType.Interaction, 6);
  }

  /** Navigation only: window/level, pan, zoom, scroll. No drawing tool is registered. */
  private setupTools(): void {
    for (const Tool of [WindowLevelTool, PanTool, ZoomTool, StackScrollTool]) {
      if (!csTools.state.tools[Tool.toolName]) csTools.addTool(Tool);
    }
    const tg = ToolGroupManager.createToolGroup(TOOLGROUP)!;
    for (const Tool of [WindowLevelTool, PanTool, ZoomTool, StackScrollTool]) tg.addTool(Tool.toolName);
    tg.addViewport(BASE, ENGINE);
    tg.addViewport(FOLLOW, ENGINE);
    tg.setToolActive(WindowLevelTool.toolName, { bindings: [{ mouseButton: MouseBindings.Primary }] });
    tg.setToolActive(PanTool.toolName, { bindings: [{ mouseButton: MouseBindings.Auxiliary }] });
    tg.setToolActive(ZoomTool.toolName, { bindings: [{ mouseButton: MouseBindings.Secondary }] });
    tg.setToolActive(StackScrollTool.toolName, { bindings: [{ mouseButton: MouseBindings.Wheel }] });
  }

  /** The baseline viewport (camera, properties), for measurement hooks. */
  get baseViewport(): Types.IStackViewport {
    return this.baseVp;
  }

  baselineIndex(): number {
    return this.baseVp.getCurrentImageIdIndex();
  }

  followupIndex(): number {
    return this.followVp.getCurrentImageIdIndex();
  }

  /** The follow-up stack index the registration puts beside baseline stack index ``i``. */
  linkedFollowupIndex(i: number): number {
    return this.forward[i] ?? -1;
  }

  async goToBaseline(index: number): Promise<void> {
    await this.baseVp.setImageIdIndex(Math.max(0, Math.min(this.baseStack.length - 1, index)));
  }

  async goToFollowup(index: number): Promise<void> {
    await this.followVp.setImageIdIndex(Math.max(0, Math.min(this.followStack.length - 1, index)));
  }

  private onBaselineSlice(): void {
    const i = this.baselineIndex();
    this.updateLabels();
    void this.refreshOverlay();
    if (this.sentBase.delete(i)) return;
    const target = this.linkedFollowupIndex(i);
    if (target < 0 || target === this.followupIndex()) return;
    this.send(this.followVp, this.sentFollow, target);
  }

  private onFollowupSlice(): void {
    const j = this.followupIndex();
    this.updateLabels();
    if (this.sentFollow.delete(j)) return;
    if (this.linkedFollowupIndex(this.baselineIndex()) === j) return;
    const target = baselineIndexForFollowupIndex(this.forward, j, this.baselineIndex());
    if (target < 0 || target === this.baselineIndex()) return;
    this.send(this.baseVp, this.sentBase, target);
  }

  /** Move the other viewport, remembering that its next slice change is ours. */
  private send(vp: Types.IStackViewport, sent: Set<number>, index: number): void {
    sent.add(index);
    // A load superseded by a newer one never announces itself: forget it after a while.
    const forget = (): void => void setTimeout(() => sent.delete(index), 250);
    vp.setImageIdIndex(index).then(forget, forget);
  }

  // -------------------------------------------------------------------------------------------
  // Overlay

  private overlayKey(sop: string): string {
    return `${sop}|${this.range}`;
  }

  private async fetchOverlay(sop: string, key: string): Promise<OverlayImage | null> {
    this.overlayRequests++;
    const url = `${this.config.apiRoot}${this.config.data.job_id}/overlay/?sop=${encodeURIComponent(sop)}&range=${this.range}`;
    // No Accept header: the API negotiates JSON renderers for its errors, the PNG comes as is.
    const response = await fetch(url, { credentials: 'same-origin' });
    if (response.status === 404) {
      this.noOverlay.add(key);
      return null;
    }
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const bitmap = await createImageBitmap(await response.blob());
    const followupSop = response.headers.get('X-Followup-Sop-Instance-Uid') ?? '';
    const image: OverlayImage = {
      bitmap,
      followupSop,
      followupIndex: this.followStack.findIndex((s) => s.sopInstanceUid === followupSop),
    };
    this.overlays.set(key, image);
    if (this.overlays.size > OVERLAY_CACHE_SIZE) {
      const oldest = this.overlays.keys().next().value as string;
      this.overlays.get(oldest)?.bitmap.close();
      this.overlays.delete(oldest);
    }
    return image;
  }

  /**
   * Show the overlay of the displayed baseline slice, fetching it if needed. One request at a
   * time: while it runs, scrolling only marks the overlay stale, and the next request is for
   * whatever slice is displayed then (fast scrolling does not queue a request per slice).
   */
  async refreshOverlay(): Promise<void> {
    this.overlayDirty = true;
    while (this.overlayDirty) {
      this.overlayLoop ??= this.overlayPass().finally(() => (this.overlayLoop = null));
      await this.overlayLoop;
    }
  }

  private async overlayPass(): Promise<void> {
    while (this.overlayDirty) {
      this.overlayDirty = false;
      const slice = this.baseStack[this.baselineIndex()];
      if (!slice) return;
      const key = this.overlayKey(slice.sopInstanceUid);
      let image = this.overlays.get(key) ?? null;
      if (!image && !this.noOverlay.has(key)) {
        try {
          image = await this.fetchOverlay(slice.sopInstanceUid, key);
        } catch (error) {
          this.message(`Overlay: ${(error as Error).message}`);
        }
      }
      if (image && this.baseStack[this.baselineIndex()] === slice && this.overlayKey(slice.sopInstanceUid) === key) {
        this.lastOverlay = {
          baselineSop: slice.sopInstanceUid,
          followupSop: image.followupSop,
          followupIndex: image.followupIndex,
          range: this.range,
        };
        this.ui.root.dataset.overlaySop = slice.sopInstanceUid;
      }
      this.drawOverlay();
    }
  }

  /** Draw the current slice's PNG over the baseline image, pixel for pixel (or clear). */
  drawOverlay(): void {
    const canvas = this.ui.canvas;
    const element = this.ui.base;
    const ratio = window.devicePixelRatio || 1;
    const width = Math.round(element.clientWidth * ratio);
    const height = Math.round(element.clientHeight * ratio);
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
    }
    const ctx = canvas.getContext('2d');
    if (!ctx) return;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const slice = this.baseStack[this.baselineIndex()];
    const image = slice ? this.overlays.get(this.overlayKey(slice.sopInstanceUid)) : undefined;
    this.ui.root.dataset.overlayDrawn = 'false';
    if (!this.showOverlay || !slice || !image) return;
    const grid = slice.grid;
    // Pixel (column, row) has its centre at (column, row): the image spans −½ … n − ½.
    const toCanvas = (column: number, row: number): Types.Point2 =>
      this.baseVp.worldToCanvas(pixelToLps(grid, [column, row]) as Types.Point3);
    const origin = toCanvas(-0.5, -0.5);
    const alongRow = toCanvas(grid.columns - 0.5, -0.5);
    const alongColumn = toCanvas(-0.5, grid.rows - 0.5);
    const sx = image.bitmap.width;
    const sy = image.bitmap.height;
    ctx.setTransform(
      (ratio * (alongRow[0] - origin[0])) / sx,
      (ratio * (alongRow[1] - origin[1])) / sx,
      (ratio * (alongColumn[0] - origin[0])) / sy,
      (ratio * (alongColumn[1] - origin[1])) / sy,
      ratio * origin[0],
      ratio * origin[1],
    );
    ctx.imageSmoothingEnabled = false;
    ctx.globalAlpha = this.opacity;
    ctx.drawImage(image.bitmap, 0, 0);
    ctx.globalAlpha = 1;
    this.ui.root.dataset.overlayDrawn = 'true';
  }

  setOverlayVisible(visible: boolean): void {
    this.showOverlay = visible;
    this.ui.toggle.classList.toggle('active', visible);
    this.ui.toggle.setAttribute('aria-pressed', String(visible));
    this.ui.root.dataset.overlay = visible ? 'on' : 'off';
    this.drawOverlay();
  }

  toggleOverlay(): void {
    this.setOverlayVisible(!this.showOverlay);
  }

  async setRange(value: number): Promise<void> {
    this.range = clampRange(value, this.range);
    this.ui.rangeInput.value = String(this.range);
    this.renderColourBar();
    await this.refreshOverlay();
  }

  setOpacity(value: number): void {
    this.opacity = Math.max(0, Math.min(1, Number.isFinite(value) ? value : 1));
    this.ui.opacityInput.value = String(this.opacity);
    this.drawOverlay();
  }

  setWindow(kind: 'lung' | 'mediastinal'): void {
    for (const vp of [this.baseVp, this.followVp]) {
      vp.setProperties({ voiRange: kind === 'lung' ? LUNG_WINDOW : MEDIASTINAL_WINDOW });
      vp.render();
    }
  }

  resetView(): void {
    for (const vp of [this.baseVp, this.followVp]) {
      vp.resetCamera();
      vp.render();
    }
  }

  // -------------------------------------------------------------------------------------------
  // UI

  private buildUi(root: HTMLElement): void {
    root.classList.add('ild-app', 'ild-longitudinal');
    root.replaceChildren();
    const tools = el('nav', { class: 'ild-tools' });
    const button = (action: string, label: string, title: string, onClick: () => void): HTMLButtonElement => {
      const b = el('button', { type: 'button', 'data-action': action, title }, label);
      b.addEventListener('click', () => {
        onClick();
        b.blur();
      });
      return b;
    };
    const group = (...items: HTMLElement[]): HTMLElement => {
      const g = el('span', { class: 'group' });
      g.append(...items);
      return g;
    };
    const toggle = button('overlay', 'Log-Jacobian overlay', 'Show or hide the overlay (O)', () => this.toggleOverlay());
    toggle.classList.add('active');
    toggle.setAttribute('aria-pressed', 'true');
    const rangeInput = el('input', {
      type: 'number',
      id: 'overlay-range',
      min: '0.01',
      max: '5',
      step: '0.05',
      value: String(this.range),
      'aria-label': 'Colour range ±',
    });
    rangeInput.addEventListener('change', () => void this.setRange(Number(rangeInput.value)));
    const opacityInput = el('input', {
      type: 'range',
      id: 'overlay-opacity',
      min: '0',
      max: '1',
      step: '0.05',
      value: String(this.opacity),
      'aria-label': 'Overlay opacity',
    });
    opacityInput.addEventListener('input', () => this.setOpacity(Number(opacityInput.value)));
    tools.append(
      group(toggle),
      group(el('label', { for: 'overlay-range' }, 'Range ±'), rangeInput),
      group(el('label', { for: 'overlay-opacity' }, 'Opacity'), opacityInput),
      group(
        button('voi:lung', 'Lung W1500/L-600', 'Lung window (1)', () => this.setWindow('lung')),
        button('voi:mediastinal', 'Mediastinal W350/L40', 'Mediastinal window (2)', () => this.setWindow('mediastinal')),
        button('reset', 'Reset', 'Reset zoom and pan (R)', () => this.resetView()),
      ),
    );
    const viewports = el('div', { class: 'ild-viewports' });
    const baseWrap = el('div', { class: 'ild-vp-wrap' });
    const baseLabel = el('div', { class: 'ild-vp-label' }, 'Baseline');
    const base = el('div', { class: 'ild-vp', id: 'viewport-baseline' });
    const canvas = el('canvas', { class: 'ild-overlay-canvas', id: 'overlay-canvas' });
    baseWrap.append(baseLabel, base, canvas);
    const followWrap = el('div', { class: 'ild-vp-wrap' });
    const followLabel = el('div', { class: 'ild-vp-label' }, 'Follow-up');
    const follow = el('div', { class: 'ild-vp', id: 'viewport-followup' });
    followWrap.append(followLabel, follow);
    for (const element of [base, follow]) element.addEventListener('contextmenu', (e) => e.preventDefault());
    viewports.append(baseWrap, followWrap);
    const main = el('div', { class: 'ild-main' });
    main.append(viewports);
    const footer = el('footer', { class: 'ild-footer' });
    const message = el('span', { class: 'ild-message', role: 'status' });
    footer.append(
      el('span', { class: 'muted small' }, 'Wheel/↑↓ scroll (linked through the registration) · O overlay · 1/2 windows · R reset · right-drag zoom · middle-drag pan'),
      message,
    );
    root.append(tools, main, footer);
    // The colour bar is rendered by the page (reports/templates/reports/longitudinal_viewer.html).
    const bar = document.getElementById('colour-bar');
    const ticks = document.getElementById('colour-bar-ticks');
    this.ui = { root, base, follow, canvas, baseLabel, followLabel, toggle, rangeInput, opacityInput, message, bar, ticks };
    root.dataset.overlay = 'on';
    this.renderColourBar();
  }

  private renderColourBar(): void {
    const { bar, ticks } = this.ui;
    if (bar) {
      bar.style.background = colourBarGradient(this.range);
      bar.dataset.range = String(this.range);
    }
    if (ticks) {
      ticks.replaceChildren(
        ...colourBarTicks(this.range).map((tick) => {
          const span = el('span', { 'data-value': String(tick.value) }, tick.label);
          span.style.left = `${tick.at * 100}%`;
          // The end labels stay inside the bar's width.
          span.style.transform = `translateX(${-tick.at * 100}%)`;
          return span;
        }),
      );
    }
  }

  private updateLabels(): void {
    const i = this.baselineIndex();
    const j = this.followupIndex();
    const b = this.baseStack[i];
    const f = this.followStack[j];
    if (b) this.ui.baseLabel.textContent = `Baseline · ${i + 1}/${this.baseStack.length} · z ${b.grid.positionLps[2].toFixed(1)} mm`;
    if (f) this.ui.followLabel.textContent = `Follow-up · ${j + 1}/${this.followStack.length} · z ${f.grid.positionLps[2].toFixed(1)} mm`;
    this.ui.root.dataset.baselineIndex = String(i);
    this.ui.root.dataset.followupIndex = String(j);
  }

  message(text: string): void {
    this.ui.message.textContent = text;
  }

  private bindKeys(): void {
    window.addEventListener('keydown', (e) => {
      const target = e.target as HTMLElement | null;
      // Keys typed into the range box are its own; the opacity slider keeps the shortcuts.
      const typing = target instanceof HTMLInputElement ? target.type !== 'range' : target?.tagName === 'TEXTAREA' || target?.tagName === 'SELECT';
      if (typing) return;
      if (e.ctrlKey || e.metaKey || e.altKey) return;
      const key = e.key;
      let handled = true;
      if (key === 'o' || key === 'O') this.toggleOverlay();
      else if (key === 'ArrowDown' || key === 'PageDown') void this.goToBaseline(this.baselineIndex() + (key === 'PageDown' ? 10 : 1));
      else if (key === 'ArrowUp' || key === 'PageUp') void this.goToBaseline(this.baselineIndex() - (key === 'PageUp' ? 10 : 1));
      else if (key === 'Home') void this.goToBaseline(0);
      else if (key === 'End') void this.goToBaseline(this.baseStack.length - 1);
      else if (key === '1') this.setWindow('lung');
      else if (key === '2') this.setWindow('mediastinal');
      else if (key === 'r') this.resetView();
      else handled = false;
      if (handled) e.preventDefault();
    });
  }
}
