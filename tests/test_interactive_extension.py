"""%load_ext durabook.kernel in a kernel run by hand checkpoints every cell to the engine."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.manager import start_new_kernel

from durabook import Client, Status
from durabook_kernel import wire


def _execute(kc: Any, code: str) -> tuple[str, dict[str, Any]]:
    """Run code like a front end would; return its stdout+stderr text and the reply."""
    msg_id = kc.execute(code)
    text = []
    while True:
        msg = kc.get_iopub_msg(timeout=60)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream":
            text.append(msg["content"]["text"])
        elif msg["msg_type"] == "execute_result":
            text.append(msg["content"]["data"]["text/plain"])
        elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    reply = kc.get_shell_msg(timeout=60)
    return "".join(text), reply["content"]


@pytest.fixture
def kernels(home: Path) -> Iterator[list[Any]]:
    started: list[Any] = []
    yield started
    for km, kc in started:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    sock = wire.connect(home)
    if sock is not None:  # the engine the extension started in the background
        pid = wire.call(sock, "ping")["pid"]
        sock.close()
        os.kill(pid, signal.SIGTERM)


def _kernel(kernels: list[Any], home: Path) -> Any:
    km, kc = start_new_kernel(kernel_name="python3", env={**os.environ, "DURABOOK_HOME": str(home)})
    kernels.append((km, kc))
    return km, kc


def test_cells_run_by_hand_are_checkpointed_and_restorable(home: Path, kernels: list[Any]):
    km, kc = _kernel(kernels, home)
    out, reply = _execute(kc, "%load_ext durabook.kernel")
    assert reply["status"] == "ok"
    assert "checkpointing this kernel as instance" in out
    iid = out.split("instance ")[1].split()[0]
    _execute(kc, "import math\ntotal = 41\nwords = ['a']")
    _execute(kc, "total += 1\nwords.append('b')\nsq = lambda v: v * v\ntotal")
    _, reply = _execute(kc, "1 / 0")
    assert reply["status"] == "error"

    client = Client()  # the store belongs to the background engine: asked over its socket
    st = client.status(iid)
    assert st.status == Status.RUNNING
    assert [c.status.value for c in st.cells] == ["committed", "committed", "committed", "failed"]

    # the kernel dies; a new one gets the session's variables back
    os.kill(km.provisioner.process.pid, signal.SIGKILL)
    _, kc2 = _kernel(kernels, home)
    _execute(kc2, "%load_ext durabook.kernel")
    out, reply = _execute(kc2, f"%durabook restore {iid}")
    assert reply["status"] == "ok", out
    assert "restored" in out and "total" in out
    out, _ = _execute(kc2, "print(total, words, sq(3), math.pi > 3)")
    assert out == "42 ['a', 'b'] 9 True\n"
    assert client.status(iid).status == Status.TERMINATED  # its kernel is gone
