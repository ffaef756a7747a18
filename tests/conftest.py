"""Fixtures: private mariadbd servers and a real S3 server process."""

from __future__ import annotations

import os
import signal
import uuid

import pytest

from backupkit.mysql.sandbox import Sandbox
from tests.support import MotoServer

os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture
def mariadb():
    """A fresh private mariadbd (log-bin, ROW), destroyed after the test."""
    sb = Sandbox(name="test").start()
    try:
        yield sb
    finally:
        sb.destroy()


@pytest.fixture
def mariadb_factory():
    """Make as many private servers as a test needs: factory(server_id=..., extra_args=[...])."""
    made: list[Sandbox] = []

    def make(**kw) -> Sandbox:
        sb = Sandbox(name="test", **kw)
        made.append(sb)
        return sb.start()

    yield make
    for sb in made:
        sb.destroy()


@pytest.fixture(scope="session")
def moto():
    """One moto_server process for the session."""
    server = MotoServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def regions():
    """Two S3 server processes, the regions east and west (a test may SIGSTOP one)."""
    east, west = MotoServer().start(), MotoServer().start()
    yield east, west
    for s in (east, west):
        if s.proc and s.proc.poll() is None:
            os.killpg(s.proc.pid, signal.SIGCONT)
        s.stop()


@pytest.fixture
def s3_url(moto, monkeypatch):
    """A fresh bucket on the S3 server and the storage URL of a prefix inside it."""
    bucket = f"bk-{uuid.uuid4().hex[:12]}"
    moto.create_bucket(bucket)
    monkeypatch.setenv("BACKUPKIT_S3_ENDPOINT", moto.endpoint)
    return f"s3://{bucket}/repo"


@pytest.fixture
def local_url(tmp_path):
    return f"file://{tmp_path / 'repo'}"


@pytest.fixture(params=["local", "s3"])
def store_url(request, tmp_path):
    """The same test against the local store and the S3 store."""
    if request.param == "local":
        return f"file://{tmp_path / 'repo'}"
    return request.getfixturevalue("s3_url")


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry))
    return out


@pytest.fixture(scope="session", autouse=True)
def _no_process_left_behind():
    """A safety net: whatever a failed test left running (a shipper, a server) is stopped."""
    yield
    import time

    left = _children(os.getpid())
    for pid in left:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(p in _children(os.getpid()) for p in left):
        time.sleep(0.1)
    for pid in _children(os.getpid()):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def spare():
    """Empty sandboxes (never installed) to restore a datadir into and start."""
    boxes: list[Sandbox] = []

    def make() -> Sandbox:
        sb = Sandbox(name="restore")
        (sb.base / "tmp").mkdir(parents=True, exist_ok=True)
        boxes.append(sb)
        return sb

    yield make
    for sb in boxes:
        sb.destroy()
