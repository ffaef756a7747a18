"""The physical restore's read-ahead of remote objects: order, errors in place, early stop."""

from __future__ import annotations

import threading
import time

import pytest

from backupkit.errors import IntegrityError
from backupkit.restore.physical import _readahead


def test_blocks_come_in_order_and_an_error_comes_where_it_happened():
    def blocks():
        yield from (bytes([i]) for i in range(50))
        raise IntegrityError("checksum mismatch in object 'x'")

    got = []
    with pytest.raises(IntegrityError, match="checksum"):
        for b in _readahead(blocks(), depth=4):
            got.append(b)
    assert got == [bytes([i]) for i in range(50)]


def test_a_consumer_that_stops_early_stops_the_reader_and_closes_the_source():
    closed = threading.Event()

    def blocks():
        try:
            while True:
                yield b"x"
        finally:
            closed.set()

    it = _readahead(blocks(), depth=2)
    assert next(it) == b"x"
    it.close()
    deadline = time.monotonic() + 5
    while not closed.is_set() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert closed.is_set()
