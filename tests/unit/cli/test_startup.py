"""A CLI call imports only what its command needs (issue 17: the fixed cost of a call), and the
plain defaults it reads without a policy file are the policy models' own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from backupkit.config import Policy
from backupkit.settings import DEFAULTS, PolicyDefaults, Settings

ROOT = Path(__file__).resolve().parents[3]

#: Runs the CLI in a fresh interpreter, then prints which of the watched modules it imported.
_PROBE = """
import io, json, sys
from contextlib import redirect_stderr, redirect_stdout
from backupkit.cli.app import main
with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
    code = main(sys.argv[1:])
print(json.dumps({"code": code, "modules": sorted(m for m in sys.modules if m.split(".")[0] in
                  ("pydantic", "boto3", "botocore", "rich", "backupkit"))}))
"""


def _imports(tmp_path: Path, *args: str) -> tuple[int, set[str]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "BACKUPKIT_SOURCE": "mysql://root@127.0.0.1:1",  # nothing listens: fails at connect
           "BACKUPKIT_STORAGE": f"file://{tmp_path / 'repo'}"}
    for name in ("BACKUPKIT_POLICY", "BACKUPKIT_DEBUG"):
        env.pop(name, None)
    r = subprocess.run([sys.executable, "-c", _PROBE, *args], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    return out["code"], {m.split(".")[0] if not m.startswith("backupkit") else m for m in out["modules"]}


@pytest.mark.parametrize(("engine", "service"), [("logical", "backupkit.strategies.snapshot"),
                                                 ("physical", "backupkit.strategies.physical")])
def test_a_snapshot_without_a_policy_file_imports_neither_pydantic_nor_boto3(tmp_path, engine, service):
    code, modules = _imports(tmp_path, "snapshot", "--engine", engine, "--json")
    assert code != 0  # the source is unreachable: the path ran up to the service and failed there
    assert service in modules  # ... so the command's whole start-up was exercised
    assert not modules & {"pydantic", "boto3", "botocore"}, modules  # (rich: for the error line)
    # only the snapshot command's module of the CLI was imported, not every command's
    assert "backupkit.cli.snapshot" in modules
    assert not {"backupkit.cli.binlog", "backupkit.cli.schedule", "backupkit.cli.monitor"} & modules


def test_a_policy_file_is_still_validated_by_the_models(tmp_path):
    """The probe above sees pydantic when it is imported: with a policy file it is."""
    policy = tmp_path / "p.toml"
    policy.write_text('[snapshot]\nengine = "physical"\n')
    code, modules = _imports(tmp_path, "--policy", str(policy), "snapshot", "--json")
    assert code != 0 and "pydantic" in modules and "backupkit.strategies.physical" in modules
    policy.write_text('[snapshot]\nengine = "fast"\n')
    code, _ = _imports(tmp_path, "--policy", str(policy), "snapshot", "--json")
    assert code == 2


def test_the_plain_defaults_are_the_models_defaults():
    model = Policy()
    for key, value in DEFAULTS.items():
        if isinstance(value, dict):
            for name, default in value.items():
                assert getattr(getattr(model, key), name) == default, f"{key}.{name}"
        else:
            assert getattr(model, key) == value, key


def test_a_key_without_a_plain_default_is_read_from_the_model():
    values = PolicyDefaults(DEFAULTS)
    assert values.binlog.sync_interval == Policy().binlog.sync_interval
    assert values.source.stop_timeout == Policy().source.stop_timeout
    assert values.storage.primary() is None
    assert values.snapshot.databases == [] and values.snapshot.databases is not values.snapshot.databases


def test_settings_without_a_policy_file_read_the_defaults_and_build_the_model_on_demand(monkeypatch):
    for name in ("BACKUPKIT_POLICY", "BACKUPKIT_STORAGE", "BACKUPKIT_SOURCE"):
        monkeypatch.delenv(name, raising=False)
    st = Settings.resolve(None, None, None)
    assert st.loaded is None and st.storage_url is None
    assert st.source_url == Policy().source.url
    assert st.values.snapshot.engine == "logical"
    assert isinstance(st.policy, Policy) and st.values is st.policy  # built once, then used


def test_a_json_answer_and_the_version_import_no_rich(tmp_path):
    (tmp_path / "repo").mkdir()  # an empty repository: list answers
    code, modules = _imports(tmp_path, "list", "--json")
    assert code == 0 and "backupkit.cli.listing" in modules
    assert not modules & {"pydantic", "boto3", "botocore", "rich"}, modules
    code, modules = _imports(tmp_path, "--version")
    assert code == 0 and not modules & {"pydantic", "rich", "backupkit.cli.snapshot"}, modules


def test_a_restore_with_its_options_at_their_defaults_imports_no_pydantic(tmp_path):
    """typer coerces an option left at a number default (restore's --replica-wait 60.0) through
    pydantic unless the CLI answers it itself: 0.17 s of every restore."""
    code, modules = _imports(tmp_path, "restore", "20260101T000000Z-physical-abcd",
                             "--datadir", str(tmp_path / "data"), "--json")
    assert code != 0  # no such backup: the path ran up to reading the repository
    assert "backupkit.cli.restore" in modules
    assert "pydantic" not in modules, modules
