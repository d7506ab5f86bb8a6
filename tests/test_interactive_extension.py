"""%load_ext durabook.kernel in a kernel run by hand checkpoints every cell to the engine."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.manager import start_new_kernel

from durabook import Client, Status

from .processes import stop_engine


def _reply(kc: Any, msg_id: str, timeout: float = 60) -> dict[str, Any]:
    """The shell reply to request ``msg_id``. Other replies are skipped: start_new_kernel's
    wait_for_ready() sends a kernel_info_request every second until one is answered, so
    a slow-starting kernel leaves extra kernel_info_replies queued on the shell channel,
    and taking the next shell message would pair every request with an older reply."""
    deadline = time.monotonic() + timeout
    while True:
        msg = kc.get_shell_msg(timeout=max(0.0, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") == msg_id:
            return dict(msg)


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
    reply = _reply(kc, msg_id)
    assert reply["msg_type"] == "execute_reply"
    return "".join(text), reply["content"]


@pytest.fixture
def kernels(home: Path) -> Iterator[list[Any]]:
    started: list[Any] = []
    yield started
    for km, kc in started:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    stop_engine(home)  # the engine the extension started in the background


def _kernel(kernels: list[Any], home: Path, *extra_arguments: str) -> Any:
    km, kc = start_new_kernel(
        kernel_name="python3",
        env={**os.environ, "DURABOOK_HOME": str(home)},
        extra_arguments=list(extra_arguments),
    )
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
    # metered as in batch runs: each cell's CPU seconds and peak memory
    assert all(c.cpu_s is not None and c.peak_rss_bytes for c in st.cells[1:])

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


def test_a_slow_kernel_start_leaves_no_reply_to_be_mistaken(home: Path, kernels: list[Any]):
    """The flaky `1/0` that replied `ok`: a kernel slower than 1 s to start gets a second
    kernel_info_request from wait_for_ready(), whose reply is still queued on the shell
    channel after start_new_kernel() returns, ahead of every later reply."""
    _, kc = _kernel(kernels, home, "--IPKernelApp.exec_lines=import time; time.sleep(1.5)")
    _, reply = _execute(kc, "1 / 0")
    assert reply["status"] == "error" and reply["ename"] == "ZeroDivisionError"
    _, reply = _execute(kc, "1 + 1")
    assert reply["status"] == "ok"


def test_unsaveable_state_is_said_at_once_and_restore_brings_back_the_rest(
    home: Path, kernels: list[Any], tmp_path: Path
):
    km, kc = _kernel(kernels, home)
    out, _ = _execute(kc, "%load_ext durabook.kernel")
    iid = out.split("instance ")[1].split()[0]
    data = tmp_path / "data.txt"
    data.write_text("x")
    out, reply = _execute(kc, f"fh = open({str(data)!r})\ngen = (i for i in range(3))\nkept = 7")
    assert reply["status"] == "ok"
    lines = [ln for ln in out.splitlines() if ln.startswith("durabook:")]
    assert len(lines) == 2, out  # one line per variable, in the cell's own output
    assert any(ln.startswith("durabook: fh (") for ln in lines)
    _execute(kc, "import math\nsquare = lambda v: v * v\nwords = ['a', 'b']")

    os.kill(km.provisioner.process.pid, signal.SIGKILL)
    _, kc2 = _kernel(kernels, home)
    _execute(kc2, "%load_ext durabook.kernel")
    out, reply = _execute(kc2, f"%durabook restore {iid}")
    assert reply["status"] == "ok", out
    # everything it can, then what it could not and why: it does not stop at `fh`
    assert "kept" in out and "square" in out and "words" in out and "math" in out
    assert "not restored: fh: " in out and "not restored: gen: " in out
    out, _ = _execute(kc2, "print(kept, square(3), words, math.pi > 3, 'fh' in dir())")
    assert out == "7 9 ['a', 'b'] True False\n"
