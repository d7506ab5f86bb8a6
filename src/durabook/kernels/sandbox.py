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
bound back, writable. Without bubblewrap a sandboxed run still gets its folder,
share, scrubbed environment and limits; ``durabook doctor`` then says
``isolation: reduced (bubblewrap not found)``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..blobs import BlobStore, digest

__all__ = ["Sandbox", "bwrap_path", "sandbox_default"]

TMP_SIZE = 256 << 20  # the private /tmp: a tmpfs, so it is memory


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


def sandbox_default() -> bool:
    """Whether runs are sandboxed when they do not say (DURABOOK_SANDBOX=1)."""
    return os.environ.get("DURABOOK_SANDBOX", "").strip().lower() in ("1", "true", "yes")


def _hidden_folders(home: Path) -> list[Path]:
    """What no sandboxed kernel may see: the home, and folders of sockets and tokens."""
    from durabook_kernel.wire import runtime_dir

    found = [home]
    try:
        from jupyter_core.paths import jupyter_runtime_dir

        found.append(Path(jupyter_runtime_dir()))
    except Exception:  # no Jupyter: nothing of it to hide
        pass
    with contextlib.suppress(Exception):
        found.append(Path(runtime_dir()))
    return [p for p in dict.fromkeys(p.resolve() for p in found) if p.exists()]


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
        for folder in hidden:  # empty, and no kernel may plant anything there
            args += ["--perms", "0555", "--tmpfs", str(folder)]
        if notebook_dir is not None and notebook_dir.exists():
            args += ["--ro-bind", str(notebook_dir), str(notebook_dir)]
        for writable in (self.workdir, kernel_folder):
            args += ["--bind", str(writable), str(writable)]
        args += ["--ro-bind", str(self.share), str(self.share)]  # its pause file
        args += ["--bind", str(self.blobs), str(self.blobs)]
        args += ["--bind", str(journal), str(journal)]
        args += ["--chdir", str(self.workdir), "--"]
        return args

    def import_blobs(self, into: BlobStore, seen: set[str]) -> int:
        """Copy the share's new blobs into the home's store, each checked against its
        name (a kernel may write anything here: what does not match is dropped)."""
        n = 0
        try:
            folders = list(os.scandir(self.blobs))
        except OSError:
            return 0
        for folder in folders:
            if not folder.is_dir(follow_symlinks=False):
                continue
            for entry in os.scandir(folder.path):
                name = entry.name
                if name in seen or name.startswith(".") or not entry.is_file(follow_symlinks=False):
                    continue
                seen.add(name)
                if into.has(name):
                    continue
                try:
                    data = Path(entry.path).read_bytes()
                except OSError:
                    continue
                if digest(data) != name:
                    continue
                into.put(data, name)
                n += 1
        return n
