"""The token bucket's arithmetic, on a fake clock; the shared bucket and the stream helpers."""

from __future__ import annotations

import io
import threading
import time

import pytest

from backupkit.util.ratelimit import (
    PIECE,
    STEP,
    SharedBucket,
    ThrottledReader,
    TokenBucket,
    combine,
    refill,
    reserve,
    throttle,
)
from backupkit.util.units import human_rate, parse_rate, parse_size


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


def test_refill_is_capped_by_the_burst_and_ignores_a_clock_going_back():
    assert refill(0, 10.0, 11.0, rate=100, burst=50) == 50
    assert refill(0, 10.0, 10.2, rate=100, burst=50) == pytest.approx(20)
    assert refill(5, 10.0, 9.0, rate=100, burst=50) == 5


def test_reserve_goes_into_debt_and_waits_it_off():
    assert reserve(100, 40, rate=10) == (60, 0.0)
    left, wait = reserve(10, 40, rate=10)
    assert left == -30 and wait == pytest.approx(3.0)


def test_a_full_bucket_lets_its_burst_through_at_once_then_holds_the_rate():
    clock = FakeClock()
    bucket = TokenBucket(1000, burst=500, clock=clock, sleep=clock.sleep)
    assert bucket.take(500) == 0.0 and not clock.sleeps
    t0 = clock.now
    for _ in range(10):
        bucket.take(100)
    assert clock.now - t0 == pytest.approx(1.0)  # 1000 bytes at 1000 B/s, nothing saved up
    assert max(clock.sleeps) <= STEP + 1e-9  # in small steps: the stream keeps moving


def test_a_chunk_larger_than_the_burst_passes_late_never_refused():
    clock = FakeClock()
    bucket = TokenBucket(100, burst=10, clock=clock, sleep=clock.sleep)
    bucket.take(10)
    slept = bucket.take(310)
    assert slept == pytest.approx(3.1)


def test_idle_time_saves_up_at_most_the_burst():
    clock = FakeClock()
    bucket = TokenBucket(100, burst=50, clock=clock, sleep=clock.sleep)
    bucket.take(50)
    clock.now += 60  # a minute idle
    assert bucket.take(50) == 0.0
    assert bucket.take(50) == pytest.approx(0.5)


def test_the_achieved_rate_over_a_long_run_is_the_rate():
    clock = FakeClock()
    bucket = TokenBucket(20e6, clock=clock, sleep=clock.sleep)
    t0 = clock.now
    total = 0
    for _ in range(400):  # 400 MiB-ish chunks of 1 MB
        bucket.take(1_000_000)
        total += 1_000_000
    achieved = total / (clock.now - t0)
    assert achieved == pytest.approx(20e6, rel=0.03)  # the initial burst is the only excess


def test_throttle_passes_pieces_and_every_byte():
    clock = FakeClock()
    bucket = TokenBucket(10 * PIECE, clock=clock, sleep=clock.sleep)
    data = [b"a" * (3 * PIECE + 5), b"b" * 7]
    out = list(throttle(iter(data), bucket))
    assert b"".join(out) == b"".join(data)
    assert max(len(p) for p in out) <= PIECE
    assert list(throttle(iter(data), None)) == data


def test_throttled_reader_reads_everything_through_the_limiter():
    clock = FakeClock()
    bucket = TokenBucket(1000, burst=100, clock=clock, sleep=clock.sleep)
    r = ThrottledReader(io.BytesIO(b"x" * 1100), bucket, piece=64)
    assert r.read() == b"x" * 1100
    assert clock.now - 1000.0 == pytest.approx(1.0)


def test_combine_takes_from_every_limit():
    clock = FakeClock()
    a = TokenBucket(100, burst=1, clock=clock, sleep=clock.sleep)
    b = TokenBucket(50, burst=1, clock=clock, sleep=clock.sleep)
    both = combine(a, None, b)
    assert both is not None and both.rate == 50
    assert combine(None) is None and combine(a) is a


def test_a_shared_bucket_holds_one_rate_for_two_holders(tmp_path):
    path = tmp_path / "b.bucket"
    rate = 4_000_000
    holders = [SharedBucket(path, rate, burst=100_000), SharedBucket(path, rate, burst=100_000)]
    total = [0]
    lock = threading.Lock()
    t0 = time.monotonic()

    def run(bucket):
        for _ in range(40):
            bucket.take(20_000)
            with lock:
                total[0] += 20_000

    threads = [threading.Thread(target=run, args=(h,)) for h in holders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    # 1.6 MB at 4 MB/s: 0.4 s, less the 0.1 MB burst
    assert elapsed == pytest.approx((total[0] - 100_000) / rate, rel=0.25)
    for h in holders:
        h.close()


def test_sizes_and_rates_read_decimal_and_binary_units():
    assert parse_size("64MiB") == 64 << 20
    assert parse_size("1.5GB") == 1_500_000_000
    assert parse_size("500k") == 500_000
    assert parse_rate("50MB/s") == 50e6
    assert parse_rate("40 MiB/s") == 40 * 2**20
    assert human_rate(20e6) == "20.0 MB/s"
    for bad in ("fast", "-1MB/s", "0", "10 Mbit/s"):
        with pytest.raises(ValueError):
            parse_rate(bad)
