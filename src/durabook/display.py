"""What the command line shows: a progress bar, run results, an instance's status."""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .progress import Progress

if TYPE_CHECKING:
    from .models import InstanceStatus, RunResult

__all__ = ["BarProgress", "print_result", "print_status", "stdout_to_devnull"]


class BarProgress(Progress):
    """A tqdm bar on stderr that advances when a cell's checkpoint is committed."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None

    def start(self, instance_id: str, total: int, done: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        self.bar = tqdm(
            total=total,
            initial=done,
            desc=instance_id,
            unit="cell",
            file=sys.stderr,
            leave=False,
            dynamic_ncols=True,
        )

    def committed(self, index: int) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def print_result(res: RunResult, as_json: bool, id_printed: bool) -> None:
    if as_json:
        print(
            json.dumps(
                {
                    "id": res.id,
                    "status": res.status.value,
                    "failed_cell": res.failed_cell,
                    "output": res.output,
                }
            )
        )
        return
    if not id_printed:
        print(res.id, flush=True)
    msg = f"{res.id}: {res.status.value}"
    if res.failed_cell is not None:
        msg += f" at cell {res.failed_cell}"
    if res.error is not None:
        msg += f": {res.error.ename}: {res.error.evalue}"
    if res.output:
        msg += f"\n  output: {res.output}"
    print(msg, file=sys.stderr)


def _when(dt: datetime) -> str:
    return f"{dt:%Y-%m-%d %H:%M:%S} UTC"


def print_status(st: InstanceStatus) -> None:
    from .models import CellStatus, Status

    print(f"{st.id}  {st.status.value}  {st.notebook}")
    print(
        f"  version {st.version}  created {st.created_at:%Y-%m-%d %H:%M:%S}  "
        f"updated {st.updated_at:%Y-%m-%d %H:%M:%S}"
    )
    if st.status == Status.SLEEPING and st.wake_at is not None:
        print(f"  sleeping until {_when(st.wake_at)}")
    elif st.status == Status.WAITING and st.waiting_for is not None:
        timeout = f", times out at {_when(st.wake_at)}" if st.wake_at is not None else ""
        print(f"  waiting for the event {st.waiting_for!r}{timeout}")
    if st.error is not None:
        print(f"  failed at cell {st.failed_cell}: {st.error.ename}: {st.error.evalue}")
    for c in st.cells:
        dur = f"{c.duration_ms:9.1f} ms" if c.duration_ms is not None else " " * 12
        cost = ""
        if c.cpu_s is not None and c.peak_rss_bytes is not None:
            cost = f" {c.cpu_s:7.2f} s cpu {c.peak_rss_bytes / 2**20:7.1f} MiB"
        dur += cost
        name = f"  step {c.name!r}" if c.name else ""
        extra = ""
        if c.unserializable:
            extra = "  unsaved: " + ", ".join(
                f"{k} ({v.type})" for k, v in c.unserializable.items()
            )
        print(f"  [{c.index:>3}] {c.status.value:<9} x{c.attempts} {dur}  {c.cell_id}{name}{extra}")
        if len(c.history) > 1:  # retried: every attempt's error, and the wait after it
            for a in c.history:
                if a.status != CellStatus.FAILED or a.error is None:
                    continue
                retry = ""
                if a.error.retry_in_s is not None:
                    retry = f" (retry in {a.error.retry_in_s:g} s)"
                print(f"        attempt {a.attempt}: {a.error.ename}: {a.error.evalue}{retry}")


def stdout_to_devnull() -> None:
    """The reader of stdout went away (``durabook list | head -1``): the Python docs'
    recipe, so the interpreter's final flush does not raise BrokenPipeError again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
