/**
 * The reading workstation: a Cornerstone3D stack viewport on our WADO-RS, contouring of ILD and
 * lung (freehand contours, brush, eraser, undo) saved automatically as versions, protocol slice
 * navigation, presets and shortcuts, linked baseline/follow-up for longitudinal reads.
 *
 * The source of truth for contours is the SaveQueue (rings per structure and slice). Cornerstone
 * annotations (freehand mode) and labelmaps (brush mode) are views of it for the displayed slice.
 */

import {
  RenderingEngine,
  Enums,
  cache,
  eventTarget,
  imageLoader,
  imageLoadPoolManager,
  type Types,
} from '@cornerstonejs/core';
import { wadors } from '@cornerstonejs/dicom-image-loader';
import * as csTools from '@cornerstonejs/tools';

import { ApiError, ReadingApi, type AssignmentData, type ContourData, type Structure } from './api';
import { fetchSeriesMetadata, linkedIndex, toStack, type LungRange, type StackSlice } from './dicomweb';
import {
  fromGeometry,
  maskToRings,
  rasterizeRings,
  ringsOverlap,
  unionRings,
  type Ring,
  type Vec3,
} from './geometry';
import { decodeMask } from './mask';
import { SaveQueue, keyOf, type SaveStatus, type SlotKey } from './saveQueue';
import { ReadingClock } from './timing';

const {
  ToolGroupManager,
  WindowLevelTool,
  PanTool,
  ZoomTool,
  StackScrollTool,
  PlanarFreehandROITool,
  BrushTool,
  annotation,
  segmentation,
  Enums: ToolEnums,
} = csTools;
const { MouseBindings } = ToolEnums;

export interface ViewerConfig {
  assignmentId: string;
  apiRoot: string;
  dicomwebRoot: string;
  worklistUrl: string;
  nextUrl: string;
  isReader: boolean;
  csrfToken: string;
  /** Cornerstone's CPU (canvas) rendering: labelmaps, hence brush and eraser, need WebGL. */
  cpuRendering?: boolean;
}

export type ToolMode = 'navigate' | 'freehand' | 'brush' | 'eraser';

export const PRESETS = {
  lung: { label: 'Lung', width: 1500, level: -600 },
  mediastinal: { label: 'Mediastinal', width: 350, level: 40 },
} as const;
export type PresetName = keyof typeof PRESETS;

export function voiOf(name: PresetName): { lower: number; upper: number } {
  const { width, level } = PRESETS[name];
  return { lower: level - width / 2, upper: level + width / 2 };
}

const FREEHAND: Record<Structure, string> = { ild: 'FreehandILD', lung: 'FreehandLung' };
const MODEL_TOOL = 'ModelOverlay';
const SEG_ID: Record<Structure, string> = { ild: 'seg-ild', lung: 'seg-lung' };
const COLORS: Record<Structure, [number, number, number]> = { ild: [255, 120, 0], lung: [40, 200, 255] };
const ENGINE = 'ild-engine';
const MAIN = 'CT';
const BASE = 'BASELINE';
const TOOLGROUP = 'tg-main';
const TOOLGROUP_BASE = 'tg-base';

interface UndoEntry {
  key: SlotKey;
  rings: Ring[];
}

type AnyAnnotation = {
  annotationUID?: string;
  metadata: { toolName: string; referencedImageId?: string };
  data: { contour?: { polyline: Types.Point3[]; closed?: boolean } };
};

function el<K extends keyof HTMLElementTagNameMap>(tag: K, attrs: Record<string, string> = {}, text = ''): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text) node.textContent = text;
  return node;
}

export class Viewer {
  readonly api: ReadingApi;
  data!: AssignmentData;
  stack: StackSlice[] = [];
  baseStack: StackSlice[] = [];
  queue!: SaveQueue;
  readonly clock = new ReadingClock();
  metrics: { firstImageMs: number | null; seriesLoadedMs: number | null } = { firstImageMs: null, seriesLoadedMs: null };

  private engine!: RenderingEngine;
  private vp!: Types.IStackViewport;
  private baseVp: Types.IStackViewport | null = null;
  private byImageId = new Map<string, StackSlice>();
  private bySop = new Map<string, number>();
  private protocol: string[] = [];
  private protocolSet = new Set<string>();
  private structure: Structure = 'ild';
  private mode: ToolMode = 'navigate';
  private editable = false;
  private suppress = 0;
  private undoStack: UndoEntry[] = [];
  private redoStack: UndoEntry[] = [];
  private labelmaps: Record<Structure, Map<string, string>> | null = null;
  private filledLabelmaps = new Set<string>();
  private brushTimer: ReturnType<typeof setTimeout> | null = null;
  private modifyTimer: ReturnType<typeof setTimeout> | null = null;
  private linking = false;
  private showModel = false;
  private voi: PresetName = 'lung';
  private ui!: {
    root: HTMLElement;
    status: HTMLElement;
    save: HTMLElement;
    indicator: HTMLElement;
    protocolList: HTMLElement;
    buttons: Map<string, HTMLButtonElement>;
    dialog: HTMLDialogElement;
    main: HTMLDivElement;
    base: HTMLDivElement | null;
    message: HTMLElement;
  };

  constructor(private readonly config: ViewerConfig) {
    this.api = new ReadingApi(config.apiRoot, config.csrfToken);
  }

  // -------------------------------------------------------------------------------------------
  // Start-up

  async start(root: HTMLElement): Promise<void> {
    const started = performance.now();
    this.data = await this.api.assignment(this.config.assignmentId);
    this.buildUi(root);
    if (this.data.case.protocol_status !== 'ready') {
      this.message(
        this.data.case.protocol_status === 'failed'
          ? `The slices of this case could not be computed: ${this.data.case.protocol_error}`
          : 'The slices of this case are still being computed; reload in a minute.',
      );
      return;
    }
    const series = this.data.case.series;
    const [instances, contours] = await Promise.all([
      fetchSeriesMetadata(this.config.dicomwebRoot, series.study_instance_uid, series.series_instance_uid),
      this.api.contours(this.config.assignmentId),
    ]);
    this.stack = toStack(instances, this.config.dicomwebRoot, series.study_instance_uid, series.series_instance_uid);
    this.metrics.seriesLoadedMs = performance.now() - started;
    this.stack.forEach((slice, index) => {
      wadors.metaDataManager.add(slice.imageId, slice.metadata as never);
      this.byImageId.set(slice.imageId, slice);
      this.bySop.set(slice.sopInstanceUid, index);
    });
    this.protocol = series.protocol_sop_instance_uids.filter((sop) => this.bySop.has(sop));
    this.protocolSet = new Set(this.protocol);

    this.setupQueue(contours);
    this.setupEngine();
    this.setupTools();

    const start = this.firstSliceToRead();
    this.vp.element.addEventListener(Enums.Events.IMAGE_RENDERED, this.onFirstRender);
    await this.vp.setStack(
      this.stack.map((s) => s.imageId),
      start,
    );
    this.applyVoi(this.voi);
    csTools.utilities.stackPrefetch.enable(this.vp.element);

    if (this.data.case.baseline) await this.startBaseline(this.data.case.baseline);

    this.vp.element.addEventListener(Enums.Events.STACK_NEW_IMAGE, () => this.onSliceChange());
    this.listenToAnnotations();
    this.renderProtocolList();
    this.onSliceChange();
    this.setMode(this.editableByUser() ? 'freehand' : 'navigate');
    this.clock.start(this.currentSlice()?.sopInstanceUid ?? null);
    this.startTimingLoop();
    this.bindKeys();
    window.addEventListener('resize', () => this.engine.resize(true, true));
  }

  private onFirstRender = (): void => {
    if (this.metrics.firstImageMs === null) this.metrics.firstImageMs = performance.now();
    this.vp.element.removeEventListener(Enums.Events.IMAGE_RENDERED, this.onFirstRender);
    this.ui.root.dataset.firstImage = 'true';
  };

  private editableByUser(): boolean {
    return this.config.isReader && !this.data.locked;
  }

  private firstSliceToRead(): number {
    const untouched = this.protocol.find(
      (sop) => this.queue.version({ structure: 'ild', sop }) === 0 && this.queue.version({ structure: 'lung', sop }) === 0,
    );
    const sop = untouched ?? this.protocol[0];
    return sop ? (this.bySop.get(sop) ?? 0) : 0;
  }

  private setupQueue(contours: ContourData[]): void {
    this.queue = new SaveQueue({
      save: (payload) => this.api.saveContour(this.config.assignmentId, payload),
      storage: window.localStorage,
      storageKey: `ild-review:pending:${this.config.assignmentId}`,
      onStatus: (status, detail) => this.showSaveStatus(status, detail.pending, detail.message),
      onConflict: (key, mine, latest) => this.openConflict(key, mine, latest),
      onSaved: () => this.renderProtocolList(),
    });
    const saved = new Map<string, ContourData>();
    for (const contour of contours) {
      const key = { structure: contour.structure, sop: contour.referenced_sop_instance_uid };
      this.queue.setBase(key, contour.version, fromGeometry(contour.geometry));
      saved.set(keyOf(key), contour);
    }
    if (this.editableByUser()) {
      const restored = this.queue.restorePending(saved);
      if (restored) this.message(`${restored} unsaved edit(s) from an earlier session are being saved.`);
    }
  }

  private setupEngine(): void {
    this.engine = new RenderingEngine(ENGINE);
    const inputs: Types.PublicViewportInput[] = [
      { viewportId: MAIN, type: Enums.ViewportType.STACK, element: this.ui.main, defaultOptions: { background: [0, 0, 0] } },
    ];
    if (this.ui.base) {
      inputs.push({ viewportId: BASE, type: Enums.ViewportType.STACK, element: this.ui.base, defaultOptions: { background: [0, 0, 0] } });
    }
    this.engine.setViewports(inputs);
    this.vp = this.engine.getViewport(MAIN) as Types.IStackViewport;
    // Prefetch hard: a 400-slice series should be in memory after a few seconds.
    imageLoadPoolManager.setMaxSimultaneousRequests(Enums.RequestType.Prefetch, 8);
    imageLoadPoolManager.setMaxSimultaneousRequests(Enums.RequestType.Interaction, 6);
  }

  private setupTools(): void {
    for (const Tool of [WindowLevelTool, PanTool, ZoomTool, StackScrollTool, PlanarFreehandROITool, BrushTool]) {
      if (!csTools.state.tools[Tool.toolName]) csTools.addTool(Tool);
    }
    const tg = ToolGroupManager.createToolGroup(TOOLGROUP)!;
    tg.addTool(WindowLevelTool.toolName);
    tg.addTool(PanTool.toolName);
    tg.addTool(ZoomTool.toolName);
    tg.addTool(StackScrollTool.toolName);
    const freehand = {
      calculateStats: false,
      allowOpenContours: false,
      getTextLines: () => [],
      smoothing: { smoothOnAdd: false, smoothOnEdit: false },
    };
    tg.addToolInstance(FREEHAND.ild, PlanarFreehandROITool.toolName, freehand);
    tg.addToolInstance(FREEHAND.lung, PlanarFreehandROITool.toolName, freehand);
    tg.addToolInstance(MODEL_TOOL, PlanarFreehandROITool.toolName, freehand);
    tg.addToolInstance('Paint', BrushTool.toolName, { activeStrategy: 'FILL_INSIDE_CIRCLE' });
    tg.addToolInstance('Erase', BrushTool.toolName, { activeStrategy: 'ERASE_INSIDE_CIRCLE' });
    tg.addViewport(MAIN, ENGINE);
    tg.setToolActive(PanTool.toolName, { bindings: [{ mouseButton: MouseBindings.Auxiliary }] });
    tg.setToolActive(ZoomTool.toolName, { bindings: [{ mouseButton: MouseBindings.Secondary }] });
    tg.setToolActive(StackScrollTool.toolName, { bindings: [{ mouseButton: MouseBindings.Wheel }] });
    tg.setToolEnabled(FREEHAND.ild);
    tg.setToolEnabled(FREEHAND.lung);
    tg.setToolEnabled(MODEL_TOOL);
    const style = (rgb: [number, number, number]) => ({
      color: `rgb(${rgb.join(',')})`,
      colorHighlighted: `rgb(${rgb.map((v) => Math.min(255, v + 60)).join(',')})`,
      colorSelected: 'rgb(255,255,255)',
      lineWidth: '2',
      textBoxVisibility: false,
    });
    annotation.config.style.setToolGroupToolStyles(TOOLGROUP, {
      [FREEHAND.ild]: style(COLORS.ild),
      [FREEHAND.lung]: style(COLORS.lung),
      [MODEL_TOOL]: { ...style([230, 60, 230]), lineDash: '4,3' },
    } as never);
    csTools.utilities.segmentation.setBrushSizeForToolGroup(TOOLGROUP, 6);
  }

  private async startBaseline(baseline: NonNullable<AssignmentData['case']['baseline']>): Promise<void> {
    const instances = await fetchSeriesMetadata(this.config.dicomwebRoot, baseline.study_instance_uid, baseline.series_instance_uid);
    this.baseStack = toStack(instances, this.config.dicomwebRoot, baseline.study_instance_uid, baseline.series_instance_uid);
    this.baseStack.forEach((slice) => wadors.metaDataManager.add(slice.imageId, slice.metadata as never));
    this.baseVp = this.engine.getViewport(BASE) as Types.IStackViewport;
    const tg = ToolGroupManager.createToolGroup(TOOLGROUP_BASE)!;
    tg.addTool(WindowLevelTool.toolName);
    tg.addTool(PanTool.toolName);
    tg.addTool(ZoomTool.toolName);
    tg.addTool(StackScrollTool.toolName);
    tg.addViewport(BASE, ENGINE);
    tg.setToolActive(WindowLevelTool.toolName, { bindings: [{ mouseButton: MouseBindings.Primary }] });
    tg.setToolActive(PanTool.toolName, { bindings: [{ mouseButton: MouseBindings.Auxiliary }] });
    tg.setToolActive(ZoomTool.toolName, { bindings: [{ mouseButton: MouseBindings.Secondary }] });
    tg.setToolActive(StackScrollTool.toolName, { bindings: [{ mouseButton: MouseBindings.Wheel }] });
    const index = this.linkedBaseIndex(this.vp.getCurrentImageIdIndex());
    await this.baseVp.setStack(
      this.baseStack.map((s) => s.imageId),
      index,
    );
    this.baseVp.setProperties({ voiRange: voiOf(this.voi) });
    this.baseVp.render();
    csTools.utilities.stackPrefetch.enable(this.baseVp.element);
    this.baseVp.element.addEventListener(Enums.Events.STACK_NEW_IMAGE, () => {
      if (this.linking || !this.baseVp) return;
      const to = linkedIndex(this.baseStack, this.baseVp.getCurrentImageIdIndex(), this.stack, this.range('baseline'), this.range('series'));
      this.linking = true;
      void this.vp.setImageIdIndex(to).finally(() => (this.linking = false));
    });
  }

  private range(which: 'series' | 'baseline'): LungRange | null {
    const found = this.data.case.protocol_details[which]?.lung_range;
    return found ? { apex: found.apex_z_mm, dome: found.dome_z_mm } : null;
  }

  private linkedBaseIndex(mainIndex: number): number {
    return linkedIndex(this.stack, mainIndex, this.baseStack, this.range('series'), this.range('baseline'));
  }

  // -------------------------------------------------------------------------------------------
  // Slices

  currentSlice(): StackSlice | undefined {
    return this.stack[this.vp.getCurrentImageIdIndex()];
  }

  async goTo(index: number): Promise<void> {
    const clamped = Math.max(0, Math.min(this.stack.length - 1, index));
    await this.vp.setImageIdIndex(clamped);
  }

  async goToProtocol(step: 1 | -1): Promise<void> {
    const current = this.vp.getCurrentImageIdIndex();
    const indices = this.protocol.map((sop) => this.bySop.get(sop)!).sort((a, b) => a - b);
    const target = step > 0 ? indices.find((i) => i > current) : [...indices].reverse().find((i) => i < current);
    if (target !== undefined) await this.goTo(target);
  }

  private onSliceChange(): void {
    const slice = this.currentSlice();
    if (!slice) return;
    this.clock.enterSlice(slice.sopInstanceUid);
    this.updateIndicator();
    const editable = this.editableByUser() && this.protocolSet.has(slice.sopInstanceUid);
    if (editable !== this.editable) {
      this.editable = editable;
      this.applyMode();
    }
    if (this.mode === 'brush' || this.mode === 'eraser') this.fillLabelmaps(slice);
    else this.rebuildAnnotations(slice);
    if (this.showModel) void this.drawModelOverlay(slice);
    if (this.baseVp && !this.linking) {
      this.linking = true;
      void this.baseVp.setImageIdIndex(this.linkedBaseIndex(this.vp.getCurrentImageIdIndex())).finally(() => (this.linking = false));
    }
    this.markCurrentProtocolSlice(slice.sopInstanceUid);
  }

  private markCurrentProtocolSlice(sop: string): void {
    const previous = this.ui.protocolList.querySelector('button.current');
    if (previous?.getAttribute('data-sop') === sop) return;
    previous?.classList.remove('current');
    this.ui.protocolList.querySelector(`button[data-sop="${CSS.escape(sop)}"]`)?.classList.add('current');
  }

  private updateIndicator(): void {
    const index = this.vp.getCurrentImageIdIndex();
    const slice = this.stack[index];
    if (!slice) return;
    const p = this.protocol.indexOf(slice.sopInstanceUid);
    const z = slice.grid.positionLps[2].toFixed(1);
    const protocolText = p >= 0 ? ` · protocol slice ${p + 1}/${this.protocol.length}` : ' · (not a protocol slice: view only)';
    this.ui.indicator.textContent = `Slice ${index + 1}/${this.stack.length} · z ${z} mm${protocolText}`;
    this.ui.indicator.dataset.index = String(index);
    this.ui.indicator.dataset.protocol = String(p);
  }

  // -------------------------------------------------------------------------------------------
  // Tools and modes

  setStructure(structure: Structure): void {
    this.structure = structure;
    this.applyMode();
  }

  setMode(mode: ToolMode): void {
    if (this.config.cpuRendering && (mode === 'brush' || mode === 'eraser')) {
      this.message('Brush and eraser need WebGL; this page renders on the CPU.');
      return;
    }
    const wasBrush = this.mode === 'brush' || this.mode === 'eraser';
    this.mode = mode;
    const isBrush = mode === 'brush' || mode === 'eraser';
    const slice = this.currentSlice();
    if (wasBrush && !isBrush) {
      this.commitBrush();
      this.clearLabelmaps();
      if (slice) this.rebuildAnnotations(slice);
    } else if (!wasBrush && isBrush && slice) {
      this.ensureLabelmaps();
      this.removeSliceAnnotations(slice);
      this.fillLabelmaps(slice);
    }
    this.applyMode();
  }

  private applyMode(): void {
    const tg = ToolGroupManager.getToolGroup(TOOLGROUP);
    if (!tg) return;
    const primary = tg.getActivePrimaryMouseButtonTool();
    if (primary) tg.setToolPassive(primary);
    for (const s of ['ild', 'lung'] as Structure[]) tg.setToolEnabled(FREEHAND[s]);
    tg.setToolDisabled('Paint');
    tg.setToolDisabled('Erase');
    const effective: ToolMode = this.editable ? this.mode : 'navigate';
    const bind = { bindings: [{ mouseButton: MouseBindings.Primary }] };
    if (effective === 'freehand') {
      tg.setToolActive(FREEHAND[this.structure], bind);
    } else if (effective === 'brush' || effective === 'eraser') {
      segmentation.activeSegmentation.setActiveSegmentation(MAIN, SEG_ID[this.structure]);
      tg.setToolActive(effective === 'brush' ? 'Paint' : 'Erase', bind);
    } else {
      tg.setToolActive(WindowLevelTool.toolName, bind);
    }
    if (effective !== 'brush' && effective !== 'eraser') tg.setToolPassive(WindowLevelTool.toolName);
    if (effective === 'navigate') tg.setToolActive(WindowLevelTool.toolName, bind);
    for (const [name, button] of this.ui.buttons) {
      const [kind, value] = name.split(':');
      if (kind === 'mode') {
        button.classList.toggle('active', value === this.mode);
        button.disabled =
          (!this.editableByUser() && value !== 'navigate') ||
          (!!this.config.cpuRendering && (value === 'brush' || value === 'eraser'));
      }
      if (kind === 'structure') button.classList.toggle('active', value === this.structure);
      if (kind === 'voi') button.classList.toggle('active', value === this.voi);
    }
    this.ui.root.dataset.mode = effective;
    this.ui.root.dataset.structure = this.structure;
    this.vp.render();
  }

  applyVoi(name: PresetName): void {
    this.voi = name;
    this.vp.setProperties({ voiRange: voiOf(name) });
    this.vp.render();
    if (this.baseVp) {
      this.baseVp.setProperties({ voiRange: voiOf(name) });
      this.baseVp.render();
    }
    for (const [key, button] of this.ui.buttons) if (key.startsWith('voi:')) button.classList.toggle('active', key === `voi:${name}`);
  }

  resetView(): void {
    this.vp.resetCamera();
    this.applyVoi(this.voi);
  }

  // -------------------------------------------------------------------------------------------
  // Annotations <-> rings (freehand mode)

  private sliceAnnotations(slice: StackSlice, toolName: string): AnyAnnotation[] {
    const all = (annotation.state.getAnnotations(toolName, this.vp.element) ?? []) as unknown as AnyAnnotation[];
    return all.filter((a) => a.metadata.referencedImageId === slice.imageId);
  }

  private removeSliceAnnotations(slice: StackSlice, tools: string[] = [FREEHAND.ild, FREEHAND.lung]): void {
    this.suppress++;
    try {
      for (const toolName of tools) {
        for (const a of this.sliceAnnotations(slice, toolName)) if (a.annotationUID) annotation.state.removeAnnotation(a.annotationUID);
      }
    } finally {
      this.suppress--;
    }
  }

  private addRingAnnotations(slice: StackSlice, toolName: string, rings: Ring[]): void {
    this.suppress++;
    try {
      for (const ring of rings) {
        if (ring.length < 3) continue;
        const created = PlanarFreehandROITool.createAnnotationForViewport(this.vp, {
          data: { contour: { polyline: ring.map((p) => [p[0], p[1], p[2]] as Types.Point3), closed: true } },
        }) as unknown as AnyAnnotation & { highlighted: boolean; metadata: { toolName: string } };
        created.metadata.toolName = toolName;
        created.metadata.referencedImageId = slice.imageId;
        created.highlighted = false;
        annotation.state.addAnnotation(created as never, this.vp.element);
      }
    } finally {
      this.suppress--;
    }
  }

  private rebuildAnnotations(slice: StackSlice): void {
    if (this.mode === 'brush' || this.mode === 'eraser') return;
    const sop = slice.sopInstanceUid;
    const hasRings = this.queue.rings({ structure: 'ild', sop }).length + this.queue.rings({ structure: 'lung', sop }).length > 0;
    if (!hasRings && !this.protocolSet.has(sop)) return; // nothing to show, nothing editable: keep scrolling cheap
    this.removeSliceAnnotations(slice);
    for (const s of ['ild', 'lung'] as Structure[]) {
      this.addRingAnnotations(slice, FREEHAND[s], this.queue.rings({ structure: s, sop: slice.sopInstanceUid }));
    }
    csTools.utilities.triggerAnnotationRenderForViewportIds([MAIN]);
  }

  private listenToAnnotations(): void {
    const { Events } = ToolEnums;
    const structureOf = (toolName: string): Structure | null =>
      toolName === FREEHAND.ild ? 'ild' : toolName === FREEHAND.lung ? 'lung' : null;
    const handle = (kind: 'completed' | 'modified' | 'removed') => (evt: Event) => {
      if (this.suppress > 0) return;
      const detail = (evt as CustomEvent<{ annotation: AnyAnnotation }>).detail;
      const structure = structureOf(detail.annotation.metadata.toolName);
      const slice = detail.annotation.metadata.referencedImageId
        ? this.byImageId.get(detail.annotation.metadata.referencedImageId)
        : undefined;
      if (!structure || !slice) return;
      if (!this.editableByUser() || !this.protocolSet.has(slice.sopInstanceUid)) {
        // Not a slice the reader may edit: put the saved state back.
        setTimeout(() => this.rebuildAnnotations(slice), 0);
        return;
      }
      if (kind === 'modified') {
        // Fired on every drag step: sync once the edit settles.
        if (this.modifyTimer) clearTimeout(this.modifyTimer);
        this.modifyTimer = setTimeout(() => this.syncFromAnnotations(slice, structure, null), 150);
        return;
      }
      this.syncFromAnnotations(slice, structure, kind === 'completed' ? detail.annotation : null);
    };
    eventTarget.addEventListener(Events.ANNOTATION_COMPLETED, handle('completed'));
    eventTarget.addEventListener(Events.ANNOTATION_MODIFIED, handle('modified'));
    eventTarget.addEventListener(Events.ANNOTATION_REMOVED, handle('removed'));
  }

  private syncFromAnnotations(slice: StackSlice, structure: Structure, added: AnyAnnotation | null): void {
    const key = { structure, sop: slice.sopInstanceUid };
    const polylines = this.sliceAnnotations(slice, FREEHAND[structure])
      .map((a) => (a.data.contour?.polyline ?? []).map((p) => [p[0], p[1], p[2]] as Vec3))
      .filter((ring) => ring.length >= 3);
    if (added) {
      // A new contour drawn over existing ones adds to the region (union), never cuts a hole.
      const newRing = (added.data.contour?.polyline ?? []).map((p) => [p[0], p[1], p[2]] as Vec3);
      const others = polylines.filter((r) => r.length !== newRing.length || r[0]?.[0] !== newRing[0]?.[0]);
      if (newRing.length >= 3 && ringsOverlap(slice.grid, others, [newRing])) {
        this.setRings(key, unionRings(slice.grid, others, [newRing]), true);
        return;
      }
    }
    this.setRings(key, polylines, false);
  }

  /** Every edit goes through here: undo history, then the save queue. */
  setRings(key: SlotKey, rings: Ring[], rebuild: boolean): void {
    const previous = this.queue.rings(key);
    if (JSON.stringify(previous) === JSON.stringify(rings)) {
      // Selecting or hovering a contour fires "modified" too: no new version for no change.
      if (rebuild) this.refreshSlice(key.sop);
      return;
    }
    this.undoStack.push({ key, rings: previous });
    if (this.undoStack.length > 200) this.undoStack.shift();
    this.redoStack = [];
    this.queue.change(key, rings);
    if (rebuild) this.refreshSlice(key.sop);
    this.renderProtocolList();
  }

  private refreshSlice(sop: string): void {
    const slice = this.currentSlice();
    if (!slice || slice.sopInstanceUid !== sop) return;
    if (this.mode === 'brush' || this.mode === 'eraser') this.fillLabelmaps(slice);
    else this.rebuildAnnotations(slice);
  }

  async undo(redo = false): Promise<void> {
    const from = redo ? this.redoStack : this.undoStack;
    const to = redo ? this.undoStack : this.redoStack;
    const entry = from.pop();
    if (!entry) return;
    to.push({ key: entry.key, rings: this.queue.rings(entry.key) });
    this.queue.change(entry.key, entry.rings);
    const index = this.bySop.get(entry.key.sop);
    if (index !== undefined && index !== this.vp.getCurrentImageIdIndex()) await this.goTo(index);
    this.refreshSlice(entry.key.sop);
    this.renderProtocolList();
  }

  deleteSelected(): void {
    const slice = this.currentSlice();
    if (!slice || !this.editable) return;
    const selected = annotation.selection.getAnnotationsSelected() ?? [];
    const mine = new Set(this.sliceAnnotations(slice, FREEHAND[this.structure]).map((a) => a.annotationUID));
    const targets = selected.filter((uid) => mine.has(uid));
    if (targets.length === 0) return;
    const remaining = this.sliceAnnotations(slice, FREEHAND[this.structure])
      .filter((a) => !targets.includes(a.annotationUID ?? ''))
      .map((a) => (a.data.contour?.polyline ?? []).map((p) => [p[0], p[1], p[2]] as Vec3));
    this.setRings({ structure: this.structure, sop: slice.sopInstanceUid }, remaining, true);
  }

  clearSlice(): void {
    const slice = this.currentSlice();
    if (!slice || !this.editable) return;
    this.setRings({ structure: this.structure, sop: slice.sopInstanceUid }, [], true);
  }

  // -------------------------------------------------------------------------------------------
  // Brush / eraser on labelmaps (one per structure, protocol slices only)

  private ensureLabelmaps(): void {
    if (this.labelmaps) return;
    const protocolImageIds = this.protocol.map((sop) => this.stack[this.bySop.get(sop)!]!.imageId);
    const maps = { ild: new Map<string, string>(), lung: new Map<string, string>() };
    for (const s of ['ild', 'lung'] as Structure[]) {
      const images = imageLoader.createAndCacheDerivedLabelmapImages(protocolImageIds);
      images.forEach((image, i) => maps[s].set(protocolImageIds[i]!, image.imageId));
      segmentation.addSegmentations([
        {
          segmentationId: SEG_ID[s],
          representation: { type: ToolEnums.SegmentationRepresentations.Labelmap, data: { imageIds: images.map((im) => im.imageId) } },
        },
      ]);
    }
    void segmentation.addLabelmapRepresentationToViewport(MAIN, [{ segmentationId: SEG_ID.ild }, { segmentationId: SEG_ID.lung }]);
    for (const s of ['ild', 'lung'] as Structure[]) {
      segmentation.config.color.setSegmentIndexColor(MAIN, SEG_ID[s], 1, [...COLORS[s], 150] as Types.Color);
      segmentation.segmentIndex.setActiveSegmentIndex(SEG_ID[s], 1);
    }
    this.labelmaps = maps;
    eventTarget.addEventListener(ToolEnums.Events.SEGMENTATION_DATA_MODIFIED, () => {
      if (this.suppress > 0 || !(this.mode === 'brush' || this.mode === 'eraser')) return;
      if (this.brushTimer) clearTimeout(this.brushTimer);
      this.brushTimer = setTimeout(() => this.commitBrush(), 250);
    });
  }

  private labelmapData(structure: Structure, slice: StackSlice): Types.PixelDataTypedArray | null {
    const id = this.labelmaps?.[structure].get(slice.imageId);
    const image = id ? cache.getImage(id) : undefined;
    return image?.voxelManager ? (image.voxelManager.getScalarData() as Types.PixelDataTypedArray) : null;
  }

  private fillLabelmaps(slice: StackSlice): void {
    if (!this.labelmaps) return;
    this.suppress++;
    try {
      for (const s of ['ild', 'lung'] as Structure[]) {
        const data = this.labelmapData(s, slice);
        if (!data) continue;
        data.set(rasterizeRings(slice.grid, this.queue.rings({ structure: s, sop: slice.sopInstanceUid })));
        this.filledLabelmaps.add(`${s}|${slice.imageId}`);
        segmentation.triggerSegmentationEvents.triggerSegmentationDataModified(SEG_ID[s]);
      }
    } finally {
      this.suppress--;
    }
  }

  private clearLabelmaps(): void {
    if (!this.labelmaps) return;
    this.suppress++;
    try {
      for (const entry of this.filledLabelmaps) {
        const [s, imageId] = entry.split(/\|(.*)/s) as [Structure, string];
        const slice = this.byImageId.get(imageId);
        const data = slice ? this.labelmapData(s, slice) : null;
        data?.fill(0);
      }
      this.filledLabelmaps.clear();
      for (const s of ['ild', 'lung'] as Structure[]) segmentation.triggerSegmentationEvents.triggerSegmentationDataModified(SEG_ID[s]);
    } finally {
      this.suppress--;
    }
  }

  /** Read the painted labelmap of the displayed slice back into rings. */
  private commitBrush(): void {
    if (this.brushTimer) {
      clearTimeout(this.brushTimer);
      this.brushTimer = null;
    }
    const slice = this.currentSlice();
    if (!slice || !this.labelmaps || !this.editable) return;
    for (const s of ['ild', 'lung'] as Structure[]) {
      const data = this.labelmapData(s, slice);
      if (!data) continue;
      const key = { structure: s, sop: slice.sopInstanceUid };
      const painted = Uint8Array.from(data as ArrayLike<number>, (v) => (v ? 1 : 0));
      const saved = rasterizeRings(slice.grid, this.queue.rings(key));
      let same = painted.length === saved.length;
      for (let i = 0; same && i < painted.length; i++) same = painted[i] === saved[i];
      if (!same) this.setRings(key, maskToRings(slice.grid, painted), false);
    }
  }

  adjustBrush(delta: number): void {
    const size = csTools.utilities.segmentation.getBrushSizeForToolGroup(TOOLGROUP) ?? 6;
    csTools.utilities.segmentation.setBrushSizeForToolGroup(TOOLGROUP, Math.max(1, Math.min(60, size + delta)));
  }

  // -------------------------------------------------------------------------------------------
  // Model overlay (only when the server allows it: after submission, if the study shows it)

  async toggleModel(): Promise<void> {
    this.showModel = !this.showModel;
    const slice = this.currentSlice();
    if (!slice) return;
    if (this.showModel) await this.drawModelOverlay(slice);
    else this.removeSliceAnnotations(slice, [MODEL_TOOL]);
    this.vp.render();
  }

  private async drawModelOverlay(slice: StackSlice): Promise<void> {
    this.removeSliceAnnotations(slice, [MODEL_TOOL]);
    try {
      const overlay = await this.api.modelOverlay(this.config.assignmentId, slice.sopInstanceUid, 'ild');
      const mask = await decodeMask(overlay.mask);
      if (this.currentSlice() !== slice || !this.showModel) return;
      this.addRingAnnotations(slice, MODEL_TOOL, maskToRings(slice.grid, mask, 0.5));
      csTools.utilities.triggerAnnotationRenderForViewportIds([MAIN]);
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) return;
      this.message(`Model overlay: ${(error as Error).message}`);
    }
  }

  // -------------------------------------------------------------------------------------------
  // Submission, assessment, timing

  async submit(): Promise<void> {
    if (!window.confirm('Submit this case? It will be locked.')) return;
    this.commitBrush();
    await this.queue.flush();
    if (this.queue.pending() > 0) {
      this.message('Some edits are not saved yet (offline or in conflict); submit again once they are.');
      return;
    }
    await this.sendTimes(); // before the lock: a submitted read takes no more time events
    try {
      this.data = await this.api.submit(this.config.assignmentId);
    } catch (error) {
      this.message((error as Error).message);
      return;
    }
    this.queue.setLocked();
    this.ui.root.dataset.submitted = 'true';
    this.message('Submitted. Opening your next case…');
    window.location.assign(this.config.nextUrl);
  }

  async assess(call: 'improved' | 'stable' | 'worse'): Promise<void> {
    try {
      await this.api.assess(this.config.assignmentId, call);
      this.data.assessment = call;
      for (const [key, button] of this.ui.buttons) if (key.startsWith('call:')) button.classList.toggle('active', key === `call:${call}`);
    } catch (error) {
      this.message((error as Error).message);
    }
  }

  private startTimingLoop(): void {
    document.addEventListener('visibilitychange', () => this.clock.setVisible(document.visibilityState === 'visible'));
    window.setInterval(() => void this.sendTimes(), 15000);
    window.addEventListener('pagehide', () => {
      this.commitBrush();
      void this.queue.flush();
      void this.sendTimes(true);
    });
  }

  private async sendTimes(keepalive = false): Promise<void> {
    if (!this.editableByUser()) return;
    const events = this.clock.drain();
    if (events.length === 0) return;
    try {
      await this.api.timing(this.config.assignmentId, events, keepalive);
    } catch {
      // Reading time is best effort; contours are what must never be lost.
    }
  }

  // -------------------------------------------------------------------------------------------
  // UI

  private buildUi(root: HTMLElement): void {
    root.classList.add('ild-app');
    root.replaceChildren();
    const bar = el('header', { class: 'ild-bar' });
    const title = el('strong', {}, `${this.data.case.label}${this.data.is_repeat ? ' (repeat read)' : ''}`);
    const study = el('span', { class: 'muted' }, this.data.study.name);
    const status = el('span', { class: 'ild-status' }, this.data.locked ? 'Submitted · read-only' : this.config.isReader ? 'Reading' : 'Review (read-only)');
    const save = el('span', { class: 'ild-save', 'data-state': 'saved' }, 'All changes saved');
    const worklist = el('a', { href: this.config.worklistUrl }, 'Worklist');
    bar.append(title, study, status, save, worklist);
    const buttons = new Map<string, HTMLButtonElement>();
    const tools = el('nav', { class: 'ild-tools' });
    const button = (key: string, label: string, title: string, onClick: () => void): HTMLButtonElement => {
      const b = el('button', { type: 'button', 'data-action': key, title }, label);
      b.addEventListener('click', () => {
        onClick();
        b.blur();
      });
      buttons.set(key, b);
      return b;
    };
    const group = (...items: HTMLElement[]): HTMLElement => {
      const g = el('span', { class: 'group' });
      g.append(...items);
      return g;
    };
    tools.append(
      group(
        button('mode:navigate', 'Window', 'Window/level with the left button (W)', () => this.setMode('navigate')),
        button('mode:freehand', 'Freehand', 'Draw a closed contour (F)', () => this.setMode('freehand')),
        button('mode:brush', 'Brush', 'Paint (B; +/- size)', () => this.setMode('brush')),
        button('mode:eraser', 'Eraser', 'Erase (E)', () => this.setMode('eraser')),
      ),
      group(
        button('structure:ild', 'ILD', 'Contour ILD (I)', () => this.setStructure('ild')),
        button('structure:lung', 'Lung', 'Contour the lung (L)', () => this.setStructure('lung')),
      ),
      group(
        button('undo', 'Undo', 'Undo (Ctrl+Z)', () => void this.undo()),
        button('redo', 'Redo', 'Redo (Ctrl+Shift+Z)', () => void this.undo(true)),
        button('delete', 'Delete', 'Delete the selected contour (Del)', () => this.deleteSelected()),
        button('clear', 'Clear slice', 'Remove the structure from this slice', () => this.clearSlice()),
      ),
      group(
        button('voi:lung', 'Lung W1500/L-600', 'Lung window (1)', () => this.applyVoi('lung')),
        button('voi:mediastinal', 'Mediastinal W350/L40', 'Mediastinal window (2)', () => this.applyVoi('mediastinal')),
        button('reset', 'Reset', 'Reset zoom and pan (R)', () => this.resetView()),
      ),
    );
    if (this.data.model_overlay_available) {
      tools.append(group(button('model', 'Model overlay', 'Show the model ILD contour (M)', () => void this.toggleModel())));
    }
    if (this.data.study.longitudinal) {
      tools.append(
        group(
          el('span', { class: 'muted' }, 'Follow-up vs baseline:'),
          button('call:improved', 'Improved', '', () => void this.assess('improved')),
          button('call:stable', 'Stable', '', () => void this.assess('stable')),
          button('call:worse', 'Worse', '', () => void this.assess('worse')),
        ),
      );
    }
    if (this.config.isReader && !this.data.locked) {
      tools.append(group(button('submit', 'Submit case', 'Submit and lock this read', () => void this.submit())));
    }
    const main = el('div', { class: 'ild-main' });
    const viewports = el('div', { class: 'ild-viewports' });
    let base: HTMLDivElement | null = null;
    if (this.data.case.baseline) {
      const wrap = el('div', { class: 'ild-vp-wrap' });
      wrap.append(el('div', { class: 'ild-vp-label' }, 'Baseline'));
      base = el('div', { class: 'ild-vp', id: 'viewport-baseline' });
      wrap.append(base);
      viewports.append(wrap);
    }
    const mainWrap = el('div', { class: 'ild-vp-wrap' });
    if (base) mainWrap.append(el('div', { class: 'ild-vp-label' }, 'Follow-up'));
    const mainEl = el('div', { class: 'ild-vp', id: 'viewport-main' });
    mainEl.addEventListener('contextmenu', (e) => e.preventDefault());
    mainWrap.append(mainEl);
    viewports.append(mainWrap);
    const side = el('aside', { class: 'ild-side' });
    side.append(el('h3', {}, 'Protocol slices'));
    const protocolList = el('ol', { class: 'ild-protocol' });
    side.append(protocolList);
    side.append(
      el(
        'p',
        { class: 'muted small' },
        'Wheel/↑↓ scroll · N/P next/previous protocol slice · 1/2 lung/mediastinal · W/F/B/E tools · I/L structure · Ctrl+Z undo · Del delete · R reset · right-drag zoom · middle-drag pan',
      ),
    );
    main.append(viewports, side);
    const footer = el('footer', { class: 'ild-footer' });
    const indicator = el('span', { class: 'ild-indicator', id: 'slice-indicator' });
    const message = el('span', { class: 'ild-message', role: 'status' });
    footer.append(indicator, message);
    const dialog = el('dialog', { class: 'ild-dialog', id: 'conflict-dialog' });
    root.append(bar, tools, main, footer, dialog);
    this.ui = { root, status, save, indicator, protocolList, buttons, dialog, main: mainEl, base, message };
  }

  private renderProtocolList(): void {
    if (!this.ui || this.protocol.length === 0) return;
    const current = this.currentSlice()?.sopInstanceUid;
    const items = this.protocol.map((sop, i) => {
      const li = el('li');
      const ild = this.queue.rings({ structure: 'ild', sop }).length > 0;
      const lung = this.queue.rings({ structure: 'lung', sop }).length > 0;
      const b = el('button', { type: 'button', 'data-sop': sop }, `${i + 1}${ild ? ' · ILD' : ''}${lung ? ' · lung' : ''}`);
      if (sop === current) b.classList.add('current');
      if (ild || lung) b.classList.add('done');
      b.addEventListener('click', () => void this.goTo(this.bySop.get(sop) ?? 0));
      li.append(b);
      return li;
    });
    this.ui.protocolList.replaceChildren(...items);
  }

  private showSaveStatus(status: SaveStatus, pending: number, message?: string): void {
    if (!this.ui) return;
    const text: Record<SaveStatus, string> = {
      saved: 'All changes saved',
      saving: `Saving… (${pending})`,
      offline: `Offline: ${pending} change(s) kept in this browser, retrying`,
      conflict: 'Conflict: choose a version',
      locked: 'Locked (submitted)',
      error: `Not saved: ${message ?? ''} (retrying)`,
    };
    this.ui.save.textContent = text[status];
    this.ui.save.dataset.state = status;
  }

  message(text: string): void {
    if (this.ui) this.ui.message.textContent = text;
  }

  private openConflict(key: SlotKey, mine: Ring[], latest: ContourData | null): void {
    const theirs = latest ? fromGeometry(latest.geometry) : [];
    const dialog = this.ui.dialog;
    dialog.replaceChildren();
    dialog.append(
      el('h3', {}, 'This slice was changed elsewhere'),
      el(
        'p',
        {},
        `Another tab or window saved version ${latest?.version ?? 0} of the ${key.structure.toUpperCase()} contour on this slice while you were editing.`,
      ),
    );
    const choose = (choice: 'mine' | 'theirs' | 'merged', label: string): HTMLButtonElement => {
      const b = el('button', { type: 'button', 'data-choice': choice }, label);
      b.addEventListener('click', () => {
        const index = this.bySop.get(key.sop);
        const slice = index !== undefined ? this.stack[index] : undefined;
        const rings = choice === 'mine' ? mine : choice === 'theirs' ? theirs : slice ? unionRings(slice.grid, mine, theirs) : mine;
        this.queue.resolveConflict(key, rings, choice);
        dialog.close();
        this.refreshSlice(key.sop);
        this.renderProtocolList();
      });
      return b;
    };
    const actions = el('p', { class: 'actions' });
    actions.append(choose('mine', 'Keep mine'), choose('theirs', 'Take theirs'), choose('merged', 'Merge both'));
    dialog.append(actions);
    if (!dialog.open) dialog.showModal();
  }

  private bindKeys(): void {
    window.addEventListener('keydown', (e) => {
      const target = e.target as HTMLElement | null;
      if (target && (target.tagName === 'INPUT' || target.tagName === 'TEXTAREA') || this.ui.dialog.open) return;
      const ctrl = e.ctrlKey || e.metaKey;
      const key = e.key;
      let handled = true;
      if (ctrl && (key === 'z' || key === 'Z')) void this.undo(e.shiftKey);
      else if (ctrl && key === 'y') void this.undo(true);
      else if (ctrl) handled = false;
      else if (key === 'ArrowDown' || key === 'PageDown') void this.goTo(this.vp.getCurrentImageIdIndex() + (key === 'PageDown' ? 10 : 1));
      else if (key === 'ArrowUp' || key === 'PageUp') void this.goTo(this.vp.getCurrentImageIdIndex() - (key === 'PageUp' ? 10 : 1));
      else if (key === 'Home') void this.goTo(0);
      else if (key === 'End') void this.goTo(this.stack.length - 1);
      else if (key === 'n' || key === ']') void this.goToProtocol(1);
      else if (key === 'p' || key === '[') void this.goToProtocol(-1);
      else if (key === '1') this.applyVoi('lung');
      else if (key === '2') this.applyVoi('mediastinal');
      else if (key === 'w') this.setMode('navigate');
      else if (key === 'f') this.setMode('freehand');
      else if (key === 'b') this.setMode('brush');
      else if (key === 'e') this.setMode('eraser');
      else if (key === 'i') this.setStructure('ild');
      else if (key === 'l') this.setStructure('lung');
      else if (key === 'r') this.resetView();
      else if (key === 'm' && this.data.model_overlay_available) void this.toggleModel();
      else if (key === '+' || key === '=') this.adjustBrush(1);
      else if (key === '-') this.adjustBrush(-1);
      else if (key === 'Delete' || key === 'Backspace') this.deleteSelected();
      else handled = false;
      if (handled) e.preventDefault();
    });
  }

  // -------------------------------------------------------------------------------------------
  // Measurement hooks (used by the browser test)

  /** Scroll through `count` slices from the top, each awaited until displayed; slices/s.
   * `loadMs` is the time spent waiting for images (decode, cache), `frameMs` waiting for frames. */
  async scrollBenchmark(
    count: number,
  ): Promise<{ slices: number; seconds: number; slicesPerSecond: number; loadMs: number; frameMs: number }> {
    const n = Math.min(count, this.stack.length);
    let loadMs = 0;
    let frameMs = 0;
    const t0 = performance.now();
    for (let i = 0; i < n; i++) {
      const a = performance.now();
      await this.vp.setImageIdIndex(i);
      const b = performance.now();
      await new Promise<void>((resolve) => requestAnimationFrame(() => resolve()));
      loadMs += b - a;
      frameMs += performance.now() - b;
    }
    const seconds = (performance.now() - t0) / 1000;
    return { slices: n, seconds, slicesPerSecond: n / seconds, loadMs, frameMs };
  }

  /** Frames per second of an idle page (the ceiling any scroll rate runs into). */
  async idleFrameRate(ms = 1000): Promise<number> {
    let frames = 0;
    const t0 = performance.now();
    while (performance.now() - t0 < ms) {
      await new Promise<void>((resolve) => requestAnimationFrame(() => resolve()));
      frames++;
    }
    return (frames * 1000) / (performance.now() - t0);
  }

  /** Contours of a structure displayed on the current slice (annotations or labelmap rings). */
  annotationCount(structure: Structure): number {
    const slice = this.currentSlice();
    return slice ? this.sliceAnnotations(slice, FREEHAND[structure]).length : 0;
  }

  cachedSlices(): number {
    return this.stack.filter((s) => cache.isLoaded(s.imageId)).length;
  }
}
