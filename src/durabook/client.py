"""``durabook.Client``: the Python API, the same verbs as the command line."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .engine import Engine, Progress, resolve_home
from .models import InstanceStatus, InstanceSummary, RunResult, Status
from .remote import RemoteEngine, open_engine

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
        env: dict[str, str] | None = None,
        scan_all: bool = False,
    ) -> RunResult:
        """Run a notebook as a new instance. ``env``: variables its kernel gets beyond
        the scrubbed allow-list; ``scan_all``: look at every variable after every cell."""
        with self.engine() as eng:
            return eng.run(
                notebook, parameters, id, output, progress=progress, env=env, scan_all=scan_all
            )

    def resume(
        self,
        id: str,
        *,
        notebook: str | os.PathLike[str] | None = None,
        progress: Progress | None = None,
        now: bool = False,
    ) -> RunResult:
        """Continue at the first uncommitted cell (of ``notebook`` when it was edited);
        ``now`` wakes a sleeping instance before its time."""
        with self.engine() as eng:
            return eng.resume(id, notebook, progress=progress, now=now)

    def status(self, id: str) -> InstanceStatus:
        with self.engine() as eng:
            return eng.status(id)

    def list(self, status: str | None = None, limit: int | None = None) -> list[InstanceSummary]:
        with self.engine() as eng:
            return eng.list(status, limit)

    # -- lifecycle -------------------------------------------------------------------
    def send_event(self, id: str, name: str, data: Any = None) -> InstanceStatus:
        """Send an event (``data``: anything JSON can hold). Without an engine running for
        this home, a waiting instance it wakes is resumed here, in the foreground."""
        import json

        text = None if data is None else json.dumps(data)
        with self.engine() as eng:
            if isinstance(eng, RemoteEngine):
                answer = eng.send_event(id, name, text)
                if answer["delivered"] and not answer["resumed_by_engine"]:
                    eng.resume(id)
            elif eng.send_event(id, name, text):
                eng.resume(id)
            return eng.status(id)

    def _lifecycle(self, op: str, id: str) -> InstanceStatus:
        with self.engine() as eng:
            if isinstance(eng, RemoteEngine):
                answer = eng.lifecycle(op, id)
                if (
                    op == "unpause"
                    and answer["status"] == "queued"
                    and not (answer["resumed_by_engine"])
                ):
                    eng.resume(id)
            elif getattr(eng, op)(id) == Status.QUEUED and op == "unpause":
                eng.resume(id)
            return eng.status(id)

    def pause(self, id: str) -> InstanceStatus:
        """A running instance stops after its current cell; a suspended one stays put."""
        return self._lifecycle("pause", id)

    def unpause(self, id: str) -> InstanceStatus:
        return self._lifecycle("unpause", id)

    def terminate(self, id: str) -> InstanceStatus:
        return self._lifecycle("terminate", id)

    def restart(self, id: str, from_cell: int | None = None) -> RunResult:
        """Drop the checkpoints of cells ``from_cell`` on (all by default) and run again."""
        with self.engine() as eng:
            eng.restart(id, from_cell)
            return eng.resume(id)
