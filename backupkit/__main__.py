"""python -m backupkit: the same as the backupkit command."""

from backupkit.cli.app import run

run()
