"""Where a home's engine listens, and the JSON-lines framing both sides speak.

Kept here (stdlib only) so kernels can reach the engine without importing durabook's core.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["call", "connect", "home_path", "recv", "send", "socket_path"]


def home_path(home: str | os.PathLike[str] | None = None) -> Path:
    return Path(home or os.environ.get("DURABOOK_HOME") or ".durabook").absolute()


def socket_path(home: Path) -> Path:
    """A short path (unix sockets cap paths near 100 bytes) derived from the home's path."""
    key = hashlib.sha1(str(home).encode()).hexdigest()[:16]
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / f"durabook-{os.getuid()}" / f"{key}.sock"


def connect(home: Path, timeout: float = 5.0) -> socket.socket | None:
    path = socket_path(home)
    if not path.exists():
        return None
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(path))
    except OSError:
        s.close()
        return None
    s.settimeout(None)
    return s


def send(sock: socket.socket, obj: Any) -> None:
    sock.sendall(json.dumps(obj).encode() + b"\n")


def recv(fh: Any) -> Any:
    line = fh.readline()
    if not line:
        raise ConnectionError("the engine closed the connection")
    return json.loads(line)


def call(sock: socket.socket, op: str, **args: Any) -> Any:
    """One request, one answer (no progress events); raises RuntimeError on an error answer."""
    send(sock, {"op": op, "args": args})
    with sock.makefile("rb") as fh:
        while True:
            msg = recv(fh)
            if "event" in msg:
                continue
            if not msg.get("ok"):
                raise RuntimeError(msg.get("error", {}).get("message", "engine error"))
            return msg.get("result")
