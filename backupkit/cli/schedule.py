"""backupkit schedule run | status | cron (and exec, which the cron lines call)."""

from __future__ import annotations

import getpass
import json
import os
import sys
from datetime import datetime

import typer

from backupkit.cli import options as opt
from backupkit.cli.common import json_mode, render
from backupkit.cli.console import table, warn
from backupkit.cli.context import COMMON
from backupkit.errors import ConfigError, UsageError
from backupkit.mysql.process import pid_alive
from backupkit.schedule.checks import storage_problem
from backupkit.schedule.cron import next_runs, policy_timezone, scheduled_strategies
from backupkit.util.units import human_bytes, human_seconds, utc_iso_seconds

app = typer.Typer(no_args_is_help=True)


def _settings():
    """Settings of the --policy file; the scheduler commands need one, with a storage target."""
    if not (COMMON.policy or os.environ.get("BACKUPKIT_POLICY")):
        raise UsageError("no policy given", "pass --policy FILE (see policies/*.toml)")
    st = COMMON.settings()
    problem = storage_problem(st.policy, COMMON.storage)
    if problem:
        raise ConfigError(problem)
    return st


def _child_env() -> dict[str, str]:
    """--storage and --source given on our command line, passed on to the runs we start."""
    env = {}
    if COMMON.storage:
        env["BACKUPKIT_STORAGE"] = COMMON.storage
    if COMMON.source:
        env["BACKUPKIT_SOURCE"] = COMMON.source
    return env


def _emitter():
    from backupkit.schedule.runner import default_emit  # lazy: start-up time

    if not json_mode():
        return default_emit

    def emit(policy_name: str, rec) -> None:
        sys.stdout.write(json.dumps({"policy": policy_name, **rec.to_dict()}, sort_keys=True) + "\n")
        sys.stdout.flush()

    return emit


@app.command("run")
def run(
    stop_timeout: float = typer.Option(600.0, "--stop-timeout", min=0,
                                       help="On SIGTERM, seconds to let running jobs finish before "
                                            "cutting them safely."),
    metrics_listen: str = opt.metrics_listen("Serve /metrics (Prometheus) and the status page at / on "
                                             "HOST:PORT ('on': 127.0.0.1:9108; default [metrics] "
                                             "listen, else off)."),
    policies: str = typer.Option(None, "--policies", metavar="DIR",
                                 help="Run every policy in this folder (one source each, its own "
                                      "repository or prefix) in this one daemon; a broken file is "
                                      "reported and skipped."),
    max_snapshots: int = typer.Option(None, "--max-concurrent-snapshots", min=1,
                                      help="With --policies: at most this many snapshots at once "
                                           "across the policies (shippers always run)."),
    max_cold: int = typer.Option(None, "--max-concurrent-cold", min=1,
                                 help="With --policies: at most this many cold backups at once."),
    reload_interval: float = typer.Option(2.0, "--reload-interval", min=0,
                                          help="With --policies: seconds between two reads of the "
                                               "folder (a changed, added or removed policy is "
                                               "reloaded; 0: only on SIGHUP)."),
) -> None:
    """Run the policy: its cron schedules on APScheduler, and the binlog shipper, supervised.

    One log line per run (start, end, result, sizes, duration); the status file feeds
    'schedule status'. SIGTERM or Ctrl-C: no new run starts, the shipper flushes and stops,
    running jobs finish (a second signal cuts them; a cut backup leaves no manifest).
    """
    if policies:
        from backupkit.schedule.fleet import serve_fleet  # lazy: start-up time

        if COMMON.policy or COMMON.storage or COMMON.source:
            raise UsageError("--policies runs each policy with its own source and storage",
                             "leave out --policy, --storage and --source")
        raise typer.Exit(serve_fleet(policies, max_snapshots=max_snapshots, max_cold=max_cold,
                                     stop_timeout=stop_timeout, emit=_emitter(),
                                     metrics_listen=metrics_listen, reload_interval=reload_interval))
    if max_snapshots or max_cold:
        raise UsageError("--max-concurrent-snapshots and --max-concurrent-cold go with --policies",
                         "one policy runs one snapshot at a time anyway")
    from backupkit.schedule.daemon import serve  # lazy: start-up time

    st = _settings()
    code = serve(st.policy, st.policy.path or "", stop_timeout=stop_timeout,
                 open_store=lambda: st.open_store(create=True), emit=_emitter(),
                 extra_env=_child_env(), metrics_listen=metrics_listen)
    raise typer.Exit(code)


@app.command("exec", hidden=True)
def exec_(
    strategy: str = typer.Argument(..., help="cold, snapshot, snapshot_incremental, verify, prune, "
                                             "sync, binlog_purge or binlog_compact."),
    locked: bool = typer.Option(False, "--locked", help="The strategy lock is held by flock(1)."),
) -> None:
    """Run one strategy once as the daemon would: locks, one log line, the status file."""
    from backupkit.schedule.runner import (  # lazy: start-up time
        JOB_STRATEGIES,
        CliRunner,
        StrategyExecutor,
        catalog_describer,
    )

    if strategy not in JOB_STRATEGIES:
        raise UsageError(f"unknown strategy {strategy!r}", f"use one of {', '.join(JOB_STRATEGIES)}")
    st = _settings()
    ex = StrategyExecutor(st.policy, CliRunner(st.policy.path or "", extra_env=_child_env()),
                          emit=_emitter(), describe=catalog_describer(lambda: st.open_store(False)))
    rec = ex.run(strategy, locked=locked)
    if rec.result == "failed":
        _notify_failure(st.policy, rec)
        raise typer.Exit(rec.exit_code or 1)


def _notify_failure(policy, rec) -> None:
    """Under cron no daemon watches the runs: a failed run sends its [notify] event itself (bounded
    tries; a notifier that fails changes nothing)."""
    from backupkit.monitor.notify import Event, notifier_for  # lazy: start-up time

    n = notifier_for(policy)
    if n is not None and "failure" in n.events:
        n.deliver(Event("failure", "job_failed", policy.name, f"the last {rec.strategy} run failed"
                        + (f": {rec.error}" if rec.error else ""), rec.strategy))


@app.command("status")
def status(
    check: bool = typer.Option(False, "--check",
                               help="Exit 1 unless healthy: the daemon runs and every objective of "
                                    "the alert rules is met (no failed last run, no overdue backup, "
                                    "shipper running and not lagging, no open gap, drill passed, "
                                    "targets in step, loss windows within objective)."),
    policies: str = typer.Option(None, "--policies", metavar="DIR",
                                 help="Every policy in this folder (a fleet run by 'schedule run "
                                      "--policies DIR'); a broken file is listed as such."),
) -> None:
    """The last result and the next run of each job, and the state of the binlog shipper."""
    if policies:
        from backupkit.schedule.fleet import load_fleet  # lazy: start-up time

        fleet = load_fleet(policies)
        outs = [_status_of(m.settings) for m in fleet.good]
        broken = [{"file": str(m.path), "error": m.error, **_running_version(m.path)}
                  for m in fleet.broken]
        healthy = all(o["healthy"] for o in outs) and not broken

        def human_all(c) -> None:
            c.print(table("fleet", ["policy", "protection", "loss window now", "shipper lag",
                                    "last base", "gaps"],
                          [[o["policy"], "ok" if o["healthy"] else f"{len(o['problems'])} problem(s)",
                            human_seconds(o["summary"]["loss_window_s"]),
                            human_seconds(o["summary"]["lag_s"]),
                            utc_iso_seconds(o["summary"]["last_base_at"]) or "-",
                            str(o["summary"]["gaps"])] for o in outs]))
            for o in outs:
                _print_status(c, o)
                c.print("")
            for b in broken:
                c.print(f"broken policy {b['file']}: {b['error'].removeprefix(b['file'] + ': ')}"
                        + (f" (the daemon pid {b['pid']} runs its previous version as policy "
                           f"{b['running']!r})" if b.get("running") else ""),
                        highlight=False, markup=False)

        render({"policies": outs, "broken": broken, "healthy": healthy}, human_all)
        if check and not healthy:
            raise typer.Exit(1)
        return
    out = _status_of(_settings())
    render(out, lambda c: _print_status(c, out))
    if check and out["problems"]:
        raise typer.Exit(1)


def _status_of(st) -> dict:
    """One policy's status: its status file, the next runs, and its protection problems."""
    from backupkit.schedule.state import Paths, StatusFile  # lazy: start-up time

    paths = Paths.of(st.policy)
    data = StatusFile(paths.status_file).read()
    ever = bool(data)
    pid = data.get("pid")
    alive = bool(pid) and data.get("state") in ("running", "stopping") and pid_alive(int(pid))
    tz = policy_timezone(st.policy)
    jobs = data.setdefault("jobs", {})
    for name, expr in scheduled_strategies(st.policy).items():
        if name == "binlog":
            continue
        j = jobs.setdefault(name, {})
        j["schedule"] = expr
        if not alive or not j.get("next_run"):
            nxt = next_runs(expr, tz, datetime.now(tz), 1)
            j["next_run"] = utc_iso_seconds(nxt[0].timestamp()) if nxt else None
    out = {"policy": st.policy.name, "status_file": str(paths.status_file),
           "daemon": {"state": data.get("state") if alive else ("not running" if ever else "never ran"),
                      "pid": pid if alive else None, "started_at": data.get("started_at"),
                      "alive": alive},
           "jobs": jobs, "shipper": data.get("shipper"), "updated_at": data.get("updated_at")}
    problems = []
    if not alive:
        problems.append("the daemon is not running" + ("" if ever else " (it never ran)"))
    # the same objectives as the alert rules and the status page (monitor/status.py)
    model = _protection(st, paths.status_file)
    problems += [p.message for p in model.problems if p.kind != "daemon_down"
                 and (alive or p.kind != "shipper_down")]
    out["healthy"] = not problems
    out["problems"] = problems
    out["reload_error"] = data.get("reload_error")
    from backupkit.monitor.fleet import FleetEntry, source_summary  # lazy: start-up time

    out["summary"] = source_summary(FleetEntry(st.policy.name, st.policy.path or ""), model)
    return out


def _running_version(path) -> dict:
    """A daemon that still runs the previous version of a policy file that no longer loads."""
    from pathlib import Path

    from backupkit.settings import state_dir  # lazy: start-up time

    want = Path(path).resolve()
    for f in sorted(state_dir().glob("*.status.json")):
        try:
            d = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        pid = d.get("pid") if isinstance(d, dict) else None
        if (d.get("policy_file") and Path(d["policy_file"]).resolve() == want and pid
                and d.get("state") in ("running", "stopping") and pid_alive(int(pid))):
            return {"running": d.get("policy"), "pid": pid, "status_file": str(f)}
    return {}


def _print_status(c, out: dict) -> None:
    d = out["daemon"]
    jobs = out["jobs"]
    c.print(f"policy {out['policy']!r}: daemon {d['state']}"
            + (f" (pid {d['pid']}, since {d['started_at']})" if d["alive"] else "")
            + f"; status file {out['status_file']}")
    rows = []
    errors = []
    for name, j in sorted(jobs.items()):
        last = j.get("last") or {}
        size = human_bytes(last.get("stored_bytes")) if last.get("stored_bytes") is not None else ""
        rows.append([name, j.get("schedule", ""),
                     "running" if j.get("running_since") else last.get("result", "-"),
                     last.get("start") or "-",
                     human_seconds(last.get("duration_s")) if last else "-", size,
                     f"{j.get('runs', 0)}/{j.get('failures', 0)}/{j.get('skipped', 0)}",
                     j.get("next_run") or "-"])
        if last.get("error"):
            errors.append(f"{name}: last error: {last['error']}")
    c.print(table("jobs", ["job", "schedule", "last", "last start", "took", "stored",
                           "runs/failed/skipped", "next run"], rows))
    for e in errors:
        c.print(e, highlight=False, markup=False)
    for p in out.get("problems", []):
        c.print(f"unhealthy: {p}", highlight=False, markup=False)
    sh = out["shipper"]
    if sh:
        c.print(f"binlog shipper: {sh.get('state')}"
                + (f", pid {sh['pid']}" if sh.get("pid") else "")
                + f", restarts {sh.get('restarts', 0)}"
                + (f", last exit {sh['last_exit']} at {sh.get('last_exit_at')}"
                   if sh.get("last_exit") is not None else "")
                + (f", next start {sh['next_start_at']}" if sh.get("next_start_at") else ""))


def _protection(st, status_file):
    """The protection status of the policy: its repository read once, its local state files."""
    from backupkit.schedule.monitoring import policy_monitor  # lazy: start-up time

    mon = policy_monitor(st.policy, lambda: st.open_store(create=False), status_file=status_file)
    mon.refresh()
    return mon.status()


@app.command("cron")
def cron(
    install: bool = typer.Option(False, "--install", help="Write the lines to CRON_DIR/backupkit-<name>."),
    cron_dir: str = typer.Option("/etc/cron.d", "--cron-dir", help="Where --install writes."),
    user: str = typer.Option(None, "--user", help="User the jobs run as (cron.d format; default: "
                                                  "schedule.cron_user or the current user)."),
    crontab: bool = typer.Option(False, "--crontab",
                                 help="Print lines for 'crontab -e' (no user column)."),
    policies: str = typer.Option(None, "--policies", metavar="DIR",
                                 help="Lines for every policy in this folder (--install: one file "
                                      "each); a broken file is reported and skipped."),
) -> None:
    """Print crontab lines for the policy (each run under flock, so runs never overlap)."""
    if policies:
        from backupkit.schedule.fleet import load_fleet  # lazy: start-up time

        fleet = load_fleet(policies)
        results = []
        for m in fleet.good:
            if scheduled_strategies(m.policy):
                results.append(_cron_of(m.settings, install, cron_dir, user, crontab))
        broken = [{"file": str(m.path), "error": m.error} for m in fleet.broken]
        for b in broken:
            warn(f"{b['file']}: {b['error']} (skipped)")

        def human_all(c) -> None:
            for data in results:
                if data["installed"]:
                    c.print(f"installed {data['installed']} ({len(data['lines'])} lines)")
                else:
                    for ln in data["lines"]:
                        c.print(ln, highlight=False, markup=False, soft_wrap=True)

        render({"policies": results, "broken": broken}, human_all)
        return
    data = _cron_of(_settings(), install, cron_dir, user, crontab)

    def human(c) -> None:
        if data["installed"]:
            c.print(f"installed {data['installed']} ({len(data['lines'])} lines); logs in "
                    f"{data['log_dir']}")
        else:
            for ln in data["lines"]:
                c.print(ln, highlight=False, markup=False, soft_wrap=True)

    render(data, human)


def _cron_of(st, install: bool, cron_dir: str, user: str | None, crontab: bool) -> dict:
    """One policy's cron lines (installed when asked), with its warnings printed."""
    from backupkit.schedule.crontab import cron_lines, install_cron  # lazy: start-up time
    from backupkit.schedule.state import Paths  # lazy: start-up time

    pol = st.policy
    if not scheduled_strategies(pol):
        raise UsageError(f"{pol.path}: key 'strategies': nothing is scheduled",
                         "set a cron schedule for cold, snapshot, verify, prune or sync, or binlog = "
                         "\"continuous\"")
    if install and crontab:
        raise UsageError("--install writes a cron.d file; --crontab prints user crontab lines")
    who = None if crontab else (user or pol.schedule.cron_user or getpass.getuser())
    paths = Paths.of(pol)
    lines = cron_lines(pol, pol.path or "", user=who, paths=paths)
    env = _child_env()
    if env:
        lines[4:4] = [f"{k}={v}" for k, v in env.items()]
    warnings = []
    if pol.schedule.timezone:
        warnings.append(f"schedule.timezone is {pol.schedule.timezone}, but cron reads the times in "
                        "the system's zone")
    if not pol.source.password_file and os.environ.get("BACKUPKIT_SOURCE_PASSWORD"):
        warnings.append("cron does not see BACKUPKIT_SOURCE_PASSWORD: set source.password_file "
                        "(a 0600 file) in the policy")
    path = None
    if install:
        path = str(install_cron(pol, lines, cron_dir, paths))
    data = {"policy": pol.name, "lines": lines, "installed": path, "warnings": warnings,
            "lock_dir": str(paths.lock_dir), "log_dir": str(paths.log_dir)}
    for w in warnings:
        warn(w)
    return data
