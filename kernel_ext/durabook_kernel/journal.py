"""The step journal: where a kernel makes each finished cell durable before the next starts.

A run's kernel appends one record per finished cell (its outputs, the
checkpoint manifest, or its error) to ``$DURABOOK_HOME/journal/<id>.<token>.jnl``
and fsyncs it before it starts the next cell (about 0.1 ms here). That record,
not the DuckDB row, is what makes a cell *committed*: the engine copies records
into the store as they come (group commit), and after a crash of the kernel,
the runner or the engine, whoever recovers the instance copies the records the
store missed. So after any kill only the cell that was executing runs again.

Before a cell starts, a ``start`` record is appended without fsync (it only has
to survive the process, not the machine): a start with no record after it names
the cell a kill interrupted, which then counts as a failed attempt.

Framing: ``<len:8 hex> <crc32:8 hex> <json>\\n``. A torn tail (a kill or power
loss mid-append) fails its length or checksum and ends the readable journal.
While its kernel lives the journal is locked (a POSIX ``lockf`` lock: unlike
``flock``, a child the kernel forks does not inherit it, so a forked process that
outlives the kernel cannot hold recovery off); recovery takes the lock first, so
it never reads a journal that is still being written.

Stdlib only: the kernel imports this.
"""

from __future__ import annotations

import fcntl
import json
import os
import zlib
from collections.abc import Iterator
from typing import Any

__all__ = ["JournalReader", "JournalWriter", "wait_unlocked"]

_HEADER = 18  # "%08x %08x "
# Records are small (outputs over 64 KiB and all state go to blobs): a longer one is
# foreign bytes, and reading it would let a kernel make the engine read gigabytes
MAX_RECORD = 16 << 20


class JournalWriter:
    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        fcntl.lockf(self.fd, fcntl.LOCK_EX)  # held until this process ends or closes it
        # the new file's name must survive a power loss too
        folder = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)

    def append(self, record: dict[str, Any], durable: bool = True) -> None:
        payload = json.dumps(record, separators=(",", ":"), default=str).encode()
        data = b"%08x %08x " % (len(payload), zlib.crc32(payload)) + payload + b"\n"
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]
        if durable:
            os.fdatasync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class JournalReader:
    """Reads complete records from ``offset`` on; call ``read_new`` again for more."""

    def __init__(self, path: str, offset: int = 0) -> None:
        self.path = path
        self.offset = offset
        self.seq = 0  # records read so far: with the journal's name, a record's identity

    def read_new(self) -> Iterator[tuple[int, dict[str, Any]]]:
        try:
            fh = open(self.path, "rb")  # noqa: SIM115
        except FileNotFoundError:
            return
        with fh:
            fh.seek(self.offset)
            while True:  # one record at a time: never more than a record's bytes held
                head = fh.read(_HEADER)
                if len(head) < _HEADER:
                    return  # not complete yet (or torn)
                try:
                    length = int(head[0:8], 16)
                    crc = int(head[9:17], 16)
                except ValueError:
                    return  # torn or foreign bytes: nothing after them is trusted
                if length > MAX_RECORD:
                    return
                rest = fh.read(length + 1)
                if len(rest) < length + 1:
                    return
                payload = rest[:length]
                if zlib.crc32(payload) != crc or rest[length:] != b"\n":
                    return
                try:
                    record = json.loads(payload)
                except (ValueError, RecursionError):
                    return  # framed, yet not a record a kernel of ours writes
                self.offset += _HEADER + length + 1
                self.seq += 1
                yield self.seq, record


def wait_unlocked(path: str, timeout: float) -> bool:
    """Wait until no process holds the journal (its kernel has exited)."""
    import time

    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)  # lockf needs a writable descriptor
    except FileNotFoundError:
        return True
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.lockf(fd, fcntl.LOCK_UN)
                return True
            except OSError:  # EAGAIN / EACCES: another process holds it
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.02)
    finally:
        os.close(fd)
