"""util.units: the one place formatting sizes, spans and UTC stamps."""

from __future__ import annotations

from backupkit.util.units import human_bytes, human_seconds, utc_iso, utc_iso_seconds, utc_stamp


def test_human_bytes_uses_binary_units():
    assert human_bytes(None) == "-"
    assert human_bytes(512) == "512 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(3 * (1 << 30)) == "3.0 GiB"
    assert human_bytes(5 * (1 << 50)) == "5120.0 TiB"


def test_human_seconds_picks_the_readable_unit():
    assert human_seconds(None) == "-"
    assert human_seconds(0.012) == "12 ms"
    assert human_seconds(4.2) == "4.2 s"
    assert human_seconds(210) == "3.5 min"
    assert human_seconds(7200) == "2.0 h"
    assert human_seconds(3 * 86400) == "3.0 d"


def test_utc_stamps():
    ts = 1795688100.25  # 2026-11-26 10:15:00.25 UTC
    assert utc_iso(ts) == "2026-11-26T10:15:00.250000Z"
    assert utc_iso_seconds(ts) == "2026-11-26T10:15:00Z"
    assert utc_stamp(ts) == "20261126T101500Z"
    assert utc_iso(None) is None and utc_iso_seconds(None) is None
