"""A raw COM_BINLOG_DUMP reader on a pymysql connection: the server's event bytes, unchanged.

mysql-replication decodes every event and tops out near 20k events/s (FACTS.md); shipping only
needs the bytes, so this reads the replication protocol directly from the socket.
"""

from __future__ import annotations

import socket
import struct
import time
import zlib

import pymysql
from pymysql.constants import COMMAND

from backupkit.errors import SourceError
from backupkit.mysql.connection import ConnSpec, connect
from backupkit.mysql.server import ServerFacts, server_facts

BINLOG_DUMP_NON_BLOCK = 0x01
BINLOG_SEND_ANNOTATE_ROWS_EVENT = 0x02
MARIA_SLAVE_CAPABILITY_GTID = 4
MAX_PACKET = 0xFFFFFF
RECV_SIZE = 1 << 20

ER_MASTER_FATAL_ERROR_READING_BINLOG = 1236
ER_SLAVE_SAME_ID = 4052


class StreamLost(SourceError):
    """The replication connection broke (server restart, network drop, watchdog)."""


class StreamEnd(Exception):
    """A non-blocking dump reached the end of the server's last binlog."""


class DumpError(SourceError):
    """The server refused or aborted the dump with an error packet."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"the source stopped the binlog dump: error {code}: {message}")
        self.code = code
        self.server_message = message

    @property
    def replaced(self) -> bool:
        """True when the server dropped this dump because another replica connected with the
        same server_id (after a standby took over, or a restarted shipper)."""
        return self.code == ER_SLAVE_SAME_ID or "same server" in self.server_message.lower()

    @property
    def purged(self) -> bool:
        """True when the requested binlog file or position no longer exists on the server."""
        text = self.server_message.lower()
        return self.code == ER_MASTER_FATAL_ERROR_READING_BINLOG and (
            "could not find" in text or "purged" in text or "first log file name" in text)


def default_server_id(source_id: str, hostname: str | None = None) -> int:
    """A replica server_id derived from this host and the source, unlikely to clash with
    real replicas (which usually use small numbers)."""
    key = f"{hostname or socket.gethostname()}|{source_id}".encode()
    return 3_000_000_000 + zlib.crc32(key) % 1_000_000_000


class BinlogStream:
    """One replication connection streaming raw events from (file, pos).

    read() returns each event's bytes (header, body, checksum) exactly as the server stores
    them, or None when nothing arrives before the timeout. With connect_state (MariaDB), the
    server finds where to start itself, as a GTID replica connects: right after that GTID
    position (file and pos are then ignored)."""

    def __init__(self, spec: ConnSpec, server_id: int, file: str, pos: int, *,
                 heartbeat: float = 1.0, non_blocking: bool = False,
                 connect_timeout: float = 5.0, connect_state: str = "") -> None:
        self.spec = spec
        self.connect_state = connect_state
        self.server_id = server_id
        self.file = file
        self.pos = pos
        self.heartbeat = heartbeat
        self.non_blocking = non_blocking
        self.connect_timeout = connect_timeout
        self.conn: pymysql.connections.Connection | None = None
        self.sock: socket.socket | None = None
        self.facts: ServerFacts | None = None
        self.checksum: str = ""
        self._buf = bytearray()
        self._off = 0
        self.last_rx = time.monotonic()
        self.bytes_read = 0

    # -- setup ---------------------------------------------------------------------
    def open(self, conn: pymysql.connections.Connection | None = None) -> BinlogStream:
        """Connect (or take over an open connection), announce ourselves as a replica and send
        COM_BINLOG_DUMP."""
        if conn is None or not conn.open:
            conn = connect(self.spec, connect_timeout=int(max(1, self.connect_timeout)))
        try:
            self.facts = server_facts(conn)
            with conn.cursor() as cur:
                cur.execute("SELECT @@global.binlog_checksum")
                self.checksum = str(cur.fetchone()[0])
                cur.execute("SET @master_binlog_checksum = @@global.binlog_checksum")
                if self.facts.flavor == "mysql":
                    cur.execute("SET @source_binlog_checksum = @@global.binlog_checksum")
                else:
                    cur.execute("SET @mariadb_slave_capability = %s", (MARIA_SLAVE_CAPABILITY_GTID,))
                    if self.connect_state:
                        cur.execute("SET @slave_connect_state = %s", (self.connect_state,))
                        cur.execute("SET @slave_gtid_strict_mode = 1")
                period = int(self.heartbeat * 1_000_000_000)
                cur.execute("SET @master_heartbeat_period = %s", (period,))
                if self.facts.flavor == "mysql":
                    cur.execute("SET @source_heartbeat_period = %s", (period,))
            flags = BINLOG_SEND_ANNOTATE_ROWS_EVENT if self.facts.flavor == "mariadb" else 0
            if self.non_blocking:
                flags |= BINLOG_DUMP_NON_BLOCK
            file, pos = ("", 4) if self.connect_state else (self.file, self.pos)
            payload = struct.pack("<IHI", pos, flags, self.server_id) + file.encode()
            conn._execute_command(COMMAND.COM_BINLOG_DUMP, payload)
        except pymysql.err.MySQLError as exc:
            conn.close()
            code = exc.args[0] if exc.args else 0
            if code in (1227, 1045, 1044):
                raise SourceError(f"the source refused replication to {self.spec.display()}: {exc.args[-1]}",
                                  "grant REPLICATION SLAVE (and BINLOG MONITOR) to the user") from None
            raise StreamLost(f"cannot start the binlog dump from {self.spec.display()}: "
                             f"{exc.args[-1]}") from None
        except OSError as exc:
            conn.close()
            raise StreamLost(f"cannot start the binlog dump from {self.spec.display()}: {exc}") from None
        self.conn = conn
        self.sock = conn._sock
        self.last_rx = time.monotonic()
        return self

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn._force_close()
            except Exception:
                pass
        self.conn = None
        self.sock = None
        self._buf = bytearray()
        self._off = 0

    def __enter__(self) -> BinlogStream:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- reading -------------------------------------------------------------------
    def _fill(self, need: int, deadline: float | None) -> bool:
        """Make at least need unread bytes available; False on timeout."""
        sock = self.sock
        if sock is None:
            raise StreamLost("the binlog stream is closed")
        while len(self._buf) - self._off < need:
            if self._off and self._off > len(self._buf) // 2:
                self.compact()
            if deadline is None:
                sock.settimeout(None)
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                sock.settimeout(left)
            try:
                chunk = sock.recv(max(RECV_SIZE, need))
            except TimeoutError:
                return False
            except OSError as exc:
                raise StreamLost(f"binlog stream from {self.spec.display()} lost: {exc}") from None
            if not chunk:
                raise StreamLost(f"the source {self.spec.display()} closed the binlog stream")
            self._buf += chunk
            self.bytes_read += len(chunk)
            self.last_rx = time.monotonic()
        return True

    def buffered_packet(self) -> bool:
        """True when a complete packet (large ones joined) waits in the buffer."""
        buf, off = self._buf, self._off
        while True:
            if len(buf) - off < 4:
                return False
            length = buf[off] | buf[off + 1] << 8 | buf[off + 2] << 16
            if len(buf) - off < 4 + length:
                return False
            if length < MAX_PACKET:
                return True
            off += 4 + length

    def wait(self, timeout: float | None) -> bool:
        """Wait until a complete packet is buffered; False when timeout passes first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.buffered_packet():
            have = len(self._buf) - self._off
            if not self._fill(have + 1, deadline):
                return False
        return True

    def take(self) -> bytes | None:
        """The next buffered event's raw bytes, or None when no complete packet is buffered.

        Raises StreamEnd at the end of a non-blocking dump, DumpError on a server error and
        StreamLost on a protocol error."""
        if not self.buffered_packet():
            return None
        parts: list[bytes] = []
        while True:
            off = self._off
            length = self._buf[off] | self._buf[off + 1] << 8 | self._buf[off + 2] << 16
            parts.append(bytes(self._buf[off + 4:off + 4 + length]))
            self._off = off + 4 + length
            if length < MAX_PACKET:
                break
        pkt = parts[0] if len(parts) == 1 else b"".join(parts)
        status = pkt[0] if pkt else 0xFE
        if status == 0x00:
            return pkt[1:]
        if status == 0xFE and len(pkt) < 9:
            raise StreamEnd()
        if status == 0xFF:
            code = struct.unpack_from("<H", pkt, 1)[0]
            msg = pkt[3:]
            if msg[:1] == b"#":
                msg = msg[6:]
            self.close()
            raise DumpError(code, msg.decode("utf-8", "replace"))
        self.close()
        raise StreamLost(f"unexpected packet 0x{status:02x} in the binlog stream")

    def read(self, timeout: float | None = None) -> bytes | None:
        """The next event's raw bytes; None when none arrives within timeout seconds."""
        if not self.wait(timeout):
            return None
        return self.take()

    def compact(self) -> None:
        """Drop consumed bytes from the front of the buffer."""
        if self._off:
            del self._buf[:self._off]
            self._off = 0

    def idle_for(self) -> float:
        """Seconds since the last byte arrived (the watchdog's measure)."""
        return time.monotonic() - self.last_rx
