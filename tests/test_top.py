"""`durabook top`: the running instances, their cell, CPU and memory, live."""

from __future__ import annotations

import time
from pathlib import Path

from .conftest import cli, cli_json, write_nb
from .processes import start_run

MIB = 1 << 20


def test_top_shows_the_running_cell_its_cpu_and_memory(home: Path, tmp_path: Path) -> None:
    nb = write_nb(
        tmp_path / "busy.ipynb",
        [
            "x = 1",
            "block = bytearray(b'x' * (200 * 2**20))\nimport time\nt = time.time()\n"
            "while time.time() - t < 6:\n    pass",
        ],
    )
    proc, iid = start_run(nb)
    try:
        row = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            code, reply = cli_json("top")
            rows = [k for k in (reply or {}).get("kernels", []) if k["id"] == iid]
            if code == 0 and rows and rows[0]["cell"] == 1 and rows[0]["rss_bytes"] > 200 * MIB:
                row = rows[0]
                break
            time.sleep(0.3)
        assert row is not None, reply
        assert row["cpu_s"] > 0 and row["processes"] >= 1 and row["notebook"].endswith("busy.ipynb")
        table = cli("top", "--once")
        assert table.returncode == 0
        assert iid in table.stdout and "CPU s" in table.stdout and "MEM MiB" in table.stdout
    finally:
        proc.wait(60)
    assert proc.returncode == 0
    # nothing runs now: the engine is gone, and top says so plainly
    table = cli("top", "--once")
    assert table.returncode == 0 and "no instance is running" in table.stdout
