"""backupkit restore --to-time/--to-gtid/--to-position/--stop-before-gtid/--latest: the command.

The service is backupkit.restore.pitr.restore_to_point; this module parses the options, draws its
progress and renders its result.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from backupkit.cli.common import configured_source, json_mode, open_catalog, render
from backupkit.cli.console import info, loss_table, progress, table
from backupkit.cli.snapshot import ProgressView
from backupkit.errors import UsageError
from backupkit.mysql.connection import TARGET_PASSWORD_ENV, parse_conn
from backupkit.restore.pitr import PitrResult, make_plan, restore_to_point
from backupkit.restore.stoppoint import parse_target
from backupkit.util.units import format_time, human_bytes, human_seconds


class _PitrView:
    """Rich progress for the base load and the replay."""

    def __init__(self, bar) -> None:
        self.bar = bar
        self.base = ProgressView(bar, "base") if bar is not None else None
        self.cold_task = None
        self.replay_task = None
        self.transactions = 0
        self.gtid = ""

    def __call__(self, phase: str, event: str, **kw: Any) -> None:
        if self.bar is None:
            return
        if phase == "base":
            if event == "bytes":
                if self.cold_task is None:
                    self.cold_task = self.bar.add_task("base (cold)", total=kw.get("total") or None)
                self.bar.update(self.cold_task, completed=kw.get("done", 0))
            elif self.base is not None:
                self.base(event, **kw)
            return
        if event == "plan":
            self.replay_task = self.bar.add_task("replay", total=kw.get("bytes") or None)
        elif self.replay_task is None:
            return
        elif event == "fetched":
            pass
        elif event == "applied":
            self.transactions = kw.get("transactions", self.transactions)
            self.gtid = kw.get("gtid") or self.gtid
            self.bar.update(self.replay_task, advance=kw.get("bytes", 0),
                            description=f"replay {self.transactions:,} transactions, GTID {self.gtid}")
        elif event == "done":
            task = next((t for t in self.bar.tasks if t.id == self.replay_task), None)
            if task is not None:
                self.bar.update(self.replay_task, total=task.completed, completed=task.completed)


def restore_cli(backup_id: str | None = None, target: str | None = None, datadir: str | None = None,
                to_time: str | None = None, to_gtid: str | None = None,
                to_position: str | None = None, stop_before_gtid: str | None = None,
                latest: bool = False, dry_run: bool = False, force: bool = False,
                verify: bool = False, parallel: int | None = None,
                start_command: str | None = None, databases: list[str] | None = None,
                include_users: bool = False, log_bin: bool = False, accept_gap: bool = False,
                in_place: bool = False, max_rate: float | None = None,
                tables: list[str] | None = None,
                exclude_tables: list[str] | None = None, rename_db: list[str] | None = None,
                replicate_from: str | None = None, replica_wait: float = 60.0,
                **_ignored: Any) -> None:
    """backupkit restore --to-time/--to-gtid/--to-position/--stop-before-gtid/--latest."""
    tgt = parse_target(to_time, to_gtid, to_position, stop_before_gtid, latest)
    if accept_gap and tgt.kind != "latest":
        raise UsageError("--accept-gap goes with --latest")
    tgt = replace(tgt, accept_gap=accept_gap)
    if databases:
        raise UsageError("--databases cannot be combined with a point-in-time restore",
                         "the binlog replay needs every database of the base")
    spec = parse_conn(target, password_env=TARGET_PASSWORD_ENV) if target else None
    if tables or exclude_tables or rename_db:
        return _restore_tables(tgt, spec, backup_id, tables, exclude_tables, rename_db, force,
                               parallel, dry_run)
    primary = None
    if replicate_from:
        primary = _primary(replicate_from, tgt, spec)
    store, catalog = open_catalog(create=False, read_rate=max_rate)
    plan = make_plan(catalog, tgt, backup_id)
    if dry_run:
        render({"dry_run": True, **plan.to_dict(), "target_server": spec.display() if spec else None},
               lambda console: [console.print(line, highlight=False) for line in plan.lines()])
        return
    quiet = json_mode()
    with progress(enabled=not quiet, transfer=True) as bar:
        view = _PitrView(bar)
        result = restore_to_point(store, catalog, tgt, spec, backup_id=backup_id, datadir=datadir,
                                  start_command=start_command, force=force, verify=verify,
                                  parallel=parallel, log_bin=log_bin, include_users=include_users,
                                  progress=view, notify=lambda m: info(m, quiet=quiet or bar is not None),
                                  plan=plan, in_place=in_place, source_spec=configured_source())
    data = result.to_dict()
    if primary is not None:
        from backupkit.restore.replica import position_after, start_replica  # lazy: start-up time

        assert spec is not None
        status = start_replica(spec, primary, position_after(result), replica_wait)
        result.notes.append(status.note())
        data["notes"] = list(result.notes)
        data["replica"] = status.to_dict()
    render(data, lambda console: print_result(console, result))


def _primary(url: str, tgt, spec):
    """--replicate-from: the primary's ConnSpec, checked before anything is changed."""
    from backupkit.restore.replica import REPLICATE_PASSWORD_ENV, refuse_primary_as_target  # lazy

    if tgt.kind != "latest":
        raise UsageError("--replicate-from goes with --latest", "a replica starts at the newest point")
    if spec is None:
        raise UsageError("--replicate-from needs --target mysql://user@host:port")
    primary = parse_conn(url, password_env=REPLICATE_PASSWORD_ENV)
    refuse_primary_as_target(spec, primary)
    return primary


def print_result(console, result: PitrResult) -> None:
    """The reached point, what was done, and the loss report."""
    r, p = result.reached, result.plan
    console.print(f"[bold green]restored to {p.target.describe()}[/] on {result.target}")
    rows = [("base", f"{p.base.kind} {p.base.id} ({format_time(p.base.point.time)}), "
                     f"{human_seconds(result.base_seconds)}")]
    if result.replay:
        rp = result.replay
        rows.append(("replay", f"{rp.transactions:,} transactions from {rp.segments} segment(s), "
                               f"{human_bytes(rp.binlog_bytes)} of binlog, {human_seconds(rp.seconds)}"))
    rows.append(("reached", f"GTID {r.gtid or '-'} at {r.file}:{r.pos}, committed "
                            f"{format_time(r.commit_time) if r.commit_time else '-'}"))
    rows.append(("duration (RTO)", human_seconds(result.duration)))
    console.print(table(None, ["", ""], rows))
    for n in result.notes:
        console.print(f"[yellow]note:[/] {n}", highlight=False)
    if result.loss is not None:
        console.print(loss_table(result.loss))


def _restore_tables(tgt, spec, backup_id: str | None, tables: list[str] | None,
                    exclude_tables: list[str] | None, rename_db: list[str] | None, force: bool,
                    parallel: int | None, dry_run: bool) -> None:
    """restore --tables: backupkit.restore.tables."""
    from backupkit.restore.replay.filter import TableFilter  # lazy: start-up time
    from backupkit.restore.tables import restore_tables_to_point, select_tables  # lazy: start-up time

    flt = TableFilter.parse(tables, exclude_tables, rename_db)
    if spec is None:
        raise UsageError("a table-level restore needs --target mysql://user@host:port",
                         f"the password comes from {TARGET_PASSWORD_ENV}")
    store, catalog = open_catalog(create=False)
    plan = make_plan(catalog, tgt, backup_id)
    if plan.base.kind != "snapshot":
        raise UsageError(f"the plan starts from {plan.base.kind} backup {plan.base.id}: a "
                         "table-level restore needs a snapshot base")
    chosen = select_tables(plan.base, flt)
    names = [f"{t['db']}.{t['name']} -> {flt.target_db(t['db'])}.{t['name']}" for t in chosen]
    if dry_run:
        render({"dry_run": True, **plan.to_dict(), "tables": names,
                "target_server": spec.display()},
               lambda console: [console.print(line, highlight=False)
                                for line in [*plan.lines(), "tables: " + ", ".join(names)]])
        return
    quiet = json_mode()
    with progress(enabled=not quiet, transfer=True) as bar:
        result = restore_tables_to_point(store, catalog, tgt, spec, flt, backup_id=backup_id,
                                         force=force, parallel=parallel,
                                         source_spec=configured_source(), progress=_PitrView(bar),
                                         notify=lambda m: info(m, quiet=quiet or bar is not None))
    data = result.to_dict()
    data["kind"] = "pitr_tables"
    render(data, lambda console: print_result(console, result))
