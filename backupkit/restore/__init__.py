"""Restores: planning, snapshot and cold loads, binlog replay, loss windows."""
