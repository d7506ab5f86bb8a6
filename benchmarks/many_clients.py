"""Many clients, one engine: throughput of `run` (submit and follow) with 2 and 50
clients at once.

Before the dispatcher, each connected client ran its instance in its own thread of
the engine, so 50 clients started 50 kernels at once on 2 cores and got half the
throughput of 2. Now every run goes through the queue: the engine executes
``--concurrency`` at a time however many clients wait, so throughput should not drop.

    python benchmarks/many_clients.py [--runs 50] [--clients 2,50] [--json-out PATH]

Prints one JSON object; exit status 0 when 50 clients get at least 0.8 times the
throughput of 2 (target ``many_vs_few``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench_common import check, write_notebook
from service import Serve, load

from durabook.api.models import CreateRequest


def throughput(home: Path, nb: Path, runs: int, clients: int) -> dict[str, Any]:
    """``runs`` instances, each created and followed by one of ``clients`` threads."""
    serve = Serve(home, home.parent / f"serve-{clients}.log", "--concurrency", "2", "--warm", "2")
    serve.wait_ready()
    todo = list(range(runs))
    lock = threading.Lock()
    statuses: list[str] = []

    def client() -> None:
        svc = serve.remote()
        try:
            while True:
                with lock:
                    if not todo:
                        return
                    todo.pop()
                res = svc.run(CreateRequest(notebook=str(nb)))
                with lock:
                    statuses.append(res.status.value)
        finally:
            svc.close()

    try:
        time.sleep(2.0)  # the warm kernels ready
        t0 = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    finally:
        serve.stop()
    return {
        "clients": clients,
        "runs": runs,
        "wall_s": round(wall, 2),
        "per_s": round(runs / wall, 2),
        "completed": statuses.count("completed"),
        "loadavg": load(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--clients", default="2,50")
    ap.add_argument("--json-out")
    args = ap.parse_args(argv)
    few, many = (int(c) for c in args.clients.split(","))
    with tempfile.TemporaryDirectory(prefix="durabook-many-") as tmp:
        work = Path(tmp)
        nb = write_notebook(work / "one.ipynb", ["x = 1"])
        a = throughput(work / "home-few", nb, args.runs, few)
        b = throughput(work / "home-many", nb, args.runs, many)
    ratio = b["per_s"] / a["per_s"] if a["per_s"] else 0.0
    out: dict[str, Any] = {
        "benchmark": "many_clients",
        "few": a,
        "many": b,
        "ratio_many_to_few": round(ratio, 2),
        "targets": {
            "many_vs_few": check(ratio >= 0.8, value=round(ratio, 2), limit=0.8, op=">="),
            "all_completed": check(a["completed"] == a["runs"] and b["completed"] == b["runs"]),
        },
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
    }
    out["pass"] = all(t["pass"] for t in out["targets"].values())
    text = json.dumps(out, indent=1)
    print(text)
    if args.json_out:
        Path(args.json_out).write_text(text)
    return 0 if out["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
