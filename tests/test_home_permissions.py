"""Everything in a home is its owner's alone: folders 0700, files 0600."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from durabook.engine import Engine
from durabook.errors import UnsafePath
from durabook.home import STORE_NAME, SUBFOLDERS, prepare_home, tighten

from .conftest import cli, write_nb

NOBODY = 65534


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def _usual_umask() -> None:
    os.umask(0o022)  # what a user's shell has: durabook must not depend on a strict one


def test_a_run_leaves_only_private_folders_and_files(home: Path, tmp_path: Path):
    nb = write_nb(
        tmp_path / "nb.ipynb",
        ["x = list(range(100_000))", "print('x' * 100_000)", "import pickle; y = {'a': x}"],
    )
    proc = subprocess.run(
        [sys.executable, "-m", "durabook", "run", str(nb), "-q"],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_usual_umask,
    )
    assert proc.returncode == 0, proc.stderr
    assert _mode(home) == 0o700
    loose = []
    seen_files = 0
    for folder, dirs, files in os.walk(home):
        for d in dirs:
            if _mode(Path(folder, d)) != 0o700:
                loose.append(f"{Path(folder, d)}: {_mode(Path(folder, d)):04o}")
        for f in files:
            seen_files += 1
            if _mode(Path(folder, f)) != 0o600:
                loose.append(f"{Path(folder, f)}: {_mode(Path(folder, f)):04o}")
    assert not loose, "\n".join(loose)
    assert seen_files >= 3  # the store, blobs and the output notebook at least
    assert {p.name for p in home.iterdir()} >= {STORE_NAME, *SUBFOLDERS}


def test_a_home_of_another_user_is_refused(tmp_path: Path):
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, NOBODY, NOBODY)
    for args in (("status", "abc"), ("list",), ("serve",)):
        proc = cli("--home", str(theirs), *args, timeout=60)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.splitlines()
        assert len(lines) == 1, proc.stderr
        assert f"refusing the home {theirs}: owned by uid {NOBODY}" in lines[0]
    assert list(theirs.iterdir()) == []  # nothing was written into it
    with pytest.raises(UnsafePath, match="owned by uid 65534"):
        Engine(theirs)


def test_a_subfolder_of_another_user_is_refused(tmp_path: Path):
    home = prepare_home(tmp_path / "h")
    os.chown(home / "blobs", NOBODY, NOBODY)
    with pytest.raises(UnsafePath, match=r"home folder .*blobs: owned by uid 65534"):
        prepare_home(home)


def test_homes_are_made_private_and_old_ones_tightened(tmp_path: Path):
    old = os.umask(0o022)
    try:
        fresh = prepare_home(tmp_path / "a" / "b" / "fresh")
        assert _mode(fresh) == 0o700
        assert all(_mode(fresh / s) == 0o700 for s in SUBFOLDERS)

        # a home an older durabook made, with the umask's modes: tightened
        legacy = tmp_path / "legacy"
        (legacy / "blobs").mkdir(parents=True, mode=0o755)
        (legacy / STORE_NAME).write_bytes(b"")
        (legacy / f"{STORE_NAME}.wal").write_bytes(b"")
        os.chmod(legacy, 0o755)
        os.chmod(legacy / STORE_NAME, 0o644)
        prepare_home(legacy)
        assert _mode(legacy) == 0o700
        assert _mode(legacy / "blobs") == 0o700
        assert _mode(legacy / STORE_NAME) == 0o600
        assert _mode(legacy / f"{STORE_NAME}.wal") == 0o600

        # a folder of the user's own choosing is not chmodded behind their back...
        chosen = tmp_path / "project"
        chosen.mkdir(mode=0o755)
        (chosen / "notes.txt").write_text("mine")
        prepare_home(chosen)
        assert _mode(chosen) == 0o755
        assert all(_mode(chosen / s) == 0o700 for s in SUBFOLDERS)
        # ...but one other users may write into is refused
        os.chmod(chosen, 0o777)
        with pytest.raises(UnsafePath, match="lets other users write into it"):
            prepare_home(chosen)
    finally:
        os.umask(old)


def test_tighten_fixes_files_duckdb_made_with_the_umask(tmp_path: Path):
    db = tmp_path / "x.duckdb"
    wal = tmp_path / "x.duckdb.wal"
    for p in (db, wal):
        p.write_bytes(b"")
        os.chmod(p, 0o664)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"")
    os.chmod(elsewhere, 0o644)
    link = tmp_path / "link.duckdb"
    link.symlink_to(elsewhere)
    tighten(db)
    tighten(link)  # a symlink is left alone (never chmod what it points to)
    tighten(tmp_path / "missing.duckdb")
    assert _mode(db) == 0o600 and _mode(wal) == 0o600
    assert _mode(elsewhere) == 0o644
