/**
 * A sidebar panel that refreshes itself on a timer while it is shown (and never
 * while hidden: a closed sidebar asks the server nothing).
 */
import { showErrorMessage } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import { h } from './api';

export abstract class PolledPanel extends Widget {
  private timer = 0;

  constructor(private readonly pollMs: number) {
    super();
  }

  abstract refresh(): Promise<void>;

  protected onAfterShow(): void {
    this.startPolling();
  }

  protected onBeforeHide(): void {
    this.stopPolling();
  }

  protected onAfterAttach(): void {
    if (this.isVisible) {
      this.startPolling();
    }
  }

  protected onBeforeDetach(): void {
    this.stopPolling();
  }

  dispose(): void {
    this.stopPolling();
    super.dispose();
  }

  /** A button doing ``fn`` (its error shown), then refreshing the panel. */
  protected action(label: string, title: string, fn: () => Promise<unknown>): HTMLElement {
    return h(
      'button',
      {
        class: 'jp-durabook-action',
        'data-action': label,
        title,
        onclick: async (e: Event) => {
          e.stopPropagation(); // not a click on the row under it
          try {
            await fn();
          } catch (err) {
            void showErrorMessage(`durabook: ${label} failed`, String((err as Error).message ?? err));
          }
          void this.refresh();
        }
      },
      label
    );
  }

  private startPolling(): void {
    this.stopPolling();
    void this.refresh();
    this.timer = window.setInterval(() => void this.refresh(), this.pollMs);
  }

  private stopPolling(): void {
    window.clearInterval(this.timer);
    this.timer = 0;
  }
}
