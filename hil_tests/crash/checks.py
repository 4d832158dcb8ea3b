"""What must hold after every run, crash or no crash (R-C9, R-P4, R-M2, R-G6).

The chaos run's checks (bench/chaos.py) judge sessions, holds (against the
terminal simulator's own records), exits and the daemon's health; the
scenarios' cloud checker (hil_tests/scenarios/cloud_contract.py) judges the
event stream as the cloud received it (gapless seqs from 1 per stream, one
id per seq, identical resends, schemas, offline flags, the last will). On
top, what a crash between two commits would lose without leaving a gap:

- every session announced once: a stopped session has exactly one
  ``session.started`` and one ``session.stopped``, a failed start one
  ``session.stopped`` and no start;
- every hold's outcome announced once: ``payment.settled``,
  ``payment.released`` or ``payment.declined`` as the ledger says, one
  ``payment.preauthorized`` for a hold that was approved;
- a booking's steps announced once each (assigned, arrived, charging,
  fulfilled), and the booking ended;
- each connector's status events chain (every ``previous`` is the status
  the last event gave), so no change went unannounced;
- nothing left open: every connector Available, no session open, no
  booking in progress, every barrier down.

Each check returns its violations as sentences naming the broken invariant.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from pathlib import Path

from bench.chaos import check_exits, check_health, check_holds, check_sessions
from hil_tests.crash.journeys import UNLOCK_PATIENCE_S

FINAL_HOLDS = ("declined", "settled", "released", "lapsed")


def read_ledgers(db_path: Path) -> tuple[list[dict], list[dict]]:
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    db.row_factory = sqlite3.Row
    try:
        sessions = [dict(r) for r in db.execute("SELECT * FROM sessions ORDER BY started_at")]
        try:
            holds = [dict(r) for r in db.execute("SELECT * FROM payment_holds ORDER BY created_at")]
        except sqlite3.OperationalError:  # the payment part made no table: no terminal in use
            holds = []
    finally:
        db.close()
    return sessions, holds


def _by(events: list[dict], type_: str, key: str) -> dict[str, set]:
    out: dict[str, set] = defaultdict(set)
    for e in events:
        if e.get("type") == type_:
            out[str((e.get("data") or {}).get(key))].add(e["id"])
    return out


def announced_once(sessions: list[dict], holds: list[dict], events: list[dict]) -> list[str]:
    out = []
    started, stopped = _by(events, "session.started", "session"), _by(events, "session.stopped", "session")
    for s in sessions:
        sid, short = str(s["id"]), str(s["id"])[:8]
        want_started = {"stopped": 1, "failed": 0}.get(s["status"])
        if want_started is None:
            continue  # still open: reported as open
        if len(started.get(sid, ())) != want_started:
            out.append(f"session {short} ({s['status']}) was announced started {len(started.get(sid, ()))} times, "
                       f"not {want_started}")
        if len(stopped.get(sid, ())) != 1:
            out.append(f"session {short} ({s['status']}) was announced stopped {len(stopped.get(sid, ()))} times, not once")
    outcome = {t: _by(events, f"payment.{t}", "payment") for t in ("preauthorized", "settled", "released", "declined")}
    for h in holds:
        pid, short = str(h["id"]), str(h["id"])[:8]
        if h["state"] not in FINAL_HOLDS or h["state"] == "lapsed":
            continue  # open or lapsed: the hold check reports it
        for t in ("settled", "released", "declined"):
            n, want = len(outcome[t].get(pid, ())), int(h["state"] == t)
            if n != want:
                out.append(f"hold {short} ({h['state']}) has {n} payment.{t} events, not {want}")
        n = len(outcome["preauthorized"].get(pid, ()))
        if h.get("kind") == "session" and (n > 1 or (h["state"] == "settled" and n != 1)):
            out.append(f"hold {short} ({h['state']}) was announced pre-authorised {n} times")
    return out


def connector_chains(events: list[dict]) -> list[str]:
    out = []
    last: dict[str, str] = {}
    for e in sorted((e for e in events if e.get("type") == "connector.status"), key=lambda e: e["seq"]):
        d = e["data"]
        cid = d["connector"]
        if cid in last and d.get("previous") != last[cid]:
            out.append(f"connector {cid}: status event #{e['seq']} goes {d.get('previous')} -> {d['status']}, "
                       f"but the last one announced {last[cid]}: a change went unannounced")
        last[cid] = d["status"]
    return out


def booking_steps(booking: str, row: dict | None, events: list[dict]) -> list[str]:
    out = []
    if row is None:
        return [f"booking {booking} is unknown to the hub at the end"]
    if row.get("state") != "fulfilled":
        out.append(f"booking {booking} ended {row.get('state')}, not fulfilled")
    for step in ("assigned", "arrived", "charging", "fulfilled"):
        n = len(_by(events, f"booking.{step}", "booking").get(booking, ()))
        if n != 1:
            out.append(f"booking {booking} was announced {step} {n} times, not once")
    return out


def nothing_open(status: dict | None, sessions: list[dict], barriers: dict[str, str]) -> list[str]:
    out = [f"barrier {gid} is {shows} at the end, with the journey over" for gid, shows in barriers.items()
           if shows != "closed"]
    out += [f"session {str(s['id'])[:8]} on {s['connector']} is still {s['status']} at the end"
           for s in sessions if s["status"] in ("starting", "active")]
    for c in (status or {}).get("connectors", []):
        if c["status"] != "Available" or c.get("session") or c.get("reserved_for"):
            out.append(f"connector {c['connector']} is {c['status']} at the end (session {c.get('session')}, "
                       f"reserved for {c.get('reserved_for')})")
    return out


def check_run(run, journey, *, finished: bool, status: dict | None, daemon_running: bool,
              verdict, sessions: list[dict], holds: list[dict], bookings: list[dict] | None,
              barriers: dict[str, str]) -> list[str]:
    """Every violation of one run, each a sentence saying what broke."""
    events = run.contract.events()
    out: list[str] = []
    if not finished:
        out.append(f"the journey could not finish; the driver was left with: {journey.where}")
    if journey.locked_in:
        calls = len(journey.locked_in)
        out.append(f"the truck stayed locked to its connector after the charge (R-C5): the driver called a technician "
                   f"after {UNLOCK_PATIENCE_S:.0f} s{'' if calls == 1 else f', {calls} times'}; {journey.locked_in[-1]}")
    out += [f"stopped answering: {h}" for h in run.hangs]
    out += [f"events: {p}" for p in verdict.problems]
    started = [e for e in events if e.get("type") == "session.started"]
    payments = [e for e in events if str(e.get("type", "")).startswith("payment.")]
    for chk in (check_sessions(journey.visits, sessions, started),
                check_holds(holds, run.terminal_transactions(), sessions, payments),
                check_exits(journey.passages),
                check_health(status, daemon_running=daemon_running, unexpected_exits=run.unexpected_exits)):
        out += [f"{chk.name}: {v}" for v in chk.violations]
    out += announced_once(sessions, holds, events)
    out += connector_chains(events)
    out += nothing_open(status, sessions, barriers)
    if journey.name == "booked_truck":
        row = next((b for b in bookings or [] if b["booking"] == journey.booking), None)
        out += booking_steps(journey.booking, row, events)
    return out
