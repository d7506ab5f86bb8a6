/**
 * The engine's HTTP API as JupyterLab's server serves it, under /durabook/api,
 * with Jupyter's own auth (ServerConnection adds the token and XSRF header).
 * The types mirror durabook.api.models and durabook.models.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

export type Status =
  | 'created'
  | 'queued'
  | 'running'
  | 'sleeping'
  | 'waiting'
  | 'paused'
  | 'completed'
  | 'failed'
  | 'terminated';

export const STATUSES: Status[] = [
  'queued',
  'running',
  'sleeping',
  'waiting',
  'paused',
  'completed',
  'failed',
  'terminated'
];

/** Settled: nothing more happens without someone acting (or a timer). */
export const LIVE: Status[] = ['created', 'queued', 'running'];

export interface ErrorInfo {
  ename: string;
  evalue: string;
  traceback: string[];
}

export interface InstanceSummary {
  id: string;
  status: Status;
  notebook: string;
  created_at: string;
  updated_at: string;
  failed_cell: number | null;
  priority: number;
  tenant: string | null;
  workflow: string | null;
  schedule: string | null;
}

export interface Attempt {
  attempt?: number;
  status?: string;
  duration_ms?: number | null;
  cpu_s?: number | null;
  peak_rss_bytes?: number | null;
  [key: string]: unknown;
}

export interface CellState {
  index: number;
  cell_id: string;
  status: 'pending' | 'running' | 'committed' | 'failed';
  attempts: number;
  started_at: string | null;
  duration_ms: number | null;
  name: string | null;
  error: ErrorInfo | null;
  history: Attempt[];
  cpu_s?: number | null;
  peak_rss_bytes?: number | null;
}

export interface InstanceStatus {
  id: string;
  status: Status;
  notebook: string;
  version: string;
  created_at: string;
  updated_at: string;
  failed_cell: number | null;
  error: ErrorInfo | null;
  parameters: Record<string, unknown>;
  output: string | null;
  wake_at: string | null;
  waiting_for: string | null;
  tenant: string | null;
  schedule: string | null;
  cells: CellState[];
}

export interface ScheduleInfo {
  name: string;
  notebook: string;
  cron: string;
  tz: string;
  parameters: Record<string, unknown>;
  overlap: string;
  catch_up: string;
  paused: boolean;
  next_fires: string[];
  last_fire?: string | null;
  tenant?: string | null;
}

export interface EngineInfo {
  mode: 'hosted' | 'forwarding' | 'idle' | 'starting' | 'unavailable';
  home: string;
  root_dir: string;
  error: string | null;
  durable: boolean;
  serve_command: string;
  owner_pid: number | null;
}

/** An error answer of the engine: its code and message. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string
  ) {
    super(message);
  }
}

const settings = (): ServerConnection.ISettings =>
  ServerConnection.makeSettings();

export function apiUrl(path: string): string {
  return URLExt.join(settings().baseUrl, 'durabook', 'api', path);
}

async function call<T>(url: string, init: RequestInit = {}): Promise<T> {
  const s = settings();
  let response: Response;
  try {
    // 'no-cache': no cache-busting query argument (the API refuses unknown ones);
    // its answers say Cache-Control: no-store anyway
    response = await ServerConnection.makeRequest(url, { cache: 'no-cache', ...init }, s);
  } catch (error) {
    throw new ApiError(0, 'network', String(error));
  }
  const text = await response.text();
  let data: any = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = { error: { code: 'internal', message: text.slice(0, 300) } };
  }
  if (!response.ok) {
    const err = (data && data.error) || {};
    throw new ApiError(
      response.status,
      err.code || String(response.status),
      err.message || data?.message || response.statusText
    );
  }
  return data as T;
}

export function get<T>(path: string, query: Record<string, any> = {}): Promise<T> {
  const q = Object.entries(query)
    .filter(([, v]) => v !== undefined && v !== null && v !== '')
    .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(String(v))}`)
    .join('&');
  return call<T>(apiUrl(path) + (q ? `?${q}` : ''));
}

export function post<T>(path: string, body?: unknown, method = 'POST'): Promise<T> {
  return call<T>(apiUrl(path), {
    method,
    body: body === undefined ? undefined : JSON.stringify(body),
    headers: { 'Content-Type': 'application/json' }
  });
}

let cachedInfo: { at: number; info: Promise<EngineInfo> } | null = null;

/** Who runs the engine; ``maxAgeMs`` > 0 may answer from a recent look. */
export function engineInfo(maxAgeMs = 0): Promise<EngineInfo> {
  const now = Date.now();
  if (!cachedInfo || now - cachedInfo.at > maxAgeMs) {
    const info = call<EngineInfo>(URLExt.join(settings().baseUrl, 'durabook', 'jupyter'));
    cachedInfo = { at: now, info };
    info.catch(() => (cachedInfo = null));
  }
  return cachedInfo.info;
}

/** Statuses after which nothing happens again (sleeping, waiting, paused may go on). */
export const FINAL: Status[] = ['completed', 'failed', 'terminated'];

export const api = {
  list: (query: { status?: string; notebook?: string; limit?: number; schedule?: string }) =>
    get<{ items: InstanceSummary[]; next_cursor: string | null }>('instances', query),
  status: (id: string) => get<InstanceStatus>(`instances/${encodeURIComponent(id)}`),
  create: (body: Record<string, unknown>) =>
    post<{ id: string; status: Status; created: boolean }>('instances', body),
  lifecycle: (id: string, op: 'pause' | 'unpause' | 'terminate' | 'cancel') =>
    post<{ id: string; status: Status }>(`instances/${encodeURIComponent(id)}/${op}`),
  restart: (id: string, fromCell?: number) =>
    post<{ id: string; status: Status }>(
      `instances/${encodeURIComponent(id)}/restart`,
      fromCell === undefined ? {} : { from_cell: fromCell }
    ),
  resume: (id: string, notebook?: string) =>
    post<{ id: string; status: Status }>(
      `instances/${encodeURIComponent(id)}/resume`,
      notebook ? { notebook } : {}
    ),
  sendEvent: (id: string, name: string, data: unknown) =>
    post<{ delivered: boolean; status: Status }>(
      `instances/${encodeURIComponent(id)}/events/${encodeURIComponent(name)}`,
      data
    ),
  schedules: () => get<ScheduleInfo[]>('schedules'),
  addSchedule: (spec: Record<string, unknown>) => post<ScheduleInfo>('schedules', spec),
  scheduleOp: (name: string, op: 'pause' | 'unpause') =>
    post<ScheduleInfo>(`schedules/${encodeURIComponent(name)}/${op}`),
  removeSchedule: (name: string) =>
    post<ScheduleInfo>(`schedules/${encodeURIComponent(name)}`, undefined, 'DELETE'),
  scheduleRuns: (name: string) =>
    get<{ items: InstanceSummary[] }>(`schedules/${encodeURIComponent(name)}/runs`, {
      limit: 20
    }),
  cron: (cron: string, tz: string) =>
    get<{ cron: string; tz: string; next_fires: string[] }>('cron', { cron, tz, count: 5 }),
  streamUrl: (id: string) => apiUrl(`instances/${encodeURIComponent(id)}/stream`)
};

/** The engine wants absolute paths; JupyterLab's are relative to the server root. */
export function absolutePath(root: string, path: string): string {
  if (path.startsWith('/')) {
    return path;
  }
  return root.replace(/\/+$/, '') + '/' + path;
}

/** A notebook path under the server root as JupyterLab names it, or null. */
export function relativePath(root: string, path: string): string | null {
  const base = root.replace(/\/+$/, '') + '/';
  return path.startsWith(base) ? path.slice(base.length) : null;
}

export function basename(path: string): string {
  return path.split('/').pop() || path;
}

export function duration(ms: number | null | undefined): string {
  if (ms === null || ms === undefined || !isFinite(ms)) {
    return '';
  }
  if (ms < 1000) {
    return `${Math.round(ms)} ms`;
  }
  const s = ms / 1000;
  if (s < 60) {
    return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  }
  const m = Math.floor(s / 60);
  if (m < 60) {
    return `${m} min ${Math.round(s % 60)} s`;
  }
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

export function bytes(n: number | null | undefined): string {
  if (!n) {
    return '';
  }
  const units = ['B', 'KB', 'MB', 'GB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export function when(iso: string | null | undefined): string {
  if (!iso) {
    return '';
  }
  const d = new Date(iso);
  return isNaN(d.getTime()) ? iso : d.toLocaleString();
}

/** A tiny element builder: h('div', {class: 'x'}, 'text', child). */
export function h(
  tag: string,
  attrs: Record<string, any> = {},
  ...children: (Node | string | null | undefined | false)[]
): HTMLElement {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) {
      continue;
    }
    if (k === 'class') {
      el.className = v;
    } else if (k.startsWith('on') && typeof v === 'function') {
      el.addEventListener(k.slice(2), v);
    } else if (k === 'dataset') {
      Object.assign(el.dataset, v);
    } else {
      el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  for (const c of children) {
    if (c === null || c === undefined || c === false) {
      continue;
    }
    el.append(typeof c === 'string' ? document.createTextNode(c) : c);
  }
  return el;
}
