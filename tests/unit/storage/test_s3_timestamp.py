"""The S3 store's timestamp parser (storage/s3.py _timestamp) gives botocore's instants, fast for
the ISO 8601 form every listed key carries, botocore's own parser for every other form."""

from __future__ import annotations

import pytest
from botocore.utils import parse_timestamp

from backupkit.storage.s3 import _timestamp


@pytest.mark.parametrize("value", [
    "2026-12-01T08:40:54.000Z", "2026-12-01T08:40:54Z", "2026-12-01T08:40:54.123456Z",
    "2026-12-01T08:40:54.123456789Z",  # more digits than fromisoformat takes: botocore's
    "Tue, 01 Dec 2026 08:40:54 GMT",  # a header's form
    "1796112054", 1796112054,  # epochs
])
def test_the_same_instant_as_botocore(value):
    got, want = _timestamp(value), parse_timestamp(value)
    assert got.tzinfo is not None and got.timestamp() == want.timestamp()
