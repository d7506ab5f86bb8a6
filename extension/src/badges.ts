/**
 * Cell badges and visual resume. While a notebook that has a durable run is open,
 * each code cell shows its state in that run (committed, running, failed, pending)
 * and its duration. The failed cell is marked, with "Resume from this cell": the
 * notebook is saved, and the run continues with the edited cell, the state of the
 * cells before it restored (the engine resumes at the first cell whose source
 * changed, and never runs a committed cell again).
 */
import { showErrorMessage } from '@jupyterlab/apputils';
import { NotebookPanel } from '@jupyterlab/notebook';
import { Widget } from '@lumino/widgets';

import { CellState, InstanceStatus, LIVE, api, duration, engineInfo, h } from './api';

const POLL_MS = 1500;

export class RunBadges {
  /** The run shown: pinned when the notebook was opened from a run, else the latest. */
  instanceId: string | null = null;
  private pinned = false;
  private timer = 0;
  private state: InstanceStatus | null = null;
  private bar: HTMLElement;
  private busy = false;

  constructor(
    private panel: NotebookPanel,
    private absolute: () => Promise<string>,
    private openRun: (id: string) => void
  ) {
    this.bar = h('div', { class: 'jp-durabook-runbar' });
    this.bar.style.display = 'none';
    panel.toolbar.addItem('durabook-status', new Widget({ node: this.bar }));
    this.timer = window.setInterval(() => void this.refresh(), POLL_MS);
    panel.disposed.connect(() => this.dispose());
    panel.content.model?.cells.changed.connect(() => this.apply());
    void this.refresh();
  }

  /** Show this run (a notebook opened from the Runs panel or a run view). */
  pin(id: string): void {
    this.instanceId = id;
    this.pinned = true;
    void engineInfo() // an engine may have started since the last look
      .then(() => this.refresh())
      .then(() => this.revealFailed());
  }

  /** Follow the newest run of this notebook (after "Run durably"). */
  follow(id: string): void {
    this.instanceId = id;
    void engineInfo().then(() => this.refresh());
  }

  dispose(): void {
    window.clearInterval(this.timer);
    this.bar.remove();
    this.clear();
  }

  async refresh(): Promise<void> {
    if (this.busy || this.panel.isDisposed || !this.panel.isVisible) {
      return;
    }
    this.busy = true;
    try {
      const info = await engineInfo(10_000);
      if (info.mode !== 'hosted' && info.mode !== 'forwarding') {
        this.state = null; // no engine (yet): no runs to show, and no home made for them
        this.instanceId = this.pinned ? this.instanceId : null;
      } else {
        if (!this.pinned) {
          const page = await api.list({ notebook: await this.absolute(), limit: 1 });
          this.instanceId = page.items[0]?.id ?? null;
        }
        this.state = this.instanceId ? await api.status(this.instanceId) : null;
      }
    } catch {
      this.state = null; // no engine, or no run: no badges
    } finally {
      this.busy = false;
    }
    this.apply();
  }

  private clear(): void {
    for (const cell of this.panel.content.widgets) {
      cell.node.querySelector('.jp-durabook-badge')?.remove();
      cell.removeClass('jp-durabook-failed-cell');
    }
  }

  private apply(): void {
    const s = this.state;
    this.clear();
    if (!s) {
      this.bar.style.display = 'none';
      return;
    }
    this.renderBar(s);
    const byId = new Map(s.cells.map(c => [c.cell_id, c]));
    const widgets = this.panel.content.widgets;
    // cells match by id (nbformat 4.5); a notebook without ids matches by position
    const ids = new Set(widgets.map(w => w.model.id));
    const matchById = s.cells.some(c => ids.has(c.cell_id));
    widgets.forEach((cell, i) => {
      if (cell.model.type !== 'code') {
        return;
      }
      const state = matchById ? byId.get(cell.model.id) : s.cells.find(c => c.index === i);
      if (!state) {
        return;
      }
      const badge = this.badge(s, state);
      cell.node.append(badge);
      if (state.status === 'failed') {
        cell.addClass('jp-durabook-failed-cell');
      }
    });
  }

  private renderBar(s: InstanceStatus): void {
    this.bar.style.display = '';
    const done = s.cells.filter(c => c.status === 'committed').length;
    this.bar.replaceChildren(
      h(
        'span',
        {
          class: `jp-durabook-chip jp-durabook-chip-${s.status} jp-durabook-link`,
          'data-status': s.status,
          onclick: () => this.openRun(s.id)
        },
        `${s.status} ${done}/${s.cells.length}`
      )
    );
    this.bar.title =
      s.status === 'failed'
        ? `Durable run ${s.id} failed: fix the marked cell, then press "Resume from this cell" (click: the run view)`
        : `Durable run ${s.id}: ${done} of ${s.cells.length} cells committed (click: the run view)`;
  }

  private badge(s: InstanceStatus, c: CellState): HTMLElement {
    const status = LIVE.includes(s.status) || c.status !== 'running' ? c.status : 'pending';
    const text = `${status}${c.duration_ms !== null ? ` · ${duration(c.duration_ms)}` : ''}${c.attempts > 1 ? ` · ${c.attempts} attempts` : ''}`;
    const badge = h(
      'div',
      {
        class: `jp-durabook-badge jp-durabook-badge-${status}`,
        'data-status': status,
        title: c.error ? `${c.error.ename}: ${c.error.evalue}` : `cell ${c.index}: ${status}`
      },
      text
    );
    if (status === 'failed' && s.status === 'failed') {
      badge.append(
        h(
          'button',
          {
            class: 'jp-mod-styled jp-mod-accept jp-durabook-resume',
            title: 'Save the notebook and resume the run from this cell (the cells before it are not run again)',
            onclick: () => void this.resume()
          },
          'Resume from this cell'
        )
      );
    }
    return badge;
  }

  private revealFailed(): void {
    const i = this.panel.content.widgets.findIndex(w => w.hasClass('jp-durabook-failed-cell'));
    if (i >= 0) {
      this.panel.content.activeCellIndex = i;
      void this.panel.content.scrollToItem(i);
    }
  }

  async resume(): Promise<void> {
    const id = this.instanceId;
    if (!id) {
      return;
    }
    try {
      await this.panel.context.save();
      await api.resume(id, await this.absolute());
      this.pinned = true;
      this.instanceId = id;
      await this.refresh();
    } catch (e) {
      void showErrorMessage('durabook: resume failed', String((e as Error).message ?? e));
    }
  }
}
