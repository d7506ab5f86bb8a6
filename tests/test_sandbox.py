"""Sandboxed runs: a private working folder, and under bubblewrap a kernel that cannot
reach other instances' files, checkpoints or blobs, the engine's store or API, the
network, or anything outside its folder. Each escape below is tried for real."""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path

import pytest

from durabook.kernels.sandbox import bwrap_path

from .conftest import cli, cli_json, outputs_text, write_nb

needs_bwrap = pytest.mark.skipif(bwrap_path() is None, reason="bubblewrap is not installed")

# each probe prints one JSON line: what the attempt gave
PROBE = """
import json, os
def attempt(what, fn):
    try:
        got = fn()
        print(json.dumps({{"what": what, "ok": True, "got": str(got)[:200]}}))
    except BaseException as e:
        print(json.dumps({{"what": what, "ok": False, "error": type(e).__name__}}))
{body}
"""


def _probe(body: str) -> str:
    return PROBE.format(body=body)


def _results(home: Path, iid: str) -> dict[str, dict]:
    found = {}
    for text in outputs_text(home / "outputs" / f"{iid}.ipynb"):
        for line in text.splitlines():
            if line.startswith("{"):
                r = json.loads(line)
                found[r["what"]] = r
    return found


def _run(nb: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    run = cli("run", str(nb), "-q", *args, env=env)
    iid = run.stdout.split()[0] if run.stdout.split() else ""
    return run.returncode, iid, run.stderr


def test_a_sandboxed_run_works_in_its_own_folder(home: Path, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "data.csv").write_text("a,b\n1,2\n")
    nb = write_nb(
        project / "nb.ipynb",
        [
            "import os\nprint(os.getcwd())",
            f"print(open(os.path.join({str(project)!r}, 'data.csv')).read())",
            "open('result.txt', 'w').write('42')",
        ],
    )
    code, iid, err = _run(nb, "--sandbox")
    assert code == 0, err
    code, st = cli_json("status", iid)
    workdir = home / "work" / iid
    assert st["sandbox"] is True and st["workdir"] == str(workdir)
    assert outputs_text(home / "outputs" / f"{iid}.ipynb")[0].strip() == str(workdir)
    assert (workdir / "result.txt").read_text() == "42"  # kept after the run
    assert not (project / "result.txt").exists()
    # a tenant's runs are sandboxed without asking
    code, iid2, err = _run(nb, "--tenant", "acme")
    assert code == 0, err
    assert cli_json("status", iid2)[1]["workdir"] == str(home / "work" / iid2)
    # and a person's own runs are not: they work in the notebook's folder
    code, _, err = _run(nb)
    assert code == 0, err
    assert (project / "result.txt").exists()


@needs_bwrap
def test_escapes_from_a_sandbox_are_contained(home: Path, tmp_path: Path) -> None:
    # the victim: an instance with a file in its folder and a checkpointed secret
    victim_nb = write_nb(
        tmp_path / "victim.ipynb",
        ["secret = 'hunter2-' * 1000\nopen('mine.txt', 'w').write(secret)"],
    )
    code, victim, err = _run(victim_nb, "--sandbox")
    assert code == 0, err
    victim_dir = home / "work" / victim
    assert (victim_dir / "mine.txt").exists()
    blob = next(p for p in (home / "blobs").rglob("*") if p.is_file())
    share_blob = next(p for p in (home / "sandbox" / victim / "blobs").rglob("*") if p.is_file())

    # a TCP server on the host's loopback, which a kernel without network cannot reach
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    threading.Thread(target=lambda: server.accept(), daemon=True).start()

    from durabook_kernel.wire import socket_path

    project = tmp_path / "project"
    project.mkdir()
    store = home / "durabook.duckdb"
    body = "\n".join(
        [
            f"attempt('read_other_workdir', lambda: open({str(victim_dir / 'mine.txt')!r}).read())",
            f"attempt('list_other_workdir', lambda: os.listdir({str(victim_dir)!r}))",
            f"attempt('read_blob', lambda: open({str(blob)!r}, 'rb').read())",
            f"attempt('read_other_share', lambda: open({str(share_blob)!r}, 'rb').read())",
            f"attempt('list_home', lambda: os.listdir({str(home)!r}))",
            f"attempt('open_duckdb', lambda: open({str(store)!r}, 'rb').read(16))",
            f"import duckdb\nattempt('duckdb_connect', lambda: duckdb.connect({str(store)!r}))",
            "import socket\n"
            f"attempt('engine_socket', lambda: socket.socket(socket.AF_UNIX).connect("
            f"{str(socket_path(home))!r}))",
            "attempt('home_env', lambda: os.environ['DURABOOK_HOME'])",
            f"attempt('tcp_loopback', lambda: socket.create_connection(('127.0.0.1', {port}), 2))",
            "attempt('tcp_internet', lambda: socket.create_connection(('1.1.1.1', 53), 2))",
            f"attempt('write_notebook_dir', lambda: open({str(project / 'x.txt')!r}, 'w'))",
            "attempt('write_etc', lambda: open('/etc/durabook-was-here', 'w'))",
            "attempt('write_home_dir', lambda: open(os.path.expanduser('~/dbk-probe'), 'w'))",
            f"attempt('write_other_workdir', lambda: open({str(victim_dir / 'evil')!r}, 'w'))",
            "attempt('tmp_private', lambda: open('/tmp/durabook-sandbox-probe', 'w').write('x'))",
            "attempt('pid_namespace', lambda: sorted(int(p) for p in os.listdir('/proc') "
            "if p.isdigit()))",
            "attempt('own_folder', lambda: open('ok.txt', 'w').write('fine'))",
        ]
    )
    nb = write_nb(project / "attacker.ipynb", [_probe(body)])
    code, iid, err = _run(nb, "--sandbox")
    assert code == 0, err
    r = _results(home, iid)
    for what in (
        "read_other_workdir",
        "list_other_workdir",
        "read_blob",
        "read_other_share",
        "open_duckdb",
        "duckdb_connect",
        "engine_socket",
        "home_env",
        "tcp_loopback",
        "tcp_internet",
        "write_notebook_dir",
        "write_etc",
        "write_home_dir",
        "write_other_workdir",
    ):
        assert r[what]["ok"] is False, (what, r[what])
    assert r["list_home"]["ok"] and "durabook.duckdb" not in r["list_home"]["got"]
    assert r["tmp_private"]["ok"] and not Path("/tmp/durabook-sandbox-probe").exists()
    assert r["own_folder"]["ok"] and (home / "work" / iid / "ok.txt").exists()
    pids = json.loads(r["pid_namespace"]["got"])
    assert max(pids) < 100, pids  # its own pid namespace: a handful of processes
    assert not (victim_dir / "evil").exists() and not (project / "x.txt").exists()
    server.close()

    # --network lets it out
    code, iid, err = _run(nb, "--sandbox", "--network")
    assert code == 0, err
    assert _results(home, iid)["tcp_loopback"]["ok"] is True


@needs_bwrap
def test_a_fork_bomb_in_a_sandbox_is_ended(home: Path, tmp_path: Path) -> None:
    bomb = (
        "import os, time\n"
        "open('pids', 'w')\n"
        "while True:\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(120)\n"
        "            os._exit(0)\n"
        "    except OSError:\n"
        "        time.sleep(0.01)\n"
    )
    nb = write_nb(tmp_path / "bomb.ipynb", ["x = 1", bomb])
    code, iid, _err = _run(nb, "--sandbox")
    assert code == 1
    st = cli_json("status", iid)[1]
    assert st["failed_cell"] == 1
    assert st["error"]["ename"] == "ProcessLimitExceeded", st["error"]
    # nothing of it is left running: no process works in its folder any more
    workdir = str(home / "work" / iid)
    left = [p for p in os.listdir("/proc") if p.isdigit() and _cwd(p) == workdir]
    assert not left, left


def _cwd(pid: str) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


@needs_bwrap
def test_a_memory_bomb_in_a_sandbox_is_ended_and_named(home: Path, tmp_path: Path) -> None:
    bomb = "chunks = []\nwhile True:\n    chunks.append(bytearray(b'x' * (64 << 20)))"
    nb = write_nb(tmp_path / "mem.ipynb", ["x = 1", bomb])
    code, iid, _err = _run(nb, "--sandbox", "--memory", "400M")
    assert code == 1
    st = cli_json("status", iid)[1]
    assert st["error"]["ename"] == "MemoryLimitExceeded" and "400M" in st["error"]["evalue"]


@needs_bwrap
def test_filling_the_disk_from_a_sandbox_stops_at_its_limit(home: Path, tmp_path: Path) -> None:
    fill = (
        "i = 0\n"
        "while True:\n"
        "    with open(f'fill-{i}', 'wb') as f:\n"
        "        f.write(b'\\0' * (8 << 20))\n"
        "    i += 1\n"
    )
    one_big = "with open('big', 'wb') as f:\n    while True:\n        f.write(b'\\0' * (1 << 20))"
    tmp_fill = (
        "with open('/tmp/big', 'wb') as f:\n    while True:\n        f.write(b'\\0' * (1 << 20))"
    )
    nb = write_nb(tmp_path / "fill.ipynb", ["x = 1", one_big])
    env = {"DURABOOK_LIMITS": "disk=64M"}
    code, iid, _ = _run(nb, "--sandbox", env=env)
    assert code == 1
    st = cli_json("status", iid)[1]
    assert "File too large" in st["error"]["evalue"] or st["error"]["ename"] in (
        "OSError",
        "DiskLimitExceeded",
    ), st["error"]
    assert (home / "work" / iid / "big").stat().st_size <= 64 << 20

    nb = write_nb(tmp_path / "fill2.ipynb", ["x = 1", fill])
    code, iid, _ = _run(nb, "--sandbox", env=env)
    assert code == 1
    st = cli_json("status", iid)[1]
    assert st["error"]["ename"] == "DiskLimitExceeded", st["error"]
    used = sum(p.stat().st_size for p in (home / "work" / iid).iterdir())
    assert used < 64 * 20 << 20, used  # stopped soon after the limit, not at a full disk

    nb = write_nb(tmp_path / "fill3.ipynb", ["x = 1", tmp_fill])
    code, iid, _err = _run(nb, "--sandbox")
    assert code == 1
    st = cli_json("status", iid)[1]
    assert "No space left" in st["error"]["evalue"] or "too large" in st["error"]["evalue"]


@needs_bwrap
def test_a_notebook_beside_the_home_still_cannot_see_it(home: Path, tmp_path: Path) -> None:
    # the usual layout: ./.durabook beside the notebook; the notebook's folder is shown
    # read-only, and the home inside it stays hidden
    victim = write_nb(tmp_path / "v.ipynb", ["open('mine.txt', 'w').write('secret')"])
    code, vid, err = _run(victim, "--sandbox")
    assert code == 0, err
    (tmp_path / "data.csv").write_text("a,b\n")
    other = home / "work" / vid / "mine.txt"
    body = "\n".join(
        [
            f"attempt('list_home', lambda: os.listdir({str(home)!r}))",
            f"attempt('read_other', lambda: open({str(other)!r}).read())",
            f"attempt('own_data', lambda: open({str(tmp_path / 'data.csv')!r}).read())",
            f"attempt('write_beside', lambda: open({str(tmp_path / 'x')!r}, 'w'))",
        ]
    )
    nb = write_nb(tmp_path / "a.ipynb", [_probe(body)])
    code, iid, err = _run(nb, "--sandbox")
    assert code == 0, err
    r = _results(home, iid)
    # only the mount points of its own folders: no store, no other instance
    assert r["list_home"]["ok"] and "durabook.duckdb" not in r["list_home"]["got"]
    assert r["read_other"]["ok"] is False
    assert r["own_data"]["ok"] and "a,b" in r["own_data"]["got"]
    assert r["write_beside"]["ok"] is False


def test_a_tenant_cannot_opt_out_of_the_sandbox(home: Path, tmp_path: Path) -> None:
    from durabook import Client
    from durabook.errors import BadInput

    nb = write_nb(tmp_path / "t.ipynb", ["x = 1"])
    with pytest.raises(BadInput, match="always sandboxed"):
        Client(home).create(str(nb), tenant="acme", sandbox=False)


@needs_bwrap
def test_junk_in_the_blob_share_is_skipped_and_the_home_stays_usable(
    home: Path, tmp_path: Path
) -> None:
    digest = "ab" + "0" * 62
    junk = (
        "import os, hashlib\n"
        f"root = {str(home / 'sandbox')!r}\n"
        "mine = [os.path.join(root, d, 'blobs') for d in os.listdir(root)]\n"
        "for b in mine:\n"
        "    os.makedirs(os.path.join(b, 'zz'), exist_ok=True)\n"
        "    open(os.path.join(b, 'zz', 'not-a-digest'), 'w').write('x')\n"
        "    os.makedirs(os.path.join(b, 'ab'), exist_ok=True)\n"
        f"    os.mkfifo(os.path.join(b, 'ab', {digest!r}))\n"
        "    with open(os.path.join(b, 'ab', 'ab' + '1' * 62), 'wb') as f:\n"
        "        f.truncate(1 << 33)  # sparse, 8 GiB: never read whole\n"
        "    os.symlink('/etc/passwd', os.path.join(b, 'ab', 'ab' + '2' * 62))\n"
        "print(len(mine))"
    )
    nb = write_nb(tmp_path / "junk.ipynb", [junk, "y = 2"])
    code, _, err = _run(nb, "--sandbox")
    assert code == 0, err
    assert not (home / "blobs" / "ab" / digest).exists()
    assert not (home / "blobs" / "zz").exists()
    # the engine opens the home again, and runs the next notebook
    code, _, err = _run(write_nb(tmp_path / "next.ipynb", ["z = 3"]))
    assert code == 0, err
    assert cli("list").returncode == 0


@needs_bwrap
def test_an_interpreter_under_tmp_is_seen_by_the_sandboxed_kernel(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a fresh clone's virtual environment under /tmp (as CI's) must not vanish behind
    # the private /tmp: the import path under it is shown again, read-only
    from durabook.kernels import sandbox

    lib = tmp_path / "lib"
    lib.mkdir()
    home.mkdir()
    monkeypatch.setattr(sandbox.sys, "path", [*sandbox.sys.path, str(lib), str(home)])
    found = sandbox._python_folders(sandbox._hidden_folders(home))
    assert lib.resolve() in found
    assert home.resolve() not in found  # the home stays hidden
    args = sandbox.Sandbox(home, "x").command("bwrap", str(tmp_path), tmp_path / "j", None)
    assert args.index(str(lib.resolve())) < args.index(str(home.resolve()))
