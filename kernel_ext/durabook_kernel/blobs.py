"""Content-addressed blob store: ``<root>/<aa>/<sha256>``.

Blobs are written to a temporary file, fsynced, renamed into place and the
folder fsynced, so a row naming a blob is only ever committed after the blob is
durable. Writing the same content twice is a no-op (that is what makes "an
unchanged large object is not written again" cheap).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["BlobStore", "digest"]


def digest(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


class BlobStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._dirs: set[str] = set()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / key

    def has(self, key: str) -> bool:
        return self.path(key).exists()

    def put(self, data: bytes, key: str | None = None) -> str:
        key = key or digest(data)
        target = self.path(key)
        if target.exists():
            return key
        folder = target.parent
        if folder.name not in self._dirs:
            folder.mkdir(parents=True, exist_ok=True)
            self._dirs.add(folder.name)
        tmp = folder / f".{key}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return key

    def get(self, key: str) -> bytes:
        return self.path(key).read_bytes()
