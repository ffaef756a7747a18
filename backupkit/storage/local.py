"""A storage target in a local (or mounted) directory: file:///path."""

from __future__ import annotations

import errno
import fcntl
import os
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from backupkit.errors import ObjectNotFound, StorageError
from backupkit.storage.base import ObjectInfo, ObjectStore
from backupkit.util.streams import Chunks, iter_chunks

TMP_DIR = ".tmp"


def check_key(key: str) -> str:
    """Reject keys that could escape the root or collide with temp files."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        raise StorageError(f"invalid object key {key!r}")
    return key


def fsync_dir(path: Path) -> None:
    """Make a rename or create inside path durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _etag(st: os.stat_result) -> str:
    return f"{st.st_mtime_ns:x}-{st.st_size:x}-{st.st_ino:x}"


class LocalStore(ObjectStore):
    """Objects as files under a root folder; temp file, fsync, rename, fsync the folder."""

    def __init__(self, root: str | Path, create: bool = True) -> None:
        self.root = Path(root).absolute()
        self.url = f"file://{self.root}"
        if create:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageError(f"cannot create repository folder {self.root}: {exc.strerror}",
                                   "check the path and its permissions") from exc
        elif not self.root.is_dir():
            raise StorageError(f"repository folder {self.root} does not exist")

    # -- helpers -----------------------------------------------------------
    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _tmpdir(self) -> Path:
        tmp = self.root / TMP_DIR
        try:
            tmp.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot write to {self.root}: {exc.strerror}") from exc
        return tmp

    def _write_tmp(self, data: BinaryIO | Chunks | bytes) -> Path:
        tmp = self._tmpdir() / f"{uuid.uuid4().hex}.part"
        try:
            with open(tmp, "wb") as fh:
                for block in iter_chunks(data):
                    fh.write(block)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def _publish(self, tmp: Path, final: Path, exclusive: bool) -> bool:
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            if exclusive:
                try:
                    os.link(tmp, final)
                except FileExistsError:
                    return False
                finally:
                    tmp.unlink(missing_ok=True)
            else:
                os.replace(tmp, final)
            fsync_dir(final.parent)
            return True
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StorageError(f"cannot write {final}: {exc.strerror}") from exc

    # -- interface ---------------------------------------------------------
    def put(self, key: str, data: BinaryIO | Chunks | bytes) -> ObjectInfo:
        final = self._path(key)
        try:
            tmp = self._write_tmp(data)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise StorageError(f"no space left writing {key} to {self.root}") from exc
            raise StorageError(f"cannot write {key} to {self.root}: {exc.strerror}") from exc
        self._publish(tmp, final, exclusive=False)
        st = final.stat()
        return ObjectInfo(key, st.st_size, _etag(st), st.st_mtime)

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")  # noqa: SIM115 - caller closes
        except FileNotFoundError:
            raise ObjectNotFound(key, self.url) from None
        except OSError as exc:
            raise StorageError(f"cannot read {key}: {exc.strerror}") from exc

    def read_small(self, key: str) -> tuple[bytes, str]:
        """Content and tag of a small object, read consistently."""
        try:
            with open(self._path(key), "rb") as fh:
                st = os.fstat(fh.fileno())
                return fh.read(), _etag(st)
        except FileNotFoundError:
            raise ObjectNotFound(key, self.url) from None

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            st = self._path(key).stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot stat {key}: {exc.strerror}") from exc
        return ObjectInfo(key, st.st_size, _etag(st), st.st_mtime)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Keys starting with prefix, in key order, walked lazily one folder at a time (memory of
        one folder's names, never the whole listing: a month of segments is millions of keys)."""
        return self.list_after(prefix, "")

    def list_after(self, prefix: str, after: str) -> Iterator[ObjectInfo]:
        """Keys starting with prefix that sort after ``after``, in key order, walking only the
        folders that can hold them, lazily (a caller that stops early reads no further)."""
        if not self.root.is_dir():
            raise StorageError(f"repository folder {self.root} does not exist")
        base_rel = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root / base_rel if base_rel else self.root
        if start.is_dir():
            yield from self._walk_after(str(start), f"{base_rel}/" if base_rel else "", prefix, after)

    def _walk_after(self, path: str, rel: str, prefix: str, after: str) -> Iterator[ObjectInfo]:
        try:  # names only (a folder of a day's index entries: 86,400 DirEntry objects are 40 MiB)
            with os.scandir(path) as it:
                keys = [rel + e.name + ("/" if e.is_dir() else "") for e in it
                        if not e.name.startswith(".")]
        except FileNotFoundError:
            return
        keys.sort()  # a folder as "name/": exactly the order of the keys
        for key in keys:
            if key.endswith("/"):
                if (key < after and not after.startswith(key)) or \
                        not (key.startswith(prefix) or prefix.startswith(key)):
                    continue  # every key inside sorts before after, or lacks the prefix
                yield from self._walk_after(os.path.join(path, key[len(rel):-1]), key, prefix, after)
            elif key > after and key.startswith(prefix):
                try:
                    st = os.stat(os.path.join(path, key[len(rel):]))
                except FileNotFoundError:
                    continue
                yield ObjectInfo(key, st.st_size, _etag(st), st.st_mtime)

    def delete(self, keys: Iterable[str]) -> None:
        parents = set()
        for key in keys:
            path = self._path(key)
            try:
                path.unlink()
                parents.add(path.parent)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise StorageError(f"cannot delete {key}: {exc.strerror}") from exc
        for parent in parents:
            # Remove folders left empty, up to the root.
            p = parent
            while p != self.root and p.is_dir():
                try:
                    p.rmdir()
                except OSError:
                    break
                p = p.parent
            if p.is_dir():
                fsync_dir(p)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        final = self._path(key)
        tmp = self._write_tmp(data)
        return self._publish(tmp, final, exclusive=True)

    def replace_if_match(self, key: str, data: bytes, etag: str) -> bool:
        final = self._path(key)
        lock_path = self._tmpdir() / "replace.lock"
        with open(lock_path, "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                st = final.stat()
            except FileNotFoundError:
                return False
            if _etag(st) != etag:
                return False
            tmp = self._write_tmp(data)
            return self._publish(tmp, final, exclusive=False)

    def check(self) -> None:
        if not self.root.is_dir():
            raise StorageError(f"repository folder {self.root} does not exist")
        if not os.access(self.root, os.W_OK):
            raise StorageError(f"repository folder {self.root} is not writable")
