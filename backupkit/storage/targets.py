"""The repository a policy describes: one target or a mirror of several, encrypted when configured.

Settings.open_store() calls open_repository(); every command goes through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from backupkit.errors import ConfigError, StorageError, UsageError
from backupkit.repo import layout
from backupkit.storage.base import ObjectStore

if TYPE_CHECKING:
    from backupkit.config import Settings
    from backupkit.storage.crypto import KeyEncryptionKey


@dataclass
class TargetSpec:
    """One storage target as the policy (or the command line) gives it."""

    name: str
    url: str
    s3: dict[str, Any]

    def open(self, create: bool = True) -> ObjectStore:
        from backupkit.storage import open_store

        return open_store(self.url, self.s3, create=create)

    def open_or_unavailable(self, create: bool = True) -> ObjectStore:
        """The target's store; one that fails every call if it cannot even be opened (a lost region
        must not stop the others from being used)."""
        try:
            return self.open(create)
        except StorageError as exc:
            return Unavailable(self.url or self.name, exc)


class Unavailable(ObjectStore):
    """A target that could not be opened: every operation raises the reason."""

    def __init__(self, url: str, error: StorageError) -> None:
        self.url = url
        self.error = error

    def _fail(self, *_args: Any, **_kw: Any):
        raise StorageError(self.error.message, self.error.hint)

    put = open = stat = delete = put_if_absent = replace_if_match = read_small = check = _fail

    def list(self, prefix: str = ""):
        self._fail()
        yield from ()


def target_specs(settings: Settings) -> list[TargetSpec]:
    """The targets to use: the policy's, or the one given with --storage / BACKUPKIT_STORAGE."""
    storage = settings.policy.storage
    specs = [TargetSpec(t.name or t.url, t.url, t.s3_settings()) for t in storage.targets]
    if not specs:
        url = settings.storage_url or ""
        return [TargetSpec(url or "default", url, settings.storage_settings())]
    explicit = getattr(settings, "storage_explicit", False)
    if explicit and settings.storage_url:
        for s in specs:
            if settings.storage_url in (s.url, s.name):
                return [s]
        return [TargetSpec(settings.storage_url, settings.storage_url, {})]
    return specs


def find_target(settings: Settings, ref: str) -> TargetSpec:
    """A policy target by name, URL or 1-based number; any other URL is a target of its own."""
    specs = [TargetSpec(t.name or t.url, t.url, t.s3_settings()) for t in settings.policy.storage.targets]
    for s in specs:
        if ref in (s.name, s.url):
            return s
    if ref.isdigit() and 1 <= int(ref) <= len(specs):
        return specs[int(ref) - 1]
    if "://" in ref or ref.startswith(("/", ".", "~")):
        return TargetSpec(ref, ref, {})
    names = ", ".join(s.name for s in specs) or "none in the policy"
    raise UsageError(f"no storage target {ref!r}", f"use a target name, number or URL (targets: {names})")


def key_encryption_keys(settings: Settings) -> list[KeyEncryptionKey]:
    """The configured key first (it wraps new data keys), then older keys kept for reading."""
    from backupkit.storage.crypto import load_key_env, load_key_file

    enc = settings.policy.encryption
    if enc is None:
        return []
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
        from backupkit.storage.crypto import EncryptedStore

        return EncryptedStore(store, keks)
    try:
        encrypted = store.stat(layout.KEYRING) is not None
    except StorageError:
        return store  # the command itself will report the storage problem
    if encrypted:
        raise ConfigError(f"{store.describe()} is an encrypted repository and no key is configured",
                          "add an [encryption] section with key_file or key_env to the policy")
    return store


def open_raw(settings: Settings, create: bool = True) -> ObjectStore:
    """The storage of the repository without the encryption layer: one target or a mirror."""
    specs = target_specs(settings)
    if len(specs) == 1:
        return specs[0].open(create)
    from backupkit.storage.mirror import MirrorStore

    storage = settings.policy.storage
    return MirrorStore([(s.name, s.open_or_unavailable(create)) for s in specs], storage.write_quorum,
                       stall_timeout=storage.stall_timeout)


def open_repository(settings: Settings, create: bool = True) -> ObjectStore:
    """What every command reads and writes: targets, mirrored if several, encrypted if configured."""
    return wrap_encryption(open_raw(settings, create), key_encryption_keys(settings))
