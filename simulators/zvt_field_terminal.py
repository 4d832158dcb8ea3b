"""A ZVT terminal that behaves the way terminals in the field do, not the way
the hub expects: the peer for tests that must hold against a real one.

It speaks the same wire as the plain simulator (serial pty with framing and
ACK/NAK, or TCP) and keeps the same ledger of reservations, bookings and
reversals, and on top of it:

- it names only its first open reservation when asked for open
  pre-authorisations (06 23, receipt FF FF), as Feig cVEND terminals do:
  06 1E B8 with receipt FF FF when none is open (the capture
  partial_reversal.blob), else with the first open receipt, and no list;
- it works one command at a time: a command that arrives while it is busy
  (finishing a late transaction, waiting for an acknowledgement) is read
  once it is free and refused then with 84 9C, busy (``busy_refusal``, as
  the terminal of issue 15 did; an abort is taken), or with
  ``busy_refusal=False`` carried out in its turn;
- faults, from a script (``plan``) or drawn at random (``seed``,
  ``fault_rate``), on each command about money (06 22, 06 23, 06 24, 06 25)
  and on the open-reservations query:

  ``nak``      serial: every send of the command's frame is NAKed (the
               controller gives up; nothing done); TCP: 84 9C, busy
  ``silent``   the command is taken (ACK on the line) and never answered
               nor carried out (the terminal hung before it)
  ``mute``     carried out, never answered (the answer is lost)
  ``late``     carried out, answered ``late_s`` later, past the
               controller's T4, while its next command may already wait
  ``restart_before`` / ``restart_after``
               the terminal restarts on taking the command, before or
               after carrying it out: TCP connections drop and the port
               refuses for ``restart_s``, the serial line is deaf as long,
               input and in-flight state are forgotten; its reservations
               and bookings are kept

A booking, once carried out, stays booked whatever happens to its answer
(it is at the host); an approval whose result the controller never
acknowledges is reversed by the terminal itself, as ZVT terminals do.
``ledger(terminal)`` gives what it did, in the shape the chaos run's hold
check reads (bench/chaos.py ``check_holds``).
"""

from __future__ import annotations

import asyncio
import random
from collections import deque

from drivers.zvt import messages as m
from drivers.zvt.apdu import Apdu, decode_apdu
from drivers.zvt.bmp import RECEIPT_ALL
from simulators.zvt_terminal import ZvtTerminalSimulator, _Channel

FAULTS = ("nak", "silent", "mute", "late", "restart_before", "restart_after")
_MONEY = {m.PRE_AUTHORISATION, m.PARTIAL_REVERSAL, m.BOOK_TOTAL, m.PRE_AUTHORISATION_REVERSAL}
_NAKS_PER_FRAME = 3  # the controller's sends of one frame before it gives up


class _Stop(Exception):
    """The terminal sends nothing more for this command."""


class _Withheld(_Channel):
    """The terminal's side of one command whose answer is withheld: its 80 00
    goes out, its first result is dropped (mute), held back (late) or never
    sent because the terminal restarts (restart_after)."""

    def __init__(self, sim: "FieldTerminal", inner: _Channel, fault: str):
        self.sim, self.inner, self.fault = sim, inner, fault
        self.name = inner.name

    async def send(self, apdu: bytes) -> None:
        if Apdu(apdu[0], apdu[1]).control != m.ACK:
            if self.fault in ("mute", "restart_after"):
                raise _Stop(self.fault)
            if self.fault == "late":
                self.fault = "answered late"
                self.sim.events.append("late_answer_held")
                await asyncio.sleep(self.sim.late_s)
                self.sim._busy_meanwhile(self.inner)
                self.sim.events.append("late_answer_sent")
        await self.inner.send(apdu)

    async def receive(self, timeout: float | None) -> bytes | None:
        return await self.sim._read(self.inner, timeout)

    def close(self) -> None:
        self.inner.close()


class FieldTerminal(ZvtTerminalSimulator):
    def __init__(self, *, seed: int | None = None, fault_rate: float = 0.0, faults: tuple[str, ...] = FAULTS,
                 late_s: float = 3.0, restart_s: float = 1.0, busy_refusal: bool = True, **kw) -> None:
        super().__init__(**kw)
        unknown = set(faults) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}: choose from {', '.join(FAULTS)}")
        self.plan: list[str | None] = []  # the next commands' faults, in order (None: answered normally)
        self.rng = random.Random(seed)
        self.fault_rate = fault_rate
        self.faults = tuple(faults)
        self.late_s = late_s
        self.restart_s = restart_s
        self.restarts = 0
        self.busy_refusal = busy_refusal
        self.refused_busy: list[str] = []  # commands refused because they came while it was busy
        self.faults_done: list[tuple[str, str]] = []  # (fault, command) as they happened
        # Commands read while busy, to be taken in turn: (APDU, came while busy).
        self._backlog: dict[_Channel, deque[tuple[bytes, bool]]] = {}
        self._came_busy: dict[_Channel, bool] = {}  # the command just read came while it was busy
        self._deaf_until = 0.0
        self._naking: tuple[bytes, int] | None = None  # a frame being NAKed, and how often so far
        self._relisten: asyncio.TimerHandle | None = None  # the TCP port opening again after a restart

    # -- faults ------------------------------------------------------------------------

    def _draw(self, on_pty: bool, at_frame: bool = False) -> str | None:
        """The fault for the next command about money: from the plan, else at
        random (``fault_rate``: the share of such commands with a fault). On
        the serial line a NAK is decided on the frame, the rest once the
        command is read."""
        if self.plan:
            if at_frame:
                return self.plan.pop(0) if self.plan[0] == "nak" else None
            return self.plan.pop(0)
        if at_frame:
            hit = "nak" in self.faults and self.rng.random() < self.fault_rate / len(self.faults)
            return "nak" if hit else None
        kinds = [f for f in self.faults if not (f == "nak" and on_pty)]
        if not kinds or self.rng.random() >= self.fault_rate * len(kinds) / len(self.faults):
            return None
        return self.rng.choice(kinds)

    def _about_money(self, apdu: bytes) -> bool:
        try:
            message = m.decode_message(decode_apdu(apdu))
        except ValueError:
            return False
        return message.control in _MONEY

    def frame_verdict(self, apdu: bytes) -> str:
        if asyncio.get_running_loop().time() < self._deaf_until:
            return "drop"
        if self._naking is not None and self._naking[0] == apdu:
            frame, count = self._naking
            self._naking = (frame, count + 1) if count + 1 < _NAKS_PER_FRAME else None
            return "nak"
        if self._about_money(apdu) and self._draw(on_pty=True, at_frame=True) == "nak":
            self.faults_done.append(("nak", m.decode_message(decode_apdu(apdu)).name))
            self._naking = (apdu, 1)
            return "nak"
        return super().frame_verdict(apdu)

    # -- one command at a time ---------------------------------------------------------

    async def _read(self, channel: _Channel, timeout: float | None) -> bytes | None:
        backlog = self._backlog.setdefault(channel, deque())
        if backlog:
            raw, busy = backlog.popleft()
            self._came_busy[channel] = busy
            return raw
        self._came_busy[channel] = False
        return await channel.receive(timeout)

    def _busy_meanwhile(self, channel: _Channel) -> None:
        """What arrived while it was busy waits its turn, marked so."""
        self._backlog.setdefault(channel, deque()).extend((raw, True) for raw in channel.waiting())

    async def _expect_ack(self, channel: _Channel) -> bool:
        """Wait for the controller's 80 00; a command that comes meanwhile
        waits its turn instead of being lost."""
        inner = getattr(channel, "inner", channel)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.t3_ack
        while True:
            reply = await inner.receive(max(0.0, deadline - loop.time()))
            if reply is None:
                return False
            if Apdu(reply[0], reply[1]).control == m.ACK:
                return True
            self._backlog.setdefault(inner, deque()).append((reply, True))

    async def _serve(self, channel: _Channel) -> None:
        try:
            await super()._serve(channel)
        finally:
            self._backlog.pop(channel, None)
            self._came_busy.pop(channel, None)

    async def _dispatch(self, channel: _Channel, message: m.Message) -> None:
        if self._came_busy.pop(channel, False) and self.busy_refusal and message.control not in (m.ABORT, m.ACK):
            self.refused_busy.append(message.name)
            await self._send(channel, m.nak(m.NAK_REPEAT))
            return
        query = message.control == m.PARTIAL_REVERSAL and message.get(0x87) == RECEIPT_ALL  # 06 23 FF FF
        fault = self._draw(on_pty=channel.name == "pty") if message.control in _MONEY else None
        if fault is None:
            await super()._dispatch(channel, message)
            return
        self.faults_done.append((fault, "open query" if query else message.name))
        self.events.append(f"fault {fault} {message.name}")
        if fault == "nak":  # TCP has no frames to refuse: the terminal says busy
            await self._send(channel, m.nak(m.NAK_REPEAT))
            return
        if fault == "silent":
            return
        if fault == "restart_before":
            await self._restart()
            return
        withheld = _Withheld(self, channel, fault)
        before = {id(t) for t in self.transactions}
        try:
            await super()._dispatch(withheld, message)
        except _Stop:
            if fault == "restart_after":
                await self._restart()  # what it did stays done; nothing of it was answered
            elif message.control == m.PRE_AUTHORISATION:
                # Its result never reached the controller: the terminal reverses it itself.
                for t in self.transactions:
                    if id(t) not in before and t.state == "open":
                        t.state = "reversed"
                        self.events.append(f"auto_reversal receipt={t.receipt_no}")

    # -- restarts ----------------------------------------------------------------------

    async def _restart(self) -> None:
        """Power cycle: connections drop, input and in-flight state are
        forgotten, reservations and bookings stay."""
        self.restarts += 1
        self.events.append("restart")
        loop = asyncio.get_running_loop()
        self._deaf_until = loop.time() + self.restart_s
        self._naking = None
        for channel in list(self._channels):
            self._backlog.pop(channel, None)
            forget = getattr(channel, "forget_input", None)
            if forget is not None:
                forget()
            elif channel.name == "tcp":
                channel.close()
        if self._server is not None:
            self._server.close()
            self._server = None
            self._relisten = loop.call_later(self.restart_s, lambda: self._spawn(self._listen_again()))

    async def _listen_again(self) -> None:
        self._relisten = None
        if self.tcp_port is not None and self._server is None:
            self._server = await asyncio.start_server(self._on_tcp, self.host, self.tcp_port, reuse_address=True)

    async def stop(self) -> None:
        if self._relisten is not None:
            self._relisten.cancel()
            self._relisten = None
        await super().stop()

    # -- what it holds -------------------------------------------------------------------

    async def _partial_reversal(self, channel: _Channel, message: m.Message) -> None:
        if message.get(0x87) != RECEIPT_ALL:
            await super()._partial_reversal(channel, message)
            return
        first = min(self.open_reservations(), default=None)  # the first open one only, no list
        await self._send(channel, m.ack())
        await self._exchange_end(channel, m.abort_from_terminal(0xB8, [(0x87, first if first is not None else RECEIPT_ALL)]))

    def ledger(self, terminal: str) -> list[dict]:
        """Every approved reservation and what became of it, for the hold check."""
        return [{"terminal": terminal, "receipt_no": t.receipt_no, "amount": t.amount, "state": t.state,
                 "booked": t.booked} for t in self.transactions if t.receipt_no is not None]
