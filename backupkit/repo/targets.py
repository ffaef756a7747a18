"""The repository a policy describes: one target or a mirror of several, encrypted when configured.

It works from plain specs (RepositorySpec), which settings.Settings.repository_spec() builds from the
policy and the command line; Settings.open_store() calls open_repository() and every command goes
through it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backupkit.errors import ConfigError, StorageError, UsageError
from backupkit.repo import layout
from backupkit.storage import open_store
from backupkit.storage.base import ObjectInfo, ObjectStore
from backupkit.storage.ratelimit import RateLimitedStore
from backupkit.util.ratelimit import shared_or_local

if TYPE_CHECKING:
    from backupkit.storage.crypto import KeyEncryptionKey
    from backupkit.storage.mirror import MirrorStore

# Every command opens the repository, and a command process compiles what it imports (see
# FACTS.md on PYTHONDONTWRITEBYTECODE): the encryption layer (cryptography) and the mirror (with
# repo/sync.py) are imported below only when the policy configures them.


@dataclass(frozen=True)
class TargetSpec:
    """One storage target as the policy (or the command line) gives it."""

    name: str
    url: str
    s3: dict[str, Any] = field(default_factory=dict)

    def open(self, create: bool = True) -> ObjectStore:
        return open_store(self.url or None, self.s3, create=create)  # "": nothing configured

    def open_or_unavailable(self, create: bool = True) -> ObjectStore:
        """The target's store; one that fails every call if it cannot even be opened (a lost region
        must not stop the others from being used)."""
        try:
            return self.open(create)
        except StorageError as exc:
            return Unavailable(self.url or self.name, exc)


@dataclass(frozen=True)
class EncryptionSpec:
    """Where the key-encryption keys come from (the policy's [encryption] section)."""

    key_file: str | None = None
    key_env: str | None = None
    key_id: str | None = None
    old_key_files: tuple[str, ...] = ()
    old_key_envs: tuple[str, ...] = ()


@dataclass(frozen=True)
class RepositorySpec:
    """Everything needed to open the repository, with no policy object in it."""

    #: The targets to use: the policy's, or the one given with --storage / BACKUPKIT_STORAGE.
    targets: tuple[TargetSpec, ...]
    #: Every target the policy lists (for `repo sync` and naming a target by name or number).
    configured: tuple[TargetSpec, ...] = ()
    write_quorum: int | None = None
    stall_timeout: float = 30.0
    encryption: EncryptionSpec | None = None
    #: Bytes per second written to the repository as a whole ([storage] max_rate), None: no limit;
    #: shared through rate_file by every process on this host writing to the same repository.
    max_rate: float | None = None
    rate_file: str | None = None


class Unavailable(ObjectStore):
    """A target that could not be opened: every operation raises the reason."""

    def __init__(self, url: str, error: StorageError) -> None:
        self.url = url
        self.error = error

    def _fail(self, *_args: Any, **_kw: Any):
        raise StorageError(self.error.message, self.error.hint)

    put = open = stat = delete = put_if_absent = replace_if_match = read_small = check = _fail

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        self._fail()
        yield from ()


def target_specs(spec: RepositorySpec) -> list[TargetSpec]:
    """The targets to use: the policy's, or the one given with --storage / BACKUPKIT_STORAGE."""
    return list(spec.targets)


def find_target(spec: RepositorySpec, ref: str) -> TargetSpec:
    """A policy target by name, URL or 1-based number; any other URL is a target of its own."""
    specs = list(spec.configured)
    for s in specs:
        if ref in (s.name, s.url):
            return s
    if ref.isdigit() and 1 <= int(ref) <= len(specs):
        return specs[int(ref) - 1]
    if "://" in ref or ref.startswith(("/", ".", "~")):
        return TargetSpec(ref, ref, {})
    names = ", ".join(s.name for s in specs) or "none in the policy"
    raise UsageError(f"no storage target {ref!r}", f"use a target name, number or URL (targets: {names})")


def key_encryption_keys(spec: RepositorySpec) -> list[KeyEncryptionKey]:
    """The configured key first (it wraps new data keys), then older keys kept for reading."""
    enc = spec.encryption
    if enc is None:
        return []
    from backupkit.storage.crypto import load_key_env, load_key_file  # lazy: start-up time

    keys = []
    if enc.key_file:
        keys.append(load_key_file(enc.key_file, enc.key_id))
    elif enc.key_env:
        keys.append(load_key_env(enc.key_env, enc.key_id))
    else:
        raise ConfigError("the encryption section names no key",
                          "set encryption.key_file (a 0600 file) or encryption.key_env")
    keys += [load_key_file(p) for p in enc.old_key_files]
    keys += [load_key_env(n) for n in enc.old_key_envs]
    return keys


def wrap_encryption(store: ObjectStore, keks: list[KeyEncryptionKey]) -> ObjectStore:
    """The encryption layer over store when keys are configured; else refuse an encrypted repository."""
    if keks:
        from backupkit.repo.keyring import open_encrypted  # lazy: start-up time (cryptography)

        return open_encrypted(store, keks)
    try:
        encrypted = store.stat(layout.KEYRING) is not None
    except StorageError:
        return store  # the command itself will report the storage problem
    if encrypted:
        raise ConfigError(f"{store.describe()} is an encrypted repository and no key is configured",
                          "add an [encryption] section with key_file or key_env to the policy")
    return store


def _catch_up(sources: list[tuple[str, ObjectStore]], dest: tuple[str, ObjectStore],
              progress: Callable[[int, int], None] | None, keys: list[str] | None = None):
    from backupkit.repo.sync import sync_stores  # lazy: start-up time (only a mirror catches up)

    return sync_stores(sources, dest, progress=progress, keys=keys)


def open_mirror(targets: list[tuple[str, ObjectStore]], write_quorum: int | None = None,
                **kw: Any) -> MirrorStore:
    """A mirror of the repository over targets: its placement rule, and repo sync to catch a
    lagging target up when the write quorum needs it."""
    from backupkit.repo.placement import PLACEMENT  # lazy: start-up time (one target: no mirror)
    from backupkit.storage.mirror import MirrorStore  # lazy: as above

    return MirrorStore(targets, write_quorum, placement=PLACEMENT, catch_up=_catch_up, **kw)


def open_raw(spec: RepositorySpec, create: bool = True) -> ObjectStore:
    """The storage of the repository without the encryption layer: one target or a mirror."""
    specs = target_specs(spec)
    if len(specs) == 1:
        return specs[0].open(create)
    return open_mirror([(s.name, s.open_or_unavailable(create)) for s in specs], spec.write_quorum,
                       stall_timeout=spec.stall_timeout)


def open_repository(spec: RepositorySpec, create: bool = True) -> ObjectStore:
    """What every command reads and writes: targets, mirrored if several, encrypted if configured,
    written at most at spec.max_rate."""
    store = wrap_encryption(open_raw(spec, create), key_encryption_keys(spec))
    if spec.max_rate:
        store = RateLimitedStore(store, shared_or_local(
            Path(spec.rate_file) if spec.rate_file else None, spec.max_rate))
    return store
