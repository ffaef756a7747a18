"""Continuous binlog shipping into repository segments.

shipper.py runs it (lease, start point, reconnects, gaps) as options.py asks; stream.py reads
the replication stream and cuts segments at transaction boundaries; spill.py bounds the memory of
a huge transaction; upload.py stores and commits the segments in order; status.py reports the
shipped range and the lag.
"""

from backupkit.strategies.binlog.options import ShipOptions, ShipResult, resolve_source
from backupkit.strategies.binlog.shipper import BinlogGapError, Shipper
from backupkit.strategies.binlog.status import shipping_status

__all__ = ["BinlogGapError", "ShipOptions", "ShipResult", "Shipper", "resolve_source", "shipping_status"]
