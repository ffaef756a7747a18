"""A roll-up decoded entry by entry (repo/streamed.py) gives what decoding it whole gives, checks the
same checksum and format, and holds a window of text, not every entry's dict."""

from __future__ import annotations

import json
import tracemalloc

import pytest
import zstandard

from backupkit.errors import IntegrityError
from backupkit.repo import layout, streamed
from backupkit.repo.catalog import Catalog, Chunk, SegmentInfo, decode_manifest, encode_manifest
from backupkit.storage.local import LocalStore
from tests.support.scale import synthetic_segment


def _blob(body: dict) -> bytes:
    return zstandard.ZstdCompressor(level=3).compress(encode_manifest(body))


def _rollup(n: int, **extra) -> dict:
    segs = [synthetic_segment(i, 10**6).to_dict() for i in range(n)]
    if segs:
        segs[0]["gtid_first"] = "é-ü-\u6f22"  # multi-byte characters, split across pieces below
    return {"type": "segment_rollup", "source_id": "s", "binlog_file": "binlog.000001",
            "created_at": 1.5, "segments": segs, **extra}


@pytest.mark.parametrize("piece", [1, 7, 64, 1 << 20])
def test_decoded_entry_by_entry_equals_decoded_whole(monkeypatch, piece):
    monkeypatch.setattr(streamed, "PIECE", piece)  # values split at every place
    body = _rollup(40)
    data = _blob(body)
    whole = decode_manifest("k", zstandard.ZstdDecompressor().decompress(data))
    rest, got = streamed.decode_list("k", data, "segments", SegmentInfo.from_dict, layout.FORMAT_VERSION)
    assert [s.to_dict() for s in got] == [SegmentInfo.from_dict(d).to_dict() for d in whole["segments"]]
    whole.pop("segments")
    assert rest == whole
    # entry() may leave entries out
    _, some = streamed.decode_list("k", data, "segments", lambda d: d if d["start_pos"] < 1000 else None,
                                   layout.FORMAT_VERSION)
    assert [d["start_pos"] for d in some] == [4 + 100 * i for i in range(10)]


def test_an_empty_list_and_a_manifest_without_it(monkeypatch):
    monkeypatch.setattr(streamed, "PIECE", 3)
    assert streamed.decode_list("k", _blob(_rollup(0)), "segments", dict, 99)[1] == []
    rest, got = streamed.decode_list("k", _blob({"type": "x", "n": 12345}), "segments", dict, 99)
    assert got == [] and rest["n"] == 12345 and rest["type"] == "x"


def test_any_damage_is_an_integrity_error():
    data = _blob(_rollup(20))
    raw = zstandard.ZstdDecompressor().decompress(data)
    cases = [
        raw.replace(b'"end_pos": 204', b'"end_pos": 205'),  # a changed value: checksum
        raw.replace(b'"format": 2,\n "segments"', b'"format": 99,\n "segments"'),  # sum and format
        raw[:-40],  # truncated
        raw + b"{}",  # data after it
        raw.replace(b'"segments": [', b'"segments": [1,', 1),  # an entry that is not an object
    ]
    for bad in cases:
        with pytest.raises(IntegrityError):
            streamed.decode_list("k", zstandard.ZstdCompressor().compress(bad), "segments",
                                 dict, layout.FORMAT_VERSION)
    with pytest.raises(IntegrityError, match="not valid zstd"):
        streamed.decode_list("k", data[:-5] + b"xxxxx", "segments", dict, layout.FORMAT_VERSION)
    # a newer format with a right checksum: the same refusal as decode_manifest's
    with pytest.raises(IntegrityError, match="upgrade backupkit"):
        streamed.decode_list("k", _blob(_rollup(2, format=layout.FORMAT_VERSION + 1)), "segments",
                             dict, layout.FORMAT_VERSION)


def test_keys_out_of_order_are_decoded_whole(tmp_path):
    """Not written by encode_manifest (unsorted keys, right checksum): the catalog reads it whole."""
    body = _rollup(3)
    body.pop("checksum", None)
    body["format"] = layout.FORMAT_VERSION
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    from backupkit.repo.codec import sha256_bytes
    body["checksum"] = "sha256:" + sha256_bytes(canon.encode())
    text = json.dumps({"type": body["type"], **body}, ensure_ascii=False).encode()  # unsorted
    with pytest.raises(streamed.NotCanonical):
        streamed.decode_list("k", zstandard.ZstdCompressor().compress(text), "segments", dict, 99)
    cat = Catalog(LocalStore(tmp_path))
    key = layout.rollup_chunk("s", "binlog.000001", 4, 304)
    cat.store.put(key, zstandard.ZstdCompressor().compress(text))
    assert len(cat.read_chunk(Chunk("binlog.000001", 4, 304, key))) == 3


def test_a_chunk_is_decoded_without_every_entry_dict_at_once(tmp_path):
    n = 16_384  # between a level-2 chunk (4,096 entries) and a level-3 one (65,536)
    cat = Catalog(LocalStore(tmp_path))
    key = layout.rollup_chunk("s", "binlog.000001", 4, 4 + 100 * n)
    cat.write_rollup(key, "s", "binlog.000001", (synthetic_segment(i, 10**6) for i in range(n)))
    tracemalloc.start()
    try:
        got = cat.read_chunk(Chunk("binlog.000001", 4, 4 + 100 * n, key))
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(got) == n
    # the entries themselves (~800 bytes each) and a window of text: decoded whole, the dicts
    # took about 3.7 KB per entry more (60 MiB here, 240 MiB for 65,536)
    assert peak - held < 16 << 20, (held >> 20, peak >> 20)


@pytest.mark.parametrize("n", [0, 1, 40])
def test_encoded_entry_by_entry_reads_as_the_manifest(monkeypatch, n):
    """What encode_list writes is what encode_manifest's readers read: decode_manifest (an older
    backupkit, verify) and decode_list give the same body, with a zstd frame holding its size."""
    monkeypatch.setattr(streamed, "PIECE", 7)
    monkeypatch.setattr(streamed, "BLOCK", 700)  # entries held in several compressed blocks
    body = _rollup(n)
    segs = body.pop("segments")
    data = streamed.encode_list({**body, "format": layout.FORMAT_VERSION}, "segments", iter(segs))
    whole = decode_manifest("k", zstandard.ZstdDecompressor().decompress(data))  # content size set
    assert whole == {**body, "format": layout.FORMAT_VERSION, "segments": segs}
    rest, got = streamed.decode_list("k", data, "segments", dict, layout.FORMAT_VERSION)
    assert got == segs and rest == {**body, "format": layout.FORMAT_VERSION}


def test_a_chunk_is_encoded_without_every_entry_dict_at_once(tmp_path):
    n = 16_384
    cat = Catalog(LocalStore(tmp_path))
    segs = [synthetic_segment(i, 10**6) for i in range(n)]
    key = layout.rollup_chunk("s", "binlog.000001", 4, 4 + 100 * n)
    tracemalloc.start()
    try:
        cat.write_rollup(key, "s", "binlog.000001", segs)
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the entries' text compressed, a block of it and the compressed object: encoded whole
    # (encode_manifest of every entry's dict), about 6.8 KB per entry (448 MiB for 65,536); one
    # string per entry held, about 700 bytes each
    assert peak - held < 6 << 20, (held >> 20, peak >> 20)
    assert len(cat.read_chunk(Chunk("binlog.000001", 4, 4 + 100 * n, key))) == n
