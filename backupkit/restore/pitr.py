"""Point-in-time restore: plan, check, load the base, replay the binlog, record, report.

Order matters for safety: the plan is computed and every object it needs is checked present
before the target is touched, so a bad time, a target outside coverage or behind a gap, or a
missing segment object leaves the target exactly as it was.

- ``restore_to_point(...)``: the service function (the CLI, the scheduler and the demo call it).
- the command and its progress view are in ``backupkit.cli.pitr``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from backupkit.errors import BackupkitError, ObjectNotFound, UsageError
from backupkit.mysql.connection import TARGET_PASSWORD_ENV, ConnSpec
from backupkit.repo import layout
from backupkit.repo.catalog import Catalog
from backupkit.repo.stretches import FileMembers
from backupkit.repo.watermark import watermarks
from backupkit.restore.cold import restore_cold
from backupkit.restore.guard import ensure_not_source
from backupkit.restore.load import RestoreOptions, restore_snapshot
from backupkit.restore.loss import LossReport, loss_after_restore
from backupkit.restore.physical import restore_physical
from backupkit.restore.plan import Planner, RestorePlan
from backupkit.restore.replay import ReachedPoint, ReplayResult, replay_segments
from backupkit.restore.stoppoint import RestoreTarget
from backupkit.storage.base import ObjectStore
from backupkit.util.units import format_time, utc_iso

PitrProgress = Callable[..., None]
"""Called as (phase, event, **details): phase "base" gets the loader's events (and "bytes" with
done/total for a cold base), phase "replay" the replay's."""


class _BaseBytes:
    """util.progress.Progress for the cold loader, passed on as phase "base" "bytes" events."""

    def __init__(self, report: PitrProgress) -> None:
        self.report = report
        self.done = 0.0
        self.total: float | None = None

    def start(self, description: str, total: float | None = None) -> int:
        self.total = total
        return 0

    def advance(self, task: int, amount: float = 0, *, description: str | None = None) -> None:
        self.done += amount
        self.report("base", "bytes", done=self.done, total=self.total)

    def update(self, task: int, *, completed: float | None = None, total: float | None = None,
               description: str | None = None) -> None:
        self.done = self.done if completed is None else completed
        self.total = self.total if total is None else total
        self.report("base", "bytes", done=self.done, total=self.total)

    def finish(self, task: int) -> None:
        pass


@dataclass
class PitrResult:
    """What a point-in-time restore did."""

    plan: RestorePlan
    target: str
    reached: ReachedPoint
    started_at: float
    finished_at: float = 0.0
    base_seconds: float = 0.0
    replay: ReplayResult | None = None
    base: dict[str, Any] = field(default_factory=dict)
    record_id: str | None = None
    loss: LossReport | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return self.finished_at - self.started_at

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "pitr", "target": self.target, "plan": self.plan.to_dict(),
                "reached": self.reached.to_dict(), "duration": round(self.duration, 3),
                "base_seconds": round(self.base_seconds, 3),
                "replay": self.replay.to_dict() if self.replay else None,
                "base": self.base, "record_id": self.record_id,
                "loss": self.loss.to_dict() if self.loss else None, "notes": list(self.notes),
                "gap": self.plan.gap}


# -- planning from the repository ------------------------------------------------------------------
def measured_rates(records: list[dict[str, Any]]) -> dict[str, float]:
    """Throughputs of the latest measured restores, for the plan's estimate."""
    rates: dict[str, float] = {}
    for r in reversed(records):
        kind = r.get("kind")
        if kind in ("snapshot", "cold", "physical") and kind not in rates and r.get("duration") \
                and r.get("raw_bytes"):
            rates[kind] = float(r["raw_bytes"]) / max(float(r["duration"]), 0.001)
        if kind == "pitr" and "replay" not in rates and r.get("replay_seconds") and r.get("replay_bytes"):
            rates["replay"] = float(r["replay_bytes"]) / max(float(r["replay_seconds"]), 0.001)
    return rates


def make_plan(catalog: Catalog, target: RestoreTarget, backup_id: str | None = None,
              source_id: str | None = None, databases: list[str] | None = None) -> RestorePlan:
    """Read the manifests and plan (raises PlanError with one line when nothing reaches target).

    databases: a restore limited to them may start from a partial base holding them; None (a
    whole-server restore) uses only full bases."""
    backups = links = catalog.backups()
    if backup_id:
        chosen = [b for b in backups if b.id == backup_id]
        if not chosen:
            raise UsageError(f"no backup {backup_id!r} in the repository",
                             "run 'backupkit list' to see the backups")
        backups = chosen
        source_id = source_id or chosen[0].source.source_id
    sources = sorted({b.source.source_id for b in backups} | set(catalog.sources()))
    if source_id is not None:
        sources = [s for s in sources if s == source_id] or [source_id]
    confirmed = watermarks(catalog, sources)  # before the segments: see repo.watermark
    gaps = {sid: catalog.gaps(sid) for sid in sources}
    try:
        records = catalog.restore_records()
    except Exception:  # an unreadable record only costs the estimate
        records = []

    # stretches (repo/stretches.py): a few per binlog file, cut at every base's point and the
    # watermark's, so the plan is the one the segments give; the segments of the stretch where the
    # replay stops are read then (a GTID target: of each file up to the one holding it, one at a
    # time), the others' when the replay reaches them
    cuts = [(b.point.file, b.point.pos) for b in backups if b.point.file]
    items = {sid: catalog.stretches(sid, cuts=cuts + ([confirmed[sid].point] if sid in confirmed
                                                      else [])) for sid in sources}
    return Planner(backups, items, gaps, source_id, measured_rates(records), confirmed=confirmed,
                   databases=databases, links=links, expand=FileSegments(catalog)).plan(target)


class FileSegments(FileMembers):
    """A plan's ``expand``: a stretch's segments from the listed segments of its binlog file
    (Catalog.file_segments), the last file read kept (the replay goes through a file's stretches
    in order, so it holds one file's segments at a time)."""

    def __init__(self, catalog: Catalog) -> None:
        super().__init__(lambda source_id, binlog_file: catalog.file_segments(source_id, binlog_file))
        self.catalog = catalog  # looked up at each read, as before


#: Segments of one binlog file above which preflight lists their keys instead of asking for
#: each one. A HEAD costs a round trip per object; a LIST page holds 1000 keys, but the folder
#: may hold many more keys than the plan reads (the data of small segments a compacted one
#: superseded stays for its grace period), so only a plan reading many segments lists.
PREFLIGHT_LIST_ABOVE = 64


def _present(store: ObjectStore, keys: list[str]) -> list[bool]:
    """Whether each key exists: many keys sharing a prefix by listing it from the first of them
    to the last, the others by HEAD."""
    groups: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k.rsplit("/", 1)[0] + "/", []).append(i)
    out = [False] * len(keys)
    single: list[int] = []
    for folder, idx in groups.items():
        if len(idx) <= PREFLIGHT_LIST_ABOVE:
            single += idx
            continue
        wanted = sorted(keys[i] for i in idx)
        listed = set()
        listing = store.list_after(folder, wanted[0][:-1])  # from the first wanted key on
        for info in listing:
            if info.key > wanted[-1]:
                break
            listed.add(info.key)
        close = getattr(listing, "close", None)
        if close is not None:
            close()
        for i in idx:
            out[i] = keys[i] in listed
    with ThreadPoolExecutor(max_workers=8) as pool:
        for i, info in zip(single, pool.map(store.stat, [keys[i] for i in single]), strict=True):
            out[i] = info is not None
    return out


def preflight(store: ObjectStore, plan: RestorePlan) -> None:
    """Every object the plan reads exists (checked before anything is changed): one LIST page
    per thousand segments of a file rather than one request per segment, the segments read one
    binlog file at a time (a plan over stretches reads each file's index here and again when
    the replay reaches it: memory for one file, not for the month)."""
    _check(store, plan, [o.key for o in plan.base.objects])
    batch: list[str] = []
    for seg in plan.iter_segments():
        if batch and not _same_dir(batch[-1], seg.object.key):
            _check(store, plan, batch)
            batch = []
        batch.append(seg.object.key)
    _check(store, plan, batch)


def _same_dir(a: str, b: str) -> bool:
    return a.rsplit("/", 1)[0] == b.rsplit("/", 1)[0]


def _check(store: ObjectStore, plan: RestorePlan, keys: list[str]) -> None:
    for key, ok in zip(keys, _present(store, keys), strict=True):
        if not ok:
            what = "segment" if layout.is_binlog_key(key) else f"{plan.base.kind} backup {plan.base.id}"
            raise ObjectNotFound(key, f"{store.describe()} ({what}); nothing was changed")


# -- executing -----------------------------------------------------------------------------------
def restore_to_point(store: ObjectStore, catalog: Catalog, target: RestoreTarget,
                     spec: ConnSpec | None, *, backup_id: str | None = None,
                     datadir: str | None = None, start_command: str | None = None,
                     force: bool = False, verify: bool = False, parallel: int | None = None,
                     log_bin: bool = False, include_users: bool = False,
                     source_id: str | None = None, progress: PitrProgress | None = None,
                     notify: Callable[[str], None] | None = None, report_loss: bool = True,
                     in_place: bool = False, source_spec: ConnSpec | None = None,
                     plan: RestorePlan | None = None) -> PitrResult:
    """Restore the base the plan picks, replay the binlog to the exact stop, record the RTO."""
    say = notify or (lambda msg: None)
    report = progress or (lambda *a, **k: None)
    started = time.time()
    plan = plan or make_plan(catalog, target, backup_id, source_id)
    base = plan.base
    if base.kind in ("cold", "physical"):
        if not datadir:
            raise UsageError(f"the plan starts from {base.kind} backup {base.id}; give --datadir DIR "
                             "(and --start-command and --target to replay the binlog)")
        if plan.segments and not (start_command and spec):
            raise UsageError(f"the plan replays {plan.segment_count} binlog segment(s) after {base.kind} "
                             f"backup {base.id}: give --start-command and --target for the server "
                             "that runs on --datadir")
    elif spec is None:
        raise UsageError("a point-in-time restore needs --target mysql://user@host:port",
                         f"the password comes from {TARGET_PASSWORD_ENV}")
    preflight(store, plan)
    if base.kind == "snapshot" and spec is not None:  # refused before anything is said or done
        ensure_not_source(spec, [base.source], source_spec, in_place, base.point.gtid)
    where = spec.display() if spec else str(datadir)
    result = PitrResult(plan, where, ReachedPoint(base.point.file, base.point.pos, base.point.gtid,
                                                  base.point.time), started)
    if plan.gap is not None:  # --latest --accept-gap: never silent
        result.notes.append(plan.gap["text"])
    # 1. the base
    t0 = time.monotonic()
    say(f"restoring {base.kind} backup {base.id}")
    if base.kind == "snapshot":
        assert spec is not None
        options = RestoreOptions(force=force, verify=verify, parallel=parallel, log_bin=log_bin,
                                 include_users=include_users, record=False, in_place=in_place,
                                 source=source_spec)
        loaded = restore_snapshot(store, base, spec, options,
                                  progress=lambda ev, **kw: report("base", ev, **kw), catalog=catalog)
        result.base = loaded.to_dict()
        result.notes += loaded.notes
    elif base.kind == "physical":
        done = restore_physical(store, base, datadir, catalog=catalog, force=force,
                                start_command=start_command, conn=spec if start_command else None,
                                record=False, notify=say, progress=_BaseBytes(report))
        result.base = done.to_dict()
    else:
        done = restore_cold(store, base, datadir, force=force, start_command=start_command,
                            conn=spec if start_command else None,
                            progress=_BaseBytes(report),
                            notify=say)
        result.base = done.to_dict()
    result.base_seconds = time.monotonic() - t0
    # 2. the binlog
    if plan.segments:
        assert spec is not None
        say(f"replaying {plan.segment_count} binlog segment(s) to {target.describe()}")
        try:
            result.replay = replay_segments(store, plan.iter_segments(), plan.start, target, spec,
                                            start_point=result.reached, log_bin=log_bin,
                                            count=plan.segment_count, raw_bytes=plan.segment_raw_bytes,
                                            progress=lambda ev, **kw: report("replay", ev, **kw))
        except BackupkitError as exc:
            raise _partial(exc, where, base.id, result.reached) from None
        result.notes += result.replay.notes
    result.finished_at = time.time()
    # 3. the record (its duration is this strategy's measured RTO) and the loss report
    replay = result.replay
    record = {"kind": "pitr", "base_kind": base.kind, "base_id": base.id, "backup_id": base.id,
              "target": where, "started_at": started, "finished_at": result.finished_at,
              "started_at_utc": utc_iso(started), "finished_at_utc": utc_iso(result.finished_at),
              "duration": round(result.duration, 3), "base_seconds": round(result.base_seconds, 3),
              "replay_seconds": round(replay.seconds, 3) if replay else 0.0,
              "replay_bytes": replay.binlog_bytes if replay else 0,
              "transactions": replay.transactions if replay else 0,
              "segments": plan.segment_count, "restore_target": target.to_dict(),
              "reached": result.reached.to_dict(), "source_id": plan.source_id}
    try:
        result.record_id = catalog.commit_restore_record(record)
    except Exception as exc:  # the restore itself succeeded
        result.notes.append(f"the restore record could not be written: {exc}")
    if report_loss:
        result.loss = loss_after_restore(catalog, plan.source_id)
    return result


def _partial(exc: BackupkitError, where: str, base_id: str, reached: ReachedPoint) -> BackupkitError:
    """The replay failed after the base was loaded: say that the target is partial, and where it
    stands (the error keeps its type, so its exit code)."""
    r = reached
    at = (f"GTID {r.gtid or '-'} at {r.file}:{r.pos}"
          + (f", committed {format_time(r.commit_time)}" if r.commit_time else ""))
    exc.message = (f"{exc.message}; the target {where} is partial: base {base_id} loaded and "
                   f"replayed up to {at}")
    exc.hint = "; ".join(x for x in (exc.hint, "restore again with --force once the cause is fixed") if x)
    exc.args = (exc.message,)
    return exc
