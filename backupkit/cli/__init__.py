"""The backupkit command line: thin commands over the service functions."""

import gc as _gc

# No garbage collection while the CLI's modules are imported (their classes and typer's metadata
# are long-lived; collecting them was ~25 ms of pure start-up cost when every command was imported
# here), then set them aside for good (gc.freeze) so that later collections do not walk them again.
# A command's own module is imported later, when it runs (cli/app.py COMMANDS).
_thresholds = _gc.get_threshold()
_gc.set_threshold(0)
try:
    from backupkit.cli.app import app, main
finally:
    _gc.set_threshold(*_thresholds)
    _gc.freeze()

__all__ = ["app", "main"]
