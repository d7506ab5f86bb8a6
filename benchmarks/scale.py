"""Scale: 100,000 instances waiting for events in one engine, event-to-next-cell latency
among them, and completed trivial instances per second against papermill.

Sections (``--sections``), each against a real ``durabook serve`` subprocess:

``waiting``: one real instance run by an embedded engine until it is ``waiting`` (cell 0
commits a step, cell 1 is ``durabook.wait_for_event("go")``), then every row the store
holds for it (``instances`` by id, and each table with an ``instance_id`` column:
``steps``, ``events``, ``notifications``) cloned ``--waiting`` times with new ids by one
``INSERT ... SELECT ... FROM t, range(N)`` per table while no engine runs (``cloned``:
true in the report). ``durabook serve --home H`` then holds them: its RSS once idle, the
store's size per instance. A random ``--sample`` of the clones is woken one at a time
with a real event (``Client.send_event``); each must run to ``completed``. Latency:
cell 2's first statement is ``t = time.time()``, written to a file named by the event's
payload; latency = that time minus ``time.time()`` taken just before ``send_event``
(one machine, one clock).

``throughput``: ``durabook serve --warm 8`` takes ``--instances`` trivial 5-cell
instances submitted as fast as possible (``Client.create`` in a loop); completions per
second from the first submit to the last completion (the instances' ``updated_at``).
Then papermill on the same notebook in ``ProcessPoolExecutor(2)`` (after a warm-up of
both workers) for ``--papermill-n`` notebooks.

Prints one JSON object; exit status 0 when every entry of ``targets`` passes.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb
from bench_common import check, target, write_notebook
from service import Serve, finish_report, idle_cpu, load, proc_status

import durabook
from durabook.models import Status

RSS_MAX_BYTES = 1 << 30
EVENT_P50_MS_MAX = 50.0
EVENT_P95_MS_MAX = 150.0
PER_S_MIN = 50.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
SECTIONS = ("waiting", "throughput")

WAIT_CELLS = [
    "import time\nimport durabook\nsetup = {'ready': True, 'items': list(range(10))}",
    'ev = durabook.wait_for_event("go")',
    # the first statement of the cell after the wait: when it started, by the kernel's clock
    "t_next = time.time()\nwith open(f'stamp-{ev}.txt', 'w') as fh:\n    fh.write(repr(t_next))",
    "done = setup['ready']",
]
TRIVIAL_CELLS = ["a = 1", "b = a + 1", "c = b * 2", "d = [a, b, c]", "e = sum(d)"]


def trivial_cells(n: int) -> list[str]:
    """The 5 trivial cells, repeated or cut to ``n``."""
    return [f"{TRIVIAL_CELLS[i % 5]}\nv{i} = {i}" if i >= 5 else TRIVIAL_CELLS[i] for i in range(n)]


# -- helpers --------------------------------------------------------------------------
def pct(values: list[float], q: float, nd: int = 1) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100)."""
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, max(0, round(q / 100 * len(s) + 0.5) - 1))], nd)


def kib(text: str) -> int:
    """Bytes from a /proc status value such as '123456 kB'."""
    return int(text.split()[0]) * 1024 if text else 0


def tree_rss(pid: int) -> dict[str, Any]:
    """RSS of a process and all its descendants (the zygote, warm kernels)."""
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(b")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(d.name))
    todo, seen, total = [pid], 0, 0
    while todo:
        p = todo.pop()
        try:
            total += kib(proc_status(p, "VmRSS"))
        except OSError:
            continue
        seen += 1
        todo.extend(kids.get(p, ()))
    return {"processes": seen, "rss_bytes": total}


def ticks(pid: int) -> tuple[float, float]:
    """CPU seconds of a process (utime + stime) and of its reaped children."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        f = fh.read().rsplit(b")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / CLK_TCK, (int(f[13]) + int(f[14])) / CLK_TCK


def zygote_of(pid: int) -> int | None:
    """The serve's kernel zygote (``python -m durabook_kernel.zygote``), if it runs."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_bytes().rsplit(b")", 1)[1].split()[1])
            if ppid == pid and b"durabook_kernel.zygote" in (d / "cmdline").read_bytes():
                return int(d.name)
        except (OSError, ValueError, IndexError):
            continue
    return None


class CpuMeter:
    """CPU seconds used between two reads by the serve, the zygote, the kernels (the
    zygote's reaped children: every kernel that exited meanwhile) and this process."""

    def __init__(self, serve_pid: int) -> None:
        self.serve, self.zygote = serve_pid, zygote_of(serve_pid)
        self.start = self._read()

    def _read(self) -> dict[str, float]:
        me = os.times()
        got = {"serve": ticks(self.serve)[0], "client": me.user + me.system}
        if self.zygote is not None:
            z_self, z_children = ticks(self.zygote)
            got.update(zygote=z_self, kernels=z_children)
        return got

    def used(self, instances: int, span: float) -> dict[str, Any]:
        end = self._read()
        cpu = {k: end[k] - self.start[k] for k in end}
        total = sum(cpu.values())
        return {
            "how": "utime+stime from /proc over the window: the serve process, the zygote, "
            "the kernels (the zygote's reaped children), this client process",
            "cpu_s": {k: round(v, 2) for k, v in cpu.items()},
            "cpu_ms_per_instance": {k: round(v / instances * 1e3, 1) for k, v in cpu.items()},
            "total_cpu_ms_per_instance": round(total / instances * 1e3, 1),
            "cores_busy": round(total / span, 2) if span > 0 else None,
            "cpu_bound_per_s_on_this_machine": round((os.cpu_count() or 1) * instances / total, 1)
            if total > 0
            else None,
            # the rate the cores would allow if the engine (serve and client) cost nothing:
            # the kernels and their zygote alone
            "kernel_bound_per_s_on_this_machine": round(
                (os.cpu_count() or 1) * instances / (cpu["kernels"] + cpu["zygote"]), 1
            )
            if cpu.get("kernels")
            else None,
        }


def folder_bytes(path: Path) -> tuple[int, int]:
    """(bytes, files) under a folder."""
    size = files = 0
    for p in path.rglob("*"):
        if p.is_file():
            size += p.stat().st_size
            files += 1
    return size, files


def mib(n: float) -> float:
    return round(n / (1 << 20), 1)


# -- waiting: make one, clone it, hold them, wake a sample -----------------------------
def make_waiting(home: Path, nb: Path) -> str:
    from durabook.api.models import CreateRequest
    from durabook.api.service import Service
    from durabook.engine import Engine

    with Engine(home, pool_size=1) as eng:
        res = Service(eng).run(CreateRequest(notebook=str(nb)))
    if res.status != Status.WAITING:
        raise RuntimeError(f"the template instance is {res.status.value}, not waiting")
    return res.id


def id_width(n: int) -> int:
    return max(7, len(str(n - 1)))


def clone_id(i: int, n: int) -> str:
    return f"clone-{i:0{id_width(n)}d}"


def clone(db: Path, orig: str, n: int) -> dict[str, Any]:
    """Every row of ``orig`` cloned ``n`` times with new ids (``clone_id``), in SQL:
    one INSERT ... SELECT per table. Every VARCHAR column has the original id replaced by
    the new one (the output path, the journal name, step record ids)."""
    con = duckdb.connect(str(db))
    try:
        cols: dict[str, list[tuple[str, str]]] = {}
        for table, col, dtype in con.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'main' ORDER BY table_name, ordinal_position"
        ).fetchall():
            cols.setdefault(table, []).append((col, dtype))
        new_id = f"('clone-' || lpad(CAST(r.i AS VARCHAR), {id_width(n)}, '0'))"
        plan = {t: "id" for t in cols if t == "instances"}
        plan.update(
            {t: "instance_id" for t, cs in cols.items() if ("instance_id", "VARCHAR") in cs}
        )
        per_table: dict[str, Any] = {}
        t0 = time.perf_counter()
        con.execute("BEGIN")
        for table, key in plan.items():
            exprs = []
            for col, dtype in cols[table]:
                if col == key:
                    exprs.append(new_id)
                elif dtype == "VARCHAR":
                    exprs.append(f"replace({col}, $orig, {new_id})")
                else:
                    exprs.append(col)
            names = ", ".join(c for c, _ in cols[table])
            src = con.execute(f"SELECT count(*) FROM {table} WHERE {key} = $orig", {"orig": orig})
            rows = int((src.fetchone() or [0])[0])
            t = time.perf_counter()
            con.execute(
                f"INSERT INTO {table} ({names}) SELECT {', '.join(exprs)} "
                f"FROM {table}, range($n) r(i) WHERE {key} = $orig",
                {"orig": orig, "n": n},
            )
            per_table[table] = {
                "rows_per_instance": rows,
                "rows_inserted": rows * n,
                "s": round(time.perf_counter() - t, 2),
            }
        con.execute("COMMIT")
        con.execute("CHECKPOINT")
        total_s = time.perf_counter() - t0
        waiting = int(
            (
                con.execute(
                    "SELECT count(*) FROM instances WHERE status = 'waiting' AND waiting_for = 'go'"
                ).fetchone()
                or [0]
            )[0]
        )
    finally:
        con.close()
    return {"tables": per_table, "clone_s": round(total_s, 2), "waiting_instances": waiting}


def store_size(home: Path, instances: int) -> dict[str, Any]:
    db = home / "durabook.duckdb"
    wal = home / "durabook.duckdb.wal"
    db_bytes = db.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    blobs, blob_files = folder_bytes(home / "blobs")
    outputs, _ = folder_bytes(home / "outputs")
    return {
        "instances": instances,
        "duckdb_bytes": db_bytes,
        "blobs_bytes": blobs,
        "blob_files": blob_files,
        "outputs_bytes": outputs,
        "bytes_per_instance": round((db_bytes + blobs) / instances, 1),
    }


def wake_one(
    client: durabook.Client, iid: str, stamps: Path, timeout: float = 60.0
) -> dict[str, Any]:
    stamp = stamps / f"stamp-{iid}.txt"
    t_send = time.time()
    st = client.send_event(iid, "go", iid)
    t_sent = time.time()
    deadline = time.monotonic() + timeout
    while not stamp.exists() or not stamp.stat().st_size:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{iid}: no stamp {timeout} s after its event ({st.status.value})")
        time.sleep(0.002)
    t_next = float(stamp.read_text())
    res = client.wait(iid, timeout=timeout)
    status = client.status(iid)
    started = status.cells[2].started_at if len(status.cells) > 2 else None
    return {
        "id": iid,
        "status": res.status.value,
        "event_to_next_cell_ms": (t_next - t_send) * 1e3,
        "event_to_started_at_ms": (started.timestamp() - t_send) * 1e3 if started else None,
        "send_event_call_ms": (t_sent - t_send) * 1e3,
    }


def run_waiting(work: Path, nb: Path, args: argparse.Namespace, out: dict[str, Any]) -> None:
    home = work / "home-wait"
    t = time.perf_counter()
    orig = make_waiting(home, nb)
    template_s = time.perf_counter() - t
    cloned = clone(home / "durabook.duckdb", orig, args.waiting)
    total = args.waiting + 1
    size = store_size(home, total)
    serve_args = ["--warm", str(args.wait_warm)] if args.wait_warm is not None else []
    serve = Serve(home, work / "serve-wait.log", *serve_args)
    samples: list[dict[str, Any]] = []
    try:
        ready_s = serve.wait_ready()
        time.sleep(args.settle)  # its pool fills, start-up garbage is collected
        pid = serve.proc.pid
        idle = idle_cpu(pid, args.idle_seconds)
        rss_idle: dict[str, Any] = {
            "VmRSS_bytes": kib(proc_status(pid, "VmRSS")),
            "VmHWM_bytes": kib(proc_status(pid, "VmHWM")),
            "threads": int(proc_status(pid, "Threads") or 0),
            "with_children": tree_rss(pid),
        }
        client = durabook.Client(home)
        try:
            if client.status(orig).status != Status.WAITING:
                raise RuntimeError(f"the template {orig} is not waiting under serve")
            warm = wake_one(client, orig, nb.parent)  # the template: warm-up, not counted
            rng = random.Random(args.seed)
            for i in rng.sample(range(args.waiting), min(args.sample, args.waiting)):
                time.sleep(args.gap)  # the pool refills
                samples.append(wake_one(client, clone_id(i, args.waiting), nb.parent))
        finally:
            client.close()
        rss_after: dict[str, Any] = {
            "VmRSS_bytes": kib(proc_status(pid, "VmRSS")),
            "VmHWM_bytes": kib(proc_status(pid, "VmHWM")),
        }
    finally:
        serve.stop()
    con = duckdb.connect(str(home / "durabook.duckdb"), read_only=True)
    try:
        by_status = dict(
            con.execute("SELECT status, count(*) FROM instances GROUP BY 1").fetchall()
        )
    finally:
        con.close()
    lat = [s["event_to_next_cell_ms"] for s in samples]
    started = [s["event_to_started_at_ms"] for s in samples if s["event_to_started_at_ms"]]
    completed = sum(1 for s in samples if s["status"] == Status.COMPLETED.value)
    out["waiting"] = {
        "how": "one real instance run to wait_for_event by an embedded engine, its rows "
        "cloned in SQL with new ids while no engine ran; then `durabook serve --home H` "
        + (f"--warm {args.wait_warm}" if args.wait_warm is not None else "(default --warm)"),
        "cloned": True,
        "template_id": orig,
        "template_run_s": round(template_s, 2),
        **cloned,
        "store": size,
        "serve_ready_s": round(ready_s, 3),
        "idle": {"settle_s": args.settle, **idle},
        "rss_idle": {
            **rss_idle,
            "VmRSS_mib": mib(rss_idle["VmRSS_bytes"]),
            "VmHWM_mib": mib(rss_idle["VmHWM_bytes"]),
        },
        "rss_after_sample": {
            **rss_after,
            "VmRSS_mib": mib(rss_after["VmRSS_bytes"]),
            "VmHWM_mib": mib(rss_after["VmHWM_bytes"]),
        },
        "sample": {
            "n": len(samples),
            "seed": args.seed,
            "gap_s": args.gap,
            "completed": completed,
            "statuses_after": by_status,
        },
        "event_latency": {
            "how": "time.time() just before Client.send_event(id, 'go', id) to the first "
            "statement of the cell after the wait (t = time.time() in the kernel, written to "
            "a file named by the event's payload); one at a time, --gap apart",
            "p50_ms": pct(lat, 50),
            "p95_ms": pct(lat, 95),
            "max_ms": pct(lat, 100),
            "min_ms": pct(lat, 0),
            "started_at_p50_ms": pct(started, 50),
            "started_at_p95_ms": pct(started, 95),
            "send_event_call_p50_ms": pct([s["send_event_call_ms"] for s in samples], 50),
            "warmup_ms": round(warm["event_to_next_cell_ms"], 1),
            "samples_ms": [round(x, 1) for x in lat],
        },
        "loadavg": load(),
    }


# -- throughput: durabook serve against papermill in two processes ---------------------
def run_durabook_tp(work: Path, nb: Path, args: argparse.Namespace, out: dict[str, Any]) -> None:
    home = work / "home-tp"
    extra = ["--concurrency", str(args.concurrency)] if args.concurrency else []
    serve = Serve(home, work / "serve-tp.log", "--warm", str(args.warm), *extra)
    try:
        serve.wait_ready()
        client = durabook.Client(home)
        try:
            ref = client.create(nb)  # warm-up: a connection, the notebook parsed, the pool
            if client.wait(ref.id, timeout=60).status != Status.COMPLETED:
                raise RuntimeError("the warm-up instance did not complete")
            time.sleep(args.settle)
            ids: list[str] = []
            meter = CpuMeter(serve.proc.pid)
            t_first = time.time()
            for _ in range(args.instances):
                ids.append(client.create(nb).id)
            t_submitted = time.time()
            deadline = time.monotonic() + args.timeout
            with client.engine() as svc:
                while True:
                    h = svc.health()
                    if not h.queued and not h.running:
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"not done in {args.timeout} s: {h}")
                    time.sleep(0.02)
            t_seen = time.time()
            cpu = meter.used(args.instances, t_seen - t_first)
            mine = set(ids)
            items = [i for i in client.list(limit=args.instances + 10) if i.id in mine]
        finally:
            client.close()
        rss = kib(proc_status(serve.proc.pid, "VmHWM"))
    finally:
        serve.stop()
    done = [i for i in items if i.status == Status.COMPLETED]
    last = max((i.updated_at.timestamp() for i in done), default=t_seen)
    span = last - t_first
    ends = sorted(i.updated_at.timestamp() - t_first for i in done)
    out["durabook"] = {
        "how": f"durabook serve --warm {args.warm}"
        + (f" --concurrency {args.concurrency}" if args.concurrency else " (concurrency: cores)")
        + f"; {args.instances} Client.create calls in a loop, after one warm-up instance; "
        "span = first submit to the last instance's updated_at (completed)",
        "instances": args.instances,
        "completed": len(done),
        "statuses": sorted({i.status.value for i in items}),
        "submit_s": round(t_submitted - t_first, 3),
        "submits_per_s": round(args.instances / (t_submitted - t_first), 1),
        "span_s": round(span, 3),
        "per_s": round(len(done) / span, 2) if span > 0 else None,
        "steady_per_s_middle_80pct": _middle_rate(ends),
        "serve_VmHWM_mib": mib(rss),
        "cpu": cpu,
        "loadavg": load(),
    }


def _middle_rate(ends: list[float]) -> float | None:
    """Completions per second between the 10th and the 90th percentile completion."""
    if len(ends) < 10:
        return None
    a, b = ends[len(ends) // 10], ends[(len(ends) * 9) // 10]
    return round((len(ends) * 8 // 10) / (b - a), 2) if b > a else None


def _pm_warm() -> int:
    import papermill  # noqa: F401

    time.sleep(0.5)  # the other warm-up lands on the other worker
    return os.getpid()


def _pm_run(src: str, dst: str) -> float:
    import papermill

    t = time.perf_counter()
    papermill.execute_notebook(src, dst, kernel_name="python3", progress_bar=False)
    return time.perf_counter() - t


def run_papermill_tp(work: Path, nb: Path, args: argparse.Namespace, out: dict[str, Any]) -> None:
    folder = work / "pm-out"
    folder.mkdir()
    ctx = multiprocessing.get_context("spawn")  # no fork of this threaded process
    with cf.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        pids = {f.result() for f in [ex.submit(_pm_warm) for _ in range(2)]}
        warm = [ex.submit(_pm_run, str(nb), str(folder / f"w{i}.ipynb")) for i in range(2)]
        for f in warm:
            f.result()
        t0 = time.time()
        futs = [
            ex.submit(_pm_run, str(nb), str(folder / f"run{i}.ipynb"))
            for i in range(args.papermill_n)
        ]
        each = [f.result() for f in futs]
        span = time.time() - t0
    out["papermill"] = {
        "how": "ProcessPoolExecutor(2) (spawn) calling papermill.execute_notebook, both "
        "workers warmed up (papermill imported, one notebook each)",
        "workers": len(pids),
        "notebooks": args.papermill_n,
        "span_s": round(span, 3),
        "per_s": round(args.papermill_n / span, 2),
        "each_median_s": round(statistics.median(each), 3),
        "loadavg": load(),
    }


def run_throughput(work: Path, nb: Path, args: argparse.Namespace, out: dict[str, Any]) -> None:
    res: dict[str, Any] = {"notebook": f"{args.cells} trivial code cells"}
    run_durabook_tp(work, nb, args, res)
    run_papermill_tp(work, nb, args, res)
    d, p = res["durabook"]["per_s"], res["papermill"]["per_s"]
    res["durabook_over_papermill"] = round(d / p, 1) if d and p else None
    out["throughput"] = res


# -- report ---------------------------------------------------------------------------
def targets(out: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    t: dict[str, Any] = {}
    if "waiting" in out:
        w = out["waiting"]
        t["rss_idle_bytes"] = target(
            w["rss_idle"]["VmRSS_bytes"], RSS_MAX_BYTES, "<=", waiting=w["waiting_instances"]
        )
        t["all_clones_waiting"] = check(w["waiting_instances"] == args.waiting + 1)
        t["sample_completed"] = check(
            w["sample"]["completed"] == min(args.sample, args.waiting) and w["sample"]["n"] > 0,
            completed=w["sample"]["completed"],
        )
        lat = w["event_latency"]
        t["event_latency_p50_ms"] = target(lat["p50_ms"], EVENT_P50_MS_MAX, "<=")
        t["event_latency_p95_ms"] = target(lat["p95_ms"], EVENT_P95_MS_MAX, "<=")
    if "throughput" in out:
        d = out["throughput"]["durabook"]
        t["completed_per_s"] = target(d["per_s"], PER_S_MIN, ">=")
        t["throughput_all_completed"] = check(d["completed"] == args.instances)
    return t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset")
    ap.add_argument("--waiting", type=int, default=100_000, help="cloned waiting instances")
    ap.add_argument("--sample", type=int, default=100, help="clones woken by an event")
    ap.add_argument("--seed", type=int, default=1, help="of the sample")
    ap.add_argument("--gap", type=float, default=0.3, help="seconds between woken instances")
    ap.add_argument("--wait-warm", type=int, help="serve --warm for the waiting section")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds after serve is up")
    ap.add_argument("--idle-seconds", type=float, default=5.0, help="idle CPU sampled")
    ap.add_argument("--instances", type=int, default=300, help="throughput: instances")
    ap.add_argument("--warm", type=int, default=8, help="throughput: serve --warm")
    ap.add_argument("--cells", type=int, default=5, help="throughput: cells per notebook")
    ap.add_argument("--concurrency", type=int, help="throughput: serve --concurrency")
    ap.add_argument("--papermill-n", type=int, default=20, help="throughput: papermill runs")
    ap.add_argument("--timeout", type=float, default=300.0, help="throughput: give up after")
    ap.add_argument("--quick", action="store_true", help="10,000 waiting, 30 woken, 100 runs")
    ap.add_argument("--json-out", type=Path, help="also write the JSON report to this file")
    args = ap.parse_args(argv)
    args.sections = [s for s in args.sections.split(",") if s]
    if bad := set(args.sections) - set(SECTIONS):
        ap.error(f"unknown sections {sorted(bad)}; of {', '.join(SECTIONS)}")
    if args.quick:
        args.waiting, args.sample, args.instances, args.papermill_n = 10_000, 30, 100, 8
        args.idle_seconds = 2.0
    if min(args.waiting, args.sample, args.instances, args.cells, args.papermill_n) < 1:
        ap.error("--waiting, --sample, --instances, --cells and --papermill-n must be >= 1")
    work = Path(tempfile.mkdtemp(prefix="durabook-bench-scale-"))
    out: dict[str, Any] = {"benchmark": "scale"}
    started, load0 = time.perf_counter(), load()
    try:
        if "waiting" in args.sections:
            (work / "wait").mkdir()
            nb = write_notebook(work / "wait" / "wait.ipynb", WAIT_CELLS)
            run_waiting(work, nb, args, out)
        if "throughput" in args.sections:
            (work / "tp").mkdir()
            nb = write_notebook(work / "tp" / "trivial.ipynb", trivial_cells(args.cells))
            run_throughput(work, nb, args, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out["targets"] = targets(out, args)
    return finish_report(out, args, load0, started, ("json_out",))


if __name__ == "__main__":
    sys.exit(main())
