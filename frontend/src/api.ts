/** Typed client for /api/v1/reading/ (session auth, CSRF header on writes). */

import type { Geometry } from './geometry';

export type Structure = 'ild' | 'lung';

export interface SeriesRef {
  study_instance_uid: string;
  series_instance_uid: string;
  frame_of_reference_uid: string;
  protocol_sop_instance_uids: string[];
}

export interface LungRangeDetails {
  apex_z_mm: number;
  dome_z_mm: number;
}

export interface AssignmentData {
  id: string;
  study: {
    id: string;
    name: string;
    protocol: 'equally_spaced' | 'all_slices';
    protocol_slice_count: number;
    longitudinal: boolean;
    allow_model_overlay_after_submit: boolean;
  };
  order: number;
  is_repeat: boolean;
  status: 'assigned' | 'in_progress' | 'submitted';
  locked: boolean;
  case: {
    id: string;
    label: string;
    protocol_status: 'pending' | 'ready' | 'failed';
    protocol_error: string;
    series: SeriesRef;
    baseline: SeriesRef | null;
    protocol_details: {
      series?: { lung_range?: LungRangeDetails };
      baseline?: { lung_range?: LungRangeDetails };
    };
  };
  assessment: 'improved' | 'stable' | 'worse' | null;
  model_overlay_available: boolean;
}

export interface ContourData {
  id: string;
  structure: Structure;
  referenced_sop_instance_uid: string;
  frame_of_reference_uid: string;
  version: number;
  geometry: Geometry;
  pixel_count: number;
  area_mm2: number;
  author: string | null;
  created: string;
  client_edit_id: string | null;
}

export interface SaveRequest {
  structure: Structure;
  referenced_sop_instance_uid: string;
  base_version: number;
  geometry: Geometry;
  client_edit_id: string;
}

export interface MaskData {
  rows: number;
  columns: number;
  encoding: string;
  data: string;
}

export interface TimingEvent {
  kind: 'slice' | 'case';
  sop_instance_uid?: string;
  started_at: string;
  duration_ms: number;
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly body: Record<string, unknown>,
  ) {
    super(typeof body.detail === 'string' ? body.detail : `HTTP ${status}`);
  }
}

export class ConflictError extends ApiError {
  get latest(): ContourData | null {
    return (this.body.latest as ContourData | null) ?? null;
  }
}

/** Network failure (offline, server down): the request may be retried. */
export class NetworkError extends Error {}

export type Fetch = (input: string, init?: RequestInit) => Promise<Response>;

export class ReadingApi {
  constructor(
    private readonly root: string,
    private readonly csrfToken: string,
    private readonly fetcher: Fetch = (input, init) => fetch(input, init),
  ) {}

  private async request<T>(method: string, path: string, body?: unknown, keepalive = false): Promise<T> {
    const headers: Record<string, string> = { Accept: 'application/json' };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    if (method !== 'GET') headers['X-CSRFToken'] = this.csrfToken;
    let response: Response;
    try {
      response = await this.fetcher(this.root + path, {
        method,
        headers,
        credentials: 'same-origin',
        body: body === undefined ? undefined : JSON.stringify(body),
        keepalive,
      });
    } catch (error) {
      throw new NetworkError(String(error));
    }
    const text = await response.text();
    let data: Record<string, unknown> = {};
    if (text) {
      try {
        data = JSON.parse(text) as Record<string, unknown>;
      } catch {
        data = { detail: text.slice(0, 200) };
      }
    }
    if (response.status === 409) throw new ConflictError(409, data);
    if (response.status >= 500) throw new NetworkError(`HTTP ${response.status}`);
    if (!response.ok) throw new ApiError(response.status, data);
    return data as T;
  }

  assignment(id: string): Promise<AssignmentData> {
    return this.request('GET', `assignments/${id}/`);
  }

  async contours(assignmentId: string): Promise<ContourData[]> {
    const body = await this.request<{ results: ContourData[] }>('GET', `assignments/${assignmentId}/contours/`);
    return body.results;
  }

  saveContour(assignmentId: string, payload: SaveRequest): Promise<ContourData> {
    return this.request('POST', `assignments/${assignmentId}/contours/`, payload);
  }

  submit(assignmentId: string): Promise<AssignmentData> {
    return this.request('POST', `assignments/${assignmentId}/submit/`, {});
  }

  assess(assignmentId: string, call: 'improved' | 'stable' | 'worse'): Promise<{ call: string }> {
    return this.request('POST', `assignments/${assignmentId}/assessment/`, { call });
  }

  timing(assignmentId: string, events: TimingEvent[], keepalive = false): Promise<{ recorded: number }> {
    return this.request('POST', `assignments/${assignmentId}/timing/`, { events }, keepalive);
  }

  modelOverlay(assignmentId: string, sop: string, structure: Structure): Promise<{ mask: MaskData }> {
    const query = `?sop=${encodeURIComponent(sop)}&structure=${structure}`;
    return this.request('GET', `assignments/${assignmentId}/model-overlay/${query}`);
  }
}
