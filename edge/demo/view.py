"""What a person sees of the demo day: the live view's lines (the daemon's
events, shortened), its clock on the day's time, and the summary at the end."""

from __future__ import annotations

import re
from pathlib import Path

from edge.demo.site import DemoHub
from edge.demo.story import clock_text
from edge.hubctl_render import METHODS


def events_since(log_path: Path, offset: int) -> tuple[list[str], int]:
    try:
        with open(log_path, "rb") as f:
            f.seek(offset)
            chunk = f.read()
    except FileNotFoundError:
        return [], offset
    lines = chunk.decode(errors="replace").splitlines()
    return [line for line in lines if " event type=" in line or line.split(" ", 2)[1:2] in (["warning"], ["error"])], offset + len(chunk)


def day_view(hub: DemoHub, status: dict):
    """The live view on the demo day's clock: ages and instants in demo time."""
    from datetime import datetime

    from edge.hubctl_render import TimeView

    def elapsed(when: datetime) -> float:
        return hub.clock.now() - hub.clock.day_of(when.timestamp())

    return TimeView(status.get("timezone"), elapsed=elapsed, instant=lambda when: clock_text(hub.clock.day_of(when.timestamp()))[:5])


_UUID = re.compile(r"\b([0-9a-f]{8})-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")


def brief(line: str, width: int) -> str:
    """A daemon log line as the live view shows it: no time stamp, ids
    shortened, cut to the width."""
    parts = line.split(" ", 3)
    if len(parts) == 4 and parts[0][:4].isdigit():
        line = parts[3] if parts[1] == "info" else f"{parts[1]}: {parts[3]}"
    line = _UUID.sub(r"\1", line.replace("event type=", ""))
    return line if len(line) <= width else line[: width - 1] + "…"


async def day_summary(hub: DemoHub, notes: list[str] = (), *, cut: str = "") -> str:
    status = await hub.ask("status")
    sessions = await hub.ask("sessions", {"limit": 10000})
    outbox = await hub.ask("outbox")
    done = [s for s in sessions if s["status"] == "stopped"]
    energy = sum(s.get("energy_wh") or 0 for s in sessions) / 1000
    by_method: dict[str, int] = {}
    for s in sessions:
        by_method[s["method"]] = by_method.get(s["method"], 0) + 1
    faults = [d for d in status["devices"] if d["state"] == "fault"]
    still = sum(1 for s in sessions if s["status"] in ("starting", "active"))
    lines = [
        "",
        "=== hub-edge demo summary ===" + (f" ({cut})" if cut else ""),
        f"sessions: {len(sessions)} ({len(done)} ended, {still} still charging); by method: "
        + (", ".join(f"{n} {METHODS.get(m, m)}" for m, n in sorted(by_method.items())) or "none"),
        f"energy delivered: {energy:.1f} kWh",
        "connectors now: " + ", ".join(f"{c['connector']} {c['status']}" for c in status["connectors"]),
        f"devices in fault now: {len(faults)}",
        f"events recorded: {outbox.get('total_put', '?')}; waiting for the cloud: {outbox.get('depth', 0)}",
    ]
    for part in hub.parts:
        lines += part.summary(status, sessions)
    lines += [f"note: {n}" for n in notes]
    lines += ["the day:", *("  " + line for line in hub.script_log)]
    return "\n".join(lines)
