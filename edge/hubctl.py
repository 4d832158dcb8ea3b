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
from datetime import datetime, timedelta
from typing import Any, Callable

from edge.hubctl_render import (Style, TimeView, parse_when, render_audit, render_devices, render_outbox,
                                render_sessions, render_status, table)
from units import rfc3339

# The parts' hubctl modules take the renderers they need (Style, table, TimeView,
# parse_when) from here: a part's face may import edge.hubctl, not its other modules.

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
