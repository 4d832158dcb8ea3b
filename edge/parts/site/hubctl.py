"""hubctl commands of the site-access part: `bookings` and `gate` (R-T2, R-T3).

Kept light (no daemon code imported) so hubctl starts fast.
"""

from __future__ import annotations

import argparse

from edge.hubctl import EXIT_REFUSED, HubctlError, PartCommand, Style, table


def _configure_bookings(p: argparse.ArgumentParser) -> None:
    p.add_argument("--upcoming", action="store_true",
                   help="only bookings whose truck has not come yet (confirmed or assigned), soonest first")


def _request_bookings(args: argparse.Namespace) -> tuple[str, dict]:
    return "bookings", {"upcoming": bool(args.upcoming)}


def _hhmm(ts: str | None) -> str:
    # RFC 3339 UTC from the daemon; shown as date and minute, UTC, as sessions are.
    return ts[:16].replace("T", " ") if ts else "-"


def render_bookings(items: list, style: Style, args: argparse.Namespace) -> str:
    if not items:
        what = "upcoming bookings" if getattr(args, "upcoming", False) else "bookings from 12 h ago to 24 h ahead"
        return f"no {what} on this hub (bookings come from the cloud; `hubctl resync` asks for them again)"
    rows = [[b["booking"], _hhmm(b.get("slot_start")), _hhmm(b.get("slot_end"))[11:], f"{b.get('type')} {b.get('side')}",
             b.get("bay") or "-", b.get("connector") or "-", style.state(b.get("state", "?"))] for b in items]
    return table(rows, ["BOOKING", "SLOT (UTC)", "UNTIL", "CONNECTOR TYPE", "BAY", "CONNECTOR", "STATE"], style)


def _configure_gate(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["open", "hold-open", "release", "close"],
                   help="open: one OPEN pulse; hold-open: keep it open until release; release: drop the hold "
                        "(the barrier closes by itself); close: refused, software never closes a barrier (R-G5)")
    p.add_argument("id", metavar="ID", help="gate id from the configuration, e.g. G-IN")
    p.add_argument("--reason", default="", help="why (required for hold-open; kept in the audit log)")


def _request_gate(args: argparse.Namespace) -> tuple[str, dict]:
    if args.action == "close":
        raise HubctlError(
            "refused", f"software never closes a barrier (R-G5): gate {args.id} closes by itself once its loops and "
                       f"photocells see the lane clear; to end a hold-open, run `hubctl gate release {args.id}`",
            EXIT_REFUSED)
    return "gate", {"action": args.action, "id": args.id, "reason": args.reason}


def render_gate(data: dict, style: Style, args: argparse.Namespace) -> str:
    return data.get("message", "done")


def hubctl_commands() -> list[PartCommand]:
    return [
        PartCommand("bookings", "bookings from the cloud: slot, bay, state (--upcoming: not yet arrived)",
                    _configure_bookings, _request_bookings, render_bookings),
        PartCommand("gate", "open a barrier once, hold it open, or release a hold (audited)",
                    _configure_gate, _request_gate, render_gate),
    ]
