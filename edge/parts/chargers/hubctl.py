"""`hubctl chargers`: every charger, whatever it speaks, with its protocol,
whether it is connected, vendor, model, firmware and its last frame
(docs/hubctl.md). Kept apart from the part so hubctl starts without
loading the protocols."""

from __future__ import annotations

import argparse

from edge.hubctl import PartCommand, TimeView, table


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--charger", metavar="ID", help="only this charger, with its connectors")


def _request(args: argparse.Namespace) -> tuple[str, dict]:
    return "chargers", {"charger": args.charger}


def _render(items: list, style, args: argparse.Namespace) -> str:
    view = TimeView()
    rows = []
    for c in items:
        if args.charger and c["charger"] != args.charger:
            continue
        state = "connected" if c.get("connected") else (c.get("state") or "not connected")
        rows.append([c["charger"], c["protocol"], style.state("ok") if c.get("connected") else state,
                     c.get("vendor") or "-", c.get("model") or "-", c.get("firmware") or "-",
                     view.age(c["last_frame"]) + " ago" if c.get("last_frame") else "-",
                     ", ".join(c.get("connectors") or {}) or "-"])
    if not rows:
        return f"no charger {args.charger!r}: `hubctl chargers` lists them" if args.charger else "no chargers configured"
    out = table(rows, ["CHARGER", "PROTOCOL", "STATE", "VENDOR", "MODEL", "FIRMWARE", "LAST FRAME", "CONNECTORS"],
                style)
    offline = [c["charger"] for c in items if c["protocol"].startswith("ocpp") and not c.get("connected")]
    if offline:
        out += (f"\n{len(offline)} OCPP station(s) not connected ({', '.join(offline)}): check their power, network, "
                "OCPP URL (ws://HUB:PORT/ocpp/ID) and password; refusals are in `hubctl status` and the hub's log")
    return out


def hubctl_commands() -> list[PartCommand]:
    return [PartCommand("chargers", "every charger: protocol, connected or not, vendor, model, firmware, last frame",
                        _configure, _request, _render)]
