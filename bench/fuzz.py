"""Fuzzing every parser that takes outside input (`python -m bench fuzz`).

R-M3 and its local form: bad input gets a clear error and changes nothing.
Each target below pairs a fast random generator (valid messages built from
the protocol, then mutated; plus plain garbage) with an *oracle*: it feeds
one input to the real parser and checks what must hold whatever the input:

- only the parser's own refusal comes out (``ZvtDecodeError``,
  ``PlateReadError``, ``ConfigError``, an error reply ...), never another
  exception: anything else is a **crash**;
- one input takes at most ``HANG_S`` seconds: more is a **hang**;
- a refused input leaves the state as it was (documents, handled ids,
  token list, bookings, connectors): a difference is a **state change**;
- the properties of the target (no card number after decoding, chunking
  does not matter to the deframer, every refused cloud message with an id
  gets a reply, every config problem names its key ...): a failure is a
  **violation**.

The hypothesis tests under tests/fuzz/ drive the same oracles with a few
hundred examples each (CI); this module drives them with at least 100,000
inputs per target (``run(quick=False)``). docs/fuzzing.md has the figures.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import random
import shutil
import signal
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

from bench.common import Result

ROOT = Path(__file__).resolve().parent.parent
SMALL_CONFIG = ROOT / "config" / "hub-small.toml"
REGISTER_MAPS = ROOT / "config" / "register-maps"
CMD = "python -m bench fuzz"
HANG_S = 2.0  # one input taking longer than this is a hang
NOW = datetime(2026, 3, 2, 12, 0, tzinfo=timezone.utc)


class Violation(AssertionError):
    """The parser answered, but broke a property it promises."""


class StateChanged(Violation):
    """A refused input changed the stored state (R-M3)."""


class Hang(Exception):
    pass


# ----------------------------------------------------------------- mutation
INTERESTING_BYTES = (0x00, 0x01, 0x02, 0x03, 0x06, 0x0A, 0x0D, 0x10, 0x15, 0x1F, 0x20, 0x22, 0x3C, 0x7F, 0x80,
                     0x81, 0x82, 0xB2, 0xE0, 0xF0, 0xF9, 0xFE, 0xFF)
INTERESTING_TEXT = ["", " ", "\n", "\r\n", "\x00", "\t", "null", "-1", "0", "1e309", "NaN", "Infinity", "²", "٣",
                    "０", "é", "\u202e", "\ud7ff", "a" * 300, "9" * 30, "0001-01-01T00:00:00+01:00",
                    "9999-12-31T23:59:59-01:00", "2026-03-02T12:00:00Z\n", "2026-02-30T00:00:00Z",
                    "2026-03-02T12:00:00", "EUR\n", "C1", "*", "../../etc/passwd", "%s%n", "<x>", '"', "\\"]
INTERESTING_VALUES: list[Any] = [None, True, False, 0, 1, -1, 1.0, 1.5, -0.0, 2**31, 2**63, 10**30, 1e308,
                                 float("inf"), float("nan"), [], {}, [None], {"": None}] + INTERESTING_TEXT


def interesting(rng: random.Random, values: list | None = None) -> Any:
    """An interesting value, copied: the lists and dicts among them must not
    be shared between inputs (a later edit would change them all)."""
    value = rng.choice(INTERESTING_VALUES if values is None else values)
    return json.loads(json.dumps(value)) if isinstance(value, (list, dict)) else value


def mutate_bytes(rng: random.Random, data: bytes, rounds: int | None = None) -> bytes:
    """A few byte-level edits: flips, interesting bytes, cuts, inserts, copies."""
    buf = bytearray(data)
    for _ in range(rounds or rng.randint(1, 4)):
        op = rng.randrange(8)
        n = len(buf)
        if op == 0 and n:
            buf[rng.randrange(n)] ^= 1 << rng.randrange(8)
        elif op == 1 and n:
            buf[rng.randrange(n)] = rng.choice(INTERESTING_BYTES)
        elif op == 2 and n:
            del buf[rng.randrange(n):]
        elif op == 3:
            at = rng.randint(0, n)
            buf[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 4 and n:
            a = rng.randrange(n)
            b = rng.randint(a, min(n, a + 64))
            del buf[a:b]
        elif op == 5 and n:
            a = rng.randrange(n)
            chunk = buf[a:a + rng.randint(1, 32)]
            at = rng.randint(0, n)
            buf[at:at] = chunk * rng.randint(1, 3)
        elif op == 6:
            at = rng.randint(0, n)
            buf[at:at] = rng.choice(INTERESTING_TEXT).encode("utf-8", "surrogatepass")
        elif n:
            buf[rng.randrange(n)] = rng.randrange(256)
    return bytes(buf)


def _paths(obj: Any, here: tuple = ()) -> list[tuple]:
    out = [here]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, here + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, here + (i,))
    return out


def _get(obj: Any, path: tuple) -> Any:
    for p in path:
        obj = obj[p]
    return obj


def deep_nest(rng: random.Random) -> Any:
    value: Any = 1
    for _ in range(rng.choice((50, 300))):
        value = [value] if rng.random() < 0.5 else {"a": value}
    return value


def mutate_json(rng: random.Random, doc: Any, keys: list[str] = (), rounds: int | None = None) -> Any:
    """Structural edits of a JSON-like document: replace a value with an
    interesting one, drop or add a key, change a type, copy list items."""
    doc = json.loads(json.dumps(doc))
    for _ in range(rounds or rng.randint(1, 3)):
        paths = _paths(doc)
        path = rng.choice(paths)
        op = rng.randrange(7)
        if not path:
            if op == 0:
                doc = interesting(rng)
            continue
        parent = _get(doc, path[:-1])
        last = path[-1]
        if op in (0, 1):
            parent[last] = interesting(rng)
        elif op == 2:
            del parent[last]
        elif op == 3 and isinstance(parent, dict):
            parent[rng.choice(list(keys) or ["x"]) if rng.random() < 0.7 else "extra"] = interesting(rng)
        elif op == 4:
            value = parent[last]
            parent[last] = [value] if not isinstance(value, list) else (value * 2 if value else [None])
        elif op == 5:
            value = parent[last]
            parent[last] = str(value) if not isinstance(value, str) else (value + rng.choice(INTERESTING_TEXT))
        else:
            parent[last] = deep_nest(rng) if rng.random() < 0.1 else interesting(rng)
    return doc


def dump_json(rng: random.Random, doc: Any) -> bytes:
    raw = json.dumps(doc, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
    return mutate_bytes(rng, raw) if rng.random() < 0.15 else raw


@contextmanager
def time_bound(seconds: float):
    """Raise Hang in this (main) thread when the body runs longer than ``seconds``."""
    if seconds <= 0 or not hasattr(signal, "setitimer"):
        yield
        return

    def fire(_sig, _frame):
        raise Hang(f"input still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class _Errors(logging.Handler):
    """Collects ERROR records: a listener that swallows an exception into
    the log ("internal_error") crashed as surely as one that raised."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


# ====================================================================== ZVT
def _zvt():
    from drivers.zvt import bmp, framing, messages
    return bmp, framing, messages


def _bmp_value(rng: random.Random, spec) -> Any:
    from drivers.zvt.tlv import TlvNode
    kind = spec.kind
    if kind == "byte":
        return rng.randrange(256)
    if kind in ("num", "receipt"):
        return rng.randrange(10 ** min(2 * spec.size, 12))
    if kind == "digits":
        return "".join(rng.choice("0123456789") for _ in range(2 * spec.size))
    if kind == "ascii":
        return "".join(chr(rng.randrange(32, 127)) for _ in range(spec.size))
    if kind == "bytes":
        return bytes(rng.randrange(256) for _ in range(spec.size))
    if kind in ("llv", "lllv"):
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 40)))
    if kind in ("llv_text", "lllv_text"):
        return "".join(chr(rng.randrange(32, 127)) for _ in range(rng.randint(0, 30)))
    if kind == "pan":
        return "".join(rng.choice("0123456789") for _ in range(rng.choice((13, 16, 19))))
    if kind in ("track_llv", "track_lllv"):
        pan = "".join(rng.choice("0123456789") for _ in range(16))
        return f"{pan}={rng.randint(2501, 3012)}{rng.randint(100, 999)}"
    if kind == "tlv":
        nodes = []
        for _ in range(rng.randint(0, 4)):
            tag = rng.choice((0x1F14, 0x1F17, 0x1F44, 0x24, 0x23, 0x07, 0x08, 0x5A, 0x57, 0x1F08, 0x40, 0x1F8001))
            if tag in (0x24, 0x23):
                inner = rng.choice((0x07, 0x08))
                nodes.append(TlvNode(tag, b"", tuple(TlvNode(inner, bytes(rng.randrange(256) for _ in range(2)))
                                                     for _ in range(rng.randint(0, 3)))))
            else:
                nodes.append(TlvNode(tag, bytes(rng.randrange(256) for _ in range(rng.randint(0, 20)))))
        return tuple(nodes)
    raise AssertionError(kind)


TERMINAL_CONTROLS = [(0x80, 0x00), (0x84, 0x00), (0x84, 0x9C), (0x84, 0x83), (0x04, 0x0F), (0x04, 0xFF),
                     (0x06, 0x0F), (0x06, 0x1E), (0x06, 0xD1), (0x06, 0xD3), (0x06, 0x00), (0x06, 0x22),
                     (0x06, 0x23), (0x06, 0x24), (0x06, 0x25), (0x06, 0x50), (0x05, 0x01), (0x06, 0xC0),
                     (0x06, 0x93), (0x08, 0x14)]


def zvt_message(rng: random.Random) -> bytes:
    """One well-formed APDU as a terminal (or a controller) would send it."""
    bmp, _framing, m = _zvt()
    cls, instr = rng.choice(TERMINAL_CONTROLS) if rng.random() < 0.9 else (rng.randrange(256), rng.randrange(256))
    fields: list = []
    if (cls, instr) in ((0x06, 0x50), (0x06, 0x93), (0x08, 0x14)):
        fields = [("password", rng.randrange(1_000_000))]
    elif (cls, instr) == (0x06, 0x00):
        fields = [("password", rng.randrange(1_000_000)), ("config_byte", rng.randrange(256))]
        if rng.random() < 0.5:
            fields.append(("currency", 978))
    elif (cls, instr) == (0x06, 0xC0):
        fields = [("timeout", rng.randrange(256))]
    elif (cls, instr) == (0x06, 0x1E):
        fields = [("result_code", rng.choice((0x05, 0x6C, 0x6F, 0x9A, rng.randrange(256))))]
    elif (cls, instr) == (0x04, 0xFF):
        fields = [("status", rng.randrange(256))]
        if rng.random() < 0.5:
            fields.append(("timeout", rng.randrange(256)))
    elif (cls, instr) == (0x06, 0xD1):
        fields = [("attribute", rng.randrange(256))]
    elif (cls, instr) == (0x06, 0x0F) and rng.random() < 0.3:
        fields = [("sw_version", "ZVT-SIM 1.0"), ("terminal_status", rng.choice((0, 0x51, rng.randrange(256))))]
    bmps = []
    if cls != 0x84 and (cls, instr) != (0x06, 0xD1):
        numbers = list(bmp.BMPS)
        for _ in range(rng.randint(0, 8)):
            number = rng.choice(numbers if rng.random() < 0.6 else [0x04, 0x06, 0x0B, 0x22, 0x23, 0x27, 0x29,
                                                                        0x49, 0x87, 0x8B, 0x3B])
            bmps.append((number, _bmp_value(rng, bmp.BMPS[number])))
    tail = bytes(rng.randrange(256) for _ in range(rng.randint(1, 6))) if cls == 0x84 and rng.random() < 0.3 else b""
    return m.encode_message(m.Message(cls, instr, tuple(fields), tuple(bmps), tail))


def gen_zvt_apdu(rng: random.Random) -> bytes:
    r = rng.random()
    if r < 0.1:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 40)))
    raw = zvt_message(rng)
    return mutate_bytes(rng, raw) if r < 0.75 else raw


def _digits_in(value: Any) -> int:
    return sum(ch.isdigit() for ch in str(value))


def check_zvt_apdu(raw: bytes) -> str:
    """decode_message: ZvtDecodeError or a Message that never holds more
    than BIN + last four of a card number (R-P6) and prints safely."""
    from drivers.zvt.errors import ZvtDecodeError
    from drivers.zvt.tlv import SENSITIVE_TAGS, TlvNode
    bmp, _framing, m = _zvt()
    try:
        msg = m.decode_message(raw)
    except ZvtDecodeError as exc:
        if not str(exc):
            raise Violation("ZvtDecodeError without a message")
        return "refused"
    repr(msg)
    for number, value in msg.bmps:
        if bmp.BMPS[number].kind in ("pan", "track_llv", "track_lllv") and _digits_in(value) > 10:
            raise Violation(f"BMP {number:02X} keeps {_digits_in(value)} card digits after decoding (R-P6)")

    def walk(nodes):
        for node in nodes:
            if not isinstance(node, TlvNode):
                raise Violation("TLV decoded into something else than nodes")
            if node.tag in SENSITIVE_TAGS and node.value:
                raise Violation(f"TLV tag {node.tag:X} (card data) kept its value (R-P6)")
            if node.children:
                walk(node.children)
    walk(msg.tlv)
    # What decoded re-encodes (the simulator and the controller rely on it).
    if msg.cls != 0x84 and not any(n in (0x22, 0x23, 0x24, 0x2D) for n, _ in msg.bmps):
        try:
            m.encode_message(msg)
        except ValueError as exc:
            raise Violation(f"a decoded message does not encode again ({exc})")
    return "accepted"


def gen_zvt_frames(rng: random.Random) -> tuple[bytes, tuple[int, ...], tuple[bytes, ...] | None]:
    """(line bytes, chunk sizes, the good frames' APDUs when noise cannot hide them)."""
    _bmp, framing, _m = _zvt()
    clean = rng.random() < 0.4
    out = bytearray()
    good: list[bytes] = []
    for _ in range(rng.randint(0, 4)):
        if rng.random() < 0.5:
            noise = bytes(rng.choice((0x06, 0x15, 0x00, 0x41, 0xFF, 0x03, 0x02, 0x10)) for _ in range(rng.randint(0, 5)))
            if clean:
                noise = noise.replace(b"\x10", b"")
            out += noise
        apdu = zvt_message(rng)
        corrupt = rng.random() < 0.2
        out += framing.encode_frame(apdu, corrupt_crc=corrupt)
        if not corrupt:
            good.append(apdu)
    data = bytes(out)
    if not clean:
        if rng.random() < 0.3:
            data = bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
        else:
            data = mutate_bytes(rng, data)
    chunks = []
    left = len(data)
    while left > 0:
        n = rng.choice((1, 1, 2, 3, 7, 64, 512))
        chunks.append(min(n, left))
        left -= n
    return data, tuple(chunks), tuple(good) if clean else None


def check_zvt_frames(case: tuple[bytes, tuple[int, ...], tuple[bytes, ...] | None]) -> str:
    """FrameReader: whatever the bytes and however they are cut, the same
    frames and line bytes come out; frames marked good carry their CRC."""
    _bmp, framing, _m = _zvt()
    data, chunks, expected = case
    whole = framing.FrameReader().feed(data)
    reader = framing.FrameReader()
    pieces = []
    pos = 0
    for n in chunks:
        pieces += reader.feed(data[pos:pos + n])
        pos += n
    pieces += reader.feed(data[pos:])
    if pieces != whole:
        raise Violation("the frames read depend on how the bytes were cut into chunks")
    for ev in whole:
        if isinstance(ev, framing.Frame):
            if len(ev.apdu) > 0xFFFF + 5:
                raise Violation("a frame longer than the reader's limit came out")
        elif ev.value not in (framing.ACK_BYTE, framing.NAK_BYTE):
            raise Violation(f"line byte {ev.value:02X} reported as ACK/NAK")
    if expected is not None:
        got = tuple(ev.apdu for ev in whole if isinstance(ev, framing.Frame) and ev.crc_ok)
        if got != expected:
            raise Violation(f"{len(expected)} good frames sent, {len(got)} read back")
    return "accepted" if any(isinstance(e, framing.Frame) and e.crc_ok for e in whole) else "refused"


class _ScriptedLink:
    """A terminal that answers from a script: the client's side of the wire
    without a wire. An empty script is a silent terminal (T3/T4 timeout)."""

    description = "terminal (scripted)"
    acks_messages = False  # the client sends its own 80 00, as over a link that does not

    def __init__(self, answers: list[bytes]):
        from drivers.zvt.link import Timers
        self.timers = Timers(t1_inter_byte=0.01, t2_ack=0.01, t3_command=0.01, t4_completion=0.01)
        self.answers = list(answers)
        self.sent: list[bytes] = []

    async def open(self):
        pass

    async def close(self):
        pass

    def drain(self):
        pass

    async def send(self, apdu: bytes):
        self.sent.append(apdu)

    async def receive(self, timeout: float) -> bytes:
        from drivers.zvt.errors import TerminalTimeout
        if not self.answers:
            raise TerminalTimeout(f"{self.description}: no message within {timeout:g} s")
        return self.answers.pop(0)


def gen_zvt_client(rng: random.Random) -> tuple[str, tuple[bytes, ...]]:
    _bmp, _framing, m = _zvt()
    command = rng.choice(("preauthorize", "status_enquiry", "open_preauthorizations", "read_card", "book_total",
                          "register"))
    script = [m.encode_message(m.ack())] if rng.random() < 0.9 else []
    for _ in range(rng.randint(0, 5)):
        script.append(zvt_message(rng))
    if rng.random() < 0.8:
        script.append(m.encode_message(m.completion() if rng.random() < 0.6 else m.abort_from_terminal(0x6C)))
    script = [mutate_bytes(rng, s) if rng.random() < 0.2 else s for s in script]
    return command, tuple(script)


def check_zvt_client(case: tuple[str, tuple[bytes, ...]], loop: asyncio.AbstractEventLoop | None = None) -> str:
    """A whole exchange with a terminal that says anything: the client ends
    with a typed result or a TerminalError, and no result holds a card number."""
    from drivers.zvt.client import ZvtClient
    from drivers.zvt.errors import TerminalError
    from units import FakeClock
    command, script = case

    async def go():
        client = ZvtClient(_ScriptedLink(list(script)), password="000000", clock=FakeClock(NOW))
        await client.connect()
        if command == "preauthorize":
            return await client.preauthorize(Decimal("199.00"))
        if command == "book_total":
            return await client.book_total(17, Decimal("12.34"))
        if command == "read_card":
            return await client.read_card(30)
        if command == "register":
            return await client.register()
        return await getattr(client, command)()

    own = loop is None
    loop = loop or asyncio.new_event_loop()
    try:
        result = loop.run_until_complete(go())
    except TerminalError as exc:
        if not str(exc):
            raise Violation("TerminalError without a message")
        return "refused"
    finally:
        if own:
            loop.close()
    text = repr(result)
    masked = getattr(result, "masked_pan", None)
    if masked is not None and _digits_in(masked) > 10:
        raise Violation("a result holds more than BIN + last four of a card number (R-P6)")
    if hasattr(result, "reason") and not result.reason:
        raise Violation("a payment result without a reason for the driver")
    del text
    return "accepted"


# ===================================================================== ANPR
PLATES = ["NL-AB-123-C", "AB123CD", "D-XY 1234", "", "unknown", "ÄÖÜ 123", "A" * 21, "AB\t12", "AB\x0012",
          "  AB 12  ", "ＡＢ１２３", "٣٣٣-AB"]
TIMES = ["2026-03-02T12:00:00Z", "2026-03-02T13:00:00+01:00", "2026-03-02T12:00:00", "0001-01-01T00:00:00+01:00",
         "9999-12-31T23:59:59-01:00", "garbage", "", "2026-13-01T00:00:00Z"]


def hikvision_xml(rng: random.Random) -> bytes:
    def field_(name, value):
        return "" if value is None else f"<{name}>{value}</{name}>"

    anpr = "".join([
        field_("licensePlate", rng.choice(PLATES + [None])),
        field_("confidenceLevel", rng.choice(["90", "100", "0", "101", "-1", "nan", "inf", "1e309", "x", None])),
        field_("vehicleType", rng.choice(["truck", "car", "heavyTruck", "", None])),
        field_("direction", rng.choice(["forward", "reverse", "", None])),
        field_("country", rng.choice(["NL", "unknown", "255", "", None])),
    ])
    body = "".join([
        '<?xml version="1.0" encoding="UTF-8"?>' if rng.random() < 0.7 else "",
        '<!DOCTYPE a [<!ENTITY p "AB123CD">]>' if rng.random() < 0.05 else "",
        '<EventNotificationAlert version="2.0" xmlns="http://www.hikvision.com/ver20/XMLSchema">'
        if rng.random() < 0.95 else "<Other>",
        field_("channelID", rng.choice(["1", "x", "²", None])),
        field_("dateTime", rng.choice(TIMES + [None])),
        field_("eventType", rng.choice(["ANPR", "ANPR", "videoloss", None])),
        field_("eventState", rng.choice(["active", "inactive", None])),
        f"<ANPR>{anpr}</ANPR>" if rng.random() < 0.95 else "",
        "</EventNotificationAlert>",
    ])
    if "<!DOCTYPE" in body and rng.random() < 0.5:
        return body.replace('encoding="UTF-8"', 'encoding="UTF-16"').encode("utf-16")
    return body.encode("utf-8")


def axis_event(rng: random.Random) -> dict:
    event = {
        "carState": rng.choice(["new", "update", "lost", "NEW"]),
        "plateText": rng.choice(PLATES),
        "plateConfidence": rng.choice([0.9, 95.5, 0, 1, 101, -1, "0.8", None]),
        "plateCountry": rng.choice(["NLD", "DEU", "", None]),
        "vehicleType": rng.choice(["TRUCK", "CAR", None]),
        "carMoveDirection": rng.choice(["in", "out", None]),
        "carID": rng.randrange(100000),
        "packetCounter": rng.randrange(100),
        "capture_timestamp": rng.choice([int(NOW.timestamp() * 1000), 0, -1, 10**20, "x", None]),
        "datetime": rng.choice(TIMES),
        "camera_info": {"SerialNumber": "ACCC8E000000"},
    }
    return {k: v for k, v in event.items() if v is not None or rng.random() < 0.3}


def multipart(rng: random.Random, xml: bytes) -> tuple[bytes, str]:
    boundary = rng.choice(["boundary", "MIME_boundary", "--x--", ""])
    parts = [(b"Content-Type: application/xml\r\nContent-Disposition: form-data; name=\"anpr.xml\"; "
              b"filename=\"anpr.xml\"", xml),
             (b"Content-Type: image/jpeg\r\nContent-Disposition: form-data; name=\"licensePlatePicture.jpg\"",
              b"\xff\xd8\xff\xe0" + bytes(rng.randrange(256) for _ in range(32)))]
    rng.shuffle(parts)
    body = b"".join(b"--" + boundary.encode() + b"\r\n" + h + b"\r\n\r\n" + p + b"\r\n" for h, p in parts)
    body += b"--" + boundary.encode() + b"--\r\n"
    return body, f"multipart/form-data; boundary={boundary}"


def gen_anpr_body(rng: random.Random) -> tuple[str, bytes, str]:
    """(vendor, body, content type)."""
    if rng.random() < 0.5:
        xml = hikvision_xml(rng)
        if rng.random() < 0.3:
            body, ctype = multipart(rng, xml)
        else:
            body, ctype = xml, rng.choice(["application/xml", "text/xml; charset=UTF-8", ""])
        if rng.random() < 0.4:
            body = mutate_bytes(rng, body)
        return "hikvision", body, ctype
    doc: Any = axis_event(rng)
    if rng.random() < 0.1:
        doc = [doc, axis_event(rng)]
    if rng.random() < 0.5:
        doc = mutate_json(rng, doc, keys=["plateText", "plateUTF8", "carState", "plateConfidence", "datetime",
                                          "capture_timestamp", "plateCountry", "vehicleType", "camera_info"])
    if rng.random() < 0.02:
        return "axis", b'{"carState":"new","plateText":"AB12CD","plateConfidence":' + b"9" * 5000 + b"}", ""
    return "axis", dump_json(rng, doc), "application/json"


def _check_read(read) -> None:
    from drivers.anpr import MAX_PLATE_CHARS
    if len(read.plate_raw) > MAX_PLATE_CHARS:
        raise Violation("plate longer than the limit accepted")
    if not 0.0 <= read.confidence <= 1.0:
        raise Violation("confidence outside 0..1")
    if read.is_no_read and read.confidence != 0.0:
        raise Violation("a no-read with a confidence could open by itself (R-G4)")
    if read.ts.tzinfo is None or read.ts.utcoffset() != timedelta(0):
        raise Violation("read time not in UTC")
    text = repr(read)
    compact = "".join(ch for ch in read.plate_raw if ch.isalnum())
    if len(compact) >= 5 and compact in text.replace("-", "").replace(" ", ""):
        raise Violation("the raw plate shows in the read's repr (R-G8)")


def _has_doctype(body: bytes) -> bool:
    for enc in ("utf-8", "utf-16", "utf-32"):
        try:
            if "<!doctype" in body.decode(enc).lower():
                return True
        except UnicodeDecodeError:
            pass
    return False


def check_anpr_body(case: tuple[str, bytes, str]) -> str:
    """parse_hikvision / parse_axis: a PlateRead, None, or PlateReadError
    with a reason; never another exception; DOCTYPE always refused."""
    from drivers.anpr import PlateReadError, parse_axis, parse_hikvision
    vendor, body, ctype = case
    try:
        if vendor == "hikvision":
            read = parse_hikvision(body, ctype, camera_id="G-IN", received_at=NOW)
        else:
            read = parse_axis(body, camera_id="G-IN", received_at=NOW)
    except PlateReadError as exc:
        if not exc.reason:
            raise Violation("PlateReadError without a reason")
        return "refused"
    if vendor == "hikvision" and _has_doctype(body):
        raise Violation("an XML body with a DOCTYPE was parsed (entity expansion guard bypassed)")
    if read is not None:
        _check_read(read)
    return "accepted"


SECRET = "s3cret-cam"


def _request(rng: random.Random, vendor: str) -> bytes:
    _v, body, ctype = gen_anpr_body(rng)
    while _v != vendor:
        _v, body, ctype = gen_anpr_body(rng)
    if rng.random() < 0.4:  # a well-behaved camera, so that the accepting path is exercised too
        head = (f"POST /anpr HTTP/1.1\r\nHost: hub:8081\r\nX-Hub-Secret: {SECRET}\r\n"
                f"Content-Type: {ctype or 'application/json'}\r\nContent-Length: {len(body)}\r\n\r\n")
        return head.encode("latin-1") + body
    method = rng.choice(["POST"] * 8 + ["GET", "PUT", "POST\n", "P OST", ""])
    target = rng.choice(["/anpr"] * 8 + ["/anpr?x=1", "/", "anpr", "/anpr/../anpr", "*"])
    version = rng.choice(["HTTP/1.1"] * 6 + ["HTTP/1.0", "HTTP/2", "http/1.1", ""])
    headers = [("Host", "hub:8081")]
    if ctype:
        headers.append(("Content-Type", ctype))
    auth = rng.random()
    if auth < 0.5:
        headers.append(("X-Hub-Secret", SECRET))
    elif auth < 0.8:
        token = base64.b64encode(f"cam:{SECRET}".encode()).decode()
        headers.append(("Authorization", "Basic " + rng.choice([token, token + "=", "!!", ""])))
    elif auth < 0.9:
        headers.append(("X-Hub-Secret", rng.choice(["wrong", "", SECRET + " ", "é"])))
    length = rng.choice([str(len(body))] * 6 + [str(len(body) + 5), "-1", "", "1" * 13, "\xb2", "0x10", " 5",
                                                 str(10**9), "1.0"])
    if rng.random() < 0.95:
        headers.append(("Content-Length", length))
    if rng.random() < 0.05:
        headers.append(("Content-Length", str(len(body))))
    if rng.random() < 0.05:
        headers.append(("Transfer-Encoding", "chunked"))
    if rng.random() < 0.1:
        headers.append(("Expect", "100-continue"))
    if rng.random() < 0.2:
        headers.append(("Connection", rng.choice(["close", "keep-alive"])))
    if rng.random() < 0.05:
        headers.append((rng.choice(["X Bad", "", "Content-Length\n", "é"]), "1"))
    if rng.random() < 0.02:
        headers.append((" folded", "x"))
    rng.shuffle(headers)
    head = f"{method} {target} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    return head.encode("latin-1", "replace") + body


def gen_anpr_http(rng: random.Random) -> tuple[str, bytes]:
    vendor = rng.choice(("hikvision", "axis"))
    r = rng.random()
    if r < 0.05:
        return vendor, bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))
    raw = _request(rng, vendor)
    if rng.random() < 0.2:
        raw += _request(rng, vendor)
    if rng.random() < 0.25:
        raw = mutate_bytes(rng, raw)
    return vendor, raw


class _Transport(asyncio.Transport):
    """A connection's socket side, in memory: what the listener writes is
    kept; closing it tells the listener's connection it is gone, as a real
    transport does."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        super().__init__()
        self.out = bytearray()
        self.gone = loop.create_future()
        self._protocol = None
        self._loop = loop

    def set_protocol(self, protocol):
        self._protocol = protocol

    def get_protocol(self):
        return self._protocol

    def write(self, data):
        if not self.gone.done():
            self.out += data

    def writelines(self, chunks):
        for chunk in chunks:
            self.write(chunk)

    def close(self):
        if not self.gone.done():
            self.gone.set_result(None)
            self._loop.call_soon(self._protocol.connection_lost, None)

    def abort(self):
        self.close()

    def is_closing(self):
        return self.gone.done()

    def get_write_buffer_size(self):
        return 0

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass

    def get_extra_info(self, name, default=None):
        return ("192.0.2.40", 40000) if name == "peername" else default


def anpr_exchange(vendor: str, raw: bytes, loop: asyncio.AbstractEventLoop | None = None) -> tuple[bytes, list]:
    """The listener's connection (aiohttp's request handling and ours) fed
    ``raw`` and then the peer closing its side: (what it answered, the reads
    it emitted). An ERROR it logs is raised."""
    from drivers.anpr import AnprListener
    reads = []
    errors = _Errors()
    logger = logging.getLogger("hubedge.anpr")
    logger.addHandler(errors)

    async def go():
        listener = AnprListener("G-IN", "127.0.0.1", 0, vendor, reads.append, secret=SECRET, head_timeout_s=1.0,
                                body_timeout_s=1.0, idle_timeout_s=0.05)
        conn = listener.connection()
        transport = _Transport(asyncio.get_running_loop())
        transport.set_protocol(conn)
        conn.connection_made(transport)
        conn.data_received(raw)
        conn.eof_received()
        try:
            await asyncio.wait_for(asyncio.shield(transport.gone), HANG_S + 1)
        except asyncio.TimeoutError:
            raise Violation("connection left open") from None
        for _ in range(3):  # the connection's tasks wind down
            await asyncio.sleep(0)
        return bytes(transport.out)

    own = loop is None
    loop = loop or asyncio.new_event_loop()
    try:
        out = loop.run_until_complete(go())
    finally:
        logger.removeHandler(errors)
        if own:
            loop.close()
    if errors.records:
        rec = errors.records[0]
        exc = rec.exc_info[1] if rec.exc_info else None
        raise exc if exc is not None else RuntimeError(rec.getMessage())
    return out, reads


def answered(out: bytes) -> list[int]:
    """The status codes in a listener's answers, in order."""
    return [int(line.split(b" ")[1]) for line in out.split(b"\r\n") if line.startswith((b"HTTP/1.1 ", b"HTTP/1.0 "))]


def check_anpr_http(case: tuple[str, bytes], loop: asyncio.AbstractEventLoop | None = None) -> str:
    """The listener on raw request bytes: every request it reads is answered
    with a status line (4xx for what it refuses), nothing ends in an internal
    error, a read is emitted only for a request it answered 200 ok, and the
    connection is closed once the peer is done."""
    vendor, raw = case
    out, reads = anpr_exchange(vendor, raw, loop)
    statuses = answered(out)
    if raw and not statuses:
        raise Violation("the listener read a request and closed without an answer")
    if any(s >= 500 and s not in (503, 505) for s in statuses):
        raise Violation("a request was answered with a server error, not a clear 4xx")
    oks = out.count(b"\r\n\r\nok\n")
    if len(reads) != oks:
        raise Violation(f"{len(reads)} reads emitted but {oks} answered 200 ok")
    for read in reads:
        _check_read(read)
    return "accepted" if reads else "refused"


# ================================================================= downlink
TARIFF = {"id": "TF1", "currency": "EUR", "price_per_kwh": "0.399", "vat_rate": "0.21",
          "effective_from": "2026-03-01T00:00:00Z"}
WINDOW = {"id": "MW1", "connectors": ["C1"], "start": "2026-03-02T13:00:00Z", "end": "2026-03-02T15:00:00Z",
          "reason": "cable check"}
TOKEN = {"uid": "04A1B2C3D4E5F6", "status": "Active", "type": "own", "group": "fleet", "reference": "truck 7",
         "expires": None}
BOOKING = {"id": "BK1", "slot_start": "2026-03-03T08:00:00Z", "slot_end": "2026-03-03T09:00:00Z",
           "connector_type": "MCS", "side": "left", "plates": ["NL-AB-123-C"], "token_uid": None,
           "vehicle_length_m": 18.5}
DOWNLINK_KEYS = sorted({*TARIFF, *WINDOW, *TOKEN, *BOOKING, "v", "id", "ts", "expires", "args", "version", "kind",
                        "upsert", "remove", "cancel", "tariffs", "windows", "status", "uid"})


def downlink_message(rng: random.Random, kind: str) -> dict:
    mid = f"m{rng.randrange(300)}" if rng.random() < 0.85 else f"r{rng.getrandbits(48):x}"
    ts = "2026-03-02T12:00:00Z"
    if kind == "tariffs":
        items = [dict(TARIFF, id=f"TF{rng.randrange(5)}", price_per_kwh=rng.choice(["0.399", "0.45", "101", "0"]),
                      effective_from=rng.choice(["2026-03-01T00:00:00Z", "2026-04-01T00:00:00+02:00"]))
                 for _ in range(rng.randint(0, 3))]
        return {"v": 1, "id": mid, "tariffs": items}
    if kind == "maintenance":
        items = [dict(WINDOW, id=f"MW{rng.randrange(5)}", connectors=rng.choice([["C1"], ["*"], ["C2", "C9"]]))
                 for _ in range(rng.randint(0, 3))]
        msg = {"v": 1, "id": mid, "windows": items}
        if rng.random() < 0.5:
            msg["cancel"] = [f"MW{rng.randrange(5)}"]
        return msg
    if kind == "tokens":
        items = [dict(TOKEN, uid=f"04{rng.randrange(16**6):06X}", status=rng.choice(["Active", "Blocked", "Expired"]))
                 for _ in range(rng.randint(0, 4))]
        return {"v": 1, "id": mid, "version": rng.randrange(6), "kind": rng.choice(["full", "delta"]),
                "upsert": items, "remove": [f"04{rng.randrange(16**6):06X}" for _ in range(rng.randint(0, 2))]}
    if kind == "bookings":
        items = []
        for _ in range(rng.randint(0, 3)):
            start = NOW + timedelta(hours=rng.randint(-2, 48))
            items.append(dict(BOOKING, id=f"BK{rng.randrange(8)}", slot_start=start.isoformat(),
                              slot_end=(start + timedelta(minutes=rng.choice([45, 60, -30]))).isoformat(),
                              connector_type=rng.choice(["CCS", "MCS"]), side=rng.choice(["left", "right"])))
        return {"v": 1, "id": mid, "upsert": items, "cancel": [f"BK{rng.randrange(8)}"] if rng.random() < 0.3 else []}
    if kind == "auth_response":
        msg = {"v": 1, "id": mid, "uid": "04A1B2C3D4E5F6", "status": rng.choice(["Accepted", "Blocked", "Invalid"]),
               "expires": "2026-03-02T13:00:00Z"}
        return msg
    # commands
    name = kind[4:]
    args = {"unlock_connector": {"connector": rng.choice(["C9", "C1", ""])},
            "set_availability": {"connector": rng.choice(["C1", "C2", "C9"]), "available": rng.random() < 0.5,
                                 "reason": "fuzz"},
            "stop_session": {"session": rng.choice(["S-1", ""])},
            "open_gate": {"gate": "G-IN"}, "resync": {}}.get(name, {})
    return {"v": 1, "id": mid, "ts": ts, "expires": rng.choice(["2026-03-02T12:05:00Z", "2026-03-02T11:00:00Z"]),
            "args": args}


DOWNLINK_KINDS = ["tariffs", "maintenance", "tokens", "bookings", "auth_response", "cmd:unlock_connector",
                  "cmd:set_availability", "cmd:stop_session", "cmd:resync", "cmd:open_gate", "cmd:reboot"]


def topic_of(hub_id: str, kind: str) -> str:
    if kind == "auth_response":
        return f"hub/{hub_id}/auth/response"
    if kind.startswith("cmd:"):
        return f"hub/{hub_id}/cmd/{kind[4:]}"
    return f"hub/{hub_id}/sync/{kind}"


def gen_downlink(rng: random.Random) -> tuple[str, bytes]:
    kind = rng.choice(DOWNLINK_KINDS)
    topic = topic_of("FUZZ-HUB", kind)
    if rng.random() < 0.03:
        topic = rng.choice(["hub/FUZZ-HUB/sync/", "hub/FUZZ-HUB/sync/x/y", "hub/OTHER/sync/tariffs",
                            "hub/FUZZ-HUB/sync/unknown", "hub/FUZZ-HUB/auth/response/x"])
    r = rng.random()
    if r < 0.05:
        return topic, bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
    if r < 0.07:
        return topic, b"[" * rng.choice((1000, 5000, 100000)) + b"]" * rng.choice((0, 10))
    msg = downlink_message(rng, kind.replace("cmd:reboot", "cmd:resync"))
    if rng.random() < 0.7:
        msg = mutate_json(rng, msg, keys=DOWNLINK_KEYS)
    return topic, dump_json(rng, msg)


def _downlink_config(tmp: Path) -> dict:
    maps = str(REGISTER_MAPS / "hubcharge-mcs1200.toml")
    return {
        "hub": {"id": "FUZZ-HUB", "country": "NL", "vat_rate": "0.21"},
        "cloud": {"allow_unsigned": True},  # the fuzzer aims at the parsers behind the signature check
        "storage": {"state_dir": str(tmp / "state")},
        "charging": {"modbus_timeout_s": 0.05, "unlock_retries": 0},
        "chargers": [{"id": "CH1", "address": "127.0.0.1:9", "register_map": maps,
                      "connectors": [{"id": "C1", "index": 1}, {"id": "C2", "index": 2}]}],
        "bays": [{"id": "B1", "connector": "C1", "connector_type": "MCS", "side": "left", "length_m": 25},
                 {"id": "B2", "connector": "C2", "connector_type": "MCS", "side": "right", "length_m": 25}],
    }


class DownlinkRig:
    """A real hub core (store, token store, bookings, connectors) in a
    temporary directory with its downlink wired as the daemon wires it,
    never started: no charger is polled, no broker is used."""

    def __init__(self):
        from units import FakeClock
        from edge.core.config import parse_config
        from edge.core.hub import Hub
        base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        self.tmp = Path(tempfile.mkdtemp(prefix="hubedge-fuzz-", dir=base))
        self.loop = asyncio.new_event_loop()
        self.clock = FakeClock(NOW)
        self.hub = Hub(parse_config(_downlink_config(self.tmp), self.tmp / "hub.toml"), clock=self.clock)
        self.replies: list[dict] = []

        async def wire():
            self.hub._start_cloud()
            self.hub.downlink.reply = self.replies.append
            for part in self.hub.capabilities:
                await part.start()
        self.loop.run_until_complete(wire())

    def close(self):
        async def down():
            for part in reversed(self.hub.capabilities):
                await part.stop()
            for task in list(self.hub._tasks):
                task.cancel()
            await asyncio.gather(*self.hub._tasks, return_exceptions=True)
        try:
            self.loop.run_until_complete(down())
        finally:
            self.hub.store.close()
            self.hub.tokens.close()
            self.loop.close()
            shutil.rmtree(self.tmp, ignore_errors=True)

    def state(self) -> tuple:
        hub = self.hub
        db = hub.store.db
        # What was applied: a refusal is remembered too (so a replay is a
        # duplicate), and that is all it may change.
        handled = db.execute("SELECT count(*), total(handled_at), total(length(reply)), max(id) "
                             "FROM downlink_handled WHERE json_extract(reply, '$.ok')").fetchone()
        docs = tuple(json.dumps(hub.store.documents(name).all(), sort_keys=True)
                     for name in ("tariffs", "maintenance", "bookings"))
        tdb = hub.tokens._db
        tokens = (hub.tokens.version, hub.tokens.count,
                  tdb.execute("SELECT count(*), total(length(uid || status || type || coalesce(grp,'') "
                              "|| coalesce(reference,''))), total(coalesce(expires,0)) FROM token").fetchone(),
                  tdb.execute("SELECT count(*), total(expires), total(length(uid || status)) FROM auth_cache").fetchone())
        book = json.dumps(hub.bookings.documents(), sort_keys=True, default=str)
        connectors = tuple((c.id, c.state, c.admin_unavailable, c.reserved_for, c.session_id)
                           for c in hub.connectors.values())
        return handled, docs, tokens, book, connectors

    def check(self, case: tuple[str, bytes]) -> str:
        """One cloud message: a refusal changes nothing and is answered when
        it carries an id; handle() itself never raises."""
        topic, payload = case
        before = self.state()
        self.replies.clear()
        answer = self.loop.run_until_complete(self.hub.downlink.handle(topic, payload))
        # Give spawned work (events, hooks) its turn, as the daemon's loop would.
        self.loop.run_until_complete(asyncio.sleep(0))
        if answer is None:
            from edge.cloud.downlink import kind_of_topic
            if kind_of_topic("FUZZ-HUB", topic) is None:
                if self.state() != before:
                    raise StateChanged("a message on another topic changed the state")
                return "refused"
            if not topic.endswith("/auth/response"):
                raise Violation("a message on our topic got no answer")
            return "accepted"  # an accepted auth response is consumed without a reply
        if self.replies != [answer]:
            raise Violation("the answer returned is not the reply sent")
        if not isinstance(answer.get("message"), str) or not answer["message"]:
            raise Violation("a reply without a message for the cloud team")
        json.dumps(answer)
        refused = answer.get("code") != "ok"
        # A command that was carried out on the hardware and failed there
        # (the unlock did not happen) is not a refused input: what the hub
        # learnt about the connector is kept.
        if refused and answer.get("code") not in HARDWARE_FAILURES:
            message_id = _message_id(payload)
            if message_id is not None and answer.get("id") != message_id:
                raise Violation("a refused message with an id was answered without that id")
            after = self.state()
            if after != before:
                raise StateChanged(f"refused message (code {answer.get('code')}) changed the state: "
                                   f"{_which(before, after)}")
            return "refused"
        return "accepted"


HARDWARE_FAILURES = ("unlock_failed",)


def _which(before: tuple, after: tuple) -> str:
    names = ("handled ids", "documents", "tokens", "bookings", "connectors")
    return ", ".join(n for n, a, b in zip(names, before, after) if a != b)


def _message_id(payload: bytes) -> str | None:
    try:
        doc = json.loads(payload.decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    if isinstance(doc, dict) and isinstance(doc.get("id"), str):
        return doc["id"]
    return None


# =================================================================== config
def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:
            return "nan"
        if value in (float("inf"), float("-inf")):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        out = []
        for ch in value:
            if ch in '"\\':
                out.append("\\" + ch)
            elif ord(ch) < 0x20 or ord(ch) == 0x7F:
                out.append(f"\\u{ord(ch):04X}")
            elif 0xD800 <= ord(ch) <= 0xDFFF:
                out.append("?")
            else:
                out.append(ch)
        return '"' + "".join(out) + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value if v is not None) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items() if v is not None) + "}"
    if value is None:
        return '""'
    return _toml_value(str(value))


def _toml_key(key: str) -> str:
    import re
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_value(key)


def to_toml(doc: dict) -> str:
    """A document as TOML: one `key = inline value` line per top-level key."""
    return "".join(f"{_toml_key(k)} = {_toml_value(v)}\n" for k, v in doc.items() if v is not None)


def _base_config() -> tuple[dict, str]:
    import tomllib
    text = SMALL_CONFIG.read_text(encoding="utf-8")
    return tomllib.loads(text), text


CONFIG_KEYS: list[str] = []


def _config_keys() -> list[str]:
    if not CONFIG_KEYS:
        from edge.core import config as c
        keys = set()
        for model in (c.HubConfig, c.HubSection, c.CloudSection, c.StorageSection, c.ControlSection,
                      c.ChargingSection, c.AuthSection, c.BookingSection, c.GateSettings, c.ChargerSection,
                      c.BaySection, c.TerminalSection, c.ReaderSection, c.GateSection, c.CameraRef, c.BarrierRef,
                      c.ConnectorRef, c.LoggingSection):
            keys |= set(model.model_fields)
        CONFIG_KEYS.extend(sorted(keys))
    return CONFIG_KEYS


CONFIG_VALUES = INTERESTING_VALUES + ["Europe/Amsterdam", "Europe", "/etc/localtime", "a" * 5000, "mqtts://b:8883",
                                      "10.0.0.1:502", "[::1]:502", "999.1.1.1/40", "usb", "tcp://x", -0.0, 1e-300,
                                      "0.21", "1E+999999", "-inf", "1e-999999", 64, 65, 248, 601]


def gen_config(rng: random.Random) -> tuple[str, bytes]:
    """('text', TOML bytes): the small site's file mutated as a document or as bytes."""
    doc, text = _base_config()
    r = rng.random()
    if r < 0.25:
        return "text", mutate_bytes(rng, text.encode("utf-8"), rng.randint(1, 6))
    if r < 0.27:
        return "text", ("a = " + "[" * rng.choice((100, 3000))).encode()
    keys = _config_keys()
    doc = json.loads(json.dumps(doc))
    for _ in range(rng.randint(1, 4)):
        path = rng.choice(_paths(doc)[1:])
        parent = _get(doc, path[:-1])
        last = path[-1]
        op = rng.randrange(5)
        if op in (0, 1):
            parent[last] = interesting(rng, CONFIG_VALUES)
        elif op == 2:
            del parent[last]
        elif op == 3 and isinstance(parent, dict):
            parent[rng.choice(keys)] = interesting(rng, CONFIG_VALUES + [parent[last]])
        elif isinstance(parent, list):
            parent.append(json.loads(json.dumps(parent[last])))
        elif isinstance(parent, dict):
            parent[rng.choice(keys)] = parent.pop(last)
    if rng.random() < 0.05:
        doc["source"] = "/etc/hubedge/other.toml"
    return "text", to_toml(doc).encode("utf-8")


class ConfigRig:
    """A temporary directory holding the file under test, with the site's
    register maps beside it as the small config expects."""

    def __init__(self):
        base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        self.tmp = Path(tempfile.mkdtemp(prefix="hubedge-fuzz-cfg-", dir=base))
        (self.tmp / "register-maps").symlink_to(REGISTER_MAPS)
        self.path = self.tmp / "hub.toml"

    def close(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def check(self, case: tuple[str, bytes]) -> str:
        """load_config: a HubConfig with finite numbers and no unknown key,
        or ConfigError listing problems, each naming its key."""
        import math
        import re
        import tomllib

        from edge.core.config import ConfigError, HubConfig, load_config
        _kind, raw = case
        self.path.write_bytes(raw)
        try:
            cfg = load_config(self.path)
        except ConfigError as exc:
            if not exc.problems:
                raise Violation("ConfigError without a problem")
            for p in exc.problems:
                if not isinstance(p, str) or not re.match(r"^(not valid TOML|the file is not UTF-8|cannot read the file"
                                                          r"|[^\s:][^\n]*?: \S)", p):
                    raise Violation(f"config problem without its key path: {p[:80]!r}")
            return "refused"
        doc = tomllib.loads(raw.decode("utf-8"))
        unknown = set(doc) - (set(HubConfig.model_fields) - {"source"})
        if unknown:
            raise Violation(f"unknown top-level key(s) {sorted(unknown)} accepted")

        def walk(value, where):
            if isinstance(value, float) and not math.isfinite(value):
                raise Violation(f"{where}: non-finite number {value} accepted")
            if isinstance(value, Decimal) and not value.is_finite():
                raise Violation(f"{where}: non-finite decimal {value} accepted")
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(v, f"{where}.{k}")
            elif isinstance(value, (list, tuple)):
                for i, v in enumerate(value):
                    walk(v, f"{where}[{i}]")
        walk(cfg.model_dump(), "config")
        return "accepted"


# ================================================================== control
CONTROL_COMMANDS = ("status", "connector", "sessions", "session_stop")


def gen_control(rng: random.Random) -> bytes:
    r = rng.random()
    if r < 0.05:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 80)))
    if r < 0.07:
        return b"[" * rng.choice((1000, 50000)) + b"\n"
    req: Any = {"v": 1, "cmd": rng.choice(CONTROL_COMMANDS + ("nope",)),
                "args": rng.choice([{}, {"id": "C1", "action": "unavailable", "reason": "cable"}, {"boom": True}])}
    if rng.random() < 0.7:
        req = mutate_json(rng, req, keys=["v", "cmd", "args", "id", "action", "boom"])
    raw = dump_json(rng, req)
    return raw + (b"\n" if rng.random() < 0.9 else b"")


class ControlRig:
    def __init__(self):
        from edge.core.control import Caller, ControlServer
        self.calls: list[tuple[str, dict]] = []

        def handler(name):
            async def run(args, caller, progress):
                self.calls.append((name, args))
                await progress({"step": 1})
                if args.get("boom") is True:
                    raise KeyError("boom")
                return {"done": name}
            return run

        self.server = ControlServer("/nonexistent/ctl.sock", "nogroup", {n: handler(n) for n in CONTROL_COMMANDS})
        self.caller = Caller(os.getuid(), os.getgid(), os.getpid())
        self.loop = asyncio.new_event_loop()
        logging.getLogger("hubedge.control").addFilter(lambda r: not r.getMessage().startswith("control.command_failed"))

    def close(self):
        self.loop.close()

    def check(self, line: bytes) -> str:
        """dispatch(): never raises; an answer of the documented shape; a
        handler runs only for a well-formed v 1 request naming it."""
        self.calls.clear()

        async def progress(p):
            pass
        response = self.loop.run_until_complete(self.server.dispatch(line, self.caller, progress))
        if not isinstance(response, dict) or response.get("v") != 1 or not isinstance(response.get("ok"), bool):
            raise Violation("answer without v 1 and ok")
        json.dumps(response)
        try:
            req = json.loads(line)
        except (ValueError, RecursionError):
            req = None
        version = req.get("v") if isinstance(req, dict) else None
        well_formed = (isinstance(req, dict) and not isinstance(version, bool) and version == 1
                       and isinstance(req.get("cmd"), str) and isinstance(req.get("args", {}), dict)
                       and req.get("cmd") in CONTROL_COMMANDS)
        if self.calls and not well_formed:
            raise StateChanged(f"handler ran for a malformed request (code {response.get('code')})")
        if well_formed and not self.calls:
            raise Violation("a well-formed request did not reach its handler")
        if not response["ok"]:
            if not isinstance(response.get("code"), str) or not response.get("message"):
                raise Violation("a refusal without code and message")
            return "refused"
        return "accepted"


# ===================================================================== OCPP
OCPP_T = "2026-03-02T12:00:00Z"
_OCPP_MV16 = [{"timestamp": OCPP_T, "sampledValue": [
    {"value": "1200", "unit": "Wh"}, {"value": "11.5", "measurand": "Power.Active.Import", "unit": "kW", "phase": "L1"},
    {"value": "55", "measurand": "SoC", "unit": "Percent", "location": "EV"},
    {"value": 'OCMF|{"FV":"1.0"}|{"SD":"00"}', "format": "SignedData", "context": "Transaction.End"}]}]
_OCPP_MV201 = [{"timestamp": OCPP_T, "sampledValue": [
    {"value": 1.2, "unitOfMeasure": {"unit": "kWh", "multiplier": 3}, "context": "Transaction.End",
     "signedMeterValue": {"signedMeterData": "T0NNRg==", "signingMethod": "", "encodingMethod": "OCMF",
                          "publicKey": ""}},
    {"value": 11000, "measurand": "Power.Active.Import", "unitOfMeasure": {"unit": "W"}}]}]
OCPP_MESSAGES = {
    "ocpp1.6": [
        ("BootNotification", {"chargePointVendor": "ACME", "chargePointModel": "MCS-1", "chargeBoxSerialNumber": "S1",
                              "firmwareVersion": "1.0"}),
        ("Heartbeat", {}),
        ("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Charging", "timestamp": OCPP_T}),
        ("Authorize", {"idTag": "CARD-OK"}),
        ("StartTransaction", {"connectorId": 1, "idTag": "CARD-OK", "meterStart": 1000, "timestamp": OCPP_T,
                              "reservationId": 3}),
        ("StopTransaction", {"transactionId": 1, "meterStop": 2000, "timestamp": OCPP_T, "reason": "Local",
                             "idTag": "CARD-OK", "transactionData": _OCPP_MV16}),
        ("MeterValues", {"connectorId": 1, "transactionId": 1, "meterValue": _OCPP_MV16}),
        ("DataTransfer", {"vendorId": "com.acme", "messageId": "x", "data": "y"}),
        ("FirmwareStatusNotification", {"status": "Installed"}),
        ("DiagnosticsStatusNotification", {"status": "Uploaded"}),
        ("SecurityEventNotification", {"type": "StartupOfTheDevice", "timestamp": OCPP_T, "techInfo": "x"}),
        ("RemoteStartTransaction", {"idTag": "A"}),
    ],
    "ocpp2.0.1": [
        ("BootNotification", {"reason": "PowerUp", "chargingStation": {"vendorName": "ACME", "model": "MCS-1"}}),
        ("Heartbeat", {}),
        ("StatusNotification", {"timestamp": OCPP_T, "connectorStatus": "Occupied", "evseId": 1, "connectorId": 1}),
        ("Authorize", {"idToken": {"idToken": "CARD-OK", "type": "ISO14443"}}),
        ("TransactionEvent", {"eventType": "Started", "timestamp": OCPP_T, "triggerReason": "Authorized", "seqNo": 0,
                              "transactionInfo": {"transactionId": "T1", "chargingState": "Charging"},
                              "evse": {"id": 1, "connectorId": 1}, "idToken": {"idToken": "CARD-OK",
                                                                               "type": "ISO14443"},
                              "meterValue": _OCPP_MV201}),
        ("TransactionEvent", {"eventType": "Ended", "timestamp": OCPP_T, "triggerReason": "StopAuthorized",
                              "seqNo": 4, "offline": True, "transactionInfo": {"transactionId": "T1",
                                                                                "stoppedReason": "Local"},
                              "meterValue": _OCPP_MV201}),
        ("MeterValues", {"evseId": 1, "meterValue": _OCPP_MV201}),
        ("DataTransfer", {"vendorId": "com.acme"}),
        ("NotifyEvent", {"generatedAt": OCPP_T, "seqNo": 0, "eventData": [{
            "eventId": 1, "timestamp": OCPP_T, "trigger": "Alerting", "actualValue": "1",
            "eventNotificationType": "HardWiredNotification", "component": {"name": "EVSE"},
            "variable": {"name": "Problem"}}]}),
        ("NotifyReport", {"requestId": 1, "generatedAt": OCPP_T, "seqNo": 0}),
        ("ReservationStatusUpdate", {"reservationId": 1, "reservationUpdateStatus": "Expired"}),
        ("SecurityEventNotification", {"type": "x", "timestamp": OCPP_T}),
        ("NotifyChargingLimit", {"chargingLimit": {"chargingLimitSource": "EMS"}}),
        ("Reset", {"type": "Immediate"}),
    ],
}
OCPP_MAX_FRAME = 65536


def _ocpp_keys(doc, out: set) -> set:
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.add(k)
            _ocpp_keys(v, out)
    elif isinstance(doc, list):
        for v in doc:
            _ocpp_keys(v, out)
    return out


def gen_ocpp(rng: random.Random) -> tuple[str, bool, bytes]:
    """(version, lenient station, one text frame as UTF-8): station messages of
    both versions, mutated as JSON and as text, frame-shape faults, answers
    to calls never made, garbage, and now and then a frame over the size limit."""
    version = rng.choice(("ocpp1.6", "ocpp2.0.1"))
    lenient = rng.random() < 0.3
    r = rng.random()
    if r < 0.04:
        return version, lenient, bytes(rng.randrange(32, 127) for _ in range(rng.randint(0, 60)))
    if r < 0.05:
        return version, lenient, b'[2,"big","DataTransfer",{"vendorId":"x","data":"' + b"A" * OCPP_MAX_FRAME + b'"}]'
    action, payload = rng.choice(OCPP_MESSAGES[version])
    mid: Any = f"m{rng.randrange(1000)}"
    if r < 0.55:
        payload = mutate_json(rng, payload, keys=sorted(_ocpp_keys(payload, set())))
    frame: Any = [2, mid, action, payload]
    if r > 0.9:
        frame = rng.choice([[3, mid, payload], [4, mid, "GenericError", "x", {}], [2, mid, action],
                            [rng.choice([0, 5, "2", None, 2.0]), mid, action, payload], [2, 7, action, payload],
                            [2, "x" * 37, action, payload], {"a": frame}, [], [2, mid, rng.choice(["", 1, "FooBar"]),
                                                                              payload]])
    elif r > 0.8:
        frame = mutate_json(rng, frame, keys=[action, "Heartbeat", mid])
    raw = dump_json(rng, frame)
    return version, lenient, raw.decode("utf-8", "replace").encode()


class _FrameSink:
    """What a Connection needs of a websocket here: send_str into a list."""

    def __init__(self):
        self.sent: list[str] = []
        self.close_code = None

    async def send_str(self, text: str) -> None:
        self.sent.append(text)


class _CountingHandler:
    """A hub that answers at once and keeps nothing (100,000 frames)."""

    def __init__(self):
        from drivers.ocpp.events import IdTokenDecision
        self.decision = IdTokenDecision("Accepted")
        self.events = 0
        self.tx = 0

    def __getattr__(self, name):
        async def record(event):
            self.events += 1
        return record

    async def authorise(self, request):
        self.events += 1
        return self.decision

    async def transaction_started(self, event):
        from drivers.ocpp.events import StartAnswer
        self.events += 1
        self.tx = self.tx % (2**31 - 1) + 1
        return StartAnswer(self.decision, self.tx)

    async def transaction_updated(self, event):
        self.events += 1
        return self.decision if event.id_token else None

    async def transaction_ended(self, event):
        self.events += 1
        return None


class OcppFuzzRig:
    """A station of each version and leniency (all the schema ones, or none)
    behind a real ``Connection``; each frame goes through the same path as
    one read from a websocket."""

    def __init__(self):
        from drivers.ocpp.leniency import LENIENCIES
        from drivers.ocpp.station import Connection, Station, StationConfig
        self.loop = asyncio.new_event_loop()
        self.handler = _CountingHandler()
        self.errors = _Errors()
        logging.getLogger("hubedge.ocpp").addHandler(self.errors)
        self.connections = {}

        async def build():
            for version in ("ocpp1.6", "ocpp2.0.1"):
                for lenient in (False, True):
                    config = StationConfig(f"F-{version}-{lenient}", version,
                                           leniencies=frozenset(LENIENCIES) if lenient else frozenset())
                    station = Station(config, self.handler, clock=lambda: NOW, max_frame_bytes=OCPP_MAX_FRAME)
                    sink = _FrameSink()
                    self.connections[version, lenient] = (Connection(station, sink, "192.0.2.1:1"), sink)
        self.loop.run_until_complete(build())

    def close(self):
        logging.getLogger("hubedge.ocpp").removeHandler(self.errors)
        self.loop.close()

    def check(self, case: tuple[str, bool, bytes]) -> str:
        """Every frame: at most one answer, a valid OCPP-J frame: a CALLRESULT
        that passes the action's response schema, or a CALLERROR with a code
        the version names; a readable CALL is answered with its own id; no
        InternalError (the adapters take whatever the schema lets through)."""
        from drivers.ocpp import rpc
        version, lenient, data = case
        if len(data) > OCPP_MAX_FRAME:
            return "refused"  # aiohttp closes the connection with 1009 before the frame is read (hil_tests)
        raw = data.decode("utf-8")
        conn, sink = self.connections[version, lenient]
        sink.sent.clear()
        self.errors.records.clear()
        self.loop.run_until_complete(conn._frame(raw))
        if self.errors.records:
            rec = self.errors.records[0]
            exc = rec.exc_info[1] if rec.exc_info else None
            raise exc if exc is not None else RuntimeError(rec.getMessage())
        frame = rpc.read_frame(raw, version, ignore_empty=lenient)
        if len(sink.sent) > 1:
            raise Violation(f"{len(sink.sent)} answers to one frame")
        if not sink.sent:
            if isinstance(frame, rpc.Call) or isinstance(frame, rpc.Refusal):
                raise Violation("a CALL or a malformed frame was not answered")
            return "refused"
        answer = json.loads(sink.sent[0])
        if not isinstance(answer, list) or answer[0] not in (3, 4) or not isinstance(answer[1], str):
            raise Violation(f"not an OCPP-J answer: {sink.sent[0][:80]}")
        if isinstance(frame, rpc.Call) and answer[1] != frame.message_id:
            raise Violation("a CALL answered under another message id")
        if answer[0] == 4:
            if len(answer) != 5 or answer[2] not in rpc.CODES[version].values() or not isinstance(answer[4], dict):
                raise Violation(f"CALLERROR of the wrong shape or code: {sink.sent[0][:120]}")
            if not answer[3] or len(answer[3]) > rpc.MAX_DESCRIPTION:
                raise Violation("CALLERROR description empty or over 255 characters")
            if answer[2] == "InternalError":
                raise Violation(f"InternalError for {frame.action if isinstance(frame, rpc.Call) else 'a frame'}: "
                                f"{answer[3][:80]}")
            return "refused"
        if len(answer) != 3 or not isinstance(frame, rpc.Call):
            raise Violation("a CALLRESULT that answers no CALL")
        problem = rpc.check_answer(version, frame.action, answer[2])
        if problem:
            raise Violation(f"our answer breaks the schema: {problem[:100]}")
        return "accepted"


# =================================================================== runner
@dataclass
class Target:
    name: str
    generate: Callable[[random.Random], Any]
    make: Callable[[], tuple[Callable[[Any], str], Callable[[], None]]]
    trivial: Callable[[Any], Any]  # the baseline: the same inputs into a trivial parser


def _trivial_bytes(case: Any) -> Any:
    raw = case if isinstance(case, bytes) else next(c for c in case if isinstance(c, bytes))
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


def _trivial_frames(case):
    return _trivial_bytes(case[0])


def _trivial_client(case):
    return [_trivial_bytes(s) for s in case[1]]


def _plain(check):
    return lambda: (check, lambda: None)


def _rig(cls):
    def make():
        rig = cls()
        return rig.check, rig.close
    return make


def _looped(check):
    def make():
        loop = asyncio.new_event_loop()
        return (lambda case: check(case, loop)), loop.close
    return make


TARGETS = [
    Target("zvt_frames", gen_zvt_frames, _plain(check_zvt_frames), _trivial_frames),
    Target("zvt_apdu", gen_zvt_apdu, _plain(check_zvt_apdu), _trivial_bytes),
    Target("zvt_client", gen_zvt_client, _looped(check_zvt_client), _trivial_client),
    Target("anpr_body", gen_anpr_body, _plain(check_anpr_body), _trivial_bytes),
    Target("anpr_http", gen_anpr_http, _looped(check_anpr_http), _trivial_bytes),
    Target("downlink", gen_downlink, _rig(DownlinkRig), _trivial_bytes),
    Target("config", gen_config, _rig(ConfigRig), _trivial_bytes),
    Target("control", gen_control, _rig(ControlRig), _trivial_bytes),
    Target("ocpp", gen_ocpp, _rig(OcppFuzzRig), _trivial_bytes),
]


@dataclass
class Outcome:
    target: str
    inputs: int = 0
    accepted: int = 0
    refused: int = 0
    crashes: Counter = field(default_factory=Counter)
    hangs: int = 0
    state_changes: Counter = field(default_factory=Counter)
    violations: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)  # signature -> first input that showed it
    seconds: float = 0.0
    slowest_s: float = 0.0
    baseline_rate: float = 0.0

    @property
    def rate(self) -> float:
        return self.inputs / self.seconds if self.seconds else 0.0


def fuzz_target(target: Target, n: int, seed: int = 9, hang_s: float = HANG_S) -> Outcome:
    rng = random.Random(f"{target.name}-{seed}")
    out = Outcome(target.name)
    check, close = target.make()
    # Parsers log every refusal at WARNING; a long run would drown in them.
    logging.disable(logging.WARNING)
    t_start = time.perf_counter()
    try:
        for _ in range(n):
            case = target.generate(rng)
            t0 = time.perf_counter()
            try:
                with time_bound(hang_s):
                    verdict = check(case)
                if verdict == "accepted":
                    out.accepted += 1
                else:
                    out.refused += 1
            except Hang:
                out.hangs += 1
                out.examples.setdefault("hang", case)
            except StateChanged as exc:
                sig = str(exc)[:120]
                out.state_changes[sig] += 1
                out.examples.setdefault(sig, case)
            except Violation as exc:
                sig = str(exc)[:120]
                out.violations[sig] += 1
                out.examples.setdefault(sig, case)
            except Exception as exc:  # a crash: anything the parser did not promise
                tb = exc.__traceback__
                while tb is not None and tb.tb_next is not None:
                    tb = tb.tb_next
                where = f"{Path(tb.tb_frame.f_code.co_filename).name}:{tb.tb_lineno}" if tb else "?"
                sig = f"{type(exc).__name__} at {where}"
                out.crashes[sig] += 1
                out.examples.setdefault(sig, case)
            out.slowest_s = max(out.slowest_s, time.perf_counter() - t0)
            out.inputs += 1
        out.seconds = time.perf_counter() - t_start
    finally:
        logging.disable(logging.NOTSET)
        close()
    # Baseline: the same generator, same count, feeding a trivial parser.
    rng = random.Random(f"{target.name}-{seed}")
    t0 = time.perf_counter()
    for _ in range(n):
        target.trivial(target.generate(rng))
    out.baseline_rate = n / (time.perf_counter() - t0)
    return out


def outcome_results(o: Outcome, n: int) -> list[Result]:
    cmd = f"{CMD}{' --quick' if n < 100_000 else ''}"
    return [
        Result(f"fuzz {o.target}: inputs fed", o.inputs, "inputs", "inputs asked for", n, goal=n,
               lower_is_better=False, command=cmd),
        Result(f"fuzz {o.target}: crashes", sum(o.crashes.values()), "inputs", "inputs fed", o.inputs, goal=0,
               command=cmd),
        Result(f"fuzz {o.target}: hangs (> {HANG_S:g} s)", o.hangs, "inputs", "inputs fed", o.inputs, goal=0,
               command=cmd),
        Result(f"fuzz {o.target}: state changes from refused inputs", sum(o.state_changes.values()), "inputs",
               "inputs refused", o.refused, goal=0, command=cmd),
        Result(f"fuzz {o.target}: property violations", sum(o.violations.values()), "inputs", "inputs fed",
               o.inputs, goal=0, command=cmd),
        Result(f"fuzz {o.target}: throughput", o.rate, "inputs/s",
               "same generator into json.loads", o.baseline_rate, lower_is_better=False, command=cmd),
        Result(f"fuzz {o.target}: slowest input", o.slowest_s * 1000, "ms", "hang limit", HANG_S * 1000,
               goal=HANG_S * 1000, command=cmd),
    ]


def describe(o: Outcome) -> str:
    lines = [f"fuzz {o.target}: {o.inputs} inputs in {o.seconds:.1f} s, {o.accepted} accepted, {o.refused} refused"]
    for label, counter in (("crash", o.crashes), ("state change", o.state_changes), ("violation", o.violations)):
        for sig, count in counter.most_common():
            example = repr(o.examples.get(sig))
            lines.append(f"  {label} x{count}: {sig}\n    first input: {example[:300]}")
    if o.hangs:
        lines.append(f"  hang x{o.hangs}: first input {repr(o.examples.get('hang'))[:300]}")
    return "\n".join(lines)


def run(quick: bool, names: list[str] | None = None) -> list[Result]:
    n = 2_000 if quick else 100_000
    results: list[Result] = []
    import sys
    for target in TARGETS:
        if names and target.name not in names:
            continue
        outcome = fuzz_target(target, n)
        print(describe(outcome), file=sys.stderr, flush=True)
        results += outcome_results(outcome, n)
    return results


if __name__ == "__main__":  # python -m bench.fuzz [--quick] [TARGET ...]: one target's findings in detail
    import sys
    args = [a for a in sys.argv[1:] if a != "--quick"]
    for r in run("--quick" in sys.argv, args or None):
        print(f"{r.name}: {r.value:.4g} {r.unit} | {r.baseline}: {r.baseline_value:.4g}")
