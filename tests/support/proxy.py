"""A TCP proxy for outage and failover tests."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time


class FlakyProxy:
    """A TCP proxy in front of a server (the S3 server, a mariadbd) that can go down (refusing
    connections and cutting open ones) and come back on the same port, to the same target or
    another one (``target``: a virtual IP moving to a promoted replica)."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        self.listener: socket.socket | None = None
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.running = True

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> FlakyProxy:
        for attempt in range(40):  # the old listener is released once its accept loop wakes
            ls = socket.socket()
            ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                ls.bind(("127.0.0.1", self.port))
                break
            except OSError:
                ls.close()
                if attempt == 39:
                    raise
                time.sleep(0.05)
        ls.listen(64)
        self.listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()
        return self

    def down(self) -> None:
        ls, self.listener = self.listener, None
        if ls is not None:
            ls.close()
        with self.lock:
            for c in self.conns:
                # shutdown first: close() alone does not end a connection whose socket another
                # thread is blocked reading, and the client would wait for its read timeout (60 s)
                with contextlib.suppress(OSError):
                    c.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    c.close()
            self.conns.clear()

    def close(self) -> None:
        self.running = False
        self.down()

    def _accept(self, ls: socket.socket) -> None:
        while self.running and self.listener is ls:
            try:
                r, _, _ = select.select([ls], [], [], 0.2)
                if not r:
                    continue
                client, _ = ls.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass
