"""Several storage targets as one ObjectStore (a cross-region repository).

Writes: every object is streamed to every target at once (one thread and a small bounded queue per
target). A put succeeds when at least `write_quorum` targets stored the object; a target that fails or
makes no progress for `stall_timeout` seconds is dropped from that write and recorded as *lagging*.

Commit markers (manifests, segment index entries: everything written with put_if_absent) are written
only to targets that are not lagging, so that each target on its own obeys "data first, manifest
last": a target never shows a backup whose data it missed. `backupkit repo sync` (or catch_up())
copies what a lagging target lacks and clears the flag.

Reads: from the first target in policy order that answers; a target that is unreachable, misses the
object or serves a corrupt copy is skipped for the next one, and the mirror records which target
served what (`report()`, and a warning in the log). Listings are the union of every reachable target.

Leases and conditional updates: the *authority* is the first reachable target in policy order.
put_if_absent and replace_if_match of a lease (leases/...) run there only and are not copied; other
conditional writes run on the authority first and are then copied to the other targets. While the
first target is unreachable the next one is the authority, so two writers that see different targets
as unreachable can both hold a lease: use one authority target you trust for leases, listed first.
"""

from __future__ import annotations

import collections
import heapq
import io
import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO, TypeVar

from backupkit.errors import ObjectNotFound, StorageError, UsageError
from backupkit.repo import layout
from backupkit.storage.base import Chunks, ObjectInfo, ObjectStore, iter_chunks
from backupkit.util.workers import put_unless_stopped

log = logging.getLogger(__name__)

T = TypeVar("T")
_END = object()
SMALL_PUT = 8 << 20  # bytes values up to this size are written with one call per target


class _Aborted(Exception):
    """Raised inside a target's upload stream to abandon it (the object never becomes visible)."""


@dataclass
class Target:
    """One storage target of a mirror and what the mirror has seen of it."""

    name: str
    store: ObjectStore
    down_until: float = 0.0
    lagging: bool = False
    lag_reason: str = ""
    last_error: str = ""
    served: int = 0
    written: int = 0
    failed_writes: int = 0
    bad_keys: set[str] = field(default_factory=set)

    def is_down(self) -> bool:
        return time.monotonic() < self.down_until

    def describe(self) -> str:
        return f"{self.name} ({self.store.describe()})" if self.name != self.store.url else self.name


class _TargetStore(ObjectStore):
    """One target of a mirror seen on its own (an alternative for reads); counts what it serves."""

    def __init__(self, mirror: MirrorStore, target: Target) -> None:
        self.mirror = mirror
        self.target = target
        self.url = target.store.url
        self.target_name = target.name

    def put(self, key: str, data: BinaryIO | Chunks | bytes) -> ObjectInfo:
        return self.target.store.put(key, data)

    def open(self, key: str) -> BinaryIO:
        fh = self.mirror._call(self.target, self.target.store.open, key)
        self.target.served += 1
        return _DeadlineReader(self.mirror, self.target, fh, key)  # type: ignore[return-value]

    def stat(self, key: str) -> ObjectInfo | None:
        return self.mirror._call(self.target, self.target.store.stat, key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.target.store.list(prefix)

    def delete(self, keys: Iterable[str]) -> None:
        self.target.store.delete(keys)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        return self.target.store.put_if_absent(key, data)

    def replace_if_match(self, key: str, data: bytes, etag: str) -> bool:
        return self.target.store.replace_if_match(key, data, etag)

    def read_small(self, key: str) -> tuple[bytes, str]:
        return self.mirror._call(self.target, self.target.store.read_small, key)

    def describe(self) -> str:
        return self.target.describe()

    def note_failover(self, key: str, bad: str, good: str | None, reason: str,
                      corrupt: bool = False) -> None:
        self.mirror.note_failover(key, bad, good, reason, corrupt)


def _read_exact(fh: BinaryIO, n: int) -> bytes:
    parts, have = [], 0
    while have < n:
        b = fh.read(n - have)
        if not b:
            break
        parts.append(b)
        have += len(b)
    return b"".join(parts)


def _skip(fh: BinaryIO, n: int) -> None:
    """Move a fresh reader n bytes forward (seek when it can, else read and drop)."""
    if n <= 0:
        return
    seekable = getattr(fh, "seekable", None)
    if seekable is not None and seekable():
        fh.seek(n, io.SEEK_CUR)
        return
    while n > 0:
        b = fh.read(min(n, 1 << 20))
        if not b:
            raise StorageError("object ended early while skipping")
        n -= len(b)


class _ReadAll(io.RawIOBase):
    """readall() in 1 MiB reads (RawIOBase's default reads 8 KiB at a time)."""

    def readall(self) -> bytes:
        parts = []
        while block := self.read(1 << 20):
            parts.append(block)
        return b"".join(parts)


class _DeadlineReader(_ReadAll):
    """A target's reader whose every read must answer within the mirror's stall timeout."""

    def __init__(self, mirror: MirrorStore, target: Target, fh: BinaryIO, key: str) -> None:
        self.mirror, self.target, self.fh, self.key = mirror, target, fh, key

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        data = self.mirror._call(self.target, self.fh.read, len(b))
        n = len(data)
        b[:n] = data
        return n

    def close(self) -> None:
        if not self.closed:
            try:
                self.fh.close()
            except Exception:
                pass
        super().close()


class _MirrorReader(_ReadAll):
    """Reads one object from the first target that has it; moves to the next copy when one fails.

    A dropped or stalled connection continues from the next target at the same offset (every target
    holds the same bytes). switch_target() does the same on request of an upper layer that found a
    corrupt chunk (the encryption layer authenticates each chunk before returning it).
    """

    def __init__(self, mirror: MirrorStore, key: str, order: list[Target], index: int, fh: BinaryIO) -> None:
        self.mirror = mirror
        self.key = key
        self.order = order
        self.index = index
        self.fh = fh
        self.pos = 0

    @property
    def target(self) -> Target:
        return self.order[self.index]

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        while True:
            try:
                data = self.mirror._call(self.target, self.fh.read, len(b))
                break
            except ObjectNotFound:
                raise
            except StorageError as exc:
                if not self._next_copy(self.pos, 0, f"read failed: {exc.message}"):
                    raise
        n = len(data)
        b[:n] = data
        self.pos += n
        return n

    def switch_target(self, offset: int, header_len: int) -> bytes | None:
        """Continue from the next copy at stored offset; returns that copy's first header_len bytes."""
        return self._next_copy(offset, header_len, "corrupt copy (a chunk failed authentication)", True)

    def _next_copy(self, offset: int, header_len: int, reason: str, corrupt: bool = False) -> bytes | None:
        """Move to the next target holding the object, at offset; None when there is none left."""
        bad = self.target
        while self.index + 1 < len(self.order):
            self.index += 1
            t = self.order[self.index]
            try:
                fh = self.mirror._call(t, t.store.open, self.key)
                header = self.mirror._call(t, _read_exact, fh, header_len) if header_len else b""
                self.mirror._call(t, _skip, fh, offset - header_len)
            except StorageError as exc:
                log.debug("target %s cannot continue %s: %s", t.name, self.key, exc)
                continue
            try:
                self.fh.close()
            except Exception:
                pass
            self.fh = fh
            self.pos = offset
            t.served += 1
            self.mirror.note_failover(self.key, bad.name, t.name, reason, corrupt)
            return header if header_len else b"-"
        return None


class _Feed:
    """The upload of one object to one target, fed through a bounded queue by the writing thread."""

    def __init__(self, target: Target, key: str, depth: int) -> None:
        self.target = target
        self.key = key
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.abort = threading.Event()
        self.done = threading.Event()
        self.result: ObjectInfo | None = None
        self.error: BaseException | None = None
        self.ended_at: float | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"mirror-put-{target.name}")

    def _chunks(self) -> Iterator[bytes]:
        while True:
            if self.abort.is_set():
                raise _Aborted(self.key)
            try:
                item = self.q.get(timeout=0.2)
            except queue.Empty:
                continue
            if item is _END:
                if self.abort.is_set():
                    raise _Aborted(self.key)
                return
            yield item

    def _run(self) -> None:
        try:
            self.result = self.target.store.put(self.key, self._chunks())
        except BaseException as exc:  # noqa: BLE001 - reported by the writer
            self.error = exc
        finally:
            self.done.set()

    def send(self, item: object, timeout: float) -> bool:
        """Queue item; False if the target stopped taking data or made no progress for timeout s."""
        deadline = time.monotonic() + timeout
        while True:
            if self.done.is_set():
                return False
            try:
                self.q.put(item, timeout=min(0.2, max(0.0, deadline - time.monotonic())))
                return True
            except queue.Full:
                if time.monotonic() >= deadline:
                    return False


class MirrorStore(ObjectStore):
    """Several targets as one store: writes go to all (quorum), reads come from the first good copy."""

    def __init__(self, targets: list[tuple[str, ObjectStore]], write_quorum: int | None = None,
                 stall_timeout: float = 30.0, retry_after: float = 30.0, queue_depth: int = 4) -> None:
        if not targets:
            raise UsageError("a mirror needs at least one storage target")
        names = [n for n, _ in targets]
        if len(set(names)) != len(names):
            raise UsageError(f"storage target names must differ: {', '.join(names)}")
        self.targets = [Target(n, s) for n, s in targets]
        quorum = len(self.targets) if write_quorum is None else write_quorum
        if not 1 <= quorum <= len(self.targets):
            raise UsageError(f"write_quorum {write_quorum} is not between 1 and {len(self.targets)} "
                             "(the number of targets)")
        self.write_quorum = quorum
        self.stall_timeout = stall_timeout
        self.retry_after = retry_after
        self.queue_depth = queue_depth
        self.url = self.targets[0].store.url
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=1000)
        self._lock = threading.Lock()
        self._last_list_error: StorageError | None = None
        _OPENED.add(self)

    # -- bookkeeping ---------------------------------------------------------------------------
    def target(self, name: str) -> Target:
        for t in self.targets:
            if t.name == name:
                return t
        raise UsageError(f"no storage target {name!r}", f"targets: {', '.join(t.name for t in self.targets)}")

    def _event(self, kind: str, target: str, key: str | None, reason: str, **extra: Any) -> None:
        with self._lock:
            self.events.append({"time": time.time(), "kind": kind, "target": target, "key": key,
                                "reason": reason, **extra})

    def _mark_down(self, t: Target, exc: BaseException | str) -> None:
        msg = exc.one_line() if isinstance(exc, StorageError) else str(exc)
        first = not t.is_down()
        t.down_until = time.monotonic() + self.retry_after
        t.last_error = msg
        if first:
            log.warning("storage target %s is unreachable: %s", t.name, msg)
            self._event("down", t.name, None, msg)

    def _mark_lagging(self, t: Target, key: str, reason: str) -> None:
        t.failed_writes += 1
        if not t.lagging:
            log.warning("storage target %s missed %s (%s); it is lagging until 'backupkit repo sync' "
                        "completes it", t.name, key, reason)
        t.lagging = True
        t.lag_reason = t.lag_reason or reason
        self._event("write_failed", t.name, key, reason)

    def note_failover(self, key: str, bad: str, good: str | None, reason: str,
                      corrupt: bool = False) -> None:
        """Record (and log) that key could not be read from target bad and came from good instead.

        A corrupt copy is remembered: later reads of that key prefer the other targets.
        """
        if good:
            log.warning("object %s: %s on target %s; read from target %s", key, reason, bad, good)
        self._event("read_failover", bad, key, reason, served_by=good)
        if corrupt:
            for t in self.targets:
                if t.name == bad:
                    t.bad_keys.add(key)

    def _call(self, t: Target, fn: Callable[..., T], *args: Any) -> T:
        """Run fn in a helper thread; StorageError if the target does not answer within stall_timeout.

        With one target there is nowhere to fail over to, so the call runs inline.
        """
        if len(self.targets) == 1:
            return fn(*args)
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["r"] = fn(*args)
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                box["e"] = exc

        th = threading.Thread(target=work, daemon=True, name=f"mirror-{t.name}")
        th.start()
        th.join(self.stall_timeout)
        if th.is_alive():
            err = StorageError(f"storage target {t.name} did not answer within {self.stall_timeout:g} s",
                               "it is unreachable or stalled")
            self._mark_down(t, err)
            raise err
        if "e" in box:
            exc = box["e"]
            if isinstance(exc, StorageError) and not isinstance(exc, ObjectNotFound):
                self._mark_down(t, exc)
            raise exc
        return box["r"]

    def _order(self, key: str | None = None) -> list[Target]:
        """Targets to read from, preferred first: reachable ones in policy order, known-bad copies last.

        Targets that recently failed are left out while any other is up (they are tried again after
        retry_after seconds), so one dead region does not slow every read down.
        """
        def rank(i_t: tuple[int, Target]) -> tuple[int, int]:
            i, t = i_t
            return (1 if key is not None and key in t.bad_keys else 0, i)

        up = [(i, t) for i, t in enumerate(self.targets) if not t.is_down()]
        return [t for _, t in sorted(up or list(enumerate(self.targets)), key=rank)]

    def quorum(self, key: str) -> int:
        """Targets that must store key: write_quorum for backup data and commit markers; one for
        records of restores (bookkeeping must not fail a restore while a region is lost)."""
        return 1 if key.startswith(layout.RESTORES) else self.write_quorum

    def _up(self) -> list[Target]:
        up = [t for t in self.targets if not t.is_down()]
        return up or list(self.targets)

    # -- reads -----------------------------------------------------------------------------------
    def alternatives(self, key: str) -> list[ObjectStore]:
        return [_TargetStore(self, t) for t in self._order(key)]

    def open(self, key: str) -> BinaryIO:
        order = self._order(key)
        missing, errors = [], []
        for i, t in enumerate(order):
            try:
                fh = self._call(t, t.store.open, key)
            except ObjectNotFound:
                missing.append(t.name)
                continue
            except StorageError as exc:
                errors.append(f"{t.name}: {exc.message}")
                continue
            t.served += 1
            if i:
                why = "; ".join([f"{m}: missing" for m in missing] + errors)
                self.note_failover(key, order[0].name, t.name, why)
            return _MirrorReader(self, key, order, i, fh)  # type: ignore[return-value]
        if errors:
            raise StorageError(f"object {key!r} cannot be read from any target ({'; '.join(errors)}"
                               + (f"; missing in {', '.join(missing)}" if missing else "") + ")")
        raise ObjectNotFound(key, self.describe())

    def read_small(self, key: str) -> tuple[bytes, str]:
        if key.startswith(layout.LEASES):
            return self._on_authority(lambda s: s.read_small(key))
        last: StorageError | None = None
        for t in self._order(key):
            try:
                data, etag = self._call(t, t.store.read_small, key)
                t.served += 1
                return data, etag
            except ObjectNotFound as exc:
                last = last or exc
            except StorageError as exc:
                last = exc
        raise last or ObjectNotFound(key, self.describe())

    def stat(self, key: str) -> ObjectInfo | None:
        errors = []
        for t in self._order(key):
            try:
                info = self._call(t, t.store.stat, key)
            except StorageError as exc:
                errors.append(exc)
                continue
            if info is not None:
                return info
        if errors and len(errors) == len(self.targets):
            raise errors[0]
        return None

    def _listing(self, t: Target, prefix: str, state: dict[str, bool]) -> Iterator[ObjectInfo]:
        """One target's listing through a thread and a bounded queue, so a stalled target cannot hang us."""
        q: queue.Queue = queue.Queue(maxsize=8)
        stop = threading.Event()

        def give(item: object) -> bool:
            return put_unless_stopped(q, item, stop, poll=0.5)

        def work() -> None:
            batch: list[ObjectInfo] = []
            try:
                for info in t.store.list(prefix):
                    batch.append(info)
                    if len(batch) >= 1000:
                        if not give(batch):
                            return
                        batch = []
                if give(batch):
                    give(_END)
            except BaseException as exc:  # noqa: BLE001 - passed to the reader
                give(exc)

        threading.Thread(target=work, daemon=True, name=f"mirror-list-{t.name}").start()
        try:
            while True:
                try:
                    item = q.get(timeout=self.stall_timeout)
                except queue.Empty:
                    self._mark_down(t, f"listing stalled for {self.stall_timeout:g} s")
                    return
                if item is _END:
                    state[t.name] = True
                    return
                if isinstance(item, BaseException):
                    if isinstance(item, StorageError):
                        self._mark_down(t, item)
                        self._last_list_error = item
                        return
                    raise item
                yield from item
        finally:
            stop.set()

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        if len(self.targets) == 1:
            yield from self.targets[0].store.list(prefix)
            return
        live = [t for t in self._order() if not t.is_down()] or list(self.targets)
        state: dict[str, bool] = {}
        def tagged(rank: int, t: Target) -> Iterator[tuple[str, int, ObjectInfo]]:
            for info in self._listing(t, prefix, state):
                yield info.key, rank, info

        streams = [tagged(i, t) for i, t in enumerate(live)]
        last = None
        for key, _, info in heapq.merge(*streams):
            if key != last:
                last = key
                yield info
        if not any(state.get(t.name) for t in live):
            err = self._last_list_error
            raise StorageError(f"no storage target could list {prefix or '/'}"
                               + (f": {err.message}" if err else ""), "every target is unreachable")

    # -- writes ----------------------------------------------------------------------------------
    def _writers(self, key: str) -> list[Target]:
        """Targets to write to: every reachable one; down ones are tried too if needed for the quorum."""
        up = [t for t in self.targets if not t.is_down()]
        if len(up) < self.quorum(key):
            return list(self.targets)
        for t in self.targets:
            if t.is_down():
                self._mark_lagging(t, key, f"unreachable: {t.last_error}")
        return up

    def put(self, key: str, data: BinaryIO | Chunks | bytes) -> ObjectInfo:
        writers = self._writers(key)
        if len(self.targets) == 1:
            info = writers[0].store.put(key, data)
            writers[0].written += 1
            return info
        if isinstance(data, (bytes, bytearray, memoryview)) and len(data) <= SMALL_PUT:
            results = self._parallel(writers, lambda s: s.put(key, data), key)
        else:
            results = self._tee(writers, key, iter_chunks(data))
        return self._settle(writers, key, results, self.quorum(key))

    def _settle(self, writers: list[Target], key: str, results: dict[str, Any], quorum: int):
        ok = [t for t in writers if not isinstance(results.get(t.name), BaseException)
              and t.name in results]
        for t in writers:
            r = results.get(t.name)
            if t not in ok:
                reason = r.message if isinstance(r, StorageError) else str(r or "no answer")
                self._mark_lagging(t, key, reason)
            else:
                t.written += 1
        if len(ok) < quorum:
            why = "; ".join(f"{t.name}: {t.last_error or 'failed'}" for t in writers if t not in ok)
            raise StorageError(f"{key!r} was stored on {len(ok)} of {len(self.targets)} targets, "
                               f"fewer than the write quorum {quorum} ({why})",
                               "bring the targets back, or lower storage.write_quorum")
        return results[ok[0].name]

    def _parallel(self, targets: list[Target], fn: Callable[[ObjectStore], T], key: str) -> dict[str, Any]:
        """fn(store) on each target at once; results or exceptions by target name."""
        out: dict[str, Any] = {}
        threads = []
        for t in targets:
            def work(t: Target = t) -> None:
                try:
                    out[t.name] = fn(t.store)
                except BaseException as exc:  # noqa: BLE001 - reported by _settle
                    out[t.name] = exc
            th = threading.Thread(target=work, daemon=True, name=f"mirror-{t.name}")
            th.start()
            threads.append((t, th))
        deadline = time.monotonic() + self.stall_timeout
        for t, th in threads:
            th.join(max(0.0, deadline - time.monotonic()))
            if th.is_alive():
                err = StorageError(f"storage target {t.name} did not answer within {self.stall_timeout:g} s")
                self._mark_down(t, err)
                out[t.name] = err
            elif isinstance(out.get(t.name), StorageError) and not isinstance(out[t.name], ObjectNotFound):
                self._mark_down(t, out[t.name])
        return out

    def _tee(self, writers: list[Target], key: str, chunks: Iterator[bytes]) -> dict[str, Any]:
        """Stream chunks to every writer at once; drop a writer that fails or stalls."""
        feeds = [_Feed(t, key, self.queue_depth) for t in writers]
        for f in feeds:
            f.thread.start()
        active = list(feeds)
        results: dict[str, Any] = {}

        def drop(f: _Feed, reason: str) -> None:
            f.abort.set()
            active.remove(f)
            err = f.error if isinstance(f.error, StorageError) else StorageError(reason)
            if f.error is not None and not isinstance(f.error, StorageError):
                err = StorageError(f"{reason}: {f.error}")
            results[f.target.name] = err
            self._mark_down(f.target, err)

        def fail_all(exc: BaseException) -> None:
            for f in feeds:
                f.abort.set()
            for f in feeds:  # let the writers abandon their uploads (briefly; a stalled one is left)
                f.done.wait(2.0)

        try:
            for block in chunks:
                for f in list(active):
                    if not f.send(block, self.stall_timeout):
                        drop(f, f"storage target {f.target.name} stopped taking data for {key!r}"
                             if not f.done.is_set() or f.error is None else "upload failed")
                if len(active) < self.quorum(key):
                    why = "; ".join(f"{n}: {e.message}" for n, e in results.items()
                                    if isinstance(e, StorageError))
                    raise StorageError(f"cannot write {key!r}: only {len(active)} of {len(self.targets)} "
                                       f"targets take it, fewer than the write quorum {self.quorum(key)} "
                                       f"({why})", "bring the targets back, or lower storage.write_quorum")
            for f in list(active):
                if not f.send(_END, self.stall_timeout):
                    drop(f, f"storage target {f.target.name} stopped taking data for {key!r}")
                else:
                    f.ended_at = time.monotonic()
            # Wait for the uploads to finish; one that makes no progress for stall_timeout is dropped.
            for f in list(active):
                left = self.stall_timeout - (time.monotonic() - (f.ended_at or time.monotonic()))
                f.done.wait(max(0.0, left))
                if not f.done.is_set():
                    drop(f, f"storage target {f.target.name} did not finish {key!r} within "
                         f"{self.stall_timeout:g} s")
                elif f.error is not None:
                    drop(f, f"upload of {key!r} to {f.target.name} failed")
                else:
                    results[f.target.name] = f.result
        except BaseException as exc:
            fail_all(exc)
            raise
        return results

    def put_if_absent(self, key: str, data: bytes) -> bool:
        if key.startswith(layout.LEASES):
            return self._on_authority(lambda s: s.put_if_absent(key, data))
        eligible = self._commit_targets(key)
        authority, created = self._first_ok(eligible, lambda s: s.put_if_absent(key, data), key)
        if not created:
            return False
        rest = [t for t in eligible if t is not authority and not t.is_down()]
        results: dict[str, Any] = {authority.name: True}
        results.update(self._parallel(rest, lambda s: s.put_if_absent(key, data), key))
        # Present already (False) counts: the object is there.
        results = {n: (r if isinstance(r, BaseException) else True) for n, r in results.items()}
        self._settle([authority, *rest], key, results, self.quorum(key))
        return True

    def replace_if_match(self, key: str, data: bytes, etag: str) -> bool:
        if key.startswith(layout.LEASES):
            return self._on_authority(lambda s: s.replace_if_match(key, data, etag))
        authority, ok = self._first_ok(self._up(), lambda s: s.replace_if_match(key, data, etag), key)
        if not ok:
            return False
        rest = [t for t in self.targets if t is not authority and not t.is_down()]
        results = self._parallel(rest, lambda s: s.put(key, data), key)
        for t in rest:
            if isinstance(results.get(t.name), BaseException):
                self._mark_lagging(t, key, str(results[t.name]))
        return True

    def _commit_targets(self, key: str) -> list[Target]:
        """Targets that may receive a commit marker: reachable and complete (not lagging)."""
        quorum = self.quorum(key)
        eligible = [t for t in self.targets if not t.lagging and not t.is_down()]
        if len(eligible) < quorum:
            self.catch_up()
            eligible = [t for t in self.targets if not t.lagging and not t.is_down()]
        if len(eligible) < quorum:
            why = "; ".join(f"{t.name}: " + ("unreachable" if t.is_down() else f"lagging ({t.lag_reason})")
                            for t in self.targets if t not in eligible)
            raise StorageError(f"cannot commit {key!r}: {len(eligible)} of {len(self.targets)} targets are "
                               f"complete and reachable, fewer than the write quorum {quorum} "
                               f"({why})", "run 'backupkit repo sync' once the targets are back")
        for t in self.targets:
            if t not in eligible:
                self._mark_lagging(t, key, "unreachable" if t.is_down() else "lagging")
        return eligible

    def _first_ok(self, targets: list[Target], fn: Callable[[ObjectStore], T], key: str) -> tuple[Target, T]:
        """fn on the first target that answers (the authority)."""
        errors = []
        for t in targets:
            try:
                return t, self._call(t, fn, t.store)
            except ObjectNotFound:
                raise
            except StorageError as exc:
                errors.append(f"{t.name}: {exc.message}")
        raise StorageError(f"no storage target accepted {key!r} ({'; '.join(errors)})")

    def _on_authority(self, fn: Callable[[ObjectStore], T]) -> T:
        return self._first_ok(self._up(), fn, "a lease")[1]

    def delete(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        results = self._parallel(self._up(), lambda s: s.delete(keys), "delete")
        failed = {n: r for n, r in results.items() if isinstance(r, BaseException)}
        for n, r in failed.items():
            log.warning("storage target %s: delete failed (%s); it keeps %d objects until the next prune",
                        n, r, len(keys))
            self._event("delete_failed", n, None, str(r), count=len(keys))
        if len(failed) == len(results):
            raise next(iter(failed.values()))

    # -- health ------------------------------------------------------------------------------------
    def check(self) -> None:
        """Pass when at least one target is usable; the others are recorded as down."""
        results = self._parallel(self.targets, lambda s: s.check(), "check")
        bad = {n: r for n, r in results.items() if isinstance(r, BaseException)}
        for t in self.targets:
            if t.name in bad:
                self._mark_down(t, bad[t.name])
        if len(bad) == len(self.targets):
            raise StorageError("no storage target is reachable: " + "; ".join(
                f"{n}: {getattr(r, 'message', r)}" for n, r in bad.items()))

    def catch_up(self, progress=None) -> list[dict[str, Any]]:
        """Copy what each lagging, reachable target lacks from the others; clears its lagging flag."""
        from backupkit.repo.sync import sync_stores

        done = []
        sources = [t for t in self.targets if not t.lagging and not t.is_down()]
        for t in self.targets:
            if not t.lagging or not sources:
                continue
            try:
                self._call(t, t.store.check)
            except StorageError:
                continue
            result = sync_stores([(s.name, s.store) for s in sources], (t.name, t.store), progress=progress)
            if result.complete:
                t.lagging = False
                t.lag_reason = ""
                log.warning("storage target %s caught up: %d objects copied", t.name, result.copied)
                self._event("caught_up", t.name, None, f"{result.copied} objects copied")
            done.append(result.to_dict())
        return done

    def report(self) -> dict[str, Any]:
        """Which target served what, what failed, and which targets are lagging."""
        return {
            "write_quorum": self.write_quorum,
            "targets": [{"name": t.name, "url": t.store.describe(), "down": t.is_down(),
                         "lagging": t.lagging, "lag_reason": t.lag_reason, "last_error": t.last_error,
                         "objects_served": t.served, "objects_written": t.written,
                         "failed_writes": t.failed_writes} for t in self.targets],
            "events": list(self.events),
        }

    def describe(self) -> str:
        names = ", ".join(t.store.describe() for t in self.targets)
        return f"mirror of {names} (write quorum {self.write_quorum} of {len(self.targets)})"

    def close(self) -> None:
        for t in self.targets:
            t.store.close()


_OPENED: weakref.WeakSet[MirrorStore] = weakref.WeakSet()


def session_report() -> dict[str, Any] | None:
    """What the mirrors this process opened saw: objects served per target and every fallback or
    failed write (for the output of any command; None when nothing noteworthy happened)."""
    served: dict[str, int] = {}
    events: list[dict[str, Any]] = []
    for m in list(_OPENED):
        if len(m.targets) < 2:
            continue
        for t in m.targets:
            served[t.name] = served.get(t.name, 0) + t.served
        events += [e for e in m.events if e["kind"] in ("read_failover", "write_failed", "caught_up")]
    if not events:
        return None
    return {"objects_served": served, "events": sorted(events, key=lambda e: e["time"])}


def find_mirror(store: ObjectStore) -> MirrorStore | None:
    """The mirror under a store (through the encryption layer), or None."""
    while store is not None:
        if isinstance(store, MirrorStore):
            return store
        store = getattr(store, "inner", None)  # type: ignore[assignment]
    return None


def read_report(store: ObjectStore) -> dict[str, Any] | None:
    """The mirror report of a store (for the CLI: which target served what), or None for one target."""
    m = find_mirror(store)
    return m.report() if m is not None and len(m.targets) > 1 else None
