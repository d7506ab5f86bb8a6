"""Fresh kernels per second and acquisition latency, against cold starts and papermill.

Sections, all in one run (see benchmarks/README.md):

1. ``handout``: ``KernelPool(size=N)`` with its zygote; each ``acquire()`` is timed with
   the pool full (it refills, and is waited for, between acquisitions), so this is the
   handout alone; the kernel is closed after the timing. ``fork``: what one zygote start
   costs, ``KernelProcess.fork`` (fork, kernel init, kernel_info answered) called directly.
2. ``sustained``: ``acquire()`` as fast as possible for ``--seconds``, each kernel closed
   at once (in this loop); a kernel counts when ``acquire`` returns it, i.e. its
   kernel_info was answered and its IOPub idle seen.
3. ``cold``: a new interpreter per kernel, ``KernelProcess.start`` and jupyter_client's
   ``KernelManager.start_kernel`` + ``wait_for_ready``: latency and starts per second.
4. ``papermill_inprocess``: ``papermill.execute_notebook`` of a 1-cell notebook.
5. ``run_subprocess``: ``durabook --home H run nb.ipynb -q`` (a 3-cell notebook) as a
   subprocess, start to exit, with ``durabook serve --home H --warm 4`` up, against
   ``papermill nb.ipynb out.ipynb`` as a subprocess; medians and their ratio.

Prints one JSON object; exit status 0 when every entry of ``targets`` passes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import papermill
from bench_common import rounded, target, write_notebook
from jupyter_client import KernelManager
from service import Serve, finish_report, load

from durabook.kernels.pool import KernelPool, KernelProcess

HANDOUT_P50_MS_MAX = 5.0
FRESH_PER_S_MIN = 20.0
RUN_RATIO_MIN = 5.0
VENV_BIN = Path(sys.executable).parent


def pct(values: list[float], q: float, nd: int = 3) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100)."""
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, max(0, round(q / 100 * len(s) + 0.5) - 1))], nd)


def summary_ms(seconds: list[float]) -> dict[str, Any]:
    ms = [s * 1e3 for s in seconds]
    return {
        "n": len(ms),
        "p50_ms": pct(ms, 50),
        "p95_ms": pct(ms, 95),
        "max_ms": pct(ms, 100),
        "mean_ms": rounded(statistics.fmean(ms)) if ms else None,
    }


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    got = fn()
    return time.perf_counter() - t, got


def cpu_now(zygote_pid: int) -> dict[str, float]:
    """CPU seconds so far of this process, the zygote and its reaped children (kernels)."""
    with open(f"/proc/{zygote_pid}/stat", "rb") as fh:
        f = fh.read().rsplit(b")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    me = os.times()
    return {
        "pool_process": me.user + me.system,
        "zygote": (int(f[11]) + int(f[12])) / tck,
        "kernels": (int(f[13]) + int(f[14])) / tck,
    }


# -- 1 and 2: the pool ----------------------------------------------------------------
def run_pool(args: argparse.Namespace, out: dict[str, Any]) -> None:
    t0 = time.perf_counter()
    pool = KernelPool(size=args.pool_size, idle_s=None)
    try:
        if not pool.wait_ready(120):
            raise RuntimeError(f"the pool did not fill: zygote in use: {pool.use_zygote}")
        first_fill = time.perf_counter() - t0
        zygote = pool.zygote()
        if zygote is None:
            raise RuntimeError("no zygote: the pool fell back to cold starts")
        out["pool"] = {
            "size": args.pool_size,
            "refill": pool.refill,
            "zygote_pid": zygote.pid,
            "zygote_modules": zygote.modules,
            "first_fill_s": round(first_fill, 3),
        }
        # 1. handout: the pool full before each acquire, nothing starting meanwhile
        hand, close = [], []
        for _ in range(args.handout_n):
            if not pool.wait_ready(60):
                raise RuntimeError("the pool did not refill within 60 s")
            dt, k = timed(pool.acquire)
            hand.append(dt)
            close.append(timed(k.close)[0])
        out["handout"] = {
            "how": "acquire() with the pool full, the pool refilled and waited for between "
            "acquisitions; each kernel closed after the timing",
            **summary_ms(hand),
            "close_p50_ms": pct([c * 1e3 for c in close], 50),
            "loadavg": load(),
        }
        # the start a refill pays: fork from the zygote to kernel_info answered
        pool.wait_ready(60)
        forks = []
        for _ in range(args.fork_n):
            dt, k = timed(lambda: KernelProcess.fork(zygote))
            forks.append(dt)
            k.close()
        out["fork"] = {
            "how": "KernelProcess.fork(zygote) called directly, one at a time: fork, kernel "
            "initialize, kernel_info answered and IOPub idle seen",
            **summary_ms(forks),
            "per_s_one_at_a_time": rounded(len(forks) / sum(forks), 2),
        }
        # 2. sustained: acquire as fast as possible, each kernel closed at once
        pool.wait_ready(60)
        started0 = pool.started
        cpu0 = cpu_now(zygote.pid)
        acq, cls, errors = [], [], []
        from_ready = 0
        t_start = time.perf_counter()
        end = t_start + args.seconds
        while time.perf_counter() < end:
            had = pool.ready() > 0
            try:
                dt, k = timed(pool.acquire)
            except Exception as exc:  # counted and reported, not fatal
                errors.append(f"{type(exc).__name__}: {exc}"[:300])
                if len(errors) > 20:
                    break
                continue
            if not k.alive():
                errors.append("acquire returned a dead kernel")
            acq.append(dt)
            from_ready += had
            cls.append(timed(k.close)[0])
        wall = time.perf_counter() - t_start
        cpu1 = cpu_now(zygote.pid)
        made = max(pool.started - started0, 1)
        out["sustained"] = {
            "how": "acquire() in a loop for the window, each kernel closed at once in the "
            "same loop; counted: kernels acquire returned (kernel_info answered)",
            "seconds": round(wall, 2),
            "kernels": len(acq),
            "per_s": round(len(acq) / wall, 2),
            "acquire": summary_ms(acq),
            "close_p50_ms": pct([c * 1e3 for c in cls], 50),
            "time_in_acquire_pct": round(sum(acq) / wall * 100, 1),
            "time_in_close_pct": round(sum(cls) / wall * 100, 1),
            "from_ready": from_ready,
            "kernels_started": pool.started - started0,
            "cpu_ms_per_kernel_started": {
                k: round((cpu1[k] - cpu0[k]) / made * 1e3, 1) for k in cpu0
            },
            "cpu_how": "utime+stime over the window per kernel started: this process (the "
            "pool: connect, kernel_info, close), the zygote, and the kernels (the zygote's "
            "reaped children: fork, initialize, answer, exit)",
            "errors": len(errors),
            "first_error": errors[0] if errors else None,
            "loadavg": load(),
        }
    finally:
        pool.close()


# -- 3: cold starts -------------------------------------------------------------------
def km_start() -> tuple[KernelManager, Any]:
    km = KernelManager(kernel_name="python3")
    km.start_kernel(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kc = km.client()
    try:
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
    except BaseException:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        raise
    return km, kc


def run_cold(args: argparse.Namespace, out: dict[str, Any]) -> None:
    kp, km = [], []
    for _ in range(args.cold_n):
        dt, k = timed(KernelProcess.start)
        kp.append(dt)
        k.close()
        dt, (m, c) = timed(km_start)
        km.append(dt)
        c.stop_channels()
        m.shutdown_kernel(now=True)
    out["cold"] = {
        "how": "one at a time, interleaved: a new interpreter per kernel; per_s = 1 / mean",
        "kernel_process_start": {
            **summary_ms(kp),
            "per_s": round(len(kp) / sum(kp), 2),
            "samples_ms": [round(x * 1e3, 1) for x in kp],
        },
        "kernel_manager_start_wait_for_ready": {
            **summary_ms(km),
            "per_s": round(len(km) / sum(km), 2),
            "samples_ms": [round(x * 1e3, 1) for x in km],
        },
        "loadavg": load(),
    }


# -- 4: papermill in process ----------------------------------------------------------
def run_papermill(work: Path, nb1: Path, args: argparse.Namespace, out: dict[str, Any]) -> None:
    dest = work / "pm-out.ipynb"

    def one() -> None:
        papermill.execute_notebook(str(nb1), str(dest), kernel_name="python3", progress_bar=False)

    one()  # warm-up: imports and first kernel spec lookup
    samples = [timed(one)[0] for _ in range(args.papermill_n)]
    out["papermill_inprocess"] = {
        "how": "papermill.execute_notebook of a 1-cell notebook (x = 1) in this process, "
        "after one warm-up",
        "n": len(samples),
        "median_s": round(statistics.median(samples), 3),
        "min_s": round(min(samples), 3),
        "samples_s": [round(s, 3) for s in samples],
    }


# -- 5: the command lines --------------------------------------------------------------
def run_subprocesses(work: Path, nb3: Path, args: argparse.Namespace, out: dict[str, Any]) -> None:
    home = work / "home-run"
    durabook_cmd = [str(VENV_BIN / "durabook"), "--home", str(home), "run", str(nb3), "-q"]
    papermill_cmd = [str(VENV_BIN / "papermill"), str(nb3), str(work / "pm3-out.ipynb")]
    python_cmd = [sys.executable, "-c", "pass"]

    def once(cmd: list[str]) -> float:
        t = time.perf_counter()
        got = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=work)
        dt = time.perf_counter() - t
        if got.returncode:
            raise RuntimeError(f"{cmd[0]} exited {got.returncode}: {got.stderr[-2000:]}")
        return dt

    serve = Serve(home, work / "serve-run.log", "--warm", str(args.warm))
    dura: list[float] = []
    pm: list[float] = []
    py: list[float] = []
    try:
        serve_up = serve.wait_ready()
        once(durabook_cmd)  # warm-up of each (page cache, the pool's first fill)
        once(papermill_cmd)
        for r in range(args.reps):
            pair = [("durabook", durabook_cmd), ("papermill", papermill_cmd)]
            if r % 2:
                pair.reverse()
            for name, cmd in pair:
                time.sleep(args.gap)  # the pool refills
                (dura if name == "durabook" else pm).append(once(cmd))
            py.append(once(python_cmd))
        svc = serve.remote()
        completed = len(svc.list(_list_request()).items)
        svc.close()
    finally:
        serve.stop()
    d, p = statistics.median(dura), statistics.median(pm)
    out["run_subprocess"] = {
        "how": f"{args.reps} interleaved rounds after one warm-up each, {args.gap} s apart; "
        f"durabook run with `durabook serve --warm {args.warm}` up (its warm kernels)",
        "notebook": "3 trivial code cells",
        "durabook_cmd": " ".join(durabook_cmd[1:]).replace(str(work), "WORK"),
        "papermill_cmd": " ".join(papermill_cmd[1:]).replace(str(work), "WORK"),
        "serve_ready_s": round(serve_up, 3),
        "durabook_median_s": round(d, 3),
        "papermill_median_s": round(p, 3),
        "papermill_over_durabook": round(p / d, 2),
        "python_startup_median_s": round(statistics.median(py), 3),
        "durabook_completed_instances": completed,
        "durabook_samples_s": [round(x, 3) for x in dura],
        "papermill_samples_s": [round(x, 3) for x in pm],
        "loadavg": load(),
    }


def _list_request() -> Any:
    from durabook.api.models import ListRequest
    from durabook.models import Status

    return ListRequest(status=Status.COMPLETED, limit=1000)


# -- report ---------------------------------------------------------------------------
def targets(out: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    t: dict[str, Any] = {}
    if "handout" in out:
        t["handout_p50_ms"] = target(out["handout"]["p50_ms"], HANDOUT_P50_MS_MAX, "<=")
    if "sustained" in out:
        s = out["sustained"]
        t["fresh_kernels_per_s"] = target(s["per_s"], FRESH_PER_S_MIN, ">=", errors=s["errors"])
    if "run_subprocess" in out:
        r = out["run_subprocess"]
        t["run_papermill_over_durabook"] = target(r["papermill_over_durabook"], RUN_RATIO_MIN, ">=")
        # every durabook run of the comparison completed (warm-up included)
        t["run_all_completed"] = {
            "value": r["durabook_completed_instances"],
            "op": "==",
            "limit": args.reps + 1,
            "pass": r["durabook_completed_instances"] == args.reps + 1,
        }
    return t


def ratios(out: dict[str, Any]) -> dict[str, Any]:
    r: dict[str, Any] = {}
    cold = out.get("cold", {})
    kp = cold.get("kernel_process_start", {})
    km = cold.get("kernel_manager_start_wait_for_ready", {})
    if "handout" in out and kp:
        r["cold_kernel_process_p50_over_handout_p50"] = rounded(
            kp["p50_ms"] / out["handout"]["p50_ms"], 1
        )
    if "sustained" in out and kp and km:
        per_s = out["sustained"]["per_s"]
        r["fresh_per_s_over_cold_kernel_process_per_s"] = rounded(per_s / kp["per_s"], 1)
        r["fresh_per_s_over_kernel_manager_per_s"] = rounded(per_s / km["per_s"], 1)
    if "run_subprocess" in out:
        r["papermill_cli_over_durabook_run"] = out["run_subprocess"]["papermill_over_durabook"]
    if "papermill_inprocess" in out and "run_subprocess" in out:
        r["papermill_inprocess_over_durabook_run_cli"] = rounded(
            out["papermill_inprocess"]["median_s"] / out["run_subprocess"]["durabook_median_s"], 2
        )
    return r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool-size", type=int, default=4, help="KernelPool size (sections 1, 2)")
    ap.add_argument("--handout-n", type=int, default=200, help="timed acquisitions")
    ap.add_argument("--fork-n", type=int, default=20, help="direct zygote forks timed")
    ap.add_argument("--seconds", type=float, default=10.0, help="sustained acquire window")
    ap.add_argument("--cold-n", type=int, default=5, help="cold starts of each kind")
    ap.add_argument("--papermill-n", type=int, default=5, help="in-process papermill runs")
    ap.add_argument("--reps", type=int, default=7, help="subprocess runs of each command")
    ap.add_argument("--warm", type=int, default=4, help="serve --warm for section 5")
    ap.add_argument("--gap", type=float, default=0.5, help="seconds before each subprocess run")
    ap.add_argument("--quick", action="store_true", help="smaller counts, about 40 s")
    ap.add_argument("--json-out", type=Path, help="also write the JSON report to this file")
    args = ap.parse_args(argv)
    if args.quick:
        args.handout_n, args.fork_n, args.seconds = 50, 10, 4.0
        args.cold_n, args.papermill_n, args.reps = 2, 2, 3
    if args.pool_size < 1 or args.handout_n < 1 or args.reps < 1:
        ap.error("--pool-size, --handout-n and --reps must be at least 1")
    work = Path(tempfile.mkdtemp(prefix="durabook-bench-kernels-"))
    nb1 = write_notebook(work / "one.ipynb", ["x = 1"])
    nb3 = write_notebook(work / "three.ipynb", ["x = 1", "y = 2", "z = x + y"])
    out: dict[str, Any] = {"benchmark": "kernels"}
    started, load0 = time.perf_counter(), load()
    try:
        with contextlib.chdir(work):  # kernels' and papermill's stray files land here
            run_pool(args, out)
            run_cold(args, out)
            run_papermill(work, nb1, args, out)
            run_subprocesses(work, nb3, args, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out["ratios"] = ratios(out)
    out["targets"] = targets(out, args)
    return finish_report(out, args, load0, started, ("json_out",))


if __name__ == "__main__":
    sys.exit(main())
