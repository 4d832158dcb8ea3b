"""A scenario's timeline: what each device and the cloud saw, in order.

Every scenario test writes one to ``artifacts/timelines/<scenario>.md``
(R-H2 reports). A row is a time relative to the scenario's start, who saw
it (the test's own steps, the cloud, the terminal, a charger, a barrier, a
reader, the daemon's log) and what happened, in words a person who never
saw the code can follow.

Rows come from three places: the test's steps (``step``), the cloud-side
checker (every message it receives), and ``DeviceWatch``, which looks at
the simulators' own records a few times a second (commands a charger took,
the terminal's transactions, coil writes at the barriers, cards read) and
at the daemon's log for warning and error lines.

Raw plates and card numbers never reach the file: the test registers each
plate and card it uses (``hide``) and every row is passed through
``redact``, which also blanks any long run of digits that could be a card
number.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from drivers.device import cancel_and_wait

ROOT = Path(__file__).resolve().parents[2]
TIMELINES = ROOT / "artifacts" / "timelines"

# Anything that looks like a card number (PCI DSS: at most BIN and last four).
_PAN_LIKE = re.compile(r"\d{12,19}")


@dataclass
class Row:
    at_s: float
    source: str
    text: str


class Timeline:
    def __init__(self, name: str, title: str, rules: list[str]):
        self.name = name
        self.title = title
        self.rules = rules
        self.t0_mono = time.monotonic()
        self.t0_utc = datetime.now(timezone.utc)
        self.rows: list[Row] = []
        self.notes: list[str] = []
        self._hidden: dict[str, str] = {}
        self._lock = threading.Lock()  # the cloud checker adds rows from paho's thread

    # -------------------------------------------------------------- times
    def since_start(self, *, mono: float | None = None, utc: datetime | None = None) -> float:
        if utc is not None:
            return (utc - self.t0_utc).total_seconds()
        return (mono if mono is not None else time.monotonic()) - self.t0_mono

    # -------------------------------------------------------------- rows
    def add(self, source: str, text: str, *, mono: float | None = None, utc: datetime | None = None) -> None:
        row = Row(self.since_start(mono=mono, utc=utc), source, self.redact(text))
        with self._lock:
            self.rows.append(row)

    def step(self, text: str) -> None:
        """What the test did (a truck plugs in, a driver taps a card, ...)."""
        self.add("scenario", text)

    def note(self, text: str) -> None:
        """A line for the summary at the end (a figure, an outcome)."""
        self.notes.append(self.redact(text))

    # -------------------------------------------------------------- privacy
    def hide(self, raw: str, shown: str) -> None:
        """Write ``shown`` wherever ``raw`` (a plate, a card uid) would appear."""
        if raw:
            self._hidden[raw] = shown

    def redact(self, text: str) -> str:
        for raw, shown in sorted(self._hidden.items(), key=lambda kv: -len(kv[0])):
            text = text.replace(raw, shown)
        return _PAN_LIKE.sub(lambda m: "#" * 6 + m.group(0)[-4:], text)

    # -------------------------------------------------------------- output
    def markdown(self, outcome: str, checks: list[str]) -> str:
        with self._lock:
            rows = sorted(self.rows, key=lambda r: r.at_s)
        width = max((len(r.source) for r in rows), default=8)
        lines = [
            f"# {self.title}",
            "",
            f"- scenario: `{self.name}`",
            f"- rules: {', '.join(self.rules) or '-'}",
            f"- started: {self.t0_utc.isoformat(timespec='seconds')} (times below are seconds from here)",
            f"- outcome: **{outcome}**",
            "",
            "How to read this: each line is one thing one party saw, in time order. `scenario` lines are what",
            "the test did (trucks, drivers, the cloud's team); `cloud` lines are what reached the cloud over MQTT",
            "(`#n` is the event's number in its stream, `(offline)` marks an event queued while the link was",
            "down); `T1` is the arch payment terminal, `CH1`/`CH2` the chargers, `G-IN`/`G-OUT` the barriers,",
            "`R1`/`R2` the card readers, `daemon` a warning or error from the hub's log.",
            "",
            "```",
        ]
        for r in rows:
            lines.append(f"{r.at_s:+8.2f}s  {r.source:<{width}}  {r.text}")
        lines += ["```", ""]
        if self.notes:
            lines += ["## Figures", ""] + [f"- {n}" for n in self.notes] + [""]
        lines += ["## Cloud-side checks", ""] + ([f"- {c}" for c in checks] or ["- (not reached)"]) + [""]
        return self.redact("\n".join(lines))

    def write(self, outcome: str, checks: list[str], directory: Path = TIMELINES) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.name}.md"
        path.write_text(self.markdown(outcome, checks))
        return path


class DeviceWatch:
    """Looks at the simulators' records and the daemon's log a few times a
    second and turns what is new into timeline rows."""

    def __init__(self, timeline: Timeline, demo, log_path: Path | None):
        self.tl = timeline
        self.demo = demo
        self.log_path = log_path
        self._log_offset = 0
        self._charger_seen: dict[str, int] = {}
        self._coils_seen: dict[str, int] = {}
        self._tx_seen: dict[str, list[tuple]] = {}
        self._cards_seen: dict[str, int] = {}
        self._card_last: dict[str, float] = {}
        self._task: asyncio.Task | None = None
        # Commands a charger took before the scenario began are not its story.
        for cid, sim in demo.chargers.items():
            self._charger_seen[cid] = len(sim.commands)
        for gid, sim in (demo.devices.get("barriers") or {}).items():
            self._coils_seen[gid] = len(sim.commands)
        for rid, sim in (demo.devices.get("readers") or {}).items():
            self._cards_seen[rid] = sim.cards_read
        if log_path is not None and log_path.exists():
            self._log_offset = log_path.stat().st_size

    def start(self) -> "DeviceWatch":
        self._task = asyncio.get_running_loop().create_task(self._run(), name="timeline-watch")
        return self

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])
        self.look()  # whatever happened since the last look

    async def _run(self) -> None:
        while True:
            self.look()
            await asyncio.sleep(0.05)

    def look(self) -> None:
        self._chargers()
        self._terminals()
        self._barriers()
        self._readers()
        self._daemon_log()

    # -------------------------------------------------------------- devices
    def _connector_id(self, charger_id: str, index: int) -> str:
        from edge.demo import CONNECTOR_SIMS

        for cid, (get, i) in CONNECTOR_SIMS.items():
            if i == index and get(self.demo) is self.demo.chargers.get(charger_id):
                return cid
        return f"connector {index + 1}"

    def _chargers(self) -> None:
        for charger_id, sim in self.demo.chargers.items():
            seen = self._charger_seen.get(charger_id, 0)
            for cmd in sim.commands[seen:]:
                what = cmd.name.replace("_", " ") + (f" {cmd.value}" if cmd.value is not None else "")
                verdict = "done" if cmd.accepted else "refused by the charger"
                by = "" if cmd.source == "modbus" else " (from the charger's own panel)"
                self.tl.add(charger_id, f"{self._connector_id(charger_id, cmd.connector)}: {what} {verdict}{by}", mono=cmd.at)
            self._charger_seen[charger_id] = len(sim.commands)

    def _terminals(self) -> None:
        for tid, sim in (self.demo.devices.get("terminals") or {}).items():
            before = self._tx_seen.setdefault(tid, [])
            now = [(t.receipt_no, t.trace_no, t.state, t.amount, t.booked) for t in sim.transactions]
            for i, (receipt, _trace, state, amount, booked) in enumerate(now):
                old = before[i] if i < len(before) else None
                if old is not None and old[2] == state:
                    continue
                money = f"{amount} {sim.currency.alpha}"
                if old is None:
                    texts = {
                        "open": f"pre-authorisation of {money} approved (receipt {receipt}): the amount is held on the card",
                        "declined": f"pre-authorisation of {money} declined by the card's bank",
                        "aborted": f"pre-authorisation of {money} aborted at the terminal",
                        "booked": f"pre-authorisation of {money} approved (receipt {receipt}) and booked at once: {booked}",
                        "reversed": f"pre-authorisation of {money} approved (receipt {receipt}) and reversed at once",
                    }
                else:
                    texts = {
                        "booked": f"receipt {receipt}: {booked} {sim.currency.alpha} booked (the rest of the {money} hold is freed)",
                        "reversed": f"receipt {receipt}: the {money} hold is released, nothing charged",
                    }
                self.tl.add(tid, texts.get(state, f"receipt {receipt}: {state}"))
            self._tx_seen[tid] = now

    def _barriers(self) -> None:
        for gid, sim in (self.demo.devices.get("barriers") or {}).items():
            seen = self._coils_seen.get(gid, 0)
            for w in sim.commands[seen:]:
                meaning = {"open": "OPEN impulse", "hold_open": "hold-open", "close": "CLOSE (software must never send this)"}
                self.tl.add(gid, f"barrier coil {meaning.get(w.coil, w.coil)} {'on' if w.value else 'off'}", utc=w.ts)
            self._coils_seen[gid] = len(sim.commands)

    def _readers(self) -> None:
        for rid, sim in (self.demo.devices.get("readers") or {}).items():
            seen = self._cards_seen.get(rid, 0)
            if sim.cards_read > seen:
                # The reader senses a card many times while it lies in the
                # field: one row per presentation.
                now = time.monotonic()
                if now - self._card_last.get(rid, 0.0) > 1.0:
                    self.tl.add(rid, "the hub's reader picks up the card in its field")
                self._card_last[rid] = now
            self._cards_seen[rid] = sim.cards_read

    def _daemon_log(self) -> None:
        if self.log_path is None:
            return
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        # Only whole lines; a half-written one waits for the next look.
        end = chunk.rfind(b"\n") + 1
        self._log_offset += end
        for line in chunk[:end].decode(errors="replace").splitlines():
            parts = line.split(" ", 3)
            if len(parts) < 4 or parts[1] not in ("warning", "error", "critical"):
                continue
            try:
                utc = datetime.fromisoformat(parts[0].replace("Z", "+00:00"))
            except ValueError:
                utc = None
            self.tl.add("daemon", f"{parts[1]}: {parts[2]} {parts[3]}"[:400], utc=utc)
