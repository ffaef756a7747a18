"""A mirror of two local targets: quorum writes, lagging targets, failover reads, sync (fast, no servers)."""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time

import pytest

from backupkit.errors import IntegrityError, StorageError
from backupkit.repo import layout
from backupkit.repo.catalog import Catalog, decode_manifest, encode_manifest
from backupkit.repo.codec import consume_object, iter_object, put_object, read_object
from backupkit.repo.compare import target_status
from backupkit.repo.keyring import open_encrypted
from backupkit.repo.sync import sync_stores
from backupkit.repo.targets import open_mirror
from backupkit.storage.crypto import KeyEncryptionKey
from backupkit.storage.local import LocalStore
from backupkit.storage.mirror import MirrorStore
from tests.support import wait_for

MIB = 1 << 20


@pytest.fixture
def roots(tmp_path):
    return tmp_path / "a", tmp_path / "b"


def mirror(roots, quorum=None, **kw) -> MirrorStore:
    a, b = roots
    return open_mirror([("a", LocalStore(a)), ("b", LocalStore(b))], quorum, stall_timeout=5, **kw)


def _break(root) -> None:
    """Make a local target unusable: its folder becomes a plain file."""
    shutil.rmtree(root)
    root.write_bytes(b"not a folder")


def _flip(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


def test_every_object_goes_to_every_target(roots):
    m = mirror(roots)
    obj = put_object(m, "backups/b1/data.zst", (os.urandom(MIB) for _ in range(5)), level=1)
    for root in roots:
        assert (root / obj.key).stat().st_size == obj.size
    assert read_object(m, obj)
    assert m.put_if_absent("backups/b1/manifest.json", b"{}")
    assert not m.put_if_absent("backups/b1/manifest.json", b"{}")
    assert all((r / "backups/b1/manifest.json").exists() for r in roots)


def test_quorum_one_writes_on_and_the_lagging_target_gets_no_commit_marker(roots):
    m = mirror(roots, quorum=1)
    _break(roots[1])
    obj = put_object(m, "backups/b1/data.zst", [b"x" * 1000])
    assert m.put_if_absent("backups/b1/manifest.json", encode_manifest({"objects": [obj.to_dict()]}))
    t = m.target("b")
    assert t.lagging and t.failed_writes >= 1
    assert [e["kind"] for e in m.report()["events"]].count("write_failed") >= 1
    # Back again: data goes there, but no manifest until a sync completed it.
    roots[1].unlink()
    t.down_until = 0
    obj2 = put_object(m, "backups/b2/data.zst", [b"y" * 1000])
    assert (roots[1] / obj2.key).exists()
    m.put_if_absent("backups/b2/manifest.json", encode_manifest({"objects": [obj2.to_dict()]}))
    assert not (roots[1] / "backups/b2/manifest.json").exists()
    result = sync_stores([("a", LocalStore(roots[0]))], ("b", LocalStore(roots[1])))
    assert result.complete and result.copied == 3  # b1 data, both manifests
    assert result.verified == "checksums"
    status = target_status([("a", LocalStore(roots[0])), ("b", LocalStore(roots[1]))])
    assert status[1]["missing_objects"] == 0


def test_write_quorum_all_fails_when_a_target_is_down(roots):
    m = mirror(roots)
    _break(roots[1])
    with pytest.raises(StorageError, match="write quorum 2"):
        put_object(m, "backups/b1/data.zst", (os.urandom(MIB) for _ in range(3)))
    assert not any((roots[0] / "backups").rglob("*.zst"))  # nothing half-visible
    with pytest.raises(StorageError, match="quorum"):
        m.put_if_absent("backups/b1/manifest.json", b"{}")


def test_missing_or_unreachable_target_is_skipped_on_read(roots, caplog):
    m = mirror(roots)
    obj = put_object(m, "backups/b1/data.zst", [b"payload" * 1000])
    (roots[0] / obj.key).unlink()
    with caplog.at_level(logging.WARNING):
        assert read_object(m, obj) == b"payload" * 1000
    assert "read from target b" in caplog.text
    shutil.rmtree(roots[0])
    assert read_object(mirror(roots), obj) == b"payload" * 1000


def test_corrupt_small_object_is_read_from_the_other_target_and_said(roots, caplog):
    m = mirror(roots)
    data = os.urandom(3 * MIB)
    obj = put_object(m, "backups/b1/data.zst", [data], level=None)
    _flip(roots[0] / obj.key, 2 * MIB)
    with caplog.at_level(logging.WARNING):
        assert read_object(m, obj) == data
    assert "corrupt" in caplog.text and "target b" in caplog.text
    ev = [e for e in m.report()["events"] if e["kind"] == "read_failover"]
    assert ev and ev[0]["target"] == "a" and ev[0]["served_by"] == "b" and ev[0]["key"] == obj.key


def test_corrupt_manifest_is_read_from_the_other_target(roots):
    m = mirror(roots)
    body = {"type": "backup", "id": "b1"}
    m.put_if_absent("backups/b1/manifest.json", encode_manifest(body))
    _flip(roots[0] / "backups/b1/manifest.json", 30)
    assert Catalog(m).read_manifest("backups/b1/manifest.json")["id"] == "b1"
    with pytest.raises(IntegrityError):
        decode_manifest("k", (roots[0] / "backups/b1/manifest.json").read_bytes())


def test_large_corrupt_object_is_never_delivered_silently_and_a_retry_uses_the_good_copy(roots, monkeypatch):
    monkeypatch.setattr("backupkit.repo.failover.BUFFER_LIMIT", MIB)
    m = mirror(roots)
    data = os.urandom(4 * MIB)
    obj = put_object(m, "backups/b1/big.zst", [data], level=None)
    _flip(roots[0] / obj.key, 3 * MIB)
    with pytest.raises(IntegrityError, match="big.zst"):
        b"".join(iter_object(m, obj))
    # The bad copy is remembered: the next read prefers b.
    assert b"".join(iter_object(m, obj)) == data
    m2 = mirror(roots)
    calls = []

    def consume(chunks):
        calls.append(1)
        return b"".join(chunks)

    assert consume_object(m2, obj, consume) == data
    assert len(calls) == 2


def test_encrypted_mirror_moves_to_the_good_copy_in_mid_stream(roots):
    k = KeyEncryptionKey(os.urandom(32), "k", "test")
    store = open_encrypted(mirror(roots), [k])
    data = os.urandom(5 * MIB)
    obj = put_object(store, "backups/b1/big.zst", [data], level=None)
    _flip(roots[0] / obj.key, 3 * MIB)
    got = bytearray()
    for block in iter_object(store, obj):
        got += block
    assert bytes(got) == data
    events = store.inner.report()["events"]
    assert any(e["kind"] == "read_failover" and e["served_by"] == "b" for e in events)


def test_union_listing_survives_a_missing_target(roots):
    m = mirror(roots, quorum=1)
    m.put("backups/x/1", b"1")
    (roots[1] / "backups/x/1").unlink()
    m.put("backups/x/2", b"2")
    (roots[0] / "backups/x/2").unlink()
    m.put("backups/x/3", b"3")  # on both: listed once
    assert [i.key for i in m.list("backups/")] == ["backups/x/1", "backups/x/2", "backups/x/3"]
    shutil.rmtree(roots[0])
    assert [i.key for i in mirror(roots).list("backups/")] == ["backups/x/2", "backups/x/3"]


def test_sync_holds_back_a_manifest_whose_data_cannot_be_copied(roots):
    a, b = (LocalStore(r) for r in roots)
    obj = put_object(a, "backups/b1/data.zst", [b"z" * 5000])
    a.put_if_absent(layout.backup_manifest("b1"), encode_manifest({"objects": [obj.to_dict()]}))
    _flip(roots[0] / obj.key, 10)
    result = sync_stores([("a", a)], ("b", b))
    assert not result.complete
    assert result.held_back == [layout.backup_manifest("b1")]
    assert "checksum" in result.failed[0]["error"]
    assert not (roots[1] / obj.key).exists() and not (roots[1] / "backups/b1/manifest.json").exists()


def test_sync_repairs_a_damaged_copy_only_when_asked(roots):
    m = mirror(roots)
    obj = put_object(m, "backups/b1/data.zst", [b"q" * 5000])
    m.put_if_absent(layout.backup_manifest("b1"), encode_manifest({"objects": [obj.to_dict()]}))
    _flip(roots[1] / obj.key, 10)
    a, b = (LocalStore(r) for r in roots)
    assert sync_stores([("a", a)], ("b", b)).complete  # same sizes: a shallow sync sees nothing
    deep = sync_stores([("a", a)], ("b", b), deep=True)
    assert deep.damaged == [obj.key] and not deep.complete
    fixed = sync_stores([("a", a)], ("b", b), deep=True, repair=True)
    assert fixed.repaired == [obj.key] and fixed.complete
    assert read_object(b, obj) == b"q" * 5000


def test_encrypted_sync_verifies_plaintext_checksums_and_copies_ciphertext(roots):
    k = KeyEncryptionKey(os.urandom(32), "k", "test")
    a = open_encrypted(LocalStore(roots[0]), [k])
    obj = put_object(a, "backups/b1/data.zst", [b"secret" * 10000])
    a.put_if_absent(layout.backup_manifest("b1"), encode_manifest({"objects": [obj.to_dict()]}))
    res = sync_stores([("a", LocalStore(roots[0]))], ("b", LocalStore(roots[1])), keks=[k])
    assert res.complete and res.verified == "checksums" and res.copied == 3
    assert (roots[0] / obj.key).read_bytes() == (roots[1] / obj.key).read_bytes()
    assert read_object(open_encrypted(LocalStore(roots[1]), [k]), obj) == b"secret" * 10000
    # Without the key the copy is still made, checked by size only.
    res2 = sync_stores([("a", LocalStore(roots[0]))], ("c", LocalStore(roots[1].parent / "c")))
    assert res2.complete and res2.verified == "sizes"


def test_a_lagging_target_is_caught_up_on_its_own_when_the_quorum_needs_it(roots):
    m = mirror(roots, quorum=1)
    _break(roots[1])
    obj = put_object(m, "backups/b1/data.zst", [b"a" * 3000])
    m.put_if_absent(layout.backup_manifest("b1"), encode_manifest({"objects": [obj.to_dict()]}))
    assert m.target("b").lagging
    roots[1].unlink()  # b is back
    m.target("b").down_until = 0
    m.write_quorum = 2  # now both must hold the next commit: the mirror syncs b first
    obj2 = put_object(m, "backups/b2/data.zst", [b"b" * 3000])
    assert m.put_if_absent(layout.backup_manifest("b2"), encode_manifest({"objects": [obj2.to_dict()]}))
    assert not m.target("b").lagging
    assert any(e["kind"] == "caught_up" for e in m.report()["events"])
    for key in (obj.key, layout.backup_manifest("b1"), obj2.key, layout.backup_manifest("b2")):
        assert (roots[1] / key).exists(), key


def _synthetic_backup(store, backup_id: str, objects) -> None:
    import time

    from backupkit.repo.catalog import BackupManifest, BinlogPoint, SourceIdentity

    now = time.time()
    Catalog(store).commit_backup(BackupManifest(
        id=backup_id, kind="snapshot", source=SourceIdentity("src"), point=BinlogPoint("binlog.000001", 4),
        started_at=now, finished_at=now, objects=list(objects)))


def test_cli_lists_from_the_surviving_target_and_sync_reseeds_the_lost_one(roots, tmp_path):
    import json

    from backupkit.settings import Settings
    from tests.support import run_cli

    policy = tmp_path / "p.toml"
    policy.write_text(f'[storage]\n[[storage.targets]]\nname = "a"\nurl = "file://{roots[0]}"\n'
                      f'[[storage.targets]]\nname = "b"\nurl = "file://{roots[1]}"\n')
    store = Settings.resolve(str(policy), None, None).open_store()
    obj = put_object(store, "backups/b1/data.zst", [b"row\n" * 5000])
    _synthetic_backup(store, "b1", [obj])
    shutil.rmtree(roots[0])
    r = run_cli("list", "--policy", str(policy), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [b["id"] for b in out["backups"]] == ["b1"]
    assert {t["name"]: t["reachable"] for t in out["targets"]} == {"a": False, "b": True}
    r = run_cli("repo", "sync", "--policy", str(policy), "--from", "b", "--to", "a", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["results"][0]["copied"] == 3  # repo config, data, manifest
    assert read_object(LocalStore(roots[0]), obj) == b"row\n" * 5000
    # A damaged source copy: the sync to a third target fails with exit 5 and holds the manifest back.
    _flip(roots[1] / obj.key, 7)
    _flip(roots[0] / obj.key, 9)
    r = run_cli("repo", "sync", "--policy", str(policy), "--to", str(tmp_path / "c"), "--json")
    assert r.returncode == 5, r.stderr
    res = json.loads(r.stdout)
    assert res["ok"] is False and res["results"][0]["held_back"] == ["backups/b1/manifest.json"]
    assert not (tmp_path / "c" / "backups/b1/manifest.json").exists()


def test_policy_check_and_the_daemon_sync_job(roots, tmp_path):
    import json

    from tests.support import run_cli

    targets = (f'[[storage.targets]]\nname = "a"\nurl = "file://{roots[0]}"\n'
               f'[[storage.targets]]\nname = "b"\nurl = "file://{roots[1]}"\n')
    bad = tmp_path / "bad.toml"
    bad.write_text(f'[storage]\nwrite_quorum = 3\n{targets}[encryption]\nkey_id = "x"\n')
    r = run_cli("policy", "check", str(bad))
    assert r.returncode == 2
    assert "storage.write_quorum" in r.stderr and "key_file" in r.stderr
    good = tmp_path / "good.toml"
    good.write_text(f'[strategies]\nsync = "*/10 * * * *"\n[storage]\nwrite_quorum = 1\n{targets}')
    a = LocalStore(roots[0])
    obj = put_object(a, "backups/b1/data.zst", [b"daemon" * 1000])
    _synthetic_backup(a, "b1", [obj])
    r = run_cli("schedule", "exec", "sync", "--policy", str(good), "--json",
                env={"BACKUPKIT_STATE_DIR": str(tmp_path / "state")})
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)
    assert read_object(LocalStore(roots[1]), obj) == b"daemon" * 1000
    assert (roots[1] / "backups/b1/manifest.json").exists()


class _Frozen(LocalStore):
    """A local target whose conditional writes hang until released (a blackholed region)."""

    def __init__(self, root) -> None:
        super().__init__(root)
        self.release = threading.Event()

    def put_if_absent(self, key, data):
        self.release.wait(30)
        return super().put_if_absent(key, data)


def test_a_frozen_first_target_costs_a_commit_marker_lag_grace_not_stall_timeout(roots):
    """The first target decides a put_if_absent, but one that does not answer is waited for only
    LAG_GRACE while the others still make the quorum: it becomes lagging (no further markers),
    its write lands later on data it holds, and the next target's answer decides."""
    frozen = _Frozen(roots[0])
    m = open_mirror([("a", frozen), ("b", LocalStore(roots[1]))], 1, stall_timeout=5)
    try:
        m.put("backups/b1/data.zst", b"x" * 100)
        t0 = time.monotonic()
        assert m.put_if_absent("backups/b1/manifest.json", b"{}")
        assert time.monotonic() - t0 < 3  # LAG_GRACE (0.5 s), far below stall_timeout (5 s)
        a = m.target("a")
        assert a.lagging and not a.is_down() and a.inflight
        assert (roots[1] / "backups/b1/manifest.json").exists()
        # the next target's answer decides: present there means not created
        assert not m.put_if_absent("backups/b1/manifest.json", b"{}")
        # a lagging target gets no further markers (not even a frozen call)
        t0 = time.monotonic()
        m.put("backups/b2/data.zst", b"y" * 100)
        assert m.put_if_absent("backups/b2/manifest.json", b"{}")
        assert time.monotonic() - t0 < 3
    finally:
        frozen.release.set()
    wait_for(lambda: not m.target("a").inflight, 10, "the frozen write to end")
    assert (roots[0] / "backups/b1/manifest.json").exists()  # its data was there first
    assert not (roots[0] / "backups/b2/manifest.json").exists()


def test_quorum_all_still_waits_for_a_slow_first_target(roots):
    """With write_quorum = every target there is no one to decide instead: the first target is
    waited for (up to stall_timeout), and a commit marker is never written without it."""
    frozen = _Frozen(roots[0])
    m = open_mirror([("a", frozen), ("b", LocalStore(roots[1]))], None, stall_timeout=1)
    try:
        m.put("backups/b1/data.zst", b"x" * 100)
        with pytest.raises(StorageError):
            m.put_if_absent("backups/b1/manifest.json", b"{}")
        assert not (roots[1] / "backups/b1/manifest.json").exists()
    finally:
        frozen.release.set()


@pytest.mark.parametrize("journal_limit", [100_000, 2])
def test_a_catch_up_copies_what_the_journal_names_without_listing(roots, monkeypatch, journal_limit):
    """A target that lagged since the journal began is caught up from the journal (one HEAD a
    key, no listing: a month of segments lists for minutes); a journal that overflowed falls
    back to comparing every key. Both end complete."""
    from backupkit.repo.compare import target_status
    from backupkit.storage.mirror import store as mirror_store
    from tests.support.scale import CountingStore

    monkeypatch.setattr(mirror_store, "JOURNAL_LIMIT", journal_limit)
    a, b = CountingStore(LocalStore(roots[0])), CountingStore(LocalStore(roots[1]))
    m = open_mirror([("a", a), ("b", b)], 1, stall_timeout=5)
    put_object(m, "backups/b0/data.zst", [b"0" * 100])  # both hold it
    away = roots[1].with_name("b-away")
    roots[1].rename(away)  # b is unreachable (what it holds is kept)
    roots[1].write_bytes(b"not a folder")
    for i in range(1, 4):
        obj = put_object(m, f"backups/b{i}/data.zst", [b"x" * 3000])
        m.put_if_absent(layout.backup_manifest(f"b{i}"), encode_manifest({"objects": [obj.to_dict()]}))
    assert m.target("b").lagging
    roots[1].unlink()  # b is back
    away.rename(roots[1])
    m.target("b").down_until = 0
    a.reset()
    b.reset()
    m.catch_up()
    assert not m.target("b").lagging
    listed = a.counts["list"] + b.counts["list"]
    assert (listed == 0) if journal_limit > 2 else (listed > 0)
    rows = {r["name"]: r for r in target_status([("a", LocalStore(roots[0])), ("b", LocalStore(roots[1]))])}
    assert rows["b"]["missing_objects"] == 0 and rows["b"]["objects"] == rows["a"]["objects"] == 7
