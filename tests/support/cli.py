"""The CLI run in-process (backupkit.cli.app.main), for many quick calls: exit code, stdout, stderr."""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    def error_lines(self) -> list[str]:
        return [ln for ln in self.stderr.splitlines() if ln.strip()]


def run_cli_inprocess(*args: str, env: dict[str, str] | None = None) -> CliResult:
    """main(args) with stdout/stderr captured and env applied for the call only."""
    from backupkit.cli.app import main

    saved = {k: os.environ.get(k) for k in (env or {})}
    out, err = io.StringIO(), io.StringIO()
    try:
        os.environ.update(env or {})
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return CliResult(code, out.getvalue(), err.getvalue())
