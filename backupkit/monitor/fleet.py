"""Monitoring a fleet (`schedule run --policies DIR`): one Prometheus endpoint and one status
page for every source of the daemon.

Each source (one policy) keeps its own MonitorState; this module only puts them side by side:
- the metrics of every policy, each series with a ``policy`` label (the existing ``source``,
  ``strategy`` and ``target`` labels are kept, so docs/alerts.yml matches per policy unchanged),
  plus ``backupkit_policy_error`` for a policy file that does not load;
- an overview page (a row per source: protection, loss window, lag, last snapshot, gaps, and its
  timeline), with each source's full page (monitor/page.py) under ``policy/<name>``;
- the JSON of every status.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from html import escape
from typing import Any
from urllib.parse import quote, unquote

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from backupkit.monitor.metrics import MonitorState, families
from backupkit.monitor.page import CSS, _t, render_page, timeline_svg
from backupkit.monitor.status import BASE_KINDS, ProtectionStatus, restorable_newest
from backupkit.util.units import human_seconds as _secs

POLICY_LABEL = "policy"


@dataclass
class FleetEntry:
    """One policy file of the fleet: its running monitor, and the problem of its newest version.

    state None and error set: the file never loaded (skipped). Both set: the newest edit does not
    load and the previous version keeps running."""

    name: str
    file: str
    state: MonitorState | None = None
    error: str | None = None


def _e(x: object) -> str:
    return escape("" if x is None else str(x))


def statuses(entries: list[FleetEntry]) -> list[tuple[FleetEntry, ProtectionStatus]]:
    return [(e, e.state.status()) for e in entries if e.state is not None]


# -- metrics -------------------------------------------------------------------------------------
def fleet_families(pairs: list[tuple[FleetEntry, ProtectionStatus]],
                   entries: list[FleetEntry]) -> Iterator[Metric]:
    """Every policy's families merged into one family per name, each sample labelled with its policy."""
    merged: dict[str, Metric] = {}
    for entry, st in pairs:
        for fam in families(st):
            m = merged.get(fam.name)
            if m is None:
                m = merged[fam.name] = Metric(fam.name, fam.documentation, fam.type, fam.unit)
            for s in fam.samples:
                m.samples.append(s._replace(labels={**s.labels, POLICY_LABEL: entry.name}))
    yield from merged.values()
    err = GaugeMetricFamily("backupkit_policy_error",
                            "1 for a policy file of the fleet that does not load: skipped, or its "
                            "previous version keeps running.", labels=["file", POLICY_LABEL])
    for e in entries:
        if e.error:
            err.add_metric([e.file, e.name], 1.0)
    yield err
    n = GaugeMetricFamily("backupkit_fleet_policies", "Policies (sources) the fleet daemon runs.")
    n.add_metric([], float(len(pairs)))
    yield n


class FleetCollector:
    """A prometheus_client collector over the fleet's entries, read on every scrape."""

    def __init__(self, entries_fn: Callable[[], list[FleetEntry]]) -> None:
        self.entries_fn = entries_fn

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator[Metric]:
        t0 = time.monotonic()
        entries = self.entries_fn()
        yield from fleet_families(statuses(entries), entries)
        g = GaugeMetricFamily("backupkit_scrape_duration_seconds",
                              "Time taken to build this scrape from the in-memory state.")
        g.add_metric([], time.monotonic() - t0)
        yield g


def fleet_registry(entries_fn: Callable[[], list[FleetEntry]]) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(FleetCollector(entries_fn))
    return reg


# -- the overview page ---------------------------------------------------------------------------
def loss_window(st: ProtectionStatus) -> tuple[float | None, str]:
    """What the source would lose if it died now: the smallest loss window of its strategies."""
    best = min(((s.loss_seconds, s.label) for s in st.strategies if s.loss_seconds is not None),
               default=(None, ""))
    return best


def last_base(st: ProtectionStatus) -> float | None:
    """The consistent point of the newest base (snapshot, physical or cold)."""
    repo = st.repository
    bases = [b for k in BASE_KINDS for b in (repo.bases(k) if repo else [])]
    return max((b.time for b in bases), default=None)


def source_summary(entry: FleetEntry, st: ProtectionStatus) -> dict[str, Any]:
    """One row of the overview (also in the JSON and `schedule status --policies`)."""
    loss, by = loss_window(st)
    repo = st.repository
    return {"policy": entry.name, "file": entry.file, "healthy": st.healthy,
            "problems": [p.message for p in st.problems], "loss_window_s": loss, "loss_window_by": by,
            "lag_s": st.lag_seconds, "shipper_up": st.shipper_up, "last_base_at": last_base(st),
            "gaps": repo.gap_count() if repo else 0,
            "open_gaps": sum(1 for p in st.problems if p.kind == "gap"),
            "daemon": st.daemon.get("state"), "reload_error": entry.error}


def render_fleet_page(entries: list[FleetEntry],
                      pairs: list[tuple[FleetEntry, ProtectionStatus]] | None = None,
                      refresh: int | None = None, now: float | None = None) -> str:
    """The fleet overview: a row and a timeline per source, and the files that do not load."""
    pairs = statuses(entries) if pairs is None else pairs
    now = time.time() if now is None else now
    ok = sum(1 for _, st in pairs if st.healthy)
    broken = [e for e in entries if e.error]
    out = ["<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
           f"<title>backupkit fleet: {len(pairs)} sources</title>",
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           *([f'<meta http-equiv="refresh" content="{int(refresh)}">'] if refresh else []),
           f"<style>{CSS}</style></head><body>",
           f"<h1>backupkit fleet: am I protected? <span class=muted>{len(pairs)} sources</span></h1>",
           f"<div class=muted>at {_e(_t(now))}</div>"]
    bad = len(pairs) - ok
    if bad or broken:
        head = (f"{bad} of {len(pairs)} sources not protected as promised" if bad
                else f"All {len(pairs)} sources meet every objective")
        out.append(f'<div id=problems class="banner bad"><b>{head}</b>'
                   + (f"; {len(broken)} policy file(s) do not load" if broken else "") + "</div>")
    else:
        out.append(f'<div id=problems class="banner ok"><b>All {len(pairs)} sources meet every '
                   "objective.</b></div>")
    out.append("<h2>Sources</h2><table id=fleet><tr><th>source (policy)</th><th>protection</th>"
               "<th>loss window now</th><th>shipper lag</th><th>last base</th><th>gaps</th>"
               "<th>daemon</th></tr>")
    for entry, st in pairs:
        s = source_summary(entry, st)
        prot = ("<td class=ok>protected</td>" if st.healthy else
                f"<td class=bad>{len(st.problems)} problem(s): {_e(st.problems[0].message)}</td>")
        lag_cls = "ok" if st.shipper_up else ("bad" if st.objectives.shipper_expected else "muted")
        age = f" ({_e(_secs(now - s['last_base_at']))} ago)" if s["last_base_at"] else ""
        gap_cls = "bad" if s["open_gaps"] else "muted"
        out.append(f'<tr class=source data-policy="{_e(entry.name)}" data-healthy="{int(st.healthy)}">'
                   f'<td><a href="policy/{quote(entry.name)}">{_e(entry.name)}</a></td>{prot}'
                   f"<td>{_e(_secs(s['loss_window_s']))} "
                   f"<span class=muted>{_e(s['loss_window_by'])}</span></td>"
                   f"<td class={lag_cls}>{_e(_secs(s['lag_s']))}</td>"
                   f"<td>{_e(_t(s['last_base_at']))}{age}</td>"
                   f"<td class={gap_cls}>{s['gaps']}</td><td>{_e(s['daemon'])}</td></tr>")
    out.append("</table>")
    if broken:
        out.append("<h2>Policy files that do not load</h2><ul id=broken>" + "".join(
            f'<li class=broken data-file="{_e(e.file)}"><code>{_e(e.file)}</code>: '
            f'{_e((e.error or "").removeprefix(e.file + ": "))}'
            + (" <b>(the previous version keeps running)</b>" if e.state is not None else " (skipped)")
            + "</li>" for e in broken) + "</ul>")
    out.append("<h2>Restorable time</h2>")
    for entry, st in pairs:
        repo = st.repository
        out.append(f'<h3 class=source-timeline data-policy="{_e(entry.name)}">{_e(entry.name)}</h3>')
        if not repo or not repo.sources:
            out.append("<p class=muted>The repository holds no backup yet.</p>")
        for tl in repo.sources if repo else []:
            out.append(timeline_svg(tl, st.now, restorable_newest(st, tl)))
    out.append("</body></html>")
    return "\n".join(out)


def fleet_json(entries: list[FleetEntry]) -> dict[str, Any]:
    pairs = statuses(entries)
    return {"policies": [{**st.to_dict(), "summary": source_summary(e, st)} for e, st in pairs],
            "broken": [{"file": e.file, "policy": e.name, "error": e.error, "running": e.state is not None}
                       for e in entries if e.error],
            "healthy": all(st.healthy for _, st in pairs) and not any(e.error for e in entries)}


def fleet_routes(entries_fn: Callable[[], list[FleetEntry]],
                 refresh: int = 30) -> Callable[[str], tuple[bytes, str] | None]:
    """The HTTP routes of the fleet endpoint: /metrics, / (the overview), /policy/NAME (a source's
    page), /status.json. None: not found."""
    registry = fleet_registry(entries_fn)

    def route(path: str) -> tuple[bytes, str] | None:
        if path == "/metrics":
            return generate_latest(registry), CONTENT_TYPE_LATEST
        if path in ("/", "/index.html"):
            return render_fleet_page(entries_fn(), refresh=refresh).encode(), "text/html; charset=utf-8"
        if path == "/status.json":
            return json.dumps(fleet_json(entries_fn()), default=str).encode(), "application/json"
        if path.startswith("/policy/"):
            name = unquote(path.removeprefix("/policy/")).rstrip("/")
            entry = next((e for e in entries_fn() if e.name == name and e.state is not None), None)
            if entry is None:
                return None
            assert entry.state is not None
            page = render_page(entry.state.status(), refresh=refresh, back="../")
            return page.encode(), "text/html; charset=utf-8"
        return None

    return route
