"""``durabook doctor``: what this machine and home give durabook, one line each.

Each check prints ``name: state (detail)``; a problem makes the exit status 1. It
opens nothing for writing and starts no engine: it may run beside a serving one.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Check", "checks", "main"]


@dataclass
class Check:
    name: str
    state: str
    detail: str = ""
    problem: bool = False

    def line(self) -> str:
        return f"{self.name}: {self.state}" + (f" ({self.detail})" if self.detail else "")


def _versions() -> Check:
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    parts = [f"python {sys.version.split()[0]}"]
    for dist in ("duckdb", "ipykernel", "jupyter_client", "nbclient"):
        try:
            parts.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            parts.append(f"{dist} missing")
    return Check("durabook", __version__, ", ".join(parts))


def _home(home: Path) -> Check:
    from .errors import UnsafePath
    from .home import _check_folder

    if not home.exists():
        parent = home.parent
        if os.access(parent, os.W_OK | os.X_OK):
            return Check("home", str(home), "made by the first run")
        return Check("home", str(home), f"cannot be made: {parent} is not writable", True)
    try:
        _check_folder(home, "home", tighten_loose=False)
    except UnsafePath as exc:
        return Check("home", str(home), exc.message, True)
    free = shutil.disk_usage(home).free
    low = free < 512 * 2**20
    return Check("home", str(home), f"{free / 2**30:.1f} GiB free" + (", low" if low else ""), low)


def _engine(home: Path) -> Check:
    from durabook_kernel import wire

    try:
        sock = wire.connect(home, timeout=2.0)
    except (OSError, wire.UnsafeSocket) as exc:
        return Check("engine", "unreachable", str(exc), True)
    if sock is None:
        return Check("engine", "none running", "`durabook serve` runs queued work and schedules")
    try:
        sock.settimeout(5.0)
        owner = wire.call(sock, "ping") or {}
    except (OSError, RuntimeError, ValueError) as exc:
        return Check("engine", "not answering", str(exc), True)
    finally:
        sock.close()
    kind = "serving" if owner.get("serving") else "open"
    return Check("engine", kind, f"pid {owner.get('pid')}, host {owner.get('host', '?')}")


def _runtime() -> Check:
    from durabook_kernel import wire

    try:
        path = wire.ensure_runtime_dir()
    except (OSError, wire.UnsafeSocket) as exc:
        return Check("sockets", "unsafe", str(exc), True)
    return Check("sockets", str(path), "private to this user")


def _kernel() -> Check:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        return Check("kernel", "no python3 kernelspec", "pip install ipykernel", True)
    return Check("kernel", "python3", spec.argv[0])


def _isolation() -> Check:
    import subprocess

    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return Check("isolation", "reduced", "bubblewrap not found")
    # the namespaces a sandboxed kernel gets: a kernel that forbids them shows it here
    probe = [bwrap, "--unshare-user", "--unshare-pid", "--unshare-net", "--ro-bind", "/", "/"]
    try:
        out = subprocess.run([*probe, "true"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("isolation", "reduced", f"{bwrap} did not run: {exc}")
    if out.returncode != 0:
        why = (out.stderr.strip().splitlines() or ["no message"])[-1]
        return Check("isolation", "reduced", f"bubblewrap cannot make namespaces here: {why}")
    return Check("isolation", "available", bwrap)


def _limits() -> Check:
    from .errors import BadInput
    from .kernels.limits import operator_limits
    from .kernels.sandbox import sandbox_default

    try:
        defaults, maximum = operator_limits()
    except BadInput as exc:
        return Check("limits", "invalid setting", exc.message, True)
    mode = "every run" if sandbox_default() else "runs with a tenant or --sandbox"
    detail = f"maximums: {maximum.describe()}; sandboxed: {mode}"
    return Check("limits", defaults.describe(), detail)


def _jupyterlab() -> Check:
    built = Path(sys.prefix) / "share" / "jupyter" / "labextensions" / "durabook"
    try:
        import jupyter_server  # noqa: F401
    except ImportError:
        return Check("jupyterlab", "not installed", 'pip install "durabook[lab]"')
    if not (built / "package.json").exists():
        return Check("jupyterlab", "extension missing", f"nothing in {built}", True)
    return Check("jupyterlab", "extension installed", str(built))


def checks(home: Path) -> list[Check]:
    return [
        _versions(),
        _home(home),
        _engine(home),
        _runtime(),
        _kernel(),
        _isolation(),
        _limits(),
        _jupyterlab(),
    ]


def main(home: Path) -> int:
    found = checks(home)
    for c in found:
        print(c.line())
    return 1 if any(c.problem for c in found) else 0
