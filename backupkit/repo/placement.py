"""Where a mirror of the repository puts each object: the rule the mirror (storage/mirror/) is given.

Leases live on the authority target only and are never copied; records of restores need one target
(bookkeeping must not fail a restore while a region is lost); everything else needs the write quorum.
"""

from __future__ import annotations

from backupkit.repo import layout
from backupkit.storage.mirror import Placement


class RepositoryPlacement(Placement):
    """The placement rule of a backupkit repository."""

    def authority_only(self, key: str) -> bool:
        return not layout.is_replicated(key)

    def quorum(self, key: str, write_quorum: int) -> int:
        return 1 if key.startswith(layout.RESTORES) else write_quorum


PLACEMENT = RepositoryPlacement()
