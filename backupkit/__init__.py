"""backupkit: back up MySQL/MariaDB and restore it to any second in the past."""

__version__ = "0.1.0"
