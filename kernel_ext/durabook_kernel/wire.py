"""Where a home's engine listens, and the JSON-lines framing both sides speak.

Kept here (stdlib only) so kernels can reach the engine without importing durabook's core.

The socket lives in a per-user folder (``$XDG_RUNTIME_DIR/durabook-<uid>`` or
``<tmp>/durabook-<uid>``) that durabook creates with mode 0700 and checks before
every use: in a shared ``/tmp`` another user could create that folder first, receive
the checkpoints sent to it and send back pickles a kernel would load. Both ends also
check the peer's uid (``SO_PEERCRED``), so a socket reached by any other path is
refused too. Failures raise :class:`UnsafeSocket`, a plain exception the core maps
to its own ``UnsafePath``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import stat
import struct
import tempfile
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "MessageTooLarge",
    "UnsafeSocket",
    "call",
    "check_peer",
    "check_runtime_dir",
    "connect",
    "encode",
    "ensure_runtime_dir",
    "home_path",
    "max_message_bytes",
    "peer_credentials",
    "recv",
    "runtime_dir",
    "send",
    "socket_path",
]

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class UnsafeSocket(RuntimeError):
    """The control socket's folder, file or peer is not this user's alone."""

    def __init__(self, message: str, path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(message)
        self.path = str(path) if path is not None else None


class MessageTooLarge(ValueError):
    """A line longer than the message size limit: nothing of it is decoded."""


def home_path(home: str | os.PathLike[str] | None = None) -> Path:
    return Path(home or os.environ.get("DURABOOK_HOME") or ".durabook").absolute()


def max_message_bytes() -> int:
    """The size limit of one message: ``$DURABOOK_MAX_MESSAGE_BYTES``, default 16 MiB."""
    try:
        value = int(os.environ.get("DURABOOK_MAX_MESSAGE_BYTES", ""))
    except ValueError:
        return DEFAULT_MAX_MESSAGE_BYTES
    return value if value > 0 else DEFAULT_MAX_MESSAGE_BYTES


# -- the socket's folder -------------------------------------------------------------


def _mode(st: os.stat_result) -> str:
    return f"{stat.S_IMODE(st.st_mode):04o}"


def _base_dir() -> Path:
    """$XDG_RUNTIME_DIR when it is this user's folder, else the temporary folder.

    (``sudo`` may pass another user's XDG_RUNTIME_DIR on: that one is not used.)
    """
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        try:
            st = os.stat(xdg)
        except OSError:
            st = None
        if st is not None and stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid():
            return Path(xdg)
    return Path(tempfile.gettempdir())


def runtime_dir() -> Path:
    """This user's folder of control sockets (not created here)."""
    return _base_dir() / f"durabook-{os.getuid()}"


def socket_path(home: Path) -> Path:
    """A short path (unix sockets cap paths near 100 bytes) derived from the home's path."""
    key = hashlib.sha1(str(home).encode()).hexdigest()[:16]
    return runtime_dir() / f"{key}.sock"


def http_socket_path(home: Path) -> Path:
    """Where ``durabook serve`` serves its HTTP API to this user alone (JupyterLab
    forwards there), beside the control socket."""
    return socket_path(home).with_suffix(".http")


def _check_base(base: Path) -> None:
    # a folder others may write into without the sticky bit lets them rename ours away
    st = os.stat(base)
    if st.st_uid not in (0, os.getuid()) or (st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX):
        raise UnsafeSocket(
            f"refusing {base} as the place of durabook's control sockets: owned by uid "
            f"{st.st_uid} with mode {_mode(st)}; set XDG_RUNTIME_DIR or TMPDIR to a folder "
            "of your own",
            base,
        )


def _check_private_dir(path: Path) -> None:
    """Raises FileNotFoundError when missing, UnsafeSocket when not ours alone."""
    st = os.lstat(path)
    uid = os.getuid()
    if stat.S_ISLNK(st.st_mode):
        what = "it is a symbolic link"
    elif not stat.S_ISDIR(st.st_mode):
        what = "it is not a folder"
    elif st.st_uid != uid or st.st_mode & 0o077:
        what = f"owned by uid {st.st_uid} with mode {_mode(st)}"
    else:
        return
    raise UnsafeSocket(
        f"refusing the control socket folder {path}: {what}; durabook needs a folder of "
        f"uid {uid} with mode 0700 there (remove it, or set XDG_RUNTIME_DIR to a private "
        "folder)",
        path,
    )


def check_runtime_dir() -> None:
    """Refuse a socket folder that exists but is not this user's alone (a missing one is
    fine), or a place for it where others could swap it."""
    path = runtime_dir()
    _check_base(path.parent)
    with contextlib.suppress(FileNotFoundError):
        _check_private_dir(path)


def ensure_runtime_dir() -> Path:
    """The socket folder, created with mode 0700 when missing, and checked either way."""
    path = runtime_dir()
    _check_base(path.parent)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    _check_private_dir(path)  # also after our mkdir: it may have lost a race to someone
    return path


# -- the peer --------------------------------------------------------------------------


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end, as the kernel saw it connect."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return pid, uid, gid


def check_peer(sock: socket.socket, path: Path) -> int:
    """The peer's pid, after checking it runs as this user."""
    pid, uid, _ = peer_credentials(sock)
    if uid != os.getuid():
        raise UnsafeSocket(
            f"refusing the engine at {path}: it runs as uid {uid} (pid {pid}), "
            f"not as uid {os.getuid()}",
            path,
        )
    return pid


def connect(home: Path, timeout: float = 5.0) -> socket.socket | None:
    """A connection to the home's engine, or None when none listens.

    Raises UnsafeSocket when the folder, the socket file or the listening process
    is not this user's.
    """
    path = socket_path(home)
    try:
        _check_private_dir(path.parent)
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    _check_base(path.parent.parent)  # else whoever may rename in it could swap our folder
    if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        kind = "a socket" if stat.S_ISSOCK(st.st_mode) else "not a socket"
        raise UnsafeSocket(
            f"refusing the control socket {path}: {kind} owned by uid {st.st_uid} with "
            f"mode {_mode(st)}; only uid {os.getuid()} may own and write it",
            path,
        )
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(path))
    except OSError:
        s.close()
        return None
    try:
        check_peer(s, path)
    except BaseException:
        s.close()
        raise
    s.settimeout(None)
    return s


# -- framing ---------------------------------------------------------------------------


def encode(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def send(sock: socket.socket, obj: Any) -> None:
    sock.sendall(encode(obj))


def recv(fh: Any, limit: int | None = None) -> Any:
    """One message. ``limit`` bytes at most are read (None: no limit, for replies of an
    engine whose uid was checked); a longer line raises MessageTooLarge."""
    line = fh.readline(limit + 1) if limit else fh.readline()
    if not line:
        raise ConnectionError("the engine closed the connection")
    if limit and len(line) > limit and not line.endswith(b"\n"):
        raise MessageTooLarge(f"a message may hold at most {limit} bytes")
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
