"""The pump that feeds mariadb-backup's stream to one zstd child per part starts no child once
stopped: a child started after stop() took its list would be left running or as a zombie."""
import os
import shutil
import time
from pathlib import Path

import pytest

from backupkit.strategies.physical.stream import StreamFailed, _Pump


def _children() -> set[int]:
    me, found = os.getpid(), set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == me:
                found.add(int(entry))
    return found


@pytest.mark.skipif(shutil.which("cat") is None, reason="needs cat")
def test_a_stopped_pump_starts_no_child_for_data_that_arrives_later(tmp_path):
    before = _children()
    r, w = os.pipe()
    pump = _Pump(r, ["cat"], 1 << 20, None, tmp_path / "log")
    pump.start()  # it waits for the stream's first bytes
    time.sleep(0.2)
    pump.stop()  # the storing side failed meanwhile
    os.write(w, b"x" * 4096)  # mariadb-backup goes on writing until it is killed
    os.close(w)
    pump.join(10)
    os.close(r)
    assert not pump.is_alive()
    assert isinstance(pump.error, StreamFailed)
    assert pump.procs == [] and _children() == before


def test_stop_kills_and_reaps_every_child_it_started(tmp_path):
    before = _children()
    r, w = os.pipe()
    pump = _Pump(r, ["sleep", "60"], 1 << 20, None, tmp_path / "log")
    os.write(w, b"x" * 100)
    pump.start()
    proc = pump.parts.get(timeout=10)
    assert proc is not None and proc.poll() is None
    pump.stop()
    os.close(w)
    pump.join(10)
    os.close(r)
    assert proc.returncode is not None  # reaped: no zombie left behind
    assert _children() == before
