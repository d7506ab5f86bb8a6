"""``durabook.Client``: the Python API, the same verbs as the command line."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .control import RemoteEngine, open_engine
from .engine import Engine, Progress, resolve_home
from .models import InstanceStatus, InstanceSummary, RunResult

__all__ = ["Client"]


class Client:
    """Runs and inspects instances of one home (``$DURABOOK_HOME`` or ``./.durabook``).

    Each call opens the home's store for its duration, or, when another process
    owns it (a ``durabook serve``, a running ``durabook run``), asks that process.
    """

    def __init__(self, home: str | os.PathLike[str] | None = None) -> None:
        self.home = resolve_home(home)

    @contextmanager
    def engine(self) -> Iterator[Engine | RemoteEngine]:
        with open_engine(self.home, serve=True) as eng:
            yield eng

    def run(
        self,
        notebook: str | os.PathLike[str],
        parameters: dict[str, Any] | None = None,
        *,
        id: str | None = None,
        output: str | os.PathLike[str] | None = None,
        progress: Progress | None = None,
    ) -> RunResult:
        with self.engine() as eng:
            return eng.run(notebook, parameters, id, output, progress=progress)

    def resume(
        self,
        id: str,
        *,
        notebook: str | os.PathLike[str] | None = None,
        progress: Progress | None = None,
    ) -> RunResult:
        with self.engine() as eng:
            return eng.resume(id, notebook, progress=progress)

    def status(self, id: str) -> InstanceStatus:
        with self.engine() as eng:
            return eng.status(id)

    def list(self, status: str | None = None, limit: int | None = None) -> list[InstanceSummary]:
        with self.engine() as eng:
            return eng.list(status, limit)
