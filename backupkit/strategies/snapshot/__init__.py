"""The hot snapshot: a consistent, parallel, streamed logical copy of a live server.

job.py runs it; consistency.py opens the workers' snapshots at one binlog point; chunks.py cuts
tables by key and reads each chunk; schema.py records the DDL and users; options.py says what
to copy.
"""

from backupkit.strategies.snapshot.job import take_snapshot
from backupkit.strategies.snapshot.options import SnapshotOptions

__all__ = ["SnapshotOptions", "take_snapshot"]
