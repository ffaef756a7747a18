"""A partial snapshot never becomes the base of a whole-server restore; a typo in --databases never
commits an empty snapshot (issue 14, defect 2)."""

from __future__ import annotations

import pytest

from backupkit.mysql.sandbox import Sandbox
from backupkit.repo.catalog import Catalog
from backupkit.storage import open_store
from tests.support import json_ok, run_cli, source_with_repo, table_checksums

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """Full snapshot, then `snapshot -d shop` a second later, then writes in gamma, shipped."""
    path = tmp_path_factory.mktemp("scope") / "repo"
    with source_with_repo("scope-src", path) as (src, env):
        for db in ("shop", "gamma", "delta"):
            src.sql(f"CREATE DATABASE {db}")
            src.sql(f"CREATE TABLE {db}.t (id INT PRIMARY KEY, v INT)")
            src.sql(f"INSERT INTO {db}.t SELECT seq, seq FROM {db}.seq_1_to_50")
        full = json_ok(run_cli("snapshot", "--json", env=env))
        partial = json_ok(run_cli("snapshot", "-d", "shop", "--json", env=env))
        src.sql("INSERT INTO gamma.t VALUES (1000, 1)")
        src.sql("UPDATE shop.t SET v = v + 1 WHERE id < 10")
        json_ok(run_cli("binlog", "ship", "--once", "--server-id", "557", "--json", env=env))
        yield {"env": env, "src": src, "full": full, "partial": partial, "path": path,
               "expected": table_checksums(src)}


def test_whole_server_restore_uses_the_full_base_not_the_newer_partial_one(repo):
    tgt = Sandbox(name="scope-t").start()
    try:
        dry = json_ok(run_cli("restore", "--latest", "--target", tgt.url, "--dry-run", "--json",
                          env=repo["env"]))
        catalog = Catalog(open_store(f"file://{repo['path']}"))
        by_id = {b.id: b for b in catalog.backups()}
        full_id = next(i for i, b in by_id.items() if b.scope.full)
        part_id = next(i for i, b in by_id.items() if not b.scope.full)
        assert by_id[part_id].point.time > by_id[full_id].point.time
        assert dry["base"]["id"] == full_id
        assert dry["base"]["scope"] == {"full": True, "databases": [], "tables": []}
        out = json_ok(run_cli("restore", "--latest", "--target", tgt.url, "--json", env=repo["env"]))
        assert out["plan"]["base"]["id"] == full_id
        assert table_checksums(tgt) == repo["expected"]  # every database, not only shop
        human = run_cli("restore", "--latest", "--target", tgt.url, "--dry-run", env=repo["env"])
        assert "scope full" in human.stdout
    finally:
        tgt.destroy()


def test_snapshot_restore_dry_run_shows_the_scope(repo):
    part = repo["partial"]["backup_id"]
    out = json_ok(run_cli("restore", part, "--target", "mysql://root@127.0.0.1:1", "--dry-run", "--json",
                      env=repo["env"]))
    assert out["scope"] == {"full": False, "databases": ["shop"], "tables": []}
    human = run_cli("restore", part, "--target", "mysql://root@127.0.0.1:1", "--dry-run", env=repo["env"])
    assert "partial: databases shop" in human.stdout


def test_list_shows_each_base_scope(repo):
    data = json_ok(run_cli("list", "--json", env=repo["env"]))
    scopes = sorted(b["scope_text"] for b in data["backups"])
    assert scopes == ["full", "partial: databases shop"]
    human = run_cli("list", env=repo["env"])
    assert "partial: databases shop" in human.stdout


@pytest.mark.parametrize("args", [["-d", "typo"], ["-d", "shop,typo"], ["--tables", "shop.nope"]])
def test_snapshot_of_a_database_or_table_that_does_not_exist_is_refused(repo, args):
    before = len(json_ok(run_cli("list", "--json", env=repo["env"]))["backups"])
    r = run_cli("snapshot", *args, env=repo["env"])
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and ("no database" in lines[0] or "no table" in lines[0]), r.stderr
    assert len(json_ok(run_cli("list", "--json", env=repo["env"]))["backups"]) == before
