"""``papermill in.ipynb out.ipynb --engine durabook``: papermill runs, durably.

papermill injects the parameters and keeps its own bookkeeping
(``NotebookExecutionManager``: cell metadata, progress, autosave); this engine
executes the cells as a durabook instance of ``$DURABOOK_HOME``, so a failed
papermill run can be continued with ``durabook resume ID`` (the id is in the
output notebook's ``metadata.durabook.instance_id`` and in papermill's log).
Errors surface exactly as with papermill's default engine: error outputs in
the failed cell, then papermill raises ``PapermillExecutionError``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from papermill.engines import Engine as PapermillEngine
from papermill.engines import NBClientEngine

from .progress import CellEvent, Progress

__all__ = ["DurabookEngine"]

log = logging.getLogger("papermill")


class _ManagerProgress(Progress):
    """Feeds each finished cell to papermill's execution manager, in order."""

    def __init__(self, nb_man: Any) -> None:
        self.nb_man = nb_man
        self.next_cell = 0
        self.stopped = False

    def executed(self, result: CellEvent) -> None:
        import nbformat

        nb = self.nb_man.nb
        index = result.index
        for i in range(self.next_cell, index):  # markdown and committed cells before it
            if nb.cells[i].cell_type != "code":
                self.nb_man.cell_start(nb.cells[i], i)
                self.nb_man.cell_complete(nb.cells[i], i)
        cell = nb.cells[index]
        self.nb_man.cell_start(cell, index)
        cell.outputs = [nbformat.from_dict(o) for o in result.outputs]
        cell.execution_count = result.execution_count
        timed_out = (result.error or {}).get("ename") == "CellTimeoutError"
        if timed_out:
            self.stopped = True  # papermill lets nbclient's timeout error escape instead
        elif not result.ok or result.status == "exit":
            # as nbclient: sys.exit() is an exception of the cell; papermill itself
            # decides that exit status 0 does not fail the run
            self.nb_man.cell_exception(cell, cell_index=index)
            self.stopped = True
        self.nb_man.cell_complete(cell, cell_index=index)
        self.next_cell = index + 1

    def finish(self) -> None:
        """Cells after the last code cell (markdown) are visited too, unless a cell stopped."""
        if self.stopped:
            return
        nb = self.nb_man.nb
        for i in range(self.next_cell, len(nb.cells)):
            self.nb_man.cell_start(nb.cells[i], i)
            self.nb_man.cell_complete(nb.cells[i], i)


class DurabookEngine(PapermillEngine):
    @classmethod
    def execute_managed_notebook(
        cls,
        nb_man: Any,
        kernel_name: str,
        execution_timeout: float | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run as a durabook instance; ``execution_timeout`` is per cell, as with nbclient.

        The kernel is always durabook's (this interpreter with the extension loaded):
        ``kernel_name`` only chooses between Python (durable) and other languages.
        """
        nb = nb_man.nb
        language = (
            nb.metadata.get("kernelspec", {}).get("language")
            or nb.metadata.get("language_info", {}).get("name")
            or "python"
        )
        if language != "python":
            log.warning(
                "durabook checkpoints Python kernels only; running %s with nbclient", language
            )
            return NBClientEngine.execute_managed_notebook(
                nb_man, kernel_name, execution_timeout=execution_timeout, **kwargs
            )
        source = kwargs.get("input_path")
        from .api.models import CreateRequest
        from .remote import open_engine

        req = CreateRequest(
            notebook_json=nb,
            source_path=str(source) if source else None,
            cwd=os.getcwd(),
            cell_timeout=execution_timeout,
        )
        progress = _ManagerProgress(nb_man)
        # the home's engine: a `durabook serve` runs it (its limits hold), else this process
        with open_engine(serve=True) as svc:

            def created(iid: str) -> None:
                log.info("durabook instance %s (resume with `durabook resume %s`)", iid, iid)
                nb.metadata["durabook"] = {"instance_id": iid}

            res = svc.run(req, progress, created)
        progress.finish()
        if res.error is not None and res.error.ename == "CellTimeoutError":
            from nbclient.exceptions import CellTimeoutError

            assert res.failed_cell is not None and execution_timeout is not None
            raise CellTimeoutError.error_from_timeout_and_cell(
                "Cell execution timed out", int(execution_timeout), nb.cells[res.failed_cell]
            )
        return nb
