"""The shipped policies/*.toml work: each one, pointed at a private mariadbd (and the S3 server for
the S3 policy) but otherwise unchanged, passes `policy check`, and every strategy it schedules
runs once through `schedule exec`, as cron and the daemon run it."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from tests.support import run_cli

POLICIES = Path(__file__).resolve().parents[2] / "policies"


def to_toml(data: dict, prefix: str = "") -> str:
    """Enough of a TOML writer for policy files."""
    def value(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(str(v))

    lines, tables = [], []
    for k, v in data.items():
        if isinstance(v, dict):
            tables.append((k, v))
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            for item in v:
                lines.append(f"\n[[{prefix}{k}]]\n" + to_toml(item))
        else:
            lines.append(f"{k} = {value(v)}")
    out = "\n".join(lines) + "\n"
    for k, v in tables:
        out += f"\n[{prefix}{k}]\n" + to_toml(v, f"{prefix}{k}.")
    return out


def point_at(example: Path, sb, tmp_path: Path, storage: dict) -> Path:
    """The example with its source, storage and local paths replaced, everything else kept."""
    data = tomllib.loads(example.read_text())
    src = data.get("source", {})
    data["source"] = {k: v for k, v in src.items()
                      if k not in ("url", "password_file", "stop_command", "datadir", "pid_file",
                                   "start_command")}
    data["source"].update(url=sb.url, datadir=str(sb.datadir), pid_file=str(sb.pid_file))
    if "start_command" in src:
        data["source"]["start_command"] = sb.start_command()
    data["storage"] = storage
    if "staging" in data.get("cold", {}):
        data["cold"]["staging"] = str(tmp_path / "staging")
    data.setdefault("schedule", {}).update(status_file=str(tmp_path / "status.json"),
                                           lock_dir=str(tmp_path / "locks"), log_dir=str(tmp_path / "log"))
    out = tmp_path / example.name
    out.write_text(to_toml(data))
    return out


def _strategies(policy: Path) -> dict:
    return tomllib.loads(policy.read_text())["strategies"]


@pytest.mark.parametrize("name", ["local.toml", "s3-all-strategies.toml", "cold-only.toml",
                                  "physical.toml"])
def test_example_policy_runs_every_strategy_it_schedules(name, mariadb, tmp_path, request):
    example = POLICIES / name
    assert run_cli("policy", "check", "--offline", str(example)).returncode == 0
    env = {}
    if "s3" in name:
        s3_url = request.getfixturevalue("s3_url")
        moto = request.getfixturevalue("moto")
        storage = {"url": s3_url, "endpoint_url": moto.endpoint, "region": "us-east-1",
                   "addressing_style": "path"}
        env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    else:
        storage = {"url": f"file://{tmp_path / 'repo'}"}
    mariadb.sql("CREATE DATABASE app")
    mariadb.sql("CREATE TABLE app.t (id INT PRIMARY KEY, v VARCHAR(20))")
    mariadb.sql("INSERT INTO app.t VALUES (1, 'a'), (2, 'b')")
    policy = point_at(example, mariadb, tmp_path, storage)
    r = run_cli("policy", "check", str(policy), "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["source"]["log_bin"]
    r = run_cli("policy", "plan", str(policy), "--json", env=env)
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    want = _strategies(policy)
    assert {s["strategy"] for s in plan["strategies"]} == set(want)
    for strategy in ("cold", "snapshot", "snapshot_incremental", "binlog", "binlog_compact",
                     "binlog_purge", "verify", "prune"):
        if strategy not in want:
            continue
        if strategy == "binlog":
            r = run_cli("binlog", "ship", "--once", "--policy", str(policy), env=env, timeout=120)
            assert r.returncode == 0, r.stderr
            continue
        mariadb.sql(f"INSERT INTO app.t VALUES ({len(strategy) * 10}, '{strategy}')")
        r = run_cli("schedule", "exec", strategy, "--policy", str(policy), "--json", env=env, timeout=300)
        assert r.returncode == 0, r.stderr + r.stdout
        rec = json.loads(r.stdout.strip().splitlines()[-1])
        assert rec["strategy"] == strategy and rec["result"] == "ok", rec
        if strategy in ("cold", "snapshot", "snapshot_incremental"):
            assert rec["backup_id"] and rec["stored_bytes"] > 0
        if strategy == "cold":
            assert rec["details"]["downtime_s"] > 0
    status = run_cli("schedule", "status", "--policy", str(policy), "--json", env=env)
    assert status.returncode == 0
    jobs = json.loads(status.stdout)["jobs"]
    assert all(jobs[s]["last"]["result"] == "ok" for s in want if s != "binlog")
    if name == "physical.toml":  # the hourly job extended the weekly full backup
        r = run_cli("list", "--json", "--policy", str(policy), env=env)
        backups = {b["id"]: b for b in json.loads(r.stdout)["backups"]}
        inc = jobs["snapshot_incremental"]["last"]["backup_id"]
        assert backups[inc]["kind"] == "physical"
        assert jobs["snapshot"]["last"]["backup_id"] in backups
        r = run_cli("snapshot", "--engine", "physical", "--incremental", "--json", "--policy", str(policy),
                    env=env, timeout=300)
        assert json.loads(r.stdout)["chain"] == [jobs["snapshot"]["last"]["backup_id"], inc,
                                                 json.loads(r.stdout)["backup_id"]]
    if name == "cold-only.toml":  # the restore test of a cold backup: a private server on it
        r = run_cli("verify", "--all", "--restore-test", "--json", "--policy", str(policy), env=env,
                    timeout=300)
        assert r.returncode == 0, r.stderr + r.stdout
        (t,) = json.loads(r.stdout)["restore_tests"]
        assert t["kind"] == "cold" and t["server_started"] and t["tables"] >= 1 and t["duration_s"] > 0
        r = run_cli("policy", "plan", str(policy), "--json", env=env)
        cold = next(s for s in json.loads(r.stdout)["strategies"] if s["strategy"] == "cold")
        assert cold["rto_s"] == t["duration_s"] and cold["downtime_s"] > 0
    else:
        r = run_cli("verify", "--all", "--policy", str(policy), env=env)
        assert r.returncode == 0, r.stderr
