"""One contract, run unchanged against the local store and the S3 store (a real moto_server)."""

from __future__ import annotations

import hashlib
import random
from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest

from backupkit.errors import IntegrityError, ObjectNotFound
from backupkit.repo.codec import iter_object, put_object, verify_object
from backupkit.storage import LocalStore, S3Store, open_store

MIB = 1 << 20


def _flip_byte(store, key: str, offset: int = 100) -> None:
    data = bytearray(store.get_bytes(key))
    data[offset % len(data)] ^= 0x01
    if isinstance(store, LocalStore):
        (store.root / key).write_bytes(bytes(data))
    else:
        store.client.put_object(Bucket=store.bucket, Key=store.prefix + key, Body=bytes(data))


def _stream(total: int, seed: int = 7, block: int = 1 * MIB):
    rnd = random.Random(seed)
    sent = 0
    while sent < total:
        n = min(block, total - sent)
        yield rnd.randbytes(n)
        sent += n


def test_200mib_upload_of_unknown_length_round_trips_verified(store_url):
    store = open_store(store_url)
    total = 200 * MIB
    src_sha = hashlib.sha256()
    for b in _stream(total):
        src_sha.update(b)
    obj = put_object(store, "big/object.zst", _stream(total), level=1)
    assert obj.raw_size == total
    assert store.stat(obj.key).size == obj.size
    got = hashlib.sha256()
    n = 0
    for block in iter_object(store, obj):
        got.update(block)
        n += len(block)
    assert n == total
    assert got.hexdigest() == src_sha.hexdigest()


@pytest.mark.parametrize("level", [None, 3])
def test_flipped_byte_gives_integrity_error_naming_the_object(store_url, level):
    store = open_store(store_url)
    obj = put_object(store, "x/flip.bin", _stream(3 * MIB), level=level)
    _flip_byte(store, obj.key, offset=obj.size // 2)
    with pytest.raises(IntegrityError) as exc:
        for _ in iter_object(store, obj):
            pass
    assert "x/flip.bin" in str(exc.value)
    with pytest.raises(IntegrityError):
        verify_object(store, obj)


@pytest.mark.parametrize("size", [1 * MIB, 30 * MIB])
def test_interrupted_upload_leaves_no_visible_object(store_url, size):
    store = open_store(store_url)

    def broken():
        yield from _stream(size)
        raise RuntimeError("writer died")

    with pytest.raises(RuntimeError):
        store.put("partial/object", broken())
    assert store.stat("partial/object") is None
    assert [o.key for o in store.list("partial/")] == []
    if isinstance(store, S3Store):
        ups = store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])
        assert ups == []
    else:
        assert list((store.root / ".tmp").glob("*.part")) == []


def test_listing_of_more_than_1000_keys_is_complete(store_url):
    store = open_store(store_url)
    keys = [f"many/{i:05d}" for i in range(1105)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: store.put(k, k.encode()), keys))
    store.put("other/x", b"x")
    listed = [o.key for o in store.list("many/")]
    assert listed == keys
    assert len(list(store.list(""))) == 1106


def test_conditional_create_on_existing_key_fails_cleanly(store_url):
    store = open_store(store_url)
    assert store.put_if_absent("leases/a.json", b"first") is True
    assert store.put_if_absent("leases/a.json", b"second") is False
    assert store.get_bytes("leases/a.json") == b"first"
    data, etag = store.read_small("leases/a.json")
    assert store.replace_if_match("leases/a.json", b"third", etag) is True
    assert store.replace_if_match("leases/a.json", b"fourth", etag) is False
    assert store.get_bytes("leases/a.json") == b"third"


def test_missing_object_raises_not_found_and_delete_is_idempotent(store_url):
    store = open_store(store_url)
    with pytest.raises(ObjectNotFound):
        store.open("nope/missing")
    store.put("d/1", b"1")
    store.delete(["d/1", "d/2"])
    assert store.stat("d/1") is None
    assert list(store.list("d/")) == []


def test_s3_store_uses_a_single_get_for_download(s3_url, moto):
    """The download is one streamed GET, not boto3's ranged transfer."""
    store = open_store(s3_url)
    obj = put_object(store, "one/get", _stream(20 * MIB), level=None)
    calls = []
    store.client.meta.events.register("before-call.s3.GetObject", lambda **kw: calls.append(1))
    assert sum(len(b) for b in iter_object(store, obj)) == 20 * MIB
    assert len(calls) == 1


def test_boto3_sees_completed_object_with_expected_content(s3_url, moto):
    store = open_store(s3_url)
    store.put("plain/hello", b"hello world")
    bucket = s3_url.split("/")[2]
    raw = boto3.client("s3", endpoint_url=moto.endpoint).get_object(Bucket=bucket, Key="repo/plain/hello")
    assert raw["Body"].read() == b"hello world"
