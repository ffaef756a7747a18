"""The server namespace of shipped binlog files: one source, several servers over time.

A source (one ``source_id``) is a service, not a machine. After a switchover the promoted
replica's binlog is shipped under the same source, but its file names and positions mean nothing
in the old server's terms: a new primary's ``binlog.000001`` is not the old one's (wal-g#1636).
So every server the shipper follows gets an epoch (0 for the first, one more at each switchover),
and the file identity stored in the repository (``SegmentInfo.binlog_file``, the ``binlog_file``
given to ``layout.segment_data``/``segment_index``) carries it:

- epoch 0: the server's file name itself (``binlog.000042``), as before: older repositories read
  unchanged;
- epoch n > 0: ``~0001~binlog.000001``. ``~`` sorts after every character of a binlog base name
  (letters, digits, ``-``, ``_``, ``.``), and the epoch is zero-padded, so ordering file identities
  as plain strings orders them by epoch, then by file: every sort ``(binlog_file, start, end)``
  in the repository stays binlog order across servers, and ``next_binlog_name`` works within an
  epoch (``~0001~binlog.000001`` -> ``~0001~binlog.000002``).

Across epochs, continuity is decided by GTID (repo/coverage.py, ``linked``), never by names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from backupkit.repo.catalog import SegmentInfo

MARK = "~"
_ID = re.compile(r"^~(\d{4,})~(.+)$")


def file_id(epoch: int, binlog_file: str) -> str:
    """The repository's identity of a server's binlog file in a given epoch."""
    if epoch <= 0 or not binlog_file:
        return binlog_file
    return f"{MARK}{epoch:04d}{MARK}{binlog_file}"


def split_file_id(fid: str) -> tuple[int, str]:
    """(epoch, the server's own file name) of a file identity."""
    m = _ID.match(fid or "")
    if m is None:
        return 0, fid
    return int(m.group(1)), m.group(2)


def epoch_of(fid: str) -> int:
    return split_file_id(fid)[0]


def server_file(fid: str) -> str:
    """The file name on the server (the identity without its epoch)."""
    return split_file_id(fid)[1]


@dataclass
class Epoch:
    """One server the shipper followed: where its shipped binlog begins, and how it was joined."""

    epoch: int
    server_id: int
    first: SegmentInfo  # its oldest shipped segment (the link anchor for epoch > 0)
    last: SegmentInfo  # its newest shipped segment

    @property
    def started_at(self) -> float:
        return self.first.created_at

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "server_id": self.server_id,
                "first": f"{self.first.binlog_file}:{self.first.start_pos}",
                "last": f"{self.last.binlog_file}:{self.last.end_pos}",
                "gtid_start": self.first.gtid_start or self.first.gtid_state,
                "gtid_end": self.last.gtid_state, "started_at": self.first.created_at}


def epochs(segments: Iterable[SegmentInfo]) -> list[Epoch]:
    """The servers shipped under one source, oldest first (derived from the index entries)."""
    out: dict[int, Epoch] = {}
    for s in sorted(segments, key=lambda s: (s.binlog_file, s.start_pos, s.end_pos)):
        e = epoch_of(s.binlog_file)
        if e not in out:
            out[e] = Epoch(e, s.server_id, s, s)
        else:
            out[e].last = s
    return [out[k] for k in sorted(out)]
