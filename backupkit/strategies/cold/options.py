"""What a cold backup is asked to do, and the progress it reports."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class ColdOptions:
    """What a cold backup needs beyond the connection; None means: from the server or default."""

    datadir: str | None = None
    stop_command: str | None = None
    start_command: str | None = None
    pid_file: str | None = None
    staging: str = "auto"  # "auto": beside the datadir when safe; "none": stream while down; or a folder
    paths: list[str] = field(default_factory=list)
    config_file: str | None = None
    stop_timeout: float = 300.0
    start_timeout: float = 300.0
    compression_level: int = 1
    compression_threads: int = -1  # -1: one per core
    preflush_timeout: float = 30.0
    guardian: bool = True
    source_id: str | None = None
    # the upload of the staging copy (the server serves again): bytes per second read, and the
    # idle I/O class; the copy made while the server is down is never slowed (it is the downtime)
    max_rate: float | None = None
    idle_io: bool = True


@dataclass
class Phase:
    """Progress reports: phase name, bytes done, bytes expected (0 when unknown)."""

    name: str
    done: int = 0
    total: int = 0


ProgressFn = Callable[[Phase], None]
