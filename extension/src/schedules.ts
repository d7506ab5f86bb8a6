/**
 * The Schedules view: schedules with their next fire times; add, pause, unpause,
 * remove; the runs each one fired.
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';

import { ScheduleInfo, api, basename, engineInfo, h, when } from './api';
import { describeCron, inZone } from './forms';
import { PolledPanel } from './polled';
import { IRunActions } from './runs';

const POLL_MS = 5000;

export class SchedulesPanel extends PolledPanel {
  private list: HTMLElement;
  private error: HTMLElement;
  private open = new Set<string>();

  constructor(
    private actions: IRunActions,
    private addSchedule: () => Promise<void>
  ) {
    super(POLL_MS);
    this.addClass('jp-durabook-schedules');
    this.title.label = 'Schedules';
    this.error = h('div', { class: 'jp-durabook-error' });
    this.list = h('div', {});
    this.node.append(
      h(
        'div',
        { class: 'jp-durabook-filters' },
        h(
          'button',
          {
            class: 'jp-mod-styled jp-mod-accept jp-durabook-add-schedule',
            title: 'Schedule the open notebook',
            onclick: () => this.addSchedule().then(() => this.refresh())
          },
          'Schedule notebook…'
        ),
        h('button', { class: 'jp-mod-styled', title: 'Refresh', onclick: () => void this.refresh() }, '⟳')
      ),
      this.error,
      this.list
    );
  }

  async refresh(): Promise<void> {
    let items: ScheduleInfo[];
    try {
      const idle = (await engineInfo(5000)).mode === 'idle'; // no home yet: none to list
      items = idle ? [] : await api.schedules();
      this.error.textContent = '';
    } catch (e) {
      this.error.textContent = String((e as Error).message ?? e);
      return;
    }
    if (!items.length) {
      this.list.replaceChildren(h('div', { class: 'jp-durabook-empty' }, 'No schedules. Open a notebook and press "Schedule".'));
      return;
    }
    const cards = await Promise.all(items.map(s => this.card(s)));
    this.list.replaceChildren(...cards);
  }

  private async card(s: ScheduleInfo): Promise<HTMLElement> {
    const op = (label: string, fn: () => Promise<unknown>) => this.action(label, label, fn);
    const runs = h('div', { class: 'jp-durabook-schedule-runs' });
    if (this.open.has(s.name)) {
      try {
        const page = await api.scheduleRuns(s.name);
        runs.append(
          page.items.length
            ? h(
                'ul',
                {},
                ...page.items.map(r =>
                  h(
                    'li',
                    { class: 'jp-durabook-link', 'data-id': r.id, onclick: () => this.actions.openRun(r.id) },
                    h('span', { class: `jp-durabook-chip jp-durabook-chip-${r.status}` }, r.status),
                    ` ${r.id} · ${when(r.created_at)}`
                  )
                )
              )
            : h('div', { class: 'jp-durabook-muted' }, 'no runs yet')
        );
      } catch (e) {
        runs.append(h('div', { class: 'jp-durabook-error' }, String((e as Error).message ?? e)));
      }
    }
    return h(
      'div',
      { class: `jp-durabook-schedule${s.paused ? ' jp-durabook-paused' : ''}`, 'data-name': s.name },
      h('div', {}, h('b', {}, s.name), s.paused ? h('span', { class: 'jp-durabook-chip jp-durabook-chip-paused' }, 'paused') : null),
      h('div', { class: 'jp-durabook-muted' }, `${basename(s.notebook)} · ${s.cron} (${s.tz}) · ${describeCron(s.cron)}`),
      h(
        'div',
        { class: 'jp-durabook-next' },
        s.paused ? 'paused: no fires' : `next (${s.tz}): ${s.next_fires.map(f => inZone(f, s.tz)).join(', ') || '—'}`
      ),
      h(
        'div',
        { class: 'jp-durabook-actions' },
        s.paused ? op('unpause', () => api.scheduleOp(s.name, 'unpause')) : op('pause', () => api.scheduleOp(s.name, 'pause')),
        op('remove', async () => {
          const ok = await showDialog({
            title: `Remove the schedule ${s.name}?`,
            body: 'It fires no more; the runs it made are kept.',
            buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Remove' })]
          });
          if (ok.button.accept) {
            await api.removeSchedule(s.name);
          }
        }),
        op(this.open.has(s.name) ? 'hide runs' : 'runs', async () => {
          if (!this.open.delete(s.name)) {
            this.open.add(s.name);
          }
        })
      ),
      runs
    );
  }
}
