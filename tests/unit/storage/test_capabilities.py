"""Stores declare what they add (capabilities, unwrap, alternatives, target names): nothing probes them."""

from __future__ import annotations

import os

from backupkit.repo.keyring import open_encrypted
from backupkit.repo.targets import open_mirror
from backupkit.storage.base import Capabilities
from backupkit.storage.crypto import KeyEncryptionKey
from backupkit.storage.local import LocalStore
from backupkit.storage.mirror import find_mirror


def test_each_stack_declares_its_capabilities_and_what_it_wraps(tmp_path):
    local = LocalStore(tmp_path / "l")
    mirror = open_mirror([("a", LocalStore(tmp_path / "a")), ("b", LocalStore(tmp_path / "b"))])
    kek = KeyEncryptionKey(os.urandom(32), "k", "test")
    enc_local, enc_mirror = open_encrypted(local, [kek]), open_encrypted(mirror, [kek])

    assert local.capabilities() == Capabilities()
    assert mirror.capabilities() == Capabilities(several_copies=True)
    assert enc_local.capabilities() == Capabilities(authenticated_reads=True)
    assert enc_mirror.capabilities() == Capabilities(authenticated_reads=True, several_copies=True)

    assert local.unwrap() is None and mirror.unwrap() is None
    assert enc_mirror.unwrap() is mirror
    assert find_mirror(enc_mirror) is mirror and find_mirror(enc_local) is None

    assert local.alternatives("k") == [local]
    assert enc_local.alternatives("k") == [enc_local]
    assert [a.target_name for a in mirror.alternatives("k")] == ["a", "b"]
    assert [a.target_name for a in enc_mirror.alternatives("k")] == ["a", "b"]
    assert enc_local.encryption_info()["key_id"] == "k" and local.encryption_info() is None


def test_a_failover_note_reaches_the_mirror_through_every_layer(tmp_path):
    mirror = open_mirror([("a", LocalStore(tmp_path / "a")), ("b", LocalStore(tmp_path / "b"))])
    enc = open_encrypted(mirror, [KeyEncryptionKey(os.urandom(32), "k", "test")])
    view = enc.alternatives("x/y")[0]
    view.note_failover("x/y", "a", "b", "corrupt", corrupt=True)
    assert "x/y" in mirror.target("a").bad_keys
    assert [t.target_name for t in mirror.alternatives("x/y")] == ["b", "a"]  # the bad copy last
