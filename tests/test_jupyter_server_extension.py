"""JupyterLab's server serves the engine API under /durabook/api with Jupyter's auth,
hosts the engine of its home, hands it to `durabook serve` in one command, forwards
to it (server-sent events included), and hosts it again when that serve dies.
The front end ships prebuilt in the package, in step with its sources."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from durabook_kernel.wire import http_socket_path

from .conftest import write_nb
from .lab import Lab, start_lab

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    root = tmp_path / "root"
    root.mkdir()
    lab = start_lab(root)
    yield lab
    lab.stop()


def _serve(home: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "durabook", "--home", str(home), "serve"],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "DURABOOK_HOME": str(home)},
    )


def test_api_needs_jupyters_auth(lab: Lab) -> None:
    base = f"{lab.url}/durabook/api"
    assert requests.get(f"{base}/instances", timeout=10).status_code == 403
    assert requests.get(f"{base}/health", timeout=10).status_code == 403  # no open route
    wrong = {"Authorization": "token nope"}
    assert requests.get(f"{base}/instances", headers=wrong, timeout=10).status_code == 403
    # a browser's cookie without the XSRF header may not write
    s = requests.Session()
    s.get(f"{lab.url}/lab?token={lab.token}", timeout=30)
    assert s.get(f"{base}/instances", timeout=10).status_code == 200
    # (refused before its streamed body is read, the connection is closed after the
    # answer: say so, or requests may reuse it and meet a reset)
    r = s.post(
        f"{base}/instances",
        json={"notebook": "/nonexistent.ipynb"},
        headers={"Connection": "close"},
        timeout=10,
    )
    assert r.status_code == 403
    xsrf = s.cookies.get("_xsrf")
    r = s.post(
        f"{base}/instances",
        json={"notebook": "/nonexistent.ipynb"},
        headers={"X-XSRFToken": xsrf},
        timeout=10,
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_notebook"
    # a foreign page may not drive it with the user's cookie
    r = s.get(f"{base}/instances", headers={"Origin": "http://evil.example"}, timeout=10)
    assert r.status_code in (403, 404)
    # the engine's own errors and refusals keep their JSON shape
    r = lab.api("GET", "/instances/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_instance"
    r = lab.api("POST", "/instances", json={"notebook": "x.ipynb", "env": {"A": "1"}})
    assert r.status_code == 400 and "not over HTTP" in r.json()["error"]["message"]
    assert lab.api("GET", "/no/such/route").json()["error"]["code"] == "not_found"
    assert lab.api("GET", "/openapi.json").json()["openapi"].startswith("3.")


DENYING = """
from jupyter_server.auth import Authorizer

class Deny(Authorizer):
    async def is_authorized(self, handler, user, action, resource):  # an async authorizer
        return resource != "durabook"
"""


def test_jupyters_authorizer_decides(tmp_path: Path) -> None:
    (tmp_path / "denying.py").write_text(DENYING)
    root = tmp_path / "root"
    root.mkdir()
    path = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    lab = start_lab(
        root, env={"PYTHONPATH": path}, args=("--ServerApp.authorizer_class=denying.Deny",)
    )
    try:
        assert lab.api("GET", "/instances").status_code == 403
        r = lab.api("POST", "/instances", json={"notebook": str(root / "x.ipynb")})
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
        info = requests.get(
            f"{lab.url}/durabook/jupyter",
            headers={"Authorization": f"token {lab.token}"},
            timeout=10,
        )
        assert info.status_code == 403
        assert not lab.home.exists()
    finally:
        lab.stop()


def test_hosted_engine_runs_and_resumes(lab: Lab) -> None:
    # a folder never used with durabook gets no home from JupyterLab starting there
    info = lab.info()
    assert info["mode"] == "idle" and not lab.home.exists()
    assert info["serve_command"] == f"durabook --home {lab.home} serve"
    assert Path(info["root_dir"]) == lab.root
    nb = write_nb(lab.root / "wf.ipynb", ["x = 21", "y = x * 2 / 0", "print(y)"])
    r = lab.api("POST", "/instances", json={"notebook": str(nb)})  # the first run makes it
    assert r.status_code == 201, r.text
    iid = r.json()["id"]
    info = lab.info()
    assert info["mode"] == "hosted" and info["durable"] is False and lab.home.is_dir()
    body = lab.wait_status(iid, {"failed"})
    assert body["failed_cell"] == 1
    page = lab.api("GET", "/instances", params={"notebook": str(nb), "limit": 5}).json()
    assert [i["id"] for i in page["items"]] == [iid]
    write_nb(lab.root / "wf.ipynb", ["x = 21", "y = x * 2", "print(y)"])
    r = lab.api("POST", f"/instances/{iid}/resume", json={"notebook": str(nb)})
    assert r.status_code == 200, r.text
    body = lab.wait_status(iid, {"completed"})
    by_id = {c["cell_id"]: c for c in body["cells"]}
    assert by_id["c0"]["attempts"] == 1 and by_id["c1"]["status"] == "committed"
    fires = lab.api("GET", "/cron", params={"cron": "*/15 * * * *", "tz": "Europe/Paris"})
    assert len(fires.json()["next_fires"]) == 5
    bad = lab.api("GET", "/cron", params={"cron": "61 * * * *"})
    assert bad.status_code == 400


def test_serve_takes_over_and_lab_forwards(lab: Lab) -> None:
    """`durabook serve` takes the home from JupyterLab in one command; JupyterLab then
    forwards every route to it, server-sent events included, and hosts the engine
    again when that serve is killed."""
    nb = write_nb(
        lab.root / "slow.ipynb", ["import time; time.sleep(0.3); print('a')", "print('b')"]
    )
    serve = _serve(lab.home)
    try:
        info = lab.wait_mode("forwarding")
        assert info["durable"] is True and info["owner_pid"] == serve.pid
        health = lab.api("GET", "/health").json()
        assert health["pid"] == serve.pid and health["serving"]
        iid = lab.api("POST", "/instances", json={"notebook": str(nb)}).json()["id"]
        events = []
        with lab.api("GET", f"/instances/{iid}/stream", stream=True) as r:
            assert r.headers["Content-Type"].startswith("text/event-stream")
            for line in r.iter_lines(decode_unicode=True):
                if line.startswith("event: "):
                    events.append(line[7:])
                if line == "event: end":
                    break
        assert events.count("committed") == 2 and events[-1] == "end"
        assert lab.api("GET", f"/instances/{iid}").json()["status"] == "completed"
        assert lab.api("GET", "/instances/nope").status_code == 404
        serve.send_signal(signal.SIGKILL)
        serve.wait(10)
        assert http_socket_path(lab.home).exists()  # what a killed serve leaves behind
        # the next request finds the serve gone and is answered by an engine hosted here
        r = lab.api("POST", "/instances", json={"notebook": str(nb)})
        assert r.status_code == 201, r.text
        iid2 = r.json()["id"]
        assert lab.info()["mode"] == "hosted"
        assert lab.wait_status(iid2, {"completed"})["status"] == "completed"
        assert lab.api("GET", "/health").json()["pid"] == lab.proc.pid
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait(10)


def test_runs_under_way_continue_after_handover(lab: Lab) -> None:
    nb = write_nb(
        lab.root / "long.ipynb",
        ["import time; time.sleep(2); a = 1", "time.sleep(2); b = a + 1", "print(b)"],
    )
    iid = lab.api("POST", "/instances", json={"notebook": str(nb)}).json()["id"]
    lab.wait_status(iid, {"running"})
    serve = _serve(lab.home)
    try:
        lab.wait_mode("forwarding", timeout=60)
        body = lab.wait_status(iid, {"completed", "failed"}, timeout=90)
        assert body["status"] == "completed", body
        assert all(c["status"] == "committed" for c in body["cells"])
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(30)


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["stopped", "killed"])
def test_runs_resume_when_lab_starts_again(tmp_path: Path, how: signal.Signals) -> None:
    """A JupyterLab-hosted run goes on from its last committed cell when JupyterLab
    starts again after a stop or a SIGKILL."""
    root = tmp_path / "root"
    root.mkdir()
    log = root / "ran.log"
    nb = write_nb(
        root / "long.ipynb",
        [
            f"open({str(log)!r}, 'a').write('first\\n'); import time",
            "time.sleep(4); b = 2",
            "print(b)",
        ],
    )
    lab = start_lab(root)
    try:
        iid = lab.api("POST", "/instances", json={"notebook": str(nb)}).json()["id"]
        deadline = time.monotonic() + 60
        while not log.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # the first cell committed, the second under way
        lab.proc.send_signal(how)
        lab.proc.wait(30)
    finally:
        lab.stop()
    lab = start_lab(root)
    try:
        body = lab.wait_status(iid, {"completed"}, timeout=120)
        assert log.read_text() == "first\n"  # the committed cell did not run again
        assert body["cells"][0]["attempts"] == 1
    finally:
        lab.stop()


def test_lab_forwards_to_a_serve_started_first(tmp_path: Path) -> None:
    """A JupyterLab started on a served home forwards; a second `durabook serve` is
    refused (only a JupyterLab host hands the home over)."""
    root = tmp_path / "root"
    root.mkdir()
    home = root / ".durabook"
    serve = _serve(home)
    try:
        deadline = time.monotonic() + 30
        while not http_socket_path(home.absolute()).exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        lab = start_lab(root)
        try:
            assert lab.wait_mode("forwarding")["owner_pid"] == serve.pid
            second = _serve(home)
            _, err = second.communicate(timeout=60)
            assert second.returncode != 0 and "serve" in err
            assert serve.poll() is None
        finally:
            lab.stop()
    finally:
        serve.terminate()
        serve.wait(30)


def test_under_a_base_url_hosted_and_forwarded(tmp_path: Path) -> None:
    """As under JupyterHub: every route lives under the server's base URL."""
    root = tmp_path / "root"
    root.mkdir()
    lab = start_lab(root, base_url="/user/ada/")
    serve = None
    try:
        assert lab.url.endswith("/user/ada")
        nb = write_nb(root / "a.ipynb", ["a = 1"])
        iid = lab.api("POST", "/instances", json={"notebook": str(nb)}).json()["id"]
        lab.wait_status(iid, {"completed"})
        serve = _serve(lab.home)
        lab.wait_mode("forwarding")
        assert lab.api("GET", f"/instances/{iid}").json()["status"] == "completed"
        page = lab.api("GET", "/instances", params={"limit": 1}).json()
        assert page["items"][0]["id"] == iid
        assert (
            requests.get(f"{lab.url[: -len('/user/ada')]}/durabook/jupyter", timeout=10).status_code
            == 404
        )
    finally:
        if serve is not None:
            serve.terminate()
            serve.wait(30)
        lab.stop()


def _sources_hash(ext: Path) -> str:
    """What extension/stamp.js records (keep the two in step)."""
    files = ["package.json", "tsconfig.json"]
    for folder in ("src", "style"):
        files += [f"{folder}/{p.name}" for p in sorted((ext / folder).iterdir())]
    h = hashlib.sha256()
    for f in files:
        h.update(f.encode() + b"\0")
        h.update((ext / f).read_text(encoding="utf-8").replace("\r\n", "\n").encode() + b"\0")
    return h.hexdigest()


def test_prebuilt_front_end_matches_its_sources() -> None:
    built = REPO / "src" / "durabook" / "labextension"
    stamp = (built / "sources.sha256").read_text().strip()
    assert stamp == _sources_hash(REPO / "extension"), (
        "the committed front end lags extension/: run extension/build.sh and commit "
        "src/durabook/labextension"
    )
    meta = json.loads((built / "package.json").read_text())
    assert meta["name"] == "durabook" and meta["jupyterlab"]["_build"]["load"]


def test_installed_extension_is_enabled() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "jupyter", "labextension", "list"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    text = out.stdout + out.stderr
    assert "durabook v0.1.0" in text and "enabled" in text and "OK" in text
    out = subprocess.run(
        [sys.executable, "-m", "jupyter", "server", "extension", "list"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "durabook.jupyter" in out.stdout + out.stderr
