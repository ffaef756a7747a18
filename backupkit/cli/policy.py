"""backupkit policy check | plan."""

from __future__ import annotations

import os
from urllib.parse import unquote, urlparse

import typer

from backupkit.cli.common import render
from backupkit.cli.console import table
from backupkit.cli.context import COMMON
from backupkit.errors import BackupkitError, ConfigError, StorageError
from backupkit.mysql.server import server_facts
from backupkit.schedule.checks import semantic_problems, storage_problem
from backupkit.settings import Settings
from backupkit.util.paths import expand_user
from backupkit.util.units import human_seconds

app = typer.Typer(no_args_is_help=True)


def _load(file: str):
    """Settings from a policy file; a policy without storage (and no --storage) is an error."""

    st = Settings.resolve(file, COMMON.storage, COMMON.source, checks=semantic_problems)
    problem = storage_problem(st.policy, COMMON.storage)
    if problem:
        raise ConfigError(problem)
    return st


@app.command("check")
def check(
    file: str = typer.Argument(..., help="Policy file to validate."),
    offline: bool = typer.Option(False, "--offline", help="Validate only; do not connect."),
) -> None:
    """Validate a policy file, then connect to its source and its storage."""
    from backupkit.mysql.connection import connect  # lazy: start-up time

    st = _load(file)
    result: dict = {"policy": st.policy.name, "file": file, "valid": True}
    if not offline:
        spec = st.source_spec()
        conn = connect(spec)
        try:
            facts = server_facts(conn)
        finally:
            conn.close()
        result["source"] = {"url": spec.display(), "flavor": facts.flavor, "version": facts.version,
                            "log_bin": facts.log_bin, "binlog_format": facts.binlog_format}
        result["storage"] = _check_storage(st)

    def human(c) -> None:
        c.print(f"{file}: policy {st.policy.name!r} is valid")
        if "source" in result:
            s = result["source"]
            c.print(f"source  {s['url']}: {s['version']}, log_bin={s['log_bin']}, "
                    f"binlog_format={s['binlog_format']}")
            c.print(f"storage {result['storage']}")

    render(result, human)


def _check_storage(st) -> str:
    """Reach the storage; a local folder that does not exist yet is fine if it can be created."""
    try:
        store = st.open_store(create=False)
        store.check()
        return f"{store.describe()}: reachable"
    except StorageError:
        url = st.storage_url or ""
        if url.startswith("s3://"):
            raise
        path = expand_user(unquote(urlparse(url).path) if "://" in url else url)
        parent = next((p for p in path.parents if p.exists()), None)
        if path.exists() or parent is None or not os.access(parent, os.W_OK):
            raise
        return f"file://{path}: does not exist yet; created on the first backup (under {parent})"


@app.command("plan")
def plan(
    file: str = typer.Argument(..., help="Policy file."),
    runs: int = typer.Option(3, "--runs", min=1, max=50, help="How many next run times to show."),
    offline: bool = typer.Option(False, "--offline",
                                 help="Do not read measured durations from the repository."),
) -> None:
    """Next run times of each strategy, and the worst-case loss window and downtime each implies.

    Durations measured in the repository (backup runs, cold downtime, restore tests) are used
    where they exist.
    """
    from backupkit.repo.catalog import Catalog  # lazy: start-up time
    from backupkit.schedule.plan import measured_from, policy_plan  # lazy: start-up time

    st = _load(file)
    measured: dict = {}
    note = None
    if not offline:
        try:
            measured = measured_from(Catalog(st.open_store(create=False)))
        except BackupkitError as exc:
            note = f"no measured durations: {exc.one_line()}"
    data = policy_plan(st.policy, measured=measured, n=runs)
    if note:
        data["note"] = note

    def human(c) -> None:
        c.print(f"policy {data['policy']!r} ({data['file']}), times in {data['timezone']}")
        c.print(table(None, ["strategy", "schedule", "next runs", "worst-case loss", "downtime", "RTO"],
                      [[r["strategy"], r["schedule"],
                        "\n".join(r.get("next_runs_text", r.get("next_runs", []))),
                        r.get("loss_window", ""), r.get("downtime", ""), r.get("rto", "")]
                       for r in data["strategies"]]))
        loss = data["worst_case_loss_s"]
        c.print(f"worst-case loss window of the policy: "
                f"{human_seconds(loss) if loss is not None else 'unbounded'} "
                f"({data['worst_case_loss_because']})")
        if data["retention"]["recovery_window"]:
            c.print(f"recovery window: {data['retention']['recovery_window']}")
        if note:
            c.print(f"note: {note}", highlight=False)

    render(data, human)
