"""Copy what one storage target lacks from the others, verified; and the state of every target.

`sync_stores(sources, dest)` is what `backupkit repo sync` runs, and what a mirror runs on its own to
catch a lagging target up. It works on stored bytes (an encrypted repository is copied as ciphertext,
so every target holds identical objects), and verifies each copied object on the way:

- data objects against the SHA-256 and size in their manifest or segment index (decrypting the stream
  when the repository is encrypted and the key is configured; without the key, each copy is checked by
  size only and the result says so);
- manifests by their own checksum.

Order keeps each target consistent at every moment: the keyring first, then data objects, then commit
markers (manifests, segment indexes), each marker only once every object it names is on the target.
A sync that stops half way is simply run again: it copies only what is still missing (resumable per
object). It never deletes, and never overwrites an object unless asked to repair a damaged copy.
"""

from __future__ import annotations

import hashlib
import io
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, BinaryIO

from backupkit.errors import BackupkitError, IntegrityError, ObjectNotFound, StorageError
from backupkit.repo import layout
from backupkit.repo.catalog import Catalog, decode_manifest
from backupkit.repo.compare import children
from backupkit.repo.keyring import Keyring, is_plain_key
from backupkit.repo.placement import PLACEMENT
from backupkit.storage.base import ObjectInfo, ObjectStore
from backupkit.storage.crypto import DecryptingReader
from backupkit.storage.mirror import MirrorStore

log = logging.getLogger(__name__)

READ = 1 << 20
Named = tuple[str, ObjectStore]


@dataclass
class SyncResult:
    """What a sync did (or, with dry_run, would do)."""

    sources: list[str]
    target: str
    dry_run: bool = False
    verified: str = "checksums"  # checksums | sizes (encrypted repository without its key)
    missing: int = 0
    missing_bytes: int = 0
    copied: int = 0
    copied_bytes: int = 0
    present: int = 0
    repaired: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)  # on the target, not repaired
    failed: list[dict[str, str]] = field(default_factory=list)
    held_back: list[str] = field(default_factory=list)  # commit markers whose data could not be copied
    served_by: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        """True when the target now holds everything the sources hold, undamaged."""
        if self.failed or self.held_back or self.damaged:
            return False
        return self.missing == 0 if self.dry_run else True

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["complete"] = self.complete
        return d


class _Tee(io.RawIOBase):
    """A reader that keeps what was read, so the same bytes can be both checked and copied."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.held: list[bytes] = []

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:  # type: ignore[override]
        b = self.raw.read(n)
        if b:
            self.held.append(b)
        return b

    def readinto(self, b) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def take(self) -> bytes:
        out = b"".join(self.held)
        self.held.clear()
        return out

    def close(self) -> None:
        try:
            self.raw.close()
        finally:
            super().close()


class ContentCheck:
    """Turns stored bytes into plaintext (decrypting when the repository is encrypted) and checks them."""

    def __init__(self, keks: list | None = None) -> None:
        self.keks = keks or []
        self._rings: dict[int, Any] = {}
        self.encrypted: bool | None = None
        self._lock = threading.Lock()

    def prepare(self, stores: list[Named]) -> None:
        """Whether the repository is encrypted; its keyring from the first store that has one."""
        for _, store in stores:
            try:
                info = store.stat(layout.KEYRING)
            except StorageError:
                continue
            if info is None:
                continue
            self.encrypted = True
            if self.keks:
                ring = Keyring.load(store, self.keks)
                self._rings[0] = ring
            return
        self.encrypted = False

    @property
    def can_verify(self) -> bool:
        return not self.encrypted or bool(self._rings)

    def _dek(self, dek_id: str, key: str) -> bytes:
        ring = self._rings.get(0)
        dek = ring.keys.get(dek_id) if ring else None
        if dek is None:
            raise IntegrityError(f"object {key!r} is encrypted with data key {dek_id}, which the "
                                 "configured keys do not open")
        return dek

    def plaintext(self, key: str, stored: bytes) -> bytes:
        """The plaintext of a whole small object."""
        if not self.encrypted or is_plain_key(key):
            return stored
        with DecryptingReader(io.BytesIO(stored), key, self._dek) as r:  # type: ignore[arg-type]
            return b"".join(r.read_chunks())

    def checked_copy(self, raw: BinaryIO, key: str, expect: tuple[str, int] | None) -> Iterator[bytes]:
        """Stored bytes of key, checked as they pass; raises IntegrityError before the last byte if bad."""
        tee = _Tee(raw)
        sha = hashlib.sha256()
        size = 0
        try:
            if self.encrypted and not is_plain_key(key) and self.can_verify:
                reader = DecryptingReader(tee, key, self._dek)  # type: ignore[arg-type]
                for plain in reader.read_chunks():
                    sha.update(plain)
                    size += len(plain)
                    yield tee.take()
            else:
                while True:
                    block = tee.read(READ)
                    if not block:
                        break
                    if not self.encrypted:
                        sha.update(block)
                        size += len(block)
                    yield tee.take()
            if expect is not None and self.can_verify:
                want_sha, want_size = expect
                if size != want_size or sha.hexdigest() != want_sha:
                    raise IntegrityError(f"checksum mismatch in object {key!r}", "the source copy is damaged")
            rest = tee.take()
            if rest:
                yield rest
        finally:
            tee.close()


def _objects_of(body: dict[str, Any]) -> dict[str, tuple[str, int]]:
    """key -> (sha256, size) of every object a manifest or segment index names."""
    out: dict[str, tuple[str, int]] = {}
    for o in body.get("objects", []) or []:
        out[o["key"]] = (o["sha256"], o["size"])
    obj = body.get("object")
    if isinstance(obj, dict) and "key" in obj:
        out[obj["key"]] = (obj["sha256"], obj["size"])
    return out


def _listing(store: ObjectStore, keys: set[str] | None = None) -> dict[str, ObjectInfo]:
    """Every replicated object of store, or (keys) those of keys it holds: one HEAD each."""
    if keys is None:
        return {i.key: i for i in store.list("") if layout.is_replicated(i.key)}
    out: dict[str, ObjectInfo] = {}
    for k in sorted(keys):
        info = store.stat(k) if layout.is_replicated(k) else None
        if info is not None:
            out[k] = info
    return out


# -- the key space in parts ----------------------------------------------------------------
@dataclass(frozen=True)
class _Part:
    """Keys listed and compared together, one part at a time, so that a sync or a comparison of
    targets holds one part's listing, never the repository's (a month of one-second segments is
    millions of keys): a backup (its objects and manifest), the segments of one binlog file of a
    source (data and index entries: an entry names data of its own file only), the keyring, or
    the rest (config, roll-ups, compaction and gap records, heads, restore and verify records:
    a few objects per file or backup)."""

    name: str
    prefixes: tuple[str, ...] = ()
    singles: tuple[str, ...] = ()  # keys asked for one by one (a HEAD each)

    def listing(self, store: ObjectStore) -> dict[str, ObjectInfo]:
        out: dict[str, ObjectInfo] = {}
        for p in self.prefixes:
            out.update((i.key, i) for i in store.list(p) if layout.is_replicated(i.key))
        for k in self.singles:
            if layout.is_replicated(k) and (info := store.stat(k)) is not None:
                out[k] = info
        return out

    def holds(self, key: str) -> bool:
        return key in self.singles or any(key.startswith(p) for p in self.prefixes)


def _parts(stores: list[ObjectStore]) -> list[_Part]:
    """Every key of the stores (their union) in parts, found by folder (one request per backup,
    source and binlog file on each store, not per key): the keyring first, then each backup
    and each binlog file of each source, then the rest. A store that cannot be listed raises."""
    def union(found: Iterable[tuple[list[str], list[str]]]) -> tuple[list[str], list[str]]:
        fs: set[str] = set()
        ps: set[str] = set()
        for f, p in found:
            fs.update(f)
            ps.update(p)
        return sorted(fs), sorted(ps)

    top, rest_singles = union(children(s, "") for s in stores)
    first = [_Part("keyring", (layout.KEYS,))] if layout.KEYS[:-1] in top else []
    big: list[_Part] = []
    rest: list[str] = []
    for name in top:
        folder = f"{name}/"
        if folder in (layout.KEYS, layout.LEASES):
            continue
        if folder == layout.BACKUPS:
            ids, plain = union(children(s, folder) for s in stores)
            rest_singles += plain
            big += [_Part(f"backup {b}", (f"{folder}{b}/",)) for b in ids]
            continue
        if folder != layout.BINLOG:
            rest.append(folder)
            continue
        sources, plain = union(children(s, folder) for s in stores)
        rest_singles += plain
        for src in sources:
            sp = f"{folder}{src}/"
            subs, plain = union(children(s, sp) for s in stores)
            rest_singles += plain
            files = sorted({f for s in stores for d in (layout.INDEX_DIR, layout.DATA_DIR)
                            if d in subs for f in s.folders(f"{sp}{d}/")})
            # data a `repo migrate` left in place (format 1: binlog/<src>/<file>/) is named by the
            # entries of that file: the same part, so that it is copied before them
            big += [_Part(f"binlog {src} {f}", (f"{sp}{layout.INDEX_DIR}/{f}/", f"{sp}{layout.DATA_DIR}/{f}/",
                                                *([f"{sp}{f}/"] if f in subs else [])))
                    for f in files]
            rest += [f"{sp}{d}/" for d in subs if d not in (layout.INDEX_DIR, layout.DATA_DIR)
                     and d not in files]
    return [*first, *big, _Part("the rest", tuple(rest), tuple(rest_singles))]


def _copy_order(key: str) -> tuple[int, str]:
    if key.startswith(layout.KEYS):
        return (0, key)
    if key == layout.REPO_CONFIG:
        return (2, key)
    if layout.is_commit_marker(key):
        return (3, key)
    return (1, key)


def sync_stores(sources: list[Named], dest: Named, *, keks: list | None = None, dry_run: bool = False,
                repair: bool = False, deep: bool = False, parallel: int = 4,
                progress: Callable[[int, int], None] | None = None,
                keys: Collection[str] | None = None) -> SyncResult:
    """Copy to dest every object the sources hold and dest lacks, verified, data before commit markers.

    The repository is listed and copied one part at a time (_parts: the keyring, each backup,
    each binlog file of each source, the rest), so memory holds one part's listing, whatever the
    repository's size; within a part, data goes before the commit markers that name it.

    repair: replace objects whose copy on dest differs in size (or, with deep, fails its checksum).
    deep: also read back and check every object dest already holds.
    progress(done_bytes, total_bytes) is called as bytes are copied; total_bytes is what the
    parts listed so far lack (it grows as the sync goes on).
    keys: only these objects (and the commit markers of their data), found with one HEAD each
    rather than by listing the targets: a mirror's last catch-up pass, which copies only what its
    own writes added since the bulk pass began (storage/mirror/store.py).
    """
    started = time.monotonic()
    dname, dstore = dest
    result = SyncResult([n for n, _ in sources], dname, dry_run=dry_run)
    check = ContentCheck(keks)
    check.prepare([*sources, dest])
    if not check.can_verify:
        result.verified = "sizes"
    run = _Sync(sources, dest, check, result, dry_run=dry_run, repair=repair, deep=deep,
                parallel=parallel, progress=progress)
    if keys is not None:
        wanted = set(keys) | {m for k in keys if (m := layout.commit_marker_of(k)) is not None}
        run.part(lambda store: _listing(store, wanted), lambda key: key in wanted)
    else:
        live = []
        for name, store in sources:
            try:
                store.first_after("", "")
                live.append((name, store))
            except StorageError as exc:
                log.warning("source target %s cannot be listed: %s", name, exc.message)
                result.failed.append({"key": "*", "error": f"{name}: {exc.message}"})
        run.sources = live
        for part in _parts([s for _, s in live] + [dstore]):
            run.part(part.listing, part.holds)
    result.seconds = round(time.monotonic() - started, 3)
    return result


class _Sync:
    """One sync (sync_stores), run part by part: what the parts found and did adds up in result."""

    def __init__(self, sources: list[Named], dest: Named, check: ContentCheck, result: SyncResult, *,
                 dry_run: bool, repair: bool, deep: bool, parallel: int,
                 progress: Callable[[int, int], None] | None) -> None:
        self.sources, self.dest, self.check, self.result = sources, dest, check, result
        self.dry_run, self.repair, self.deep, self.parallel = dry_run, repair, deep, parallel
        self.progress = progress
        self.total = self.done_bytes = 0
        self.lock = threading.Lock()

    def part(self, listing: Callable[[ObjectStore], dict[str, ObjectInfo]],
             holds: Callable[[str], bool]) -> None:
        """Sync the keys one listing gives (holds: whether a key is one of them)."""
        sources, (dname, dstore), check, result = self.sources, self.dest, self.check, self.result
        have = listing(dstore)
        held: dict[str, dict[str, ObjectInfo]] = {}
        for name, store in sources:
            try:
                held[name] = listing(store)
            except StorageError as exc:
                log.warning("source target %s cannot be listed: %s", name, exc.message)
                result.failed.append({"key": "*", "error": f"{name}: {exc.message}"})
        union: dict[str, ObjectInfo] = {}
        for name, _ in sources:
            for k, info in held.get(name, {}).items():
                union.setdefault(k, info)

        todo = sorted((k for k in union if k not in have), key=_copy_order)
        differing = [k for k in union if k in have and have[k].size != union[k].size
                     and not layout.is_replaced_in_place(k)]  # those differ between targets by design
        keyring_update = [k for k in differing if k.startswith(layout.KEYS)]
        differing = [k for k in differing if not k.startswith(layout.KEYS)]
        result.missing += len(todo)
        missing_bytes = sum(union[k].size for k in todo)
        result.missing_bytes += missing_bytes
        result.present += len(union) - len(todo)
        self.total += missing_bytes

        # What the markers of this part name (key -> (sha256, size)), read from a source and
        # verified by their checksum: one part's worth.
        named: dict[str, dict[str, tuple[str, int]] | None] = {}

        def objects(mkey: str) -> dict[str, tuple[str, int]] | None:
            if mkey in named:
                return named[mkey]
            got = None
            if check.can_verify:
                for name, store in sources:
                    if mkey not in held.get(name, {}):
                        continue
                    try:
                        got = _objects_of(_read_marker(store, mkey, check))
                        break
                    except (IntegrityError, StorageError) as exc:
                        log.warning("manifest %s on %s: %s", mkey, name, exc.message)
            named[mkey] = got
            return got

        def expected(key: str) -> tuple[str, int] | None:
            mkey = layout.commit_marker_of(key)
            body = objects(mkey) if mkey else None
            return body.get(key) if body else None

        if self.dry_run:
            result.damaged += differing
            return

        def copy(key: str, overwrite: bool = False) -> bool:
            return self._copy(key, held, expected, overwrite)

        # 1. keyring (copied, or replaced by the newer version), 2. data in parallel, 3. commit markers.
        for key in [k for k in todo if _copy_order(k)[0] == 0]:
            copy(key)
        if keyring_update:
            _update_keyring(sources, held, self.dest, check, result)
        data_keys = [k for k in todo if _copy_order(k)[0] == 1]
        failed_before = {f["key"] for f in result.failed}
        with ThreadPoolExecutor(max_workers=max(1, self.parallel), thread_name_prefix="sync") as pool:
            list(pool.map(copy, data_keys))
        failed = {f["key"] for f in result.failed} - failed_before
        present_now = set(have) | {k for k in data_keys if k not in failed}

        if self.repair or self.deep:
            repaired_before = len(result.repaired)
            _repair(sources, held, self.dest, have, differing, self.deep, self.repair, check, expected,
                    copy, result)
            present_now |= set(result.repaired[repaired_before:])
        else:
            result.damaged += differing

        for key in [k for k in todo if _copy_order(k)[0] >= 2]:
            body = objects(key) if check.can_verify else None
            if body is not None:
                # an object of another part (or not listed: the keys of a last pass) is asked for
                lacking = [k for k in body if k not in present_now
                           and (holds(k) or dstore.stat(k) is None)]
                if lacking:
                    result.held_back.append(key)
                    log.warning("not copying %s to %s: %d of its objects are missing there (%s)",
                                key, dname, len(lacking), lacking[0])
                    continue
            copy(key)

    def _copy(self, key: str, held: dict[str, dict[str, ObjectInfo]],
              expected: Callable[[str], tuple[str, int] | None], overwrite: bool) -> bool:
        dname, dstore = self.dest
        check, result = self.check, self.result
        errors = []
        for name, store in self.sources:
            if key not in held.get(name, {}):
                continue
            try:
                if layout.is_commit_marker(key) or key.startswith(layout.KEYS):
                    data = store.get_bytes(key)
                    if check.can_verify:
                        _decode_marker(key, data, check)
                    if overwrite:
                        dstore.put(key, data)
                    elif not dstore.put_if_absent(key, data):
                        pass  # it appeared meanwhile: fine, it is there
                else:
                    raw = store.open(key)
                    dstore.put(key, check.checked_copy(raw, key, expected(key)))
                got = dstore.stat(key)
                if got is None or got.size != held[name][key].size:
                    raise IntegrityError(f"copy of {key!r} on {dname} has "
                                         f"{got.size if got else 'no'} bytes, the source "
                                         f"{held[name][key].size}", "run the sync again")
            except (IntegrityError, StorageError) as exc:
                errors.append(f"{name}: {exc.message}")
                log.warning("copy of %s from %s to %s failed: %s", key, name, dname, exc.message)
                continue
            with self.lock:
                result.copied += 1
                result.copied_bytes += held[name][key].size
                result.served_by[name] = result.served_by.get(name, 0) + 1
                self.done_bytes += held[name][key].size
                if self.progress:
                    self.progress(self.done_bytes, self.total)
            return True
        with self.lock:
            result.failed.append({"key": key, "error": "; ".join(errors) or "no source holds it"})
        return False


def _decode_marker(key: str, data: bytes, check: ContentCheck) -> dict[str, Any]:
    return decode_manifest(key, check.plaintext(key, data))


def _read_marker(store: ObjectStore, key: str, check: ContentCheck) -> dict[str, Any]:
    return _decode_marker(key, store.get_bytes(key), check)


def _update_keyring(sources: list[Named], held, dest: Named, check: ContentCheck, result: SyncResult) -> None:
    """Replace dest's keyring with the source's when the source's is newer (a rotation dest missed)."""
    dname, dstore = dest
    for name, store in sources:
        if layout.KEYRING not in held.get(name, {}):
            continue
        try:
            src_data = store.get_bytes(layout.KEYRING)
            dst_data, etag = dstore.read_small(layout.KEYRING)
            src = decode_manifest(layout.KEYRING, src_data)
            dst = decode_manifest(layout.KEYRING, dst_data)
        except (BackupkitError, ObjectNotFound) as exc:
            result.failed.append({"key": layout.KEYRING, "error": f"{name}: {exc.message}"})
            return
        src_ids = {d["id"] for d in src.get("data_keys", [])}
        dst_ids = {d["id"] for d in dst.get("data_keys", [])}
        if src.get("updated_at", 0) > dst.get("updated_at", 0) and dst_ids <= src_ids:
            if dstore.replace_if_match(layout.KEYRING, src_data, etag):
                result.repaired.append(layout.KEYRING)
                result.copied += 1
        elif not dst_ids <= src_ids:
            result.failed.append({"key": layout.KEYRING, "error": f"{dname} holds data keys {name} lacks"})
        return


def _repair(sources, held, dest, have, differing, deep, repair, check, expected, copy, result) -> None:
    """Find damaged copies on dest (size, or with deep the checksum) and, with repair, replace them."""
    dname, dstore = dest
    suspects = list(differing)
    if deep:
        for key in sorted(have):
            if key in differing or key.startswith(layout.KEYS):
                continue
            try:
                if layout.is_commit_marker(key):
                    if check.can_verify:
                        _read_marker(dstore, key, check)
                else:
                    for _ in check.checked_copy(dstore.open(key), key, expected(key)):
                        pass
            except (IntegrityError, StorageError) as exc:
                log.warning("damaged copy of %s on %s: %s", key, dname, exc.message)
                suspects.append(key)
    for key in suspects:
        if repair and any(key in held.get(n, {}) for n, _ in sources) and copy(key, overwrite=True):
            result.repaired.append(key)
        else:
            result.damaged.append(key)


# -- the state of every target -------------------------------------------------------------
def survival_by_target(targets: list[Named], wrap: Callable[[ObjectStore], ObjectStore],
                       loss_report: Callable[..., Any], at: float | None = None,
                       source_id: str | None = None, stall_timeout: float = 30.0) -> list[dict[str, Any]]:
    """For each target, the loss window of every strategy if that target is lost: the loss report
    of the union of the other targets.

    wrap turns a raw store into the readable one (the encryption layer, when configured);
    loss_report(catalog, at=, source_id=, count=) is restore/loss.loss_report (passed in: the
    repository sits below the restore services).
    """
    out = []
    for lost, _ in targets:
        others = [(n, s) for n, s in targets if n != lost]
        row: dict[str, Any] = {"lost_target": lost, "surviving": [n for n, _ in others], "strategies": []}
        if not others:
            row["error"] = "no other target: nothing survives"
            out.append(row)
            continue
        try:
            rep = loss_report(Catalog(wrap(MirrorStore(others, write_quorum=1, placement=PLACEMENT,
                                                       stall_timeout=stall_timeout))),
                              at=at, source_id=source_id, count=False)
            row["source_id"] = rep.source_id
            row["strategies"] = [
                {"strategy": x.strategy, "label": x.label, "recovery_point": x.recovery_point,
                 "recovery_source": x.recovery_source,
                 "loss_seconds": None if x.loss_seconds is None else round(x.loss_seconds, 3)}
                for x in rep.strategies]
            if not rep.strategies:
                row["error"] = "the other targets hold no backup and no binlog: everything is lost"
        except BackupkitError as exc:
            row["error"] = exc.message
        out.append(row)
    return out
