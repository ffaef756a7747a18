"""Another server under the same source id: continuity decided by GTID."""

from __future__ import annotations

from backupkit.strategies.binlog.failover import continuity


def test_a_promoted_replica_continues_when_its_binlog_spans_the_last_shipped_transaction():
    assert continuity("0-1-57", "0-1-10", "0-2-80") == (True, [])
    assert continuity("0-1-57", "0-1-57", "0-1-57") == (True, [])
    ok, why = continuity("0-1-57", "0-1-10", "0-1-50")  # the replica was behind
    assert not ok and "ends at 50, before the last shipped transaction 57" in why[0]
    ok, why = continuity("0-1-57", "0-2-70", "0-2-90")  # its binlog starts later (purged, no log)
    assert not ok and "transactions 58..70 are not in it" in why[0]
