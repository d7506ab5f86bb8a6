"""A running cell's output reaches followers as the kernel sends it (the run view's
live output and `GET /instances/{id}/stream`), including what the cell printed
before the follower came."""

from __future__ import annotations

import time
from pathlib import Path

from durabook.api.models import CreateRequest, IdRequest
from durabook.engine import Engine
from durabook.progress import LIVE_BACKLOG, Hub
from durabook.serve import start

from .conftest import write_nb


def test_a_late_follower_gets_the_running_cells_output_so_far() -> None:
    hub = Hub()
    hub.publish("a", {"event": "status", "status": "running"})
    hub.publish("a", {"event": "output", "index": 1, "output": {"text": "one"}})
    hub.publish("b", {"event": "output", "index": 0, "output": {"text": "other"}})
    with hub.subscribe("a") as sub:
        assert sub.drain() == [
            {"event": "output", "index": 1, "output": {"text": "one"}, "id": "a"}
        ]
        hub.publish("a", {"event": "output", "index": 1, "output": {"text": "two"}})
        assert [e["output"]["text"] for e in sub.drain()] == ["two"]
    hub.publish("a", {"event": "executed", "index": 1})  # the cell ended: nothing to replay
    with hub.subscribe("a") as sub:
        assert sub.drain() == []
    for i in range(LIVE_BACKLOG + 10):
        hub.publish("c", {"event": "output", "index": 0, "output": {"text": str(i)}})
    with hub.subscribe("c") as sub:
        replay = sub.drain()
        assert len(replay) == LIVE_BACKLOG and replay[-1]["output"]["text"] == str(LIVE_BACKLOG + 9)


def test_output_streams_while_the_cell_runs(home: Path, tmp_path: Path) -> None:
    flag = tmp_path / "printed"
    nb = write_nb(
        tmp_path / "live.ipynb",
        [
            "x = 1",
            f"print('tick 1', flush=True); open({str(flag)!r}, 'w').close()\n"
            "import time; time.sleep(3); print('tick 2')",
        ],
    )
    eng = Engine(home)
    served = start(eng)  # as `durabook serve` and JupyterLab run it: the dispatcher's runs
    try:
        svc = served.service
        svc.create(CreateRequest(notebook=str(nb), id="live1"))
        deadline = time.monotonic() + 60
        while not flag.exists():
            assert time.monotonic() < deadline, "the cell never printed"
            time.sleep(0.05)
        time.sleep(0.3)  # the stream message is on its way to the runner
        with eng.hub.subscribe("live1") as sub:
            first = sub.get(5)
            assert first is not None and first["event"] == "output", first
            assert first["index"] == 1 and first["output"]["text"] == "tick 1\n"
            assert svc.status(IdRequest(id="live1")).status.value == "running"
            later = []
            while (event := sub.get(10)) is not None and event["event"] != "executed":
                later.append(event)
            assert [e["output"]["text"] for e in later if e["event"] == "output"] == ["tick 2\n"]
        deadline = time.monotonic() + 60
        while svc.status(IdRequest(id="live1")).status.value != "completed":
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        served.close()
        eng.close()
