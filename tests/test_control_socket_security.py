"""The control socket is the owner's alone, and survives whatever is sent to it.

Each test keeps its sockets in a private temporary folder (TMPDIR, no
XDG_RUNTIME_DIR) so no test fights another over ``/tmp/durabook-<uid>``. The
other user is uid 65534 (nobody), reached with ``setpriv``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from durabook.api.service import Service
from durabook.control import ControlServer
from durabook.engine import Engine
from durabook_kernel import wire

from .conftest import write_nb

NOBODY = 65534
SETPRIV = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
# nobody cannot read the venv's interpreter under /root: a stdlib-only python will do
PLAIN_PYTHON = shutil.which("python3", path="/usr/bin:/bin") or sys.executable

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv"
)


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


@pytest.fixture
def tmpdir_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private TMPDIR (sticky and world-writable, as /tmp is) for this test's sockets.

    (After ``tmp_path``: pytest picks its own base folder from TMPDIR on first use.)
    """
    d = Path(tempfile.mkdtemp(prefix="dbk-sec-", dir="/tmp"))
    os.chmod(d, 0o1777)
    monkeypatch.setenv("TMPDIR", str(d))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", None)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def durabook(*args: str, timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "durabook", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )


def _one_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def _start_serve(home: Path) -> subprocess.Popen[str]:
    server = subprocess.Popen(
        [sys.executable, "-m", "durabook", "--home", str(home), "serve"],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert server.stderr is not None
    assert "durabook engine for" in server.stderr.readline()
    path = wire.socket_path(home)
    deadline = time.monotonic() + 60
    while not path.exists():  # the banner comes just before the socket
        assert time.monotonic() < deadline and server.poll() is None
        time.sleep(0.05)
    return server


def _stop(server: subprocess.Popen[str]) -> None:
    if server.poll() is None:
        server.terminate()
    server.wait(timeout=30)


class Raw:
    """A client that speaks the framing by hand (no checks of its own)."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(60)
        self.sock.connect(str(path))
        self.rfile = self.sock.makefile("rb")

    def ask(self, line: bytes) -> dict[str, Any]:
        self.sock.sendall(line)
        while True:
            raw = self.rfile.readline()
            assert raw, "the server closed the connection"
            msg = json.loads(raw)
            if "event" not in msg:
                return msg

    def request(self, op: str, **args: Any) -> dict[str, Any]:
        return self.ask(json.dumps({"op": op, "args": args}).encode() + b"\n")

    def close(self) -> None:
        self.rfile.close()
        self.sock.close()


# run as uid 65534 with a stdlib-only python
_INTRUDER = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(20)
s.connect(sys.argv[1])
try:
    s.sendall(json.dumps({"op": "ping", "args": {}}).encode() + b"\\n")
    data = s.makefile("rb").read()
except (BrokenPipeError, ConnectionResetError):
    data = b""
print("connected; answered:", repr(data))
"""

_IMPOSTOR = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1])
s.listen(8)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    try:
        c.sendall(b'{"event": "accepted"}\\n{"ok": true, "result": []}\\n')
    except OSError:
        pass
    c.close()
"""


# -- the socket's folder ----------------------------------------------------------------


@needs_root
def test_a_socket_folder_another_user_made_is_refused(tmpdir_env: Path, tmp_path: Path):
    folder = tmpdir_env / f"durabook-{os.getuid()}"
    subprocess.run([*SETPRIV, "mkdir", "-m", "0777", str(folder)], check=True)
    assert os.stat(folder).st_uid == NOBODY
    home = tmp_path / "home"
    nb = write_nb(tmp_path / "nb.ipynb", ["print(1)"])
    for args in (("status", "abc"), ("serve",), ("run", str(nb), "-q"), ("list",)):
        proc = durabook("--home", str(home), *args)
        assert proc.returncode == 2, proc.stderr
        line = _one_line(proc)
        assert line.startswith(f"error: refusing the control socket folder {folder}: ")
        assert f"owned by uid {NOBODY} with mode 0777" in line
    assert list(folder.iterdir()) == []  # nothing was sent its way
    # the kernel side (stdlib only) refuses it too, with a plain exception
    with pytest.raises(wire.UnsafeSocket, match="owned by uid 65534"):
        wire.connect(home)


def test_a_loose_or_symlinked_folder_of_our_own_is_refused(tmpdir_env: Path, tmp_path: Path):
    folder = tmpdir_env / f"durabook-{os.getuid()}"
    folder.mkdir(mode=0o700)
    os.chmod(folder, 0o755)
    proc = durabook("--home", str(tmp_path / "home"), "status", "abc")
    assert proc.returncode == 2
    assert (
        f"refusing the control socket folder {folder}: owned by uid {os.getuid()} with "
        "mode 0755" in _one_line(proc)
    )
    folder.rmdir()
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    folder.symlink_to(real)
    proc = durabook("--home", str(tmp_path / "home"), "serve")
    assert proc.returncode == 2
    assert f"{folder}: it is a symbolic link" in _one_line(proc)


@needs_root
def test_a_temporary_folder_others_may_rename_in_is_refused(tmp_path: Path):
    """Without the sticky bit, whoever may write a folder may swap ours inside it."""
    base = Path(tempfile.mkdtemp(prefix="dbk-open-", dir="/tmp"))
    try:
        os.chmod(base, 0o777)
        os.chown(base, NOBODY, NOBODY)
        env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
        proc = durabook("--home", str(tmp_path / "home"), "serve", env={**env, "TMPDIR": str(base)})
        assert proc.returncode == 2
        line = _one_line(proc)
        assert f"refusing {base} as the place of durabook's control sockets" in line
        assert f"owned by uid {NOBODY} with mode 0777" in line
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_socket_file_others_own_or_may_write_is_refused(tmpdir_env: Path, tmp_path: Path):
    home = tmp_path / "home"
    path = wire.socket_path(home)
    wire.ensure_runtime_dir()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    try:
        os.chmod(path, 0o666)
        with pytest.raises(wire.UnsafeSocket, match=r"refusing the control socket .* mode 0666"):
            wire.connect(home)
        os.chmod(path, 0o600)
        if os.geteuid() == 0:
            os.chown(path, NOBODY, NOBODY)
            with pytest.raises(wire.UnsafeSocket, match="owned by uid 65534"):
                wire.connect(home)
            os.chown(path, 0, 0)
        sock = wire.connect(home)
        assert sock is not None
        sock.close()
    finally:
        listener.close()


def test_the_kernel_side_of_the_wire_imports_no_core():
    code = (
        "import sys, durabook_kernel.wire, durabook_kernel.blobs\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('durabook', 'pydantic', 'duckdb', 'nbformat')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@needs_root
def test_serve_makes_a_private_socket_and_drops_other_uids(tmpdir_env: Path, tmp_path: Path):
    home = tmp_path / "home"
    server = _start_serve(home)
    try:
        path = wire.socket_path(home)
        folder = path.parent
        assert folder == tmpdir_env / f"durabook-{os.getuid()}"
        assert _mode(folder) == 0o700 and os.stat(folder).st_uid == os.getuid()
        assert _mode(path) == 0o600 and os.stat(path).st_uid == os.getuid()

        # open both walls on purpose: only the server's SO_PEERCRED check is left
        os.chmod(folder, 0o755)
        os.chmod(path, 0o666)
        proc = subprocess.run(
            [*SETPRIV, PLAIN_PYTHON, "-I", "-S", "-c", _INTRUDER, str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "connected; answered: b''"  # connected, then dropped
        # the same raw request from our own uid is answered
        me = Raw(path)
        assert me.request("ping")["result"]["pid"] == server.pid
        me.close()
        # and durabook's own client, which checks before every use, refuses the open folder
        proc = durabook("--home", str(home), "list")
        assert proc.returncode == 2
        assert "owned by uid 0 with mode 0755" in _one_line(proc)
        os.chmod(folder, 0o700)
        proc = durabook("--home", str(home), "list")
        assert proc.returncode == 2
        assert "a socket owned by uid 0 with mode 0666" in _one_line(proc)
        os.chmod(path, 0o600)
        assert durabook("--home", str(home), "list").returncode == 0
    finally:
        _stop(server)
    assert server.returncode == 0
    assert server.stderr is not None
    assert "refused a control connection from uid 65534" in server.stderr.read()


@needs_root
def test_a_client_refuses_an_engine_of_another_uid(tmpdir_env: Path, tmp_path: Path):
    """Someone else's process listening behind a socket file that looks like ours."""
    home = tmp_path / "home"
    assert durabook("--home", str(home), "list").returncode == 0  # the store exists
    locker = subprocess.Popen(  # keeps the store busy, so clients go to the socket
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time\n"
            "c = duckdb.connect(sys.argv[1])\nprint('locked', flush=True)\ntime.sleep(120)",
            str(home / "durabook.duckdb"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    evil = tmpdir_env / "evil"
    evil.mkdir()
    os.chown(evil, NOBODY, NOBODY)
    impostor = subprocess.Popen(
        [*SETPRIV, PLAIN_PYTHON, "-I", "-S", "-c", _IMPOSTOR, str(evil / "s.sock")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
        assert impostor.stdout is not None and impostor.stdout.readline().strip() == "ready"
        path = wire.socket_path(home)
        wire.ensure_runtime_dir()
        os.rename(evil / "s.sock", path)
        os.chown(path, os.getuid(), os.getgid())  # owner and mode look right...
        os.chmod(path, 0o600)
        proc = durabook("--home", str(home), "list")  # ...the peer's uid does not
        assert proc.returncode == 2
        assert f"refusing the engine at {path}: it runs as uid {NOBODY} (pid " in _one_line(proc)
        with pytest.raises(wire.UnsafeSocket, match="it runs as uid 65534"):
            wire.connect(home)
    finally:
        impostor.kill()
        locker.kill()
        impostor.wait()
        locker.wait()


# -- hostile input ----------------------------------------------------------------------


@pytest.fixture
def engine(
    tmpdir_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Engine, ControlServer]]:
    errors: list[Any] = []
    monkeypatch.setattr(threading, "excepthook", errors.append)
    eng = Engine(tmp_path / "home")
    server = ControlServer(Service(eng))
    try:
        yield eng, server
    finally:
        server.close()
        eng.close()
    assert errors == [], errors  # no thread of the server died of an exception


HOSTILE = [
    (b"this is not json\n", "not JSON"),
    (b"\xff\xfe\xfa\n", "not JSON"),
    (b"[" * 100_000 + b"\n", "nests too deeply"),
    (b"{" * 50_000 + b"\n", "not JSON"),
    (b"[1, 2]\n", "must be a JSON object"),
    (b'"status"\n', "must be a JSON object"),
    (b"null\n", "must be a JSON object"),
    (b"\n", "not JSON"),
    (b'{"args": {}}\n', "needs an operation name"),
    (b'{"op": 5}\n', "needs an operation name"),
    (b'{"op": ["status"]}\n', "needs an operation name"),
    (b'{"op": "rm -rf"}\n', "unknown operation 'rm -rf'"),
    (b'{"op": "status", "args": [1]}\n', "args of `status` must be a JSON object"),
    (b'{"op": "status", "args": "x"}\n', "must be a JSON object"),
    (b'{"op": "status", "args": {}}\n', "bad arguments for `status`: id: Field required"),
    (b'{"op": "status", "args": {"id": 5}}\n', "id: Input should be a valid string"),
    (b'{"op": "status", "args": {"id": "x", "y": 1}}\n', "y: Extra inputs are not permitted"),
    (b'{"op": "list", "args": {"limit": "ten"}}\n', "limit: Input should be a valid integer"),
    (b'{"op": "list", "args": {"limit": -1}}\n', "limit: Input should be greater than"),
    (b'{"op": "list", "args": {"limit": true}}\n', "limit: Input should be a valid integer"),
    (b'{"op": "run", "args": {"parameters": {}}}\n', "give exactly one of notebook"),
    (b'{"op": "run", "args": {"notebook": "x", "if_exists": "explode"}}\n', "if_exists"),
    (b'{"op": "run", "args": {"notebook": "x", "parameters": [1]}}\n', "parameters"),
    (b'{"op": "checkpoint", "args": {"id": "x", "step": "s"}}\n', "step"),
    (b'{"op": "checkpoint", "args": {"id": "x", "step": {"index": 0}}}\n', "step.source"),
    (
        b'{"op": "checkpoint", "args": {"id": "x", "step": {"index": -1, "source": "",'
        b' "status": "ok"}}}\n',
        "step.index",
    ),
    (b'{"op": "restart", "args": {"id": "x", "from_cell": 1.5}}\n', "from_cell"),
    (b'{"op": "open_session", "args": {"notebook": "n", "pid": "1"}}\n', "pid"),
]


def test_hostile_messages_get_bad_input_and_the_server_goes_on(
    engine: tuple[Engine, ControlServer], tmp_path: Path
):
    _, server = engine
    nb = write_nb(tmp_path / "ok.ipynb", ["print('still here')"])
    client = Raw(server.path)
    for line, expected in HOSTILE:
        reply = client.ask(line)
        assert reply["ok"] is False, line[:60]
        err = reply["error"]
        assert err["code"] == "bad_input", (line[:60], err)
        assert err["exit_code"] == 2
        assert expected in err["message"], (line[:60], err["message"])
        assert "\n" not in err["message"] and len(err["message"]) < 1000
        # the same connection still serves
        assert client.request("ping")["ok"] is True
    other = Raw(server.path)
    res = other.request("run", notebook=str(nb))
    assert res["ok"] is True and res["result"]["status"] == "completed"
    assert client.request("status", id=res["result"]["id"])["result"]["status"] == "completed"
    assert [i["id"] for i in other.request("list")["result"]["items"]] == [res["result"]["id"]]
    client.close()
    other.close()


def test_an_oversized_message_is_refused_without_reading_it_all(
    engine: tuple[Engine, ControlServer],
):
    _, server = engine
    limit = wire.DEFAULT_MAX_MESSAGE_BYTES
    assert server.max_message == limit
    client = Raw(server.path)
    sent = 0
    failure: list[BaseException] = []

    def flood() -> None:
        nonlocal sent
        chunk = b"x" * (1 << 20)
        try:
            for _ in range(1024):  # up to 1 GiB, if the server kept reading
                client.sock.sendall(chunk)
                sent += len(chunk)
        except OSError as exc:
            failure.append(exc)

    t = threading.Thread(target=flood)
    t.start()
    reply = json.loads(client.rfile.readline())
    assert reply["ok"] is False and reply["error"]["code"] == "bad_input"
    assert f"at most {limit} bytes" in reply["error"]["message"]
    # and the connection is closed (reset: what we were still sending was left unread)
    with contextlib.suppress(ConnectionResetError):
        assert client.rfile.readline() == b""
    t.join(30)
    assert failure, "the server kept reading"
    assert sent < limit + (8 << 20)
    client.close()
    assert Raw(server.path).request("list")["ok"] is True


def test_the_message_limit_is_configurable(
    tmpdir_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("DURABOOK_MAX_MESSAGE_BYTES", "4096")
    assert wire.max_message_bytes() == 4096
    with Engine(tmp_path / "home") as eng:
        server = ControlServer(Service(eng))
        try:
            client = Raw(server.path)
            big = json.dumps({"op": "status", "args": {"id": "x" * 5000}}).encode() + b"\n"
            reply = client.ask(big)
            assert reply["error"]["code"] == "bad_input"
            assert "at most 4096 bytes" in reply["error"]["message"]
            # under the limit: read and answered (ids are at most 64 characters: pad beside)
            fits = json.dumps({"op": "status", "args": {"id": "x"}, "pad": "x" * 3900})
            fits = fits.encode() + b"\n"
            assert Raw(server.path).ask(fits)["error"]["code"] == "unknown_instance"
        finally:
            server.close()
    monkeypatch.setenv("DURABOOK_MAX_MESSAGE_BYTES", "lots")
    assert wire.max_message_bytes() == wire.DEFAULT_MAX_MESSAGE_BYTES


# -- slow clients -----------------------------------------------------------------------


def test_a_client_that_stops_reading_never_stalls_a_run(tmpdir_env: Path, tmp_path: Path):
    """The unix socket takes about 280 small messages before a writer blocks; a run of
    500 cells sends more than that plus the (here small) queue, so the silent client
    is dropped while the run goes on, and other clients are served meanwhile."""
    cells = [f"print('{'y' * 20_000 if i % 50 == 0 else 'x'}', {i})" for i in range(500)]
    nb = write_nb(tmp_path / "long.ipynb", cells)
    with Engine(tmp_path / "home") as eng:
        server = ControlServer(Service(eng), queue_limit=50)
        try:
            silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            silent.connect(str(server.path))
            silent.sendall(
                json.dumps({"op": "run", "args": {"notebook": str(nb), "id": "slow-1"}}).encode()
                + b"\n"
            )
            other = Raw(server.path)
            seen: set[str] = set()
            deadline = time.monotonic() + 240
            while True:
                t0 = time.monotonic()
                reply = other.request("status", id="slow-1")
                assert time.monotonic() - t0 < 10  # answered while the run goes on
                if reply["ok"]:
                    seen.add(reply["result"]["status"])
                    if reply["result"]["status"] == "completed":
                        break
                assert time.monotonic() < deadline, seen
                time.sleep(0.2)
            assert "running" in seen
            # the silent client was dropped: what it finds is a cut stream, no final reply
            silent.settimeout(30)
            received = b""
            while chunk := silent.recv(1 << 20):
                received += chunk
            messages = [json.loads(m) for m in received.splitlines() if m.endswith(b"}")]
            assert messages and all("event" in m for m in messages)
            assert len(messages) < 500
            silent.close()
            other.close()
        finally:
            server.close()
