"""The status page: one self-contained HTML document, charts drawn as SVG on the server.

No script and no network fetch: it works as a file (`backupkit status --html FILE`), behind the
daemon's `/`, and in a mail. It shows, for each source, the timeline of restorable intervals
with its gaps and bases; the loss window of each strategy; the last runs of every job; the
shipper's lag over the last hours; the health of each storage target; what is wrong.
"""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape

from backupkit.monitor.status import (
    ProtectionStatus,
    SourceTimeline,
    drill_state,
    restorable_newest,
)
from backupkit.util.units import human_bytes
from backupkit.util.units import human_seconds as _secs

KIND_COLORS = {"cold": "#1f6fb2", "snapshot": "#7b3fb0", "physical": "#c46a00"}
W, PAD = 920, 60


def _t(ts: float | None, short: bool = False, span: float = 86400.0) -> str:
    if not ts:
        return "-"
    fmt = ("%m-%d %H:%M" if span > 600 else "%H:%M:%S") if short else "%Y-%m-%d %H:%M:%S"
    return datetime.fromtimestamp(ts, UTC).strftime(fmt) + ("" if short else " UTC")


def _e(x: object) -> str:
    return escape("" if x is None else str(x))


# -- the timeline ---------------------------------------------------------------------------------
def timeline_svg(tl: SourceTimeline, now: float, newest: float | None = None) -> str:
    """Restorable intervals (green), gaps (red) and bases (marks) of one source, oldest to now;
    newest: the newest restorable moment when the live shipper confirmed more than the view."""
    times = ([a for a, _ in tl.intervals] + [b.time for b in tl.bases] + [g.start for g in tl.gaps if g.start]
             + [a for a, _ in tl.binlog_runs if a])
    start = min(times) if times else now - 3600
    end = max(now, *(z for _, z in tl.intervals)) if tl.intervals else now
    span = max(end - start, 60.0)
    start -= span * 0.02
    span = end - start
    inner = W - 2 * PAD

    def x(t: float) -> float:
        return PAD + (min(max(t, start), end) - start) / span * inner

    h = 110
    parts = [f'<svg class="timeline" role="img" viewBox="0 0 {W} {h}" width="100%" '
             f'xmlns="http://www.w3.org/2000/svg" aria-label="restorable time of {_e(tl.source_id)}">',
             f'<rect x="{PAD}" y="40" width="{inner}" height="22" fill="#eceff1"/>']
    ivs = list(tl.intervals)
    if ivs and newest is not None and newest > ivs[-1][1]:
        ivs[-1] = (ivs[-1][0], newest)
    for a, z in ivs:
        x0, x1 = x(a), x(z)
        parts.append(f'<rect class="interval" x="{x0:.1f}" y="40" width="{max(x1 - x0, 2):.1f}" height="22" '
                     f'fill="#2e9d4f"><title>restorable {_e(_t(a))} to {_e(_t(z))}</title></rect>')
    for a, z in tl.binlog_runs:
        x0, x1 = x(a), x(z)
        parts.append(f'<rect class="shipped" x="{x0:.1f}" y="66" width="{max(x1 - x0, 2):.1f}" height="5" '
                     f'fill="#1f6fb2"><title>binlog shipped {_e(_t(a))} to {_e(_t(z))}</title></rect>')
    for g in tl.gaps:
        g0 = x(g.start) if g.start else PAD
        g1 = x(g.end) if g.end else x(now)
        parts.append(f'<rect class="gap" x="{g0:.1f}" y="36" width="{max(g1 - g0, 3):.1f}" height="28" '
                     f'fill="#d32f2f" fill-opacity="0.85"><title>gap: {_e(g.reason)} '
                     f'({_e(_t(g.start))} to {_e(_t(g.end) if g.end else "not resumed")})</title></rect>')
    for b in tl.bases:
        bx = x(b.time)
        color = KIND_COLORS.get(b.kind, "#555")
        parts.append(f'<g class="base base-{_e(b.kind)}"><line x1="{bx:.1f}" y1="30" x2="{bx:.1f}" y2="70" '
                     f'stroke="{color}" stroke-width="2"/><path d="M{bx - 6:.1f},22 L{bx + 6:.1f},22 '
                     f'L{bx:.1f},31 Z" fill="{color}"/><title>{_e(b.kind)} {_e(b.id)} at '
                     f'{_e(_t(b.time))}</title></g>')
    nx = x(now)
    parts.append(f'<line x1="{nx:.1f}" y1="16" x2="{nx:.1f}" y2="76" stroke="#222" stroke-dasharray="3,2"/>'
                 f'<text x="{nx:.1f}" y="12" font-size="11" text-anchor="end">now</text>')
    for i in range(6):
        t = start + span * i / 5
        tx = x(t)
        parts.append(f'<line x1="{tx:.1f}" y1="62" x2="{tx:.1f}" y2="80" stroke="#999"/>'
                     f'<text x="{tx:.1f}" y="94" font-size="11" text-anchor="middle">'
                     f'{_e(_t(t, True, span))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def lag_svg(history: list[tuple[float, float]], now: float, hours: float = 6.0) -> str:
    """The shipper's lag over the last hours, as a line."""
    h, top, bottom = 140, 14, 110
    start = now - hours * 3600
    pts = [(t, v) for t, v in history if t >= start]
    vmax = max([v for _, v in pts] + [1.0])
    inner = W - 2 * PAD

    def x(t: float) -> float:
        return PAD + (t - start) / (now - start) * inner

    def y(v: float) -> float:
        return bottom - v / vmax * (bottom - top)

    parts = [f'<svg class="lag" role="img" viewBox="0 0 {W} {h}" width="100%" '
             f'xmlns="http://www.w3.org/2000/svg" aria-label="shipper lag">',
             f'<line x1="{PAD}" y1="{bottom}" x2="{W - PAD}" y2="{bottom}" stroke="#999"/>',
             f'<text x="{PAD - 6}" y="{top + 4}" font-size="11" text-anchor="end">{_e(_secs(vmax))}</text>',
             f'<text x="{PAD - 6}" y="{bottom}" font-size="11" text-anchor="end">0</text>']
    if pts:
        line = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in pts)
        parts.append(f'<polyline class="lag-line" points="{line}" fill="none" stroke="#1f6fb2" '
                     'stroke-width="1.5"/>')
    else:
        parts.append(f'<text x="{W / 2}" y="{(top + bottom) / 2}" font-size="12" text-anchor="middle" '
                     'fill="#777">no lag samples yet (the daemon records one every 10 s)</text>')
    for i in range(7):
        t = start + (now - start) * i / 6
        parts.append(f'<text x="{x(t):.1f}" y="{bottom + 16}" font-size="11" text-anchor="middle">'
                     f'{_e(_t(t, True))}</text>')
    parts.append("</svg>")
    return "".join(parts)


# -- the page ----------------------------------------------------------------------------------------
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d2327;
max-width:1000px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:26px 0 8px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;width:100%;font-size:13px}th,td{text-align:left;padding:4px 8px;
border-bottom:1px solid #eee}th{background:#f6f7f8}.ok{color:#1b7f3b;font-weight:600}
.bad{color:#c62828;font-weight:600}.muted{color:#777}.banner{padding:10px 14px;border-radius:6px;
margin:12px 0}.banner.ok{background:#e8f5e9}.banner.bad{background:#ffebee}
.legend span{display:inline-block;margin-right:14px;font-size:12px}.sw{display:inline-block;width:12px;
height:12px;vertical-align:middle;margin-right:4px}
"""


def render_page(st: ProtectionStatus, refresh: int | None = None, back: str | None = None) -> str:
    """The whole page as one HTML string (back: a link to the fleet overview)."""
    repo = st.repository
    out = ["<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
           f"<title>backupkit: {_e(st.policy)}</title>",
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           *([f'<meta http-equiv="refresh" content="{int(refresh)}">'] if refresh else []),
           f"<style>{CSS}</style></head><body>",
           *([f'<div><a id=back href="{_e(back)}">fleet overview</a></div>'] if back else []),
           f"<h1>backupkit: am I protected? <span class=muted>policy {_e(st.policy)}</span></h1>",
           f'<div class=muted>at {_e(_t(st.now))}; daemon {_e(st.daemon.get("state"))}'
           + (f"; repository {_e(repo.storage)} read {_e(_t(repo.read_at))}" if repo else "") + "</div>"]
    if st.problems:
        out.append('<div id=problems class="banner bad"><b>Not protected as promised:</b><ul>'
                   + "".join(f"<li class=problem data-kind={_e(p.kind)}>{_e(p.message)}</li>"
                             for p in st.problems) + "</ul></div>")
    else:
        out.append('<div id=problems class="banner ok"><b>Every objective is met.</b></div>')
    if repo and repo.error:
        out.append(f'<div class="banner bad">repository not read: {_e(repo.error)}</div>')

    out.append("<h2>Restorable time</h2>")
    out.append('<div class=legend><span><i class=sw style="background:#2e9d4f"></i>restorable</span>'
               '<span><i class=sw style="background:#d32f2f"></i>gap</span>'
               '<span><i class=sw style="background:#1f6fb2;height:5px"></i>binlog shipped</span>'
               + "".join(f'<span><i class=sw style="background:{c}"></i>{k} base</span>'
                         for k, c in KIND_COLORS.items()) + "</div>")
    for tl in repo.sources if repo else []:
        out.append(f'<h3 class=source data-source="{_e(tl.source_id)}">{_e(tl.source_id)} '
                   f'<span class=muted>{len(tl.intervals)} interval(s), {len(tl.gaps)} gap(s), '
                   f'{len(tl.bases)} base(s); restorable {_e(_t(tl.oldest))} to '
                   f'{_e(_t(restorable_newest(st, tl)))}</span></h3>')
        out.append(timeline_svg(tl, st.now, restorable_newest(st, tl)))
    if not repo or not repo.sources:
        out.append("<p class=muted>The repository holds no backup yet.</p>")

    out.append("<h2>Loss window if the server died now</h2><table id=loss><tr><th>strategy</th>"
               "<th>newest recovery point</th><th>loss window</th><th>objective</th><th>stored</th></tr>")
    for s in st.strategies:
        if s.strategy not in ("cold", "snapshot", "physical", "binlog"):
            continue
        over = (s.loss_seconds or 0) > (s.loss_objective if s.loss_objective is not None else float("inf"))
        cls = "bad" if over else ("ok" if s.loss_seconds is not None else "muted")
        out.append(f'<tr class=strategy data-strategy="{_e(s.strategy)}"><td>{_e(s.label)}</td>'
                   f"<td>{_e(_t(s.recovery_point))}</td><td class={cls}>{_e(_secs(s.loss_seconds))}</td>"
                   f"<td>{_e(_secs(s.loss_objective))}</td><td>{_e(human_bytes(s.stored_bytes))}</td></tr>")
    out.append("</table>")

    out.append("<h2>Last runs</h2><table id=jobs><tr><th>job</th><th>schedule</th><th>last</th>"
               "<th>last success</th><th>took</th><th>runs / failed</th><th>next run</th><th>error</th></tr>")
    for s in st.strategies:
        res = s.last_result or "-"
        cls = {"ok": "ok", "failed": "bad"}.get(res, "muted")
        out.append(f'<tr class=job data-job="{_e(s.strategy)}"><td>{_e(s.label)}</td>'
                   f"<td>{_e(s.schedule or '-')}</td><td class={cls}>{_e(res)}</td>"
                   f"<td>{_e(_t(s.last_success))}</td><td>{_e(_secs(s.last_duration))}</td>"
                   f"<td>{s.runs} / {s.failures}</td><td>{_e(s.next_run or '-')}</td>"
                   f"<td>{_e(s.last_error or '')}</td></tr>")
    out.append("</table>")

    out.append("<h2>Binlog shipper</h2>")
    sh = st.shipper
    if sh is None:
        out.append("<p class=muted>No shipper state (binlog shipping is not running here).</p>")
    else:
        known = ("stopped", "reconnecting", "standby")
        state = "shipping" if st.shipper_up else (sh.state if sh.state in known else "not responding")
        up = "ok" if st.shipper_up else "bad"
        out.append(f"<p id=shipper>{_e(sh.source_id)}: <b class={up}>{state}</b>"
                   f"; lag {_e(_secs(st.lag_seconds))}; confirmed complete up to {_e(_t(sh.confirmed_at))}; "
                   f"{sh.segments} segments, {_e(human_bytes(sh.bytes))} shipped by this run; "
                   f"{sh.upload_errors} upload errors; pid {_e(sh.pid)}</p>")
    out.append("<h3>Lag over the last 6 hours</h3>" + lag_svg(st.lag_history, st.now))

    drill, ok = drill_state(st)
    out.append("<h2>Restore drill</h2>")
    if drill is None and ok is None:
        out.append("<p class=muted>No restore drill yet: run 'backupkit verify --restore-test'.</p>")
    else:
        out.append(f"<p id=drill>last drill: <b class={'ok' if ok else 'bad'}>{'ok' if ok else 'failed'}</b>"
                   + (f"; {_e(drill.kind)} {_e(drill.backup_id)} restored in {_e(_secs(drill.rto_seconds))} "
                      f"at {_e(_t(drill.at))}" if drill else "") + "</p>")

    if repo and repo.targets:
        out.append("<h2>Storage targets</h2><table id=targets><tr><th>target</th><th>reachable</th>"
                   "<th>behind by</th><th>missing objects</th></tr>")
        for t in repo.targets:
            out.append(f'<tr class=target data-target="{_e(t.name)}"><td>{_e(t.name)}</td>'
                       f"<td class={'ok' if t.up else 'bad'}>{'yes' if t.up else 'no'}</td>"
                       f"<td>{_e(_secs(t.lag_seconds))}</td><td>{_e(t.missing_objects)}</td></tr>")
        out.append("</table>")
    if repo and repo.leases:
        out.append("<h2>Shipper lease</h2><ul>" + "".join(
            f"<li>{_e(le.source_id)}: {_e(le.holder)} ("
            + (f"active until {_e(_t(le.expires_at))}" if le.active else "released or expired")
            + ")</li>" for le in repo.leases) + "</ul>")
    out.append("</body></html>")
    return "\n".join(out)
