"""The docs and the Dockerfile stay in step with the code."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

from backupkit.cli.docgen import render

ROOT = Path(__file__).resolve().parents[3]

DOCKER_INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT",
                       "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK",
                       "SHELL", "MAINTAINER"}


def test_cli_reference_is_current():
    assert (ROOT / "docs" / "cli.md").read_text() == render(), \
        "docs/cli.md is stale: run 'python -m backupkit.cli.docgen > docs/cli.md'"


def _docker_instructions(text: str) -> list[tuple[str, str]]:
    """Parse a Dockerfile into (instruction, arguments), joining continuation lines."""
    out, buf = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, args = buf.partition(" ")
        out.append((word, args.strip()))
        buf = ""
    assert buf == "", "a continuation line runs off the end"
    return out


def test_dockerfile_parses_and_references_only_existing_files():
    ins = _docker_instructions((ROOT / "Dockerfile").read_text())
    assert ins and ins[0][0] == "FROM"
    stages = set()
    for word, args in ins:
        assert word in DOCKER_INSTRUCTIONS, f"unknown instruction {word}"
        assert word.upper() == word
        if word == "FROM":
            parts = args.split()
            if len(parts) == 3 and parts[1].upper() == "AS":
                stages.add(parts[2])
        if word == "COPY":
            parts = args.split()
            srcs = [p for p in parts[:-1] if not p.startswith("--")]
            if any(p.startswith("--from=") for p in parts):
                assert parts[0].split("=", 1)[1] in stages
                continue
            for src in srcs:
                assert (ROOT / src).exists(), f"COPY source {src} does not exist"
    assert len([w for w, _ in ins if w == "FROM"]) >= 2, "multi-stage"
    user = [a for w, a in ins if w == "USER"]
    assert user and user[-1] not in ("root", "0")
    entry = [a for w, a in ins if w == "ENTRYPOINT"][-1]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert re.findall(r'"([^"]+)"', entry)[0] in scripts
    runs = " ".join(a for w, a in ins if w == "RUN")
    assert "mariadb-client" in runs  # replay needs mariadb and mariadb-binlog


def test_dockerfile_healthcheck_is_a_real_command():
    ins = _docker_instructions((ROOT / "Dockerfile").read_text())
    hc = [a for w, a in ins if w == "HEALTHCHECK"][-1]
    cmd = re.findall(r'"([^"]+)"', hc.split("CMD", 1)[1])
    assert cmd[0] == "backupkit"
    # Every option it uses exists: ask the real command for its help.
    r = subprocess.run([sys.executable, "-m", "backupkit", *cmd[1:3], "--help"],
                       capture_output=True, text=True, env={**__import__("os").environ, "COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    for opt in [c for c in cmd[3:] if c.startswith("--") and c not in ("--policy",)]:
        assert opt in r.stdout, f"HEALTHCHECK uses {opt}, which '{' '.join(cmd[:3])}' does not have"


def test_readme_starts_with_the_two_commands_that_ci_runs():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```\n(.*?)\n```", readme, re.S)
    assert blocks[0].strip() == "bash .ci/install && python3 -m backupkit demo"
    assert blocks[1].strip() == "bash .ci/install && python3 -m pytest -q"
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash .ci/install" in ci
    assert shlex.split(blocks[1])[-3:] == ["-m", "pytest", "-q"]
    assert "python3 -m pytest -q" in ci


def test_every_doc_link_in_the_readme_exists():
    readme = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(([^)#]+)\)", readme):
        if target.startswith("http") or target == "bench/results/latest.md":
            continue
        assert (ROOT / target).exists(), target
