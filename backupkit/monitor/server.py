"""The HTTP endpoint of `schedule run --metrics-listen` and `binlog ship --metrics-listen`:
/metrics (Prometheus text), / (the status page) and /status.json, from a MonitorState."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from backupkit.errors import UsageError
from backupkit.monitor.metrics import registry_for
from backupkit.monitor.page import render_page
from backupkit.monitor.status import ProtectionStatus

log = logging.getLogger(__name__)
DEFAULT_LISTEN = "127.0.0.1:9108"


def parse_listen(text: str | None) -> tuple[str, int]:
    """HOST:PORT (or :PORT, or PORT) as a pair; the default 127.0.0.1:9108 when empty or "on"."""
    text = (text or "").strip()
    if text in ("", "on", "true", "default"):
        text = DEFAULT_LISTEN
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"bad metrics address {text!r}", "use HOST:PORT, for example 127.0.0.1:9108")
    return host, int(port)


def policy_routes(status_fn: Callable[[], ProtectionStatus]) -> Callable[[str], tuple[bytes, str] | None]:
    """/metrics, / (the status page) and /status.json of one policy."""
    registry = registry_for(status_fn)

    def route(path: str) -> tuple[bytes, str] | None:
        if path == "/metrics":
            return generate_latest(registry), CONTENT_TYPE_LATEST
        if path in ("/", "/index.html"):
            return render_page(status_fn(), refresh=30).encode(), "text/html; charset=utf-8"
        if path == "/status.json":
            return json.dumps(status_fn().to_dict(), default=str).encode(), "application/json"
        return None

    return route


class MetricsServer:
    """A small threaded HTTP server in a daemon thread."""

    def __init__(self, listen: str | None, status_fn: Callable[[], ProtectionStatus] | None = None, *,
                 routes: Callable[[str], tuple[bytes, str] | None] | None = None) -> None:
        """Serves one policy's status_fn, or the given routes (path -> body and content type, or
        None: not found), as the fleet does (monitor/fleet.py)."""
        self.address = parse_listen(listen)
        if routes is None:
            assert status_fn is not None
            routes = policy_routes(status_fn)
        self.routes = routes
        self.httpd: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2] if self.httpd else self.address
        return f"http://{host}:{port}"

    def start(self) -> MetricsServer:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path = self.path.split("?", 1)[0]
                if path == "/favicon.ico":
                    self.send_response(204)
                    self.end_headers()
                    return
                try:
                    got = outer.routes(path)
                    if got is None:
                        self.send_error(404)
                        return
                    body, ctype = got
                except Exception as exc:  # noqa: BLE001 - a bad scrape must not kill the daemon
                    log.warning("monitor endpoint %s failed: %s", path, exc)
                    self.send_error(500, str(exc)[:200])
                    return
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args) -> None:
                log.debug("metrics http: " + fmt, *args)

        try:
            self.httpd = ThreadingHTTPServer(self.address, Handler)
        except OSError as exc:
            raise UsageError(f"cannot serve metrics on {self.address[0]}:{self.address[1]}: {exc.strerror}",
                             "choose another address with --metrics-listen or [metrics] listen") from None
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="metrics-http", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None
