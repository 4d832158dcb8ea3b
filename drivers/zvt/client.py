"""ZVT client: the controller (ECR) side of a payment terminal, for asyncio.

The client sends one command at a time, then follows the terminal while it is
master (intermediate status, status information, print texts) until Completion
(06 0F) or Abort (06 1E), acknowledging each message. It holds no business
rules: it returns typed results and raises typed transport errors; the payment
flow and ledger decide what to do with them.

Answers are matched to their command. Nothing the terminal sends before it
has taken the command (80 00) belongs to it; an answer about a receipt other
than the one asked about is no answer to it. After any exchange that ended
without its answer (a time-out, a lost link, an unreadable or foreign
message) the terminal may still be finishing it and its late answer may come
at any time, so before the next command the link is brought back in step:
abort, acknowledge and drop whatever the terminal still sends until it is
quiet, then a status enquiry whose own answer proves the terminal is
listening again. Only then does the next command go out.

Card data never leaves the driver in full: results carry at most the BIN and
last four digits, and the terminal's card identification item (TLV 1F14) as a
token to recognise the same card again (R-P1, R-P6).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Awaitable, Callable

from drivers.device import DeviceFault, DeviceHealth, DeviceRecovered
from drivers.zvt import messages as m
from drivers.zvt.bmp import RECEIPT_ALL
from drivers.zvt.errors import (
    TerminalError,
    TerminalProtocolError,
    TerminalRefused,
    TerminalTimeout,
    TerminalUnavailable,
    ZvtDecodeError,
)
from drivers.zvt.link import Link, Timers, open_link
from drivers.zvt.result_codes import intermediate_text, reason_for, terminal_status_text
from units import Clock
from units import currency as currency_info
from units import currency_by_numeric, from_minor_units, to_minor_units

log = logging.getLogger("hubedge.zvt")

StatusCallback = Callable[[str], "None | Awaitable[None]"]

# Registration config byte, as Feig cVEND field installations send it: the
# terminal sends receipts to the controller instead of printing (an arch has no
# printer), sends intermediate status, and leaves payment and admin to the ECR.
DEFAULT_CONFIG_BYTE = 0xDE


@dataclass(frozen=True)
class PaymentResult:
    command: str
    ok: bool
    result_code: int | None
    reason: str  # for the driver at the arch or the operator: what happened, what to do
    receipt_no: int | None = None
    trace_no: int | None = None
    amount: Decimal | None = None
    currency: str | None = None
    card_name: str | None = None
    card_token: str | None = None  # terminal's card identification item (hex), never the PAN
    masked_pan: str | None = None  # at most BIN + last four
    terminal_id: str | None = None
    approval_code: str | None = None  # BMP 3B, the issuer's authorisation attribute
    texts: tuple[str, ...] = ()  # intermediate texts the terminal showed, in order
    detail: str | None = None  # the terminal's own error text (TLV 1F17) when it gave one


@dataclass(frozen=True)
class TerminalStatus:
    ok: bool
    status_code: int | None
    text: str
    software_version: str | None = None
    terminal_id: str | None = None


@dataclass(frozen=True)
class OpenPreauthorization:
    """A reservation the terminal still holds. ZVT reports receipt numbers only:
    the amount comes from the controller's ledger when the terminal gives none."""

    receipt_no: int
    amount: Decimal | None = None
    currency: str | None = None


@dataclass(frozen=True)
class OpenReservations:
    """The terminal's answer to the open pre-authorisation query.

    ``receipts`` are open for certain. ``complete`` is True only when the
    terminal said that nothing at all is open (receipt FF FF): a terminal
    that names some receipts may name only the first (Feig cVEND does), so
    a receipt it does not name may still be open. Iterates over
    ``receipts``."""

    receipts: tuple[OpenPreauthorization, ...] = ()
    complete: bool = False

    def __iter__(self):
        return iter(self.receipts)

    def __len__(self) -> int:
        return len(self.receipts)

    @property
    def named(self) -> frozenset[int]:
        return frozenset(o.receipt_no for o in self.receipts)


# The messages a terminal sends as the result of a command; anything of these
# that arrives before the command was taken is left over from another one.
_RESULTS = (m.STATUS_INFORMATION, m.COMPLETION, m.ABORT_FROM_TERMINAL)
# Stray messages tolerated within one exchange before the terminal is taken
# for one that talks past the controller.
_STRAYS_MAX = 20


@dataclass
class _Exchange:
    command: str
    receipt: int | None = None  # the reservation asked about: answers must name this one or none
    enquiry: bool = False  # a status enquiry: only a completion with the terminal's status ends it
    status_infos: list[m.Message] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    completion: m.Message | None = None
    abort: m.Message | None = None
    refused: int | None = None
    strays: int = 0


class ZvtClient:
    def __init__(
        self,
        link: Link,
        *,
        password: int | str,
        currency: str = "EUR",
        on_status: StatusCallback | None = None,
        on_health: Callable[[object], None] | None = None,
        clock: Clock | None = None,
        device_id: str = "terminal",
        config_byte: int = DEFAULT_CONFIG_BYTE,
        payment_type: int | None = None,
    ) -> None:
        self._link = link
        self.timers: Timers = link.timers
        self.password = int(password)
        if not 0 <= self.password <= 999999:
            raise ValueError("terminal password must have at most six digits")
        self.currency = currency_info(currency).alpha
        self.on_status = on_status
        self.on_health = on_health
        self.clock = clock or Clock()
        self.config_byte = config_byte
        self.payment_type = payment_type
        self.health = DeviceHealth(device_id, "terminal", since=self.clock.now())
        self._lock = asyncio.Lock()
        self._running: str | None = None
        self._connected = False
        # An exchange ended without its answer: the terminal may still send it.
        self._out_of_step = False
        # The latest messages that answered no command of ours (for `hubctl devices` and tests).
        self.strays: deque[str] = deque(maxlen=50)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        password: int | str,
        currency: str = "EUR",
        on_status: StatusCallback | None = None,
        on_health: Callable[[object], None] | None = None,
        clock: Clock | None = None,
        timers: Timers | None = None,
        device_id: str | None = None,
        baudrate: int = 9600,
        config_byte: int = DEFAULT_CONFIG_BYTE,
        payment_type: int | None = None,
    ) -> "ZvtClient":
        """``url``: ``tcp://host:port``, a device path such as /dev/ttyUSB0, a pty
        path, or any pyserial URL."""
        link = open_link(url, timers or Timers(), baudrate=baudrate)
        return cls(
            link,
            password=password,
            currency=currency,
            on_status=on_status,
            on_health=on_health,
            clock=clock,
            device_id=device_id or url,
            config_byte=config_byte,
            payment_type=payment_type,
        )

    # -- connection ----------------------------------------------------------------

    async def connect(self) -> None:
        if self._connected:
            return
        try:
            await self._link.open()
        except TerminalError as exc:
            self._fault(str(exc))
            raise
        self._connected = True
        log.info("zvt.connected terminal=%s", self.health.device_id)

    async def close(self) -> None:
        self._connected = False
        await self._link.close()

    async def reconnect(self) -> None:
        await self.close()
        await self.connect()

    async def __aenter__(self) -> "ZvtClient":
        await self.connect()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    @property
    def busy(self) -> bool:
        return self._running is not None

    @property
    def in_step(self) -> bool:
        """False after an exchange ended without its answer, until the link
        has been brought back in step (before the next command)."""
        return not self._out_of_step

    # -- commands ------------------------------------------------------------------

    async def register(self) -> PaymentResult:
        numeric = currency_info(self.currency).numeric
        ex = await self._run(m.registration(self.password, self.config_byte, numeric), money=False)
        return self._result(ex, self.currency)

    async def preauthorize(self, amount: Decimal, currency: str | None = None) -> PaymentResult:
        """06 22: reserve ``amount`` on the card. ``ok`` with a receipt number means
        a reservation now exists and must be booked or released (R-P4)."""
        cur = currency_info(currency or self.currency)
        minor = to_minor_units(amount, cur.alpha)
        if minor <= 0:
            raise ValueError(f"pre-authorisation amount {amount} must be above zero")
        msg = m.pre_authorisation(minor, cur.numeric, self.payment_type)
        return self._result(await self._run(msg), cur.alpha)

    async def book_preauth(
        self,
        receipt_no: int,
        amount: Decimal,
        *,
        preauthorized: Decimal,
        currency: str | None = None,
    ) -> PaymentResult:
        """06 23: book ``amount`` of the reservation ``receipt_no``. The command
        carries the part released, the pre-authorised amount minus ``amount``."""
        cur = currency_info(currency or self.currency)
        used = to_minor_units(amount, cur.alpha)
        held = to_minor_units(preauthorized, cur.alpha)
        if used < 0 or used > held:
            raise ValueError(
                f"booking {amount} {cur.alpha} on a hold of {preauthorized}: "
                "the booked amount must be between zero and the hold (R-P3)"
            )
        msg = m.partial_reversal(receipt_no, held - used, cur.numeric, self.payment_type)
        return self._result(await self._run(msg, receipt=receipt_no), cur.alpha)

    async def book_total(self, receipt_no: int, amount: Decimal, currency: str | None = None) -> PaymentResult:
        """06 24: book the reservation ``receipt_no`` with the final ``amount``."""
        cur = currency_info(currency or self.currency)
        minor = to_minor_units(amount, cur.alpha)
        if minor < 0:
            raise ValueError(f"booking amount {amount} must not be negative")
        return self._result(await self._run(m.book_total(receipt_no, minor, cur.numeric), receipt=receipt_no), cur.alpha)

    async def reverse_preauth(self, receipt_no: int, currency: str | None = None) -> PaymentResult:
        """06 25: release the whole reservation ``receipt_no``."""
        cur = currency_info(currency or self.currency)
        msg = m.pre_authorisation_reversal(receipt_no, cur.numeric, self.payment_type)
        return self._result(await self._run(msg, receipt=receipt_no), cur.alpha)

    async def read_card(self, timeout_s: int = 30) -> PaymentResult:
        """06 C0: the terminal reads a card without any payment. The result
        carries the card token (TLV 1F14) and at most BIN + last four, so the
        controller can tell whether it is the card that started a session
        (R-P1) without ever seeing the card number."""
        if not 0 < timeout_s <= 255:
            raise ValueError("read card time-out must be 1..255 seconds")
        ex = await self._run(m.read_card(timeout_s), money=False)
        return self._result(ex, self.currency)

    async def open_preauthorizations(self) -> OpenReservations:
        """The reservations the terminal still holds (06 23 with receipt FF FF).

        The answer is an abort (B8) naming the first open receipt, or FF FF
        when none is open; some terminals add a list (TLV 23). Only FF FF is
        taken as "nothing open": a terminal that names one receipt may hold
        others it does not name, so the caller must ask about each of its
        own reservations, or resolve the named one and ask again."""
        ex = await self._run(m.open_preauthorisations_query(), money=False)
        if ex.refused is not None:
            raise TerminalRefused(
                f"terminal refused the open pre-authorisation query ({reason_for(ex.refused)}): "
                "resolve reservations from the ledger instead",
                ex.refused,
            )
        reply = ex.abort or ex.completion
        receipts: list[int] = []
        first = reply.get(0x87) if reply is not None else None
        listing = reply.tlv_find(0x23) if reply is not None else None
        if listing is not None:
            for node in listing.find_all(0x08):
                if len(node.value) == 2 and node.value.hex().isdigit():
                    receipts.append(int(node.value.hex()))
        if isinstance(first, int) and first != RECEIPT_ALL and first not in receipts:
            receipts.insert(0, first)
        code = ex.abort.field("result_code") if ex.abort is not None else None
        if not receipts and first is None:
            # An abort for another reason (6C cancelled, 83 not possible ...) or a
            # bare completion: the terminal said nothing about its reservations.
            why = reason_for(code) if isinstance(code, int) else "an answer without a receipt number"
            raise TerminalRefused(
                f"terminal gave no list of open pre-authorisations ({why}): "
                "resolve reservations from the ledger instead",
                code if isinstance(code, int) else 0,
            )
        return OpenReservations(tuple(OpenPreauthorization(r) for r in receipts),
                                complete=first == RECEIPT_ALL and not receipts)

    async def end_of_day(self) -> PaymentResult:
        ex = await self._run(m.end_of_day(self.password), money=False)
        return self._result(ex, self.currency)

    async def status_enquiry(self) -> TerminalStatus:
        ex = await self._run(m.status_enquiry(), money=False, enquiry=True)
        if ex.refused is not None:
            return TerminalStatus(False, ex.refused, reason_for(ex.refused))
        c = ex.completion
        if c is None:
            code = ex.abort.field("result_code") if ex.abort else None
            return TerminalStatus(False, code, reason_for(code))  # type: ignore[arg-type]
        status = c.field("terminal_status")
        if status is None:
            status = c.get(0x27, 0)
        tid_node = c.tlv_find(0x1F44)
        tid = tid_node.value.hex() if tid_node is not None else c.get(0x29)
        sw = c.field("sw_version")
        return TerminalStatus(
            ok=status == 0,
            status_code=status,  # type: ignore[arg-type]
            text=terminal_status_text(status),  # type: ignore[arg-type]
            software_version=str(sw) if sw is not None else None,
            terminal_id=str(tid) if tid is not None else None,
        )

    async def abort(self) -> bool:
        """Ask the terminal to cancel. During a running command (a card holder
        taking too long) the command then ends with result 6C; returns True when
        an abort was sent to a running command."""
        if self._running is not None:
            log.info("zvt.abort_sent terminal=%s during=%s", self.health.device_id, self._running)
            await self._link.send(m.encode_message(m.abort_request()))
            return True
        await self._run(m.abort_request(), money=False, ack_only=True, in_step=False)
        return False

    # -- the exchange ----------------------------------------------------------------

    async def _receive(self, timeout: float) -> m.Message:
        raw = await self._link.receive(timeout)
        try:
            return m.decode_message(raw)
        except ZvtDecodeError as exc:
            raise TerminalProtocolError(
                f"{self._link.description}: unreadable message ({exc}): "
                "check the terminal's ZVT settings; the outcome of the command is unknown"
            ) from None

    async def _ack(self) -> None:
        if self._link.acks_messages:
            return  # the link sent it the moment the message arrived (drivers/zvt/link.py)
        await self._link.send(m.encode_message(m.ack()))

    async def _notify(self, text: str, ex: _Exchange) -> None:
        ex.texts.append(text)
        if self.on_status is None:
            return
        try:
            outcome = self.on_status(text)
            if inspect.isawaitable(outcome):
                await outcome
        except Exception:
            log.exception("zvt.status_callback_failed terminal=%s", self.health.device_id)

    async def _run(self, message: m.Message, *, money: bool = True, ack_only: bool = False,
                   receipt: int | None = None, enquiry: bool = False, in_step: bool = True) -> _Exchange:
        """One command and its answer. ``receipt``: the reservation the command
        is about (its answers must name it or none). ``in_step=False`` sends
        without bringing the link back in step first (the abort itself)."""
        if not self._connected:
            raise TerminalUnavailable(
                f"{self._link.description}: not connected: call connect() before sending commands"
            )
        async with self._lock:
            left = self._link.drain() or ()
            for raw in left:
                self._stray_raw(raw, "between commands")
            if left:
                self._out_of_step = True
            if in_step and self._out_of_step:
                # Before the command is sent: a failure here means it was never sent.
                await self._resync()
            ex = _Exchange(message.name, receipt=receipt, enquiry=enquiry)
            self._running = message.name
            sent = False
            try:
                await self._link.send(m.encode_message(message))
                sent = True
                await self._follow(ex, ack_only)
                self._check_answer(ex)
            except TerminalTimeout as exc:
                self._out_of_step = True
                if sent and not ack_only:
                    await self._abort_quietly()
                self._fault(str(exc))
                if money and sent:
                    err = TerminalTimeout(
                        f"{exc}; the {message.name} may have been done: "
                        "check open pre-authorisations before retrying"
                    )
                    err.maybe_done = True
                    raise err from None
                raise
            except TerminalError as exc:
                self._out_of_step = True
                self._fault(str(exc))
                if money and (sent or exc.maybe_delivered):
                    err = type(exc)(
                        f"{exc}; the {message.name} may have been done: "
                        "check open pre-authorisations once the terminal answers again"
                    )
                    err.maybe_done = True
                    raise err from None
                raise
            finally:
                self._running = None
            self._healthy()
            return ex

    async def _follow(self, ex: _Exchange, ack_only: bool) -> None:
        accepted = False
        while True:
            timeout = self.timers.t4_completion if accepted else self.timers.t3_command
            reply = await self._receive(timeout)
            if reply.control == m.ACK or (reply.cls == m.NAK_CLASS and reply.instr == 0x00):
                if accepted:
                    continue  # the terminal's answer to an abort we sent meanwhile
                accepted = True
                if ack_only:
                    return
                continue
            if reply.cls == m.NAK_CLASS:
                if accepted:
                    continue
                ex.refused = reply.instr
                log.info("zvt.command_refused command=%s code=%02X", ex.command, reply.instr)
                return
            await self._ack()
            if not accepted:
                # Sent before the terminal took this command: the tail of an
                # earlier exchange, never this command's answer.
                self._stray(reply, ex, "before the command was taken")
                continue
            if ex.enquiry and not _enquiry_answer(reply):
                self._stray(reply, ex, "during a status enquiry")
                continue
            if ex.receipt is not None and reply.control in _RESULTS:
                named = reply.get(0x87)
                if isinstance(named, int) and named not in (ex.receipt, RECEIPT_ALL):
                    raise TerminalProtocolError(
                        f"{self._link.description}: an answer about receipt {named} arrived while the "
                        f"{ex.command} of receipt {ex.receipt} ran: the outcome for receipt {ex.receipt} "
                        "is unknown; ask the terminal about it again"
                    )
            if reply.control == m.INTERMEDIATE_STATUS:
                status = reply.field("status")
                await self._notify(intermediate_text(status), ex)  # type: ignore[arg-type]
                display = reply.tlv_find(0x24)
                if display is not None:
                    for line in display.find_all(0x07):
                        if line.text.strip():
                            await self._notify(line.text.strip(), ex)
            elif reply.control == m.STATUS_INFORMATION:
                ex.status_infos.append(reply)
            elif reply.control == m.COMPLETION:
                ex.completion = reply
                return
            elif reply.control == m.ABORT_FROM_TERMINAL:
                ex.abort = reply
                return
            # else: print lines and text blocks (receipts: the hub makes its own), vendor messages

    def _check_answer(self, ex: _Exchange) -> None:
        """A command about one reservation counts as done only when the
        terminal's result names that reservation."""
        if ex.receipt is None or ex.completion is None or ex.refused is not None:
            return
        info = _merge(ex.status_infos)
        code = info.get(0x27, ex.completion.get(0x27, 0))
        if code == 0 and info.get(0x87) != ex.receipt:
            raise TerminalProtocolError(
                f"{self._link.description}: the {ex.command} of receipt {ex.receipt} ended without a result "
                "naming that receipt: its outcome is unknown; ask the terminal about it again"
            )

    def _stray(self, message: m.Message, ex: _Exchange | None, when: str) -> None:
        receipt = message.get(0x87) if message.control in _RESULTS else None
        self.strays.append(f"{message.name}" + (f" receipt {receipt}" if isinstance(receipt, int) else ""))
        self._out_of_step = True
        log.warning("zvt.stray_message terminal=%s message=%s receipt=%s when=%s during=%s",
                    self.health.device_id, message.name, receipt if isinstance(receipt, int) else "-", when,
                    ex.command if ex is not None else "-")
        if ex is not None:
            ex.strays += 1
            if ex.strays > _STRAYS_MAX:
                raise TerminalProtocolError(
                    f"{self._link.description}: more than {_STRAYS_MAX} messages that answer no command of ours: "
                    "check that only this controller talks to the terminal and that it is in ECR mode"
                )

    def _stray_raw(self, raw: bytes, when: str) -> None:
        try:
            self._stray(m.decode_message(raw), None, when)
        except ZvtDecodeError:
            self.strays.append("unreadable")
            log.warning("zvt.stray_message terminal=%s message=unreadable when=%s", self.health.device_id, when)

    async def _resync(self) -> None:
        """Bring the link back in step after an exchange that ended without its
        answer: the terminal may still be in it, or about to send its late
        result. Ask it to abort; then, until a status enquiry is answered:
        acknowledge and drop whatever the terminal sends until it is quiet,
        ask for its status, and wait for that answer (its completion carries
        the terminal's status, so it cannot be another command's; 80 00 and
        84 xx carry nothing to tell whose they are). Busy (84 9C): it is still
        finishing, ask again. Raises a TerminalError (nothing of the next
        command was sent) when the terminal does not come back in step."""
        log.warning("zvt.resync terminal=%s", self.health.device_id)
        try:
            await self._link.send(m.encode_message(m.abort_request()))
            for _attempt in range(4):
                await self._drain_quiet()
                await self._link.send(m.encode_message(m.status_enquiry()))
                answer = await self._await_enquiry()
                if answer != "busy":
                    await self._drain_quiet()  # answers to earlier tries, if any
                    break
            else:
                raise TerminalTimeout(
                    f"{self._link.description}: the terminal stayed busy after an abandoned command: "
                    "it is tried again before the next command"
                )
        except TerminalError as exc:
            self._fault(str(exc))
            raise
        self._out_of_step = False
        log.info("zvt.in_step terminal=%s", self.health.device_id)

    async def _drain_quiet(self) -> None:
        """Acknowledge and drop what the terminal sends until it is quiet."""
        drained = 0
        while True:
            try:
                raw = await self._link.receive(self.timers.resync_quiet)
            except TerminalTimeout:
                return
            try:
                reply = m.decode_message(raw)
            except ZvtDecodeError:
                self._stray_raw(raw, "while resynchronising")
                reply = None
            if reply is not None and reply.control != m.ACK and reply.cls != m.NAK_CLASS:
                await self._ack()
                self._stray(reply, None, "while resynchronising")
            drained += 1
            if drained > _STRAYS_MAX:
                raise TerminalProtocolError(
                    f"{self._link.description}: the terminal keeps sending after an abort: "
                    "check that only this controller talks to it and that it is in ECR mode"
                )

    async def _await_enquiry(self) -> str:
        """done (its completion came), busy (84 9C) or refused (84 xx: a
        terminal without status enquiry has answered it)."""
        for _ in range(_STRAYS_MAX):
            reply = await self._receive(self.timers.t3_command)
            if reply.control == m.ACK:
                continue
            if reply.cls == m.NAK_CLASS:
                if reply.instr == 0x00:
                    continue
                return "busy" if reply.instr == m.NAK_REPEAT else "refused"
            await self._ack()
            if _enquiry_answer(reply):
                return "done"
            self._stray(reply, None, "while resynchronising")
        raise TerminalProtocolError(
            f"{self._link.description}: more than {_STRAYS_MAX} messages that answer no command of ours: "
            "check that only this controller talks to the terminal and that it is in ECR mode"
        )

    async def _abort_quietly(self) -> None:
        try:
            await self._link.send(m.encode_message(m.abort_request()))
        except TerminalError:
            pass

    # -- results -------------------------------------------------------------------

    def _result(self, ex: _Exchange, currency_alpha: str) -> PaymentResult:
        info = _merge(ex.status_infos)
        code: int | None
        if ex.refused is not None:
            code, ok = ex.refused, False
        elif ex.abort is not None:
            code, ok = ex.abort.field("result_code"), False  # type: ignore[assignment]
        else:
            code = info.get(0x27)  # type: ignore[assignment]
            if code is None and ex.completion is not None:
                code = ex.completion.get(0x27, 0)  # type: ignore[assignment]
            ok = ex.completion is not None and code == 0
        if ok:
            reason = "approved" if ex.command == m.COMMAND_NAMES[m.PRE_AUTHORISATION] else "done"
        elif ex.abort is not None and info.get(0x27) == 0 and isinstance(info.get(0x87), int):
            # Approved in a status information, then aborted: the terminal reversed
            # its own approval (a real one does when our 80 00 came too late).
            reason = (f"the terminal approved, then cancelled the payment itself ({reason_for(code)}): "
                      "nothing is charged; try again")
        else:
            reason = reason_for(code)
        cur_alpha = currency_alpha
        numeric = info.get(0x49)
        if isinstance(numeric, int):
            try:
                cur_alpha = currency_by_numeric(numeric).alpha
            except ValueError:
                pass
        amount_minor = info.get(0x04)
        amount = from_minor_units(amount_minor, cur_alpha) if isinstance(amount_minor, int) else None
        token = None
        for si in ex.status_infos:
            node = si.tlv_find(0x1F14)
            if node is not None and node.value:
                token = node.value.hex()
        detail = None
        if ex.abort is not None:
            node = ex.abort.tlv_find(0x1F17)
            if node is not None:
                detail = node.text.strip() or None
        tid = info.get(0x29)
        if tid is None and ex.completion is not None:
            tid = ex.completion.get(0x29)
        receipt = info.get(0x87)
        result = PaymentResult(
            command=ex.command,
            ok=ok,
            result_code=code,
            reason=reason,
            receipt_no=receipt if isinstance(receipt, int) and receipt != RECEIPT_ALL else None,
            trace_no=info.get(0x0B),  # type: ignore[arg-type]
            amount=amount,
            currency=cur_alpha,
            card_name=_clean(info.get(0x8B)),
            card_token=token,
            masked_pan=_clean(info.get(0x22)),
            terminal_id=_clean(tid),
            approval_code=_clean(info.get(0x3B)),
            texts=tuple(ex.texts),
            detail=detail,
        )
        log.info(
            "zvt.result command=%s ok=%s code=%s receipt=%s amount=%s",
            ex.command,
            result.ok,
            f"{code:02X}" if isinstance(code, int) else "-",
            result.receipt_no,
            result.amount,
        )
        return result

    # -- health --------------------------------------------------------------------

    def _fault(self, reason: str) -> None:
        now = self.clock.now()
        if self.health.mark_fault(reason, now) and self.on_health is not None:
            self.on_health(DeviceFault(self.health.device_id, "terminal", reason, now))
        log.warning("zvt.fault terminal=%s reason=%s", self.health.device_id, reason)

    def _healthy(self) -> None:
        now = self.clock.now()
        if self.health.mark_ok(now) and self.on_health is not None:
            self.on_health(DeviceRecovered(self.health.device_id, "terminal", now))


def _enquiry_answer(message: m.Message) -> bool:
    """The completion of a status enquiry carries the terminal's status; a
    bare completion, a status information or an abort is another command's."""
    return message.control == m.COMPLETION and (
        message.field("terminal_status") is not None or message.get(0x27) is not None
    )


def _merge(infos: list[m.Message]) -> dict[int, object]:
    """Fields of every status information, the later ones winning."""
    out: dict[int, object] = {}
    for info in infos:
        for number, value in info.bmps:
            out[number] = value
    return out


def _clean(value: object) -> str | None:
    if value is None:
        return None
    text = str(value).replace("\x00", "").strip()
    return text or None
