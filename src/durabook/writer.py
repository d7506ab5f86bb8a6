"""Group commit: the one thread that writes the store.

Callers enqueue operations and get a future. The thread takes everything that
is waiting, runs it in one transaction (consecutive step rows, and new instance
rows, become single multi-row INSERTs) and resolves the futures when COMMIT returns. One DuckDB
commit costs about 1 ms here, so under load many cells share one.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import duckdb

from .store import Store

__all__ = ["StepStream", "Writer"]

_STOP = object()


class Writer:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._put_lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="durabook-writer", daemon=True)
        self._thread.start()
        self.batches = 0
        self.ops = 0

    def _put(self, kind: str, payload: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        with self._put_lock:  # nothing goes in behind the stop: it would wait forever
            if self._closed:
                fut.set_exception(RuntimeError("the store's writer is closed"))
            else:
                self._q.put((kind, payload, fut))
        return fut

    def submit(self, fn: Callable[[Any], Any]) -> Future[Any]:
        return self._put("call", fn)

    def submit_instance(self, row: dict[str, Any]) -> Future[Any]:
        """A new instance's row; consecutive ones share one multi-row INSERT."""
        return self._put("instance", row)

    def submit_steps(self, rows: list[tuple[Any, ...]]) -> Future[Any]:
        return self._put("steps", rows)

    def call(self, fn: Callable[[Any], Any]) -> Any:
        return self.submit(fn).result()

    def close(self) -> None:
        with self._put_lock:
            self._closed = True
            self._q.put(_STOP)
        self._thread.join()

    def _loop(self) -> None:
        while True:
            item = self._q.get()
            if item is _STOP:
                return
            batch = [item]
            stop = False
            while True:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                batch.append(nxt)
            self._commit(batch)
            if stop:
                return

    def _commit(self, batch: list[Any], retried: bool = False) -> None:
        conn = self.store.conn
        results: list[Any] = []
        try:
            conn.execute("BEGIN")
            pending: list[tuple[Any, ...]] = []
            instances: list[dict[str, Any]] = []
            for kind, payload, _fut in batch:
                if kind == "steps":
                    pending.extend(payload)
                    results.append(None)
                    continue
                if kind == "instance":
                    instances.append(payload)
                    results.append(None)
                    continue
                Store.insert_steps(conn, pending)
                Store.insert_instances(conn, instances)
                pending, instances = [], []
                results.append(payload(conn))
            Store.insert_steps(conn, pending)
            Store.insert_instances(conn, instances)
            conn.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(Exception):
                conn.execute("ROLLBACK")
            if isinstance(exc, duckdb.FatalException) and not retried:
                # DuckDB invalidates a database whose checkpoint failed (a full disk):
                # open it again and retry once; what was committed is intact
                try:
                    self.store.reopen()
                except Exception:
                    pass
                else:
                    self._commit(batch, retried=True)
                    return
            if len(batch) > 1:
                # isolate the failing operation: the others commit on their own
                for item in batch:
                    self._commit([item], retried=True)
                return
            batch[0][2].set_exception(exc)
            return
        self.batches += 1
        self.ops += len(batch)
        for (_k, _p, fut), res in zip(batch, results):
            fut.set_result(res)


class StepStream:
    """One run's step rows on their way into the store, at most one INSERT in flight.

    A row goes to the writer at once when none of this run's is being written; rows
    that come meanwhile wait and go together, as one multi-row INSERT, when it is
    done. DuckDB spends about 1.2 ms on a one-row INSERT and 1.7 ms on five rows,
    so a run of fast cells commits in two or three statements instead of one per
    cell, while a slow cell's row is still in the store as soon as it finishes.
    Nothing waits longer than one commit, and the journal holds every row meanwhile.
    """

    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self._lock = threading.Lock()
        self._waiting: list[tuple[tuple[Any, ...], Future[Any]]] = []
        self._busy = False

    def submit(self, row: tuple[Any, ...]) -> Future[Any]:
        fut: Future[Any] = Future()
        with self._lock:
            self._waiting.append((row, fut))
            if self._busy:
                return fut
            self._busy = True
        self._send()
        return fut

    def _send(self) -> None:
        with self._lock:
            batch, self._waiting = self._waiting, []
            if not batch:
                self._busy = False
                return
        inner = self.writer.submit_steps([row for row, _ in batch])
        inner.add_done_callback(lambda f: self._written(f, batch))

    def _written(self, inner: Future[Any], batch: list[tuple[Any, Future[Any]]]) -> None:
        exc = inner.exception()
        for _, fut in batch:
            if exc is None:
                fut.set_result(None)
            else:
                fut.set_exception(exc)
        self._send()  # what came meanwhile (on the writer's thread: a queue put only)
