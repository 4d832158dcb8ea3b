"""A stolen hub's certificate is revoked and the hub gets a new one
(R-M5; docs/threat-model.md, "someone with a stolen hub").

Against the example broker configuration: after the revocation list is
updated and the broker reloaded, the stolen certificate no longer connects;
the hub's new certificate does, and its connection closes the thief's
connection that was still open; the rest of the fleet is untouched.
"""

from __future__ import annotations

import shutil
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from hil_tests.fleet.conftest import revoke

pytestmark = pytest.mark.hil


class Holder:
    """An MQTT client with a hub's certificate files (the hub or a thief)."""

    def __init__(self, port: int, tls: dict[str, str], client_id: str):
        self.up = threading.Event()
        self.down = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                                  reconnect_on_failure=False)
        self.client.tls_set(ca_certs=tls["ca"], certfile=tls["cert"], keyfile=tls["key"])
        self.client.on_connect = lambda _c, _u, _f, rc, _p: None if rc.is_failure else self.up.set()
        self.client.on_disconnect = lambda *_a: self.down.set()
        self.port = port

    def connect(self, wait: float = 2.0) -> bool:
        try:
            self.client.connect("127.0.0.1", self.port, keepalive=10)
        except OSError:  # refused during the TLS handshake
            return False
        self.client.loop_start()
        return self.up.wait(wait) and not self.down.is_set()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_fleet_stolen_hub_certificate_revoked_and_rotated_R_M5(tmp_path, example_broker):
    broker = example_broker
    pki = broker.pki
    stolen_id = "FLEET-07"
    # What the thief carries away: a copy of the hub's certificate and key.
    issued = pki.client(stolen_id)
    loot = tmp_path / "loot"
    loot.mkdir()
    stolen = {"ca": issued["ca"], "cert": shutil.copy(issued["cert"], loot), "key": shutil.copy(issued["key"], loot)}

    thief = Holder(broker.tls_port, stolen, client_id="anything")
    neighbour = Holder(broker.tls_port, pki.client("FLEET-08"), client_id="hubedge-FLEET-08")
    late_thief = Holder(broker.tls_port, stolen, client_id="anything-else")
    rotated: Holder | None = None
    try:
        assert thief.connect(), "the hub's certificate should work before it is revoked"
        assert neighbour.connect()

        revoke(pki, stolen_id)
        broker.reload()
        time.sleep(0.5)  # mosquitto handles the signal in its main loop

        assert not late_thief.connect(), "a revoked certificate still opens a new connection"
        assert "certificate verify failed" in broker.log_text()
        # An open connection survives the reload (mosquitto checks the list at
        # the handshake) ...
        assert thief.client.is_connected() and not thief.down.is_set()

        # ... until the hub itself, with its new certificate, connects: the
        # broker names the client after the certificate, so the hub takes
        # its id back and the thief's connection is closed.
        fresh = pki.client(stolen_id)
        assert fresh["cert"] != stolen["cert"]
        rotated = Holder(broker.tls_port, fresh, client_id=f"hubedge-{stolen_id}")
        assert rotated.connect(), "the hub's new certificate should connect"
        assert thief.down.wait(3), "the thief's connection stayed open after the hub came back"
        # The rest of the fleet did not notice.
        assert neighbour.client.is_connected() and not neighbour.down.is_set()
    finally:
        for h in (thief, neighbour, late_thief, rotated):
            if h is not None:
                h.close()
