"""hubctl power: the site's limit, its draw and each connector's share (R-E6),
and a curtailment set or lifted by a technician (R-E5).

Kept light (no daemon code imported) so hubctl starts fast.
"""

from __future__ import annotations

import argparse
import re
from datetime import datetime, timedelta, timezone

from edge.hubctl import EXIT_USAGE, HubctlError, PartCommand, Style, TimeView, parse_when, table


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", nargs="?", default="show", choices=["show", "limit", "restore"],
                   help="show (default): the table; limit KW --until T: lower the site limit until T "
                        "(a curtailment, audited); restore: the connection's own limit again now")
    p.add_argument("kw", nargs="?", type=float, help="with limit: the site limit in kW while it lasts")
    p.add_argument("--until", help="with limit: when the connection's limit comes back by itself: "
                                   "a time (2026-06-01T18:00Z) or a duration from now (+2h, +30m)")
    p.add_argument("--reason", default="", help="why (kept in the audit log)")


def _until(text: str) -> str:
    m = re.fullmatch(r"\s*\+\s*(\d+)\s*([smhd])\s*", text)
    if m:
        n, unit = int(m.group(1)), m.group(2)
        when = datetime.now(timezone.utc) + timedelta(seconds=n * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit])
    else:
        try:
            when = parse_when(text)
        except argparse.ArgumentTypeError:
            raise HubctlError("usage", f"--until {text!r} is not a time: give 2026-06-01T18:00Z or +2h", EXIT_USAGE)
    return when.isoformat().replace("+00:00", "Z")


def _request(args: argparse.Namespace) -> tuple[str, dict]:
    if args.action == "show":
        return "power", {"action": "show"}
    if args.action == "restore":
        return "power", {"action": "restore", "reason": args.reason}
    if args.kw is None or args.until is None:
        raise HubctlError("usage", "give the limit and its end, e.g. `hubctl power limit 1500 --until +2h "
                                   "--reason 'grid operator'`", EXIT_USAGE)
    return "power", {"action": "limit", "kw": args.kw, "until": _until(args.until), "reason": args.reason}


def _kw(v) -> str:
    return "-" if v is None else f"{v:,.0f}".replace(",", " ")


def render_power(data: dict, style: Style, args: argparse.Namespace) -> str:
    if "curtailed" in data:  # the answer to limit / restore
        if data["curtailed"]:
            return f"site limit {_kw(data['grid_limit_kw'])} kW until {data['until']}; it comes back by itself then"
        return f"site limit back to the connection's {_kw(data['grid_limit_kw'])} kW"
    if not data.get("configured"):
        return "site power is not configured on this hub (no [power] section): chargers are never limited"
    view = TimeView()
    mode = style.state("fallback") if data["mode"] == "fallback" else data["mode"]
    limit = f"{_kw(data['grid_limit_kw'])} kW"
    if data.get("curtailed_until"):
        limit += f" (curtailed from {_kw(data['connection_kw'])} kW until {view.at(data['curtailed_until'])})"
    meter = data.get("meter") or {}
    reading = (f"{_kw(meter.get('kw'))} kW, read {meter.get('age_s')} s ago" if meter.get("kw") is not None
               else "no reading yet")
    if meter.get("error"):
        reading += f"; last error: {meter['error']}"
    lines = [
        style.bold("site power") + f"  mode {mode}",
        f"  limit       {limit}, margin {_kw(data['margin_kw'])} kW, safe total without meter {_kw(data['fallback_kw'])} kW",
        f"  site load   {_kw(data.get('site_load_kw'))} kW (meter {meter.get('device')} at {meter.get('address')}: {reading})",
        f"  charging    {_kw(data.get('charging_kw'))} kW of {_kw(data.get('available_kw'))} kW available for charging",
    ]
    if data.get("note"):
        lines.append(f"  note        {data['note']}")
    rows = []
    for c in data.get("connectors", []):
        if not c["charging"]:
            rows.append([c["connector"], "-", "-", "-", "-", "-", "idle"])
            continue
        why = []
        if c["waiting"]:
            why.append("waits: minimums do not fit")
        if c["limit_kw"] is None or (c["counted_kw"] is not None and c["counted_kw"] > c["share_kw"] + 0.5):
            why.append("limit not confirmed: counted at rated power")
        rows.append([c["connector"], c["priority"].replace("_", "-"), view.at(c["departure"]) if c["departure"] else "-",
                     _kw(c["share_kw"]), _kw(c["measured_kw"]), _kw(c["limit_kw"]), "; ".join(why) or "ok"])
    lines.append("")
    lines.append(table(rows, ["CONNECTOR", "PRIORITY", "LEAVES", "SHARE kW", "DRAWS kW", "LIMIT kW", "NOTE"], style))
    return "\n".join(lines)


def hubctl_commands() -> list[PartCommand]:
    return [PartCommand("power", "site power: limit, site load and each connector's share; limit/restore a curtailment",
                        _configure, _request, render_power)]
