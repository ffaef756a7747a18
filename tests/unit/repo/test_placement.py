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


def test_the_last_catch_up_pass_copies_only_what_arrived_and_lists_nothing_while_commits_wait(roots):
    """Issue 15.5's leftover: the last pass holds the commit lock; it must not list both targets
    (a large repository takes long to list, and the shipper's commits would wait)."""
    from backupkit.repo.catalog import Catalog
    from tests.support.scale import add_segment

    class Watched(LocalStore):
        def list(self, prefix=""):
            assert not m._commit_lock._is_owned(), "a listing while commits wait"
            yield from super().list(prefix)

    m = open_mirror([("a", Watched(roots[0])), ("b", Watched(roots[1]))], 1, stall_timeout=5)
    catalog = Catalog(m)
    catalog.ensure_repo()
    m.target("b").lagging = True  # it missed a write earlier
    for i in range(20):  # committed on a only; the data went to both
        add_segment(catalog, i, with_data=True)
    real = m._catch_up
    late: list = []

    def copier(sources, dest, progress, keys=None):
        result = real(sources, dest, progress, keys=keys)
        if keys is None and not late:  # between the bulk pass and the last one: two more commits
            late.extend(add_segment(catalog, 20 + j, with_data=True) for j in range(2))
        return result

    m._catch_up = copier
    m.catch_up()
    assert not m.target("b").lagging
    for seg in late:
        assert (roots[1] / seg.key).exists() and (roots[1] / seg.object.key).exists()
    b = Catalog(LocalStore(roots[1]))
    assert len(b.segments(b.sources()[0])) == 22


def test_the_lease_follows_the_first_healthy_target_and_stays_exclusive(roots):
    """Issue 15.5's leftover: leases live on the first reachable target. When it goes away the
    holder keeps its lease by moving it to the next one (a standby cannot take it there), and
    when it comes back the lease moves back, refreshing the holder's older record."""
    from backupkit.repo.lease import Lease

    m = open_mirror([("a", LocalStore(roots[0])), ("b", LocalStore(roots[1]))], 1, stall_timeout=2,
                    retry_after=0.5)
    holder = Lease(m, "src", lease_seconds=10, holder="shipper", grace=0.1)
    standby = Lease(m, "src", lease_seconds=10, holder="standby", grace=0.1)
    assert holder.try_acquire() and not standby.try_acquire()
    key = layout.shipper_lease("src")
    saved = roots[0].with_name("a-away")
    roots[0].rename(saved)  # the first target goes away
    roots[0].write_bytes(b"not a folder")
    assert holder.renew() and not holder.lost
    assert (roots[1] / key).exists()
    assert not standby.try_acquire()  # the lease is held on the target that holds leases now
    roots[0].unlink()
    saved.rename(roots[0])  # it is back, with the holder's older record
    m.target("a").down_until = 0.0
    old = (roots[0] / key).read_bytes()
    assert holder.renew() and not holder.lost
    assert (roots[0] / key).read_bytes() != old  # refreshed, not merely read
    assert not standby.try_acquire()
