"""verify on a real repository: a snapshot of a private mariadbd and its shipped binlog.

One repository is built per module (a real snapshot, three `binlog ship --once` rounds), then
each test damages its own copy: a flipped byte, a missing segment, a missing chunk.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import boto3
import pytest

from backupkit.mysql.sandbox import Sandbox
from backupkit.repo.catalog import Catalog
from backupkit.storage import open_store
from tests.support import run_cli
from tests.support.shipping import cli_env


def _build(sb: Sandbox, url: str, env_extra: dict[str, str] | None = None, create: bool = True) -> None:
    env = cli_env(sb, url, **(env_extra or {}))
    if create:
        sb.sql("CREATE DATABASE shop")
        sb.sql("CREATE TABLE shop.orders (id INT PRIMARY KEY, item VARCHAR(40), qty INT)")
        sb.sql("INSERT INTO shop.orders SELECT seq, CONCAT('item', seq), seq % 7 FROM seq_1_to_3000",
               database="shop")
    r = run_cli("snapshot", "--json", env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    for round_ in range(3):
        sb.sql(f"UPDATE shop.orders SET qty = qty + 1 WHERE id % 3 = {round_}")
        r = run_cli("binlog", "ship", "--once", "--json", env=env, timeout=120)
        assert r.returncode == 0, r.stderr


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    """(sandbox, path of a local repository with 1 snapshot and >= 3 segments)."""
    sb = Sandbox(name="verify").start()
    repo = tmp_path_factory.mktemp("golden") / "repo"
    try:
        _build(sb, f"file://{repo}")
        yield sb, repo
    finally:
        sb.destroy()


@pytest.fixture
def repo(golden, tmp_path):
    """A private copy of the golden repository, and a function running verify on it."""
    sb, src = golden
    dst = tmp_path / "repo"
    shutil.copytree(src, dst)
    return dst


def _verify(repo: Path, *args: str):
    return run_cli("verify", *args, "--storage", f"file://{repo}")


def _error_lines(r) -> list[str]:
    assert "Traceback" not in r.stderr
    return [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]


def _catalog(repo: Path) -> Catalog:
    return Catalog(open_store(f"file://{repo}"))


def test_verify_all_passes_on_a_sound_repository(repo):
    r = _verify(repo, "--all", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["verified"] is True and out["problems"] == []
    cat = _catalog(repo)
    (sid,) = cat.sources()
    segs = cat.segments(sid)
    b = cat.backups()[0]
    assert out["objects"] == len(b.objects) + len(segs) >= 4
    assert out["bytes"] == b.stored_bytes + sum(s.object.size for s in segs)
    assert out["sources"][0]["holes"] == 0 and out["backups"][0]["ok"] is True
    # A single backup, by id: only its objects.
    r = _verify(repo, b.id, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["objects"] == len(b.objects)


def test_a_flipped_byte_is_exit_5_naming_the_object(repo):
    b = _catalog(repo).backups()[0]
    chunk = next(o for o in b.objects if "/data/" in o.key)
    path = repo / chunk.key
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    r = _verify(repo, "--all")
    assert r.returncode == 5
    lines = _error_lines(r)
    assert len(lines) == 1 and chunk.key in lines[0] and "checksum mismatch" in lines[0]
    assert "DAMAGED" in r.stdout
    r = _verify(repo, b.id, "--json")
    assert r.returncode == 5
    out = json.loads(r.stdout)
    assert out["ok"] is False and [p["key"] for p in out["problems"]] == [chunk.key]


def test_a_missing_segment_is_exit_5_naming_it(repo):
    cat = _catalog(repo)
    (sid,) = cat.sources()
    segs = cat.segments(sid)
    mid = segs[len(segs) // 2]
    assert 0 < segs.index(mid) < len(segs) - 1
    (repo / mid.key).unlink()
    (repo / mid.object.key).unlink()
    r = _verify(repo, "--all")
    assert r.returncode == 5
    lines = _error_lines(r)
    assert len(lines) == 1 and mid.key in lines[0] and "hole" in lines[0], lines


def test_a_missing_segment_object_is_exit_5_naming_it(repo):
    cat = _catalog(repo)
    (sid,) = cat.sources()
    seg = cat.segments(sid)[-1]
    (repo / seg.object.key).unlink()
    r = _verify(repo, "--all")
    assert r.returncode == 5
    lines = _error_lines(r)
    assert len(lines) == 1 and seg.object.key in lines[0] and "missing" in lines[0]


def test_a_missing_chunk_is_exit_5_naming_it(repo):
    b = _catalog(repo).backups()[0]
    chunk = [o for o in b.objects if "/data/" in o.key][-1]
    (repo / chunk.key).unlink()
    r = _verify(repo, b.id)
    assert r.returncode == 5
    lines = _error_lines(r)
    assert len(lines) == 1 and chunk.key in lines[0] and f"backup {b.id}" in lines[0]


def test_a_recorded_gap_is_a_note_not_a_problem(repo):
    from backupkit.repo.catalog import GapInfo

    cat = _catalog(repo)
    (sid,) = cat.sources()
    segs = cat.segments(sid)
    mid = segs[1]
    (repo / mid.key).unlink()
    (repo / mid.object.key).unlink()
    prev = segs[0]
    cat.record_gap(GapInfo(sid, prev.binlog_file, prev.end_pos, segs[2].binlog_file,
                           segs[2].start_pos, detected_at=1.0, reason="purged before shipping"))
    r = _verify(repo, "--all", "--json")
    assert r.returncode == 0, r.stdout
    out = json.loads(r.stdout)
    assert any("recorded gap" in n and "purged" in n for n in out["notes"])


def test_restore_test_loads_a_private_server_and_records_the_rto(repo):
    b = _catalog(repo).backups()[0]
    r = _verify(repo, b.id, "--restore-test", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    (t,) = out["restore_tests"]
    assert t["backup_id"] == b.id and t["rows"] == 3000 and t["checksums_compared"] == 1
    records = _catalog(repo).restore_records()
    assert records[-1]["backup_id"] == b.id and records[-1]["drill"] is True
    assert records[-1]["duration"] == t["duration_s"] > 0


def test_verify_on_s3_detects_a_flipped_byte(golden, moto, s3_url):
    sb, _ = golden
    env = {"BACKUPKIT_S3_ENDPOINT": moto.endpoint}
    _build(sb, s3_url, env, create=False)  # a second repository, on the S3 server
    r = run_cli("verify", "--all", "--storage", s3_url, env=env)
    assert r.returncode == 0, r.stderr
    cat = Catalog(open_store(s3_url, create=False))
    seg = cat.segments(cat.sources()[0])[-1]
    bucket, prefix = s3_url[5:].split("/", 1)
    s3 = boto3.client("s3", endpoint_url=moto.endpoint, region_name="us-east-1")
    body = bytearray(s3.get_object(Bucket=bucket, Key=f"{prefix}/{seg.object.key}")["Body"].read())
    body[-1] ^= 0x80
    s3.put_object(Bucket=bucket, Key=f"{prefix}/{seg.object.key}", Body=bytes(body))
    r = run_cli("verify", "--all", "--storage", s3_url, env=env)
    assert r.returncode == 5
    lines = _error_lines(r)
    assert len(lines) == 1 and seg.object.key in lines[0]


def test_a_damaged_manifest_is_exit_5_naming_it(repo):
    cat = _catalog(repo)
    (sid,) = cat.sources()
    seg = cat.segments(sid)[1]
    path = repo / seg.key
    path.write_text(path.read_text().replace('"events": ', '"events": 1'))
    r = _verify(repo, "--all")
    assert r.returncode == 5
    lines = _error_lines(r)
    assert any(seg.key in ln and "checksum mismatch in manifest" in ln for ln in lines), lines


def test_a_damaged_rollup_is_reported_and_rebuilt_with_repair(repo):
    """Issue 14: verify exited 0 with a damaged roll-up; now exit 5 naming it, and --repair."""
    cat = _catalog(repo)
    (sid,) = cat.sources()
    binlog_file = cat.segments(sid)[0].binlog_file
    key = cat.roll_up_file(sid, binlog_file)
    assert key is not None
    sound = _verify(repo, "--all", "--json")
    assert sound.returncode == 0, sound.stderr
    (repo / key).write_bytes(b"\x28\xb5\x2f\xfd garbage")
    r = _verify(repo, "--all")
    assert r.returncode == 5
    lines = _error_lines(r)
    assert len(lines) == 1 and key in lines[0] and "--repair" in lines[0]
    r = _verify(repo, "--all", "--repair", "--json")
    assert r.returncode == 0, r.stderr
    assert any(key in n and "rebuilt" in n for n in json.loads(r.stdout)["notes"])
    assert [s.to_dict() for s in Catalog(open_store(f"file://{repo}")).segments(sid)] == \
        [s.to_dict() for s in cat.segments(sid)]
    body = _catalog(repo).read_rollup(key)
    assert len(body["segments"]) == len([s for s in cat.segments(sid) if s.binlog_file == binlog_file])
    assert _verify(repo, "--all").returncode == 0


def test_a_garbage_or_copied_manifest_is_skipped_with_a_warning_and_fails_verify(repo, golden):
    """Issue 14: one garbage manifest.json made list, --latest and --to-time exit 5, and a manifest
    copied under another id listed twice."""
    sb, _ = golden
    real = _catalog(repo).backups()[0]
    garbage = f"backups/{real.id[:-4]}dead/manifest.json"
    copied = f"backups/{real.id[:-4]}c0de/manifest.json"
    original = (repo / f"backups/{real.id}/manifest.json").read_bytes()
    for key, data in ((garbage, b"{not json"), (copied, original)):
        (repo / key).parent.mkdir(parents=True)
        (repo / key).write_bytes(data)
    env = cli_env(sb, f"file://{repo}")
    r = run_cli("list", "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert [b["id"] for b in json.loads(r.stdout)["backups"]] == [real.id]
    assert garbage in r.stderr and copied in r.stderr and "Traceback" not in r.stderr
    for moment in (["--latest"], ["--to-time", "2099-01-01T00:00:00Z"]):
        r = run_cli("restore", *moment, "--dry-run", "--json", env=env)
        assert r.returncode in (0, 2), r.stderr  # a plan, or "cannot reach": never exit 5
        assert garbage in r.stderr
        if moment == ["--latest"]:
            assert r.returncode == 0 and real.id in r.stdout
    r = run_cli("restore", real.id[:-4] + "c0de", "--dry-run", env=env)
    assert r.returncode == 5 and "names backup" in r.stderr
    r = _verify(repo, "--all", "--json")
    assert r.returncode == 5
    assert {p["key"] for p in json.loads(r.stdout)["problems"]} == {garbage, copied}


def test_a_second_verify_reads_only_what_is_new_and_all_reads_everything(repo):
    first = json.loads(_verify(repo, "--json").stdout)
    assert first["verified"] and first["full"] and first["objects"] > 0
    second = json.loads(_verify(repo, "--json").stdout)
    assert second["verified"] and not second["full"]
    assert second["objects"] == 0 and second["skipped"] == first["objects"]
    every = json.loads(_verify(repo, "--all", "--json").stdout)
    assert every["full"] and every["objects"] == first["objects"]
