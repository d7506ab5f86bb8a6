"""Content-addressed blob store: ``<root>/<aa>/<sha256>``.

A blob is trusted only by its content. Its name must be a SHA-256 digest (64
lowercase hex characters: anything else is refused before the filesystem is
touched), what :meth:`BlobStore.get` reads is hashed and compared with the name,
and an existing file is never taken as proof of content: :meth:`BlobStore.put`
skips writing only when this process wrote or verified that digest before, else
it reads and verifies the file and replaces it when it does not match.

Blobs are written to a temporary file of their own (unique per call: several
threads and processes write the same digest at once), fsynced, renamed into
place and the folder fsynced, so a row naming a blob is only ever committed
after the blob is durable. Files are 0600, folders 0700. Errors of the
filesystem (ENOSPC first) propagate with their errno; the temporary file is
removed on every failure path.

Stdlib only: kernels import this.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
import tempfile
import threading
from pathlib import Path

__all__ = ["BlobCorrupt", "BlobStore", "check_key", "digest"]

_KEY = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20

# Digests this process wrote or verified, per root: shared by every BlobStore of the
# same folder (the engine and a kernel's tracker each make their own).
_trusted: dict[str, set[str]] = {}
_trusted_lock = threading.Lock()


class BlobCorrupt(ValueError):
    """What is stored under a digest's name does not hash to that digest."""


def digest(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def check_key(key: object) -> str:
    if not isinstance(key, str) or _KEY.fullmatch(key) is None:
        raise ValueError(f"not a blob name (64 lowercase hex characters): {key!r:.80}")
    return key


def _bytes_view(data: bytes | bytearray | memoryview) -> memoryview:
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")  # counts bytes, not items; raises if not contiguous
    return view


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        key = os.path.abspath(self.root)
        with _trusted_lock:
            self._trusted = _trusted.setdefault(key, set())
        self._dirs: set[str] = set()

    # -- names ---------------------------------------------------------------------
    def path(self, key: str) -> Path:
        check_key(key)
        return self.root / key[:2] / key

    def has(self, key: str) -> bool:
        """A file exists under that name (its content is checked when read)."""
        try:
            return stat.S_ISREG(os.lstat(self.path(key)).st_mode)
        except FileNotFoundError:
            return False

    def trust(self, key: str) -> None:
        """Record that the blob under ``key`` was verified (by a caller that read it)."""
        check_key(key)
        with _trusted_lock:
            self._trusted.add(key)

    def is_trusted(self, key: str) -> bool:
        check_key(key)
        with _trusted_lock:
            return key in self._trusted

    # -- write ---------------------------------------------------------------------
    def put(self, data: bytes | bytearray | memoryview, key: str | None = None) -> str:
        """Store ``data``; returns its digest. ``key``, when given, is the digest the caller
        already computed (not computed again; a wrong one is caught by every read)."""
        view = _bytes_view(data)
        key = check_key(key) if key is not None else digest(view)
        target = self.path(key)
        if self.is_trusted(key) and self.has(key):
            return key
        if self._matches(target, key):
            self.trust(key)
            return key
        folder = target.parent
        self._make_dirs(folder)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{key[:16]}.", suffix=".tmp")
        try:
            try:
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, target)  # atomic: readers see the old file or the whole new one
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(folder)
        self.trust(key)
        return key

    def _make_dirs(self, folder: Path) -> None:
        if folder.name in self._dirs:
            return
        for d in (self.root, folder):
            try:
                os.mkdir(d, 0o700)
            except FileExistsError:
                pass
            except FileNotFoundError:
                d.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._dirs.add(folder.name)

    def _matches(self, target: Path, key: str) -> bool:
        """The regular file at ``target`` exists and hashes to ``key``."""
        try:
            fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return False  # missing, a symlink, unreadable: write it afresh
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return False
            h = hashlib.sha256()
            while chunk := os.read(fd, _CHUNK):
                h.update(chunk)
            return h.hexdigest() == key
        finally:
            os.close(fd)

    # -- read ----------------------------------------------------------------------
    def _open(self, key: str) -> tuple[int, Path]:
        path = self.path(key)
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW), path

    def _corrupt(self, key: str, path: Path, actual: str) -> BlobCorrupt:
        with _trusted_lock:
            self._trusted.discard(key)
        return BlobCorrupt(
            f"blob {key} at {path} is corrupt: its content hashes to {actual}; "
            "the checkpoint that names it cannot be trusted"
        )

    def get(self, key: str) -> bytes:
        """The blob's bytes, verified against its name (BlobCorrupt when they differ)."""
        fd, path = self._open(key)
        with os.fdopen(fd, "rb", buffering=0) as fh:
            data = fh.read()
        actual = digest(data)
        if actual != key:
            raise self._corrupt(key, path, actual)
        self.trust(key)
        return data

    def get_into(self, key: str, out: memoryview) -> None:
        """Read the blob straight into ``out`` (its size must be the blob's exactly) and
        verify it. On BlobCorrupt, what ``out`` holds must be thrown away."""
        view = _bytes_view(out)
        if view.readonly:
            raise ValueError("get_into needs a writable buffer")
        fd, path = self._open(key)
        try:
            size = os.fstat(fd).st_size
            if size != view.nbytes:
                raise ValueError(
                    f"blob {key} holds {size} bytes; the buffer given has {view.nbytes}"
                )
            h = hashlib.sha256()
            pos = 0
            while pos < size:
                n = os.readv(fd, [view[pos : pos + _CHUNK]])
                if n == 0:
                    break  # shrank under us: the digest below tells
                h.update(view[pos : pos + n])
                pos += n
            if pos == size and os.read(fd, 1):
                h.update(b"\0")  # grew under us: not what was sized, so not this blob
        finally:
            os.close(fd)
        actual = h.hexdigest()
        if pos != size or actual != key:
            raise self._corrupt(key, path, actual)
        self.trust(key)
