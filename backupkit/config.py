"""Policy files (policies/*.toml): the validated models and their loading. What a command works with
(command line > environment > policy) is settings.Settings, which imports this only when needed."""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from backupkit.errors import ConfigError
from backupkit.util.paths import expand_user
from backupkit.util.units import RATE_HELP, parse_duration, parse_rate


def check_rate(v: str | None) -> str | None:
    """A max_rate key: None or a rate parse_rate reads."""
    if v is None:
        return v
    try:
        parse_rate(v)
    except ValueError as exc:
        raise ValueError(f"{exc}; {RATE_HELP}") from None
    return v


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)


class SourceSection(_Section):
    """How to reach and control the database server."""

    url: str = "mysql://root@127.0.0.1:3306"
    password_file: str | None = None
    source_id: str | None = None
    datadir: str | None = None
    stop_command: str | None = None
    start_command: str | None = None
    pid_file: str | None = None
    config_file: str | None = None
    stop_timeout: float = 300.0
    start_timeout: float = 300.0


class _S3Fields(_Section):
    """How an S3-compatible target is reached and written: [storage] and each [[storage.targets]]."""

    endpoint_url: str | None = None
    region: str | None = None
    addressing_style: Literal["auto", "path", "virtual"] | None = None
    profile: str | None = None
    access_key_env: str | None = None
    secret_key_env: str | None = None
    storage_class: str | None = None
    sse: str | None = None
    sse_kms_key_id: str | None = None


class TargetSection(_S3Fields):
    """One storage target; several make a cross-region repository."""

    url: str
    name: str | None = None  # how commands and reports call it (default: the URL)
    connect_timeout: float | None = Field(default=None, gt=0)
    read_timeout: float | None = Field(default=None, gt=0)
    max_attempts: int | None = Field(default=None, ge=1, le=20)

    def s3_settings(self) -> dict[str, Any]:
        return self.model_dump(exclude={"url", "name"}, exclude_none=True)


class StorageSection(_S3Fields):
    """Where the repository lives."""

    url: str | None = None
    targets: list[TargetSection] = Field(default_factory=list)
    write_quorum: int | None = Field(default=None, ge=1)
    # Seconds a target may make no progress before a mirror treats it as down for that operation.
    stall_timeout: float = Field(default=30.0, gt=0, le=3600)
    # bytes per second written to the repository as a whole, shared by every job on this host
    max_rate: str | None = None

    _rate = field_validator("max_rate")(classmethod(lambda cls, v: check_rate(v)))

    def primary(self) -> TargetSection | None:
        if self.targets:
            return self.targets[0]
        if self.url:
            return TargetSection(**self.model_dump(exclude={"targets", "write_quorum", "stall_timeout",
                                                            "max_rate"}))
        return None


class StrategiesSection(_Section):
    """Cron schedules per strategy; binlog may be "continuous" or "off"."""

    cold: str | None = None
    snapshot: str | None = None
    binlog: str | None = None
    verify: str | None = None
    prune: str | None = None
    sync: str | None = None  # `repo sync` of several storage targets, for example "*/10 * * * *"
    binlog_purge: str | None = None  # `binlog purge` of shipped files older than [binlog] purge_keep
    # physical incrementals on the newest physical backup (needs [snapshot] engine = "physical"),
    # for example "0 * * * *" beside snapshot = "0 3 * * 0": a weekly full, hourly incrementals
    snapshot_incremental: str | None = None
    # `binlog compact`: merge shipped segments older than [binlog] compact_after, e.g. "*/15 * * * *"
    binlog_compact: str | None = None


class SnapshotSection(_Section):
    # logical: rows through SQL (any host); physical: mariadb-backup on the database host
    engine: Literal["logical", "physical"] = "logical"
    parallel: int | None = Field(default=None, ge=1, le=64)
    # zstd level 1: on row text about 3x less CPU than level 3 and no bigger (bench/snapshot.py)
    compression_level: int = Field(default=1, ge=-7, le=22)
    chunk_size_mb: int = Field(default=64, ge=1, le=4096)
    databases: list[str] = Field(default_factory=list)
    tables: list[str] = Field(default_factory=list)
    include_users: bool = False
    # the lock watchdog: seconds the consistency step may wait for other sessions (and so stall
    # commits) before it backs off, and how many times it tries again before it gives up
    max_lock_wait: float = Field(default=5.0, gt=0, le=3600)
    lock_retries: int = Field(default=3, ge=0, le=100)
    # bytes per second read from the source ("50MB/s"; MB = 10^6, MiB = 2^20); default no limit
    max_rate: str | None = None
    # a replica source lagging its primary by more seconds than this: a warning (lag is recorded)
    max_replica_lag: float = Field(default=300.0, gt=0)

    _rate = field_validator("max_rate")(classmethod(lambda cls, v: check_rate(v)))


class BinlogSection(_Section):
    sync_interval: float = Field(default=1.0, gt=0, le=3600)
    max_segment_mb: int = Field(default=16, ge=1, le=4096)
    server_id: int | None = Field(default=None, ge=1, le=4294967295)
    heartbeat: float = Field(default=1.0, gt=0, le=3600)
    lease_seconds: float = Field(default=15.0, gt=1, le=3600)
    # binlog compresses as well at level 1 as at 3 and three times faster (bench/ship.py)
    compression_level: int = Field(default=1, ge=-7, le=22)
    # seconds between writes of the confirmed-through watermark while the source is quiet
    confirm_interval: float = Field(default=5.0, ge=0.5, le=3600)
    # `binlog purge` (and [strategies] binlog_purge): keep shipped files this long on the server
    purge_keep: str = "1d"
    # `binlog status --check` fails when the shipper is this many seconds behind
    max_lag: float = Field(default=300.0, gt=0)
    # `binlog compact` (and [strategies] binlog_compact): merge segments older than compact_after
    # into one object per hour of commits; delete the merged small ones compact_grace after that
    # (a restore that planned with them keeps reading them meanwhile)
    compact_after: str = "1h"
    compact_grace: str = "1h"
    # compaction levels (Litestream's L1, L2): each merges the segments of every aligned window of
    # commit time once the window ended `after` ago (default: its window; the last level's
    # default is compact_after); `grace` defaults to compact_grace. Windows ascend, each a whole
    # multiple of the one before. `[]`: one level of an hour, merging whatever is older than
    # compact_after (before levels existed).
    compact_levels: list[CompactLevel] = Field(default_factory=lambda: [
        CompactLevel(window="1m", after="10s"), CompactLevel(window="1h")])

    @field_validator("purge_keep", "compact_after", "compact_grace")
    @classmethod
    def _duration(cls, v: str) -> str:
        _seconds(v)
        return v

    @field_validator("compact_levels")
    @classmethod
    def _levels(cls, v: list[CompactLevel]) -> list[CompactLevel]:
        for i in range(1, len(v)):
            lower, upper = _seconds(v[i - 1].window), _seconds(v[i].window)
            if upper <= lower or upper % lower:
                raise ValueError(f"level {i + 1}'s window {v[i].window!r} is not a larger whole "
                                 f"multiple of level {i}'s {v[i - 1].window!r}")
        return v

    def compaction_levels(self) -> list[tuple[float, float, float]]:
        """(window, after, grace) in seconds for each level, defaults filled in."""
        out = []
        for i, lv in enumerate(self.compact_levels):
            after = lv.after if lv.after is not None else \
                self.compact_after if i == len(self.compact_levels) - 1 else lv.window
            out.append((_seconds(lv.window), _seconds(after),
                        _seconds(lv.grace if lv.grace is not None else self.compact_grace)))
        return out


def _seconds(text: str) -> float:
    """A duration in seconds; "0" is allowed (parse_duration wants it positive)."""
    return 0.0 if str(text).strip() in ("0", "0s") else parse_duration(text)


class CompactLevel(_Section):
    """One entry of [binlog] compact_levels."""

    window: str
    after: str | None = None
    grace: str | None = None

    @field_validator("window")
    @classmethod
    def _window(cls, v: str) -> str:
        w = _seconds(v)
        if w < 1 or w != int(w):
            raise ValueError(f"window {v!r} must be a whole number of seconds, at least 1s")
        return v

    @field_validator("after", "grace")
    @classmethod
    def _age(cls, v: str | None) -> str | None:
        if v is not None:
            _seconds(v)
        return v


class ColdSection(_Section):
    # "auto": a hidden folder beside the datadir when it is safe; "none": stream while down; a folder
    staging: str = Field(default="auto", min_length=1)
    paths: list[str] = Field(default_factory=list)
    compression_level: int = Field(default=1, ge=-7, le=22)
    preflush_timeout: float = Field(default=30.0, ge=0, le=3600)  # 0: no pre-flush of dirty pages
    max_rate: str | None = None  # bytes per second copied from the datadir; default no limit
    idle_io: bool = True  # copy at idle I/O priority (ionice class 3) where the platform allows

    _rate = field_validator("max_rate")(classmethod(lambda cls, v: check_rate(v)))


class RetentionSection(_Section):
    keep_last: int | None = Field(default=None, ge=0)
    keep_daily: int | None = Field(default=None, ge=0)
    keep_weekly: int | None = Field(default=None, ge=0)
    keep_monthly: int | None = Field(default=None, ge=0)
    recovery_window: str | None = None


class VerifySection(_Section):
    """How `verify` without --all spreads its reading: it checks only objects no earlier run
    checked, and reads everything again once per full_every (a duration: "7d")."""

    full_every: str = "7d"

    @field_validator("full_every")
    @classmethod
    def _full_every_ok(cls, v: str) -> str:
        if parse_duration(v) <= 0:
            raise ValueError("a positive duration such as 7d or 12h")
        return v


class ScheduleSection(_Section):
    """How `schedule run` (the daemon) and `schedule cron` run the strategies."""

    timezone: str | None = None  # zone of the cron expressions; default the local zone
    misfire_grace_time: int = Field(default=3600, ge=1, le=7 * 86400)
    shipper_backoff_min: float = Field(default=1.0, gt=0, le=3600)
    shipper_backoff_max: float = Field(default=300.0, gt=0, le=86400)
    status_file: str | None = None
    lock_dir: str | None = None
    log_dir: str | None = None
    cron_user: str | None = None


class MetricsSection(_Section):
    """Prometheus metrics and the status page of `schedule run` (monitor/, docs/monitoring.md)."""

    listen: str | None = None  # "127.0.0.1:9108" serves /metrics and the page; default off
    refresh_interval: float = Field(default=30.0, ge=1, le=86400)  # seconds between repository reads
    lag_threshold: float = Field(default=60.0, gt=0)  # shipper lag (s) that counts as lagging
    target_lag_threshold: float = Field(default=900.0, gt=0)  # a storage target this far behind
    grace: float | None = Field(default=None, ge=0)  # s after a schedule's interval before overdue
    loss_objective: dict[str, float] = Field(default_factory=dict)  # strategy -> seconds


class NotifySection(_Section):
    """Notifications on a job failure, a gap, lag over the threshold, and recovery."""

    webhook: str | None = None  # gets a JSON POST (Slack's incoming-webhook body fits)
    command: str | None = None  # run with the event in BACKUPKIT_EVENT_* environment variables
    events: list[Literal["failure", "gap", "lag", "recovery"]] = Field(
        default_factory=lambda: ["failure", "gap", "lag", "recovery"])
    timeout: float = Field(default=5.0, gt=0, le=300)
    retries: int = Field(default=3, ge=0, le=10)


class EncryptionSection(_Section):
    """Client-side encryption: the key that wraps the repository's data keys (never stored)."""

    key_file: str | None = None  # a 0600 file with 64 hex digits (backupkit repo keygen FILE)
    key_env: str | None = None  # or the name of an environment variable holding the key
    key_id: str | None = None  # a label recorded in manifests and the keyring
    old_key_files: list[str] = Field(default_factory=list)  # earlier keys, still accepted for reading
    old_key_envs: list[str] = Field(default_factory=list)


class Policy(_Section):
    """A whole policy file."""

    name: str = "default"
    source: SourceSection = Field(default_factory=SourceSection)
    storage: StorageSection = Field(default_factory=StorageSection)
    strategies: StrategiesSection = Field(default_factory=StrategiesSection)
    snapshot: SnapshotSection = Field(default_factory=SnapshotSection)
    binlog: BinlogSection = Field(default_factory=BinlogSection)
    cold: ColdSection = Field(default_factory=ColdSection)
    retention: RetentionSection = Field(default_factory=RetentionSection)
    schedule: ScheduleSection = Field(default_factory=ScheduleSection)
    verify: VerifySection = Field(default_factory=VerifySection)
    encryption: EncryptionSection | None = None
    metrics: MetricsSection = Field(default_factory=MetricsSection)
    notify: NotifySection = Field(default_factory=NotifySection)

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not v or any(c in v for c in "/\\ \t\n"):
            raise ValueError("a name without spaces or slashes")
        return v

    path: str | None = Field(default=None, exclude=True)


def _near_key(loc: tuple) -> str | None:
    """The known key closest to an unknown one, for "did you mean" hints."""
    model: Any = Policy
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part) if isinstance(part, str) else None
        if field is None:
            if isinstance(part, int):
                continue
            return None
        ann = field.annotation
        args = [a for a in getattr(ann, "__args__", ()) if isinstance(a, type)]
        model = next((a for a in [ann, *args] if isinstance(a, type) and issubclass(a, BaseModel)),
                     None)
        if model is None:
            return None
    names = [n for n in getattr(model, "model_fields", {}) if n != "path"]
    found = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.6) if loc else []
    return ".".join([*(str(p) for p in loc[:-1]), found[0]]) if found else None


def _problem_line(path: Path, err: dict[str, Any]) -> str:
    key = ".".join(str(p) for p in err.get("loc", ())) or "(top level)"
    typ = err.get("type", "")
    if typ == "extra_forbidden":
        near = _near_key(err.get("loc", ()))
        fix = f"did you mean '{near}'?" if near else "remove it or check its spelling"
        return f"{path}: unknown key '{key}' ({fix})"
    if typ == "missing":
        return f"{path}: missing key '{key}'"
    found = err.get("input")
    found_s = repr(found) if not isinstance(found, dict) else "a table"
    return f"{path}: key '{key}': expected {err.get('msg', 'a valid value')}, found {found_s}"


#: The semantic checks of a loaded policy: one line per problem.
PolicyChecks = Callable[["Policy", Path], list[str]]


def load_policy(path: str | Path, checks: PolicyChecks | None = None) -> Policy:
    """Read and validate a policy file; every problem is one line of the ConfigError.

    ``checks`` finds the problems beyond the types (schedule.checks.semantic_problems): the
    callers pass it, so that config imports nothing above it."""
    p = expand_user(path)
    if not p.is_file():
        raise ConfigError(f"policy file {p} not found", "check the path given to --policy")
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"policy file {p} cannot be read: {exc.strerror}") from None
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        lines = [_problem_line(p, e) for e in exc.errors()]
        raise ConfigError("\n".join(lines)) from None
    policy.path = str(p)
    problems = checks(policy, p) if checks is not None else []
    if problems:
        raise ConfigError("\n".join(problems))
    return policy
