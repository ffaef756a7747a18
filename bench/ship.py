"""Binlog shipping: raw throughput against mariadb-binlog, and the loss window under steady load.

1. Throughput: a ~50 MiB binlog file (100k single-row UPDATEs in 1,000 transactions; --quick:
   a tenth) read from the server. `mariadb-binlog --read-from-remote-server --raw` writes it to a
   local file; backupkit's shipper streams it into a local repository as compressed, committed
   segments. Best of three runs each. backupkit's time is from the start of Shipper.run()
   (connect, lease, catalog) until the last segment is durable; its interpreter start-up is
   reported separately. Goal: at least 0.7x mariadb-binlog's throughput.
2. Loss window: two writer processes commit single-row transactions at a steady ~2,000/s in
   total while the shipper runs with the default 1 s sync interval. For every commit, the loss
   window is the time from the commit's acknowledgement to the moment the segment holding it was
   committed to storage (the shipper reports each commit). p50, p99 and max, on local storage and
   on the S3 server (moto_server). Goal: p99 <= 1.5 s.
3. CPU: the shipper process's user+system CPU time during the load, as a share of one core.
   Goal: at most 25%.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, main_for, measure, moto_bucket, row, stop_all  # noqa: E402

MIB = 1 << 20

SHIP_ONCE = r'''
import json, resource, sys, time
sys.path.insert(0, {root!r})
t_import = time.perf_counter()
from backupkit.mysql.connection import ConnSpec
from backupkit.storage import open_store
from backupkit.strategies.binlog import Shipper, ShipOptions
port, file, url = int(sys.argv[1]), sys.argv[2], sys.argv[3]
opts = ShipOptions(from_position=(file, 4), until_current=True)
sh = Shipper(open_store(url), ConnSpec(host="127.0.0.1", port=port, user="root"), opts,
             notify=lambda m: None)
t = time.perf_counter()
r = sh.run()
print(json.dumps({{"seconds": time.perf_counter() - t, "bytes": r.bytes, "stored": r.stored_bytes,
                  "segments": r.segments}}))
'''

SHIPPER = r'''
import json, signal, sys, time
sys.path.insert(0, {root!r})
from backupkit.mysql.connection import ConnSpec
from backupkit.storage import open_store
from backupkit.strategies.binlog import Shipper, ShipOptions
port, url = int(sys.argv[1]), sys.argv[2]
sh = Shipper(open_store(url), ConnSpec(host="127.0.0.1", port=port, user="root"),
             ShipOptions(from_current=True), notify=lambda m: print(json.dumps({{"msg": m}}), flush=True))
def committed(info):
    print(json.dumps({{"first": info.gtid_first, "last": info.gtid_last, "at": time.time(),
                      "tx": info.transactions}}), flush=True)
sh.on_commit = committed
signal.signal(signal.SIGTERM, sh.stop)
sh.run()
'''

WRITER = r'''
import json, sys, time
import pymysql
from pymysql.constants import CLIENT
port, rate, seconds, out = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
conn = pymysql.connect(host="127.0.0.1", port=port, user="root", autocommit=True,
                       client_flag=CLIENT.MULTI_STATEMENTS)
cur = conn.cursor()
rows = []
start = time.monotonic()
i = 0
while True:
    now = time.monotonic()
    if now - start >= seconds:
        break
    due = start + i / rate
    if due > now:
        time.sleep(due - now)
    cur.execute("INSERT INTO bench.load (v) VALUES (REPEAT('x', 100)); SELECT @@last_gtid")
    cur.nextset()
    gtid = cur.fetchone()[0]
    rows.append((gtid, time.time()))
    i += 1
with open(out, "w") as fh:
    json.dump({{"commits": rows, "seconds": time.monotonic() - start}}, fh)
'''


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _make_binlog(sb, updates: int) -> str:
    """A closed binlog file holding `updates` single-row UPDATEs in transactions of 100."""
    sb.sql("CREATE DATABASE IF NOT EXISTS sb")
    sb.sql("CREATE TABLE IF NOT EXISTS sb.t (id INT PRIMARY KEY, k INT, c CHAR(120), pad CHAR(60))")
    sb.sql("INSERT IGNORE INTO sb.t SELECT seq, seq, REPEAT('c', 120), REPEAT('p', 60) "
           "FROM seq_1_to_100000", database="sb")
    sb.sql("FLUSH BINARY LOGS")
    file = sb.sql("SHOW MASTER STATUS")[0][0]
    conn = sb.connect(database="sb")
    with conn.cursor() as cur:
        for tx in range(updates // 100):
            cur.execute("BEGIN")
            for j in range(100):
                cur.execute("UPDATE t SET k = k + 1 WHERE id = %s", ((tx * 100 + j) % 100000 + 1,))
            cur.execute("COMMIT")
    conn.close()
    sb.sql("FLUSH BINARY LOGS")
    return file


def _throughput(sb, tmp: Path, quick: bool) -> list[dict]:
    file = _make_binlog(sb, 10_000 if quick else 100_000)
    size = (sb.datadir / file).stat().st_size
    mb = size / MIB
    raw_dir = tmp / "raw"
    raw_dir.mkdir()
    time.sleep(3.0)  # let the server settle after the load that wrote the binlog
    ref = []
    ours = []
    child = SHIP_ONCE.format(root=str(ROOT))
    for n in range(3 if quick else 5):  # alternate, so that noise hits both alike; best of each
        m = measure(["mariadb-binlog", "--read-from-remote-server", "--raw", "--host=127.0.0.1",
                     f"--port={sb.port}", "--user=root", f"--result-file={raw_dir}/", file])
        if m.returncode:
            raise RuntimeError(m.stderr)
        ref.append(m)
        url = f"file://{tmp / f'repo-{n}'}"
        m = measure([sys.executable, "-c", child, str(sb.port), file, url])
        if m.returncode:
            raise RuntimeError(m.stderr)
        out = json.loads(m.stdout.strip().splitlines()[-1])
        if out["bytes"] < size - 4:  # the file, plus the head of the next one
            raise RuntimeError(f"shipped {out['bytes']} bytes of {size - 4}")
        ours.append((out["seconds"], m, out))
    ref_best = min(ref, key=lambda m: m.wall)
    best_s, best_m, best_out = min(ours, key=lambda x: x[0])
    ref_rate = mb / ref_best.wall
    our_rate = mb / best_s
    ratio = our_rate / ref_rate
    return [
        row("ship", f"throughput, {mb:.0f} MiB binlog (mariadb-binlog --raw {ref_rate:.0f} MiB/s)",
            our_rate, "MiB/s", ">= 0.7x mariadb-binlog --raw", ratio, ratio >= 0.7),
        row("ship", "throughput: mariadb-binlog --raw (reference)", ref_rate, "MiB/s"),
        row("ship", "throughput: process wall incl. Python start-up", mb / best_m.wall, "MiB/s",
            "info", (mb / best_m.wall) / ref_rate, None),
        row("ship", "throughput: shipper peak RSS", best_m.peak_rss_mib, "MiB", "info (16 MiB segments)"),
        row("ship", "throughput: mariadb-binlog peak RSS", ref_best.peak_rss_mib, "MiB"),
        row("ship", "throughput: compression ratio", best_out["bytes"] / max(1, best_out["stored"]), "x"),
    ]


def _percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


def _compaction_loop(url: str, tmp: Path, every: float, stop) -> dict:
    """`binlog compact` with the levels of LEVELS_POLICY every `every` seconds until stop is set
    (one process a run, as the scheduler starts it); what the runs merged and deleted."""
    policy = tmp / "levels.toml"
    policy.write_text(LEVELS_POLICY)
    done = {"runs": 0, "merged": 0, "deleted": 0, "errors": []}
    while not stop.wait(every):
        m = measure(["backupkit", "--policy", str(policy), "binlog", "compact", "--storage", url, "--json"])
        if m.returncode:
            done["errors"].append(m.stderr[-500:])
            continue
        for res in json.loads(m.stdout)["sources"]:
            done["merged"] += len(res["merged"])
            done["deleted"] += res["deleted"]
        done["runs"] += 1
    return done


def _loss_window(sb, name: str, url: str, tmp: Path, quick: bool, rate: float, env: dict,
                 compact_every: float = 0.0) -> list[dict]:
    sb.sql("CREATE DATABASE IF NOT EXISTS bench")
    sb.sql("CREATE TABLE IF NOT EXISTS bench.load (id BIGINT PRIMARY KEY AUTO_INCREMENT, v TEXT)")
    seconds = 6.0 if quick else 20.0
    log_path = tmp / f"shipper-{name}.jsonl"
    with open(log_path, "w") as log:
        shipper = subprocess.Popen([sys.executable, "-c", SHIPPER.format(root=str(ROOT)), str(sb.port), url],
                                   stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env})
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and '"first"' not in log_path.read_text():
            if shipper.poll() is not None:
                raise RuntimeError(f"shipper exited: {log_path.read_text()[-2000:]}")
            time.sleep(0.1)
        time.sleep(1.0)
        stop = threading.Event()
        compaction: dict = {}
        loop = threading.Thread(target=lambda: compaction.update(_compaction_loop(url, tmp, compact_every,
                                                                                  stop)), daemon=True)
        if compact_every:
            loop.start()
        cpu0, t0 = _cpu_seconds(shipper.pid), time.monotonic()
        writers = []
        for w in range(2):
            out = tmp / f"writer-{name}-{w}.json"
            writers.append((subprocess.Popen([sys.executable, "-c", WRITER.format(), str(sb.port),
                                              str(rate / 2), str(seconds), str(out)]), out))
        for p, _ in writers:
            p.wait()
        cpu1, t1 = _cpu_seconds(shipper.pid), time.monotonic()
        stop.set()
        if compact_every:
            loop.join(300)
        time.sleep(3.0)
        peak = _peak_rss_mib(shipper.pid)
    finally:
        shipper.send_signal(signal.SIGTERM)
        try:
            shipper.wait(60)
        except subprocess.TimeoutExpired:
            shipper.kill()
    commits: list[tuple[str, float]] = []
    for _, out in writers:
        data = json.loads(out.read_text())
        commits += [tuple(c) for c in data["commits"]]
    segs = []
    for line in log_path.read_text().splitlines():
        if line.startswith("{") and '"first"' in line:
            segs.append(json.loads(line))
    ranges = sorted((int(s["first"].rsplit("-", 1)[1]), int(s["last"].rsplit("-", 1)[1]), s["at"])
                    for s in segs if s["first"])
    import bisect

    starts = [r[0] for r in ranges]
    losses = []
    missing = 0
    for gtid, t_commit in commits:
        seq = int(gtid.rsplit("-", 1)[1])
        i = bisect.bisect_right(starts, seq) - 1
        if i < 0 or ranges[i][1] < seq:
            missing += 1
            continue
        losses.append(ranges[i][2] - t_commit)
    if missing:
        raise RuntimeError(f"{missing} commits not found in any shipped segment")
    achieved = len(commits) / (t1 - t0)
    cpu_share = (cpu1 - cpu0) / (t1 - t0)
    p50, p99, mx = (_percentile(losses, 50), _percentile(losses, 99), max(losses))
    label = f"{name}, {achieved:.0f} tx/s"
    extra = []
    if compact_every:
        if compaction.get("errors") or not compaction.get("runs"):
            raise RuntimeError(f"compaction failed: {compaction}")
        extra.append(row("ship", f"compaction during the load ({name})", compaction["runs"], "runs",
                         f"info: {compaction['merged']} objects merged, {compaction['deleted']} deleted"))
    return extra + [
        row("ship", f"loss window p50 ({label})", p50, "s", "info"),
        row("ship", f"loss window p99 ({label})", p99, "s", "p99 <= 1.5 s (sync interval 1 s)",
            None, p99 <= 1.5),
        row("ship", f"loss window max ({label})", mx, "s", "info"),
        row("ship", f"shipper CPU share ({label})", cpu_share * 100, "%", "<= 25% of one core",
            None, cpu_share <= 0.25),
        row("ship", f"shipper peak RSS ({name})", peak, "MiB", "info"),
        row("ship", f"achieved load ({name})", achieved, "tx/s", f"~{rate:.0f} tx/s",
            None, None),
        row("ship", f"loss window samples ({name})", len(losses), "tx",
            f"info: mean {statistics.mean(losses):.3f} s"),
    ]


#: Compaction levels run every COMPACT_EVERY seconds during the third loss-window run: windows of
#: 2 s and 10 s (the defaults are 1 min and 1 h), so that level 1 and level 2 both merge while the
#: shipper ships, 30 times as often as a one-minute level runs.
COMPACT_EVERY = 2.0
LEVELS_POLICY = """name = "bench-ship-levels"
[binlog]
compact_grace = "5s"
compact_levels = [{ window = "2s", after = "1s" }, { window = "10s", after = "2s" }]
"""


def run(quick: bool = False) -> list[dict]:
    from backupkit.mysql.sandbox import Sandbox

    env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    os.environ.update(env)
    tmp = Path(tempfile.mkdtemp(prefix="bk-bench-ship-"))
    rows: list[dict] = []
    sb = Sandbox(name="bench-ship", extra_args=["--innodb-flush-log-at-trx-commit=2", "--sync-binlog=0"])
    try:
        sb.start()
        rows += _throughput(sb, tmp, quick)
        rate = 2000.0
        rows += _loss_window(sb, "local", f"file://{tmp / 'repo-load'}", tmp, quick, rate, {})
        with moto_bucket(env) as (moto, bucket):
            for name, prefix, every in (("s3", "bk", 0.0), ("s3, compaction levels every 2 s", "lv",
                                                              COMPACT_EVERY)):
                sb.sql("DROP DATABASE IF EXISTS bench")
                rows += _loss_window(sb, name, f"s3://{bucket}/{prefix}?endpoint={moto.endpoint}", tmp,
                                     quick, rate, env, compact_every=every)
    finally:
        stop_all([], [sb], tmp)
    return rows


if __name__ == "__main__":
    main_for(run)
