"""hubctl commands of the payment part (R-T3): `hubctl payments` lists the
holds at the arch terminals with their state; `hubctl payment retry ID`
settles or releases a hold now instead of at its next retry (for one in
review: asks the terminal about its booking again); `hubctl payment resolve
ID --booked|--not-booked --reason TEXT` records what the acquirer's records
show for a booking the terminal cannot confirm; `hubctl terminal end-of-day
ID` closes a terminal's day now. Kept light so hubctl starts fast: no daemon
code is imported here."""

from __future__ import annotations

import argparse

from edge.hubctl import EXIT_FAILED, EXIT_OK, EXIT_REFUSED, PartCommand, Style, table

FINAL = ("declined", "settled", "released", "lapsed")
PENDING = ("settling", "review", "releasing")


def _configure_list(p: argparse.ArgumentParser) -> None:
    p.add_argument("--open", action="store_true", help="only holds not yet settled or released")
    p.add_argument("--limit", type=int, default=50)


def _request_list(args: argparse.Namespace) -> tuple[str, dict]:
    return "payments", {"all": not args.open, "limit": args.limit}


def _amount(value: str | None, currency: str | None) -> str:
    return f"{value} {currency}" if value is not None else "-"


def _render_list(items: list, style: Style, args: argparse.Namespace) -> str:
    rows = []
    for p in items:
        note = p.get("last_error") if p["state"] in PENDING and p.get("last_error") else p.get("reason") or ""
        rows.append([
            p["id"][:8], p["terminal"], p.get("connector") or "-", style.state(p["state"]),
            _amount(p.get("hold"), p.get("currency")), _amount(p.get("settle_amount"), p.get("currency")),
            p.get("card_masked") or "-", (p.get("session_id") or "-")[:8], p["created_at"][:19].replace("T", " "),
            str(p.get("attempts") or 0), note[:60],
        ])
    out = table(rows, ["PAYMENT", "TERMINAL", "CONNECTOR", "STATE", "HOLD", "SETTLED", "CARD", "SESSION",
                       "CREATED (UTC)", "TRIES", "NOTE"], style)
    pending = [p for p in items if p["state"] in ("settling", "releasing")]
    if pending:
        out += f"\n\n{len(pending)} waiting for the terminal; to try again now: " + ", ".join(
            f"`hubctl payment retry {p['id'][:8]}`" for p in pending[:3]) + (" ..." if len(pending) > 3 else "")
    review = [p for p in items if p["state"] == "review"]
    if review:
        ids = ", ".join(p["id"][:8] for p in review[:5]) + (" ..." if len(review) > 5 else "")
        out += (f"\n\n{len(review)} in review ({ids}): a booking was sent and its answer never came, so the money may "
                f"have been booked; the hub keeps asking the terminal and never releases these. `hubctl payment retry "
                f"ID` asks now; if the terminal cannot tell, look the receipt up in the acquirer's records and run "
                f"`hubctl payment resolve ID --booked --reason TEXT` or `--not-booked --reason TEXT`")
    return out


PAYMENT_DESCRIPTION = """\
retry: settle or release a waiting hold now instead of at its next retry; for
a hold in review (a booking whose answer never came), ask the terminal again
whether it booked it.
resolve: for a hold in review that the terminal can no longer tell about
(replaced, reset, broken), record what the acquirer's records show for its
receipt: --booked settles it (receipt link, payment.settled), --not-booked
lapses it (payment.lapsed: the cloud bills the session another way).
Both are audited."""

PAYMENT_EPILOG = """\
examples:
  hubctl payment retry 3f2a9c1d
  hubctl payment resolve 3f2a9c1d --booked --reason "acquirer portal: receipt 17 booked 59.28 EUR"

exit status: 0 the hold is closed; 3 still waiting (the hub keeps trying), or
not in review; 2 bad arguments; 4 no such payment; 5 daemon unreachable or
not in the technicians' group."""


def _configure_payment(p: argparse.ArgumentParser) -> None:
    p.description = PAYMENT_DESCRIPTION
    p.epilog = PAYMENT_EPILOG
    p.add_argument("action", choices=["retry", "resolve"])
    p.add_argument("id", metavar="ID", help="payment id, or any unique prefix of it such as the 8 characters `hubctl payments` shows")
    p.add_argument("--timeout", type=int, default=30, help="retry: seconds to wait for the terminal (default 30)")
    seen = p.add_mutually_exclusive_group()
    seen.add_argument("--booked", dest="outcome", action="store_const", const="booked",
                      help="resolve: the acquirer's records show the booking")
    seen.add_argument("--not-booked", dest="outcome", action="store_const", const="not_booked",
                      help="resolve: the acquirer's records show no booking")
    p.add_argument("--reason", help="resolve: where you saw it (kept in the audit)")


def _request_payment(args: argparse.Namespace) -> tuple[str, dict]:
    if args.action == "resolve":
        return "payment_resolve", {"id": _payment_id(args), "outcome": args.outcome, "reason": args.reason}
    return "payment_retry", {"id": _payment_id(args), "timeout": args.timeout}


def _payment_id(args: argparse.Namespace) -> str:
    """A payment id by any unique prefix, as session ids are taken: the
    recent holds are asked for, an ambiguous prefix is refused with its
    candidates; anything else goes to the daemon as given."""
    from edge.core.control import ControlError, resolve_prefix
    from edge.hubctl import HubctlError, _ask, _exit_for

    resp = _ask(args.socket, "payments", {"all": True, "limit": 10000})
    if not resp.get("ok"):
        return args.id
    try:
        return resolve_prefix(args.id, [p["id"] for p in resp["data"]], "payment", "hubctl payments")
    except ControlError as exc:
        if exc.code == "not_found":
            return args.id  # an older hold: the daemon looks it up itself
        raise HubctlError(exc.code, exc.message, _exit_for(exc.code)) from None


def _render_payment(data: dict, style: Style, args: argparse.Namespace) -> str:
    return data["message"]


def _payment_exit(data: dict) -> int:
    return EXIT_OK if data.get("state") in FINAL else EXIT_REFUSED


TERMINAL_DESCRIPTION = """\
Run a terminal's end-of-day (ZVT 06 50) now: its open reservations are
resolved first, then the day's bookings are submitted to the acquirer. The
hub runs it by itself each day at [[terminals]] end_of_day (default 03:00
local time); use this after a closing failed, or before a terminal is
serviced. Audited."""

TERMINAL_EPILOG = """\
examples:
  hubctl terminal end-of-day T1
  hubctl --json terminal end-of-day T1

exit status: 0 closed; 3 refused by the terminal, or a driver is paying at it
(nothing was closed: try again in a few minutes); 1 the terminal did not
answer; 2 bad arguments; 4 no such terminal; 5 daemon unreachable or not in
the technicians' group."""


def _configure_terminal(p: argparse.ArgumentParser) -> None:
    p.description = TERMINAL_DESCRIPTION
    p.epilog = TERMINAL_EPILOG
    p.add_argument("action", choices=["end-of-day"], help="end-of-day: submit the day's bookings to the acquirer now")
    p.add_argument("id", metavar="ID", help="terminal id from [[terminals]], e.g. T1")
    p.add_argument("--timeout", type=int, default=120,
                   help="seconds to wait for the terminal's answer (default 120); the closing goes on in the daemon")


def _request_terminal(args: argparse.Namespace) -> tuple[str, dict]:
    return "terminal_end_of_day", {"id": args.id, "timeout": args.timeout}


def _render_terminal(data: dict, style: Style, args: argparse.Namespace) -> str:
    return data["message"]


def _terminal_exit(data: dict) -> int:
    return {"done": EXIT_OK, "refused": EXIT_REFUSED}.get(data.get("outcome"), EXIT_FAILED)


def hubctl_commands() -> list[PartCommand]:
    return [
        PartCommand("payments", "holds at the arch terminals: open and recent, with their state (R-P4)",
                    _configure_list, _request_list, _render_list),
        PartCommand("payment", "act on a payment: retry its settlement or release now, or resolve one in review (R-T3)",
                    _configure_payment, _request_payment, _render_payment, _payment_exit),
        PartCommand("terminal", "act on an arch terminal: run its end-of-day now (R-T3)",
                    _configure_terminal, _request_terminal, _render_terminal, _terminal_exit),
    ]
