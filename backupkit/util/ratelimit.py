"""Rate limits: a token bucket with bursts, in one process or shared by processes through a file.

A bucket fills at ``rate`` bytes per second up to ``burst`` bytes. Taking n bytes takes n tokens;
when there are too few the bucket goes into debt and the taker sleeps until the debt is paid, so a
chunk larger than the burst passes too (late, never refused). Sleeps are cut in small steps
(``STEP`` seconds at most) and streams are passed on in pieces of at most ``PIECE`` bytes, so a
limited job keeps streaming evenly instead of stopping for a second and then bursting.

``SharedBucket`` keeps the bucket's state in a 16-byte file under flock(2): every process on the
host that takes from the same file shares one rate (the daemon's jobs are child processes; a
storage target's limit is shared this way by every job writing to it). Its clock is
CLOCK_MONOTONIC, which is the same for every process on a Linux host.
"""

from __future__ import annotations

import fcntl
import io
import logging
import os
import platform
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

log = logging.getLogger(__name__)

STEP = 0.05  # the longest single sleep (s): a limited stream moves at least 20 times a second
PIECE = 256 * 1024  # streams are passed on in pieces of at most this many bytes
BURST_SECONDS = 0.1  # the default burst: a tenth of a second at the full rate (at least one piece)


class Limiter(Protocol):
    """Something that makes its caller wait so that bytes pass at most at a rate."""

    rate: float

    def take(self, n: int) -> float:
        """Account n bytes, sleeping as long as the rate asks; returns the seconds slept."""
        ...


def default_burst(rate: float) -> float:
    return max(rate * BURST_SECONDS, float(PIECE))


def refill(tokens: float, last: float, now: float, rate: float, burst: float) -> float:
    """Tokens after the bucket filled from last to now (a clock that went back adds nothing)."""
    return min(burst, tokens + max(0.0, now - last) * rate)


def reserve(tokens: float, n: int, rate: float) -> tuple[float, float]:
    """Take n tokens: the tokens left (negative: a debt) and the seconds to wait for the debt."""
    left = tokens - n
    return left, (-left / rate if left < 0 else 0.0)


class TokenBucket:
    """A thread-safe token bucket in one process."""

    def __init__(self, rate: float, burst: float | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if rate <= 0:
            raise ValueError("a rate must be positive")
        self.rate = float(rate)
        self.burst = float(burst) if burst else default_burst(self.rate)
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = self.burst
        self._last = clock()

    def take(self, n: int) -> float:
        with self._lock:
            now = self._clock()
            self._tokens = refill(self._tokens, self._last, now, self.rate, self.burst)
            self._last = now
            self._tokens, wait = reserve(self._tokens, n, self.rate)
        return sleep_until(now + wait, self._clock, self._sleep) if wait > 0 else 0.0


class SharedBucket:
    """A token bucket whose state (tokens, last time: two doubles) lives in a file under flock,
    shared by every process taking from that file."""

    def __init__(self, path: str | Path, rate: float, burst: float | None = None) -> None:
        if rate <= 0:
            raise ValueError("a rate must be positive")
        self.path = Path(path)
        self.rate = float(rate)
        self.burst = float(burst) if burst else default_burst(self.rate)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._lock = threading.Lock()  # flock is per open file: threads of one process queue here

    def take(self, n: int) -> float:
        with self._lock:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                now = time.monotonic()
                raw = os.pread(self._fd, 16, 0)
                if len(raw) == 16:
                    tokens, last = struct.unpack("<dd", raw)
                    if last > now + 1:  # written before a reboot: start full
                        tokens, last = self.burst, now
                else:
                    tokens, last = self.burst, now
                tokens = refill(tokens, last, now, self.rate, self.burst)
                tokens, wait = reserve(tokens, n, self.rate)
                os.pwrite(self._fd, struct.pack("<dd", tokens, now), 0)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        return sleep_until(now + wait, time.monotonic, time.sleep) if wait > 0 else 0.0

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        self.close()


class Chain:
    """Several limits at once (a job's own and its storage target's): each is taken in turn."""

    def __init__(self, limiters: Iterable[Limiter]) -> None:
        self.limiters = list(limiters)
        self.rate = min(lim.rate for lim in self.limiters)

    def take(self, n: int) -> float:
        return sum(lim.take(n) for lim in self.limiters)


def combine(*limiters: Limiter | None) -> Limiter | None:
    """One limiter for every given one (None: no limit)."""
    present = [lim for lim in limiters if lim is not None]
    if not present:
        return None
    return present[0] if len(present) == 1 else Chain(present)


def sleep_until(deadline: float, clock: Callable[[], float], sleep: Callable[[float], None]) -> float:
    """Sleep in steps of at most STEP until the clock reaches deadline; the seconds slept."""
    start = clock()
    while True:
        left = deadline - clock()
        if left <= 0:
            return clock() - start
        sleep(min(left, STEP))


def throttle(chunks: Iterable[bytes], limiter: Limiter | None, piece: int = PIECE) -> Iterator[bytes]:
    """Pass chunks on at most at the limiter's rate, in pieces of at most piece bytes."""
    if limiter is None:
        yield from chunks
        return
    for block in chunks:
        if len(block) <= piece:
            limiter.take(len(block))
            yield block
            continue
        view = memoryview(block)
        for i in range(0, len(view), piece):
            part = view[i:i + piece]
            limiter.take(len(part))
            yield bytes(part)


class ThrottledReader(io.RawIOBase):
    """A file object whose reads pass at most at the limiter's rate (a restore asked to be
    limited reads its objects through it)."""

    def __init__(self, raw: BinaryIO, limiter: Limiter, piece: int = PIECE) -> None:
        self._raw = raw
        self._limiter = limiter
        self._piece = piece

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        view = memoryview(b)[:self._piece]
        if hasattr(self._raw, "readinto"):
            n = self._raw.readinto(view) or 0
        else:
            block = self._raw.read(len(view))
            n = len(block)
            view[:n] = block
        if n:
            self._limiter.take(n)
        return n

    def close(self) -> None:
        try:
            self._raw.close()
        finally:
            super().close()


def shared_or_local(path: Path | None, rate: float) -> Limiter:
    """A SharedBucket at path, or a bucket of this process when the file cannot be used."""
    if path is not None:
        try:
            return SharedBucket(path, rate)
        except OSError as exc:
            log.warning("rate limit file %s unusable (%s): the limit holds for this process only",
                        path, exc.strerror or exc)
    return TokenBucket(rate)


_IOPRIO_CLASS_IDLE = 3
_IOPRIO_WHO_PROCESS = 1
_SYS_IOPRIO_SET = {"x86_64": 251, "aarch64": 30, "i686": 289, "armv7l": 314}


def idle_io_priority() -> bool:
    """Put the calling thread (Linux: ioprio_set on its thread id) in the idle I/O class, the one
    `ionice -c3` sets: its disk reads wait while anything else wants the disk. False where the
    platform does not allow it (then nothing changed)."""
    import ctypes  # lazy: start-up time (only the cold copy asks for it)

    nr = _SYS_IOPRIO_SET.get(platform.machine())
    if nr is None or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        rc = libc.syscall(nr, _IOPRIO_WHO_PROCESS, threading.get_native_id(), _IOPRIO_CLASS_IDLE << 13)
    except (OSError, AttributeError):
        return False
    return rc == 0


def io_priority_class() -> int | None:
    """The I/O class of the calling thread (3: idle), None where it cannot be read."""
    import ctypes  # lazy: as above

    nr = {"x86_64": 252, "aarch64": 31}.get(platform.machine())
    if nr is None or not sys.platform.startswith("linux"):
        return None
    rc = ctypes.CDLL(None, use_errno=True).syscall(nr, _IOPRIO_WHO_PROCESS, threading.get_native_id())
    return None if rc < 0 else rc >> 13
