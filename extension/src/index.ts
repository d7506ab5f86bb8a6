/**
 * durabook in JupyterLab: "Run durably" and "Schedule" on the notebook toolbar and
 * in the command palette, a sidebar with the Runs and Schedules views, a view per
 * run, and cell badges with visual resume in open notebooks.
 */
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import {
  ICommandPalette,
  MainAreaWidget,
  Notification,
  ToolbarButton,
  showErrorMessage
} from '@jupyterlab/apputils';
import { DocumentRegistry } from '@jupyterlab/docregistry';
import { INotebookModel, INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { LabIcon } from '@jupyterlab/ui-components';
import { DisposableDelegate, IDisposable } from '@lumino/disposable';
import { TabPanel } from '@lumino/widgets';

import { absolutePath, api, engineInfo, relativePath } from './api';
import { RunBadges } from './badges';
import { IParam, parseParameters, runDialog, scheduleDialog } from './forms';
import { IRunActions, RunsPanel } from './runs';
import { RunView } from './runview';
import { SchedulesPanel } from './schedules';

const ICON_SVG = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
<path class="jp-icon3" fill="#616161" d="M12 2a10 10 0 1 0 0 20 10 10 0 0 0 0-20zm0 2a8 8 0 0 1 7.75 6H13V4.07A8 8 0 0 1 12 4zm-1 .07V11h7.93A8 8 0 1 1 11 4.07z"/>
</svg>`;

const durabookIcon = new LabIcon({ name: 'durabook:icon', svgstr: ICON_SVG });

namespace CommandIDs {
  export const run = 'durabook:run';
  export const schedule = 'durabook:schedule';
  export const openRuns = 'durabook:open-runs';
  export const openRun = 'durabook:open-run';
  export const resume = 'durabook:resume';
}

function parametersOf(panel: NotebookPanel): IParam[] {
  const cells = panel.content.model?.cells;
  if (!cells) {
    return [];
  }
  for (let i = 0; i < cells.length; i++) {
    const cell = cells.get(i);
    const tags = (cell.getMetadata('tags') as string[] | undefined) ?? [];
    if (cell.type === 'code' && tags.includes('parameters')) {
      return parseParameters(cell.sharedModel.getSource());
    }
  }
  return [];
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'durabook:plugin',
  description: 'Durable notebooks: run, watch, schedule and resume from an edited cell',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [ICommandPalette, ILayoutRestorer],
  activate: (
    app: JupyterFrontEnd,
    tracker: INotebookTracker,
    palette: ICommandPalette | null,
    restorer: ILayoutRestorer | null
  ) => {
    const badges = new Map<NotebookPanel, RunBadges>();
    let root: string | null = null;
    const serverRoot = async (): Promise<string> => {
      if (root === null) {
        root = (await engineInfo()).root_dir;
      }
      return root;
    };
    // the engine takes absolute paths; a context path may carry a drive ("RTC:...")
    const absoluteOf = (panel: NotebookPanel) => async () =>
      absolutePath(await serverRoot(), app.serviceManager.contents.localPath(panel.context.path));

    const views = new Map<string, MainAreaWidget<RunView>>();
    const actions: IRunActions = {
      openRun: (id: string) => void app.commands.execute(CommandIDs.openRun, { id }),
      openNotebook: async (id: string, notebook: string) => {
        const rel = relativePath(await serverRoot(), notebook);
        if (rel === null) {
          void showErrorMessage(
            'durabook',
            `${notebook} is outside the folder JupyterLab serves (${root}): open it from a JupyterLab started above it.`
          );
          return;
        }
        const panel = (await app.commands.execute('docmanager:open', { path: rel })) as NotebookPanel;
        await panel.context.ready;
        badges.get(panel)?.pin(id);
      }
    };

    const runs = new RunsPanel(actions);
    const current = (): NotebookPanel | null => {
      const panel = tracker.currentWidget;
      if (!panel) {
        void showErrorMessage('durabook', 'Open a notebook first.');
      }
      return panel;
    };

    /** The engine reads the file: what the user sees must be on disk first. */
    const saved = async (panel: NotebookPanel) => {
      await panel.context.ready;
      if (panel.context.model.dirty) {
        await panel.context.save();
      }
    };

    const runDurably = async (panel: NotebookPanel) => {
      await saved(panel);
      const req = await runDialog(panel.context.path, parametersOf(panel));
      if (!req) {
        return;
      }
      const ref = await api.create({
        notebook: await absoluteOf(panel)(),
        parameters: req.parameters,
        ...(req.tenant ? { tenant: req.tenant } : {})
      });
      badges.get(panel)?.follow(ref.id);
      Notification.success(`Durable run ${ref.id} ${ref.status}`, {
        autoClose: 4000,
        actions: [{ label: 'Open', callback: () => actions.openRun(ref.id) }]
      });
      void runs.refresh();
    };

    const schedule = async (panel: NotebookPanel) => {
      await saved(panel);
      const spec = await scheduleDialog(panel.context.path, parametersOf(panel));
      if (!spec) {
        return;
      }
      const info = await api.addSchedule({ ...spec, notebook: await absoluteOf(panel)() });
      Notification.success(`Scheduled ${info.name}: next ${info.next_fires[0] ?? '—'}`, { autoClose: 5000 });
    };

    const guarded = (what: string, fn: () => Promise<void>) => async () => {
      try {
        await fn();
      } catch (e) {
        void showErrorMessage(`durabook: ${what} failed`, String((e as Error).message ?? e));
      }
    };

    /** ``fn`` on the notebook in front, its errors shown. */
    const withCurrent = (what: string, fn: (panel: NotebookPanel) => Promise<unknown>) =>
      guarded(what, async () => {
        const panel = current();
        if (panel) {
          await fn(panel);
        }
      });

    app.commands.addCommand(CommandIDs.run, {
      label: 'Run durably',
      caption: 'Run this notebook as a durable workflow (each cell a checkpointed step)',
      icon: durabookIcon,
      execute: withCurrent('run', runDurably)
    });
    app.commands.addCommand(CommandIDs.schedule, {
      label: 'Schedule notebook…',
      caption: 'Run this notebook on a cron schedule',
      execute: withCurrent('schedule', schedule)
    });
    app.commands.addCommand(CommandIDs.resume, {
      label: 'Resume durable run from the failed cell',
      execute: withCurrent('resume', async panel => badges.get(panel)?.resume())
    });
    app.commands.addCommand(CommandIDs.openRuns, {
      label: 'Show durable runs',
      execute: () => app.shell.activateById(sidebar.id)
    });
    app.commands.addCommand(CommandIDs.openRun, {
      label: 'Open durable run',
      execute: args => {
        const id = String(args.id ?? '');
        if (!id) {
          return;
        }
        let view = views.get(id);
        if (!view || view.isDisposed) {
          view = new MainAreaWidget({ content: new RunView(id, actions) });
          view.id = `durabook-run-view-${id.replace(/[^\w-]/g, '_')}`;
          view.title.label = `Run ${id}`;
          view.title.icon = durabookIcon;
          view.title.closable = true;
          views.set(id, view);
          app.shell.add(view, 'main');
        }
        app.shell.activateById(view.id);
      }
    });
    if (palette) {
      for (const command of [CommandIDs.run, CommandIDs.schedule, CommandIDs.openRuns, CommandIDs.resume]) {
        palette.addItem({ command, category: 'Durable notebooks' });
      }
    }

    const schedules = new SchedulesPanel(actions, withCurrent('schedule', schedule));
    const sidebar = new TabPanel();
    sidebar.id = 'durabook-sidebar';
    sidebar.addClass('jp-durabook-sidebar');
    sidebar.title.icon = durabookIcon;
    sidebar.title.caption = 'Durable runs and schedules';
    sidebar.addWidget(runs);
    sidebar.addWidget(schedules);
    app.shell.add(sidebar, 'left', { rank: 600 });
    restorer?.add(sidebar, 'durabook-sidebar');

    class Buttons implements DocumentRegistry.IWidgetExtension<NotebookPanel, INotebookModel> {
      createNew(panel: NotebookPanel): IDisposable {
        const run = new ToolbarButton({
          className: 'jp-durabook-run-button',
          icon: durabookIcon,
          label: 'Run durably',
          tooltip: 'Run this notebook durably: each cell a checkpointed step',
          onClick: guarded('run', () => runDurably(panel))
        });
        const sched = new ToolbarButton({
          className: 'jp-durabook-schedule-button',
          label: 'Schedule',
          tooltip: 'Run this notebook on a cron schedule',
          onClick: guarded('schedule', () => schedule(panel))
        });
        panel.toolbar.insertAfter('cellType', 'durabook-run', run);
        panel.toolbar.insertAfter('durabook-run', 'durabook-schedule', sched);
        return new DisposableDelegate(() => {
          run.dispose();
          sched.dispose();
        });
      }
    }
    app.docRegistry.addWidgetExtension('Notebook', new Buttons());

    tracker.widgetAdded.connect((_, panel) => {
      badges.set(panel, new RunBadges(panel, absoluteOf(panel), actions.openRun));
      panel.disposed.connect(() => badges.delete(panel));
    });
  }
};

export default plugin;
