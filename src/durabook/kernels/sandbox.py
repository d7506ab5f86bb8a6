"""Sandboxed runs: a private working folder, a private share of the blob store and,
where bubblewrap is installed, a kernel in its own namespaces.

A sandboxed run (``--sandbox``, any run with a tenant, or ``DURABOOK_SANDBOX=1``)
works in ``$DURABOOK_HOME/work/<id>/`` (kept after the run; ``workdir`` in
``status --json``). Its kernel writes checkpoints into the instance's own share,
``$DURABOOK_HOME/sandbox/<id>/blobs``, which the engine copies into the home's
blob store after checking every digest; its journal is one file bound in; its
pause request is ``$DURABOOK_HOME/sandbox/<id>/pause``.

With bubblewrap the kernel sees the machine read-only, with a private /tmp and
/dev/shm, its own pid, IPC and UTS namespaces, no network unless the run allows
it, no capabilities and no further user namespaces. The durabook home (other
instances' folders and blobs, the DuckDB store), the engine's socket folder and
Jupyter's runtime folder are hidden behind empty tmpfs mounts; only the run's
working folder, its share, its journal and its kernel's connection folder are
bound back, writable; the notebook's folder and an interpreter or import path
under /tmp are bound back read-only. Without bubblewrap a sandboxed run still gets its folder,
share, scrubbed environment and limits; ``durabook doctor`` then says
``isolation: reduced (bubblewrap not found)``.

A departure from DESIGN.md's "every kernel from a pre-warmed pool": a sandboxed
kernel is started cold inside its own bubblewrap (about 0.35 s), since its mounts
name its instance's folders, known only when the run takes a kernel. Forking it
from the zygote would need the zygote's child to build those namespaces itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..blobs import BlobStore

__all__ = ["Sandbox", "bwrap_path", "sandbox_default"]

TMP_SIZE = 256 << 20  # the private /tmp and /dev/shm: tmpfs, so memory
_EMPTY_SIZE = 64 << 10  # the tmpfs over a hidden folder: room for mount points only
_BLOB_NAME = re.compile(r"[0-9a-f]{64}")
MAX_BLOB = 4 << 30  # a share file larger than this is not a blob of ours
_CHUNK = 1 << 20
# credentials a kernel has no business reading, in the home folder of the user
_SECRET_DIRS = (
    ".ssh",
    ".gnupg",
    ".aws",
    ".azure",
    ".kube",
    ".docker",
    ".password-store",
    ".config/gcloud",
    ".local/share/keyrings",
)
_SECRET_FILES = (".netrc", ".git-credentials", ".pgpass", ".pypirc", ".Xauthority")

log = logging.getLogger(__name__)


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


def sandbox_default() -> bool:
    """Whether runs are sandboxed when they do not say (DURABOOK_SANDBOX=1)."""
    return os.environ.get("DURABOOK_SANDBOX", "").strip().lower() in ("1", "true", "yes")


def _temp_roots() -> list[Path]:
    return [Path(p).resolve() for p in dict.fromkeys(["/tmp", tempfile.gettempdir(), "/dev/shm"])]


def _hidden_folders(home: Path) -> list[Path]:
    """What no sandboxed kernel may see: the durabook home, folders of sockets and
    tokens (durabook's, Jupyter's, the session's, /run), a temporary folder that is
    not /tmp (kernels' connection folders live there), and credentials."""
    from durabook_kernel.wire import runtime_dir

    found = [home, Path("/run")]
    with contextlib.suppress(Exception):
        from jupyter_core.paths import jupyter_runtime_dir

        found.append(Path(jupyter_runtime_dir()))
    with contextlib.suppress(Exception):
        found.append(Path(runtime_dir()))
    if os.environ.get("XDG_RUNTIME_DIR"):
        found.append(Path(os.environ["XDG_RUNTIME_DIR"]))
    found += [p for p in _temp_roots() if str(p) not in ("/tmp", "/dev/shm")]
    user_home = Path(os.path.expanduser("~"))
    found += [user_home / d for d in _SECRET_DIRS]
    out: list[Path] = []
    for p in dict.fromkeys(p.resolve() for p in found):
        if p.is_dir() and not any(p != q and p.is_relative_to(q) for q in out):
            out.append(p)
    return out


def _secret_files() -> list[Path]:
    user_home = Path(os.path.expanduser("~"))
    return [p for p in (user_home / f for f in _SECRET_FILES) if p.is_file()]


def _visible_notebook_dir(folder: Path | None, hidden: list[Path]) -> Path | None:
    """The notebook's folder, unless it is a temporary root (the other kernels' /tmp)
    or inside a hidden folder. Hidden folders inside it are hidden again after it is
    mounted, so a home beside the notebook stays out of sight."""
    if folder is None:
        return None
    folder = folder.resolve()
    if not folder.is_dir() or folder == Path("/") or folder in _temp_roots():
        return None
    if any(folder.is_relative_to(h) for h in hidden):
        return None
    return folder


def _python_folders(hidden: list[Path]) -> list[Path]:
    """The interpreter and its import path, where the private /tmp or /dev/shm would
    hide them (a virtual environment or an editable install under /tmp): shown again,
    read-only. Folders inside a hidden one stay hidden; hidden ones inside these are
    hidden again after them."""
    temp = _temp_roots()
    wanted = [sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(sys.executable)]
    wanted += [p for p in sys.path if p]
    out: list[Path] = []
    for raw in dict.fromkeys(wanted):
        p = Path(raw).resolve()
        if not p.is_dir() or p in temp or not any(p.is_relative_to(t) for t in temp):
            continue
        if any(p.is_relative_to(h) for h in hidden):
            continue
        out.append(p)
    return out


@dataclass
class Sandbox:
    """One sandboxed instance's folders."""

    home: Path
    instance_id: str
    network: bool = False

    @property
    def workdir(self) -> Path:
        return self.home / "work" / self.instance_id

    @property
    def share(self) -> Path:
        return self.home / "sandbox" / self.instance_id

    @property
    def blobs(self) -> Path:
        return self.share / "blobs"

    @property
    def pause_file(self) -> Path:
        return self.share / "pause"

    def prepare(self) -> None:
        for folder in (self.workdir, self.blobs):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)

    def command(
        self, bwrap: str, kernel_folder: str, journal: Path, notebook_dir: Path | None
    ) -> list[str]:
        """bubblewrap's arguments, ending where the kernel's command begins."""
        journal.touch(mode=0o600, exist_ok=True)  # a file is bound where it exists
        args = [
            bwrap,
            "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try", "--disable-userns", "--cap-drop", "ALL",
            "--new-session", "--die-with-parent",
            "--ro-bind", "/", "/",
            "--dev", "/dev",
            "--proc", "/proc",
            "--size", str(TMP_SIZE), "--tmpfs", "/tmp",
            "--size", str(TMP_SIZE), "--tmpfs", "/dev/shm",
        ]  # fmt: skip
        if not self.network:
            args.append("--unshare-net")
        hidden = _hidden_folders(self.home)
        shown = _visible_notebook_dir(notebook_dir, hidden)
        if shown is not None:  # before the hidden folders, which then cover what is in it
            args += ["--ro-bind", str(shown), str(shown)]
        for folder in _python_folders(hidden):
            args += ["--ro-bind", str(folder), str(folder)]
        for folder in hidden:  # empty, tiny and unwritable: nothing to find or plant
            args += ["--size", str(_EMPTY_SIZE), "--perms", "0555", "--tmpfs", str(folder)]
        for secret in _secret_files():
            args += ["--ro-bind", "/dev/null", str(secret)]
        if self.network and Path("/run/systemd/resolve").is_dir():
            args += ["--ro-bind", "/run/systemd/resolve", "/run/systemd/resolve"]  # DNS
        for writable in (self.workdir, kernel_folder):
            args += ["--bind", str(writable), str(writable)]
        args += ["--ro-bind", str(self.share), str(self.share)]  # its pause file
        args += ["--bind", str(self.blobs), str(self.blobs)]
        args += ["--bind", str(journal), str(journal)]
        args += ["--chdir", str(self.workdir), "--"]
        return args

    def import_blobs(self, into: BlobStore, seen: set[str]) -> int:
        """Copy the share's new blobs into the home's store, each checked against its
        name. A kernel may put anything here (links, pipes, sparse giants, odd names):
        only regular files named by a digest, of a sane size, whose content matches
        are taken; anything else is skipped, and nothing here ever raises."""
        n = 0
        try:
            top = os.open(self.blobs, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            return 0
        try:
            for prefix in os.listdir(top):
                if len(prefix) != 2 or not all(c in "0123456789abcdef" for c in prefix):
                    continue
                try:
                    sub = os.open(prefix, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=top)
                except OSError:
                    continue
                try:
                    for name in os.listdir(sub):
                        if name in seen or not _BLOB_NAME.fullmatch(name) or name[:2] != prefix:
                            continue
                        seen.add(name)
                        if into.has(name):
                            continue
                        try:
                            n += _copy_checked(sub, name, into)
                        except OSError as exc:
                            log.warning("%s: blob %s not imported: %s", self.instance_id, name, exc)
                finally:
                    os.close(sub)
        except OSError as exc:
            log.warning("%s: its blob share could not be read: %s", self.instance_id, exc)
        finally:
            os.close(top)
        return n


def _copy_checked(folder_fd: int, name: str, into: BlobStore) -> int:
    """Stream one share file into the store if it is a regular file whose SHA-256 is
    its name: never follows a link, never blocks on a pipe, never holds it whole."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_BLOB:
            return 0
        target = into.path(name)
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        h = hashlib.sha256()
        tmp_fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{name[:16]}.", suffix=".in")
        try:
            with os.fdopen(tmp_fd, "wb") as out:
                while chunk := os.read(fd, _CHUNK):
                    h.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if h.hexdigest() != name:
                os.unlink(tmp)
                return 0
            os.replace(tmp, target)
            dir_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)  # the name too is durable before a step names it
            finally:
                os.close(dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return 1
    finally:
        os.close(fd)
