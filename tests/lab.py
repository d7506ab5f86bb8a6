"""A real ``jupyter lab`` for the tests: started on a free port over a folder, with
a token, the news prompt off, and a home of its own; stopped with SIGTERM (then
SIGKILL). Also the API and Chromium helpers the browser tests share."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(os.environ.get("DURABOOK_TEST_ARTIFACTS", Path(__file__).parent / "artifacts"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Lab:
    root: Path
    home: Path
    port: int
    token: str
    proc: subprocess.Popen[bytes]
    log: Path
    base: str = ""  # the server's base_url, without its trailing slash

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.base}"

    def api(self, method: str, path: str, **kw: Any) -> requests.Response:
        headers = {"Authorization": f"token {self.token}", **kw.pop("headers", {})}
        return requests.request(
            method, f"{self.url}/durabook/api{path}", headers=headers, timeout=30, **kw
        )

    def info(self) -> dict[str, Any]:
        r = requests.get(
            f"{self.url}/durabook/jupyter",
            headers={"Authorization": f"token {self.token}"},
            timeout=30,
        )
        r.raise_for_status()
        return dict(r.json())

    def wait_mode(self, mode: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        info: dict[str, Any] = {}
        while time.monotonic() < deadline:
            info = self.info()
            if info["mode"] == mode:
                return info
            time.sleep(0.2)
        raise AssertionError(f"the engine is {info.get('mode')}, not {mode}: {info}")

    def wait_status(self, iid: str, wanted: set[str], timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        body: dict[str, Any] = {}
        while time.monotonic() < deadline:
            body = self.api("GET", f"/instances/{iid}").json()
            if body.get("status") in wanted:
                return body
            time.sleep(0.2)
        raise AssertionError(f"{iid} is {body.get('status')}, not one of {wanted}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start_lab(
    root: Path,
    home: Path | None = None,
    env: dict[str, str] | None = None,
    base_url: str = "/",
    args: tuple[str, ...] = (),
) -> Lab:
    """``jupyter lab`` over ``root``; returns once its API answers."""
    home = home or root / ".durabook"
    settings = root.parent / f"{root.name}-lab-settings"
    news = settings / "@jupyterlab" / "apputils-extension"
    news.mkdir(parents=True, exist_ok=True)
    (news / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
    port, token = free_port(), "durabook-test-token"
    log = root.parent / f"{root.name}-lab.log"
    full_env = {
        **os.environ,
        "DURABOOK_HOME": str(home),
        "JUPYTERLAB_SETTINGS_DIR": str(settings),
        "JUPYTER_CONFIG_DIR": str(root.parent / f"{root.name}-jupyter-config"),
        **(env or {}),
    }
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        f"--port={port}",
        "--ServerApp.port_retries=0",
        "--ip=127.0.0.1",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        f"--ServerApp.base_url={base_url}",
        f"--LabApp.workspaces_dir={root.parent / f'{root.name}-workspaces'}",  # a fresh layout
        *args,
    ]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=full_env, stdout=out, stderr=subprocess.STDOUT)
    lab = Lab(root, home, port, token, proc, log, base_url.rstrip("/"))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"jupyter lab exited: {log.read_text()[-3000:]}")
        try:
            r = requests.get(
                f"{lab.url}/durabook/jupyter",
                headers={"Authorization": f"token {token}"},
                timeout=10,
            )
            if r.status_code == 403 or r.json()["mode"] in ("idle", "hosted", "forwarding"):
                return lab  # (403: an authorizer that keeps durabook from this user)
        except (requests.RequestException, ValueError, KeyError):
            pass
        time.sleep(0.3)
    lab.stop()
    raise AssertionError(f"jupyter lab did not answer in 60 s: {log.read_text()[-3000:]}")
