/**
 * The Runs panel (left sidebar): instances with status, notebook, start, duration
 * and tenant; filters by status and notebook; polled while visible; actions
 * pause, unpause, terminate, restart and send event.
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import {
  ApiError,
  EngineInfo,
  InstanceSummary,
  LIVE,
  STATUSES,
  api,
  basename,
  duration,
  engineInfo,
  h
} from './api';
import { PolledPanel } from './polled';

const POLL_MS = 2000;

export interface IRunActions {
  openRun(id: string): void;
  openNotebook(id: string, notebook: string): void;
}

/** The note that says whether runs outlive JupyterLab, and the command that makes them. */
export function engineNote(info: EngineInfo | null): HTMLElement {
  if (!info) {
    return h('div', { class: 'jp-durabook-engine' }, 'Engine: connecting…');
  }
  if (info.mode === 'forwarding') {
    return h(
      'div',
      { class: 'jp-durabook-engine jp-durabook-engine-durable', 'data-mode': info.mode },
      `Engine: durabook serve (pid ${info.owner_pid ?? '?'}). Runs and schedules go on when JupyterLab closes.`
    );
  }
  if (info.mode === 'idle') {
    return h(
      'div',
      { class: 'jp-durabook-engine', 'data-mode': info.mode },
      'Engine: starts with the first durable run in this folder (home ',
      h('code', {}, info.home),
      ').'
    );
  }
  if (info.mode === 'hosted') {
    return h(
      'div',
      { class: 'jp-durabook-engine jp-durabook-engine-hosted', 'data-mode': info.mode },
      'Engine: inside JupyterLab. Runs and schedules stop when JupyterLab stops (they resume when it starts again). To keep them going, run in a terminal: ',
      h('code', {}, info.serve_command)
    );
  }
  return h(
    'div',
    { class: 'jp-durabook-engine jp-durabook-engine-down', 'data-mode': info.mode },
    `Engine: ${info.mode}${info.error ? ` (${info.error})` : ''}`
  );
}

export class RunsPanel extends PolledPanel {
  private status = '';
  private notebook = '';
  private rows = new Map<string, InstanceSummary>();
  private table: HTMLElement;
  private note: HTMLElement;
  private error: HTMLElement;
  info: EngineInfo | null = null;

  constructor(private actions: IRunActions) {
    super(POLL_MS);
    this.addClass('jp-durabook-runs');
    this.title.label = 'Runs';
    const statusSelect = h(
      'select',
      {
        class: 'jp-durabook-filter-status',
        title: 'Filter by status',
        onchange: (e: Event) => {
          this.status = (e.target as HTMLSelectElement).value;
          void this.refresh();
        }
      },
      h('option', { value: '' }, 'all statuses'),
      ...STATUSES.map(s => h('option', { value: s }, s))
    );
    const notebookInput = h('input', {
      class: 'jp-durabook-filter-notebook',
      placeholder: 'notebook contains…',
      title: 'Filter by notebook',
      oninput: (e: Event) => {
        this.notebook = (e.target as HTMLInputElement).value.trim();
        this.render();
      }
    });
    this.note = h('div', {});
    this.error = h('div', { class: 'jp-durabook-error' });
    this.table = h('div', { class: 'jp-durabook-table' });
    this.node.append(
      this.note,
      h(
        'div',
        { class: 'jp-durabook-filters' },
        statusSelect,
        notebookInput,
        h('button', { class: 'jp-mod-styled', title: 'Refresh', onclick: () => void this.refresh() }, '⟳')
      ),
      this.error,
      this.table
    );
  }

  async refresh(): Promise<void> {
    try {
      const info = await engineInfo();
      this.info = info;
      this.note.replaceChildren(engineNote(info));
      // idle: no home yet, and looking must not make one
      const page =
        info.mode === 'idle'
          ? { items: [] }
          : await api.list({ status: this.status || undefined, limit: 200 });
      this.rows = new Map(page.items.map(i => [i.id, i]));
      this.error.textContent = '';
    } catch (e) {
      this.error.textContent = e instanceof ApiError ? `${e.code}: ${e.message}` : String(e);
    }
    this.render();
  }

  private render(): void {
    const items = [...this.rows.values()].filter(
      i => !this.notebook || i.notebook.toLowerCase().includes(this.notebook.toLowerCase())
    );
    if (!items.length) {
      this.table.replaceChildren(
        h('div', { class: 'jp-durabook-empty' }, 'No runs yet. Open a notebook and press "Run durably".')
      );
      return;
    }
    this.table.replaceChildren(...items.map(i => this.row(i)));
  }

  private row(i: InstanceSummary): HTMLElement {
    const end = LIVE.includes(i.status) ? Date.now() : Date.parse(i.updated_at);
    const took = end - Date.parse(i.created_at);
    const act = this.action.bind(this);
    const actions: HTMLElement[] = [];
    if (['queued', 'running', 'sleeping', 'waiting'].includes(i.status)) {
      actions.push(act('pause', 'Pause (a running one after its current cell)', () => api.lifecycle(i.id, 'pause')));
    }
    if (i.status === 'paused') {
      actions.push(act('unpause', 'Back to where it was', () => api.lifecycle(i.id, 'unpause')));
    }
    if (!['completed', 'failed', 'terminated'].includes(i.status)) {
      actions.push(
        act('terminate', 'End it for good', async () => {
          const ok = await showDialog({
            title: 'Terminate this run?',
            body: `${i.id} ends for good; a running kernel is killed.`,
            buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Terminate' })]
          });
          if (ok.button.accept) {
            await api.lifecycle(i.id, 'terminate');
          }
        })
      );
    }
    if (i.status === 'completed' || i.status === 'failed') {
      actions.push(
        act('restart', 'Run again from the first cell', () => api.restart(i.id, 0))
      );
    }
    if (i.status === 'waiting' || i.status === 'sleeping') {
      actions.push(act('event', 'Send an event', () => sendEventDialog(i.id)));
    }
    if (i.status === 'failed') {
      actions.push(
        act('fix', 'Open the notebook with the failed cell marked, to edit it and resume', async () =>
          this.actions.openNotebook(i.id, i.notebook)
        )
      );
    }
    const meta = [shortWhen(i.created_at), duration(took), i.tenant ? `tenant ${i.tenant}` : '', i.id]
      .filter(Boolean)
      .join(' · ');
    return h(
      'div',
      {
        class: `jp-durabook-run jp-durabook-status-${i.status}`,
        'data-id': i.id,
        title: `${i.id}\n${i.notebook}${i.failed_cell !== null ? `\nfailed at cell ${i.failed_cell}` : ''}\nclick: open the run view`,
        onclick: () => this.actions.openRun(i.id)
      },
      h(
        'div',
        { class: 'jp-durabook-run-line' },
        h('span', { class: `jp-durabook-chip jp-durabook-chip-${i.status}` }, i.status),
        h('span', { class: 'jp-durabook-nb' }, basename(i.notebook)),
        i.schedule ? h('span', { class: 'jp-durabook-muted', title: 'fired by this schedule' }, `⏱ ${i.schedule}`) : null
      ),
      h('div', { class: 'jp-durabook-muted jp-durabook-run-meta' }, meta),
      actions.length ? h('div', { class: 'jp-durabook-actions' }, ...actions) : null
    );
  }
}

/** A time today as its time of day, else with its date. */
export function shortWhen(iso: string): string {
  const d = new Date(iso);
  if (isNaN(d.getTime())) {
    return iso;
  }
  const today = new Date().toDateString() === d.toDateString();
  return today ? d.toLocaleTimeString() : d.toLocaleString();
}

export async function sendEventDialog(id: string): Promise<void> {
  const name = h('input', { class: 'jp-durabook-event-name', placeholder: 'event name' }) as HTMLInputElement;
  const data = h('textarea', { class: 'jp-durabook-event-data', placeholder: 'data (JSON, optional)' }) as HTMLTextAreaElement;
  const body = new Widget({ node: h('div', { class: 'jp-durabook-form' }, h('label', {}, 'Event', name), h('label', {}, 'Data', data)) });
  const result = await showDialog({
    title: `Send an event to ${id}`,
    body,
    buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Send' })]
  });
  if (!result.button.accept || !name.value.trim()) {
    return;
  }
  let value: unknown = null;
  if (data.value.trim()) {
    try {
      value = JSON.parse(data.value);
    } catch {
      value = data.value;
    }
  }
  await api.sendEvent(id, name.value.trim(), value);
}
