"""backupkit binlog ship | status | purge | compact | events: continuous binlog shipping and its
inspection."""

from __future__ import annotations

import os
import re
import signal
import time
from typing import Any

import typer

from backupkit.cli import options as opt
from backupkit.cli.common import json_mode, open_catalog, render, settings
from backupkit.cli.console import info, progress, table, warn
from backupkit.cli.context import COMMON
from backupkit.errors import BackupkitError, UsageError
from backupkit.util.streams import ChunkReader
from backupkit.util.units import human_bytes, human_seconds, parse_duration, parse_time, utc_iso

app = typer.Typer(no_args_is_help=True)

SOURCE_ID_HELP = "Source id (default: from the policy or derived from the server)."


def _source_given() -> bool:
    """True when the user named a source (option, environment or policy), so it is safe to ask
    it for its position; otherwise status only reads the repository."""
    cfg = settings()
    return bool(COMMON.source or os.environ.get("BACKUPKIT_SOURCE") or cfg.policy.path)


@app.command("ship")
def ship(
    server_id: int = typer.Option(None, "--server-id", min=1, max=4294967295,
                                  help="Replica server_id to connect with (default: derived from host "
                                       "and source, or [binlog] server_id)."),
    sync_interval: float = typer.Option(None, "--sync-interval", min=0.05, max=3600,
                                        help="Seconds between segment flushes (default 1)."),
    max_segment_mb: int = typer.Option(None, "--max-segment-mb", min=1, max=4096,
                                       help="Flush when a segment reaches this many MiB (default 16)."),
    from_current: bool = opt.flag("--from-current", "First run: start at the server's current position "
                                  "instead of the newest snapshot's consistent point."),
    from_position: str = opt.text("--from-position", "First run: start at FILE:POS (a transaction "
                                  "boundary), for example binlog.000001:4; checked against SHOW BINARY "
                                  "LOGS. Also replaces a start that shipped nothing."),
    restart_from_current: bool = opt.flag("--restart-from-current", "After a gap (binlog purged before "
                                          "it was shipped): record the gap and start a new continuous "
                                          "range at the server's current position."),
    source_id: str = opt.source_id(SOURCE_ID_HELP),
    once: bool = opt.flag("--once", "Ship what the server has now, then exit (for cron and tests).",
                          "--until-current"),
    lease_seconds: float = typer.Option(None, "--lease-seconds", min=1.5, max=3600,
                                        help="Lease period; a standby takes over this long after the "
                                             "active shipper stops renewing (default 15)."),
    heartbeat: float = typer.Option(None, "--heartbeat", min=0.1, max=3600,
                                    help="Seconds between server heartbeats on an idle stream."),
    metrics_listen: str = opt.metrics_listen("Serve /metrics and the status page on HOST:PORT while "
                                             "shipping ('on': 127.0.0.1:9108; default [metrics] listen, "
                                             "unless the daemon runs this shipper)."),
    confirm_interval: float = typer.Option(
        None, "--confirm-interval", min=0.5, max=3600,
        help="While the source is quiet, write the confirmed-through watermark at most this "
             "often (default 5 s: 17,280 small PUTs a day)."),
) -> None:
    """Stream the source's binlog into the repository, about one sync interval behind.

    Runs until SIGTERM/SIGINT (then flushes complete transactions and exits 0). A second
    shipper of the same source waits as a hot standby and takes over when the first dies."""
    from backupkit.strategies.binlog import ShipOptions, Shipper  # lazy: start-up time

    cfg = settings()
    pol = cfg.policy.binlog
    start_at = None
    if from_position:
        file, _, pos = from_position.rpartition(":")
        if not file or not pos.isdigit() or int(pos) < 4:
            raise UsageError(f"bad --from-position {from_position!r}", "use FILE:POS, e.g. binlog.000001:4")
        start_at = (file, int(pos))
    if sum(bool(x) for x in (from_current, start_at)) > 1:
        raise UsageError("--from-current and --from-position exclude each other")
    opts = ShipOptions(
        source_id=source_id or cfg.policy.source.source_id,
        server_id=server_id or pol.server_id,
        sync_interval=sync_interval or pol.sync_interval,
        max_segment_bytes=(max_segment_mb or pol.max_segment_mb) << 20,
        heartbeat=heartbeat or pol.heartbeat,
        confirm_interval=confirm_interval or pol.confirm_interval,
        lease_seconds=lease_seconds or pol.lease_seconds,
        compression_level=pol.compression_level,
        from_current=from_current,
        from_position=start_at,
        restart_from_current=restart_from_current,
        until_current=once,
    )
    spec = cfg.source_spec()
    store = cfg.open_store()
    quiet = json_mode()
    shipper = Shipper(store, spec, opts, notify=lambda msg: info(msg, quiet=quiet))
    previous = {s: signal.signal(s, shipper.stop) for s in (signal.SIGTERM, signal.SIGINT)}
    t0 = time.monotonic()
    watch = _Watch(cfg, shipper, store, metrics_listen, once)
    try:
        with progress(enabled=not quiet) as bar:
            if bar is not None:
                task = bar.add_task("shipping", total=None)

                def committed(seg) -> None:
                    r = shipper.result
                    bar.update(task, advance=seg.end_pos - seg.start_pos,
                               description=f"shipped to {seg.binlog_file}:{seg.end_pos}, "
                                           f"{r.transactions if r else 0:,} tx")

                shipper.on_commit = committed
            result = shipper.run()
    finally:
        watch.stop()
        for s, h in previous.items():
            signal.signal(s, h)
    wall = time.monotonic() - t0
    data = {"storage": store.describe(), "duration": round(wall, 3), **result.to_dict()}

    def human(console) -> None:
        console.print(f"[bold]binlog of {result.source_id}[/] shipped to {store.describe()}")
        console.print(table(None, ["", ""], [
            ("range", f"{result.start or '-'} -> {result.end or result.start or '-'}"),
            ("segments", str(result.segments)),
            ("transactions", f"{result.transactions:,}"),
            ("binlog", f"{human_bytes(result.bytes)} -> {human_bytes(result.stored_bytes)} stored"),
            ("reconnects", str(result.reconnects)),
            ("stopped", result.stopped_by or "-"),
            ("duration", human_seconds(wall)),
        ]))
        for sw in result.switchovers:
            if sw.get("lossless"):
                console.print(f"switchover followed: server_id {sw['from_server_id']} -> "
                              f"{sw['to_server_id']}, linked by GTID {sw['gtid']} at {sw['resume']}")
        for g in result.gaps:
            console.print(f"[bold red]gap[/] after {g['after_file']}:{g['after_pos']}: {g['reason']}")

    render(data, human)


class _Watch:
    """A running shipper's monitoring: its live state written for the daemon's metrics (about
    twice a second), and its own /metrics and status page when an address is given."""

    def __init__(self, cfg, shipper, store, listen: str | None, once: bool = False) -> None:
        from backupkit.monitor.live import (  # lazy: start-up time
            SHIPPER_STATE_ENV,
            ShipperReporter,
            shipper_state_path,
        )
        from backupkit.schedule.state import Paths  # lazy: start-up time

        self.shipper = shipper
        self.started = time.time()
        self.gaps_seen = 0
        status_file = Paths.of(cfg.policy).status_file if cfg.policy.path else None
        self.reporter = ShipperReporter(self.live, shipper_state_path(status_file)).start()
        if listen is None and not once and not os.environ.get(SHIPPER_STATE_ENV):
            listen = cfg.policy.metrics.listen  # under the daemon, the daemon serves them
        self.state = self.server = None
        if listen:  # imported here: a shipper without metrics starts without them
            from backupkit.monitor.server import MetricsServer  # lazy: start-up time
            from backupkit.schedule.monitoring import policy_monitor  # lazy: start-up time

            self.state = policy_monitor(cfg.policy, lambda: store, shipper_fn=self.live).start()
            try:
                self.server = MetricsServer(listen, self.state.status).start()
                info(f"metrics and status page on {self.server.url}", quiet=json_mode())
            except UsageError as exc:  # never stops shipping
                warn(f"{exc.one_line()}; shipping without serving metrics")

    def live(self):
        from backupkit.monitor.status import ShipperLive  # lazy: start-up time

        sh, r, p = self.shipper, self.shipper.result, self.shipper.progress
        lease = sh.lease
        if p.gaps != self.gaps_seen and self.state is not None:
            self.gaps_seen = p.gaps
            self.state.touch()  # a gap was recorded: read the repository again for the page
        return ShipperLive(
            source_id=sh.source_id, pid=os.getpid(), updated_at=time.time(), confirmed_at=p.confirmed_at(),
            state=p.state, error=p.error, segments=r.segments if r else 0, bytes=r.bytes if r else 0,
            stored_bytes=r.stored_bytes if r else 0, transactions=r.transactions if r else 0,
            upload_errors=p.upload_errors, reconnects=r.reconnects if r else 0, gaps=p.gaps,
            started_at=self.started, lease_holder=lease.holder if lease is not None and lease.held else "")

    def stop(self) -> None:
        self.shipper.progress.state = "stopped"
        self.reporter.stop()
        if self.server is not None:
            self.server.stop()
        if self.state is not None:
            self.state.stop()


@app.command("status")
def status(
    source_id: str = opt.source_id("Only this source."),
    check: bool = typer.Option(False, "--check",
                               help="Exit 1 when the server could drop binlog that is not shipped yet "
                                    "(its expiry, a size limit, free disk) or the lag exceeds "
                                    "[binlog] max_lag."),
) -> None:
    """Shipped range, lag behind the server (seconds and bytes) and the current loss window."""
    from backupkit.strategies.binlog import resolve_source, shipping_status  # lazy: start-up time
    from backupkit.strategies.binlog.purge import server_risks  # lazy: start-up time

    cfg = settings()
    store, catalog = open_catalog(create=False, interactive=True)
    sources = [source_id] if source_id else catalog.sources()
    spec = None
    live_source = None
    if _source_given():
        spec = cfg.source_spec()
        if not source_id:
            try:
                _, live_source = resolve_source(spec, cfg.policy.source.source_id)
            except Exception:
                live_source = None
    if not sources:
        raise UsageError(f"no shipped binlog in {store.describe()}",
                         "start 'backupkit binlog ship' first")
    rows = []
    for sid in sources:
        use_spec = spec if (source_id or sid == live_source) else None
        st = shipping_status(catalog, sid, use_spec)
        st["warnings"] = []
        if use_spec is not None and st.get("server") and "error" not in st["server"]:
            try:
                st["warnings"] = server_risks(use_spec, st.get("lag_seconds"), st.get("lag_bytes"),
                                              cfg.policy.binlog.max_lag)
            except BackupkitError as exc:
                st["warnings"] = [f"the server's binlog settings were not checked: {exc.one_line()}"]
        rows.append(st)
    warnings = [w for st in rows for w in st["warnings"]]
    data = {"storage": store.describe(), "sources": rows, "ok": not warnings}

    def human(console) -> None:
        for st in rows:
            console.print(f"[bold]{st['source_id']}[/]: {st['segments']} segments, "
                          f"{human_bytes(st['stored_bytes'])} stored")
            console.print(table("shipped ranges", ["from", "to", "first commit", "last commit",
                                                   "segments", "GTID position"],
                                [[r["start"], r["end"], utc_iso(r["first_commit_time"]),
                                  utc_iso(r["last_commit_time"]), r["segments"], r["gtid_state"]]
                                 for r in st["ranges"]]))
            wm = st.get("confirmed_through_utc")
            if wm:
                console.print(f"confirmed through {wm} (the shipper was caught up with the server then)")
            srv_id = st.get("shipped_server") or {}
            if srv_id:
                console.print(f"shipping from server_id {srv_id.get('server_id')} "
                              f"({srv_id.get('hostname')}:{srv_id.get('port')}, {srv_id.get('version')})")
            servers = st.get("servers") or []
            if len(servers) > 1:
                console.print(table("servers shipped (switchovers)", ["epoch", "server_id", "from",
                                                                       "to", "joined"],
                                    [[e["epoch"], e["server_id"], e["first"], e["last"],
                                      e.get("joined", "-")] for e in servers]))
            if st.get("loss_window_seconds") is not None and not st.get("server"):
                console.print(f"loss window {human_seconds(st['loss_window_seconds'])} "
                              "(now minus the newest confirmed moment)")
            lease = st.get("lease")
            if lease:
                state = "active" if lease["active"] else ("released" if lease["released"] else "expired")
                console.print(f"shipper: {lease['holder']} ({state})")
            srv = st.get("server")
            if srv and "error" in srv:
                console.print(f"[yellow]server not checked:[/] {srv['error']}")
            elif srv and "note" in srv:
                console.print(f"[yellow]server at {srv['position']}:[/] {srv['note']}")
            elif srv:
                console.print(f"server at {srv['position']}; behind by {human_bytes(srv['lag_bytes'])}, "
                              f"{human_seconds(srv['lag_seconds'])}; current loss window "
                              f"{human_seconds(srv['loss_window_seconds'])}")
            for w in st["warnings"]:
                console.print(f"[bold yellow]warning:[/] {w}", highlight=False)
            for g in st["gaps"]:
                resume = f"{g['resume_file']}:{g['resume_pos']}" if g["resume_file"] else "not resumed"
                console.print(f"[bold red]gap[/] after {g['after_file']}:{g['after_pos']} -> {resume}: "
                              f"{g['reason']}")

    render(data, human)
    if check and warnings:
        raise typer.Exit(1)


@app.command("purge")
def purge(
    keep: str = typer.Option(None, "--keep",
                             help="Keep files whose newest event is younger than this (e.g. 1d, 6h, "
                                  "0; default [binlog] purge_keep, 1d)."),
    dry_run: bool = opt.dry_run("Show what would be purged; change nothing."),
    source_id: str = opt.source_id(SOURCE_ID_HELP),
) -> None:
    """PURGE BINARY LOGS on the source, only up to files the repository holds completely.

    A file goes only when it is not the current one, its closing event is shipped in an unbroken
    run (or it lies wholly before the first shipped point), and it is older than --keep."""
    from backupkit.strategies.binlog import resolve_source  # lazy: start-up time
    from backupkit.strategies.binlog.purge import purge_binlogs  # lazy: start-up time

    cfg = settings()
    text = keep if keep is not None else cfg.policy.binlog.purge_keep
    try:
        keep_seconds = 0.0 if text.strip() in ("0", "0s") else parse_duration(text)
    except ValueError as exc:
        raise UsageError(f"bad --keep {text!r}: {exc}", "use a duration such as 1d, 6h or 0") from None
    spec = cfg.source_spec()
    _, sid = resolve_source(spec, source_id or cfg.policy.source.source_id)
    store, catalog = open_catalog(create=False)
    plan = purge_binlogs(catalog, spec, sid, keep_seconds, dry_run=dry_run)
    data = {"storage": store.describe(), "dry_run": dry_run, **plan.to_dict()}

    def human(console) -> None:
        verb = "would purge" if dry_run else "purged"
        if plan.files:
            console.print(f"{verb} {len(plan.files)} file(s) of {sid}: {plan.files[0]} .. {plan.files[-1]} "
                          f"(PURGE BINARY LOGS TO '{plan.purge_to}')", highlight=False)
        else:
            console.print(f"nothing to purge on {sid}", highlight=False)
        if plan.stops_at:
            console.print(f"kept from {plan.stops_at['file']}: {plan.stops_at['reason']}", highlight=False)

    render(data, human)


def _duration_option(text: str, name: str) -> float:
    try:
        return 0.0 if text.strip() in ("0", "0s") else parse_duration(text)
    except ValueError as exc:
        raise UsageError(f"bad {name} {text!r}: {exc}", "use a duration such as 1h, 30m or 0") from None


@app.command("compact")
def compact(
    older_than: str = typer.Option(None, "--older-than",
                                   help="One pass instead of the levels: merge every segment committed "
                                        "longer ago than this (e.g. 1h, 0), one object per hour."),
    grace: str = typer.Option(None, "--grace",
                              help="Delete merged small segments only this long after the merged one "
                                   "was committed (default [binlog] compact_grace, 1h, or the level's "
                                   "grace): restores that planned with them keep reading them meanwhile."),
    only_level: int = typer.Option(None, "--level", min=1,
                                   help="Run only this level of [binlog] compact_levels (1: the first)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would be merged and deleted; "
                                                          "change nothing."),
    source_id: str = typer.Option(None, "--source-id", help="Compact only this source (default: "
                                                            "every source in the repository)."),
) -> None:
    """Merge runs of small shipped segments into verified objects, level by level ([binlog]
    compact_levels: one per minute, then one per hour of commits), then delete the small ones
    after a grace period.

    A merged object is a valid binlog segment holding every event byte, and its index entry
    keeps what exact --to-time, --to-gtid and --to-position restores need. It is committed before
    anything is deleted; readers use it instead of the small ones from that moment."""
    from backupkit.operations.compact import Level, compact_repository  # lazy: start-up time

    cfg = settings()
    b = cfg.policy.binlog
    after = _duration_option(older_than if older_than is not None else b.compact_after, "--older-than")
    grace_s = _duration_option(grace if grace is not None else b.compact_grace, "--grace")
    levels = [] if older_than is not None else \
        [Level(w, a, grace_s if grace is not None else g) for w, a, g in b.compaction_levels()]
    if only_level is not None:
        if only_level > len(levels):
            raise UsageError(f"--level {only_level}: [binlog] compact_levels has {len(levels)} level(s)"
                             + (" (--older-than runs one pass)" if older_than is not None else ""),
                             "give a level from 1 to the number of levels")
        levels = [lv if i == only_level else Level(lv.window, float("inf"), lv.grace)
                  for i, lv in enumerate(levels, 1)]
    store, catalog = open_catalog(create=False)
    sources = [source_id or cfg.policy.source.source_id] if (source_id or cfg.policy.source.source_id) \
        else None
    results = compact_repository(catalog, sources, older_than=after, grace=grace_s, levels=levels,
                                 dry_run=dry_run, level=b.compression_level,
                                 report=None if json_mode() else info)
    data = {"storage": store.describe(), "dry_run": dry_run, "older_than": after, "grace": grace_s,
            "levels": [{"window": lv.window, "after": lv.after, "grace": lv.grace} for lv in levels
                       if lv.after != float("inf")],
            "sources": [r.to_dict() for r in results]}

    def human(console) -> None:
        verb = "would merge" if dry_run else "merged"
        for r in results:
            n = sum(m["segments"] for m in r.merged)
            console.print(f"{r.source_id}: {verb} {n} segment(s) into {len(r.merged)}; "
                          f"{'would delete' if dry_run else 'deleted'} {len(r.deleted)} object(s); "
                          f"{r.waiting} superseded segment(s) wait for the grace period; "
                          f"{r.segments_before} -> {r.segments_after} segment(s)", highlight=False)
        if not results:
            console.print("no binlog in the repository", highlight=False)

    render(data, human)


def _txn_row(seg, txn) -> dict[str, Any]:
    rows = {t: dict(ops) for t, ops in txn.rows.items()}
    ddl = list(txn.statements) if txn.ddl else []
    return {
        "commit_time": utc_iso(txn.commit_time), "commit_ts": txn.commit_time,
        "gtid": txn.gtid, "file": seg.binlog_file, "start_pos": txn.start_pos,
        "end_pos": txn.end_pos, "tables": txn.tables, "events": txn.events, "rows": rows,
        "ddl": ddl, "statements": txn.statements, "annotations": txn.annotations,
        "segment": seg.key,
    }


def _matches(row: dict[str, Any], table_filter: str | None, grep: str | None) -> bool:
    if table_filter:
        want = table_filter.lower()
        in_tables = any(t.lower() == want for t in row["tables"])
        # DDL names its tables only in its text: match the table name as a whole word
        name = re.escape(want.split(".", 1)[-1])
        pattern = re.compile(rf"(?<![\w$]){name}`?(?![\w$])", re.IGNORECASE)
        in_text = any(pattern.search(s) for s in row["ddl"])
        if not (in_tables or in_text):
            return False
    if grep:
        needle = grep.lower()
        hay = " ".join(row["statements"] + row["annotations"] + row["tables"] + [row["gtid"]]).lower()
        if needle not in hay:
            return False
    return True


def _describe_rows(row: dict[str, Any]) -> str:
    parts = []
    for t, ops in row["rows"].items():
        parts += [f"{op} {'?' if n is None else n} {t}" for op, n in ops.items()]
    return ", ".join(parts)


@app.command("events")
def events(
    from_: str = typer.Option(None, "--from", help="Only transactions committed at or after this time."),
    to: str = typer.Option(None, "--to", help="Only transactions committed at or before this time."),
    table_filter: str = typer.Option(None, "--table", help="Only transactions touching db.table."),
    grep: str = typer.Option(None, "--grep", help="Only transactions whose statements contain TEXT."),
    source_id: str = opt.source_id("The source (default: the only one)."),
    limit: int = typer.Option(1000, "--limit", min=1, help="At most this many transactions."),
) -> None:
    """List shipped transactions: commit time, GTID, position, tables, row counts, DDL.

    Reads the segments in the repository, so it works with the source gone. It is how you find
    the DROP or the bad DELETE to stop a point-in-time restore before."""
    from backupkit.mysql import binlog_events as be  # lazy: start-up time
    from backupkit.repo.codec import iter_object  # lazy: start-up time

    t1 = parse_time(from_) if from_ else None
    t2 = parse_time(to) if to else None
    if t1 is not None and t2 is not None and t2 < t1:
        raise UsageError("--to is before --from")
    store, catalog = open_catalog(create=False)
    sources = [source_id] if source_id else catalog.sources()
    if not sources:
        raise UsageError(f"no shipped binlog in {store.describe()}", "start 'backupkit binlog ship' first")
    if len(sources) > 1:
        raise UsageError(f"{len(sources)} sources in the repository: {', '.join(sources)}",
                         "choose one with --source-id")
    sid = sources[0]
    out: list[dict[str, Any]] = []
    truncated = False
    from backupkit.repo.coverage import in_use  # lazy: start-up time

    for seg in in_use(catalog.segments(sid)):  # a compacted segment, not also its parts
        if seg.transactions == 0:
            continue
        if t1 is not None and seg.last_commit_time and seg.last_commit_time < int(t1):
            continue
        if t2 is not None and seg.first_commit_time and seg.first_commit_time > t2:
            continue
        reader = ChunkReader(iter_object(store, seg.object))
        for txn in be.transactions(be.iter_events(reader)):
            if t1 is not None and txn.commit_time < int(t1):  # whole seconds
                continue
            if t2 is not None and txn.commit_time > t2:
                continue
            row = _txn_row(seg, txn)
            if _matches(row, table_filter, grep):
                if len(out) >= limit:
                    truncated = True
                    break
                out.append(row)
        if truncated:
            break
    data = {"source_id": sid, "transactions": out, "count": len(out), "truncated": truncated}

    def human(console) -> None:
        console.print(table(f"transactions of {sid}", ["commit (UTC)", "GTID", "position", "tables",
                                                       "rows / events", "statement"],
                            [[r["commit_time"], r["gtid"], f"{r['file']}:{r['start_pos']}",
                              ", ".join(r["tables"]),
                              _describe_rows(r) or ", ".join(f"{k} {v}" for k, v in r["events"].items()),
                              (r["ddl"] or r["annotations"] or r["statements"] or [""])[0][:200]]
                             for r in out]))
        if truncated:
            console.print(f"(first {limit} shown; narrow with --from/--to or raise --limit)")

    render(data, human)
