"""Long non-ASCII database and table names (issue 14, defect 6): every key component stays under
the file-name limits of each store, the real names live in the manifest, and a failed snapshot
leaves no object behind. Real mariadbd, local store and moto S3."""

from __future__ import annotations

import json

import pytest

from backupkit.errors import StorageError
from backupkit.repo import layout
from backupkit.repo.catalog import Catalog
from backupkit.storage import open_store
from backupkit.strategies.snapshot import SnapshotOptions, take_snapshot
from backupkit.strategies.snapshot import job as snapshot_job
from tests.support import run_cli, table_checksums

pytestmark = pytest.mark.timeout(300)

# MariaDB 10.11 takes 64 characters per name, but only from the BMP (a 4-byte character is error
# 1300), and its own file names (5 bytes a CJK character, 3 a Cyrillic one) stop at 29 CJK
# characters in a 64-character name: these are the longest names the server accepts, 2-3 bytes
# each in UTF-8, 471 characters percent-encoded (the limit of a local file name is 255 bytes).
DB = "库" * 29 + "ж" * 35
TABLES = ["表" * 29 + "ж" * 35, "表" * 29 + "ж" * 34 + "ы"]  # the same up to the last character


@pytest.fixture
def source(mariadb):
    mariadb.sql(f"CREATE DATABASE `{DB}` CHARACTER SET utf8mb4")
    for n, t in enumerate(TABLES):
        mariadb.sql(f"CREATE TABLE `{DB}`.`{t}` (id INT PRIMARY KEY, v VARCHAR(50)) CHARACTER SET utf8mb4")
        mariadb.sql(f"INSERT INTO `{DB}`.`{t}` SELECT seq, CONCAT('😀𝄞 row ', seq + {n}) "
                    f"FROM `{DB}`.seq_1_to_{500 + n}")
    return mariadb


def test_name_components_stay_short_and_distinct():
    emoji_64 = "😀" * 64  # 256 bytes of UTF-8: 768 characters percent-encoded
    comps = {layout.name_component(n) for n in (emoji_64, "😀" * 63 + "😁", DB, *TABLES)}
    assert len(comps) == 5
    assert all(len(c.encode()) <= layout.MAX_NAME_COMPONENT for c in comps)
    assert layout.name_component("shop") == "shop"  # short names keep their readable form
    key = layout.snapshot_chunk("20261130T000000Z-snapshot-abcd", emoji_64, emoji_64, 1)
    assert max(len(p.encode()) for p in key.split("/")) <= 255 and len(key.encode()) <= 1024


def test_longest_names_snapshot_and_restore_exactly(source, mariadb_factory, store_url):
    snap = run_cli("snapshot", "--source", source.url, "--storage", store_url, "--databases", DB,
                   "--json")
    assert snap.returncode == 0, snap.stderr
    backup_id = json.loads(snap.stdout)["backup_id"]
    store = open_store(store_url)
    keys = [i.key for i in store.list(layout.backup_prefix(backup_id))]
    assert max(len(p.encode()) for k in keys for p in k.split("/")) <= 255
    manifest = Catalog(store).backup(backup_id)
    assert {t["name"] for t in manifest.details["tables"]} == set(TABLES)  # the real names
    target = mariadb_factory(server_id=2)
    r = run_cli("restore", backup_id, "--storage", store_url, "--target", target.url, "--verify",
                env={"BACKUPKIT_TARGET_PASSWORD": ""})
    assert r.returncode == 0, r.stderr
    assert table_checksums(target, [DB]) == table_checksums(source, [DB])
    assert sorted(t for (t,) in target.sql(f"SHOW TABLES FROM `{DB}`")) == sorted(TABLES)


def test_a_failed_snapshot_leaves_no_object_behind(source, store_url, monkeypatch):
    real_put = snapshot_job.put_object

    def failing_put(store, key, *a, **kw):
        if "/schema/" in key:  # after every chunk was stored
            raise StorageError(f"injected failure storing {key}")
        return real_put(store, key, *a, **kw)

    monkeypatch.setattr(snapshot_job, "put_object", failing_put)
    store = open_store(store_url)
    with pytest.raises(StorageError, match="injected"):
        take_snapshot(source.spec, store, SnapshotOptions(databases=[DB], parallel=2,
                                                          backup_id="20261130T000000Z-snapshot-fail"))
    assert list(store.list(layout.backup_prefix("20261130T000000Z-snapshot-fail"))) == []
    assert [i.key for i in store.list(layout.BACKUPS)] == []
