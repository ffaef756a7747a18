"""Storage round trip: backupkit's streaming upload/download against boto3 upload_file, local and S3.

Measures a 200 MiB round trip of incompressible data of unknown length (a stream, not a file):
upload and download MiB/s and the peak RSS of each backupkit process, against the plain
`aws s3 cp` equivalent (boto3 upload_file / download_file of the same file) in the same run.
Goals (issue 2): peak RSS < 100 MiB; upload >= 0.8x boto3 upload_file.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, main_for, measure, row  # noqa: E402

MIB = 1 << 20

CHILD = r'''
import os, sys, time, hashlib
sys.path.insert(0, {root!r})
from backupkit.storage import open_store
from backupkit.repo.codec import put_object, iter_object, StoredObject
url, mode, path, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
store = open_store(url)
if mode == "up":
    def stream():
        with open(path, "rb") as fh:
            while True:
                b = fh.read(1 << 20)
                if not b:
                    return
                yield b
    t = time.perf_counter()
    obj = put_object(store, "bench/object", stream(), level=None)
    print(time.perf_counter() - t, obj.sha256, obj.size)
else:
    sha, n = sys.argv[5], int(sys.argv[6])
    t = time.perf_counter()
    total = 0
    for b in iter_object(store, StoredObject("bench/object", n, sha, n, "none")):
        total += len(b)
    assert total == size
    print(time.perf_counter() - t)
'''

BOTO = r'''
import sys, time, boto3
mode, endpoint, bucket, path = sys.argv[1:5]
c = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
t = time.perf_counter()
if mode == "up":
    c.upload_file(path, bucket, "bench/boto3")
else:
    c.download_file(bucket, "bench/boto3", path)
print(time.perf_counter() - t)
'''


def run(quick: bool = False) -> list[dict]:
    from tests.support import MotoServer

    size = (32 if quick else 200) * MIB
    tmp = Path(tempfile.mkdtemp(prefix="bk-bench-storage-"))
    data = tmp / "data.bin"
    with open(data, "wb") as fh:
        for _ in range(size // MIB):
            fh.write(os.urandom(MIB))
    env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_DEFAULT_REGION": "us-east-1"}
    os.environ.update(env)
    child = CHILD.format(root=str(ROOT))
    rows: list[dict] = []
    moto = MotoServer().start()
    try:
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        moto.create_bucket(bucket)
        targets = {"local": f"file://{tmp / 'repo'}", "s3": f"s3://{bucket}/bk?endpoint={moto.endpoint}"}
        mib = size / MIB
        for name, url in targets.items():
            up = measure([sys.executable, "-c", child, url, "up", str(data), str(size)], env=env)
            if up.returncode:
                raise RuntimeError(up.stderr)
            t_up, sha, n = up.stdout.split()
            down = measure([sys.executable, "-c", child, url, "down", str(data), str(size), sha, n],
                           env=env)
            if down.returncode:
                raise RuntimeError(down.stderr)
            up_rate = mib / float(t_up)
            down_rate = mib / float(down.stdout.split()[0])
            peak = max(up.peak_rss_mib, down.peak_rss_mib)
            ref_up = ref_down = None
            if name == "s3":
                b_up = measure([sys.executable, "-c", BOTO, "up", moto.endpoint, bucket, str(data)], env=env)
                b_down = measure([sys.executable, "-c", BOTO, "down", moto.endpoint, bucket,
                                  str(tmp / "dl.bin")], env=env)
                ref_up = mib / float(b_up.stdout.split()[0])
                ref_down = mib / float(b_down.stdout.split()[0])
            else:
                import time

                t = time.perf_counter()
                shutil.copyfile(data, tmp / "copy.bin")
                os.sync()
                ref_up = mib / (time.perf_counter() - t)
            rows.append(row("storage", f"{name} upload", up_rate, "MiB/s",
                            "upload >= 0.8x boto3 upload_file" if name == "s3" else "vs cp (info)",
                            up_rate / ref_up if ref_up else None,
                            (up_rate / ref_up >= 0.8) if name == "s3" and ref_up else None))
            rows.append(row("storage", f"{name} download", down_rate, "MiB/s",
                            "info: vs boto3 download_file" if name == "s3" else "",
                            down_rate / ref_down if ref_down else None, None))
            rows.append(row("storage", f"{name} peak RSS (round trip of {mib:.0f} MiB)", peak, "MiB",
                            "peak RSS < 100 MiB", None, peak < 100))
            if ref_up and name == "s3":
                rows.append(row("storage", "s3 boto3 upload_file (reference)", ref_up, "MiB/s"))
                rows.append(row("storage", "s3 boto3 download_file (reference)", ref_down or 0, "MiB/s"))
    finally:
        moto.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


if __name__ == "__main__":
    main_for(run)
