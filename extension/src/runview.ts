/**
 * A run's view: a cell-by-cell timeline (status, attempts, duration, CPU and memory
 * where recorded), the outputs of cells as they finish (server-sent events), the
 * error of a failed cell, and the output notebook.
 */
import { showErrorMessage } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import {
  CellState,
  FINAL,
  InstanceStatus,
  LIVE,
  api,
  apiUrl,
  basename,
  bytes,
  duration,
  h,
  when
} from './api';
import { IRunActions, sendEventDialog } from './runs';

const POLL_MS = 1000; // while queued or running
const SLOW_POLL_MS = 5000; // sleeping, waiting, paused: it may wake or be woken
const LIVE_CHARS = 20000; // of a cell's output kept for the live view
// eslint-disable-next-line no-control-regex
const ANSI = /\x1b\[[0-9;]*[A-Za-z]/g;

export function plain(text: string): string {
  return text.replace(ANSI, '');
}

/** Text of one nbformat output, for the live view. */
function outputText(o: any): string {
  if (o.output_type === 'stream') {
    return Array.isArray(o.text) ? o.text.join('') : String(o.text ?? '');
  }
  if (o.output_type === 'error') {
    return plain((o.traceback || []).join('\n')) || `${o.ename}: ${o.evalue}`;
  }
  const data = o.data || {};
  const text = data['text/plain'];
  if (text !== undefined) {
    return Array.isArray(text) ? text.join('') : String(text);
  }
  const kinds = Object.keys(data);
  return kinds.length ? `[${kinds.join(', ')}]` : '';
}

function usage(c: CellState): { cpu?: number; rss?: number } {
  const last = c.history?.length ? c.history[c.history.length - 1] : undefined;
  const cpu = c.cpu_s ?? last?.cpu_s;
  const rss = c.peak_rss_bytes ?? last?.peak_rss_bytes;
  return { cpu: typeof cpu === 'number' ? cpu : undefined, rss: typeof rss === 'number' ? rss : undefined };
}

export class RunView extends Widget {
  private timer = 0;
  private pollMs = 0;
  private source: EventSource | null = null;
  private state: InstanceStatus | null = null;
  private live = new Map<number, string>();
  private lastLive = -1;
  private liveNode: HTMLElement | null = null;
  private body: HTMLElement;

  constructor(
    readonly instanceId: string,
    private actions: IRunActions
  ) {
    super();
    this.id = `durabook-run-${instanceId.replace(/[^\w-]/g, '_')}`;
    this.addClass('jp-durabook-runview');
    this.title.label = `Run ${instanceId}`;
    this.title.closable = true;
    this.body = h('div', {}, 'Loading…');
    this.node.append(this.body);
  }

  protected onAfterAttach(): void {
    void this.refresh();
  }

  protected onAfterShow(): void {
    void this.refresh();
  }

  /** Hidden views hold no connection (a browser allows a handful per server). */
  protected onBeforeHide(): void {
    this.stop();
  }

  protected onBeforeDetach(): void {
    this.stop();
  }

  private stop(): void {
    window.clearInterval(this.timer);
    this.timer = 0;
    this.pollMs = 0;
    this.source?.close();
    this.source = null;
  }

  /** Poll as often as the state can change; follow the stream while it runs. */
  private schedule(): void {
    const status = this.state?.status;
    const ms = !status || !this.isVisible || FINAL.includes(status) ? 0 : LIVE.includes(status) ? POLL_MS : SLOW_POLL_MS;
    if (ms !== this.pollMs) {
      window.clearInterval(this.timer);
      this.timer = ms ? window.setInterval(() => void this.refresh(), ms) : 0;
      this.pollMs = ms;
    }
    if (status && LIVE.includes(status) && this.isVisible && !this.source) {
      this.follow();
    }
  }

  /** Outputs of each cell as it finishes, from the run's event stream. */
  private follow(): void {
    this.source?.close();
    const source = new EventSource(api.streamUrl(this.instanceId), { withCredentials: true });
    source.addEventListener('output', (e: MessageEvent) => {
      try {
        const ev = JSON.parse(e.data);
        const index = typeof ev.index === 'number' ? ev.index : -1;
        const text = (this.live.get(index) ?? '') + outputText(ev.output || {});
        this.live.set(index, text.slice(-LIVE_CHARS));
        this.lastLive = index;
        this.renderLive();
      } catch {
        // a malformed event: the timeline still polls
      }
    });
    source.addEventListener('executed', (e: MessageEvent) => {
      try {
        const ev = JSON.parse(e.data);
        this.live.set(ev.index, (ev.outputs || []).map(outputText).join('').slice(-LIVE_CHARS));
        this.lastLive = ev.index;
        void this.refresh();
      } catch {
        // a malformed event: the timeline still polls
      }
    });
    for (const kind of ['status', 'committed', 'start']) {
      source.addEventListener(kind, () => void this.refresh());
    }
    const done = () => {
      source.close();
      if (this.source === source) {
        this.source = null; // a run that goes on again (woken, unpaused) is followed anew
      }
    };
    source.addEventListener('end', () => {
      done();
      void this.refresh();
    });
    source.onerror = done; // polling goes on
    this.source = source;
  }

  async refresh(): Promise<void> {
    try {
      this.state = await api.status(this.instanceId);
    } catch (e) {
      this.body.replaceChildren(h('div', { class: 'jp-durabook-error' }, String((e as Error).message ?? e)));
      return;
    }
    this.schedule();
    this.render();
  }

  private render(): void {
    const s = this.state!;
    const done = s.cells.filter(c => c.status === 'committed').length;
    const running = s.cells.find(c => c.status === 'running');
    const failed = s.cells.find(c => c.status === 'failed');
    const header = h(
      'div',
      { class: 'jp-durabook-runhead' },
      h('span', { class: `jp-durabook-chip jp-durabook-chip-${s.status}`, 'data-status': s.status }, s.status),
      h('b', {}, ` ${basename(s.notebook)} `),
      h('span', { class: 'jp-durabook-muted' }, `${s.id} · started ${when(s.created_at)} · ${done}/${s.cells.length} cells committed`),
      s.waiting_for ? h('div', {}, `waiting for event “${s.waiting_for}”${s.wake_at ? ` (times out ${when(s.wake_at)})` : ''}`) : null,
      s.status === 'sleeping' && s.wake_at ? h('div', {}, `sleeping until ${when(s.wake_at)}`) : null,
      Object.keys(s.parameters || {}).length
        ? h('div', { class: 'jp-durabook-muted' }, `parameters: ${JSON.stringify(s.parameters)}`)
        : null
    );
    const bar = h(
      'div',
      { class: 'jp-durabook-progress', title: `${done} of ${s.cells.length} cells` },
      h('div', {
        class: `jp-durabook-progress-fill jp-durabook-chip-${s.status}`,
        style: `width:${s.cells.length ? (100 * done) / s.cells.length : 0}%`
      })
    );
    const buttons = h('div', { class: 'jp-durabook-buttons' });
    if (s.status === 'failed') {
      buttons.append(
        h(
          'button',
          {
            class: 'jp-mod-styled jp-mod-accept jp-durabook-open-failed',
            onclick: () => this.actions.openNotebook(s.id, s.notebook)
          },
          'Open notebook at the failed cell'
        )
      );
    }
    if (s.status === 'waiting' || s.status === 'sleeping') {
      buttons.append(
        h(
          'button',
          {
            class: 'jp-mod-styled',
            onclick: () =>
              sendEventDialog(s.id)
                .catch(e => showErrorMessage('durabook', String(e)))
                .then(() => this.refresh())
          },
          'Send event'
        )
      );
    }
    buttons.append(
      h(
        'a',
        {
          class: 'jp-durabook-output-link',
          href: apiUrl(`instances/${encodeURIComponent(s.id)}/notebook`),
          download: `${s.id}.ipynb`,
          target: '_blank'
        },
        'Output notebook (.ipynb)'
      )
    );
    // CPU and memory where the engine recorded them (metered kernels)
    const metered = s.cells.some(c => usage(c).cpu !== undefined || usage(c).rss !== undefined);
    const heads = ['#', 'step', 'status', 'attempts', 'started', 'duration', ...(metered ? ['CPU', 'memory'] : [])];
    const table = h(
      'table',
      { class: 'jp-durabook-timeline' },
      h('thead', {}, h('tr', {}, ...heads.map(t => h('th', {}, t)))),
      h('tbody', {}, ...s.cells.map(c => this.cellRow(c, running, metered)))
    );
    const parts: (HTMLElement | null)[] = [header, bar, buttons, table];
    if (failed?.error || s.error) {
      const err = failed?.error ?? s.error!;
      parts.push(
        h('h4', {}, `Error in cell ${failed?.index ?? s.failed_cell ?? '?'}`),
        h('pre', { class: 'jp-durabook-traceback' }, plain((err.traceback || []).join('\n')) || `${err.ename}: ${err.evalue}`)
      );
    }
    this.liveNode = h('div', { class: 'jp-durabook-live-section' });
    parts.push(this.liveNode);
    this.body.replaceChildren(...parts.filter((p): p is HTMLElement => p !== null));
    this.renderLive();
  }

  /** The output of the cell running now (as it comes), else of the last one that ran. */
  private renderLive(): void {
    if (!this.liveNode || this.lastLive < 0 || !this.live.has(this.lastLive)) {
      return;
    }
    const running = this.state?.cells.find(c => c.status === 'running');
    const label =
      running && running.index === this.lastLive
        ? `Output of cell ${this.lastLive} (running)`
        : `Output of cell ${this.lastLive}`;
    this.liveNode.replaceChildren(
      h('h4', {}, label),
      h('pre', { class: 'jp-durabook-live', 'data-index': String(this.lastLive) }, this.live.get(this.lastLive) || '(no output)')
    );
  }

  private cellRow(c: CellState, running: CellState | undefined, metered: boolean): HTMLElement {
    const { cpu, rss } = usage(c);
    return h(
      'tr',
      { class: `jp-durabook-cell jp-durabook-cell-${c.status}`, 'data-index': String(c.index) },
      h('td', {}, String(c.index)),
      h('td', {}, c.name ?? c.cell_id.slice(0, 24)),
      h('td', {}, h('span', { class: `jp-durabook-chip jp-durabook-cell-chip-${c.status}` }, c === running ? 'running…' : c.status)),
      h('td', {}, c.attempts ? String(c.attempts) : ''),
      h('td', {}, when(c.started_at)),
      h('td', {}, duration(c.duration_ms)),
      metered ? h('td', {}, cpu !== undefined ? `${cpu.toFixed(2)} s` : '') : null,
      metered ? h('td', {}, bytes(rss ?? null)) : null
    );
  }

  dispose(): void {
    this.stop();
    super.dispose();
  }
}
