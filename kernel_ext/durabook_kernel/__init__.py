"""durabook's IPython extension: ``%load_ext durabook.kernel``.

Loaded into every run kernel (``--ext=durabook_kernel``) where the runner's
driver executes the cells (see :mod:`durabook_kernel.driver`). Loaded by hand in
an interactive notebook, it checkpoints every cell you run to the engine of
``$DURABOOK_HOME`` (see :mod:`durabook_kernel.interactive`).

Kept free of durabook's heavy imports (DuckDB, pydantic): a kernel pays only for
what it uses.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .driver import STEP_MSG, drive

__all__ = [
    "STEP_MSG",
    "Extension",
    "drive",
    "extension_for",
    "load_ipython_extension",
    "unload_ipython_extension",
]


def __getattr__(name: str) -> Any:
    # lazy: `durabook_kernel.wire` (the socket protocol) is imported by every durabook
    # command; the driver and state tracker only by kernels
    if name in ("STEP_MSG", "drive"):
        from . import driver

        return getattr(driver, name)
    raise AttributeError(f"module 'durabook_kernel' has no attribute {name!r}")


class Extension:
    """Per-shell state: the tracker, and whether a batch driver is running."""

    def __init__(self, shell: Any) -> None:
        from .process import ProcessState
        from .state import StateTracker

        self.shell = shell
        self.tracker = StateTracker(shell.user_ns, set(getattr(shell, "user_ns_hidden", ())))
        self.tracker.process = ProcessState(shell)
        self.batch = False
        self.interactive: Any = None

    def post_run_cell(self, result: Any) -> None:
        if self.batch:
            return  # the driver checkpoints batch cells itself
        if self.interactive is None:
            from .interactive import InteractiveSession

            self.interactive = InteractiveSession(self)
        self.interactive.post_run_cell(result)

    def close(self) -> None:
        if self.interactive is not None:
            # the kernel is going away: if this fails, the engine notices the dead owner
            with contextlib.suppress(Exception):
                self.interactive.close()

    def pre_run_cell(self, info: Any) -> None:
        if not self.batch and self.interactive is not None:
            self.interactive.pre_run_cell(info)


def extension_for(shell: Any) -> Extension:
    ext = getattr(shell, "_durabook_extension", None)
    if ext is None:
        ext = Extension(shell)
        shell._durabook_extension = ext
    return ext


def _become_subreaper() -> None:
    """A run kernel adopts its orphaned descendants, so the engine's watchdog still
    counts (and can end) a grandchild whose parent exited."""
    import ctypes

    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def _watch_parent() -> None:
    """Exit when the runner that started this kernel dies (its pipe reaches EOF)."""
    import os
    import threading

    fd = os.environ.pop("DURABOOK_PARENT_FD", None)
    if not fd:
        return
    _become_subreaper()

    def wait() -> None:
        try:
            while os.read(int(fd), 1):
                pass
        except OSError:
            pass
        os._exit(1)

    threading.Thread(target=wait, name="durabook-lifeline", daemon=True).start()


def load_ipython_extension(ip: Any) -> None:
    _watch_parent()
    ext = extension_for(ip)
    if not getattr(ext, "_hooked", False):
        import atexit

        from .interactive import durabook_magic

        ip.events.register("pre_run_cell", ext.pre_run_cell)
        ip.events.register("post_run_cell", ext.post_run_cell)
        ip.register_magic_function(lambda line: durabook_magic(ip, ext, line), "line", "durabook")
        atexit.register(ext.close)

        def step(line: str, cell: str) -> None:
            # by hand, %%step just runs its body: retries and timeouts need a durable run
            exec(compile(cell, "<%%step>", "exec"), ip.user_ns)

        ip.register_magic_function(step, "cell", "step")
        ext._hooked = True  # type: ignore[attr-defined]


def unload_ipython_extension(ip: Any) -> None:
    ext = getattr(ip, "_durabook_extension", None)
    if ext is not None and getattr(ext, "_hooked", False):
        ip.events.unregister("pre_run_cell", ext.pre_run_cell)
        ip.events.unregister("post_run_cell", ext.post_run_cell)
        ext._hooked = False
