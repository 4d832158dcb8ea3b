"""hubctl commands of the payment part (R-T3): `hubctl payments` lists the
holds at the arch terminals with their state; `hubctl payment retry ID`
settles or releases a hold now instead of at its next retry. Kept light so
hubctl starts fast: no daemon code is imported here."""

from __future__ import annotations

import argparse

from edge.hubctl import EXIT_OK, EXIT_REFUSED, PartCommand, Style, table

FINAL = ("declined", "settled", "released", "lapsed")


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
        note = p.get("last_error") if p["state"] in ("settling", "releasing") and p.get("last_error") else p.get("reason") or ""
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
        out += f"\n\n{len(pending)} waiting for the terminal: `hubctl payment retry ID` tries again now"
    return out


def _configure_payment(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["retry"])
    p.add_argument("id", metavar="ID", help="payment id, or its first 8 characters from `hubctl payments`")
    p.add_argument("--timeout", type=int, default=30, help="seconds to wait for the terminal (default 30)")


def _request_payment(args: argparse.Namespace) -> tuple[str, dict]:
    return "payment_retry", {"id": args.id, "timeout": args.timeout}


def _render_payment(data: dict, style: Style, args: argparse.Namespace) -> str:
    return data["message"]


def _payment_exit(data: dict) -> int:
    return EXIT_OK if data.get("state") in FINAL else EXIT_REFUSED


def hubctl_commands() -> list[PartCommand]:
    return [
        PartCommand("payments", "holds at the arch terminals: open and recent, with their state (R-P4)",
                    _configure_list, _request_list, _render_list),
        PartCommand("payment", "act on a payment: retry its settlement or release now (R-T3)",
                    _configure_payment, _request_payment, _render_payment, _payment_exit),
    ]
