"""The card side of nfcpy's UDP frontend: an RFID charge card in a reader's field.

nfcpy's ``udp:HOST:PORT`` frontend speaks ISO 14443 / JIS X 6319 frames as text
datagrams (``"106A 26"`` is a REQA at 106 kbps type A). A reader driver opened
on ``udp:127.0.0.1:PORT`` senses whatever answers on that port, so this module
plays the card: while a card is "in the field" it answers polls with the
card's UID; otherwise it stays silent on a bound port, as an empty field does.

Two engines:

- ``wire`` (default): this module answers the frames itself. It handles 4-,
  7- and 10-byte type A UIDs (nfcpy 1.0.4's own listener compares the third
  cascade level's select with the wrong command byte, so 10-byte UIDs never
  complete with it), and type B (106B) and type F (212F) cards.
- ``nfcpy``: nfcpy's own ``ContactlessFrontend.listen()`` with a
  ``LocalTarget('106A')``. It proves our reader talks to nfcpy's listener
  unchanged; it supports 4- and 7-byte UIDs, needs holds of about 1.5 s
  because nfcpy's reader side waits up to 1 s per poll, and a held card may
  go unseen for about 1.1 s between listen() calls (keep the reader's
  debounce at 1.5 s or more).

Faults: ``stop_answering()`` closes the port as a reader that vanished would
(the reader then gets ICMP port unreachable); ``resume()`` brings it back.

Standalone::

    python -m simulators.card --port 54321 --tap 04A1B2C3 --tap 04112233445566
"""

from __future__ import annotations

import argparse
import binascii
import logging
import select
import socket
import threading
import time
from dataclasses import dataclass

log = logging.getLogger("hubedge.sim.card")

# A reader's poll waits 1 s for an answer (nfcpy udp frontend). A card that
# enters the field answers a poll sent within this window, as if it had been
# there when the poll went out; otherwise short taps fall between polls.
PENDING_POLL_S = 0.9

_CASCADE_TAG = 0x88


@dataclass(frozen=True)
class SimCard:
    uid: bytes
    technology: str = "106A"  # 106A | 106B | 212F

    @classmethod
    def parse(cls, uid_hex: str, technology: str = "106A") -> "SimCard":
        try:
            uid = bytes.fromhex(uid_hex)
        except ValueError:
            raise ValueError(f"card uid {uid_hex!r} is not hex: give it as e.g. 04A1B2C3") from None
        if technology == "106A":
            if len(uid) not in (4, 7, 10):
                raise ValueError(f"a type A uid has 4, 7 or 10 bytes, got {len(uid)}: check the uid")
            if len(uid) > 4 and uid[0] == _CASCADE_TAG:
                raise ValueError("a 7- or 10-byte type A uid cannot start with 88 (the cascade tag)")
        elif technology == "106B":
            if len(uid) != 4:
                raise ValueError("a type B card's PUPI has 4 bytes")
        elif technology == "212F":
            if len(uid) != 8:
                raise ValueError("a type F card's IDm has 8 bytes")
        else:
            raise ValueError(f"technology {technology!r} unknown: use 106A, 106B or 212F")
        return cls(uid, technology)

    def sens_res(self) -> bytes:
        # First byte, bits 7-6: UID size (single, double, triple); bit 2: bit
        # frame anticollision as ordinary cards announce it.
        return bytes([{4: 0x04, 7: 0x44, 10: 0x84}[len(self.uid)], 0x00])

    def sel_res(self) -> int:
        # 4-byte cards as MIFARE Classic 1K, 7-byte as type 2, 10-byte as ISO-DEP.
        return {4: 0x08, 7: 0x00, 10: 0x20}[len(self.uid)]

    def cascade_levels(self) -> list[bytes]:
        """UID split into anticollision levels of 4 bytes plus BCC each."""
        u = self.uid
        if len(u) == 4:
            parts = [u]
        elif len(u) == 7:
            parts = [bytes([_CASCADE_TAG]) + u[0:3], u[3:7]]
        else:
            parts = [bytes([_CASCADE_TAG]) + u[0:3], bytes([_CASCADE_TAG]) + u[3:6], u[6:10]]
        return [p + bytes([p[0] ^ p[1] ^ p[2] ^ p[3]]) for p in parts]


def _frame(brty: str, data: bytes) -> bytes:
    return f"{brty} {binascii.hexlify(data).decode()}".encode()


class CardSimulator:
    """Cards tapped on one simulated reader (the reader listens on ``port``)."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1", *, engine: str = "wire"):
        if engine not in ("wire", "nfcpy"):
            raise ValueError(f"engine {engine!r} unknown: use wire or nfcpy")
        self.host = host
        self.engine = engine
        self._lock = threading.Lock()
        self._card: SimCard | None = None
        self._answering = True
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._bind(port)
        self.port = self._sock.getsockname()[1]
        self.polls_seen = 0
        self.cards_read = 0
        self._thread = threading.Thread(target=self._run, name=f"card-sim-{self.port}", daemon=True)
        self._thread.start()

    # -- what a test does with cards -------------------------------------------------
    def hold(self, uid_hex: str, technology: str = "106A") -> None:
        """Put a card in the field and leave it there until remove()."""
        card = SimCard.parse(uid_hex, technology)
        if self.engine == "nfcpy" and (technology != "106A" or len(card.uid) == 10):
            raise ValueError("the nfcpy engine plays 4- and 7-byte type A cards only: use engine='wire'")
        with self._lock:
            self._card = card
            self._level = 0
            pending = self._pending_poll
        if self.engine == "wire" and pending and time.monotonic() - pending[1] < PENDING_POLL_S:
            self._answer(pending[0], pending[2], pending[3])

    def remove(self) -> None:
        with self._lock:
            self._card = None

    def tap(self, uid_hex: str, hold_s: float = 0.5, technology: str = "106A") -> None:
        """Present a card for ``hold_s`` seconds, then take it away (blocks)."""
        self.hold(uid_hex, technology)
        time.sleep(hold_s)
        self.remove()

    def tap_in_row(self, uids: list[str], hold_s: float = 0.5, gap_s: float = 0.3) -> None:
        for uid in uids:
            self.tap(uid, hold_s)
            time.sleep(gap_s)

    # -- faults ----------------------------------------------------------------------
    def stop_answering(self) -> None:
        """The reader vanishes: its port closes and polls get port unreachable."""
        with self._lock:
            self._answering = False
            self._close_socket()

    def resume(self) -> None:
        with self._lock:
            if not self._answering:
                self._answering = True
                if not self._nfcpy_active:
                    self._bind(self.port)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=3.0)
        with self._lock:
            self._close_socket()

    def __enter__(self) -> "CardSimulator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the card side of the wire ---------------------------------------------------
    _pending_poll: tuple | None = None
    _level = 0
    _nfcpy_active = False  # nfcpy's listener holds the port right now

    def _bind(self, port: int) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((self.host, port))
        self._sock = sock

    def _close_socket(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                sock = self._sock
                card = self._card
            if sock is None:
                self._stop.wait(0.02)
                continue
            if self.engine == "nfcpy" and card is not None:
                self._listen_with_nfcpy()
                continue
            try:
                ready, _, _ = select.select([sock], [], [], 0.05)
                if not ready:
                    continue
                data, addr = sock.recvfrom(1024)
            except (OSError, ValueError):
                continue  # socket closed under us by stop_answering()
            self._on_frame(data, addr)

    def _on_frame(self, raw: bytes, addr) -> None:
        if raw.startswith(b"RFOFF"):
            with self._lock:
                self._level = 0
            return
        try:
            brty, hexdata = raw.decode("ascii").split()
            data = bytes.fromhex(hexdata)
        except ValueError:
            return  # a card ignores frames it cannot decode
        poll = (brty == "106A" and data in (b"\x26", b"\x52")) or (
            brty == "106B" and len(data) == 3 and data[0] == 0x05) or (
            brty in ("212F", "424F") and len(data) >= 6 and data[:2] == b"\x06\x00")
        if poll:
            self.polls_seen += 1
            with self._lock:
                self._pending_poll = (addr, time.monotonic(), brty, data)
        self._answer(addr, brty, data)

    def _answer(self, addr, brty: str, data: bytes) -> None:
        with self._lock:
            card = self._card
            sock = self._sock
            if card is None or sock is None:
                return
            reply = None
            if brty == "106A" and card.technology == "106A":
                reply = self._answer_type_a(card, data)
            elif brty == "106B" and card.technology == "106B" and len(data) == 3 and data[0] == 0x05:
                # SENSB_RES: 50, PUPI, application data, protocol info.
                reply = b"\x50" + card.uid + b"\x00\x00\x00\x00" + b"\x00\x81\x81"
            elif brty == "212F" and card.technology == "212F" and data[:2] == b"\x06\x00":
                body = b"\x01" + card.uid + b"\xff" * 8
                if len(data) >= 5 and data[4] == 1:
                    body += data[2:4] if data[2:4] != b"\xff\xff" else b"\x12\xfc"
                reply = bytes([len(body) + 1]) + body
            if reply is None:
                return
            try:
                sock.sendto(_frame(brty, reply), addr)
            except OSError:
                pass

    def _answer_type_a(self, card: SimCard, data: bytes) -> bytes | None:
        levels = card.cascade_levels()
        if data in (b"\x26", b"\x52"):
            self._level = 0
            return card.sens_res()
        for i, cmd in enumerate((0x93, 0x95, 0x97)[: len(levels)]):
            if data == bytes([cmd, 0x20]):
                return levels[i]
            if data == bytes([cmd, 0x70]) + levels[i]:
                last = i == len(levels) - 1
                if last:
                    self.cards_read += 1
                return bytes([card.sel_res() if last else 0x04])
        return None

    def _listen_with_nfcpy(self) -> None:
        """Let nfcpy's own listener play the card while it is in the field."""
        import nfc.clf

        with self._lock:
            card = self._card
            self._close_socket()  # nfcpy binds the port itself
            self._nfcpy_active = True
        target = nfc.clf.LocalTarget("106A")
        target.sens_res = bytearray(card.sens_res())
        target.sdd_res = bytearray(card.uid)
        target.sel_res = bytearray([card.sel_res()])
        clf = nfc.ContactlessFrontend(f"udp:{self.host}:{self.port}")
        try:
            while not self._stop.is_set():
                with self._lock:
                    if self._card != card or not self._answering:
                        break
                # Each listen() rebinds the port, and a poll landing in that
                # gap waits 1 s: long slices keep the gaps rare.
                clf.listen(target, 1.0)
        finally:
            clf.close()
            with self._lock:
                self._nfcpy_active = False
                if self._answering and self._sock is None:
                    self._bind(self.port)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Play RFID cards to a reader on nfcpy's UDP frontend.")
    p.add_argument("--port", type=int, required=True, help="the port the reader path names (udp:127.0.0.1:PORT)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--tap", action="append", default=[], metavar="UID_HEX", help="tap this card; repeatable")
    p.add_argument("--hold", type=float, default=0.5, help="seconds each card stays in the field")
    p.add_argument("--technology", default="106A", choices=["106A", "106B", "212F"])
    p.add_argument("--engine", default="wire", choices=["wire", "nfcpy"])
    p.add_argument("--stay", action="store_true", help="keep the field open after the taps until Ctrl-C")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with CardSimulator(args.port, args.host, engine=args.engine) as sim:
        # Give the reader a poll or two to find the port before the first card.
        time.sleep(1.2)
        for uid in args.tap:
            sim.tap(uid, args.hold, args.technology)
            log.info("card.tapped port=%d uid_tail=%s", sim.port, uid[-4:].upper())
            time.sleep(0.3)
        if args.stay:
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
