"""Several storage targets as one ObjectStore (a cross-region repository).

Writes: every object is streamed to every target at once (one thread and a small bounded queue per
target). A put succeeds when at least `write_quorum` targets stored the object; a target that fails or
makes no progress for `stall_timeout` seconds is dropped from that write and recorded as *lagging*.

Commit markers (manifests, segment index entries: everything written with put_if_absent) are written
only to targets that are not lagging, so that each target on its own obeys "data first, manifest
last": a target never shows a backup whose data it missed. The first of them decides a put_if_absent
but is waited for only LAG_GRACE while the others still make the quorum (_first_to_create), so a
frozen first target does not hold commits up. `backupkit repo sync` (or catch_up(),
with the copier the repository gives: repo/sync.py) copies what a lagging target lacks and clears the flag.

Reads: from the first target in policy order that answers; a target that is unreachable, misses the
object or serves a corrupt copy is skipped for the next one, and the mirror records which target
served what (`report()`, and a warning in the log). Listings are the union of every reachable target.

Leases and conditional updates: the *authority* is the first reachable target in policy order.
put_if_absent and replace_if_match of a lease (what the placement rule keeps on the authority only,
repo/placement.py) run there only and are not copied; other
conditional writes run on the authority first and are then copied to the other targets. While the
first target is unreachable the next one is the authority (a holder moves its valid lease there,
repo/lease.py), so two writers that see different targets as unreachable can both hold a lease: use
one authority target you trust for leases, listed first.
"""

from __future__ import annotations

import heapq
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO, Protocol, TypeVar

from backupkit.errors import BackupkitError, ObjectNotFound, StorageError, UsageError
from backupkit.storage.base import Capabilities, ObjectInfo, ObjectStore
from backupkit.storage.mirror.health import MirrorHealth, Target
from backupkit.storage.mirror.readers import MirrorReader, TargetStore
from backupkit.storage.mirror.writes import LAG_GRACE, tee
from backupkit.util.streams import Chunks, iter_chunks
from backupkit.util.workers import put_unless_stopped

log = logging.getLogger(__name__)

T = TypeVar("T")
SMALL_PUT = 8 << 20  # bytes values up to this size are written with one call per target
_END = object()  # the end of a listing

Named = tuple[str, ObjectStore]


class Placement:
    """Where the mirror puts an object. The default: every object on every target, quorum writes.

    The repository gives its own rule (repo/placement.py): the mirror knows no repository key.
    """

    def authority_only(self, key: str) -> bool:
        """True for objects that live on the authority target only and are never copied (leases)."""
        return False

    def quorum(self, key: str, write_quorum: int) -> int:
        """How many targets must store key."""
        return write_quorum


class CatchUpResult(Protocol):
    """What a catch-up of one lagging target reports (repo/sync.SyncResult)."""

    copied: int

    @property
    def complete(self) -> bool: ...

    def to_dict(self) -> dict[str, Any]: ...


#: Copies what a lagging target lacks from the others: (sources, target, progress, keys=None) ->
#: result; with keys, only those objects (found one by one, no listing).
CatchUp = Callable[..., CatchUpResult]
#: Keys the mirror remembers writing while a target lags; past this the last pass lists again.
JOURNAL_LIMIT = 100_000


class MirrorStore(MirrorHealth, ObjectStore):
    """Several targets as one store: writes go to all (quorum), reads come from the first good copy."""

    def __init__(self, targets: list[Named], write_quorum: int | None = None,
                 stall_timeout: float = 30.0, retry_after: float = 30.0, queue_depth: int = 4,
                 placement: Placement | None = None, catch_up: CatchUp | None = None) -> None:
        super().__init__(targets, stall_timeout, retry_after)
        quorum = len(self.targets) if write_quorum is None else write_quorum
        if not 1 <= quorum <= len(self.targets):
            raise UsageError(f"write_quorum {write_quorum} is not between 1 and {len(self.targets)} "
                             "(the number of targets)")
        self.write_quorum = quorum
        self.queue_depth = queue_depth
        self.placement = placement or Placement()
        self._catch_up = catch_up
        self.url = self.targets[0].store.url
        self._last_list_error: StorageError | None = None
        # commit markers and the last pass of a catch-up exclude each other (see catch_up)
        self._commit_lock = threading.RLock()
        # keys written while a target lags: the last catch-up pass copies only these, and the
        # bulk pass too when the journal began with the lag (whole: every key a target missed)
        self._journal: set[str] | None = None
        self._journal_full = False
        self._journal_whole = False
        self._journal_lock = threading.Lock()
        self._closed = threading.Event()
        self._background: threading.Thread | None = None
        self._background_lock = threading.Lock()
        self.background_catch_up = 0.0  # seconds between background catch-up rounds; 0: off

    def capabilities(self) -> Capabilities:
        return Capabilities(several_copies=len(self.targets) > 1)

    def quorum(self, key: str) -> int:
        """Targets that must store key (the placement rule decides: see repo/placement.py)."""
        return self.placement.quorum(key, self.write_quorum)

    # -- reads -----------------------------------------------------------------------------------
    def alternatives(self, key: str) -> list[ObjectStore]:
        return [TargetStore(self, t) for t in self.read_order(key)]

    def open(self, key: str) -> BinaryIO:
        order = self.read_order(key)
        missing, errors = [], []
        for i, t in enumerate(order):
            try:
                fh = self.call(t, t.store.open, key)
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
            return MirrorReader(self, key, order, i, fh)  # type: ignore[return-value]
        if errors:
            raise StorageError(f"object {key!r} cannot be read from any target ({'; '.join(errors)}"
                               + (f"; missing in {', '.join(missing)}" if missing else "") + ")")
        raise ObjectNotFound(key, self.describe())

    def read_small(self, key: str) -> tuple[bytes, str]:
        if self.placement.authority_only(key):
            return self._on_authority(lambda s: s.read_small(key))
        last: StorageError | None = None
        for t in self.read_order(key):
            try:
                data, etag = self.call(t, t.store.read_small, key)
                t.served += 1
                return data, etag
            except ObjectNotFound as exc:
                last = last or exc
            except StorageError as exc:
                last = exc
        raise last or ObjectNotFound(key, self.describe())

    def stat(self, key: str) -> ObjectInfo | None:
        errors = []
        for t in self.read_order(key):
            try:
                info = self.call(t, t.store.stat, key)
            except StorageError as exc:
                errors.append(exc)
                continue
            if info is not None:
                return info
        if errors and len(errors) == len(self.targets):
            raise errors[0]
        return None

    def _listing(self, t: Target, prefix: str, state: dict[str, bool],
                 after: str | None = None) -> Iterator[ObjectInfo]:
        """One target's listing through a thread and a bounded queue, so a stalled target cannot hang us."""
        q: queue.Queue = queue.Queue(maxsize=8)
        stop = threading.Event()

        def give(item: object) -> bool:
            return put_unless_stopped(q, item, stop, poll=0.5)

        def work() -> None:
            batch: list[ObjectInfo] = []
            try:
                listing = t.store.list(prefix) if after is None else t.store.list_after(prefix, after)
                for info in listing:
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
                    self.mark_down(t, f"listing stalled for {self.stall_timeout:g} s")
                    return
                if item is _END:
                    state[t.name] = True
                    return
                if isinstance(item, BaseException):
                    if isinstance(item, StorageError):
                        self.mark_down(t, item)
                        self._last_list_error = item
                        return
                    raise item
                yield from item
        finally:
            stop.set()

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self._merged(prefix, None)

    def list_after(self, prefix: str, after: str) -> Iterator[ObjectInfo]:
        """Each target's own list_after (S3's StartAfter), merged as list() merges."""
        return self._merged(prefix, after)

    def _merged(self, prefix: str, after: str | None) -> Iterator[ObjectInfo]:
        if len(self.targets) == 1:
            store = self.targets[0].store
            yield from (store.list(prefix) if after is None else store.list_after(prefix, after))
            return
        live = [t for t in self.read_order() if not t.is_down()] or list(self.targets)
        state: dict[str, bool] = {}
        def tagged(rank: int, t: Target) -> Iterator[tuple[str, int, ObjectInfo]]:
            for info in self._listing(t, prefix, state, after):
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
        """Targets to write to: every reachable one; down ones are tried too if needed for the quorum.

        A target with a write left running for stall_timeout is marked down; a lagging target with
        a write still running is skipped (the background catch-up completes it), so a slow or
        dead target never piles up writes nor holds the writer up."""
        quorum = self.quorum(key)
        for t in self.targets:
            if not t.is_down() and t.stuck_for() > self.stall_timeout:
                self.mark_down(t, f"a write to it has not finished in {self.stall_timeout:g} s")
        up = [t for t in self.targets if not t.is_down()]
        free = [t for t in up if not (t.lagging and t.inflight)]
        if len(free) >= quorum and len(free) < len(up):
            for t in up:
                if t not in free:
                    self.mark_lagging(t, key, "a write to it is still running")
            up = free
        if len(up) < quorum:
            return list(self.targets)
        for t in self.targets:
            if t.is_down():
                self.mark_lagging(t, key, f"unreachable: {t.last_error}")
        return up

    def _journal_key(self, key: str) -> None:
        """Remember a write while a target lags (from before any catch-up lists the targets)."""
        with self._journal_lock:
            if self._journal is None and any(t.lagging for t in self.targets):
                self._journal, self._journal_full, self._journal_whole = set(), False, False
            if self._journal is not None and not self._journal_full:
                self._journal.add(key)
                self._journal_full = len(self._journal) > JOURNAL_LIMIT

    def put(self, key: str, data: BinaryIO | Chunks | bytes) -> ObjectInfo:
        self._journal_key(key)
        writers = self._writers(key)
        if len(self.targets) == 1:
            info = writers[0].store.put(key, data)
            writers[0].written += 1
            return info
        if isinstance(data, (bytes, bytearray, memoryview)) and len(data) <= SMALL_PUT:
            results = self._parallel(writers, lambda s: s.put(key, data), key, self.quorum(key))
        else:
            results = tee(self, writers, key, iter_chunks(data), self.quorum(key), self.queue_depth)
        return self._settle(writers, key, results, self.quorum(key))

    def _settle(self, writers: list[Target], key: str, results: dict[str, Any], quorum: int):
        ok = [t for t in writers if not isinstance(results.get(t.name), BaseException)
              and t.name in results]
        for t in writers:
            r = results.get(t.name)
            if t not in ok:
                reason = r.message if isinstance(r, StorageError) else str(r or "no answer")
                self.mark_lagging(t, key, reason)
            else:
                t.written += 1
        if len(ok) < quorum:
            why = "; ".join(f"{t.name}: {t.last_error or 'failed'}" for t in writers if t not in ok)
            raise StorageError(f"{key!r} was stored on {len(ok)} of {len(self.targets)} targets, "
                               f"fewer than the write quorum {quorum} ({why})",
                               "bring the targets back, or lower storage.write_quorum")
        return results[ok[0].name]

    def _parallel(self, targets: list[Target], fn: Callable[[ObjectStore], T], key: str,
                  quorum: int | None = None) -> dict[str, Any]:
        """fn(store) on each target at once; results or exceptions by target name.

        quorum (writes): return once that many succeeded and LAG_GRACE more seconds passed; a
        target still busy then keeps going in the background and gets a StorageError here (the
        caller records it as lagging)."""
        out: dict[str, Any] = {}
        threads = []
        for t in targets:
            def work(t: Target = t) -> None:
                token = t.begin_write() if quorum is not None else 0
                try:
                    out[t.name] = fn(t.store)
                except BaseException as exc:  # noqa: BLE001 - reported by _settle
                    out[t.name] = exc
                finally:
                    if quorum is not None:
                        t.end_write(token)
            th = threading.Thread(target=work, daemon=True, name=f"mirror-{t.name}")
            th.start()
            threads.append((t, th))
        start = time.monotonic()
        deadline = start + self.stall_timeout
        quorum_at: float | None = None
        while quorum is not None:
            now = time.monotonic()
            ok = sum(1 for t, th in threads if not th.is_alive()
                     and not isinstance(out.get(t.name), BaseException))
            if ok >= quorum and quorum_at is None:
                quorum_at = now
            busy = [th for _, th in threads if th.is_alive()]
            if not busy or now >= deadline or (quorum_at is not None and now - quorum_at >= LAG_GRACE):
                break
            busy[0].join(0.01)
        for t, th in threads:
            th.join(max(0.0, deadline - time.monotonic()) if quorum_at is None else 0.0)
            if th.is_alive() and quorum_at is not None:
                out[t.name] = StorageError(f"storage target {t.name} had not finished {key!r} when the "
                                           "write quorum had it")
            elif th.is_alive():
                err = StorageError(f"storage target {t.name} did not answer within {self.stall_timeout:g} s")
                self.mark_down(t, err)
                out[t.name] = err
            elif isinstance(out.get(t.name), StorageError) and not isinstance(out[t.name], ObjectNotFound):
                self.mark_down(t, out[t.name])
        return out

    def put_if_absent(self, key: str, data: bytes) -> bool:
        if self.placement.authority_only(key):
            return self._on_authority(lambda s: s.put_if_absent(key, data))
        self._journal_key(key)
        with self._commit_lock:
            return self._put_if_absent(key, data)

    def _put_if_absent(self, key: str, data: bytes) -> bool:
        eligible = self._commit_targets(key)
        authority, created = self._first_to_create(eligible, key, data)
        if not created:
            return False
        rest = [t for t in eligible[eligible.index(authority) + 1:] if not t.is_down() and not t.lagging]
        results: dict[str, Any] = {authority.name: True}
        results.update(self._parallel(rest, lambda s: s.put_if_absent(key, data), key,
                                      max(0, self.quorum(key) - 1)))
        # Present already (False) counts: the object is there.
        results = {n: (r if isinstance(r, BaseException) else True) for n, r in results.items()}
        self._settle([authority, *rest], key, results, self.quorum(key))
        return True

    def _first_to_create(self, eligible: list[Target], key: str, data: bytes) -> tuple[Target, bool]:
        """put_if_absent on the first eligible target that answers: its answer decides (first writer
        wins there).

        A target is waited for only LAG_GRACE seconds while the targets after it can still make
        the write quorum: one that has not answered by then is recorded as lagging (it gets no
        commit marker until a catch-up completes it; its write goes on in the background) and
        the next one decides. So a frozen first target costs a commit LAG_GRACE, as a frozen
        second target costs a data write, not stall_timeout. The marker that write may still
        leave there commits data the target holds (it was not lagging)."""
        if len(self.targets) == 1:  # nowhere to fail over to: inline, as call() runs it
            return eligible[0], eligible[0].store.put_if_absent(key, data)
        quorum = self.quorum(key)
        errors = []
        for i, t in enumerate(eligible):
            spare = len(eligible) - i - 1 >= quorum
            box: dict[str, Any] = {}

            def work(t: Target = t, box: dict[str, Any] = box) -> None:
                token = t.begin_write()
                try:
                    box["r"] = t.store.put_if_absent(key, data)
                except BaseException as exc:  # noqa: BLE001 - judged below
                    box["e"] = exc
                finally:
                    t.end_write(token)

            th = threading.Thread(target=work, daemon=True, name=f"mirror-{t.name}")
            th.start()
            th.join(LAG_GRACE if spare else self.stall_timeout)
            if th.is_alive() and spare:
                self.mark_lagging(t, key, f"it did not answer within {LAG_GRACE:g} s; "
                                          "the other targets took the commit")
                errors.append(f"{t.name}: no answer within {LAG_GRACE:g} s")
                continue
            if th.is_alive():
                err = StorageError(f"storage target {t.name} did not answer within {self.stall_timeout:g} s",
                                   "it is unreachable or stalled")
                self.mark_down(t, err)
                self.mark_lagging(t, key, err.message)
                errors.append(f"{t.name}: {err.message}")
            elif "e" in box:
                failure = box["e"]
                if isinstance(failure, ObjectNotFound) or not isinstance(failure, StorageError):
                    raise failure
                self.mark_down(t, failure)
                self.mark_lagging(t, key, failure.message)
                errors.append(f"{t.name}: {failure.message}")
            else:
                return t, bool(box["r"])
            if not spare:  # the targets left cannot make the quorum: no marker anywhere
                break
        raise StorageError(f"{key!r} was not committed: fewer than the write quorum {quorum} of the "
                           f"complete targets accepted it ({'; '.join(errors)})",
                           "bring the targets back, or lower storage.write_quorum")

    def replace_if_match(self, key: str, data: bytes, etag: str) -> bool:
        if self.placement.authority_only(key):
            return self._on_authority(lambda s: s.replace_if_match(key, data, etag))
        self._journal_key(key)
        authority, ok = self._first_ok(self.reachable(), lambda s: s.replace_if_match(key, data, etag), key)
        if not ok:
            return False
        rest = [t for t in self.targets if t is not authority and not t.is_down()]
        results = self._parallel(rest, lambda s: s.put(key, data), key)
        for t in rest:
            if isinstance(results.get(t.name), BaseException):
                self.mark_lagging(t, key, str(results[t.name]))
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
                self.mark_lagging(t, key, "unreachable" if t.is_down() else "lagging")
        return eligible

    def _first_ok(self, targets: list[Target], fn: Callable[[ObjectStore], T], key: str) -> tuple[Target, T]:
        """fn on the first target that answers (the authority)."""
        errors = []
        for t in targets:
            try:
                return t, self.call(t, fn, t.store)
            except ObjectNotFound:
                raise
            except StorageError as exc:
                errors.append(f"{t.name}: {exc.message}")
        raise StorageError(f"no storage target accepted {key!r} ({'; '.join(errors)})")

    def _on_authority(self, fn: Callable[[ObjectStore], T]) -> T:
        return self._first_ok(self.reachable(), fn, "a lease")[1]

    def delete(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        results = self._parallel(self.reachable(), lambda s: s.delete(keys), "delete")
        failed = {n: r for n, r in results.items() if isinstance(r, BaseException)}
        for n, r in failed.items():
            log.warning("storage target %s: delete failed (%s); it keeps %d objects until the next prune",
                        n, r, len(keys))
            self.record("delete_failed", n, None, str(r), count=len(keys))
        if len(failed) == len(results):
            raise next(iter(failed.values()))

    # -- health ------------------------------------------------------------------------------------
    def check(self) -> None:
        """Pass when at least one target is usable; the others are recorded as down."""
        results = self._parallel(self.targets, lambda s: s.check(), "check")
        bad = {n: r for n, r in results.items() if isinstance(r, BaseException)}
        for t in self.targets:
            if t.name in bad:
                self.mark_down(t, bad[t.name])
        if len(bad) == len(self.targets):
            raise StorageError("no storage target is reachable: " + "; ".join(
                f"{n}: {r.message if isinstance(r, BackupkitError) else r}" for n, r in bad.items()))

    def catch_up(self, progress=None) -> list[dict[str, Any]]:
        """Copy what each lagging, reachable target lacks from the others; clears its lagging flag.

        The bulk copy runs while writes go on; a complete one is followed by a last pass under
        the commit lock (no commit marker can be written meanwhile) that copies what arrived in
        between, and only then is the flag cleared, so a target never gets a commit marker
        before the data it commits. The last pass copies only the keys this mirror wrote since
        the target began to lag (its journal, kept from before the bulk pass listed anything):
        one HEAD per key rather than a listing of both targets, so it holds commits up for
        milliseconds, not for the time a large repository takes to list. The bulk pass does the
        same when the journal began with the lag (it then names every key a lagging target
        missed: each missed write is noted as the target is marked lagging) and holds at most
        JOURNAL_LIMIT keys; otherwise it compares every key of the targets (repo/sync.py, one
        part at a time). Objects other processes write are theirs to copy; each target stays
        consistent either way."""
        if self._catch_up is None:
            return []
        with self._journal_lock:
            if self._journal is None:
                self._journal, self._journal_full, self._journal_whole = set(), False, False
        done = []
        sources = [t for t in self.targets if not t.lagging and not t.is_down()]
        for t in self.targets:
            if not t.lagging or not sources:
                continue
            try:
                self.call(t, t.store.check)
            except StorageError:
                continue
            named = [(s.name, s.store) for s in sources]
            with self._journal_lock:
                whole = None if self._journal_full or not self._journal_whole else sorted(self._journal or ())
            if whole is None:  # every key of both targets compared
                result = self._catch_up(named, (t.name, t.store), progress)
            else:  # what it missed since it began to lag: one HEAD a key, no listing
                result = self._catch_up(named, (t.name, t.store), progress, keys=whole)
            copied = result.copied
            if result.complete:
                with self._commit_lock:
                    with self._journal_lock:
                        keys = None if self._journal_full else sorted(self._journal or ())
                    if keys is None:
                        result = self._catch_up(named, (t.name, t.store), progress)
                    else:
                        result = self._catch_up(named, (t.name, t.store), progress, keys=keys)
                    copied += result.copied
                    if result.complete and not t.inflight:
                        t.lagging = False
                        t.lag_reason = ""
                        log.warning("storage target %s caught up: %d objects copied", t.name, copied)
                        self.record("caught_up", t.name, None, f"{copied} objects copied")
            done.append(result.to_dict())
        with self._journal_lock:
            if not any(t.lagging for t in self.targets):
                self._journal = None
        return done

    # -- background catch-up (a shipper: the lagging target never holds its writes up) ------------
    def mark_lagging(self, t: Target, key: str, reason: str) -> None:
        # the key it missed, and from the first lag on every key written (the journal), noted
        # with the flag under one lock: a catch-up ending now cannot drop the journal between
        with self._journal_lock:
            if self._journal is None:
                self._journal, self._journal_full, self._journal_whole = set(), False, True
            if not self._journal_full:
                self._journal.add(key)
                self._journal_full = len(self._journal) > JOURNAL_LIMIT
            super().mark_lagging(t, key, reason)
        if self.background_catch_up > 0 and self._catch_up is not None:
            with self._background_lock:
                if self._background is None or not self._background.is_alive():
                    self._background = threading.Thread(target=self._catch_up_loop, daemon=True,
                                                        name="mirror-catch-up")
                    self._background.start()

    def _catch_up_loop(self) -> None:
        """Every background_catch_up seconds: catch up the lagging targets that answer again;
        ends when none lags."""
        while not self._closed.wait(self.background_catch_up):
            lagging = [t for t in self.targets if t.lagging]
            if not lagging:
                return
            for t in lagging:  # probe a target marked down: back as soon as it answers again
                if t.is_down() and not t.inflight:
                    try:
                        self.call(t, t.store.check)
                    except StorageError:
                        continue
                    t.down_until = 0.0
                    log.warning("storage target %s answers again", t.name)
                    self.record("up", t.name, None, "answers again")
            if not any(not t.is_down() and not t.inflight for t in lagging):
                continue
            try:
                self.catch_up()
            except Exception as exc:  # noqa: BLE001 - tried again next round
                log.warning("background catch-up failed (tried again): %s", exc)

    def describe(self) -> str:
        names = ", ".join(t.store.describe() for t in self.targets)
        return f"mirror of {names} (write quorum {self.write_quorum} of {len(self.targets)})"

    def close(self) -> None:
        self._closed.set()
        for t in self.targets:
            t.store.close()
