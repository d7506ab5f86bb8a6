"""The application of a forked run kernel: ipykernel's, less what a run never uses.

A run's kernel is driven by one engine through one ``execute_request`` (see
``durabook.runner``), is watched through its pidfd rather than a heartbeat, is
interrupted with SIGINT and ended with SIGKILL. So, in a kernel forked by the
zygote, :class:`RunKernelApp` leaves out:

- the heartbeat (a thread and a zmq context of its own: two more native threads);
- the control thread: the few control requests a run's kernel could get are
  served on the main loop instead (interrupts come as SIGINT);
- the debugger (no debugpy client, no debugger sockets: nobody debugs a run's
  kernel over DAP), and the listing of every loaded module's file that only the
  debugger reads: it touches each module object, and in a forked process every page
  it touches is copied (about 500 page faults, 1.3 ms);
- writing the connection file again (the pool wrote it) and logging it.

Measured with ``benchmarks/kernels.py`` (sustained section, the CPU of a kernel from
fork to kernel_info answered to exit): 18.0 ms instead of 20.7, and 84 fresh kernels
per second instead of 75. The kernel is otherwise ipykernel's own: the same
``IPythonKernel``, shell, output streams, display hooks and comms.

Only used with the ipykernel it was written against (``lean_supported``), and for
ipykernel's own ``IPythonKernel``; otherwise forked kernels start as ipykernel starts
them. Subshells (a control request) are refused with an error reply: a run has one
shell, driven by the engine.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Iterator
from typing import Any

import ipykernel
from ipykernel.kernelapp import IPKernelApp

__all__ = ["RunKernelApp", "lean_supported"]


def lean_supported() -> bool:
    """Whether this ipykernel is the one RunKernelApp was written and tested against
    (its ``init_control`` and ``init_kernel`` follow 7.4's). With another, forked
    kernels start as ipykernel starts them: the same, a few ms slower."""
    info: Any = getattr(ipykernel, "version_info", (0,))
    return tuple(info[:2]) == (7, 4)


class _SysWithoutModules:
    """``sys`` as ``IPythonKernel.__init__`` sees it while it is built: no modules to list."""

    modules: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(sys, name)


@contextlib.contextmanager
def _no_module_listing() -> Iterator[None]:
    import ipykernel.ipkernel as ipkernel

    saved = ipkernel.sys
    ipkernel.sys = _SysWithoutModules()  # type: ignore[assignment]
    try:
        yield
    finally:
        ipkernel.sys = saved


class RunKernelApp(IPKernelApp):
    """``IPKernelApp`` for a forked run kernel (see the module's docstring)."""

    def _lean(self) -> bool:
        from ipykernel.ipkernel import IPythonKernel

        return self.kernel_class is IPythonKernel

    def init_control(self, context: Any) -> None:
        if not self._lean():
            super().init_control(context)
            return
        import zmq
        from ipykernel.shellchannel import ShellChannelThread

        self.control_socket = context.socket(zmq.ROUTER)
        self.control_socket.linger = 1000
        self._apply_curve_server_options(self.control_socket)
        self.control_port = self._bind_socket(self.control_socket, self.control_port)
        if hasattr(zmq, "ROUTER_HANDOVER"):
            self.control_socket.router_handover = 1  # as ipykernel sets it
        self.debugpy_socket = None
        self.debug_shell_socket = None
        self.control_thread = None
        # ipykernel 7 reads this one at every async execute_request: it stays
        self.shell_channel_thread = ShellChannelThread(context, daemon=True)

    def init_heartbeat(self) -> None:
        """None: the pool watches the kernel's pidfd."""

    def write_connection_file(self, **kwargs: Any) -> None:
        """The pool wrote it, with these very ports."""

    def log_connection_info(self) -> None:
        """Nobody else reads it; only the ports it records are kept (connect_request)."""
        self._ports = dict(
            shell=self.shell_port,
            iopub=self.iopub_port,
            stdin=self.stdin_port,
            hb=self.hb_port,
            control=self.control_port,
        )

    def init_kernel(self) -> None:
        if not self._lean():
            super().init_kernel()
            return
        from ipykernel import debugger
        from zmq.eventloop.zmqstream import ZMQStream

        # a run's kernel is driven by the engine, never debugged over DAP: no debugpy
        # client (ipykernel reads this flag at each use)
        debugger._is_debugpy_available = False

        # as ipykernel's own init_kernel, less the control thread: control requests are
        # served on the main loop (ZMQStream's default loop)
        shell_stream = ZMQStream(self.shell_socket, self.shell_channel_thread.io_loop)
        self.shell_channel_thread.shell_stream = shell_stream
        self.shell_channel_thread.start()
        with _no_module_listing():
            kernel_class: Any = self.kernel_class
            kernel = kernel_class.instance(
                parent=self,
                session=self.session,
                control_stream=ZMQStream(self.control_socket),
                debugpy_stream=None,
                debug_shell_socket=None,
                shell_stream=shell_stream,
                control_thread=None,
                shell_channel_thread=self.shell_channel_thread,
                iopub_thread=self.iopub_thread,
                iopub_socket=self.iopub_socket,
                stdin_socket=self.stdin_socket,
                log=self.log,
                profile_dir=self.profile_dir,
                user_ns=self.user_ns,
            )
        kernel.record_ports({name + "_port": port for name, port in self._ports.items()})
        for kind in ("create", "delete", "list"):  # they need the control thread
            request = f"{kind}_subshell_request"
            kernel.control_handlers[request] = functools.partial(_no_subshells, kernel, kind)
        self.kernel = kernel
        self.displayhook.get_execution_count = lambda: kernel.execution_count


def _no_subshells(kernel: Any, kind: str, stream: Any, ident: Any, parent: Any) -> None:
    content = {
        "status": "error",
        "ename": "SubshellsUnavailable",
        "evalue": "a durabook run's kernel has one shell",
        "traceback": [],
    }
    kernel.session.send(stream, f"{kind}_subshell_reply", content, parent, ident)
