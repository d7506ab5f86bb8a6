"""A home folder: everything in it is its owner's alone (folders 0700, files 0600).

:func:`prepare_home` runs before an engine opens a home's store: it creates the
home and its subfolders with mode 0700, refuses a home that belongs to another
user (or that others may write into), and tightens a home durabook made when an
older version left it open. Files are made 0600 where durabook creates them;
DuckDB creates its own with the process umask, so :func:`tighten` fixes them
after the store is opened (the command line also sets umask 0o077).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from durabook_kernel.wire import UnsafeSocket, check_runtime_dir

from .errors import UnsafePath

__all__ = ["STORE_NAME", "SUBFOLDERS", "prepare_home", "resolve_home", "tighten"]

STORE_NAME = "durabook.duckdb"
SUBFOLDERS = ("blobs", "outputs", "logs", "run", "journal")


def _mode(st: os.stat_result) -> str:
    return f"{stat.S_IMODE(st.st_mode):04o}"


def _mkdir(path: Path) -> bool:
    """Create ``path`` with mode 0700 (parents as usual); True when this call made it."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return False
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            return False
    return True


def _check_folder(path: Path, what: str, tighten_loose: bool) -> None:
    st = os.stat(path)  # a home (or its blobs/) may be a symlink to another disk: follow it
    uid = os.getuid()
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePath(f"the {what} {path} is not a folder", path=str(path))
    if st.st_uid != uid:
        raise UnsafePath(
            f"refusing the {what} {path}: owned by uid {st.st_uid} with mode {_mode(st)}; "
            f"a home belongs to the one user who runs durabook in it (uid {uid})",
            path=str(path),
        )
    if not st.st_mode & 0o077:
        return
    if tighten_loose:
        os.chmod(path, 0o700)
    elif st.st_mode & 0o022:
        raise UnsafePath(
            f"refusing the {what} {path}: mode {_mode(st)} lets other users write into it; "
            f"`chmod 700 {path}` or choose another folder",
            path=str(path),
        )


def _made_by_durabook(home: Path) -> bool:
    names = set(os.listdir(home))
    known = {STORE_NAME, f"{STORE_NAME}.wal", f"{STORE_NAME}.tmp", *SUBFOLDERS}
    return STORE_NAME in names and names <= known


def prepare_home(path: str | os.PathLike[str]) -> Path:
    """The home at ``path``, created or checked (see the module's docstring).

    Also refuses a control socket folder another user made (see
    :mod:`durabook_kernel.wire`), so every command of the home says so at once.
    """
    home = Path(path).absolute()
    created = _mkdir(home)
    # a home made by durabook (now, or by a version that did not set modes) is tightened;
    # a folder the user chose is left as it is unless others can write into it
    ours = created or _made_by_durabook(home)
    _check_folder(home, "home", tighten_loose=ours)
    for name in SUBFOLDERS:
        sub = home / name
        if not _mkdir(sub):
            _check_folder(sub, "home folder", tighten_loose=ours)
    if ours:
        tighten(home / STORE_NAME)
    try:
        check_runtime_dir()
    except UnsafeSocket as exc:
        raise UnsafePath(str(exc), path=exc.path) from None
    return home


def tighten(path: str | os.PathLike[str]) -> None:
    """Make ``path`` (and a DuckDB write-ahead log ``<path>.wal`` beside it) the owner's
    alone: 0600 for a file, 0700 for a folder. Missing paths, symlinks and paths of
    another user are left alone."""
    p = Path(path)
    for item in (p, p.with_name(p.name + ".wal")):
        try:
            st = os.lstat(item)
        except FileNotFoundError:
            continue
        if st.st_uid != os.getuid() or stat.S_ISLNK(st.st_mode):
            continue
        want = 0o700 if stat.S_ISDIR(st.st_mode) else 0o600
        if stat.S_IMODE(st.st_mode) & ~want:
            os.chmod(item, stat.S_IMODE(st.st_mode) & want)


def resolve_home(home: str | os.PathLike[str] | None = None) -> Path:
    """The home folder: ``home``, else ``$DURABOOK_HOME``, else ``./.durabook``."""
    return Path(home or os.environ.get("DURABOOK_HOME") or ".durabook").absolute()
