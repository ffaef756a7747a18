"""Binlog replay: shipped segments, streamed from storage, applied to a server up to an exact stop.

run.py wires three threads: fetch.py downloads and verifies segments ahead, parse.py cuts them
into transactions at the stop point, apply.py sends them to the target; units.py holds what
passes between them and the result.
"""

from backupkit.restore.replay.run import open_replay_connection, replay_segments
from backupkit.restore.replay.units import ReachedPoint, ReplayError, ReplayResult

__all__ = ["ReachedPoint", "ReplayError", "ReplayResult", "open_replay_connection", "replay_segments"]
