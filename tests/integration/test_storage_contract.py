"""One contract, run unchanged over every store stack users can configure: Local, S3 (a real
moto_server), Mirror(Local, Local), Encrypted(Local) and Encrypted(Mirror(S3, Local)).

Each stack is opened the way a command opens it (repo/targets.open_repository from plain specs).
"""

from __future__ import annotations

import hashlib
import random
from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest

from backupkit.errors import IntegrityError, ObjectNotFound
from backupkit.repo import layout
from backupkit.repo.codec import iter_object, put_object, verify_object
from backupkit.repo.targets import EncryptionSpec, RepositorySpec, TargetSpec, open_repository
from backupkit.storage import LocalStore, S3Store, open_store
from backupkit.storage.base import ObjectStore
from backupkit.storage.mirror import MirrorStore

MIB = 1 << 20
KEY_ENV = "BK_CONTRACT_KEY"
STACKS = ["local", "s3", "mirror(local,local)", "encrypted(local)", "encrypted(mirror(s3,local))"]


@pytest.fixture(params=STACKS)
def store(request, tmp_path, monkeypatch) -> ObjectStore:
    """The same test over every store stack."""
    stack = request.param

    def local(name: str) -> TargetSpec:
        return TargetSpec(name, f"file://{tmp_path / name}")

    def s3() -> TargetSpec:
        return TargetSpec("s3", request.getfixturevalue("s3_url"))

    targets = {"local": [local("repo")], "s3": [s3()], "mirror(local,local)": [local("a"), local("b")],
               "encrypted(local)": [local("repo")], "encrypted(mirror(s3,local))": [s3(), local("b")]}[stack]
    encryption = None
    if stack.startswith("encrypted"):
        monkeypatch.setenv(KEY_ENV, "ab" * 32)
        encryption = EncryptionSpec(key_env=KEY_ENV, key_id="contract")
    opened = open_repository(RepositorySpec(tuple(targets), tuple(targets), encryption=encryption))
    yield opened
    opened.close()


def raw_targets(store: ObjectStore) -> list[ObjectStore]:
    """The storage targets at the bottom of a stack (below the encryption layer and the mirror)."""
    inner = store.unwrap()
    if inner is not None:
        return raw_targets(inner)
    if isinstance(store, MirrorStore):
        return [t.store for t in store.targets]
    return [store]


def _flip_byte(store: ObjectStore, key: str, offset: int = 100) -> None:
    """Damage every stored copy of key (on every target of the stack)."""
    for raw in raw_targets(store):
        data = bytearray(raw.get_bytes(key))
        data[offset % len(data)] ^= 0x01
        if isinstance(raw, LocalStore):
            (raw.root / key).write_bytes(bytes(data))
        else:
            raw.client.put_object(Bucket=raw.bucket, Key=raw.prefix + key, Body=bytes(data))


def _stream(total: int, seed: int = 7, block: int = 1 * MIB):
    rnd = random.Random(seed)
    sent = 0
    while sent < total:
        n = min(block, total - sent)
        yield rnd.randbytes(n)
        sent += n


def test_200mib_upload_of_unknown_length_round_trips_verified(store):
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
def test_flipped_byte_gives_integrity_error_naming_the_object(store, level):
    obj = put_object(store, "x/flip.bin", _stream(3 * MIB), level=level)
    _flip_byte(store, obj.key, offset=obj.size // 2)
    with pytest.raises(IntegrityError) as exc:
        for _ in iter_object(store, obj):
            pass
    assert "x/flip.bin" in str(exc.value)
    with pytest.raises(IntegrityError):
        verify_object(store, obj)


@pytest.mark.parametrize("size", [1 * MIB, 30 * MIB])
def test_interrupted_upload_leaves_no_visible_object(store, size):
    def broken():
        yield from _stream(size)
        raise RuntimeError("writer died")

    with pytest.raises(RuntimeError):
        store.put("partial/object", broken())
    assert store.stat("partial/object") is None
    assert [o.key for o in store.list("partial/")] == []
    for raw in raw_targets(store):
        if isinstance(raw, S3Store):
            ups = raw.client.list_multipart_uploads(Bucket=raw.bucket).get("Uploads", [])
            assert ups == []
        else:
            assert list((raw.root / ".tmp").glob("*.part")) == []


def test_listing_of_more_than_1000_keys_is_complete(store):
    keys = [f"many/{i:05d}" for i in range(1105)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: store.put(k, k.encode()), keys))
    store.put("other/x", b"x")
    listed = [o.key for o in store.list("many/")]
    assert listed == keys
    everything = [o.key for o in store.list("")]  # a stack may keep its own objects (a keyring)
    assert everything == sorted(set(everything))
    assert [k for k in everything if k.startswith(("many/", "other/"))] == [*keys, "other/x"]
    assert store.get_bytes("many/01104") == b"many/01104"
    assert [o.key for o in store.list("many/0110")] == keys[1100:]  # a prefix is not only a folder
    assert [o.key for o in store.list("man")] == keys


def test_conditional_create_on_existing_key_fails_cleanly(store):
    assert store.put_if_absent("leases/a.json", b"first") is True
    assert store.put_if_absent("leases/a.json", b"second") is False
    assert store.get_bytes("leases/a.json") == b"first"
    data, etag = store.read_small("leases/a.json")
    assert store.replace_if_match("leases/a.json", b"third", etag) is True
    assert store.replace_if_match("leases/a.json", b"fourth", etag) is False
    assert store.get_bytes("leases/a.json") == b"third"


def test_stat_list_and_read_give_what_was_put_under_any_repository_key(store):
    key = layout.snapshot_chunk("b1", "shop db", ".hidden %/ta\tble", 7)
    data = b"".join(_stream(MIB + 5, seed=3))
    info = store.put(key, data)
    assert info.key == key and info.size == len(data)
    assert store.stat(key).size == len(data)
    assert [(o.key, o.size) for o in store.list(layout.backup_prefix("b1"))] == [(key, len(data))]
    with store.open(key) as fh:
        assert fh.read() == data
    with store.open(key) as fh:  # odd read sizes across the 1 MiB chunks of the wrappers
        parts = []
        while block := fh.read(333_333):
            parts.append(block)
        assert b"".join(parts) == data
    assert store.read_small(key)[0] == data
    assert store.exists(key) and not store.exists(key + "x")
    store.check()


def test_empty_objects_and_overwrites(store):
    assert store.put("e/empty", b"").size == 0
    assert store.get_bytes("e/empty") == b""
    assert store.stat("e/empty").size == 0
    assert [o.size for o in store.list("e/")] == [0]
    store.put("e/x", b"old content")
    store.put("e/x", iter([b"new ", b"content!"]))  # an overwrite replaces the whole object
    assert store.get_bytes("e/x") == b"new content!"
    assert store.stat("e/x").size == len(b"new content!")


def test_concurrent_conditional_writes_have_one_winner(store):
    with ThreadPoolExecutor(8) as pool:
        created = list(pool.map(lambda i: store.put_if_absent("c/marker.json", b"w%d" % i), range(8)))
    assert created.count(True) == 1
    assert store.get_bytes("c/marker.json") == b"w%d" % created.index(True)
    _, etag = store.read_small("c/marker.json")
    with ThreadPoolExecutor(8) as pool:
        replaced = list(pool.map(lambda i: store.replace_if_match("c/marker.json", b"r%d" % i, etag),
                                 range(8)))
    assert replaced.count(True) == 1
    assert store.get_bytes("c/marker.json") == b"r%d" % replaced.index(True)


def test_missing_object_raises_not_found_and_delete_is_idempotent(store):
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


def test_list_after_gives_the_keys_after_a_point_in_key_order(store):
    """What sources(), the catalog's tail and the head's resume point rely on (S3's StartAfter)."""
    keys = ["binlog/a-/index/f/1.json", "binlog/a/data/f/1.binlog.zst", "binlog/a/head.json",
            "binlog/a/index/binlog.000001/000000000004-000000000010.json",
            "binlog/a/index/binlog.000001/000000000010-000000000020.json",
            "binlog/a/index/binlog.000002/000000000004-000000000010.json",
            "binlog/a0/index/f/1.json", "binlog/b.c/x", "binlog/b/x"]
    for k in keys:
        store.put(k, b"x")
    want = sorted(keys)
    for after in ("", "binlog/a", "binlog/a/", "binlog/a/index/binlog.000001/000000000010",
                  "binlog/a/index/binlog.0000010", "binlog/a0", "binlog/b/x", "binlog/zzz"):
        got = [o.key for o in store.list_after("binlog/", after)]
        assert got == [k for k in want if k > after], after
    index = [k for k in want if k.startswith("binlog/a/index/")]
    got = [o.key for o in store.list_after("binlog/a/index/", "binlog/a/index/binlog.000001/000000000004")]
    assert got == index  # entries starting at 4 sort after the bare position (layout.index_from)
    got = [o.key for o in store.list_after("binlog/a/index/", "binlog/a/index/binlog.000001/000000000010")]
    assert got == index[1:]
    first = next(iter(store.list_after("binlog/", "binlog/a0")))  # one page, read no further
    assert first.key == "binlog/a0/index/f/1.json" and first.size == 1
    for after in ("", "binlog/a", "binlog/a0", "binlog/b/x", "binlog/zzz"):  # one key, one request
        one = store.first_after("binlog/", after)
        assert (one.key if one else None) == next((k for k in want if k > after), None), after
    assert store.first_after("binlog/a/index/", "").key == index[0]
    # the folders right under a prefix, in key order (Catalog.sources: one request on S3)
    assert store.folders("binlog/") == ["a-", "a", "a0", "b.c", "b"]
    assert store.folders("binlog/a/") == ["data", "index"]  # head.json is no folder
    assert store.folders("binlog/a/index/binlog.000001/") == [] and store.folders("nothing/") == []
