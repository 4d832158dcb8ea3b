"""`hubedge` with one pause put in from outside, so a test can SIGKILL the
daemon inside a window of its choosing (the production code has no hook):

    python hil_tests/sync/slow_apply.py WHERE run --config FILE

WHERE is ``apply`` (a token list has been received and is about to be
applied: nothing changed yet) or ``ack`` (a message has been applied and its
answer recorded: the PUBACK to the broker is about to go). The daemon writes
the message id (apply) or the packet id (ack) to $HUBEDGE_TEST_MARK when it
reaches the point, then waits there for good."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

WHERE = sys.argv.pop(1)
MARK = Path(os.environ["HUBEDGE_TEST_MARK"])

if WHERE == "apply":
    from edge.parts.cards.tokens import TokenStore

    def apply(self, message):  # runs in a worker thread: the daemon's loop goes on
        MARK.write_text(str(message.get("id")))
        threading.Event().wait()

    TokenStore.apply = apply
elif WHERE == "ack":
    import paho.mqtt.client as mqtt

    def ack(self, mid, qos):
        MARK.write_text(str(mid))
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS  # never sent

    mqtt.Client.ack = ack
else:
    raise SystemExit(f"slow_apply.py: WHERE must be apply or ack, not {WHERE!r}")

from edge.cli import main  # noqa: E402

sys.exit(main())
