"""Binder: binder/ is what repo2docker builds from (requirements, postBuild, start),
checked the way repo2docker reads it, since Binder cannot be reached from here;
the start script brings up the engine before JupyterLab; the walkthrough notebook
fails where it says and resumes from the fixed cell."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parent.parent
BINDER = REPO / "binder"
pytestmark = pytest.mark.timeout(240)


def test_binder_files_are_what_repo2docker_reads() -> None:
    assert (BINDER / "requirements.txt").is_file()
    assert (BINDER / "runtime.txt").read_text().strip() == "python-3.11"
    for script in ("postBuild", "start"):
        path = BINDER / script
        assert os.access(path, os.X_OK), f"binder/{script} must be executable"
        assert path.read_text().startswith("#!/usr/bin/env bash\n")
        subprocess.run(["bash", "-n", str(path)], check=True)
    # binder/ makes repo2docker ignore the root's pyproject.toml: postBuild installs us
    assert "pip install --no-cache-dir .\n" in (BINDER / "postBuild").read_text()
    assert 'exec "$@"' in (BINDER / "start").read_text()


def test_repo2docker_plans_the_build() -> None:
    r2d = shutil.which("repo2docker") or str(Path(sys.executable).parent / "repo2docker")
    out = subprocess.run(
        [r2d, "--no-build", "--debug", str(REPO)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    plan = out.stdout + out.stderr
    assert out.returncode == 0, plan[-2000:]
    assert "python=3.11" in plan
    assert 'pip install --no-cache-dir -r "binder/requirements.txt"' in plan
    assert "RUN ./binder/postBuild" in plan
    assert 'ENV R2D_ENTRYPOINT="${REPO_DIR}/binder/start"' in plan
    assert "pyproject" not in plan  # the root's build file is not used


def test_postbuild_checks_match_the_installed_extension() -> None:
    """postBuild's greps hold against what `jupyter ... list` prints for this install."""
    checks = re.findall(r"\| grep -q \"([^\"]+)\"", (BINDER / "postBuild").read_text())
    assert len(checks) == 2
    jupyter = [sys.executable, "-m", "jupyter"]
    lists = [
        subprocess.run([*jupyter, *args], capture_output=True, text=True, timeout=120)
        for args in (["server", "extension", "list"], ["labextension", "list"])
    ]
    for pattern, out in zip(checks, lists):
        text = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout + out.stderr)
        assert re.search(pattern.replace(".*", ".*"), text), (pattern, text[-1500:])


def test_start_brings_up_the_engine(tmp_path: Path) -> None:
    check = (  # the control socket only: opening the store here would race the engine
        "import json, os, time\n"
        "from pathlib import Path\n"
        "from durabook_kernel import wire\n"
        "home = Path(os.environ['DURABOOK_HOME'])\n"
        "deadline = time.time() + 60\n"
        "while (sock := wire.connect(home)) is None:\n"
        "    assert time.time() < deadline, 'no engine'\n"
        "    time.sleep(0.2)\n"
        "print(json.dumps(wire.call(sock, 'ping')))\n"
    )
    bindir = str(Path(sys.executable).parent)  # where `durabook` is, as on Binder's PATH
    env = {**os.environ, "HOME": str(tmp_path), "PATH": bindir + os.pathsep + os.environ["PATH"]}
    env.pop("DURABOOK_HOME", None)
    out = subprocess.run(
        [str(BINDER / "start"), sys.executable, "-c", check],
        capture_output=True,
        text=True,
        env={**env, "DURABOOK_HOME": str(tmp_path / ".durabook")},
        cwd=tmp_path,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    health = json.loads(out.stdout.strip().splitlines()[-1])
    try:
        assert health["serving"] is True
        assert health["home"] == str(tmp_path / ".durabook")
        assert (tmp_path / ".durabook" / "serve.log").exists()
    finally:
        os.kill(health["pid"], signal.SIGTERM)


def test_walkthrough_fails_then_resumes_from_the_fixed_cell(tmp_path: Path) -> None:
    from durabook.api.models import CreateRequest, IdRequest, ResumeRequest
    from durabook.remote import open_engine

    nb_path = tmp_path / "walkthrough.ipynb"
    shutil.copy(REPO / "examples" / "walkthrough.ipynb", nb_path)
    with open_engine(tmp_path / ".durabook") as svc:
        result = svc.run(CreateRequest(notebook=str(nb_path), parameters={"rows": 1000}))
        status = svc.status(IdRequest(id=result.id))
        assert status.status.value == "failed"
        assert status.error is not None and status.error.ename == "ZeroDivisionError"
        nb = nbformat.read(nb_path, as_version=4)
        cell = next(c for c in nb.cells if c.get("id") == "walkthrough-4")
        cell.source = cell.source.replace("divisor = 0", "divisor = 7")
        nbformat.write(nb, nb_path)
        svc.resume(ResumeRequest(id=result.id, notebook=str(nb_path)))
        status = svc.status(IdRequest(id=result.id))
        assert status.status.value == "completed"
        by_id = {c.cell_id: c for c in status.cells}
        assert by_id["walkthrough-2"].attempts == 1  # the slow step ran once
        assert by_id["walkthrough-4"].status.value == "committed"
