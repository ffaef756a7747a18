"""The backupkit command line: thin commands over the service functions."""

from backupkit.cli.app import app, main

__all__ = ["app", "main"]
