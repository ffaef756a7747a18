"""Two S3 server processes as two regions: quorum writes, a region stopped mid-stream, a region lost,
a corrupt copy, repo sync, and storage class / server-side encryption passed through."""

from __future__ import annotations

import json
import logging
import os
import signal
import time

from backupkit.repo import layout
from backupkit.repo.catalog import BackupManifest, BinlogPoint, Catalog, SourceIdentity
from backupkit.repo.codec import put_object, read_object
from backupkit.settings import Settings
from backupkit.storage.mirror import find_mirror
from tests.support import run_cli
from tests.support.regions import bucket_keys, s3_client, two_region_policy

MIB = 1 << 20


def _open(policy):
    return Settings.resolve(str(policy), None, None).open_store()


def _commit(store, backup_id: str, objects) -> str:
    """Commit a (synthetic) snapshot manifest naming objects, through the catalog."""
    now = time.time()
    Catalog(store).commit_backup(BackupManifest(
        id=backup_id, kind="snapshot", source=SourceIdentity("src"), point=BinlogPoint("binlog.000001", 4, "",
                                                                                         now),
        started_at=now, finished_at=now, objects=list(objects)))
    return layout.backup_manifest(backup_id)


def test_every_object_reaches_both_regions(regions, tmp_path):
    east, west = regions
    policy, eb, wb = two_region_policy(tmp_path, east, west, quorum="all")
    store = _open(policy)
    assert "write quorum 2 of 2" in store.describe()
    obj = put_object(store, "backups/b1/data/t/000001.tsv.zst", (os.urandom(MIB) for _ in range(12)),
                     level=None)
    _commit(store, "b1", [obj])
    for server, bucket in ((east, eb), (west, wb)):
        keys = bucket_keys(server, bucket)
        assert keys["repo/" + obj.key] == obj.size
        assert "repo/" + layout.backup_manifest("b1") in keys


def test_region_stopped_mid_stream_writes_go_on_and_sync_completes_it(regions, tmp_path, caplog):
    east, west = regions
    policy, eb, wb = two_region_policy(tmp_path, east, west, quorum=1)
    store = _open(policy)
    payload = [os.urandom(MIB) for _ in range(16)]

    def stream():
        for i, block in enumerate(payload):
            if i == 3:
                os.killpg(west.proc.pid, signal.SIGSTOP)  # the west region freezes mid-upload
            yield block

    try:
        with caplog.at_level(logging.WARNING):
            obj = put_object(store, "backups/b1/data.zst", stream(), level=None)
            _commit(store, "b1", [obj])
            obj2 = put_object(store, "backups/b2/data.zst", [b"second backup" * 1000])
            _commit(store, "b2", [obj2])
        mirror = find_mirror(store)
        west_t = mirror.target("west")
        assert west_t.lagging
        assert "west" in caplog.text and "lagging" in caplog.text
        assert read_object(store, obj) == b"".join(payload)
    finally:
        os.killpg(west.proc.pid, signal.SIGCONT)
    assert not any(k.endswith("manifest.json") for k in bucket_keys(west, wb))  # no half-visible backup there
    lst = run_cli("list", "--policy", str(policy), "--json")
    assert lst.returncode == 0, lst.stderr
    lag = {t["name"]: t for t in json.loads(lst.stdout)["targets"]}
    assert lag["west"]["missing_backups"] == 2 and lag["east"]["missing_objects"] == 0
    r = run_cli("repo", "sync", "--policy", str(policy), "--to", "west", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)["results"][0]
    assert res["complete"] and res["copied"] >= 4 and res["verified"] == "checksums"
    assert bucket_keys(west, wb) == bucket_keys(east, eb)
    # Resumable and idempotent: a second run has nothing to do.
    again = json.loads(run_cli("repo", "sync", "--policy", str(policy), "--json").stdout)
    assert all(x["copied"] == 0 and x["complete"] for x in again["results"])
    west_only = Settings.resolve(str(policy), "west", None).open_store()
    assert Catalog(west_only).read_manifest(layout.backup_manifest("b1"))["id"] == "b1"
    assert read_object(west_only, obj) == b"".join(payload)


def test_first_region_lost_entirely_everything_reads_from_the_second(regions, tmp_path):
    east, west = regions
    policy, eb, wb = two_region_policy(tmp_path, east, west, quorum="all")
    store = _open(policy)
    blobs = {f"backups/b1/data/t/{i:06d}.tsv.zst": os.urandom(200_000 + i) for i in range(5)}
    objs = [put_object(store, k, [v]) for k, v in blobs.items()]
    _commit(store, "b1", objs)
    c = s3_client(east)
    keys = list(bucket_keys(east, eb))
    c.delete_objects(Bucket=eb, Delete={"Objects": [{"Key": k} for k in keys]})
    c.delete_bucket(Bucket=eb)
    store = _open(policy)
    backup = Catalog(store).read_manifest(layout.backup_manifest("b1"))
    assert backup["id"] == "b1"
    for o in objs:
        assert read_object(store, o) == blobs[o.key]
    report = find_mirror(store).report()
    served = {t["name"]: t["objects_served"] for t in report["targets"]}
    assert served["west"] >= len(objs) + 1 and served["east"] == 0
    r = run_cli("list", "--policy", str(policy), "--json")
    assert r.returncode == 0, r.stderr
    targets = {t["name"]: t for t in json.loads(r.stdout)["targets"]}
    assert not targets["east"]["reachable"] and targets["west"]["missing_objects"] == 0
    # A new east region is seeded by sync and is then complete.
    east.create_bucket(eb)
    s = run_cli("repo", "sync", "--policy", str(policy), "--from", "west", "--to", "east", "--json")
    assert s.returncode == 0, s.stderr
    assert bucket_keys(east, eb) == bucket_keys(west, wb)


def test_corrupt_object_in_first_region_is_read_from_second_and_said(regions, tmp_path, caplog):
    east, west = regions
    policy, eb, wb = two_region_policy(tmp_path, east, west, quorum="all")
    store = _open(policy)
    data = os.urandom(3 * MIB)
    obj = put_object(store, "backups/b1/data.zst", [data])
    full = "repo/" + obj.key
    c = s3_client(east)
    bad = bytearray(c.get_object(Bucket=eb, Key=full)["Body"].read())
    bad[len(bad) // 2] ^= 0x01
    c.put_object(Bucket=eb, Key=full, Body=bytes(bad))
    with caplog.at_level(logging.WARNING):
        assert read_object(_open(policy), obj) == data
    assert "corrupt" in caplog.text and "read from target west" in caplog.text
    # repo sync --deep --repair finds the damaged copy and replaces it from the good region.
    _commit(store, "b1", [obj])
    r = run_cli("repo", "sync", "--policy", str(policy), "--from", "west", "--to", "east", "--deep",
                "--repair", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["results"][0]["repaired"] == [obj.key]
    assert c.get_object(Bucket=eb, Key=full)["Body"].read() == \
        s3_client(west).get_object(Bucket=wb, Key=full)["Body"].read()


def test_storage_class_and_server_side_encryption_are_passed_through(regions, tmp_path):
    east, west = regions
    policy, eb, wb = two_region_policy(tmp_path, east, west, quorum="all")
    text = policy.read_text().replace("max_attempts = 1\n", 'max_attempts = 1\nsse = "AES256"\n'
                                      'storage_class = "STANDARD_IA"\n')
    policy.write_text(text)
    store = _open(policy)
    small = put_object(store, "backups/b1/small.zst", [b"s" * 1000])
    big = put_object(store, "backups/b1/big.zst", (os.urandom(MIB) for _ in range(11)), level=None)
    for server, bucket in ((east, eb), (west, wb)):
        for o in (small, big):
            head = s3_client(server).head_object(Bucket=bucket, Key="repo/" + o.key)
            assert head.get("StorageClass") == "STANDARD_IA", head
            assert head.get("ServerSideEncryption") == "AES256", head


def test_each_target_has_its_own_credentials(regions, tmp_path, monkeypatch):
    east, west = regions
    policy, eb, wb = two_region_policy(tmp_path, east, west, quorum=1)
    text = policy.read_text()
    for name in ("east", "west"):
        text = text.replace(f'name = "{name}"\n', f'name = "{name}"\naccess_key_env = "{name.upper()}_AK"\n'
                            f'secret_key_env = "{name.upper()}_SK"\n')
    policy.write_text(text)
    monkeypatch.setenv("EAST_AK", "east-key")
    monkeypatch.setenv("EAST_SK", "east-secret")
    store = _open(policy)
    mirror = find_mirror(store)
    assert mirror.target("east").store.client._request_signer._credentials.access_key == "east-key"
    # West's variables are not set: west cannot be used, east still takes the backup (quorum 1).
    obj = put_object(store, "backups/b1/data.zst", [b"only east" * 100])
    assert mirror.target("west").lagging and "WEST_AK" in mirror.target("west").last_error
    assert "repo/" + obj.key in bucket_keys(east, eb) and not bucket_keys(west, wb)
    monkeypatch.setenv("WEST_AK", "west-key")
    monkeypatch.setenv("WEST_SK", "west-secret")
    west_store = find_mirror(_open(policy)).target("west").store
    assert west_store.client._request_signer._credentials.access_key == "west-key"

