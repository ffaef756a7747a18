"""Backup strategies: each produces a committed BackupManifest (snapshot, cold)."""
