"""Calls to a station: one at a time, power limits first, a waiting limit
replaced by a newer one, a timeout on every call (R-E2, R-E4), and a typed
outcome whatever happens."""

import asyncio

from drivers.ocpp.calls import CallQueue
from drivers.ocpp.events import CallOutcome


class FakeStation:
    def __init__(self, delay=0.0, hang=()):
        self.sent: list[tuple[str, object]] = []
        self.delay, self.hang = delay, set(hang)
        self.in_flight = 0
        self.most_in_flight = 0

    async def send(self, action, payload):
        self.sent.append((action, payload))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if action in self.hang:
                await asyncio.sleep(3600)
            await asyncio.sleep(self.delay)
            if action == "Boom":
                raise RuntimeError("socket gone")
            return CallOutcome("Accepted", action, f"CS-1 accepted {action}", "Accepted")
        finally:
            self.in_flight -= 1


async def test_r_e2_power_limits_go_first_and_one_call_at_a_time():
    station = FakeStation(delay=0.01)
    queue = CallQueue("CS-1", station.send)
    futures = [queue.submit("TriggerMessage", 1, "trigger"), queue.submit("ChangeConfiguration", 2, "config"),
               queue.submit("RemoteStartTransaction", 3, "control"), queue.submit("SetChargingProfile", 4, "power")]
    worker = asyncio.create_task(queue.run())
    outcomes = await asyncio.gather(*futures)
    worker.cancel()
    assert [a for a, _ in station.sent] == ["SetChargingProfile", "RemoteStartTransaction", "TriggerMessage",
                                            "ChangeConfiguration"]
    assert station.most_in_flight == 1
    assert all(o.kind == "Accepted" for o in outcomes)


async def test_r_e2_a_waiting_limit_is_replaced_by_a_newer_one_for_the_same_evse():
    station = FakeStation(delay=0.01)
    queue = CallQueue("CS-1", station.send)
    first = queue.submit("SetChargingProfile", "100 kW", "power", coalesce=("limit", "tx_default", 1))
    other = queue.submit("SetChargingProfile", "evse 2", "power", coalesce=("limit", "tx_default", 2))
    second = queue.submit("SetChargingProfile", "60 kW", "power", coalesce=("limit", "tx_default", 1))
    assert len(queue) == 2
    worker = asyncio.create_task(queue.run())
    a, b, c = await asyncio.gather(first, other, second)
    worker.cancel()
    assert station.sent == [("SetChargingProfile", "60 kW"), ("SetChargingProfile", "evse 2")]
    assert a.superseded and "newer limit" in a.message and not c.superseded and not b.superseded
    assert a.kind == c.kind == "Accepted"


async def test_r_e4_every_call_has_a_timeout_and_the_queue_goes_on():
    station = FakeStation(hang={"TriggerMessage"})
    queue = CallQueue("CS-1", station.send)
    worker = asyncio.create_task(queue.run())
    slow = queue.submit("TriggerMessage", None, "trigger", timeout_s=0.05)
    after = queue.submit("SetChargingProfile", None, "power", timeout_s=0.5)
    timed_out, ok = await asyncio.gather(slow, after)
    worker.cancel()
    assert timed_out.kind == "Timeout" and "did not answer TriggerMessage within 0.05 s" in timed_out.message
    assert ok.kind == "Accepted"


async def test_a_failing_send_is_an_error_outcome_not_an_exception():
    station = FakeStation()
    queue = CallQueue("CS-1", station.send)
    worker = asyncio.create_task(queue.run())
    out = await queue.submit("Boom", None, "control")
    worker.cancel()
    assert out.kind == "Error" and "socket gone" in out.message


async def test_closing_resolves_what_waits_and_refuses_what_comes():
    station = FakeStation(hang={"RemoteStartTransaction"})
    queue = CallQueue("CS-1", station.send)
    worker = asyncio.create_task(queue.run())
    in_flight = queue.submit("RemoteStartTransaction", None, "control")
    waiting = queue.submit("UnlockConnector", None, "control")
    await asyncio.sleep(0.02)
    worker.cancel()
    a, b = await asyncio.gather(in_flight, waiting)
    assert a.kind == "Error" and "interrupted" in a.message
    assert b.kind == "Error" and "not sent" in b.message
    late = await queue.submit("UnlockConnector", None, "control")
    assert late.kind == "Error" and "not sent" in late.message
