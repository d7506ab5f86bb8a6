/**
 * The forms: "Run durably" (parameters typed from the notebook's parameters cell)
 * and "Schedule" (cron, time zone, a readable description and the next fire times,
 * computed by the engine under the scheduler's own DST rules).
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';
import cronstrue from 'cronstrue';

import { api, h, when } from './api';

export type ParamKind = 'int' | 'float' | 'bool' | 'str' | 'json';

export interface IParam {
  name: string;
  kind: ParamKind;
  value: unknown;
  comment: string;
}

/** Parameters declared in a papermill-style "parameters" cell: `name = literal  # comment`. */
export function parseParameters(source: string): IParam[] {
  const params: IParam[] = [];
  for (const raw of source.split('\n')) {
    const m = raw.match(/^([A-Za-z_]\w*)\s*(?::\s*[\w\[\], .|]+)?\s*=\s*(.+?)\s*(?:#\s*(.*))?$/);
    if (!m) {
      continue;
    }
    const [, name, literal, comment = ''] = m;
    params.push({ name, ...typed(literal), comment });
  }
  return params;
}

function typed(literal: string): { kind: ParamKind; value: unknown } {
  if (/^[-+]?\d+$/.test(literal)) {
    return { kind: 'int', value: parseInt(literal, 10) };
  }
  if (/^[-+]?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?$/.test(literal)) {
    return { kind: 'float', value: parseFloat(literal) };
  }
  if (literal === 'True' || literal === 'False') {
    return { kind: 'bool', value: literal === 'True' };
  }
  const str = literal.match(/^(['"])(.*)\1$/);
  if (str) {
    return { kind: 'str', value: str[2].replace(/\\(['"\\])/g, '$1') };
  }
  if (literal === 'None') {
    return { kind: 'json', value: null };
  }
  const json = literal.replace(/\bTrue\b/g, 'true').replace(/\bFalse\b/g, 'false').replace(/\bNone\b/g, 'null').replace(/'/g, '"');
  try {
    return { kind: 'json', value: JSON.parse(json) };
  } catch {
    return { kind: 'str', value: literal };
  }
}

class ParamsForm extends Widget {
  private inputs = new Map<string, { p: IParam; el: HTMLInputElement }>();

  constructor(params: IParam[], extra: HTMLElement[] = []) {
    super({ node: h('div', { class: 'jp-durabook-form jp-durabook-params' }) });
    if (!params.length) {
      this.node.append(h('p', { class: 'jp-durabook-muted' }, 'This notebook has no parameters cell (a cell tagged "parameters"): it runs as it is.'));
    }
    for (const p of params) {
      const el = h('input', {
        name: p.name,
        'data-kind': p.kind,
        type: p.kind === 'bool' ? 'checkbox' : p.kind === 'int' || p.kind === 'float' ? 'number' : 'text',
        step: p.kind === 'float' ? 'any' : p.kind === 'int' ? '1' : undefined
      }) as HTMLInputElement;
      if (p.kind === 'bool') {
        el.checked = Boolean(p.value);
      } else {
        el.value = p.kind === 'json' ? JSON.stringify(p.value) : String(p.value);
      }
      this.inputs.set(p.name, { p, el });
      this.node.append(
        h('label', { title: p.comment }, h('span', {}, `${p.name} (${p.kind})`), el, p.comment ? h('small', {}, p.comment) : null)
      );
    }
    this.node.append(...extra);
  }

  /** The parameters that differ from the notebook's own, typed; throws on a bad value. */
  getValue(): Record<string, unknown> {
    const out: Record<string, unknown> = {};
    for (const [name, { p, el }] of this.inputs) {
      let v: unknown;
      if (p.kind === 'bool') {
        v = el.checked;
      } else if (p.kind === 'int') {
        v = parseInt(el.value, 10);
        if (!Number.isInteger(v)) {
          throw new Error(`${name} must be a whole number`);
        }
      } else if (p.kind === 'float') {
        v = parseFloat(el.value);
        if (!isFinite(v as number)) {
          throw new Error(`${name} must be a number`);
        }
      } else if (p.kind === 'json') {
        try {
          v = JSON.parse(el.value);
        } catch {
          throw new Error(`${name} must be JSON (a list, a dict, null…)`);
        }
      } else {
        v = el.value;
      }
      if (JSON.stringify(v) !== JSON.stringify(p.value)) {
        out[name] = v;
      }
    }
    return out;
  }
}

export interface IRunRequest {
  parameters: Record<string, unknown>;
  tenant?: string;
}

export async function runDialog(notebook: string, params: IParam[]): Promise<IRunRequest | null> {
  const tenant = h('input', { name: 'tenant', placeholder: 'optional' }) as HTMLInputElement;
  const form = new ParamsForm(params, [h('label', {}, h('span', {}, 'tenant'), tenant)]);
  const result = await showDialog({
    title: `Run ${notebook} durably`,
    body: form,
    buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Run durably' })]
  });
  if (!result.button.accept) {
    return null;
  }
  // read before the dialog's widgets go; a bad value throws with its message
  return { parameters: form.getValue(), tenant: tenant.value.trim() || undefined };
}

/** An instant as wall-clock time in ``tz`` (the browser's own zone if it knows no such zone). */
export function inZone(iso: string, tz: string): string {
  try {
    return new Date(iso).toLocaleString(undefined, { timeZone: tz, dateStyle: 'medium', timeStyle: 'short' });
  } catch {
    return when(iso);
  }
}

export function describeCron(cron: string): string {
  try {
    return cronstrue.toString(cron, { use24HourTimeFormat: true, verbose: false });
  } catch (e) {
    return `not a cron expression: ${e}`;
  }
}

export interface IScheduleSpec {
  name: string;
  cron: string;
  tz: string;
  parameters: Record<string, unknown>;
  overlap: string;
}

class ScheduleForm extends Widget {
  name: HTMLInputElement;
  cron: HTMLInputElement;
  tz: HTMLInputElement;
  overlap: HTMLSelectElement;
  params: ParamsForm;
  private preview: HTMLElement;
  private seq = 0;

  constructor(defaultName: string, params: IParam[]) {
    super({ node: h('div', { class: 'jp-durabook-form jp-durabook-schedule-form' }) });
    const zone = Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC';
    this.name = h('input', { name: 'name', value: defaultName }) as HTMLInputElement;
    this.cron = h('input', { name: 'cron', value: '0 6 * * *', oninput: () => this.refreshPreview() }) as HTMLInputElement;
    this.tz = h('input', { name: 'tz', value: zone, oninput: () => this.refreshPreview() }) as HTMLInputElement;
    this.overlap = h(
      'select',
      { name: 'overlap' },
      h('option', { value: 'skip' }, 'skip a fire while the last run is unfinished'),
      h('option', { value: 'queue' }, 'queue it'),
      h('option', { value: 'allow' }, 'run them side by side')
    ) as HTMLSelectElement;
    this.preview = h('div', { class: 'jp-durabook-cron-preview' });
    this.params = new ParamsForm(params);
    this.node.append(
      h('label', {}, h('span', {}, 'name'), this.name),
      h('label', {}, h('span', {}, 'cron'), this.cron),
      h('label', {}, h('span', {}, 'time zone'), this.tz),
      this.preview,
      h('label', {}, h('span', {}, 'overlap'), this.overlap),
      h('h4', {}, 'Parameters'),
      this.params.node
    );
    this.refreshPreview();
  }

  private refreshPreview(): void {
    const seq = ++this.seq;
    const cron = this.cron.value.trim();
    const tz = this.tz.value.trim() || 'UTC';
    this.preview.replaceChildren(h('div', { class: 'jp-durabook-cron-text' }, describeCron(cron)));
    window.setTimeout(async () => {
      if (seq !== this.seq) {
        return;
      }
      try {
        const p = await api.cron(cron, tz);
        if (seq === this.seq) {
          this.preview.append(
            h('div', { class: 'jp-durabook-muted' }, `next fires (${tz}):`),
            h('ul', { class: 'jp-durabook-next-fires' }, ...p.next_fires.map(f => h('li', {}, inZone(f, tz))))
          );
        }
      } catch (e) {
        if (seq === this.seq) {
          this.preview.append(h('div', { class: 'jp-durabook-error' }, String((e as Error).message ?? e)));
        }
      }
    }, 250);
  }

  getValue(): IScheduleSpec {
    return {
      name: this.name.value.trim(),
      cron: this.cron.value.trim(),
      tz: this.tz.value.trim() || 'UTC',
      parameters: this.params.getValue(),
      overlap: this.overlap.value
    };
  }
}

export async function scheduleDialog(notebook: string, params: IParam[]): Promise<IScheduleSpec | null> {
  const base = notebook.split('/').pop()!.replace(/\.ipynb$/, '').replace(/[^A-Za-z0-9_-]+/g, '-').slice(0, 40) || 'schedule';
  const form = new ScheduleForm(base, params);
  const result = await showDialog({
    title: `Schedule ${notebook}`,
    body: form,
    buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Schedule' })]
  });
  if (!result.button.accept) {
    return null;
  }
  return form.getValue();
}
