"""Encryption at rest: the chunked AES-256-GCM format, key files, the keyring and rotation."""

from __future__ import annotations

import base64
import io
import os
import tracemalloc

import pytest

from backupkit.errors import ConfigError, IntegrityError, KeyMismatch
from backupkit.repo import layout
from backupkit.repo.catalog import Catalog, encode_manifest
from backupkit.repo.codec import put_object, read_object
from backupkit.repo.keyring import Keyring, open_encrypted, rotate_key
from backupkit.storage.crypto import (
    CHUNK_SIZE,
    HEADER_LEN,
    TAG,
    DecryptingReader,
    KeyEncryptionKey,
    encrypt_stream,
    load_key_env,
    load_key_file,
    parse_key_text,
    plain_size,
    stored_size,
    write_key_file,
)
from backupkit.storage.local import LocalStore

MARKER = b"PLAINTEXT-MARKER-7f3a"


def kek(label: str = "k1") -> KeyEncryptionKey:
    return KeyEncryptionKey(os.urandom(32), label, "test")


def _decrypt(stored: bytes, key: str, dek: bytes) -> bytes:
    with DecryptingReader(io.BytesIO(stored), key, lambda _i, _k: dek) as r:
        return b"".join(r.read_chunks())


def _seal(data: bytes, key: str = "o/k", dek: bytes | None = None,
          cs: int = CHUNK_SIZE) -> tuple[bytes, bytes]:
    dek = dek or os.urandom(32)
    pieces = [data[i:i + 70_000] for i in range(0, len(data), 70_000)]
    return b"".join(encrypt_stream(pieces, key, "00" * 8, dek, chunk_size=cs)), dek


@pytest.mark.parametrize("n", [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 2 * CHUNK_SIZE,
                               3 * CHUNK_SIZE + 5])
def test_round_trip_and_sizes_at_chunk_edges(n):
    data = os.urandom(n)
    stored, dek = _seal(data)
    assert len(stored) == stored_size(n)
    assert plain_size(len(stored)) == n
    assert _decrypt(stored, "o/k", dek) == data


def test_truncation_at_a_chunk_boundary_is_detected():
    stored, dek = _seal(os.urandom(3 * CHUNK_SIZE))
    cut = stored[: HEADER_LEN + 2 * (CHUNK_SIZE + TAG)]
    with pytest.raises(IntegrityError, match="o/k"):
        _decrypt(cut, "o/k", dek)


def test_truncation_inside_a_chunk_and_extension_are_detected():
    stored, dek = _seal(os.urandom(2 * CHUNK_SIZE + 10))
    with pytest.raises(IntegrityError):
        _decrypt(stored[:-5], "o/k", dek)
    with pytest.raises(IntegrityError):
        _decrypt(stored + stored[HEADER_LEN:HEADER_LEN + CHUNK_SIZE + TAG], "o/k", dek)


def test_reordered_chunks_are_detected():
    stored, dek = _seal(os.urandom(3 * CHUNK_SIZE + 1))
    c = CHUNK_SIZE + TAG
    h, body = stored[:HEADER_LEN], stored[HEADER_LEN:]
    swapped = h + body[c:2 * c] + body[:c] + body[2 * c:]
    with pytest.raises(IntegrityError, match="chunk 0"):
        _decrypt(swapped, "o/k", dek)


def test_an_object_copied_under_another_name_does_not_authenticate():
    stored, dek = _seal(b"hello")
    with pytest.raises(IntegrityError, match="o/other"):
        _decrypt(stored, "o/other", dek)


def test_flipped_byte_in_header_or_body_fails_naming_the_object():
    stored, dek = _seal(os.urandom(5000))
    for pos in (len(stored) - 1, HEADER_LEN + 10, HEADER_LEN - 1):
        bad = bytearray(stored)
        bad[pos] ^= 1
        with pytest.raises(IntegrityError, match="'o/k'"):
            _decrypt(bytes(bad), "o/k", dek)


def test_no_plaintext_byte_is_released_from_a_bad_chunk():
    data = MARKER * (CHUNK_SIZE // len(MARKER) + 10)
    stored, dek = _seal(data)
    bad = bytearray(stored)
    bad[HEADER_LEN + 5] ^= 1  # first chunk
    got = bytearray()
    with pytest.raises(IntegrityError), DecryptingReader(io.BytesIO(bytes(bad)), "o/k", lambda *_: dek) as r:
        while block := r.read(4096):
            got += block
    assert got == b""


def test_encrypting_a_large_stream_keeps_memory_bounded():
    def gen():
        block = os.urandom(1 << 20)
        for _ in range(48):
            yield block

    tracemalloc.start()
    try:
        total = 0
        for piece in encrypt_stream(gen(), "big", "00" * 8, os.urandom(32)):
            total += len(piece)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total == stored_size(48 << 20)
    assert peak < 8 << 20, peak


# -- keys ----------------------------------------------------------------------------------
def test_key_text_forms():
    raw = os.urandom(32)
    assert parse_key_text(raw.hex().encode() + b"\n", "x") == raw
    assert parse_key_text(base64.b64encode(raw), "x") == raw
    with pytest.raises(ConfigError, match="256-bit"):
        parse_key_text(b"too short", "x")


def test_key_file_must_be_private_and_is_never_overwritten(tmp_path):
    p = tmp_path / "repo.key"
    k = write_key_file(p)
    assert (p.stat().st_mode & 0o777) == 0o600
    assert load_key_file(p).fingerprint == k.fingerprint
    with pytest.raises(ConfigError, match="already exists"):
        write_key_file(p)
    p.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_key_file(p)
    with pytest.raises(ConfigError, match="not found"):
        load_key_file(tmp_path / "none")


def test_key_from_environment(monkeypatch):
    raw = os.urandom(32)
    monkeypatch.setenv("BK_TEST_KEY", raw.hex())
    assert load_key_env("BK_TEST_KEY", "e").key == raw
    monkeypatch.delenv("BK_TEST_KEY")
    with pytest.raises(ConfigError, match="BK_TEST_KEY"):
        load_key_env("BK_TEST_KEY")


def test_key_repr_never_shows_the_key():
    k = kek()
    assert k.key.hex() not in repr(k)


# -- the store -------------------------------------------------------------------------------
def test_no_stored_object_holds_plaintext_and_the_keyring_holds_no_key(tmp_path):
    k = kek()
    store = open_encrypted(LocalStore(tmp_path / "r"), [k])
    put_object(store, "backups/b/data.zst", [MARKER * 50_000], level=None)
    store.put("backups/b/manifest.json", b'{"note": "' + MARKER + b'"}')
    files = [p for p in (tmp_path / "r").rglob("*") if p.is_file()]
    assert len(files) == 3
    for p in files:
        data = p.read_bytes()
        assert MARKER not in data
        assert k.key not in data
    ring = Keyring.load(store.inner, [k])
    dek = ring.keys[ring.current_id]
    assert dek not in (tmp_path / "r" / layout.KEYRING).read_bytes()


def test_right_key_reads_wrong_key_fails_naming_the_keyring(tmp_path):
    k = kek()
    obj = put_object(open_encrypted(LocalStore(tmp_path), [k]), "x/y.zst", [b"abc" * 1000])
    assert read_object(open_encrypted(LocalStore(tmp_path), [k]), obj) == b"abc" * 1000
    with pytest.raises(IntegrityError, match="wrong key.*keys/keyring.json"):
        read_object(open_encrypted(LocalStore(tmp_path), [kek("other")]), obj)


def test_stat_and_list_report_plaintext_sizes(tmp_path):
    store = open_encrypted(LocalStore(tmp_path), [kek()])
    store.put("a/b", os.urandom(CHUNK_SIZE + 3))
    assert store.stat("a/b").size == CHUNK_SIZE + 3
    assert [i.size for i in store.list("a/")] == [CHUNK_SIZE + 3]


def test_encryption_refuses_an_existing_unencrypted_repository(tmp_path):
    LocalStore(tmp_path).put(layout.REPO_CONFIG, b"{}")
    with pytest.raises(ConfigError, match="unencrypted"):
        open_encrypted(LocalStore(tmp_path), [kek()]).put("x", b"1")


def test_rotation_rewraps_without_touching_data(tmp_path):
    old, new = kek("old"), kek("new")
    store = open_encrypted(LocalStore(tmp_path), [old])
    obj = put_object(store, "d/o.zst", [MARKER * 1000])
    before = (tmp_path / "d" / "o.zst").read_bytes()
    rotate_key(LocalStore(tmp_path), [old], new)
    assert read_object(open_encrypted(LocalStore(tmp_path), [old]), obj) == MARKER * 1000
    assert read_object(open_encrypted(LocalStore(tmp_path), [new]), obj) == MARKER * 1000
    out = rotate_key(LocalStore(tmp_path), [new], new, retire_old=True, new_data_key=True)
    assert [w["key_id"] for w in out["wrapped_by"]] == ["new"]
    assert (tmp_path / "d" / "o.zst").read_bytes() == before
    with pytest.raises(IntegrityError, match="wrong key"):
        read_object(open_encrypted(LocalStore(tmp_path), [old]), obj)
    fresh = open_encrypted(LocalStore(tmp_path), [new])
    assert read_object(fresh, obj) == MARKER * 1000
    obj2 = put_object(fresh, "d/o2.zst", [b"after"])
    assert read_object(open_encrypted(LocalStore(tmp_path), [new]), obj2) == b"after"
    assert fresh.encryption_info()["data_key_id"] == out["current_data_key"]


def test_old_keys_still_open_the_repository_for_reading(tmp_path):
    old, new = kek("old"), kek("new")
    obj = put_object(open_encrypted(LocalStore(tmp_path), [old]), "d/o.zst", [b"x" * 10])
    # A policy that names the new key but keeps the old one: reads work before the rotation ran.
    assert read_object(open_encrypted(LocalStore(tmp_path), [new, old]), obj) == b"x" * 10


def test_a_keyring_whose_newest_data_key_only_the_new_key_opens_still_lets_old_hosts_write(tmp_path):
    """A keyring rotated with --new-data-key by an older backupkit (new data key wrapped by k2 only)."""
    k1, k2 = kek("k1"), kek("k2")
    put_object(open_encrypted(LocalStore(tmp_path), [k1]), "d/o.zst", [b"one"])
    ring = Keyring.load(LocalStore(tmp_path), [k1])
    body = ring.rotated(k2, new_data_key=True)  # no current keys given: the new data key has k2 only
    assert LocalStore(tmp_path).replace_if_match(layout.KEYRING, encode_manifest(body), ring.etag)
    old_host = open_encrypted(LocalStore(tmp_path), [k1])
    obj = put_object(old_host, "d/o2.zst", [b"two"])  # was KeyError: the newest key is not k1's
    assert read_object(open_encrypted(LocalStore(tmp_path), [k1]), obj) == b"two"
    assert old_host.encryption_info()["data_key_id"] != Keyring.load(LocalStore(tmp_path), [k2]).current_id


def test_a_wrong_key_stops_the_listing_instead_of_hiding_every_backup(tmp_path):
    k = kek()
    Catalog(open_encrypted(LocalStore(tmp_path), [k])).ensure_repo()
    open_encrypted(LocalStore(tmp_path), [k]).put(layout.backup_manifest("b1"), b"{}")
    with pytest.raises(KeyMismatch, match="wrong key"):
        Catalog(open_encrypted(LocalStore(tmp_path), [kek("other")])).backups()
