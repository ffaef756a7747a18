"""The health of each storage target of a mirrored repository, in the status and the metrics:
a target missing objects is behind (and recovers after `repo sync`), a lost one is down."""

from __future__ import annotations

import json
import shutil
import time

from prometheus_client.parser import text_string_to_metric_families

from tests.support import run_cli


def _targets(env) -> tuple[dict, dict]:
    r = run_cli("status", "--json", env=env)
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    m = run_cli("metrics", env=env)
    assert m.returncode == 0, m.stderr
    got = {(s.name, s.labels.get("target")): s.value for f in text_string_to_metric_families(m.stdout)
           for s in f.samples if "target" in s.labels}
    return st, got


def test_target_behind_then_synced_then_lost(mariadb, tmp_path):
    a, b = tmp_path / "east", tmp_path / "west"
    policy = tmp_path / "mirror.toml"
    policy.write_text(f"""
name = "mirror"
[source]
url = "{mariadb.url}"
[storage]
[[storage.targets]]
name = "east"
url = "file://{a}"
[[storage.targets]]
name = "west"
url = "file://{b}"
[metrics]
target_lag_threshold = 0.5
""")
    env = {"BACKUPKIT_POLICY": str(policy)}
    mariadb.sql("CREATE DATABASE app")
    mariadb.sql("CREATE TABLE app.t (id INT PRIMARY KEY)")
    assert run_cli("snapshot", env=env).returncode == 0
    # west loses the backup's manifest: it lags behind east
    (manifest,) = list((b / "backups").glob("*/manifest.json"))
    manifest.unlink()
    time.sleep(1.0)
    st, got = _targets(env)
    rows = {t["name"]: t for t in st["repository"]["targets"]}
    assert rows["west"]["missing_objects"] == 1 and rows["west"]["lag_seconds"] >= 0.5
    assert rows["east"]["missing_objects"] == 0
    assert [p["target"] for p in st["problems"] if p["kind"] == "target_behind"] == ["west"]
    assert got[("backupkit_target_up", "west")] == 1
    assert got[("backupkit_target_missing_objects", "west")] == 1
    assert run_cli("repo", "sync", env=env).returncode == 0
    st, got = _targets(env)
    assert not [p for p in st["problems"] if p["kind"] == "target_behind"]
    assert got[("backupkit_target_lag_seconds", "west")] == 0
    # west is lost
    shutil.rmtree(b)
    st, got = _targets(env)
    assert got[("backupkit_target_up", "west")] == 0 and got[("backupkit_target_up", "east")] == 1
    assert any(p["kind"] == "target_behind" and "unreachable" in p["message"] for p in st["problems"])
