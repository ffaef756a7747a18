"""Which replicas a snapshot or a shipper refuses, and when lag is a warning."""

from __future__ import annotations

import pytest

from backupkit.errors import SourceError
from backupkit.mysql.replica import ReplicaInfo, check_replica


def _info(**kw) -> ReplicaInfo:
    base = dict(primary="10.0.0.1:3306", io_running="Yes", sql_running="Yes", sql_errno=0,
                sql_error="", lag=0, gtid_slave_pos="0-1-10", using_gtid="Slave_Pos",
                log_slave_updates=True)
    return ReplicaInfo(**{**base, **kw})


def test_a_healthy_replica_or_no_replica_passes_quietly():
    assert check_replica(None, shipping=True) == []
    assert check_replica(_info(), shipping=True, max_lag=60) == []


def test_shipping_needs_log_slave_updates_a_snapshot_does_not():
    with pytest.raises(SourceError, match="log_slave_updates=OFF"):
        check_replica(_info(log_slave_updates=False), shipping=True)
    assert check_replica(_info(log_slave_updates=False), shipping=False) == []


def test_a_stopped_sql_thread_with_an_error_is_refused_for_both():
    bad = _info(sql_running="No", sql_errno=1062, sql_error="Duplicate entry '7'", lag=None)
    for shipping in (True, False):
        with pytest.raises(SourceError, match="error 1062: Duplicate entry"):
            check_replica(bad, shipping=shipping)


def test_lag_past_the_threshold_and_a_stopped_sql_thread_are_warnings():
    (w,) = check_replica(_info(lag=900), shipping=False, max_lag=300)
    assert "lagging 900 s" in w
    assert check_replica(_info(lag=100), shipping=False, max_lag=300) == []
    (w,) = check_replica(_info(sql_running="No", lag=None), shipping=False, max_lag=300)
    assert "SQL thread is stopped" in w
