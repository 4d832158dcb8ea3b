"""RFID card readers through nfcpy: card taps in, health out.

nfcpy is blocking, so each reader polls in its own thread and hands typed
events to the event loop with ``loop.call_soon_threadsafe(emit, event)``:
``CardTap`` for a card, ``DeviceFault`` / ``DeviceRecovered`` for the reader's
health. Any nfcpy path works (``usb``, ``usb:VID:PID``, ``tty:AMA0:pn532``,
``udp:HOST:PORT``); nothing here knows what a card is allowed to do.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime

from drivers.device import DeviceFault, DeviceHealth, DeviceRecovered, Emit, utcnow

log = logging.getLogger("hubedge.reader")

# Linux's IP_RECVERR (not exported by Python's socket module): lets an
# unconnected UDP socket see ICMP port unreachable, which is how a simulated
# reader that has vanished shows itself on nfcpy's udp frontend.
_IP_RECVERR = 11

_UDP_PATCH_LOCK = threading.Lock()


def _numeric_udp_port() -> None:
    """nfcpy's udp frontend passes its port through getnameinfo() without
    NI_NUMERICSERV and then int(): a port with a name in /etc/services
    (60177 is "tfido") cannot be opened, and the reader would stay in fault
    for good. Its device keeps the address as given instead."""
    import nfc.clf.udp as udp

    with _UDP_PATCH_LOCK:
        if getattr(udp.Device, "_hubedge_numeric_port", False):
            return

        def numeric_init(device, host, port):
            device.addr = (socket.gethostbyname(host), int(port))
            device._path = "%s:%d" % device.addr
            device.socket = None
            device._create_socket()

        udp.Device.__init__ = numeric_init
        udp.Device._hubedge_numeric_port = True


TECHNOLOGIES = ("106A", "106B", "212F")


@dataclass(frozen=True)
class CardTap:
    reader_id: str
    uid_hex: str  # upper-case hex, the card's token id
    uid_len: int  # bytes: 4, 7 or 10 for type A, 4 for B (PUPI), 8 for F (IDm)
    ts: datetime = field(default_factory=utcnow)
    technology: str = "106A"


def mask_uid(uid_hex: str) -> str:
    """What a log line may show of a card uid: its last four hex digits."""
    return "*" + uid_hex[-4:].upper()


class TapDebounce:
    """One held card counts once (R-A4).

    A uid counts when it has not been seen for ``window_s``; every sighting
    refreshes it, so a card left on the reader never counts twice, while a
    card taken away and tapped again after the window counts again.
    """

    def __init__(self, window_s: float):
        self.window_s = window_s
        self._last_seen: dict[str, float] = {}

    def seen(self, uid_hex: str, mono_now: float) -> bool:
        last = self._last_seen.get(uid_hex)
        self._last_seen[uid_hex] = mono_now
        if len(self._last_seen) > 64:  # forget cards long gone
            cutoff = mono_now - self.window_s
            self._last_seen = {u: t for u, t in self._last_seen.items() if t >= cutoff}
        return last is None or mono_now - last >= self.window_s


def uid_of(target) -> tuple[str, bytes] | None:
    """(technology, uid bytes) of a sensed nfcpy RemoteTarget."""
    brty = target.brty
    if brty.endswith("A") and target.sdd_res:
        return "106A", bytes(target.sdd_res)
    if brty.endswith("B") and target.sensb_res and len(target.sensb_res) >= 5:
        return "106B", bytes(target.sensb_res[1:5])  # PUPI
    if brty.endswith("F") and target.sensf_res and len(target.sensf_res) >= 9:
        return "212F", bytes(target.sensf_res[1:9])  # IDm
    return None


class CardReader:
    """One nfcpy reader polled in its own thread."""

    device_class = "reader"

    def __init__(
        self,
        reader_id: str,
        path: str,
        loop,
        emit: Emit,
        *,
        debounce_s: float = 2.0,
        poll_interval: float = 0.05,
        technologies: tuple[str, ...] = ("106A",),
        fault_after: int = 3,
        retry_s: float = 1.0,
        max_retry_s: float = 30.0,
    ):
        unknown = [t for t in technologies if t not in TECHNOLOGIES]
        if unknown or not technologies:
            raise ValueError(f"reader {reader_id}: technologies {unknown or '[]'} not supported; use some of {TECHNOLOGIES}")
        self.reader_id = reader_id
        self.path = path
        self._loop = loop
        self._emit = emit
        self.poll_interval = poll_interval
        self.technologies = technologies
        self.fault_after = fault_after  # failed polls in a row before a fault is reported
        self.retry_s = retry_s
        self.max_retry_s = max_retry_s
        self.health = DeviceHealth(reader_id, self.device_class, detail={"path": path})
        self._debounce = TapDebounce(debounce_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failures = 0

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        if self._thread and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"reader-{self.reader_id}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 3.0) -> bool:
        """Ask the thread to end; True when it did within ``timeout``.

        A poll in progress is not interruptible (nfcpy holds its lock), so the
        join is bounded by the longest poll: about 2 s on the udp frontend.
        """
        self._stop.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- the polling thread ----------------------------------------------------------
    def _run(self) -> None:
        import nfc
        import nfc.clf

        _numeric_udp_port()
        targets = [nfc.clf.RemoteTarget(t) for t in self.technologies]
        while not self._stop.is_set():
            clf = self._open(nfc)
            if clf is None:
                self._stop.wait(self._backoff())
                continue
            try:
                while not self._stop.is_set():
                    self._harden_udp(clf)
                    target = clf.sense(*targets, iterations=1)
                    self._poll_ok()
                    if target is not None:
                        self._card_seen(target)
                    self._stop.wait(self.poll_interval)
            except (OSError, nfc.clf.Error) as exc:
                # nfcpy reports a lost device as IOError; the udp frontend as
                # ECONNREFUSED once the peer's port is gone.
                self._poll_failed(f"reader {self.reader_id} on {self.path} stopped answering ({exc})")
                self._stop.wait(self._backoff())
            except Exception as exc:  # a driver bug must not end the thread
                log.exception("reader.poll_error reader=%s", self.reader_id)
                self._poll_failed(f"reader {self.reader_id} poll failed ({type(exc).__name__}: {exc})")
                self._stop.wait(self._backoff())
            finally:
                try:
                    clf.close()
                except Exception:
                    pass

    def _open(self, nfc):
        try:
            return nfc.ContactlessFrontend(self.path)
        except (OSError, ValueError, nfc.clf.Error) as exc:
            if isinstance(exc, OSError) and exc.errno == errno.ENODEV:
                what = "no reader found"
            else:
                what = str(exc)
            self._poll_failed(
                f"reader {self.reader_id} on {self.path} could not be opened ({what})", immediate=True
            )
            return None

    def _harden_udp(self, clf) -> None:
        # nfcpy makes a fresh socket per poll; mark it before use so that a
        # vanished peer surfaces as an error instead of an empty field.
        device = getattr(clf, "device", None)
        if device is None or type(device).__module__ != "nfc.clf.udp":
            return
        if getattr(device, "_hubedge_hardened", False):
            return
        original = device._create_socket

        def create_socket():
            fresh = device.socket is None
            original()
            if fresh and device.socket is not None:
                try:
                    device.socket.setsockopt(socket.IPPROTO_IP, _IP_RECVERR, 1)
                except OSError:
                    pass

        device._create_socket = create_socket
        device._hubedge_hardened = True

    def _card_seen(self, target) -> None:
        found = uid_of(target)
        if found is None:
            return
        technology, uid = found
        uid_hex = uid.hex().upper()
        if not self._debounce.seen(uid_hex, time.monotonic()):
            return
        tap = CardTap(self.reader_id, uid_hex, len(uid), utcnow(), technology)
        log.info("reader.card_tapped reader=%s uid=%s len=%d tech=%s", self.reader_id, mask_uid(uid_hex), len(uid), technology)
        self._hand_over(tap)

    def _poll_ok(self) -> None:
        self._failures = 0
        if self.health.mark_ok():
            log.info("reader.recovered reader=%s path=%s", self.reader_id, self.path)
            self._hand_over(DeviceRecovered(self.reader_id, self.device_class))

    def _poll_failed(self, reason: str, immediate: bool = False) -> None:
        self._failures += 1
        if not immediate and self._failures < self.fault_after:
            return
        reason = f"{reason}; check its cable, power and path in [[readers]]. The hub retries by itself"
        if self.health.mark_fault(reason):
            log.warning("reader.fault reader=%s path=%s failures=%d", self.reader_id, self.path, self._failures)
            self._hand_over(DeviceFault(self.reader_id, self.device_class, reason))

    def _backoff(self) -> float:
        if self._failures < self.fault_after:
            return self.retry_s / 4
        return min(self.max_retry_s, self.retry_s * 2 ** (self._failures - self.fault_after))

    def _hand_over(self, event) -> None:
        try:
            self._loop.call_soon_threadsafe(self._emit, event)
        except RuntimeError:
            self._stop.set()  # the loop is closed: nobody is listening any more
