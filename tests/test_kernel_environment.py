"""Kernels start with a scrubbed environment: an allow-list plus what the run declares.

The engine's own variables (tokens, passwords) never reach a notebook unless the
run passes them (`--env NAME`, `--env NAME=VALUE`, `metadata.durabook.env`) or
the operator allows them for every kernel (`DURABOOK_KERNEL_ENV`).
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat

from durabook import Client, Status

from .conftest import cli, outputs_text, write_nb

SHOW = (
    "import os\nprint(os.environ.get('SECRET_TOKEN'), os.environ.get('REGION'), "
    "'PATH' in os.environ)"
)


def test_the_engines_secrets_do_not_reach_the_kernel(home: Path, tmp_path: Path):
    nb = write_nb(tmp_path / "env.ipynb", [SHOW])
    proc = cli("run", str(nb), "--json", "-q", env={"SECRET_TOKEN": "s3cr3t", "REGION": "eu"})
    assert proc.returncode == 0, proc.stderr
    assert outputs_text(json.loads(proc.stdout)["output"])[0] == "None None True\n"


def test_a_run_passes_what_it_declares(home: Path, tmp_path: Path):
    nb = write_nb(tmp_path / "env.ipynb", [SHOW])
    proc = cli(
        "run",
        str(nb),
        "--env",
        "SECRET_TOKEN",
        "--env",
        "REGION=us",
        "--json",
        "-q",
        env={"SECRET_TOKEN": "s3cr3t"},
    )
    assert proc.returncode == 0, proc.stderr
    assert outputs_text(json.loads(proc.stdout)["output"])[0] == "s3cr3t us True\n"
    # a name that is not set here is bad input, not a silent empty value
    proc = cli("run", str(nb), "--env", "NOT_SET_ANYWHERE", "-q")
    assert proc.returncode == 2 and "NOT_SET_ANYWHERE" in proc.stderr


def test_a_notebook_asks_but_only_the_user_passes_and_a_resume_keeps_it(home: Path, tmp_path: Path):
    flag = tmp_path / "go"
    nb_path = write_nb(
        tmp_path / "env.ipynb",
        [SHOW, f"import os\nassert os.path.exists({str(flag)!r})", SHOW],
    )
    nb = nbformat.read(nb_path, as_version=4)
    nb.metadata["durabook"] = {"env": ["SECRET_TOKEN"]}
    nbformat.write(nb, nb_path)
    # on the notebook's say-so alone nothing passes: a note says how to pass it
    flag.touch()
    proc = cli("run", str(nb_path), "--json", "-q", env={"SECRET_TOKEN": "abc"})
    assert proc.returncode == 0
    assert outputs_text(json.loads(proc.stdout)["output"])[0] == "None None True\n"
    assert "note: the notebook asks for SECRET_TOKEN; pass it with --env SECRET_TOKEN" in (
        proc.stderr
    )
    flag.unlink()
    proc = cli(
        "run", str(nb_path), "--env", "SECRET_TOKEN", "--json", "-q", env={"SECRET_TOKEN": "abc"}
    )
    assert proc.returncode == 1 and "note:" not in proc.stderr
    iid = json.loads(proc.stdout)["id"]
    flag.touch()
    res = Client().resume(iid)  # this process has no SECRET_TOKEN: the instance kept it
    assert res.status == Status.COMPLETED
    assert outputs_text(res.output or "")[2] == "abc None True\n"


def test_the_operator_can_allow_a_variable_for_every_kernel(home: Path, tmp_path: Path):
    nb = write_nb(tmp_path / "env.ipynb", [SHOW])
    proc = cli(
        "run",
        str(nb),
        "--json",
        "-q",
        env={"REGION": "ap", "SECRET_TOKEN": "x", "DURABOOK_KERNEL_ENV": "REGION"},
    )
    assert proc.returncode == 0, proc.stderr
    assert outputs_text(json.loads(proc.stdout)["output"])[0] == "None ap True\n"
