"""``durabook top``: a live table of running instances, their cell, CPU and memory.

Asks the engine that owns the home (``top`` verb; ``GET /api/top`` over HTTP) once
per interval and redraws, like top(1). ``--once`` prints one table and ends;
``--json`` prints the engine's reply.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .api.models import TopReply

__all__ = ["render", "top_command"]


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / (1 << 20):.1f}"


def render(reply: TopReply, width: int = 100) -> str:
    head = (
        f"durabook top  {time.strftime('%H:%M:%S')}  running {len(reply.kernels)}  "
        f"warm kernels {reply.pool_ready}/{reply.pool_size}  started {reply.kernels_started}"
    )
    cols = f"{'ID':<14} {'PID':>7} {'CELL':>5} {'CPU s':>8} {'MEM MiB':>9} {'PROCS':>5} "
    cols += f"{'DISK MiB':>8}  NOTEBOOK"
    lines = [head, "", cols]
    for k in sorted(reply.kernels, key=lambda k: -k.cpu_s):
        notebook = (k.notebook or "").rsplit("/", 1)[-1]
        tag = " [sandbox]" if k.sandbox else ""
        cell = "-" if k.cell is None else str(k.cell)
        line = (
            f"{k.id[:14]:<14} {k.pid:>7} {cell:>5} {k.cpu_s:>8.2f} {_mib(k.rss_bytes):>9} "
            f"{k.processes:>5} {_mib(k.disk_bytes):>8}  {notebook}{tag}"
        )
        lines.append(line[:width])
    if not reply.kernels:
        lines.append("(no instance is running)")
    return "\n".join(lines)


def top_command(args: argparse.Namespace) -> int:
    from .remote import open_engine

    with open_engine(args.home, serve=False) as svc:
        if args.json:
            print(json.dumps(svc.top().model_dump(mode="json")))
            return 0
        if args.once or not sys.stdout.isatty():
            print(render(svc.top()))
            return 0
        try:
            while True:
                table = render(svc.top())
                sys.stdout.write("\x1b[H\x1b[2J" + table + "\n")  # home, clear: redraw
                sys.stdout.flush()
                time.sleep(max(args.interval, 0.1))
        except KeyboardInterrupt:
            return 0
