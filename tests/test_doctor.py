"""`durabook doctor` says, one line each, what this machine and home give durabook,
and exits 1 when something stands in the way."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from durabook_kernel.wire import connect

BIN = str(Path(sys.executable).parent)


def _doctor(
    home: Path, path: str = BIN, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DURABOOK_HOME": str(home), "PATH": path, **(extra_env or {})}
    return subprocess.run(
        [sys.executable, "-m", "durabook", "doctor"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_a_new_home_without_bubblewrap(tmp_path: Path) -> None:
    home = tmp_path / "home"
    out = _doctor(home)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "durabook",
        "home",
        "engine",
        "sockets",
        "kernel",
        "isolation",
        "limits",
        "jupyterlab",
    ]
    assert "isolation: reduced (bubblewrap not found)" in lines
    assert f"home: {home} (made by the first run)" in lines
    assert "engine: none running" in out.stdout
    assert "limits: processes 256, files 4096 (maximums: none; sandboxed: runs with a tenant" in (
        out.stdout
    )
    assert not home.exists()  # looking makes nothing


def test_bubblewrap_found_and_a_serving_engine(tmp_path: Path) -> None:
    tools = tmp_path / "tools"
    tools.mkdir()
    bwrap = tools / "bwrap"
    bwrap.write_text("#!/bin/sh\nexit 0\n")
    bwrap.chmod(0o755)
    home = tmp_path / "home"
    serve = subprocess.Popen(
        [sys.executable, "-m", "durabook", "--home", str(home), "serve"],
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while (sock := connect(home.absolute())) is None:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        sock.close()
        out = _doctor(home, f"{tools}{os.pathsep}{BIN}")
        assert out.returncode == 0, out.stdout
        assert f"isolation: available ({bwrap})" in out.stdout
        assert f"engine: serving (pid {serve.pid}, host serve)" in out.stdout
    finally:
        serve.terminate()
        serve.wait(30)


def test_a_home_others_may_write_is_a_problem(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o777)
    out = _doctor(home)
    assert out.returncode == 1
    assert "lets other users write into it" in out.stdout


def test_limits_settings_are_shown_and_checked(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {"DURABOOK_LIMITS": "memory=2G", "DURABOOK_MAX_LIMITS": "memory=8G,cpu_seconds=1h"}
    out = _doctor(home, extra_env=env)
    # no default CPU limit, yet a maximum: runs that ask nothing get the maximum
    assert "limits: memory 2G, cpu 3600 s, processes 256, files 4096 (maximums: memory 8G" in (
        out.stdout
    )
    out = _doctor(home, extra_env={"DURABOOK_LIMITS": "memory=lots"})
    assert out.returncode == 1 and "limits: invalid setting (DURABOOK_LIMITS: memory" in out.stdout


def test_a_real_bubblewrap_is_tried(tmp_path: Path) -> None:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        pytest.skip("bubblewrap is not installed")
    out = _doctor(tmp_path / "home", f"{Path(bwrap).parent}{os.pathsep}{BIN}")
    assert f"isolation: available ({bwrap})" in out.stdout, out.stdout
