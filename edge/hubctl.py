"""hubctl: the field technician's tool (R-T1..R-T3).

Talks to the running daemon over its control socket (see edge/core/control.py and
docs/control-protocol.md). `hubctl config validate FILE` needs no daemon.

Exit status: 0 done; 1 failed inside the daemon; 2 bad arguments;
3 refused (the hub will not do it now, the message says why);
4 not found; 5 daemon unreachable; 6 configuration invalid.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import os
import re
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from units import rfc3339

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_REFUSED, EXIT_NOT_FOUND, EXIT_UNREACHABLE, EXIT_CONFIG = 0, 1, 2, 3, 4, 5, 6
CODE_EXIT = {
    "not_found": EXIT_NOT_FOUND,
    "bad_request": EXIT_USAGE,
    "reason_required": EXIT_USAGE,
    "ambiguous": EXIT_USAGE,
    "internal": EXIT_FAILED,
    "version": EXIT_FAILED,
    "unknown_command": EXIT_FAILED,
}
DEFAULT_SOCKET = "/run/hubedge/control.sock"
EXIT_HELP = ("exit status: 0 done, 1 failed in the daemon, 2 bad arguments, 3 refused, 4 not found, "
             "5 daemon unreachable or not in the technicians' group, 6 configuration invalid")


class HubctlError(Exception):
    """A failure hubctl reports itself: one line on stderr, or with --json
    ``{"ok": false, "code", "message"}`` on stdout, and its exit status."""

    def __init__(self, code: str, message: str, exit_status: int):
        super().__init__(message)
        self.code, self.message, self.exit_status = code, message, exit_status


def usage_error(message: str) -> HubctlError:
    return HubctlError("bad_request", message, EXIT_USAGE)


class Parser(argparse.ArgumentParser):
    """argparse, with "did you mean" for a misspelt word and errors that
    main() prints as one line (or as JSON with --json)."""

    def error(self, message: str):
        m = re.search(r"invalid choice: '?([^'\s]*)'? \(choose from (.*)\)", message)
        if m:
            choices = re.findall(r"[\w-]+", m.group(2))
            close = difflib.get_close_matches(m.group(1), choices, n=1, cutoff=0.6)
            where = "command" if self.prog == "hubctl" else "choice"
            message = f"{self.prog}: no {where} {m.group(1)!r}" + (
                f": did you mean `{self.prog} {close[0]}`?" if close else f" (choose from {', '.join(choices)})")
            message += f" — see `{self.prog} --help`"
        else:
            message = f"{self.prog}: {message} — see `{self.prog} --help`"
        raise usage_error(message)


# Commands contributed by the hub's parts (cards, payments, site access),
# each module exposing hubctl_commands() -> list[PartCommand]. Kept in small
# modules of their own so hubctl starts fast.
HUBCTL_PARTS = ("edge.parts.cards.hubctl", "edge.parts.payments.hubctl", "edge.parts.site.hubctl", "edge.parts.chargers.hubctl",
                "edge.parts.power.hubctl")


@dataclass
class PartCommand:
    name: str  # the subcommand, e.g. "tokens"
    help: str
    configure: Callable[[argparse.ArgumentParser], None]  # add arguments
    request: Callable[[argparse.Namespace], tuple[str, dict]]  # -> control command and args
    render: Callable[[Any, "Style", argparse.Namespace], str]  # human output of the data
    exit_code: Callable[[Any], int] | None = None  # non-zero exit for some successful answers


def part_commands() -> list[PartCommand]:
    import importlib

    out: list[PartCommand] = []
    for name in HUBCTL_PARTS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        out.extend(module.hubctl_commands())
    return out


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


# ---------------------------------------------------------------- the command
EXAMPLES = {
    "status": "hubctl status\nhubctl status --follow\nhubctl --json status | jq '.connectors[] | select(.status==\"Faulted\")'",
    "watch": "hubctl watch --interval 1",
    "devices": "hubctl devices\nhubctl --json devices",
    "sessions": "hubctl sessions --connector C7 --since 2h\nhubctl sessions --status active\n"
                "hubctl sessions --token 04A1B2C3 --since 2026-11-01 --until 2026-12-01\n"
                "hubctl sessions --session 6b6a49be --qr\nhubctl sessions --since 30d --csv november.csv",
    "connector": "hubctl connector unavailable C7 --reason 'cable cut'\nhubctl connector available C7\n"
                 "hubctl connector unlock C7 --reason 'driver cannot unplug'",
    "session": "hubctl session stop 6b6a49be --reason 'driver asked by phone'",
    "audit": "hubctl audit --since 1d\nhubctl audit --user alice --since 2026-11-01",
    "outbox": "hubctl outbox",
    "resync": "hubctl resync --timeout 120",
    "config": "hubctl config validate /etc/hubedge/hub.toml",
    "completion": "eval \"$(hubctl completion bash)\"\nhubctl completion zsh > ~/.zfunc/_hubctl",
}

DESCRIPTIONS = {
    "devices": "Every device the hub drives (chargers, terminals, readers, barriers, cameras) with its state "
               "(ok, fault, unknown), since when, and the last error. A device in fault recovers by itself "
               "when it answers again. Then the hub's own tasks (class task: each charger's polling, the "
               "ticks, the terminals' lanes, the cost watch, the store writer): fault means it is not making "
               "progress, and the hub restarts itself if that lasts.",
    "sessions": "Charging sessions from the local ledger, newest first, with the portal's filters (R-S2). "
                "Times are dates, RFC 3339 times or relative (30m, 2h, 3d, 1w). The token itself is never "
                "shown, only its masked form.",
    "connector": "Take a connector out of service (a reason is required and audited), return it, or unlock "
                 "its cable (R-C5, R-C7, R-T3). A connector with a session running becomes Unavailable when "
                 "the session ends.",
    "session": "Stop a session (a reason is required and audited). The session ends when the charger confirms; "
               "a bank-card session is then settled at once.",
    "outbox": "What waits for the cloud: depth per stream, the oldest message's age, the last acknowledgement, "
              "the link's state and the disk quota (R-M6).",
    "resync": "Ask the cloud to resend the token list, bookings, tariffs and maintenance windows in full, and "
              "follow their arrival. Exit 3 if not everything came back in time.",
    "config": "Check a configuration file without a daemon: every problem is listed with its key path.",
    "audit": "The audited actions (R-T1), newest first: who (the Unix user, or cloud for a cloud command), what, "
             "on which target, why, and what came of it. Kept on the hub after the cloud has received them.",
}


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="hubctl",
        description="Look at and act on the hub-edge daemon running on this gateway.",
        epilog="Exit status: 0 done, 1 failed in the daemon, 2 bad arguments, 3 refused, 4 not found, 5 daemon unreachable, 6 configuration invalid.",
    )
    p.add_argument("--socket", default=os.environ.get("HUBEDGE_SOCKET", DEFAULT_SOCKET), help=f"control socket of the daemon (default {DEFAULT_SOCKET}, or $HUBEDGE_SOCKET)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON (stable; see docs/hubctl.md)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    st = sub.add_parser("status", help="the hub at a glance: connectors, devices, cloud link, outbox",
                        description="One screen: every connector with its state and session, bays and bookings due, "
                                    "gates, terminals, readers, devices in fault with since when, the cloud link and "
                                    "the outbox (R-T2).")
    st.add_argument("--follow", "-f", action="store_true", help="refresh until Ctrl-C (same as hubctl watch)")
    st.add_argument("--interval", type=float, default=2.0, metavar="S", help="seconds between refreshes with --follow")
    w = sub.add_parser("watch", help="status, refreshed live until Ctrl-C")
    w.add_argument("--interval", type=float, default=2.0, metavar="S", help="seconds between refreshes (default 2)")
    comp = sub.add_parser("completion", help="print a shell completion script: eval \"$(hubctl completion bash)\"")
    comp.add_argument("shell", choices=["bash", "zsh"])
    sub.add_parser("devices", help="every device with its health and since when")

    s = sub.add_parser("sessions", help="charging sessions, newest first, with the portal's filters (R-S2)")
    s.add_argument("--session", metavar="ID", help="session id, or its first characters as tables show them")
    s.add_argument("--token", metavar="ID")
    s.add_argument("--connector", metavar="ID")
    s.add_argument("--location", metavar="ID", help="hub id")
    s.add_argument("--status", choices=["starting", "active", "stopped", "failed"])
    s.add_argument("--since", type=parse_when, metavar="T", help="date, time or relative (2h, 3d)")
    s.add_argument("--until", type=parse_when, metavar="T")
    s.add_argument("--limit", type=int, default=50)
    s.add_argument("--qr", action="store_true", help="show each receipt link as a QR code")
    s.add_argument("--csv", metavar="FILE", help="export every matching session (no limit) to a CSV file, with progress")

    c = sub.add_parser("connector", help="take a connector out of service, back, or unlock it")
    c.add_argument("action", choices=["available", "unavailable", "unlock"])
    c.add_argument("id", metavar="ID")
    c.add_argument("--reason", default="", help="why (required for unavailable; kept in the audit log)")

    se = sub.add_parser("session", help="act on a session")
    se.add_argument("action", choices=["stop"])
    se.add_argument("id", metavar="ID", help="session id, or its first characters as tables show them")
    se.add_argument("--reason", required=True, help="why (required; kept in the audit log)")

    au = sub.add_parser("audit", help="the audited actions: who did what, when and why (R-T1)")
    au.add_argument("--since", type=parse_when, metavar="T", help="date, time or relative (2h, 3d)")
    au.add_argument("--user", metavar="U", help="only this user's actions (cloud: the cloud's commands)")
    au.add_argument("--limit", type=int, default=200)

    sub.add_parser("outbox", help="what waits for the cloud: depth per stream, oldest age, link, quota")
    rs = sub.add_parser("resync", help="ask the cloud to resend tokens, bookings, tariffs and maintenance windows; shows progress")
    rs.add_argument("--timeout", type=int, default=60, help="seconds to follow the resend (default 60)")

    cfg = sub.add_parser("config", help="configuration tools (no daemon needed)")
    cfg.add_argument("action", choices=["validate"])
    cfg.add_argument("file", metavar="FILE")
    for pc in part_commands():
        pc.configure(sub.add_parser(pc.name, help=pc.help))
    helps = {a.dest: a.help for a in sub._choices_actions}
    for name, sp in sub.choices.items():
        # --json before or after the command: hubctl --json status, hubctl status --json.
        sp.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print machine-readable JSON")
        sp.formatter_class = argparse.RawDescriptionHelpFormatter
        if not sp.description:
            sp.description = DESCRIPTIONS.get(name) or helps.get(name)
        if name in EXAMPLES:
            sp.epilog = "examples:\n" + "\n".join("  " + line for line in EXAMPLES[name].splitlines()) + (
                "\n\n" + EXIT_HELP)
        elif not sp.epilog:  # a part's command may bring its own examples and exit codes
            sp.epilog = EXIT_HELP
    return p


def _request(socket_path: str, cmd: str, args: dict, on_progress=None) -> dict:
    from edge.core.control import request

    return asyncio.run(request(socket_path, cmd, {k: v for k, v in args.items() if v is not None},
                               timeout=max(30, float(args.get("timeout") or 0) + 10), on_progress=on_progress))


def _show_progress(p: dict) -> None:
    if sys.stderr.isatty():
        sys.stderr.write(f"\rreceived: {', '.join(p.get('received') or []) or '-'}; waiting for: {', '.join(p.get('waiting') or []) or '-'}"
                         f"{'' if p.get('link') else ' (cloud link down)'}\033[K")
        sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in argv[: argv.index("--") if "--" in argv else None]
    try:
        return _main(argv)
    except HubctlError as exc:
        return _fail(exc.code, exc.message, exc.exit_status, as_json)
    except BrokenPipeError:
        # The reader went away (hubctl --json watch | head): stop quietly,
        # and keep Python from complaining about the closed pipe at exit.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError:
            pass
        return EXIT_OK


def _fail(code: str, message: str, exit_status: int, as_json: bool) -> int:
    """Every error hubctl prints: one line on stderr, or JSON on stdout."""
    if as_json:
        print(json.dumps({"ok": False, "code": code, "message": message}))
    else:
        print(message if message.startswith("hubctl") else f"hubctl: {message}", file=sys.stderr)
    return exit_status


def _main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    style = Style(sys.stdout.isatty() and not args.json and os.environ.get("NO_COLOR") is None)

    if args.command == "config":
        return _validate(args.file, args.json)
    if args.command == "completion":
        from edge.hubctl_completion import script

        print(script(parser, args.shell))
        return EXIT_OK
    if args.command == "watch" or (args.command == "status" and args.follow):
        return _watch(args, style)

    cmd, req = args.command, {}
    part = next((pc for pc in part_commands() if pc.name == cmd), None)
    if part is not None:
        cmd, req = part.request(args)
    elif cmd == "sessions":
        req = {
            "session": args.session, "token": args.token, "connector": args.connector, "location": args.location,
            "status": args.status, "since": rfc3339(args.since) if args.since else None,
            "until": rfc3339(args.until) if args.until else None, "limit": args.limit,
        }
    elif cmd == "connector":
        if args.action == "unavailable" and not args.reason:
            raise HubctlError("reason_required", "say why with --reason (it goes into the audit log), e.g. "
                                                 f"`hubctl connector unavailable {args.id} --reason 'cable cut'`", EXIT_USAGE)
        req = {"action": args.action, "id": args.id, "reason": args.reason}
    elif cmd == "session":
        cmd, req = "session_stop", {"id": args.id, "reason": args.reason}
    elif cmd == "resync":
        req = {"timeout": args.timeout}
    elif cmd == "audit":
        req = {"since": rfc3339(args.since) if args.since else None, "user": args.user, "limit": args.limit}

    if cmd == "sessions" and args.csv:
        return _export_csv(args, req)
    resp = _ask(args.socket, cmd, req, on_progress=None if args.json else _show_progress)
    if not resp.get("ok"):
        code = resp.get("code", "internal")
        return _fail(code, str(resp.get("message")), _exit_for(code), args.json)

    data = resp.get("data")
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
        if part is not None and part.exit_code:
            return part.exit_code(data)
        if cmd == "resync" and not data.get("complete"):
            return EXIT_REFUSED
        return EXIT_OK
    if part is not None:
        print(part.render(data, style, args))
        return part.exit_code(data) if part.exit_code else EXIT_OK
    if cmd == "status":
        print(render_status(data, style))
    elif cmd == "devices":
        print(render_devices(data, style))
    elif cmd == "sessions":
        print(render_sessions(data, style, qr=args.qr))
    elif cmd == "outbox":
        print(render_outbox(data, style))
    elif cmd == "audit":
        print(render_audit(data, style))
    elif cmd == "resync":
        if sys.stderr.isatty():
            sys.stderr.write("\n")
        if data["complete"]:
            print("resync complete: tokens, bookings, tariffs and maintenance windows received again")
        else:
            waiting = sorted(set(("tokens", "bookings", "tariffs", "maintenance")) - set(data["received"]))
            print(f"resync asked; still waiting for: {', '.join(waiting)}" + ("" if data["link"] else " — the cloud link is down, the request waits in the outbox"))
            return EXIT_REFUSED
    else:
        print(data.get("message") if isinstance(data, dict) and "message" in data else json.dumps(data))
    return EXIT_OK


def _exit_for(code: str) -> int:
    if code == "forbidden":
        return EXIT_UNREACHABLE
    return CODE_EXIT.get(code, EXIT_REFUSED)


def _ask(socket_path: str, cmd: str, req: dict, on_progress=None) -> dict:
    """One request to the daemon; an unreachable daemon is a HubctlError."""
    try:
        return _request(socket_path, cmd, req, on_progress=on_progress)
    except (FileNotFoundError, ConnectionRefusedError):
        raise HubctlError("unreachable", f"no hub-edge daemon at {socket_path}: start it with `systemctl start hubedge` "
                                         f"(on a development machine: `./dev demo` in the repository), or point --socket at its control socket", EXIT_UNREACHABLE)
    except PermissionError:
        raise HubctlError("forbidden", f"not allowed to open {socket_path}: your user must be in the technicians' group "
                                       f"(see `ls -l {socket_path}`)", EXIT_UNREACHABLE)
    except (ConnectionError, TimeoutError, asyncio.TimeoutError, OSError) as exc:
        raise HubctlError("unreachable", f"the daemon at {socket_path} did not answer ({exc}): check "
                                         f"`systemctl status hubedge`", EXIT_UNREACHABLE)


CSV_COLUMNS = ["id", "hub", "connector", "bay", "method", "token_masked", "booking_id", "payment_id", "status",
               "started_at", "stopped_at", "meter_start_wh", "meter_stop_wh", "energy_wh", "stop_reason", "tariff_id",
               "price_per_kwh", "vat_rate", "cost_net", "cost_vat", "cost_gross", "currency", "receipt_url"]


def _export_csv(args, req: dict) -> int:
    """Page through the sessions newest first (by start time) so an export of
    a year of history never asks the daemon for everything at once."""
    import csv

    page = dict(req, limit=1000)
    total, seen = 0, set()
    try:
        out = open(args.csv, "w", newline="")
    except OSError as exc:
        raise usage_error(f"cannot write {args.csv} ({exc.strerror}): choose another path")
    with out:
        writer = csv.DictWriter(out, CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        while True:
            try:
                resp = _ask(args.socket, "sessions", page)
            except HubctlError as exc:
                if total == 0:
                    raise
                raise HubctlError(exc.code, f"the daemon stopped answering after {total} sessions ({exc.message}); "
                                            f"{args.csv} is incomplete — run it again", EXIT_UNREACHABLE)
            if not resp.get("ok"):
                code = resp.get("code", "internal")
                raise HubctlError(code, str(resp.get("message")), _exit_for(code))
            rows = [r for r in resp["data"] if r["id"] not in seen]
            for r in rows:
                writer.writerow(r)
                seen.add(r["id"])
            total += len(rows)
            if sys.stderr.isatty():
                sys.stderr.write(f"\rexported {total} sessions\033[K")
            if len(resp["data"]) < page["limit"] or not rows:
                break
            # Next page: up to (and including, for ties) the oldest start seen.
            page["until"] = _next_until(resp["data"][-1]["started_at"])
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    print(f"{total} sessions written to {args.csv}")
    return EXIT_OK


def _next_until(started_at: str) -> str:
    ts = datetime.fromisoformat(started_at.replace("Z", "+00:00")) + timedelta(milliseconds=1)
    return rfc3339(ts)


def _watch(args, style: Style) -> int:
    """The live view: status redrawn in place on a terminal; on a pipe, one
    status block per refresh (or one JSON object per line with --json)."""
    import time

    interval = max(0.2, float(args.interval))
    tty = sys.stdout.isatty()
    try:
        while True:
            try:
                resp = _request(args.socket, "status", {})
            except (OSError, TimeoutError, asyncio.TimeoutError) as exc:
                text = f"hubctl: the daemon at {args.socket} is not answering ({exc}); still trying — Ctrl-C to stop"
                if args.json:
                    text = json.dumps({"ok": False, "code": "unreachable", "message": text[len("hubctl: "):]})
                resp = None
            if resp is not None:
                if not resp.get("ok"):
                    code = resp.get("code", "internal")
                    raise HubctlError(code, str(resp.get("message")), _exit_for(code))
                if args.json:
                    text = json.dumps(resp["data"], sort_keys=True)
                else:
                    text = render_status(resp["data"], style)
            if tty and not args.json:
                sys.stdout.write("\033[H\033[2J" + text + f"\n\n(refreshing every {interval:g} s — Ctrl-C to stop)\n")
            else:
                sys.stdout.write(text + "\n")
            sys.stdout.flush()
            time.sleep(interval)
    except KeyboardInterrupt:
        return EXIT_OK


def _validate(path: str, as_json: bool) -> int:
    from edge.core.config import ConfigError, load_config

    try:
        cfg = load_config(path)
    except ConfigError as exc:
        if as_json:
            print(json.dumps({"ok": False, "code": "config_invalid", "message": str(exc).splitlines()[0],
                              "file": exc.path, "problems": exc.problems}, indent=2))
        else:
            print(str(exc), file=sys.stderr)
        return EXIT_CONFIG
    summary = {
        "ok": True,
        "file": path,
        "hub": cfg.hub.id,
        "chargers": len(cfg.chargers),
        "connectors": len(cfg.connector_ids()),
        "bays": len(cfg.bays),
        "terminals": len(cfg.terminals),
        "readers": len(cfg.readers),
        "gates": len(cfg.gates),
    }
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"{path}: valid — hub {cfg.hub.id}, {summary['chargers']} chargers, {summary['connectors']} connectors, "
            f"{summary['bays']} bays, {summary['terminals']} terminals, {summary['readers']} readers, {summary['gates']} gates"
        )
    return EXIT_OK


if __name__ == "__main__":
    # The parts import edge.hubctl: run that module's main, not this copy's,
    # so their errors are the same class as the one main() catches.
    from edge.hubctl import main as _main_of_module

    sys.exit(_main_of_module())
