"""What a command works with: the command line, the environment and a policy file, resolved
(precedence: command line > environment > policy). The policy models are in config.py.

No pydantic here: a command given no policy file reads DEFAULTS (plain values), and the models are
imported and built only when a policy file is loaded or a whole Policy is needed (about 0.1 s of
every CLI call's start-up)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backupkit.errors import UsageError
from backupkit.util.paths import expand_user
from backupkit.util.units import parse_rate

if TYPE_CHECKING:
    from backupkit.config import Policy, PolicyChecks


def state_dir() -> Path:
    """This host's local state of backupkit: BACKUPKIT_STATE_DIR, /var/lib/backupkit for root,
    else $XDG_STATE_HOME/backupkit (status files, locks, logs, shared rate-limit buckets)."""
    env = os.environ.get("BACKUPKIT_STATE_DIR")
    if env:
        return expand_user(env)
    if os.geteuid() == 0:
        return Path("/var/lib/backupkit")
    return expand_user(os.environ.get("XDG_STATE_HOME", "~/.local/state")) / "backupkit"


#: The values of a default config.Policy that the commands read before their work starts (the
#: source, the repository, the snapshot options), as plain data; a unit test keeps them equal to
#: the models' defaults (tests/unit/cli/test_startup.py). Any other key is read from a default
#: Policy, built on first need.
DEFAULTS: dict[str, Any] = {
    "name": "default", "path": None, "encryption": None,
    "source": {"url": "mysql://root@127.0.0.1:3306", "password_file": None, "source_id": None,
               "datadir": None},
    "storage": {"url": None, "targets": [], "write_quorum": None, "stall_timeout": 30.0,
                "max_rate": None},
    "snapshot": {"engine": "logical", "parallel": None, "compression_level": 1, "chunk_size_mb": 64,
                 "databases": [], "tables": [], "include_users": False, "max_lock_wait": 5.0,
                 "lock_retries": 3, "max_rate": None, "max_replica_lag": 300.0},
}


def default_policy() -> Policy:
    """A validated Policy of the defaults (imports and builds the pydantic models)."""
    from backupkit.config import Policy  # lazy: start-up time

    return Policy()


class PolicyDefaults:
    """A default policy (or one section of it) read as attributes without pydantic: DEFAULTS, and
    for a key not there the value of a default config.Policy."""

    __slots__ = ("_where", "_values")

    def __init__(self, values: dict[str, Any], where: tuple[str, ...] = ()) -> None:
        self._where = where
        self._values = values

    def __getattr__(self, name: str) -> Any:
        if name in self._values:
            value = self._values[name]
            if isinstance(value, dict):
                return PolicyDefaults(value, (*self._where, name))
            return list(value) if isinstance(value, list) else value
        obj: Any = default_policy()
        for part in self._where:
            obj = getattr(obj, part)
        return getattr(obj, name)

    def __repr__(self) -> str:
        return f"PolicyDefaults({'.'.join(self._where) or 'policy'})"


@dataclass
class Settings:
    """What a command works with, resolved from the command line, the environment and a policy."""

    loaded: Policy | None  # the validated policy file; None: none given (the defaults)
    storage_url: str | None
    source_url: str
    json: bool = False
    debug: bool = False
    storage_explicit: bool = False  # --storage or BACKUPKIT_STORAGE given: use that one target

    @property
    def policy(self) -> Policy:
        """The validated Policy: the file's, or without one the defaults (built on first use)."""
        if self.loaded is None:
            self.loaded = default_policy()
        return self.loaded

    @property
    def values(self) -> Policy:
        """The policy's values to read: the file's Policy, or without one the defaults as plain
        values (PolicyDefaults: no pydantic on the way)."""
        return self.loaded if self.loaded is not None else PolicyDefaults(DEFAULTS)  # type: ignore[return-value]

    @classmethod
    def resolve(cls, policy_path: str | None, storage: str | None, source: str | None,
                json: bool = False, debug: bool = False, checks: PolicyChecks | None = None) -> Settings:
        for option, value in (("--policy", policy_path), ("--storage", storage), ("--source", source)):
            if value is not None and not value.strip():  # "" must not quietly mean the default
                raise UsageError(f"{option} is empty", f"give a value or leave {option} out")
        policy_path = policy_path or os.environ.get("BACKUPKIT_POLICY")
        loaded = None
        if policy_path:
            from backupkit.config import load_policy  # lazy: start-up time

            loaded = load_policy(policy_path, checks)
        primary = loaded.storage.primary() if loaded is not None else None
        storage_url = storage or os.environ.get("BACKUPKIT_STORAGE") or (primary.url if primary else None)
        source_url = source or os.environ.get("BACKUPKIT_SOURCE") or (
            loaded.source.url if loaded is not None else DEFAULTS["source"]["url"])
        settings = cls(loaded, storage_url, source_url, json, debug)
        settings.storage_explicit = bool(storage or os.environ.get("BACKUPKIT_STORAGE"))
        return settings

    def storage_settings(self) -> dict[str, Any]:
        primary = self.loaded.storage.primary() if self.loaded is not None else None
        if primary is None or (self.storage_url and self.storage_url != primary.url):
            return {}
        return primary.s3_settings()

    def repository_spec(self):
        """The repository to open, as plain specs (repo/targets.py knows no policy)."""
        from backupkit.repo.targets import EncryptionSpec, RepositorySpec, TargetSpec  # lazy: start-up time

        storage, enc = self.values.storage, self.values.encryption
        configured = tuple(TargetSpec(t.name or t.url, t.url, t.s3_settings()) for t in storage.targets)
        targets = configured
        if not configured:
            url = self.storage_url or ""
            targets = (TargetSpec(url or "default", url, self.storage_settings()),)
        elif self.storage_explicit and self.storage_url:
            chosen = [s for s in configured if self.storage_url in (s.url, s.name)]
            targets = (chosen[0] if chosen else TargetSpec(self.storage_url, self.storage_url, {}),)
        encryption = None if enc is None else EncryptionSpec(
            enc.key_file, enc.key_env, enc.key_id, tuple(enc.old_key_files), tuple(enc.old_key_envs))
        rate = parse_rate(storage.max_rate) if storage.max_rate else None
        return RepositorySpec(targets, configured, storage.write_quorum, storage.stall_timeout,
                              encryption, rate, str(self.rate_file(targets)) if rate else None)

    @staticmethod
    def rate_file(targets) -> Path:
        """The file holding the shared rate-limit bucket of a repository on this host: one per
        set of target URLs, so every job writing there shares one [storage] max_rate."""
        ident = "\n".join(sorted(t.url for t in targets)).encode()
        return state_dir() / "rate" / f"storage-{hashlib.sha256(ident).hexdigest()[:16]}.bucket"

    def open_store(self, create: bool = True):
        """The repository: one target or a mirror of the policy's targets, encrypted when configured."""
        from backupkit.repo.targets import open_repository  # lazy: start-up time

        return open_repository(self.repository_spec(), create=create)

    def source_spec(self):
        from backupkit.mysql.connection import parse_conn  # lazy: start-up time

        return parse_conn(self.source_url, password_file=self.values.source.password_file)
