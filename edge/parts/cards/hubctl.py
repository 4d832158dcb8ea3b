"""`hubctl tokens ...`: what the hub knows of a charge card (R-A1..R-A3).

Kept apart from edge/parts/cards/part.py so hubctl starts without loading the daemon's
card part (nfcpy, the decision logic).
"""

from __future__ import annotations

import argparse

from edge.hubctl import EXIT_NOT_FOUND, EXIT_OK, PartCommand, usage_error

_SOURCES = {
    "local_list": "the local token list",
    "cache": "the cache of the cloud's answers",
    "unknown": "nowhere: not on the local list and no cached cloud answer",
}


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["lookup", "version"],
                   help="lookup: one card's status, group, reference and where the answer came from; "
                        "version: the token list version held")
    p.add_argument("uid", nargs="?", metavar="UID", help="the card's uid as the reader gives it (hex), for lookup")


def _request(args: argparse.Namespace) -> tuple[str, dict]:
    if args.action == "lookup" and not args.uid:
        raise usage_error("tokens lookup needs the card's uid, e.g. `hubctl tokens lookup 04A1B2C3`")
    return "tokens", {"action": args.action, "uid": args.uid}


def _render(data: dict, style, args: argparse.Namespace) -> str:
    held = data.get("list") or {}
    version = held.get("version", 0)
    list_line = (f"token list: version {version}, {held.get('count', 0)} tokens" if version
                 else "token list: none received yet (version 0): ask the cloud with `hubctl resync`")
    if args.action == "version":
        return list_line
    if data.get("source") == "unknown":
        return "\n".join([
            f"card {data['token']}: unknown here ({_SOURCES['unknown']})",
            "  offline it follows [auth] unknown_offline; online the cloud is asked at the tap",
            list_line,
        ])
    lines = [
        f"card {data['token']}: {style.bold(str(data.get('status')))}",
        f"  from:      {_SOURCES.get(data.get('source'), data.get('source'))}",
        f"  type:      {data.get('type') or '-'}",
        f"  group:     {data.get('group') or '-'}",
        f"  reference: {data.get('reference') or '-'}",
    ]
    if data.get("expires"):
        lines.append(f"  expires:   {data['expires']}")
    lines.append(list_line)
    return "\n".join(lines)


def _exit_code(data: dict) -> int:
    return EXIT_NOT_FOUND if data.get("source") == "unknown" else EXIT_OK


def hubctl_commands() -> list[PartCommand]:
    return [PartCommand("tokens", "what the hub knows of a charge card, and the token list version held",
                        _configure, _request, _render, _exit_code)]
