"""Kernels run within limits: memory, CPU seconds, processes, open files. A run sets
its own (`--memory 512M --cpu-seconds 600`, HTTP `limits`), a cell its own (`%%step
--memory`, cell metadata), all within the operator's maximums. A kernel over its
memory is ended and its cell fails with MemoryLimitExceeded naming the limit;
the instance resumes like after any failure."""

from __future__ import annotations

from pathlib import Path

import nbformat

from durabook import Client

from .conftest import cli, cli_json, outputs_text, write_nb

MIB = 1 << 20
HOG = "hog = bytearray(b'x' * ({mib} * 2**20))"  # touched, so resident


def _status(iid: str) -> dict:
    code, st = cli_json("status", iid)
    assert code == 0
    return st


def test_a_kernel_over_its_memory_fails_the_cell_clearly_and_resumes(
    home: Path, tmp_path: Path
) -> None:
    nb = write_nb(
        tmp_path / "hungry.ipynb",
        ["import os\nopen('ran.log', 'a').write('cell0\\n')", HOG.format(mib=600), "print('done')"],
    )
    run = cli("run", str(nb), "--memory", "300M", "-q")
    assert run.returncode == 1, run.stderr
    iid = run.stdout.split()[0]
    assert "MemoryLimitExceeded" in run.stderr and "300M" in run.stderr, run.stderr
    st = _status(iid)
    assert st["status"] == "failed" and st["failed_cell"] == 1
    assert st["error"]["ename"] == "MemoryLimitExceeded"
    assert "over its limit of 300M" in st["error"]["evalue"]
    assert st["limits"] == {"memory": 300 * MIB}
    # fix the cell, resume: cell 0 is not run again, the rest completes
    edited = nbformat.read(nb, as_version=4)
    edited.cells[1].source = HOG.format(mib=50)
    nbformat.write(edited, nb)
    res = cli("resume", iid, "--notebook", str(nb))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "ran.log").read_text() == "cell0\n"
    assert outputs_text(home / "outputs" / f"{iid}.ipynb")[2] == "done\n"


def test_a_cell_sets_its_own_memory_and_cpu_limits(home: Path, tmp_path: Path) -> None:
    nb = write_nb(
        tmp_path / "cells.ipynb",
        [
            "x = 1",
            "%%step --memory 150M\n" + HOG.format(mib=400),
        ],
    )
    run = cli("run", str(nb), "-q")
    assert run.returncode == 1
    st = _status(run.stdout.split()[0])
    assert st["failed_cell"] == 1 and st["error"]["ename"] == "MemoryLimitExceeded"
    assert "cell 1" in st["error"]["evalue"] and "150M" in st["error"]["evalue"]

    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 30:\n    pass"
    nb2 = write_nb(tmp_path / "cpu.ipynb", ["x = 1", busy])
    meta = nbformat.read(nb2, as_version=4)
    meta.cells[1].metadata["durabook"] = {"step": {"cpu_seconds": "1s"}}
    nbformat.write(meta, nb2)
    run = cli("run", str(nb2), "-q")
    assert run.returncode == 1
    st = _status(run.stdout.split()[0])
    assert st["failed_cell"] == 1 and st["error"]["ename"] == "CpuLimitExceeded"
    assert "1 CPU seconds" in st["error"]["evalue"]
    assert st["cells"][1]["duration_ms"] is None or st["cells"][1]["duration_ms"] < 20000


def test_the_run_cpu_seconds_limit_ends_a_busy_kernel(home: Path, tmp_path: Path) -> None:
    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 30:\n    pass"
    nb = write_nb(tmp_path / "busy.ipynb", ["x = 1", busy])
    run = cli("run", str(nb), "--cpu-seconds", "2", "-q")
    assert run.returncode == 1
    st = _status(run.stdout.split()[0])
    assert st["error"]["ename"] == "CpuLimitExceeded", st["error"]
    assert st["failed_cell"] == 1


def test_limits_above_the_operators_maximum_are_refused(home: Path, tmp_path: Path) -> None:
    env = {"DURABOOK_MAX_LIMITS": "memory=1G,cpu_seconds=10m"}
    nb = write_nb(tmp_path / "n.ipynb", ["x = 1"])
    run = cli("run", str(nb), "--memory", "2G", env=env)
    assert run.returncode == 2
    assert "memory 2G, over the operator's maximum of 1G" in run.stderr, run.stderr
    run = cli("submit", str(nb), "--cpu-seconds", "1h", env=env)
    assert run.returncode == 2 and "cpu-seconds" in run.stderr
    greedy = write_nb(tmp_path / "g.ipynb", ["%%step --memory 4G\nx = 1"])
    run = cli("run", str(greedy), env=env)
    assert run.returncode == 2 and "cell 0" in run.stderr and "1G" in run.stderr
    bad = cli("run", str(nb), "--memory", "lots")
    assert bad.returncode == 2 and "not a size" in bad.stderr
    # within the maximum it runs
    assert cli("run", str(nb), "--memory", "512M", "-q", env=env).returncode == 0


def test_processes_and_open_files_are_limited_by_default(home: Path, tmp_path: Path) -> None:
    nb = write_nb(
        tmp_path / "many.ipynb",
        [
            "import resource\nprint(resource.getrlimit(resource.RLIMIT_NOFILE))",
            "import os\nfiles = []\ntry:\n    for i in range(10000):\n"
            "        files.append(open(os.devnull))\nexcept OSError as e:\n"
            "    print('stopped at', len(files), type(e).__name__)\nfor f in files:\n    f.close()",
            # a bounded fork bomb: 400 sleepers, over the default 256 processes
            "import os, time\nkids = []\nfor i in range(400):\n    pid = os.fork()\n"
            "    if pid == 0:\n        time.sleep(60)\n        os._exit(0)\n    kids.append(pid)\n"
            "time.sleep(5)",
        ],
    )
    run = cli("run", str(nb), "-q")
    assert run.returncode == 1
    iid = run.stdout.split()[0]
    texts = outputs_text(home / "outputs" / f"{iid}.ipynb")
    assert "(4096, 4096)" in texts[0]
    assert "stopped at" in texts[1] and "OSError" in texts[1]
    st = _status(iid)
    assert st["failed_cell"] == 2
    # as root the watchdog ends it; as another user the kernel's rlimit refuses forks
    assert st["error"]["ename"] in ("ProcessLimitExceeded", "BlockingIOError"), st["error"]


def test_limits_through_the_python_api_and_http_fields(home: Path, tmp_path: Path) -> None:
    nb = write_nb(tmp_path / "api.ipynb", [HOG.format(mib=400)])
    client = Client(home)
    res = client.run(str(nb), limits={"memory": "200M"})
    assert res.status.value == "failed"
    assert res.error is not None and res.error.ename == "MemoryLimitExceeded"
    from durabook.api.openapi import cached_document

    body = cached_document("/api")["components"]["schemas"]["CreateBody"]["properties"]
    assert {"limits", "sandbox", "network"} <= set(body)


def test_cpu_burnt_in_short_lived_children_counts(home: Path, tmp_path: Path) -> None:
    burn = (
        "import subprocess, sys\n"
        "for i in range(4):  # each child exits before the next: only waited-for CPU shows\n"
        "    subprocess.run([sys.executable, '-c', 'import time\\nt = time.process_time()\\n"
        "while time.process_time() - t < 1.2:\\n    pass'])"
    )
    nb = write_nb(tmp_path / "kids.ipynb", ["x = 1", burn])
    run = cli("run", str(nb), "--cpu-seconds", "2", "-q")
    assert run.returncode == 1, run.stderr
    st = _status(run.stdout.split()[0])
    assert st["error"]["ename"] == "CpuLimitExceeded", st["error"]


def test_forked_workers_sharing_memory_are_not_counted_twice(home: Path, tmp_path: Path) -> None:
    fork = (
        "import os, time\n"
        "kids = []\n"
        "for i in range(3):  # three workers sharing the parent's 300 MiB, copy on write\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        time.sleep(1.5)\n"
        "        os._exit(0)\n"
        "    kids.append(pid)\n"
        "for pid in kids:\n"
        "    os.waitpid(pid, 0)"
    )
    nb = write_nb(tmp_path / "cow.ipynb", [HOG.format(mib=300), fork])
    run = cli("run", str(nb), "--memory", "700M", "-q")
    assert run.returncode == 0, run.stderr
