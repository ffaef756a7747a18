"""A replay that breaks in any stage (fetch, parse, apply) ends promptly with the right error,
names what broke, and reports the target as partial: no thread waits for ever (issue 14, defect 1)."""

from __future__ import annotations

import shutil
import time

import pytest

from backupkit.errors import IntegrityError
from backupkit.mysql.sandbox import Sandbox
from backupkit.repo.catalog import Catalog
from backupkit.restore.replay import ReplayError
from backupkit.restore.stoppoint import parse_target
from backupkit.storage import open_store
from tests.support import cross_second, run_cli, source_with_repo

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """A snapshot, then three shipping runs with writes before each: three non-empty segments."""
    repo = tmp_path_factory.mktemp("replayfail") / "repo"
    with source_with_repo("replayfail-src", repo) as (src, env):
        src.sql("CREATE DATABASE shop")
        src.sql("CREATE TABLE shop.t (id INT PRIMARY KEY, v VARCHAR(50))")
        src.sql("INSERT INTO shop.t SELECT seq, 'base' FROM shop.seq_1_to_100")
        r = run_cli("snapshot", "--json", env=env)
        assert r.returncode == 0, r.stderr
        for run in range(3):
            conn = src.connect(database="shop")
            with conn.cursor() as cur:
                for i in range(20):
                    cur.execute("INSERT INTO t VALUES (%s, %s)", (1000 * (run + 1) + i, f"run{run}"))
            conn.commit()
            conn.close()
            r = run_cli("binlog", "ship", "--once", "--server-id", "556", "--json", env=env)
            assert r.returncode == 0, r.stderr
        yield {"repo": repo, "env": env}


def _copy(shipped, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(shipped["repo"], repo)
    store = open_store(f"file://{repo}")
    catalog = Catalog(store)
    (sid,) = catalog.sources()
    segs = [s for s in catalog.segments(sid) if s.end_pos > s.start_pos and s.transactions]
    assert len(segs) >= 3, [s.key for s in segs]
    return repo, store, catalog, segs


@pytest.fixture
def target():
    sb = Sandbox(name="replayfail-t").start()
    yield sb
    sb.destroy()


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_middle_segment_exits_5_naming_it_and_reports_the_target_partial(
        shipped, tmp_path, target, damage):
    repo, _store, _catalog, segs = _copy(shipped, tmp_path)
    middle = segs[1].object.key
    path = repo / middle
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x40
    else:
        data = data[: len(data) // 2]
    path.write_bytes(bytes(data))
    t0 = time.monotonic()
    r = run_cli("restore", "--latest", "--target", target.url,
                env={**shipped["env"], "BACKUPKIT_STORAGE": f"file://{repo}"}, timeout=90)
    took = time.monotonic() - t0
    assert r.returncode == 5, r.stderr
    assert middle in r.stderr
    assert "partial" in r.stderr
    assert "Traceback" not in r.stderr
    assert took < 60
    # the base and the first segment are there; nothing of the damaged one or after it
    assert target.sql("SELECT COUNT(*) FROM shop.t WHERE v = 'run0'")[0][0] == 20
    assert target.sql("SELECT COUNT(*) FROM shop.t WHERE v IN ('run1', 'run2')")[0][0] == 0


def _restore_fails_promptly(store, catalog, target, error: type[Exception], match: str | None = None):
    """restore --latest in process raises error (matching match) within 30 s; the error."""
    from backupkit.restore.pitr import restore_to_point

    t0 = time.monotonic()
    with pytest.raises(error, match=match) as info:
        restore_to_point(store, catalog, parse_target(None, None, None, None, True), target.spec,
                         report_loss=False)
    assert time.monotonic() - t0 < 30
    return info.value


def _break_nth_call(monkeypatch, owner, name: str, n: int, error: Exception) -> None:
    """The method owner.name raises error on its n-th call; the other calls run as usual."""
    real = getattr(owner, name)
    calls = 0

    def broken(self, item):
        nonlocal calls
        calls += 1
        if calls == n:
            raise error
        return real(self, item)

    monkeypatch.setattr(owner, name, broken)


def test_fetch_stage_failure_raises_the_integrity_error_promptly(shipped, tmp_path, target,
                                                                 monkeypatch):
    from backupkit.restore.replay import fetch

    _repo, store, catalog, segs = _copy(shipped, tmp_path)
    real = fetch.iter_object

    def broken(store_, obj, **kw):
        if obj.key == segs[1].object.key:
            raise IntegrityError(f"checksum mismatch in object {obj.key!r}")
        return real(store_, obj, **kw)

    monkeypatch.setattr(fetch, "iter_object", broken)
    err = _restore_fails_promptly(store, catalog, target, IntegrityError)
    assert segs[1].object.key in str(err)
    assert "partial" in str(err)


def test_parse_stage_failure_raises_promptly(shipped, tmp_path, target, monkeypatch):
    from backupkit.restore.replay import parse

    _repo, store, catalog, _segs = _copy(shipped, tmp_path)
    _break_nth_call(monkeypatch, parse.Parser, "segment", 2,
                    IntegrityError("event at 1234 in segment is malformed"))
    _restore_fails_promptly(store, catalog, target, IntegrityError, "malformed.*partial")


def test_apply_stage_failure_raises_the_target_error_promptly(shipped, tmp_path, target,
                                                              monkeypatch):
    from backupkit.restore.replay import apply

    _repo, store, catalog, _segs = _copy(shipped, tmp_path)
    # whole row-based transactions go through _txns (several per round trip), the rest _do
    _break_nth_call(monkeypatch, apply.Applier, "_txns", 1,
                    ReplayError("replay failed at GTID 0-1-5: error 1146: Table 'x.y' doesn't exist"))
    err = _restore_fails_promptly(store, catalog, target, ReplayError, "1146.*partial")
    assert err.exit_code == 7


def test_undecryptable_middle_segment_on_s3_exits_5_naming_it(tmp_path, s3_url, target):
    """An encrypted repository on a real S3 server: a segment whose stored bytes no longer decrypt."""
    from backupkit.storage import open_store as raw_store

    key = tmp_path / "k1.key"
    r = run_cli("repo", "keygen", str(key), "--json")
    assert r.returncode == 0, r.stderr
    policy = tmp_path / "policy.toml"
    policy.write_text(f'[storage]\nurl = "{s3_url}"\n\n[encryption]\nkey_file = "{key}"\nkey_id = "k1"\n')
    src = Sandbox(name="replayfail-enc").start()
    env = {"BACKUPKIT_SOURCE": src.url, "BACKUPKIT_TARGET_PASSWORD": ""}
    try:
        src.sql("CREATE DATABASE shop")
        src.sql("CREATE TABLE shop.t (id INT PRIMARY KEY, v VARCHAR(50))")
        r = run_cli("snapshot", "--policy", str(policy), "--json", env=env)
        assert r.returncode == 0, r.stderr
        for run in range(3):
            src.sql(f"INSERT INTO shop.t VALUES ({run + 1}, 'run{run}')")
            r = run_cli("binlog", "ship", "--policy", str(policy), "--once", "--server-id", "559",
                        "--json", env=env)
            assert r.returncode == 0, r.stderr
    finally:
        src.destroy()
    raw = raw_store(s3_url)
    def span(key: str) -> int:
        a, b = key.rsplit("/", 1)[1].split(".", 1)[0].split("-")
        return int(b) - int(a)

    seg_keys = sorted(i.key for i in raw.list("") if i.key.endswith(".binlog.zst") and span(i.key))
    assert len(seg_keys) == 3, seg_keys
    middle = seg_keys[1]
    data = bytearray(raw.get_bytes(middle))
    data[len(data) // 2] ^= 0x01
    raw.put(middle, bytes(data))
    t0 = time.monotonic()
    r = run_cli("restore", "--policy", str(policy), "--latest", "--target", target.url, env=env,
                timeout=90)
    assert r.returncode == 5, r.stderr
    assert middle in r.stderr and "partial" in r.stderr
    assert time.monotonic() - t0 < 60


def test_to_time_just_before_a_second_never_replays_that_seconds_commits(tmp_path, target):
    """Issue 14, defect 3 with a real server: --to-time S.999999999Z applies the commits of second
    S and none of second S+1."""
    with source_with_repo("fraction-src", tmp_path / "repo") as (src, env):
        src.sql("CREATE DATABASE shop")
        src.sql("CREATE TABLE shop.t (id INT PRIMARY KEY, v VARCHAR(20))")
        assert run_cli("snapshot", "--json", env=env).returncode == 0
        cross_second()  # early in a fresh second
        src.sql("INSERT INTO shop.t VALUES (1, 'before')")
        second = int(time.time())
        cross_second()
        src.sql("INSERT INTO shop.t VALUES (2, 'accident')")
        assert int(time.time()) == second + 1
        r = run_cli("binlog", "ship", "--once", "--server-id", "560", "--json", env=env)
        assert r.returncode == 0, r.stderr
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)) + ".999999999Z"
    r = run_cli("restore", "--to-time", stamp, "--target", target.url, "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert target.sql("SELECT id FROM shop.t ORDER BY id") == [(1,)]
