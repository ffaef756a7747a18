"""LOAD DATA LOCAL INFILE from a stream instead of a file on disk.

pymysql answers the server's request for a local file by opening that file name
(``pymysql.connections._send_local_file``). backupkit wraps that one function, once per process:
a name registered here (``backupkit-stream:<token>``) is answered from an iterator of bytes, any
other name goes to pymysql's own code unchanged. A registered name can be read only once, and only
by the connection it was registered for, so a server cannot ask for it twice or from elsewhere.
Nothing is staged on disk.

If the iterator raises (for example IntegrityError when a chunk's checksum does not match at its
end), the data sent so far ends the load as a short file; the caller sees the iterator's exception,
not the server's answer, and must roll back the transaction that holds the partial load.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pymysql.connections

PREFIX = "backupkit-stream:"
PACKET = 1 << 20  # bytes per protocol packet (well under max_allowed_packet)

_lock = threading.Lock()
_sources: dict[str, _Source] = {}
_counter = itertools.count(1)
_installed = False


@dataclass
class _Source:
    conn: object
    chunks: Iterable[bytes]
    sent: int = 0
    error: BaseException | None = None
    done: bool = False


def _send_stream(source: _Source, conn) -> None:
    try:
        for block in source.chunks:
            view = memoryview(block)
            for i in range(0, len(view), PACKET):
                piece = bytes(view[i:i + PACKET])
                conn.write_packet(piece)
                source.sent += len(piece)
        source.done = True
    except BaseException as exc:
        source.error = exc
        raise


def install() -> None:
    """Wrap pymysql's local-file sender once (idempotent, thread-safe)."""
    global _installed
    with _lock:
        if _installed:
            return
        original = getattr(pymysql.connections, "_send_local_file", None)
        if original is None:  # pragma: no cover - pymysql changed its internals
            raise RuntimeError("this pymysql has no _send_local_file; backupkit needs pymysql 1.1+")

        def send_local_file(filename, conn):
            name = filename.decode("utf-8", "replace") if isinstance(filename, bytes) else filename
            if not str(name).startswith(PREFIX):
                return original(filename, conn)
            with _lock:
                source = _sources.get(name)
                if source is None or source.conn is not conn:
                    source = None
                else:
                    del _sources[name]  # readable once
            if source is None:
                raise pymysql.err.OperationalError(2068, f"unknown backupkit stream {name!r}")
            _send_stream(source, conn)

        pymysql.connections._send_local_file = send_local_file
        _installed = True


@contextmanager
def stream_file(conn, chunks: Iterable[bytes]) -> Iterator[tuple[str, _Source]]:
    """Register chunks as a readable-once virtual file for conn; yields (name, source)."""
    install()
    name = f"{PREFIX}{next(_counter)}"
    source = _Source(conn, chunks)
    with _lock:
        _sources[name] = source
    try:
        yield name, source
    finally:
        with _lock:
            _sources.pop(name, None)
