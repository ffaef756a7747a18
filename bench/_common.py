"""Shared bits of the benchmark scripts: child-process timing with peak RSS, result rows."""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _entry_point() -> str:
    """This interpreter's backupkit console script: a version manager's shim on PATH (pyenv's is a
    bash script) would add ~60 ms to every timed run of ours and none to the C tools'."""
    script = Path(sys.executable).parent / "backupkit"
    return str(script) if script.exists() else "backupkit"


BACKUPKIT = _entry_point()


def _compile_package() -> None:
    """Byte-compile backupkit as an installed wheel is: an editable install has no .pyc files, and
    with PYTHONDONTWRITEBYTECODE set (as on the development machine) every timed run would
    compile the package again (~60 ms) -- a cost no installed copy has."""
    import compileall

    compileall.compile_dir(str(ROOT / "backupkit"), quiet=2)


_compile_package()


@dataclass
class Measured:
    wall: float
    peak_rss_mib: float
    returncode: int
    stdout: str
    stderr: str


def measure(cmd: list[str] | str, env: dict[str, str] | None = None, shell: bool = False,
            stdin=None, stdout=None, cwd: str | None = None) -> Measured:
    """Run a command and return its wall time and the peak RSS of its process tree's largest member."""
    if isinstance(cmd, list) and cmd and cmd[0] == "backupkit":
        cmd = [BACKUPKIT, *cmd[1:]]
    t0 = time.perf_counter()
    r = subprocess.run(
        ["/usr/bin/time", "-f", "@@RSS %M", *(["/bin/sh", "-c", cmd] if shell else cmd)],
        env={**os.environ, **(env or {})}, stdin=stdin,
        stdout=stdout if stdout is not None else subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, cwd=cwd)
    wall = time.perf_counter() - t0
    rss_kib = 0.0
    err_lines = []
    for line in r.stderr.splitlines():
        if line.startswith("@@RSS "):
            rss_kib = float(line.split()[1])
        else:
            err_lines.append(line)
    return Measured(wall, rss_kib / 1024, r.returncode, r.stdout or "", "\n".join(err_lines))


@contextmanager
def moto_bucket(env: dict[str, str]):
    """A moto_server and a fresh bucket (its name); the credentials in env are exported."""
    from tests.support import MotoServer

    os.environ.update(env)
    moto = MotoServer().start()
    try:
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        moto.create_bucket(bucket)
        yield moto, bucket
    finally:
        moto.stop()


def stop_all(procs, sandboxes, *dirs: Path) -> None:
    """The end of a benchmark: shippers stopped, servers destroyed, scratch folders removed."""
    for p in procs:
        if p is not None and p.poll() is None:
            p.terminate()
            p.wait(60)
    for sb in sandboxes:
        sb.destroy()
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


def row(benchmark: str, metric: str, value: float, unit: str, goal: str = "",
        ratio: float | None = None, passed: bool | None = None) -> dict:
    return {"benchmark": benchmark, "metric": metric, "value": round(value, 3), "unit": unit,
            "goal": goal, "ratio": None if ratio is None else round(ratio, 3), "passed": passed}


def print_rows(rows: list[dict]) -> None:
    w = max((len(r["benchmark"]) + len(r["metric"]) for r in rows), default=20) + 3
    for r in rows:
        mark = "" if r["passed"] is None else ("PASS" if r["passed"] else "MISS")
        ratio = "" if r["ratio"] is None else f"ratio {r['ratio']:.2f}"
        name = f"{r['benchmark']}: {r['metric']}"
        print(f"{name:<{w}} {r['value']:>10.2f} {r['unit']:<6} {ratio:<12} {r['goal']:<40} {mark}")


def machine() -> dict:
    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "rss_self_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main_for(run) -> None:
    if {"-h", "--help"} & set(sys.argv[1:]):  # the script's docstring is its usage; run nothing
        print((sys.modules["__main__"].__doc__ or "").strip())
        return
    quick = "--quick" in sys.argv
    rows = run(quick=quick)
    print_rows(rows)
    if "--json" in sys.argv:
        print(json.dumps(rows, indent=2))
