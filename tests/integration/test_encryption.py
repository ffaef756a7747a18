"""Encryption at rest end to end: snapshot and binlog shipping into an encrypted S3 repository, then
restore with the right key, a wrong key, a tampered object, and after a key rotation."""

from __future__ import annotations

import json
import uuid

import boto3
import pytest
import zstandard

from backupkit.repo import layout
from backupkit.repo.catalog import Catalog
from backupkit.repo.keyring import open_encrypted
from backupkit.storage import open_store
from backupkit.storage.crypto import load_key_file
from tests.support import run_cli, table_checksums

pytestmark = pytest.mark.timeout(300)

ENV = {"BACKUPKIT_TARGET_PASSWORD": ""}


def _marker() -> str:
    return f"PLAINTEXT-MARKER-{uuid.uuid4().hex}"


@pytest.fixture
def source(mariadb):
    """A source whose rows hold a marker string, each row a little different (kept literal by zstd)."""
    marker = _marker()
    mariadb.sql("CREATE DATABASE secret_db")
    mariadb.sql("CREATE TABLE secret_db.t (id INT PRIMARY KEY, note VARCHAR(200), n INT)")
    mariadb.sql(f"INSERT INTO secret_db.t SELECT seq, CONCAT('{marker}-', seq), seq * 7 "
                "FROM secret_db.seq_1_to_3000")
    mariadb.marker = marker  # type: ignore[attr-defined]
    return mariadb


def _policy(tmp_path, s3_url: str, key_file, key_id: str = "k1", name: str = "policy") -> str:
    p = tmp_path / f"{name}.toml"
    p.write_text(f'[storage]\nurl = "{s3_url}"\n\n'
                 f'[encryption]\nkey_file = "{key_file}"\nkey_id = "{key_id}"\n')
    return str(p)


def _raw_objects(s3_url: str) -> dict[str, bytes]:
    """Every stored object, read straight from the S3 server."""
    store = open_store(s3_url)
    return {i.key: store.get_bytes(i.key) for i in store.list("")}


def _readable(data: bytes) -> bytes:
    """What anyone holding the bucket can read from an object: its bytes, and their zstd decoding."""
    try:
        return data + zstandard.ZstdDecompressor().decompressobj().decompress(data)
    except zstandard.ZstdError:
        return data


def _keygen(tmp_path, name: str) -> str:
    path = tmp_path / name
    r = run_cli("repo", "keygen", str(path), "--json")
    assert r.returncode == 0, r.stderr
    return str(path)


def _one_line(r) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


def _snapshot_and_ship(source, policy: str) -> str:
    """Snapshot (its checksums kept in source.at_snapshot), one more row, then ship the binlog."""
    snap = run_cli("snapshot", "--policy", policy, "--source", source.url, "--databases", "secret_db",
                   "--json")
    assert snap.returncode == 0, snap.stderr
    source.at_snapshot = table_checksums(source, ["secret_db"])
    source.sql(f"INSERT INTO secret_db.t VALUES (100000, '{source.marker}-shipped', 1)")
    ship = run_cli("binlog", "ship", "--once", "--policy", policy, "--source", source.url, "--json",
                   timeout=120)
    assert ship.returncode == 0, ship.stderr
    return json.loads(snap.stdout)["backup_id"]


def test_no_stored_object_holds_plaintext_and_the_right_key_restores_exactly(source, mariadb_factory,
                                                                              tmp_path, s3_url):
    key = _keygen(tmp_path, "k1.key")
    policy = _policy(tmp_path, s3_url, key)
    backup_id = _snapshot_and_ship(source, policy)
    objects = _raw_objects(s3_url)
    assert any(k.startswith(layout.BINLOG) for k in objects) and layout.KEYRING in objects
    marker = source.marker.encode()
    for k, data in objects.items():
        assert marker not in _readable(data), k
        assert b"secret_db" not in data or k == layout.KEYRING, k  # names are in keys, never in bodies
    raw_key = load_key_file(key).key
    assert all(raw_key not in d and raw_key.hex().encode() not in d for d in objects.values())
    # Positive control: the same snapshot unencrypted does show the marker, so the grep above can see it.
    plain_url = s3_url + "-plain"
    r = run_cli("snapshot", "--storage", plain_url, "--source", source.url, "--databases", "secret_db")
    assert r.returncode == 0, r.stderr
    assert any(marker in _readable(d) for d in _raw_objects(plain_url).values())

    # Manifests record the key id and fingerprint, never the key.
    store = open_encrypted(open_store(s3_url), [load_key_file(key, "k1")])
    enc = Catalog(store).read_manifest(layout.backup_manifest(backup_id))["encryption"]
    assert enc["key_id"] == "k1" and enc["cipher"] == "AES-256-GCM"
    assert enc["key_fingerprint"] == load_key_file(key).fingerprint

    target = mariadb_factory(server_id=2)
    r = run_cli("restore", backup_id, "--policy", policy, "--target", target.url, "--json", env=ENV)
    assert r.returncode == 0, r.stderr
    assert table_checksums(target, ["secret_db"]) == source.at_snapshot
    lst = run_cli("list", "--policy", policy, "--json")
    assert lst.returncode == 0 and json.loads(lst.stdout)["binlog_coverage"], lst.stderr


def test_wrong_key_and_missing_key_fail_cleanly(source, mariadb_factory, tmp_path, s3_url):
    policy = _policy(tmp_path, s3_url, _keygen(tmp_path, "k1.key"))
    backup_id = _snapshot_and_ship(source, policy)
    wrong = _policy(tmp_path, s3_url, _keygen(tmp_path, "other.key"), "other", name="wrong")
    target = mariadb_factory(server_id=2)
    r = run_cli("restore", backup_id, "--policy", wrong, "--target", target.url, env=ENV)
    assert r.returncode == 5, r.stderr
    line = _one_line(r)
    assert "wrong key" in line and layout.KEYRING in line
    for cmd in (["list"], ["binlog", "status"], ["repo", "info"]):
        r = run_cli(*cmd, "--policy", wrong)
        assert r.returncode == 5, (cmd, r.stderr)
    r = run_cli("list", "--storage", s3_url)
    assert r.returncode == 2 and "encrypted" in _one_line(r)
    assert "secret_db" not in [row[0] for row in target.sql("SHOW DATABASES")]


def test_flipped_byte_gives_exit_5_naming_the_object(source, mariadb_factory, tmp_path, s3_url):
    policy = _policy(tmp_path, s3_url, _keygen(tmp_path, "k1.key"))
    backup_id = _snapshot_and_ship(source, policy)
    raw = open_store(s3_url)
    chunk = next(i.key for i in raw.list(layout.backup_prefix(backup_id)) if i.key.endswith(".tsv.zst"))
    data = bytearray(raw.get_bytes(chunk))
    data[len(data) // 2] ^= 0x01
    boto3.client("s3", endpoint_url=raw.options.endpoint_url, region_name="us-east-1").put_object(
        Bucket=raw.bucket, Key=raw.prefix + chunk, Body=bytes(data))
    target = mariadb_factory(server_id=2)
    r = run_cli("restore", backup_id, "--policy", policy, "--target", target.url, env=ENV)
    assert r.returncode == 5, r.stderr
    assert chunk in _one_line(r)


def test_after_key_rotation_old_backups_still_restore(source, mariadb_factory, tmp_path, s3_url):
    k1 = _keygen(tmp_path, "k1.key")
    policy1 = _policy(tmp_path, s3_url, k1)
    backup_id = _snapshot_and_ship(source, policy1)
    before = {k: v for k, v in _raw_objects(s3_url).items() if k != layout.KEYRING}
    k2 = _keygen(tmp_path, "k2.key")
    r = run_cli("repo", "rotate-key", "--policy", policy1, "--new-key-file", k2, "--new-key-id", "k2",
                "--retire-old", "--json")
    assert r.returncode == 0, r.stderr
    assert [w["key_id"] for w in json.loads(r.stdout)["wrapped_by"]] == ["k2"]
    after = {k: v for k, v in _raw_objects(s3_url).items() if k != layout.KEYRING}
    assert after == before  # no data object was rewritten
    policy2 = _policy(tmp_path, s3_url, k2, "k2", name="policy2")
    target = mariadb_factory(server_id=2)
    r = run_cli("restore", backup_id, "--policy", policy2, "--target", target.url, "--json", env=ENV)
    assert r.returncode == 0, r.stderr
    assert table_checksums(target, ["secret_db"]) == source.at_snapshot
    r = run_cli("list", "--policy", policy1)
    assert r.returncode == 5 and "wrong key" in _one_line(r)


def test_rotation_with_a_new_data_key_keeps_hosts_on_the_old_key_working(source, mariadb_factory,
                                                                          tmp_path, s3_url):
    """Issue 14, defect 5: both keys work until --retire-old, on two hosts sharing the repository."""
    k1, k2 = _keygen(tmp_path, "k1.key"), _keygen(tmp_path, "k2.key")
    host1 = _policy(tmp_path, s3_url, k1)
    host2 = _policy(tmp_path, s3_url, k2, "k2", name="host2")
    first = _snapshot_and_ship(source, host1)
    r = run_cli("repo", "rotate-key", "--policy", host1, "--new-key-file", k2, "--new-key-id", "k2",
                "--new-data-key", "--json")
    assert r.returncode == 0, r.stderr
    assert sorted(w["key_id"] for w in json.loads(r.stdout)["wrapped_by"]) == ["k1", "k2"]
    ids = [first]
    for host in (host1, host2, host1):  # the old host writes, the new one writes, the old one again
        snap = run_cli("snapshot", "--policy", host, "--source", source.url, "--databases", "secret_db",
                       "--json")
        assert snap.returncode == 0, snap.stderr
        ids.append(json.loads(snap.stdout)["backup_id"])
    at_k2_snapshot = table_checksums(source, ["secret_db"])
    for host in (host1, host2):
        lst = run_cli("list", "--policy", host, "--json")
        assert lst.returncode == 0, lst.stderr
        assert {b["id"] for b in json.loads(lst.stdout)["backups"]} >= set(ids)
    target = mariadb_factory(server_id=2)
    r = run_cli("restore", ids[2], "--policy", host1, "--target", target.url, "--json", env=ENV)
    assert r.returncode == 0, r.stderr  # written by the k2 host, read by the k1 host
    assert table_checksums(target, ["secret_db"]) == at_k2_snapshot
    # retiring the old key is what ends it
    r = run_cli("repo", "rotate-key", "--policy", host2, "--new-key-file", k2, "--new-key-id", "k2",
                "--retire-old", "--json")
    assert r.returncode == 0, r.stderr
    r = run_cli("list", "--policy", host1)
    assert r.returncode == 5 and "wrong key" in _one_line(r)
    assert run_cli("list", "--policy", host2).returncode == 0
