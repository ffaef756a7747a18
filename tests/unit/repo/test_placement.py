"""The mirror's placement rule comes from the repository (repo/placement.py): leases live on the
authority target only, restore records need one target, everything else the write quorum; and the
repository, not the mirror, copies what a lagging target lacks."""

from __future__ import annotations

import shutil

import pytest

from backupkit.errors import StorageError
from backupkit.repo import layout
from backupkit.repo.targets import open_mirror
from backupkit.storage.local import LocalStore
from backupkit.storage.mirror import MirrorStore


@pytest.fixture
def roots(tmp_path):
    return tmp_path / "a", tmp_path / "b"


def _break(root) -> None:
    shutil.rmtree(root)
    root.write_bytes(b"not a folder")


def test_a_lease_lives_on_the_authority_target_only(roots):
    m = open_mirror([("a", LocalStore(roots[0])), ("b", LocalStore(roots[1]))], stall_timeout=5)
    key = layout.shipper_lease("src")
    assert m.put_if_absent(key, b"holder one")
    assert (roots[0] / key).exists() and not (roots[1] / key).exists()
    data, etag = m.read_small(key)
    assert m.replace_if_match(key, b"holder two", etag)
    assert not (roots[1] / key).exists()
    assert m.get_bytes(key) == b"holder two"


def test_a_mirror_without_the_repository_rule_copies_everything(roots):
    m = MirrorStore([("a", LocalStore(roots[0])), ("b", LocalStore(roots[1]))], stall_timeout=5)
    key = layout.shipper_lease("src")
    assert m.put_if_absent(key, b"holder")
    assert (roots[0] / key).exists() and (roots[1] / key).exists()
    assert m.catch_up() == []  # no copier given: the mirror cannot sync on its own


def test_a_restore_record_needs_one_target_and_backup_data_the_quorum(roots):
    m = open_mirror([("a", LocalStore(roots[0])), ("b", LocalStore(roots[1]))], 2, stall_timeout=5)
    _break(roots[1])
    m.put(layout.restore_record("r1"), b"{}")  # bookkeeping must not fail while a region is lost
    assert (roots[0] / layout.restore_record("r1")).exists()
    with pytest.raises(StorageError, match="write quorum"):
        m.put(layout.snapshot_chunk("b1", "db", "t", 0), b"rows")


def test_the_repository_catches_a_lagging_target_up_before_a_commit_needs_it(roots):
    m = open_mirror([("a", LocalStore(roots[0])), ("b", LocalStore(roots[1]))], 1, stall_timeout=5)
    m.target("b").lagging = True  # it missed a write earlier
    m.put(layout.snapshot_chunk("b1", "db", "t", 0), b"rows")
    m.write_quorum = 2
    assert m.put_if_absent(layout.backup_manifest("b1"), b"{}")
    assert not m.target("b").lagging
    assert (roots[1] / layout.backup_manifest("b1")).exists()
