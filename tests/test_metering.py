"""Every cell's CPU time and peak memory are recorded with its step and shown by
`durabook status` (fields ``cpu_s`` and ``peak_rss_bytes`` of each cell in --json)."""

from __future__ import annotations

from pathlib import Path

from .conftest import cli, cli_json, write_nb

MIB = 1 << 20


def test_each_cell_reports_its_own_cpu_and_peak_memory(home: Path, tmp_path: Path) -> None:
    nb = write_nb(
        tmp_path / "costly.ipynb",
        [
            "import time",
            # about 0.6 s of CPU
            "t = time.process_time()\nwhile time.process_time() - t < 0.6:\n    pass",
            # 300 MiB touched, then freed: the cell's peak, not the kernel's now
            "block = bytearray(300 * 2**20)\nfor i in range(0, len(block), 4096):\n"
            "    block[i] = 1\ndel block",
            "x = 1",
        ],
    )
    run = cli("run", str(nb))
    assert run.returncode == 0, run.stderr
    iid = run.stdout.split()[0]
    code, status = cli_json("status", iid)
    assert code == 0
    cells = {c["index"]: c for c in status["cells"]}
    for c in cells.values():
        assert c["cpu_s"] is not None and c["cpu_s"] >= 0
        assert c["peak_rss_bytes"] is not None and c["peak_rss_bytes"] > 10 * MIB
        assert c["history"][-1]["cpu_s"] == c["cpu_s"]
    burn, alloc, small = cells[1], cells[2], cells[3]
    assert burn["cpu_s"] >= 0.5, burn
    assert small["cpu_s"] < 0.3, small
    assert alloc["peak_rss_bytes"] >= 300 * MIB, alloc
    # the peak is reset before each cell: the next one does not inherit 300 MiB
    assert small["peak_rss_bytes"] < alloc["peak_rss_bytes"] - 200 * MIB, (small, alloc)
    text = cli("status", iid).stdout
    assert " s cpu " in text and "MiB" in text
