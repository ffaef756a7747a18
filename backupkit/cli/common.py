"""Helpers every command uses: the resolved settings, the store, the catalog, output."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from backupkit.cli.console import console, emit_json
from backupkit.cli.context import COMMON
from backupkit.errors import BackupkitError, UsageError
from backupkit.settings import Settings
from backupkit.util.ratelimit import TokenBucket
from backupkit.util.units import RATE_HELP, parse_rate


def settings() -> Settings:
    return COMMON.settings()


def json_mode() -> bool:
    return COMMON.json


def configured_source():
    """The configured source's ConnSpec (restores recognise it as a target), or None."""
    s = settings()
    if not s.source_url:
        return None
    try:
        return s.source_spec()
    except BackupkitError:  # a password file that cannot be read: only its address is needed
        from backupkit.mysql.connection import parse_conn  # lazy: start-up time

        try:
            return parse_conn(s.source_url, password_env="BACKUPKIT_NO_PASSWORD_NEEDED")
        except BackupkitError:
            return None


#: Seconds an interactive command (status, list, repo targets) waits for one storage target before
#: marking it unreachable and answering from the others.
INTERACTIVE_DEADLINE = 2.0


def _open_store(create: bool, interactive: bool):
    if not interactive:
        return settings().open_store(create=create)

    from backupkit.repo.targets import open_repository  # lazy: start-up time

    spec = settings().repository_spec()
    spec = replace(spec, stall_timeout=min(spec.stall_timeout, INTERACTIVE_DEADLINE))
    return open_repository(spec, create=create)


def open_catalog(create: bool = True, interactive: bool = False, read_rate: float | None = None):
    """The store and catalog of the configured repository (interactive: every storage call has
    the short INTERACTIVE_DEADLINE, a dead target is marked and skipped; read_rate: the bytes per
    second a restore reads at most, `restore --max-rate`)."""
    from backupkit.repo.catalog import Catalog  # lazy: start-up time

    store = _open_store(create, interactive)
    if read_rate:
        from backupkit.storage.ratelimit import RateLimitedStore  # lazy: start-up time

        store = RateLimitedStore(store, TokenBucket(read_rate), reads=True)
    return store, Catalog(store)


def open_repo(create: bool = True, interactive: bool = False):
    """The configured repository (repo/repository.py)."""
    from backupkit.repo.repository import Repository  # lazy: start-up time

    return Repository(_open_store(create, interactive))


def render(data: dict[str, Any], human) -> None:
    """JSON in --json mode, otherwise call human(console) to print rich output.

    With several storage targets, which target served what is added when a read fell back to
    another target or a target missed a write (storage/mirror/).
    """
    from backupkit.storage.mirror import session_report  # lazy: start-up time

    targets = session_report()
    if json_mode():
        emit_json({"ok": True, **data, **({"storage_targets": targets} if targets else {})})
        return
    human(console)
    if targets:
        served = ", ".join(f"{name} {n}" for name, n in targets["objects_served"].items())
        console.print(f"storage targets: objects read from {served}", highlight=False)
        for e in targets["events"][:10]:
            what = {"read_failover": f"read from {e.get('served_by') or 'no other target'}",
                    "write_failed": "not written there (lagging)", "caught_up": "caught up"}[e["kind"]]
            console.print(f"  {e['target']}: {e['key'] or ''} {e['reason']}: {what}", highlight=False)
        if len(targets["events"]) > 10:
            console.print(f"  ... and {len(targets['events']) - 10} more", highlight=False)


def parse_max_rate(text: str | None, policy_value: str | None = None) -> float | None:
    """--max-rate (or else the policy's key) in bytes per second; None: no limit."""
    value = text if text not in (None, "") else policy_value
    if value in (None, "", "0", "off", "none"):
        return None
    try:
        return parse_rate(value)  # type: ignore[arg-type]
    except ValueError as exc:
        raise UsageError(f"--max-rate {value!r}: {exc}", RATE_HELP) from None
