"""`backupkit repo migrate` through the real CLI: a format-1 repository (index entries next to their
data, as backupkit wrote them before format 2) is refused with one line naming the command, then
migrated, then listed, planned and verified as a format-2 one."""

from __future__ import annotations

import json

from backupkit.repo import layout
from backupkit.repo.catalog import Catalog, SegmentInfo, encode_manifest
from backupkit.storage.local import LocalStore
from tests.support import run_cli
from tests.support.scale import SOURCE, build_repository, no_fsync


def _as_format1(store: LocalStore) -> int:
    """Rewrite a format-2 repository as format 1 wrote it: each entry (naming its data at the old
    key) and its data next to each other under binlog/<src>/<file>/, no head, no roll-up."""
    cat = Catalog(store)
    n = 0
    for seg in cat._segments_listed(SOURCE):
        old = (f"binlog/{layout.enc(SOURCE)}/{layout.enc(seg.binlog_file)}/"
               f"{seg.start_pos:012d}-{seg.end_pos:012d}")
        store.put(old + ".binlog.zst", store.get_bytes(seg.object.key))
        store.delete([seg.object.key, seg.key])
        seg.object.key, seg.format = old + ".binlog.zst", 1
        store.put(old + ".json", encode_manifest(seg.to_dict()))
        n += 1
    store.delete([i.key for i in store.list(layout.rollup_prefix(SOURCE))] + [layout.binlog_head(SOURCE)])
    store.put(layout.REPO_CONFIG, encode_manifest({**cat.repo_config(), "format": 1}))
    return n


def test_a_format1_repository_is_refused_then_migrated_by_the_cli(tmp_path):
    store = LocalStore(tmp_path / "repo")
    with no_fsync():
        build_repository(store, 40, per_file=15, with_data=True)
    want = [s.to_dict() for s in Catalog(store)._segments_listed(SOURCE)]
    n = _as_format1(store)
    url = f"file://{tmp_path / 'repo'}"
    r = run_cli("--storage", url, "list", "--json")
    assert r.returncode == 2 and "format 1" in r.stderr and "backupkit repo migrate" in r.stderr, r.stderr
    assert len([line for line in r.stderr.strip().splitlines() if line.strip()]) <= 2  # one line (+ hint)
    dry = run_cli("--storage", url, "repo", "migrate", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["entries"] == n and Catalog(store).repo_config()["format"] == 1
    r = run_cli("--storage", url, "repo", "migrate", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["from_format"], out["to_format"], out["entries"], out["removed"]) == (1, 2, n, n)
    got = Catalog(store).segments(SOURCE)
    assert [s.start_pos for s in got] == [d["start_pos"] for d in want]
    assert all(s.object.key.startswith(f"binlog/{SOURCE}/binlog.") for s in got)  # data in place
    listing = run_cli("--storage", url, "list", "--json")
    assert listing.returncode == 0, listing.stderr
    assert sum(c["segments"] for c in json.loads(listing.stdout)["binlog_coverage"]) == n
    plan = run_cli("--storage", url, "restore", "--latest", "--dry-run", "--json")
    assert plan.returncode == 0, plan.stderr
    info = run_cli("--storage", url, "repo", "info", "--json")
    assert json.loads(info.stdout)["format"] == 2 and json.loads(info.stdout)["totals"]["segments"] == n
    again = run_cli("--storage", url, "repo", "migrate", "--json")
    assert json.loads(again.stdout)["entries"] == 0
    SegmentInfo.from_dict(Catalog(store).read_manifest(got[0].key))  # entries readable as they are
