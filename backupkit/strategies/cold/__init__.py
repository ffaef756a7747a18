"""Cold backup: stop the service, copy its files, start it again, with the least downtime.

job.py runs a backup phase by phase; signals.py keeps Ctrl-C from leaving the server down;
shutdown.py flushes before the stop and reads the exact binlog point after it; copy.py plans and
copies the roots; staging.py owns the staging folder; upload.py and tar.py store the archive;
untar.py extracts it safely at restore; manifest.py records what happened.
"""

from backupkit.strategies.cold.job import ColdBackupFailed, take_cold_backup
from backupkit.strategies.cold.options import ColdOptions, Phase
from backupkit.strategies.cold.signals import Interrupted

__all__ = ["ColdBackupFailed", "ColdOptions", "Interrupted", "Phase", "take_cold_backup"]
