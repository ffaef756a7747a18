"""Helpers every command uses: the resolved settings, the store, the catalog, output."""

from __future__ import annotations

from typing import Any

from backupkit.cli.console import console, emit_json
from backupkit.cli.context import COMMON
from backupkit.config import Settings
from backupkit.errors import BackupkitError


def settings() -> Settings:
    return COMMON.settings()


def json_mode() -> bool:
    return COMMON.json


def open_catalog(create: bool = True):
    """The store and catalog of the configured repository."""
    from backupkit.repo.catalog import Catalog

    store = settings().open_store(create=create)
    return store, Catalog(store)


def render(data: dict[str, Any], human) -> None:
    """JSON in --json mode, otherwise call human(console) to print rich output."""
    if json_mode():
        emit_json({"ok": True, **data})
    else:
        human(console)


def not_yet(what: str) -> BackupkitError:
    return BackupkitError(f"'{what}' is not available in this build yet")
