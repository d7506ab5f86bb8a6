"""Blobs are trusted only by their content: names are digests, reads are verified."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from durabook_kernel import blobs as blobs_mod
from durabook_kernel.blobs import BlobCorrupt, BlobStore, digest


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def test_tampered_blob_is_detected_on_read(tmp_path: Path):
    store = BlobStore(tmp_path / "blobs")
    key = store.put(b"the real content")
    store.path(key).write_bytes(b"something else")
    with pytest.raises(BlobCorrupt, match=f"blob {key} at .* is corrupt"):
        BlobStore(tmp_path / "blobs").get(key)
    buf = bytearray(len(b"something else"))
    with pytest.raises(BlobCorrupt):
        store.get_into(key, memoryview(buf))
    # a truncated file is caught too, and the digest is no longer trusted
    store.path(key).write_bytes(b"the real")
    with pytest.raises(BlobCorrupt):
        store.get(key)
    assert not store.is_trusted(key)


def test_a_planted_file_under_a_digest_is_replaced_by_put(tmp_path: Path):
    data = b"payload " * 1000
    key = digest(data)
    store = BlobStore(tmp_path / "blobs")
    target = store.path(key)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"planted by someone before us")  # an existing file proves nothing
    assert not store.is_trusted(key)
    assert store.put(data) == key
    assert target.read_bytes() == data
    assert store.get(key) == data
    # a symlink planted under the name is replaced, not followed
    other = tmp_path / "elsewhere"
    other.write_bytes(data)
    data2 = b"second"
    key2 = digest(data2)
    store.path(key2).parent.mkdir(parents=True, exist_ok=True)
    store.path(key2).symlink_to(other)
    store.put(data2, key2)
    assert not store.path(key2).is_symlink() and store.get(key2) == data2
    assert other.read_bytes() == data


def test_a_right_file_is_verified_once_then_trusted(tmp_path: Path):
    data = b"already there"
    key = digest(data)
    first = BlobStore(tmp_path / "b")
    first.put(data)
    blobs_mod._trusted.clear()  # as if another process had written it
    store = BlobStore(tmp_path / "b")
    mtime = os.stat(store.path(key)).st_mtime_ns
    assert not store.is_trusted(key)
    store.put(data, key)
    assert store.is_trusted(key)
    assert BlobStore(tmp_path / "b").is_trusted(key)  # shared by stores of the same root
    assert not BlobStore(tmp_path / "c").is_trusted(key)
    assert os.stat(store.path(key)).st_mtime_ns == mtime  # verified, not rewritten


@pytest.mark.parametrize(
    "name",
    ["../x", "ab", "A" * 64, "g" * 64, "a" * 63, "a" * 65, "/" + "a" * 63, "a" * 64 + "\n", ""],
)
def test_names_that_are_not_digests_are_refused(tmp_path: Path, name: str):
    root = tmp_path / "blobs"
    store = BlobStore(root)
    for call in (
        lambda: store.get(name),
        lambda: store.put(b"x", name),
        lambda: store.path(name),
        lambda: store.has(name),
        lambda: store.get_into(name, memoryview(bytearray(1))),
        lambda: store.trust(name),
    ):
        with pytest.raises(ValueError, match="not a blob name"):
            call()
    assert not root.exists()  # refused before touching the filesystem


def test_modes_are_0600_and_0700(tmp_path: Path):
    old = os.umask(0o022)  # the usual umask: the store must not depend on it
    try:
        store = BlobStore(tmp_path / "blobs")
        key = store.put(b"secret")
    finally:
        os.umask(old)
    assert _mode(store.path(key)) == 0o600
    assert _mode(store.path(key).parent) == 0o700
    assert _mode(tmp_path / "blobs") == 0o700


def test_get_into_and_memoryview_put(tmp_path: Path):
    store = BlobStore(tmp_path / "blobs")
    big = bytearray(os.urandom(3 << 20))
    key = store.put(memoryview(big))
    assert key == hashlib.sha256(big).hexdigest()
    out = bytearray(len(big))
    store.get_into(key, memoryview(out))
    assert out == big
    with pytest.raises(ValueError, match="holds"):
        store.get_into(key, memoryview(bytearray(10)))
    with pytest.raises(ValueError, match="writable"):
        store.get_into(key, memoryview(bytes(len(big))))
    # a buffer of other items (e.g. an array of doubles) is written as its bytes
    import array

    doubles = array.array("d", [1.5] * 1000)
    k2 = store.put(memoryview(doubles))
    assert store.get(k2) == doubles.tobytes()


def test_sixteen_threads_put_the_same_and_different_content(tmp_path: Path):
    store = BlobStore(tmp_path / "blobs")
    same = os.urandom(256 << 10)
    errors: list[BaseException] = []
    keys: list[str] = []
    start = threading.Barrier(16)

    def work(n: int) -> None:
        try:
            own = BlobStore(tmp_path / "blobs") if n % 2 else store
            start.wait()
            for i in range(20):
                keys.append(own.put(same))
                keys.append(own.put(f"thread {n} item {i}".encode() * 100))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(keys)) == 1 + 16 * 20
    for key in set(keys):
        assert store.get(key)  # every one verified
    leftovers = [p for p in (tmp_path / "blobs").rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers


_FULL_DISK = """
import errno, json, os, sys
from pathlib import Path
from durabook_kernel.blobs import BlobStore
root = Path(sys.argv[1]) / "blobs"
store = BlobStore(root)
small = store.put(b"fits")
try:
    store.put(os.urandom(2 << 20))
    err = None
except OSError as exc:
    err = exc.errno
files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
print(json.dumps({"errno": err, "files": files, "small": small}))
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root to mount a tmpfs"
)
def test_a_full_disk_leaves_no_temporary_file_and_keeps_errno(tmp_path: Path):
    """A real ENOSPC: a 1 MiB tmpfs, mounted in a private mount namespace (it goes
    away with the process)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    proc = subprocess.run(
        [
            "unshare",
            "-m",
            "sh",
            "-c",
            'mount -t tmpfs -o size=1m tmpfs "$1" && exec "$2" -c "$3" "$1"',
            "sh",
            str(disk),
            sys.executable,
            _FULL_DISK,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if proc.returncode != 0 and "mount" in proc.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["errno"] == errno.ENOSPC
    small = out["small"]
    assert out["files"] == [f"{small[:2]}/{small}"]  # no temporary file left behind
