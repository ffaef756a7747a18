"""backupkit status and backupkit metrics: "am I protected?" in a terminal, a page, or metrics."""

from __future__ import annotations

from pathlib import Path

import typer

from backupkit.cli.common import json_mode, render, settings
from backupkit.cli.console import table
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


def status(
    html: Path = typer.Option(None, "--html", help="Write the status page (self-contained HTML) to FILE."),
    check: bool = typer.Option(False, "--check", help="Exit 1 when an objective is not met."),
) -> None:
    """Am I protected right now? Restorable time and its gaps, loss windows, last runs, shipper, targets."""
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
) -> None:
    """The Prometheus metrics of the policy, read once (for cron and node_exporter)."""
    from backupkit.monitor.metrics import render as render_metrics  # lazy: start-up time
    from backupkit.monitor.metrics import write_textfile  # lazy: start-up time

    state = monitor_state()
    if textfile is None:
        text = render_metrics(state.status).decode()
        if json_mode():
            render({"metrics": text}, lambda c: None)
        else:
            typer.echo(text, nl=False)
        return
    n = write_textfile(textfile, state.status)
    render({"textfile": str(textfile), "bytes": n},
           lambda c: c.print(f"wrote {n} bytes of metrics to {textfile}", highlight=False))
