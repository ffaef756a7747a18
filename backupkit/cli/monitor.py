"""backupkit status and backupkit metrics: "am I protected?" in a terminal, a page, or metrics."""

from __future__ import annotations

from pathlib import Path

import typer

from backupkit.cli.common import json_mode, render, settings
from backupkit.cli.console import table
from backupkit.cli.context import COMMON
from backupkit.errors import StorageError, UsageError
from backupkit.monitor.live import write_atomic
from backupkit.monitor.page import render_page
from backupkit.monitor.status import drill_state
from backupkit.util.units import format_time, human_bytes, human_seconds


def monitor_state():
    """The MonitorState of the configured policy on this machine, its repository read once."""
    from backupkit.schedule.monitoring import policy_monitor  # lazy: start-up time

    st = settings()
    if not st.storage_url:
        raise UsageError("no repository given", "pass --storage URL, or --policy FILE with a [storage]")
    state = policy_monitor(st.policy, lambda: st.open_store(create=False))
    state.refresh()
    if state.repository is not None and state.repository.error and not state.repository.sources:
        raise StorageError(f"cannot read the repository: {state.repository.error}")
    return state


def fleet_entries(folder: str):
    """Every policy of a fleet folder, its repository read once; a file that does not load as such."""
    from backupkit.monitor.fleet import FleetEntry  # lazy: start-up time
    from backupkit.schedule.fleet import load_fleet  # lazy: start-up time
    from backupkit.schedule.monitoring import policy_monitor  # lazy: start-up time

    if COMMON.policy or COMMON.storage or COMMON.source:
        raise UsageError("--policies reads each policy's own source and storage",
                         "leave out --policy, --storage and --source")
    entries = []
    for m in load_fleet(folder).members:
        if m.settings is None:
            entries.append(FleetEntry(m.path.stem, str(m.path), None, m.error))
            continue
        st = m.settings
        state = policy_monitor(st.policy, lambda st=st: st.open_store(create=False))
        state.refresh()
        entries.append(FleetEntry(st.policy.name, str(m.path), state))
    return entries


def _fleet_status(folder: str, html: Path | None, check: bool) -> None:
    from backupkit.monitor.fleet import fleet_json, render_fleet_page, statuses  # lazy: start-up time

    entries = fleet_entries(folder)
    pairs = statuses(entries)
    if html is not None:
        write_atomic(html, render_fleet_page(entries, pairs).encode())
    data = fleet_json(entries)
    if html is not None:
        data["html"] = str(html)

    def human(c) -> None:
        for _, stt in pairs:
            summary(c, stt)
            c.print("")
        for e in entries:
            if e.error:
                c.print(f"[red]policy file does not load:[/] {e.error}", highlight=False)
        if html is not None:
            c.print(f"fleet page written to {html}", highlight=False)

    render(data, human)
    if check and not data["healthy"]:
        raise typer.Exit(1)


def status(
    html: Path = typer.Option(None, "--html", help="Write the status page (self-contained HTML) to FILE."),
    check: bool = typer.Option(False, "--check", help="Exit 1 when an objective is not met."),
    policies: str = typer.Option(None, "--policies", metavar="DIR",
                                 help="Every policy in this folder (a fleet): one summary each, and "
                                      "--html writes the fleet overview."),
) -> None:
    """Am I protected right now? Restorable time and its gaps, loss windows, last runs, shipper, targets."""
    if policies:
        _fleet_status(policies, html, check)
        return
    state = monitor_state()
    stt = state.status()
    if html is not None:
        write_atomic(html, render_page(stt).encode())
    data = stt.to_dict()
    if html is not None:
        data["html"] = str(html)

    def human(c) -> None:
        summary(c, stt)
        if html is not None:
            c.print(f"status page written to {html}", highlight=False)

    render(data, human)
    if check and stt.problems:
        raise typer.Exit(1)


def _when(ts: float | None) -> str:
    return format_time(ts or None)


def summary(c, stt) -> None:
    """The rich terminal summary of a ProtectionStatus."""
    c.print(f"[bold]policy {stt.policy}[/]: daemon {stt.daemon.get('state')}; "
            + ("[green]every objective is met[/]" if stt.healthy else
               f"[red]{len(stt.problems)} objective(s) not met[/]"), highlight=False)
    repo = stt.repository
    for src in repo.sources if repo else []:
        ivs = "; ".join(f"{_when(a)} to {_when(z)}" for a, z in src.intervals[-3:]) or "nothing"
        c.print(f"[bold]{src.source_id}[/]: restorable {ivs}"
                + (f" ({len(src.intervals)} intervals)" if len(src.intervals) > 3 else "")
                + f"; {len(src.gaps)} gap(s); bases: "
                + (", ".join(f"{k} {sum(1 for b in src.bases if b.kind == k)}"
                             for k in sorted({b.kind for b in src.bases})) or "none"), highlight=False)
        for g in src.gaps:
            c.print(f"  [red]gap[/] after {_when(g.start)}: {g.reason}", highlight=False)
    c.print(table("loss window if the server died now", ["strategy", "newest recovery point", "loss window",
                                                          "objective", "last run", "last success",
                                                          "stored"],
                  [[s.label, _when(s.recovery_point), human_seconds(s.loss_seconds),
                    human_seconds(s.loss_objective), s.last_result or "-", _when(s.last_success),
                    human_bytes(s.stored_bytes)] for s in stt.strategies]))
    sh = stt.shipper
    if sh is not None:
        state = "shipping" if stt.shipper_up else sh.state
        c.print(f"binlog shipper of {sh.source_id}: {state}, lag {human_seconds(stt.lag_seconds)}, "
                f"confirmed up to {_when(sh.confirmed_at)}", highlight=False)
    drill, ok = drill_state(stt)
    if ok is not None:
        how = f", {drill.kind} in {human_seconds(drill.rto_seconds)} at {_when(drill.at)}" if drill else ""
        c.print(f"restore drill: {'ok' if ok else 'FAILED'}{how}", highlight=False)
    if repo and repo.targets:
        c.print(table("storage targets", ["target", "reachable", "behind by", "missing objects"],
                      [[t.name, "yes" if t.up else "no", human_seconds(t.lag_seconds), t.missing_objects]
                       for t in repo.targets]))
    for p in stt.problems:
        c.print(f"[red]not protected:[/] {p.message}", highlight=False)


def metrics(
    textfile: Path = typer.Option(None, "--textfile",
                                  help="Write the metrics to FILE atomically (node_exporter's textfile "
                                       "collector), instead of printing them."),
    policies: str = typer.Option(None, "--policies", metavar="DIR",
                                 help="Every policy in this folder (a fleet), each series with a "
                                      "policy label."),
) -> None:
    """The Prometheus metrics of the policy, read once (for cron and node_exporter)."""
    from prometheus_client import generate_latest  # lazy: start-up time

    from backupkit.monitor.metrics import registry_for  # lazy: start-up time

    if policies:
        from backupkit.monitor.fleet import fleet_registry  # lazy: start-up time

        entries = fleet_entries(policies)
        registry = fleet_registry(lambda: entries)
    else:
        registry = registry_for(monitor_state().status)
    if textfile is None:
        text = generate_latest(registry).decode()
        if json_mode():
            render({"metrics": text}, lambda c: None)
        else:
            typer.echo(text, nl=False)
        return
    data = generate_latest(registry)
    write_atomic(Path(textfile), data)
    n = len(data)
    render({"textfile": str(textfile), "bytes": n},
           lambda c: c.print(f"wrote {n} bytes of metrics to {textfile}", highlight=False))
