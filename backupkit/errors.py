"""One error hierarchy; the CLI turns each into a one-line message and an exit code."""

from __future__ import annotations


class BackupkitError(Exception):
    """Base of every error backupkit reports to the user (exit code 1)."""

    exit_code = 1
    #: structured facts for --json (for example the gap a restore refused at)
    details: dict | None = None

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.one_line()

    def one_line(self) -> str:
        """The message and the fix, on one line."""
        text = self.message.replace("\n", " ").strip()
        if self.hint:
            text = f"{text} ({self.hint.strip()})"
        return text


class UsageError(BackupkitError):
    """Bad command-line usage or a bad value given by the user."""

    exit_code = 2


class ConfigError(UsageError):
    """A policy file or setting is missing or invalid."""

    exit_code = 2


class SourceError(BackupkitError):
    """The source (or target) database server is unreachable or refused us."""

    exit_code = 3


class TargetError(BackupkitError):
    """The restore's target server refused or failed the restore (a replayed transaction failed,
    or the target is the backed-up source itself). Distinct from 3: the source is not involved."""

    exit_code = 7


class StorageError(BackupkitError):
    """A storage target is unreachable, misconfigured or refused an operation."""

    exit_code = 4


class ObjectNotFound(StorageError):
    """An object that should exist in the storage target is missing."""

    def __init__(self, key: str, where: str = "") -> None:
        loc = f" in {where}" if where else ""
        super().__init__(f"object {key!r} not found{loc}",
                         "the repository is incomplete; run 'backupkit verify --all'")
        self.key = key


class ObjectExists(StorageError):
    """A conditional create found the key already present."""

    def __init__(self, key: str) -> None:
        super().__init__(f"object {key!r} already exists")
        self.key = key


class IntegrityError(BackupkitError):
    """Stored bytes do not match their recorded checksum, or a manifest is inconsistent."""

    exit_code = 5


class KeyMismatch(IntegrityError):
    """The configured keys do not open the repository's data keys: the key is wrong, not the data."""


class PlanError(UsageError):
    """No restore plan can reach the requested target."""

    exit_code = 2


class ServerControlError(BackupkitError):
    """Stopping or starting a database service failed."""

    exit_code = 6
