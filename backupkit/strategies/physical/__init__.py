"""Physical hot backups with mariadb-backup (issue 17): full and incremental, streamed to storage.

- engine.py: ``take_physical_backup`` (the child, the stream cut into stored parts, the manifest)
- tool.py: finding mariadb-backup/mbstream, credentials, reading its log and info files
"""

from backupkit.strategies.physical.engine import PhysicalOptions, take_physical_backup

__all__ = ["PhysicalOptions", "take_physical_backup"]
