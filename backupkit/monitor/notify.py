"""Notifications ([notify]): a webhook JSON POST and/or a command, on a job failure, a gap,
lag over the threshold, and recovery.

The Notifier watches successive ProtectionStatus values: a problem that appears is an event
(its kind decides which: failure, gap or lag), a problem that goes away is a recovery. Events
are delivered by one background thread with bounded retries and a timeout per try, so a slow
or broken receiver never delays nor stops a backup; a failure to deliver is logged and counted.

The webhook body fits Slack's incoming webhooks (``text``) and carries the fields for others:
``{"text", "event", "kind", "policy", "message", "strategy", "target", "at", "host"}``.
The command runs through ``sh -c`` with BACKUPKIT_EVENT, BACKUPKIT_EVENT_KIND, _MESSAGE,
_STRATEGY, _TARGET, _POLICY, _AT and _JSON (the webhook body) in its environment.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from backupkit.monitor.status import Problem, ProtectionStatus
from backupkit.util.redact import redact_text, redact_url
from backupkit.util.units import utc_iso_seconds

log = logging.getLogger(__name__)

#: Which event each kind of problem raises.
EVENT_OF = {"gap": "gap", "shipper_lagging": "lag", "shipper_down": "lag"}


@dataclass
class Event:
    """One notification."""

    event: str  # failure | gap | lag | recovery
    kind: str
    policy: str
    message: str
    strategy: str = ""
    target: str = ""
    at: float = field(default_factory=time.time)

    def body(self) -> dict[str, Any]:
        at = utc_iso_seconds(self.at)
        icon = {"recovery": ":white_check_mark:", "gap": ":warning:", "lag": ":hourglass:"}.get(
            self.event, ":x:")
        return {"text": f"{icon} backupkit {self.policy}: {self.event}: {self.message}",
                "event": self.event, "kind": self.kind, "policy": self.policy, "message": self.message,
                "strategy": self.strategy, "target": self.target, "at": at, "host": socket.gethostname()}

    def env(self) -> dict[str, str]:
        b = self.body()
        return {"BACKUPKIT_EVENT": self.event, "BACKUPKIT_EVENT_KIND": self.kind,
                "BACKUPKIT_EVENT_MESSAGE": self.message, "BACKUPKIT_EVENT_STRATEGY": self.strategy,
                "BACKUPKIT_EVENT_TARGET": self.target, "BACKUPKIT_EVENT_POLICY": self.policy,
                "BACKUPKIT_EVENT_AT": b["at"], "BACKUPKIT_EVENT_JSON": json.dumps(b, sort_keys=True)}


def _key(p: Problem, st: ProtectionStatus) -> tuple[str, str, str, str]:
    """A problem's identity: a new failure of the same job is a new event."""
    extra = ""
    if p.kind == "job_failed":
        s = st.strategy(p.strategy)
        extra = str(s.last_failure if s else "")
    return (p.kind, p.strategy, p.target, extra)


class Notifier:
    """Turns changes of the status into events and delivers them in the background."""

    def __init__(self, policy: str, webhook: str | None = None, command: str | None = None,
                 events: list[str] | None = None, timeout: float = 5.0, retries: int = 3,
                 backoff: float = 0.5, send: Callable[[Event], None] | None = None) -> None:
        self.policy = policy
        self.webhook = webhook
        self.command = command
        self.events = set(events or ("failure", "gap", "lag", "recovery"))
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.send = send
        self.active: dict[tuple[str, str, str, str], Problem] = {}
        self.sent = 0
        self.failed = 0
        self.delivered: list[Event] = []
        self._queue: queue.Queue[Event | None] = queue.Queue(maxsize=1000)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self.webhook or self.command or self.send)

    # -- watching --------------------------------------------------------------------------
    def observe(self, st: ProtectionStatus) -> list[Event]:
        """Compare with the previous status; queue an event per new and per cleared problem."""
        with self._lock:
            now = {_key(p, st): p for p in st.problems}
            out = []
            for k, p in now.items():
                if k not in self.active:
                    out.append(Event(EVENT_OF.get(p.kind, "failure"), p.kind, self.policy, p.message,
                                     p.strategy, p.target, st.now))
            for k, p in self.active.items():
                # a job that failed and then succeeded recovers; a new failure replaces the old key
                if k not in now and not any(k[:3] == n[:3] for n in now):
                    out.append(Event("recovery", p.kind, self.policy, f"recovered: {p.message}",
                                     p.strategy, p.target, st.now))
            self.active = now
        for e in out:
            self.emit(e)
        return out

    def emit(self, e: Event) -> None:
        if e.event not in self.events or not self.enabled:
            return
        self._start()
        try:
            self._queue.put_nowait(e)
        except queue.Full:
            self.failed += 1
            log.warning("notification dropped (queue full): %s", e.message)

    # -- delivering --------------------------------------------------------------------------
    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="notifier", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            e = self._queue.get()
            try:
                if e is None:
                    return
                self.deliver(e)
            finally:
                self._queue.task_done()

    def deliver(self, e: Event) -> bool:
        """Send one event to every configured receiver, each with bounded retries."""
        ok = True
        receivers: list[tuple[str, Callable[[Event], None]]] = []
        if self.send is not None:
            receivers.append(("callback", self.send))
        if self.webhook:
            receivers.append((f"webhook {redact_url(self.webhook)}", self._post))
        if self.command:
            receivers.append(("command", self._run_command))
        for name, fn in receivers:
            delay = self.backoff
            for attempt in range(self.retries + 1):
                try:
                    fn(e)
                    self.sent += 1
                    break
                except Exception as exc:  # noqa: BLE001 - a notifier never stops a backup
                    if attempt >= self.retries:
                        self.failed += 1
                        ok = False
                        log.warning("notification %s to %s failed after %d tries: %s", e.event, name,
                                    attempt + 1, redact_text(str(exc)))
                        break
                    time.sleep(delay)
                    delay = min(delay * 2, 30.0)
        if ok:
            self.delivered.append(e)
        return ok

    def _post(self, e: Event) -> None:
        data = json.dumps(e.body()).encode()
        req = urllib.request.Request(self.webhook or "", data=data, method="POST",
                                     headers={"Content-Type": "application/json",
                                              "User-Agent": "backupkit-notify"})
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            if resp.status >= 300:
                raise urllib.error.HTTPError(self.webhook or "", resp.status, "not accepted", resp.headers,
                                             None)

    def _run_command(self, e: Event) -> None:
        r = subprocess.run(["/bin/sh", "-c", self.command or "true"], env={**os.environ, **e.env()},
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           timeout=self.timeout, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"exit {r.returncode}: {r.stderr.strip()[-200:]}")

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every queued event was delivered or given up (True when done in time)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.02)
        return not self._queue.unfinished_tasks

    def close(self, timeout: float = 10.0) -> None:
        self.flush(timeout)
        if self._thread is not None:
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                pass
            self._thread.join(1.0)


def notifier_for(policy) -> Notifier | None:
    """The Notifier of a policy's [notify] section (None when nothing is configured)."""
    n = policy.notify
    if not (n.webhook or n.command):
        return None
    return Notifier(policy.name, n.webhook, n.command, list(n.events), n.timeout, n.retries)
