"""How hubctl shows what the daemon answers: colours, tables, times in the
technician's zone, the status at a glance and the lists (sessions, devices,
audit, outbox). No socket here: the commands are in edge/hubctl.py.
"""

from __future__ import annotations

import argparse
import re
from datetime import datetime, timedelta, timezone
from typing import Any, Callable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


class Style:
    def __init__(self, enabled: bool):
        self.enabled = enabled

    def _c(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.enabled else text

    def state(self, s: str) -> str:
        colour = {
            "Available": "32", "Charging": "36", "Preparing": "33", "SuspendedEV": "36",
            "SuspendedEVSE": "36", "Finishing": "33", "Reserved": "35", "Unavailable": "90",
            "Faulted": "31;1", "fault": "31;1", "ok": "32", "unknown": "90",
        }.get(s)
        return self._c(colour, s) if colour else s

    def bold(self, text: str) -> str:
        return self._c("1", text)


def parse_when(text: str, now: datetime | None = None) -> datetime:
    """Accept RFC 3339 / ISO dates ('2026-11-24', '2026-11-24T08:00Z') and
    relative times ('2h', '30m', '3d', '1w' ago)."""
    now = now or datetime.now(timezone.utc)
    m = re.fullmatch(r"\s*(\d+)\s*([smhdw])\s*", text)
    if m:
        n, unit = int(m.group(1)), m.group(2)
        secs = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit] * n
        return now - timedelta(seconds=secs)
    try:
        ts = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time: use 2026-11-24, 2026-11-24T08:00Z or a relative time like 2h, 3d")
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    return ts.astimezone(timezone.utc)


def table(rows: list[list[str]], header: list[str], style: Style) -> str:
    if not rows:
        return "(none)"
    plain = [[_strip(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in plain)) for i, h in enumerate(header)]
    out = [style.bold("  ".join(h.ljust(widths[i]) for i, h in enumerate(header)).rstrip())]
    for r, p in zip(rows, plain):
        out.append("  ".join(c + " " * (widths[i] - len(p[i])) for i, c in enumerate(r)).rstrip())
    return "\n".join(out)


def _strip(s: str) -> str:
    return re.sub(r"\033\[[0-9;]*m", "", str(s))


def _parse_ts(ts: str) -> datetime | None:
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return None


class TimeView:
    """One clock for a view: ages ("for 5m") and instants (booking slots)
    both in the hub's time. The daemon's times are UTC; a person reads them
    in the hub's local time zone. The demo, whose day runs ``scale`` times
    faster than the daemon's clock, shows ages scaled and instants on its
    own day (``instant``)."""

    def __init__(self, tz: str | None = None, *, now: datetime | None = None, scale: float = 1.0,
                 instant: Callable[[datetime], str] | None = None, elapsed: Callable[[datetime], float] | None = None):
        try:
            self.tz, self.tz_name = ZoneInfo(tz or "UTC"), tz or "UTC"
        except (ZoneInfoNotFoundError, ValueError):
            self.tz, self.tz_name = timezone.utc, "UTC"
        self.now = now or datetime.now(timezone.utc)
        self.scale = scale
        self._instant = instant
        self._elapsed = elapsed  # seconds from an instant to now, on the view's clock

    @property
    def own_day(self) -> bool:
        """Instants are shown on a day of the view's own (the demo's)."""
        return self._instant is not None

    def age(self, ts: str | None) -> str:
        when = _parse_ts(ts) if ts else None
        if when is None:
            return ts or "-"
        if self._elapsed is not None:
            return _duration(self._elapsed(when))
        return _duration((self.now - when).total_seconds() * self.scale)

    def seconds(self, secs: float | None) -> str:
        if secs is not None and self._elapsed is not None:
            return _duration(self._elapsed(self.now - timedelta(seconds=secs)))
        return _duration(None if secs is None else secs * self.scale)

    def at(self, ts: str | None) -> str:
        when = _parse_ts(ts) if ts else None
        if when is None:
            return ts or "-"
        if self._instant is not None:
            return self._instant(when)
        local = when.astimezone(self.tz)
        today = self.now.astimezone(self.tz).date()
        return local.strftime("%H:%M" if local.date() == today else "%Y-%m-%d %H:%M")


def _duration(secs: float | None) -> str:
    if secs is None:
        return "-"
    secs = int(secs)
    if secs < 90:
        return f"{secs}s"
    if secs < 5400:
        return f"{secs // 60}m"
    if secs < 172800:
        return f"{secs // 3600}h{(secs % 3600) // 60:02d}m"
    return f"{secs // 86400}d"


# ------------------------------------------------------------------ renderers
def render_status(d: dict, style: Style, view: TimeView | None = None, hide: tuple[str, ...] = ()) -> str:
    view = view or TimeView(d.get("timezone"))
    head = f"  version {d['version']}  up {view.seconds(d.get('uptime_s'))}"
    if not view.own_day:
        head += f"  {view.at(d['ts'])} {view.tz_name}"
    lines = [style.bold(f"hub {d['hub']}") + head]
    rows = []
    for c in d["connectors"]:
        details = []
        if c.get("status") == "Faulted" and c.get("fault"):
            details.append(f"why: {c['fault']}")
        elif c.get("unavailable_reason"):
            details.append(f"why: {c['unavailable_reason']}")
        if c.get("session"):
            kwh = (c.get("session_energy_wh") or 0) / 1000
            details.append(f"session {c['session'][:8]} {kwh:.1f} kWh" + (f" ({METHODS.get(c['session_method'], c['session_method'])})" if c.get("session_method") else ""))
        if c.get("reserved_for") and not c.get("session"):
            details.append(f"reserved for booking {c['reserved_for']}")
        power = f"{(c.get('power_w') or 0) / 1000:.0f} kW" if c.get("power_w") else "-"
        rows.append([c["connector"], c.get("bay") or "-", style.state(c["status"]), view.age(c.get("since")), power, "; ".join(details)])
    header = ["CONNECTOR", "BAY", "STATE", "FOR", "POWER", "DETAIL"]
    site = d.get("power")
    if site:  # site power: each connector's share of the grid connection (R-E6)
        header.insert(5, "SHARE")
        for row, c in zip(rows, d["connectors"]):
            share = site["allocations"].get(c["connector"])
            row.insert(5, f"{share:.0f} kW" if share else "-")
    lines.append(table(rows, header, style))
    if site:
        load = "meter silent" if site.get("site_load_kw") is None else f"site load {site['site_load_kw']:.0f} kW"
        lines.append(f"site power: limit {site['grid_limit_kw']:.0f} kW, {load}, charging {site['charging_kw']:.0f} kW"
                     + ("" if site["mode"] == "normal" else f", {style.state('fallback')} (safe total)"))
    for section in ("bays", "bookings", "gates", "terminals", "readers"):
        if d.get(section):
            lines.append("")
            lines.append(render_section(section, d[section], style, view, skip=hide))
    devices = [x for x in d.get("devices", []) if x["class"] != "task"]
    tasks = [x for x in d.get("devices", []) if x["class"] == "task"]
    faults = [x for x in devices if x["state"] == "fault"]
    lines.append("")
    if faults:
        lines.append(style.bold("devices in fault"))
        lines.append(table([[f["device"], f["class"], view.age(f["since"]), f.get("last_error") or ""] for f in faults], ["DEVICE", "CLASS", "FOR", "ERROR"], style))
    else:
        lines.append(f"devices: {len(devices)} all answering")
    stuck = [x for x in tasks if x["state"] == "fault"]
    if stuck:
        lines.append(style.bold("hub tasks not making progress"))
        lines.append(table([[t["device"], view.age(t["since"]), t.get("last_error") or ""] for t in stuck], ["TASK", "SINCE", "WHAT HAPPENED"], style))
    elif tasks:
        failed = sum((t.get("detail") or {}).get("failed_iterations", 0) for t in tasks)
        restarts = sum((t.get("detail") or {}).get("restarts", 0) for t in tasks)
        lines.append(f"hub tasks: {len(tasks)} running" + (f" ({failed} failed rounds, {restarts} restarts: hubctl devices)" if failed or restarts else ""))
    cloud = d.get("cloud", {})
    ob = d.get("outbox", {})
    if not cloud.get("configured"):
        link = "cloud: not configured (events kept in the outbox)"
    else:
        link = f"cloud: {'connected' if cloud.get('connected') else style.state('fault') + ' disconnected'} {cloud.get('broker', '')}"
    lines.append(f"{link}; outbox {ob.get('depth', 0)} waiting, oldest {view.seconds(ob.get('oldest_age_s'))}, quota {(ob.get('quota') or {}).get('state', '?')}")
    ocpp = d.get("ocpp")
    if ocpp:
        lines.append(f"ocpp: {ocpp.get('connected', 0)} of {ocpp.get('stations', 0)} stations connected"
                     + (f" on port {ocpp['port']}" if ocpp.get("port") else ", listener not started")
                     + (f"; {ocpp['handshakes_refused']} handshakes refused (wrong id or password: hubctl chargers)"
                        if ocpp.get("handshakes_refused") else ""))
    clock = d.get("clock")
    if clock is not None:
        lines.append(f"clock: synchronised ({clock.get('source')})" if clock.get("synced") else
                     f"clock: {style.bold('not synchronised')} - date-based decisions (24 h release, command "
                     f"expiry) wait for NTP: check the network and `timedatectl timesync-status`")
    return "\n".join(lines)


# How a session was authorised, in words (the JSON keeps the codes).
METHODS = {"free_vend": "free vend", "own_card": "own card", "emsp_card": "roaming card", "bank_card": "bank card"}


def _ago(text: str) -> str:
    return "-" if text == "-" else f"{text} ago"


def _words(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


# The sections of `hubctl status` in words: (header, how to show the value).
SECTION_COLUMNS: dict[str, list[tuple[str, Callable[[dict, TimeView], str]]]] = {
    "bookings": [
        ("BOOKING", lambda b, v: b["booking"]),
        ("SLOT", lambda b, v: f"{v.at(b.get('slot_start'))} to {v.at(b.get('slot_end'))}"),
        ("FOR", lambda b, v: f"{b.get('type')} {b.get('side')}"),
        ("BAY", lambda b, v: _words(b.get("bay"))),
        ("CONNECTOR", lambda b, v: _words(b.get("connector"))),
        ("STATE", lambda b, v: _words(b.get("state")).replace("_", " ")),
    ],
    "gates": [
        ("GATE", lambda g, v: g["gate"]),
        ("ROLE", lambda g, v: _words(g.get("role"))),
        ("BARRIER", lambda g, v: _words(g.get("barrier")) + (", held open" if g.get("hold_open") else "")),
        ("VEHICLE", lambda g, v: "present" if g.get("presence") else "none"),
        ("LAST DECISION", lambda g, v: _words(g.get("last_decision")).replace(":", ", ").replace("_", " ")),
        ("DECIDED", lambda g, v: _ago(v.seconds(g.get("decided_ago_s")))),
    ],
    "terminals": [
        ("TERMINAL", lambda t, v: t["terminal"]),
        ("STATE", lambda t, v: _words(t.get("state"))),
        ("CONNECTORS", lambda t, v: _words(t.get("connectors"))),
        ("OPEN HOLDS", lambda t, v: _words(t.get("open_holds"))),
        ("LAST RESULT", lambda t, v: _words(t.get("last_result"))),
        ("LAST END-OF-DAY", lambda t, v: _words(t.get("last_closing"))),
        ("NEXT END-OF-DAY", lambda t, v: _words(t.get("next_closing"))),
    ],
    "readers": [
        ("READER", lambda r, v: r["reader"]),
        ("CONNECTOR", lambda r, v: _words(r.get("connector"))),
        ("STATE", lambda r, v: _words(r.get("state"))),
        ("TAPS", lambda r, v: _words(r.get("taps"))),
        ("LAST TAP", lambda r, v: _ago(v.seconds(r.get("last_tap_age_s")))),
    ],
}


def render_section(name: str, items: list, style: Style, view: TimeView | None = None,
                   skip: tuple[str, ...] = ()) -> str:
    view = view or TimeView()
    if not items:
        return f"{name}: (none)"
    columns = [c for c in SECTION_COLUMNS.get(name, []) if c[0] not in skip]
    if not columns:  # a section without a layout of its own: its keys in words
        columns = [(k.replace("_", " ").upper(), lambda i, v, k=k: _words(i.get(k)))
                   for k in items[0] if not isinstance(items[0][k], (dict, list))]
    rows = [[style.state(text) if header == "STATE" else text
             for header, show in columns for text in [show(i, view)]] for i in items]
    return style.bold(name) + "\n" + table(rows, [h for h, _ in columns], style)


def render_devices(items: list, style: Style) -> str:
    view = TimeView()
    return table(
        [[d["device"], d["class"], ", ".join(d.get("connectors") or []) or "-", style.state(d["state"]),
          view.age(d["since"]), d.get("last_error") or ""] for d in items],
        ["DEVICE", "CLASS", "CONNECTORS", "STATE", "FOR", "LAST ERROR"],
        style,
    )


def render_audit(items: list, style: Style) -> str:
    return table(
        [[a["at"][:19].replace("T", " "), a["user"], a["action"], a["target"], a.get("reason") or "-", a.get("result") or "-"]
         for a in items],
        ["AT (UTC)", "USER", "ACTION", "TARGET", "REASON", "RESULT"],
        style,
    )


def render_sessions(items: list, style: Style, *, qr: bool = False) -> str:
    rows = []
    for s in items:
        cost = f"{s['cost_gross']} {s['currency']}" if s.get("cost_gross") else "-"
        kwh = f"{(s.get('energy_wh') or 0) / 1000:.2f}" if s.get("energy_wh") is not None else "-"
        rows.append([s["id"][:8], s["connector"], METHODS.get(s["method"], s["method"]), s.get("token_masked") or "-", style.state(s["status"]), s["started_at"][:19].replace("T", " "), kwh, cost, s.get("stop_reason") or ""])
    out = table(rows, ["SESSION", "CONNECTOR", "METHOD", "TOKEN", "STATUS", "STARTED (UTC)", "KWH", "COST", "STOP REASON"], style)
    if qr:
        for s in items:
            if s.get("receipt_url"):
                out += f"\n\nreceipt for session {s['id']}: {s['receipt_url']}\n" + _qr_text(s["receipt_url"])
    return out


def _qr_text(url: str) -> str:
    import io

    import segno

    buf = io.StringIO()
    segno.make(url, error="m").terminal(out=buf, compact=True)
    return buf.getvalue()


MIB = 1024 * 1024


def render_outbox(d: dict, style: Style) -> str:
    lines = [
        f"outbox: {d.get('depth', 0)} waiting, oldest {_duration(d.get('oldest_age_s'))}, last acknowledged {d.get('last_ack_at') or 'never'}",
        # MiB, the unit [storage] outbox_quota_mb is configured in.
        "quota: {:.1f} MiB of {:g} MiB ({}){}".format(
            (d.get("quota") or {}).get("bytes_used", 0) / MIB,
            round((d.get("quota") or {}).get("quota_bytes", 0) / MIB, 1),
            (d.get("quota") or {}).get("state", "?"),
            "" if d.get("accepting_sessions", True) else ": new sessions refused until the outbox drains",
        ),
    ]
    link = d.get("link") or {}
    lines.append(f"link: {'connected' if link.get('connected') else 'disconnected'}" + (f" since {link['since']}" if link.get("since") else "") + (f", last error: {link['last_error']}" if link.get("last_error") else ""))
    per = d.get("streams") or {}
    if per:
        lines.append(table([[k, str(v)] for k, v in sorted(per.items())], ["STREAM", "WAITING"], style))
    return "\n".join(lines)
