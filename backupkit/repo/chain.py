"""Chains of physical backups: a full backup and the incrementals built on it, as one unit.

A physical incremental (``mariadb-backup --incremental-lsn``) holds only the pages changed since
its parent, so it is useless without every link back to its full backup. Restore, verify and
retention all go through these pure functions, so they agree on what a chain is:

- ``chain_of(backup, lookup)``: the links from the full backup to ``backup``, oldest first; a
  missing link is an IntegrityError (exit 5) that names it.
- ``broken_chains(backups, lookup)``: the incrementals whose chain is broken, with the error.
- ``needed_by(backups)``: for each backup, the ids it cannot be restored without (itself included).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from backupkit.errors import IntegrityError
from backupkit.repo.catalog import BackupManifest

PHYSICAL = "physical"


def is_physical(b: BackupManifest) -> bool:
    return b.kind == PHYSICAL


def parent_id(b: BackupManifest) -> str | None:
    """The backup an incremental was taken against, or None for a full (or non-physical) one."""
    if not is_physical(b):
        return None
    return b.details.get("parent") or None


def chain_of(backup: BackupManifest,
             lookup: Mapping[str, BackupManifest] | Callable[[str], BackupManifest | None]
             ) -> list[BackupManifest]:
    """Full backup first, ``backup`` last. lookup: id -> manifest (or None when it is missing)."""
    get = lookup.get if isinstance(lookup, Mapping) else lookup
    links = [backup]
    seen = {backup.id}
    while (pid := parent_id(links[-1])) is not None:
        if pid in seen:
            raise IntegrityError(f"physical backup {links[-1].id} names {pid} as its parent twice: "
                                 "the chain loops", "the manifests are damaged")
        parent = get(pid)
        if parent is None:
            raise IntegrityError(
                f"physical backup {backup.id} is incomplete: link {pid} of its incremental chain "
                f"(the parent of {links[-1].id}) is missing",
                "restore an older full backup, or a chain whose links are all there")
        if not is_physical(parent):
            raise IntegrityError(f"the parent {pid} of physical backup {links[-1].id} is a "
                                 f"{parent.kind} backup")
        want = links[-1].details.get("lsn", {}).get("from")
        have = parent.details.get("lsn", {}).get("to")
        if want is not None and have is not None and int(want) != int(have):
            raise IntegrityError(f"physical backup {links[-1].id} starts at LSN {want} but its parent "
                                 f"{pid} ends at LSN {have}", "the chain is broken")
        links.append(parent)
        seen.add(pid)
    return list(reversed(links))


def broken_chains(backups: Iterable[BackupManifest],
                  lookup: Mapping[str, BackupManifest] | Callable[[str], BackupManifest | None]
                  ) -> dict[str, IntegrityError]:
    """The physical incrementals among backups whose chain is broken: id -> the error naming
    the missing (or mismatched) link."""
    out: dict[str, IntegrityError] = {}
    for b in backups:
        if parent_id(b) is None:
            continue
        try:
            chain_of(b, lookup)
        except IntegrityError as exc:
            out[b.id] = exc
    return out


def needed_by(backups: Iterable[BackupManifest]) -> dict[str, set[str]]:
    """id -> the ids that backup needs to be restored (itself and every ancestor that exists)."""
    by_id = {b.id: b for b in backups}
    out: dict[str, set[str]] = {}
    for b in by_id.values():
        need = {b.id}
        cur = b
        while (pid := parent_id(cur)) is not None and pid in by_id and pid not in need:
            need.add(pid)
            cur = by_id[pid]
        out[b.id] = need
    return out


def chain_raw_bytes(chain: Iterable[BackupManifest]) -> int:
    """Bytes the restore extracts: every link's stream."""
    return sum(o.raw_size for b in chain for o in b.objects)
