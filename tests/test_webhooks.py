"""Webhooks: completed, failed and waiting instances are POSTed (once per change) to their
URL or the engine's default, retried with backoff, recorded in the store, and delivered
after a restart when a previous engine left them undelivered."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from durabook import __version__
from durabook.dispatcher import Limits
from durabook.engine import Engine
from durabook.models import Status
from durabook.notify import ERROR_CAP, Notifier
from durabook.serve import Served, start
from durabook.store import Store

from .conftest import write_nb

FAST = {"max_attempts": 3, "backoff": 0.05, "timeout": 2.0}


class Hook:
    """A local webhook receiver: records every POST; per path, answers the codes queued
    in ``codes`` first (then 200), or a redirect from ``redirects``, after ``delay`` s."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.posts: list[dict[str, Any]] = []
        self.codes: dict[str, list[int]] = {}
        self.redirects: dict[str, str] = {}
        self.delay: dict[str, float] = {}
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = self.path
                with hook.lock:
                    hook.posts.append(
                        {
                            "path": path,
                            "headers": dict(self.headers),
                            "body": json.loads(raw),
                            "t": time.monotonic(),
                        }
                    )
                    queued = hook.codes.get(path) or []
                    code = queued.pop(0) if queued else 200
                    location = hook.redirects.get(path)
                time.sleep(hook.delay.get(path, 0.0))
                if location:
                    self.send_response(307)
                    self.send_header("Location", location)
                else:
                    self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def to(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [p for p in self.posts if p["path"] == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook()
    yield h
    h.close()


@pytest.fixture
def eng(tmp_path: Path) -> Iterator[Engine]:
    e = Engine(tmp_path / "home")
    yield e
    e.close()


@pytest.fixture
def notifier(eng: Engine) -> Iterator[Callable[..., Notifier]]:
    made: list[Notifier] = []

    def make(**kw: Any) -> Notifier:
        n = Notifier(eng, **{**FAST, **kw}).start()
        made.append(n)
        return n

    yield make
    for n in made:
        n.close(timeout=2)


@pytest.fixture
def served(eng: Engine) -> Iterator[Served]:
    s = start(eng, Limits(concurrency=1), schedules=False, webhooks=False)  # the test's own
    yield s
    s.close()


def _until(cond: Callable[[], Any], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _rows(eng: Engine, iid: str) -> list[dict[str, Any]]:
    cur = eng.store.cursor().execute(
        "SELECT seq, url, body, attempts, delivered_at, last_error FROM notifications "
        "WHERE instance_id = ? ORDER BY seq",
        [iid],
    )
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


def _delivered(eng: Engine, iid: str, n: int = 1) -> bool:
    rows = _rows(eng, iid)
    return len(rows) == n and all(r["delivered_at"] is not None for r in rows)


def _status(eng: Engine, iid: str) -> str:
    return str(eng.store.instance_row(iid)["status"])


def _give(eng: Engine, iid: str, status: Status, **fields: Any) -> None:
    """Write a status as a run would, and tell the listeners (no kernel needed)."""
    eng.writer.call(lambda c: Store.update_instance(c, iid, status=status, **fields))
    eng.changed(iid, status)


# -- end to end: real runs under the dispatcher -----------------------------------------
def test_a_completed_run_posts_once(eng, served, notifier, hook, tmp_path):
    n = notifier()
    nb = write_nb(tmp_path / "ok.ipynb", ["x = 1", "y = x + 1"])
    iid, _ = eng.create(nb, webhook=hook.url(), tenant="acme")
    _until(lambda: _delivered(eng, iid))
    n._on_status(iid, Status.COMPLETED)  # the same transition told again: no second post
    time.sleep(0.2)
    posts = hook.to("/hook")
    assert len(posts) == 1 and len(_rows(eng, iid)) == 1
    body = posts[0]["body"]
    assert body == {
        "id": iid,
        "status": "completed",
        "failed_cell": None,
        "error": None,
        "waiting_for": None,
        "notebook": str(nb),
        "tenant": "acme",
        "schedule": None,
        "at": body["at"],
    }
    assert body["at"].endswith("Z")
    headers = posts[0]["headers"]
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"] == f"durabook/{__version__}"
    assert not any(k.lower() in ("authorization", "cookie") for k in headers)
    row = _rows(eng, iid)[0]
    assert row["attempts"] == 1 and row["last_error"] is None
    assert json.loads(row["body"]) == body
    assert headers["X-Durabook-Delivery"] == str(row["seq"])


def test_a_failing_run_posts_failed_with_its_cell_and_error(eng, served, notifier, hook, tmp_path):
    notifier()
    nb = write_nb(tmp_path / "bad.ipynb", ["x = 1", "raise ValueError('boom' + 'x' * 5000)"])
    iid, _ = eng.create(nb, webhook=hook.url())
    _until(lambda: _delivered(eng, iid))
    assert _status(eng, iid) == "failed"
    (post,) = hook.to("/hook")
    body = post["body"]
    assert body["status"] == "failed" and body["failed_cell"] == 1
    assert set(body["error"]) == {"ename", "evalue"}  # no traceback
    assert body["error"]["ename"] == "ValueError"
    assert body["error"]["evalue"].startswith("boomxxx")
    assert len(body["error"]["evalue"]) <= ERROR_CAP


def test_a_waiting_run_posts_waiting_then_completed(eng, served, notifier, hook, tmp_path):
    notifier()
    nb = write_nb(
        tmp_path / "wait.ipynb", ["import durabook\ndurabook.wait_for_event('go')", "y=2"]
    )
    iid, _ = eng.create(nb, webhook=hook.url())
    _until(lambda: _delivered(eng, iid))
    (post,) = hook.to("/hook")
    assert post["body"]["status"] == "waiting" and post["body"]["waiting_for"] == "go"
    eng.send_event(iid, "go")
    _until(lambda: _delivered(eng, iid, 2))
    assert [p["body"]["status"] for p in hook.to("/hook")] == ["waiting", "completed"]
    assert hook.to("/hook")[1]["body"]["waiting_for"] is None


# -- delivery: no kernels, statuses written directly ----------------------------------------
def test_retried_with_backoff_until_2xx(eng, notifier, hook, tmp_path):
    notifier(backoff=0.2, max_attempts=6)
    hook.codes["/flaky"] = [500, 500]
    iid, _ = eng.create(write_nb(tmp_path / "t.ipynb", ["x = 1"]), webhook=hook.url("/flaky"))
    _give(eng, iid, Status.COMPLETED)
    _until(lambda: _delivered(eng, iid))
    (row,) = _rows(eng, iid)
    assert row["attempts"] == 3
    assert "500" in row["last_error"]  # the last failure is kept for the record
    t = [p["t"] for p in hook.to("/flaky")]
    assert len(t) == 3
    assert t[1] - t[0] >= 0.18 and t[2] - t[1] >= 0.38  # 0.2 s, then 0.4 s


def test_a_dead_or_slow_webhook_does_not_hold_up_others(eng, notifier, hook, tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/gone"
    hook.delay["/slow"] = 3.0
    n = notifier(max_attempts=3, timeout=0.5, workers=2)
    nb = write_nb(tmp_path / "t.ipynb", ["x = 1"])
    a = eng.create(nb, webhook=dead)[0]
    s_ = eng.create(nb, webhook=hook.url("/slow"))[0]
    b = eng.create(nb, webhook=hook.url("/ok"))[0]
    t0 = time.monotonic()
    for iid in (a, s_, b):
        _give(eng, iid, Status.COMPLETED)
    assert time.monotonic() - t0 < 1.0  # the listener waits for no network
    _until(lambda: _delivered(eng, b), timeout=5)
    # each slow attempt takes its 0.5 s timeout: the slow one is still being tried
    assert _rows(eng, s_)[0]["attempts"] < 3 and _rows(eng, s_)[0]["delivered_at"] is None
    _until(lambda: n.pending == 0, timeout=20)
    for iid in (a, s_):
        (row,) = _rows(eng, iid)
        assert row["attempts"] == 3 and row["delivered_at"] is None
        assert row["last_error"]
    assert n.given_up == 2 and n.delivered == 1


def test_undelivered_rows_are_delivered_after_a_restart(hook, tmp_path):
    home = tmp_path / "home"
    nb = write_nb(tmp_path / "t.ipynb", ["x = 1"])
    hook.codes["/later"] = [503]
    e1 = Engine(home)
    n1 = Notifier(e1, max_attempts=4, backoff=60.0).start()
    try:
        iid = e1.create(nb, webhook=hook.url("/later"))[0]
        gone = e1.create(nb, webhook=hook.url("/gone"))[0]
        # a delivery the previous engine gave up on stays given up
        e1.writer.call(
            lambda c: c.execute(
                "INSERT INTO notifications (seq, instance_id, url, body, attempts, created_at, "
                "last_error) VALUES (1, ?, ?, '{}', 4, now(), 'HTTP 500')",
                [gone, hook.url("/gone")],
            )
        )
        _give(e1, iid, Status.COMPLETED)
        _until(lambda: (_rows(e1, iid) or [{}])[0].get("attempts") == 1)
    finally:  # mid-retry: the next attempt was a minute away
        n1.close(timeout=1)
        e1.close()
    e2 = Engine(home)
    n2 = Notifier(e2, max_attempts=4, backoff=0.05).start()
    try:
        _until(lambda: _delivered(e2, iid))
        (row,) = _rows(e2, iid)
        assert row["attempts"] == 2 and "503" in row["last_error"]
        posts = hook.to("/later")
        assert len(posts) == 2 and posts[0]["body"] == posts[1]["body"]
        assert posts[1]["body"]["status"] == "completed"
        time.sleep(0.2)
        assert hook.to("/gone") == [] and _rows(e2, gone)[0]["delivered_at"] is None
    finally:
        n2.close(timeout=1)
        e2.close()


def test_the_default_url_when_the_instance_has_none(eng, notifier, hook, tmp_path):
    notifier(default_url=hook.url("/default"))
    nb = write_nb(tmp_path / "t.ipynb", ["x = 1"])
    plain = eng.create(nb)[0]
    own = eng.create(nb, webhook=hook.url("/own"))[0]
    _give(eng, plain, Status.FAILED, failed_cell=0, error={"ename": "E", "evalue": "v"})
    _give(eng, own, Status.COMPLETED)
    _until(lambda: _delivered(eng, plain) and _delivered(eng, own))
    assert [p["body"]["id"] for p in hook.to("/default")] == [plain]
    assert [p["body"]["id"] for p in hook.to("/own")] == [own]
    assert hook.to("/default")[0]["body"]["error"] == {"ename": "E", "evalue": "v"}


def test_nothing_sent_without_a_url_for_other_statuses_or_a_refused_write(
    eng, notifier, hook, tmp_path
):
    with pytest.raises(ValueError):
        Notifier(eng, default_url="file:///etc/passwd")
    n = notifier()
    nb = write_nb(tmp_path / "t.ipynb", ["x = 1"])
    bare = eng.create(nb)[0]  # no webhook, no default
    bad = eng.create(nb, webhook="ftp://127.0.0.1/x")[0]
    quiet = eng.create(nb, webhook=hook.url())[0]
    _give(eng, bare, Status.COMPLETED)
    _give(eng, bad, Status.COMPLETED)
    for status in (Status.RUNNING, Status.SLEEPING, Status.PAUSED, Status.TERMINATED):
        _give(eng, quiet, status)
    # told failed, but the store kept it terminated (a run winding down after terminate)
    _give(eng, quiet, Status.FAILED, failed_cell=0)
    assert _status(eng, quiet) == "terminated"
    time.sleep(0.3)
    assert hook.posts == [] and n.pending == 0
    assert all(_rows(eng, i) == [] for i in (bare, bad, quiet))


def test_redirects_followed_only_within_the_scheme(eng, notifier, hook, tmp_path):
    notifier(max_attempts=1)
    port = hook.server.server_address[1]
    hook.redirects["/moved"] = "/landed"
    hook.redirects["/secure"] = f"https://127.0.0.1:{port}/landed"
    nb = write_nb(tmp_path / "t.ipynb", ["x = 1"])
    moved = eng.create(nb, webhook=hook.url("/moved"))[0]
    secure = eng.create(nb, webhook=hook.url("/secure"))[0]
    _give(eng, moved, Status.COMPLETED)
    _until(lambda: _delivered(eng, moved))
    _give(eng, secure, Status.COMPLETED)
    _until(lambda: (_rows(eng, secure) or [{}])[0].get("attempts") == 1)
    assert [p["body"]["id"] for p in hook.to("/landed")] == [moved]
    (row,) = _rows(eng, secure)
    assert row["delivered_at"] is None and "not followed" in row["last_error"]
