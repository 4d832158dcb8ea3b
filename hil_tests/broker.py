"""A throw-away mosquitto for tests and benchmarks.

Each ``Broker`` runs its own mosquitto on free ports of 127.0.0.1 with its own
config, persistence file and log in a directory the caller owns - never the
system broker on 1883. Optional TLS listener with client certificates (see
``make_pki``) and an ACL file. ``stop`` (graceful, saves persistence),
``kill`` (SIGKILL, like a power cut) and ``start`` again on the same ports are
fast, so tests can bounce the broker many times.

The broker itself lives in simulators/broker.py (the demo runs one too);
this module adds the test PKI and the cloud-side test client.
Used by hil_tests/sync/conftest.py (the ``broker`` fixture) and bench/uplink.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from simulators.broker import MOSQUITTO, Broker, _listening, free_port  # noqa: F401 (re-exported)

@dataclass
class PKI:
    """Test certificate files: one CA, a server certificate for 127.0.0.1 /
    localhost, and client certificates whose CN is the name given."""

    directory: Path
    ca: Path
    server_cert: Path
    server_key: Path

    def client(self, name: str) -> dict[str, str]:
        """{ca, cert, key} for the client ``name`` (created on first use)."""
        cert, key = self.directory / f"{name}.crt", self.directory / f"{name}.key"
        if not cert.exists():
            _issue(self.directory, name, cert, key, server=False)
        return {"ca": str(self.ca), "cert": str(cert), "key": str(key)}


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _issue(directory: Path, cn: str, cert: Path, key: Path, *, server: bool) -> None:
    csr = directory / f"{cn}.csr"
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={cn}", cwd=directory)
    ext = directory / f"{cn}.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n" if server
                   else "extendedKeyUsage=clientAuth\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", str(cert), "-days", "2", "-sha256", "-extfile", str(ext), cwd=directory)
    csr.unlink()
    ext.unlink()


def make_pki(directory: Path) -> PKI:
    directory.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=hub-edge test CA", cwd=directory)
    pki = PKI(directory, directory / "ca.crt", directory / "server.crt", directory / "server.key")
    _issue(directory, "server", pki.server_cert, pki.server_key, server=True)
    return pki


# The shipped per-hub ACL (config/mosquitto/hub-acl.conf), plus the cloud
# service's own user, which may use every hub's root.
HUB_ACL = (Path(__file__).resolve().parents[1] / "config" / "mosquitto" / "hub-acl.conf").read_text() + """
user cloud
topic readwrite hub/#
"""

if __name__ == "__main__":  # manual use: python hil_tests/broker.py DIR
    import sys

    b = Broker(Path(sys.argv[1] if len(sys.argv) > 1 else "broker-run")).start()
    print(b.url, flush=True)
    try:
        signal.pause()
    finally:
        b.stop()
        os._exit(0)


class CloudClient:
    """The cloud's side of the link, for tests: a paho client with a
    persistent session (so nothing published while it is away is lost) that
    records every message it receives."""

    def __init__(self, url: str, *, client_id: str = "cloud-test", tls: dict[str, str] | None = None,
                 topics: tuple[str, ...] = ("hub/#",)):
        import threading
        from urllib.parse import urlsplit

        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self._mqtt = mqtt
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.topics = topics
        self.messages: list[tuple[str, bytes, bool]] = []  # (topic, payload, retained)
        self.granted: list = []
        self._cond = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.reconnect_delay_set(0.05, 0.5)
        if tls:
            self.client.tls_set(ca_certs=tls["ca"], certfile=tls["cert"], keyfile=tls["key"])
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.connected = threading.Event()

    def _on_connect(self, client, _u, _f, reason_code, _p):
        if not reason_code.is_failure:
            client.subscribe([(t, 1) for t in self.topics])
            self.connected.set()

    def _on_subscribe(self, _c, _u, _mid, reason_codes, _p):
        with self._cond:
            self.granted.extend(reason_codes)
            self._cond.notify_all()

    def _on_message(self, _c, _u, message):
        with self._cond:
            self.messages.append((message.topic, bytes(message.payload), bool(message.retain)))
            self._cond.notify_all()

    def start(self, timeout: float = 5.0) -> "CloudClient":
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect_async(self.host, self.port, keepalive=10, clean_start=False, properties=props)
        self.client.loop_start()
        if not self.connected.wait(timeout):
            raise TimeoutError(f"cloud test client could not connect to {self.host}:{self.port}")
        self.wait_for(lambda: len(self.granted) >= len(self.topics), timeout)
        return self

    def wait_for(self, predicate, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.2))
        return True

    def received(self, prefix: str = "") -> list[tuple[str, bytes, bool]]:
        with self._cond:
            return [m for m in self.messages if m[0].startswith(prefix)]

    def publish(self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False,
                key: bytes | None = None, sig: str | None = None) -> None:
        """Publish and wait until it is sent. ``key`` signs the message as the
        cloud does (edge/cloud/signing.py); ``sig`` sends exactly that hubedge-sig
        value instead (a wrong or malformed signature); neither: unsigned."""
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        from edge.cloud.signing import SIGNATURE_PROPERTY, sign

        body = payload.encode() if isinstance(payload, str) else payload
        if key is not None:
            sig = sign(key, topic, body)
        props = None
        if sig is not None:
            props = Properties(PacketTypes.PUBLISH)
            props.UserProperty = (SIGNATURE_PROPERTY, sig)
        info = self.client.publish(topic, body, qos=qos, retain=retain, properties=props)
        info.wait_for_publish(5)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextlib.contextmanager
def cloud_clients():
    """A factory of started CloudClients, make(url, **kw), each stopped on leaving."""
    made: list[CloudClient] = []

    def make(url: str, **kw) -> CloudClient:
        c = CloudClient(url, **kw).start()
        made.append(c)
        return c

    try:
        yield make
    finally:
        for c in made:
            c.stop()
