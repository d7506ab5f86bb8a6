"""Warm kernels: forked from a zygote, handed out once, refilled, shrunk when idle,
gone with the engine. (How fast is for benchmarks/kernels.py; here: that it works.)"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from durabook.engine import Engine
from durabook.errors import BadInput, KernelDied
from durabook.kernels.pool import KernelPool, KernelProcess, kernel_environment, pool_setting
from durabook.kernels.zygote import ForkedChild
from durabook_kernel.runapp import lean_supported

from .conftest import cli, write_nb
from .processes import pid_gone, stop_engine


def _run_code(k: KernelProcess, code: str) -> str:
    msg_id = k.kc.execute(code)
    out = []
    while True:
        m = k.kc.get_iopub_msg(timeout=30)
        if m["parent_header"].get("msg_id") != msg_id:
            continue
        if m["msg_type"] == "stream":
            out.append(m["content"]["text"])
        elif m["msg_type"] == "error":
            raise AssertionError(m["content"]["evalue"])
        elif m["msg_type"] == "status" and m["content"]["execution_state"] == "idle":
            return "".join(out)


@contextlib.contextmanager
def _pool_with_home(tmp_path: Path, size: int = 1) -> Iterator[KernelPool]:
    """A pool whose kernels checkpoint code run by hand into a home of their own (and
    the engine that code starts, stopped after)."""
    home = tmp_path / "home"
    pool = KernelPool(size, env={**kernel_environment(), "DURABOOK_HOME": str(home)}, idle_s=None)
    try:
        yield pool
    finally:
        pool.close()
        stop_engine(home)


def test_pool_hands_out_forked_kernels_once_each_and_refills(tmp_path: Path) -> None:
    # code run by hand is checkpointed as an interactive session: into a home of its own
    env = {**kernel_environment(), "DURABOOK_HOME": str(tmp_path / "home")}
    pool = KernelPool(3, log_dir=tmp_path / "logs", env=env, idle_s=None)
    try:
        assert pool.wait_ready(60)
        assert pool.zygote() is not None
        kernels = [pool.acquire() for _ in range(3)]
        assert len({k.pid for k in kernels}) == 3  # never the same kernel twice
        assert all(isinstance(k.proc, ForkedChild) for k in kernels)
        # each is a working kernel with durabook's extension, in its own session
        for k in kernels:
            text = _run_code(
                k,
                "import os, sys, random\n"
                "print(os.getpid(), os.getsid(0), 'durabook_kernel' in sys.modules, "
                "random.random(), sys.argv[1])",
            )
            pid, sid, loaded, rand, flag = text.splitlines()[0].split()
            assert flag == "-f"  # sys.argv as a cold kernel's
            assert int(pid) == k.pid and int(sid) == k.pid and loaded == "True"
            k.rand = rand  # type: ignore[attr-defined]
        # forked from one parent, yet their random streams differ
        assert len({k.rand for k in kernels}) == 3  # type: ignore[attr-defined]
        assert pool.wait_ready(60)  # refilled behind them
        assert pool.ready() == 3
        for k in kernels:
            k.close()
            assert k.proc.returncode is not None  # the zygote reported its exit status
            # the engine's end: shell and IOPub only, nothing made just to be closed
            assert k.kc._hb_channel is None and k.kc._stdin_channel is None
            assert k.kc._control_channel is None
    finally:
        pool.close()
        stop_engine(tmp_path / "home")


def test_a_forked_kernels_prepared_shell_is_its_own(tmp_path: Path) -> None:
    # the zygote builds the shell before the fork: each kernel still gets it wired to
    # itself, its own environment and folder, and a namespace no other kernel shares
    home = tmp_path / "home"  # code run by hand is checkpointed: into a home of its own
    env = {**kernel_environment(), "DURABOOK_MARK": "k1", "DURABOOK_HOME": str(home)}
    pool = KernelPool(2, env=env, idle_s=None)
    try:
        a, b = pool.acquire(), pool.acquire()
        text = _run_code(
            a,
            "import os\nip = get_ipython()\nsecret = 42\n"
            "print(ip.kernel is not None and ip.kernel.shell is ip, "
            "os.environ.get('DURABOOK_MARK'), os.environ.get('PAGER'), "
            "str(_dh[0]) == ip.starting_dir == os.getcwd())",
        )
        assert text.splitlines()[0].split() == ["True", "k1", "cat", "True"]
        assert _run_code(b, "print('secret' in globals())").splitlines()[0] == "False"
        # displays reach the frontend through this kernel's own sockets
        msg_id = b.kc.execute(
            "from IPython.display import display, HTML\ndisplay(HTML('<b>x</b>'))"
        )
        while True:
            m = b.kc.get_iopub_msg(timeout=30)
            if m["parent_header"].get("msg_id") == msg_id and m["msg_type"] == "display_data":
                assert m["content"]["data"]["text/html"] == "<b>x</b>"
                break
        # nobody debugs a run's kernel over DAP: no debugpy client per kernel
        info_id = b.kc.kernel_info()
        reply = b.kc.get_shell_msg(timeout=30)
        while reply["parent_header"].get("msg_id") != info_id:  # the executes' replies
            reply = b.kc.get_shell_msg(timeout=30)
        assert "debugger" not in reply["content"]["supported_features"]
        a.close()
        b.close()
    finally:
        pool.close()
        stop_engine(home)


@pytest.mark.skipif(not lean_supported(), reason="RunKernelApp is for ipykernel 7.4")
def test_a_forked_kernel_runs_lean_and_still_answers_every_channel(tmp_path: Path) -> None:
    # no heartbeat, control thread or debugger in a run's kernel (runapp.py); control
    # requests are served on its main loop, and a first cell that awaits (how the
    # runner starts a run) works
    with _pool_with_home(tmp_path) as pool:
        k = pool.acquire()
        text = _run_code(
            k,
            "import asyncio, threading\nawait asyncio.sleep(0)\n"
            "print(sorted(t.name for t in threading.enumerate()))",
        )
        names = text.splitlines()[0]
        assert "Heartbeat" not in names and "Control" not in names
        assert "Shell channel" in names and "IOPub" in names

        def ask(channel: Any, kind: str) -> dict[str, Any]:
            msg = k.kc.session.msg(kind)
            channel.send(msg)
            reply = channel.get_msg(timeout=30)
            while reply["parent_header"]["msg_id"] != msg["header"]["msg_id"]:
                reply = channel.get_msg(timeout=30)  # the reply to the execute above
            return reply["content"]

        info = ask(k.kc.control_channel, "kernel_info_request")
        assert info["status"] == "ok" and "debugger" not in info["supported_features"]
        ports = ask(k.kc.shell_channel, "connect_request")  # what the connection file says
        assert ports["shell_port"] == k.kc.shell_port and ports["iopub_port"] == k.kc.iopub_port
        # subshells need the control thread: refused at once, never left unanswered
        refused = ask(k.kc.control_channel, "create_subshell_request")
        assert refused["status"] == "error" and "one shell" in refused["evalue"]
        k.close()


def test_the_zygote_warms_the_cell_path_and_leaves_the_shell_as_it_was() -> None:
    # what every child's first cell would compile (tokenize's pattern) is compiled in
    # the zygote; the warm-up runs nothing: no count, history or name changes
    code = textwrap.dedent(
        """
        import tokenize
        from traitlets.config import Config
        from IPython.core.interactiveshell import InteractiveShell
        from durabook_kernel import zygote
        c = Config()
        c.HistoryManager.enabled = False
        shell = InteractiveShell.instance(config=c)
        def state():
            return (shell.execution_count, sorted(shell.user_ns),
                    list(shell.history_manager.input_hist_raw))
        before = state()
        cache = getattr(tokenize, "_compile", None)
        if cache is not None:
            cache.cache_clear()
        zygote._warm_up(shell)
        warm = cache is None or cache.cache_info().currsize > 0
        print(warm, state() == before)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.split() == ["True", "True"], out.stderr


def test_drive_by_hand_without_a_plan_says_so(tmp_path: Path) -> None:
    # the runner sends a run's plan in its request's metadata; a bare call names it
    with _pool_with_home(tmp_path) as pool:
        k = pool.acquire()
        with pytest.raises(AssertionError, match="durabook_plan metadata"):
            _run_code(k, "await __import__('durabook_kernel').drive()")
        k.close()


def test_a_kernel_killed_is_seen_dead_with_its_signal(tmp_path: Path) -> None:
    pool = KernelPool(1, idle_s=None)
    try:
        k = pool.acquire()
        os.kill(k.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while k.alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not k.alive()
        assert k.proc.returncode == -signal.SIGKILL
        k.close()
    finally:
        pool.close()


def test_pool_shrinks_when_idle_and_fills_again_on_demand(tmp_path: Path) -> None:
    pool = KernelPool(2, idle_s=0.5)
    try:
        assert pool.wait_ready(60)
        zygote = pool.zygote()
        assert zygote is not None
        deadline = time.monotonic() + 20
        while (pool.ready() or pool._zygote is not None) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pool.ready() == 0 and pool._zygote is None  # kernels and zygote let go
        assert pid_gone(zygote.pid)
        k = pool.acquire()  # on demand: a fresh zygote, and the pool fills again
        assert k.alive()
        k.close()
        assert pool.wait_ready(60)
    finally:
        pool.close()


def test_a_dead_zygote_is_replaced(tmp_path: Path) -> None:
    pool = KernelPool(1, idle_s=None)
    try:
        first = pool.zygote()
        assert first is not None
        os.kill(first.pid, signal.SIGKILL)
        first.proc.wait(10)
        k = pool.start_kernel()  # a new zygote forks it
        assert k.alive()
        assert pool.zygote() is not first
        k.close()
    finally:
        pool.close()


def test_kernels_and_zygote_end_when_the_engine_is_killed(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path[:0] = {sys.path!r}
        from durabook.kernels.pool import KernelPool
        pool = KernelPool(2, idle_s=None)
        assert pool.wait_ready(60)
        k = pool.acquire()
        print(pool.zygote().pid, k.pid, *(r.pid for r in pool._ready), flush=True)
        time.sleep(600)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) >= 3
    proc.kill()
    proc.wait()
    for pid in pids:  # the lifelines closed: every kernel exits, and the zygote too
        assert pid_gone(pid, timeout=15), pid


def test_pool_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DURABOOK_POOL_SIZE", "3")
    assert pool_setting("DURABOOK_POOL_SIZE", 0) == 3
    monkeypatch.setenv("DURABOOK_POOL_SIZE", "many")
    with pytest.raises(BadInput, match="DURABOOK_POOL_SIZE"):
        pool_setting("DURABOOK_POOL_SIZE", 0)


def test_serve_runs_notebooks_on_forked_kernels(home: Path, tmp_path: Path) -> None:
    nb = write_nb(tmp_path / "nb.ipynb", ["import os\nprint(os.getppid())", "x = 2", "x * 21"])
    serve = subprocess.Popen(
        [sys.executable, "-m", "durabook", "serve", "--warm", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert serve.stderr is not None
        line = serve.stderr.readline()
        assert "durabook engine for" in line, line
        for _ in range(3):
            run = cli("run", str(nb), "-q")
            assert run.returncode == 0, run.stderr
        logs = list((home / "logs").glob("zygote*.log"))
        assert logs, "serve's pool forks its kernels from a zygote"
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(60)
    # the kernel's parent was the zygote, not serve
    from .conftest import outputs_text

    ppid = int(outputs_text(home / "outputs" / f"{run.stdout.split()[0]}.ipynb")[0].split()[0])
    assert ppid != serve.pid


def test_engine_takes_its_pool_size_from_the_environment(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DURABOOK_POOL_SIZE", "1")
    with Engine(home) as eng:
        assert eng.pool.size == 1 and eng.pool.use_zygote


def test_a_zygote_that_does_not_answer_is_replaced(tmp_path: Path) -> None:
    pool = KernelPool(0, zygote=True)
    try:
        stuck = pool.zygote()
        assert stuck is not None
        os.kill(stuck.pid, signal.SIGSTOP)
        folder = tmp_path / "k"
        folder.mkdir()
        r, w = os.pipe()
        with pytest.raises(KernelDied, match="did not answer"):
            stuck.spawn(str(folder / "k.json"), {}, None, (r, w, w), timeout=1.0)
        os.close(r)
        os.close(w)
        assert not stuck.alive()
        k = pool.start_kernel()  # a new zygote forks it
        assert k.alive() and pool.zygote() is not stuck
        k.close()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(stuck.pid, signal.SIGKILL)
        pool.close()
