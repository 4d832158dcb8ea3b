"""OCPP (`python -m bench ocpp`): first the layer alone, what checking and
answering a station's frames costs before the hub is behind it; then the
same through the real daemon with 40 stations (bench/ocpp_daemon.py).

- Validation: a 1.6 MeterValues (four samples, one signed) and a 2.0.1
  TransactionEvent through ``rpc.read_frame`` + ``rpc.check_call`` (frame
  checks and the official schema), per message; baseline ``json.loads`` of the
  same frame (the least any CSMS must do).
- Round trips over real websockets on 127.0.0.1: one station sending
  Authorize, then MeterValues, one after the other, to the layer's listener
  with a handler that answers at once; baseline a bare ``ocpp``-library
  CSMS on the same aiohttp server answering Accepted (the library validates
  too; no frame checks, no vocabulary, no leniencies). p99 and frames/s.
- 40 stations at once, each sending MeterValues as fast as answered: frames
  per second, layer and baseline. Stations and listener share this process,
  so the figures include the client side; the ratio is what the layer adds.
"""

from __future__ import annotations

import asyncio
import json
import time

from aiohttp import web

from bench.common import Result, percentile

COMMAND = "python -m bench ocpp"
T = "2026-03-02T12:00:00Z"
MV16 = {"connectorId": 1, "transactionId": 7, "meterValue": [{"timestamp": T, "sampledValue": [
    {"value": "1234567", "unit": "Wh"}, {"value": "350.5", "measurand": "Power.Active.Import", "unit": "kW"},
    {"value": "55.5", "measurand": "SoC", "unit": "Percent", "location": "EV"},
    {"value": 'OCMF|{"FV":"1.0","RD":[{"TX":"T","RV":1234.567}]}|{"SD":"00"}', "format": "SignedData"}]}]}
TE201 = {"eventType": "Updated", "timestamp": T, "triggerReason": "MeterValuePeriodic", "seqNo": 3,
         "transactionInfo": {"transactionId": "TX-1", "chargingState": "Charging"}, "evse": {"id": 1, "connectorId": 1},
         "meterValue": [{"timestamp": T, "sampledValue": [
             {"value": 1234.567, "unitOfMeasure": {"unit": "kWh"}},
             {"value": 350500, "measurand": "Power.Active.Import", "unitOfMeasure": {"unit": "W"}},
             {"value": 55.5, "measurand": "SoC", "unitOfMeasure": {"unit": "Percent"}}]}]}


def _per_message_us(fn, frame: str, n: int) -> float:
    fn(frame)
    t0 = time.perf_counter()
    for _ in range(n):
        fn(frame)
    return (time.perf_counter() - t0) / n * 1e6


def validation(n: int) -> list[Result]:
    from ocpp.messages import get_validator

    from drivers.ocpp import rpc
    out = []
    for version, action, payload in (("ocpp1.6", "MeterValues", MV16), ("ocpp2.0.1", "TransactionEvent", TE201)):
        frame = json.dumps([2, "m1", action, payload])

        def checked(raw, version=version):
            call = rpc.read_frame(raw, version)
            result = rpc.check_call(version, call)
            assert not isinstance(result, rpc.Refusal), result
        library = get_validator(2, action, version[4:])
        ours = _per_message_us(checked, frame, n)
        base = _per_message_us(json.loads, frame, n)
        bare = _per_message_us(lambda raw, v=library: v.validate(json.loads(raw)[3]), frame, n)
        out.append(Result(f"ocpp {version} {action}: frame checks + official schema", ours, "µs/message",
                          "json.loads of the same frame", base, command=COMMAND))
        out.append(Result(f"ocpp {version} {action}: frame checks + official schema", ours, "µs/message",
                          "json.loads + the library's own schema validation", bare, command=COMMAND))
    return out


# ---------------------------------------------------------------- the baseline CSMS: the bare library
class _LibSocket:
    def __init__(self, ws):
        self.ws = ws

    async def send(self, text):
        await self.ws.send_str(text)

    async def recv(self):
        msg = await self.ws.receive()
        if msg.type.name != "TEXT":
            raise ConnectionError("closed")
        return msg.data


def _bare_library_app() -> web.Application:
    from ocpp.routing import on
    from ocpp.v16 import ChargePoint, call_result

    class Bare(ChargePoint):
        @on("Authorize")
        def authorize(self, id_tag, **kw):
            return call_result.Authorize(id_tag_info={"status": "Accepted"})

        @on("MeterValues")
        def meter_values(self, connector_id, meter_value, **kw):
            return call_result.MeterValues()

        @on("BootNotification")
        def boot(self, **kw):
            return call_result.BootNotification(current_time=T, interval=10, status="Accepted")

        @on("StatusNotification")
        def status(self, **kw):
            return call_result.StatusNotification()

        @on("Heartbeat")
        def heartbeat(self, **kw):
            return call_result.Heartbeat(current_time=T)

    import logging
    quiet = logging.getLogger("bench.ocpp.bare")
    quiet.setLevel(logging.WARNING)

    async def serve(request):
        ws = web.WebSocketResponse(protocols=["ocpp1.6"])
        await ws.prepare(request)
        cp = Bare(request.match_info["cid"], _LibSocket(ws), logger=quiet)
        try:
            await cp.start()
        except ConnectionError:
            pass
        return ws

    app = web.Application()
    app.router.add_get("/ocpp/{cid}", serve)
    return app


class _Answering:
    """A hub that answers at once (the layer's cost, not the hub's)."""

    def __init__(self):
        from drivers.ocpp.events import IdTokenDecision
        self.decision = IdTokenDecision("Accepted")

    def __getattr__(self, name):
        async def nothing(event):
            return None
        return nothing

    async def authorise(self, request):
        return self.decision


async def _serve_layer(stations: int):
    from drivers.ocpp import ListenerSettings, OcppListener, StationConfig
    listener = OcppListener(ListenerSettings(host="127.0.0.1", port=0, ping_interval_s=None),
                            [StationConfig(f"B{i}", "ocpp1.6", security_profile=0) for i in range(stations)],
                            _Answering(), lambda sid, pw: False)
    port = await listener.start()
    return port, listener.stop


async def _serve_bare():
    runner = web.AppRunner(_bare_library_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return site._server.sockets[0].getsockname()[1], runner.cleanup


async def _station(session, port: int, sid: str, action: str, payload: dict, n: int | None,
                   until: float | None, latencies: list[float]) -> int:
    ws = await session.ws_connect(f"http://127.0.0.1:{port}/ocpp/{sid}", protocols=("ocpp1.6",))
    sent = 0
    try:
        while (n is None or sent < n) and (until is None or time.perf_counter() < until):
            t0 = time.perf_counter()
            await ws.send_str(json.dumps([2, f"{sid}-{sent}", action, payload]))
            reply = json.loads((await ws.receive()).data)
            assert reply[0] == 3, reply
            latencies.append(time.perf_counter() - t0)
            sent += 1
    finally:
        await ws.close()
    return sent


async def _round_trips(serve, action: str, payload: dict, n: int) -> list[float]:
    import aiohttp
    port, stop = await serve(1) if serve is _serve_layer else await serve()
    latencies: list[float] = []
    try:
        async with aiohttp.ClientSession() as session:
            await _station(session, port, "B0", action, payload, 50, None, [])  # warm up
            await _station(session, port, "B0", action, payload, n, None, latencies)
    finally:
        await stop()
    return latencies


async def _many(serve, stations: int, seconds: float) -> float:
    import aiohttp
    port, stop = await serve(stations) if serve is _serve_layer else await serve()
    try:
        async with aiohttp.ClientSession() as session:
            until = time.perf_counter() + seconds
            counts = await asyncio.gather(*(_station(session, port, f"B{i}", "MeterValues", MV16, None, until, [])
                                            for i in range(stations)))
    finally:
        await stop()
    return sum(counts) / seconds


async def _wire(quick: bool) -> list[Result]:
    n = 300 if quick else 3000
    out = []
    for action, payload in (("Authorize", {"idTag": "04A1B2C3D4E5F6"}), ("MeterValues", MV16)):
        ours = await _round_trips(_serve_layer, action, payload, n)
        base = await _round_trips(_serve_bare, action, payload, n)
        out.append(Result(f"ocpp 1.6 {action} round trip p99 (one station)", percentile(ours, 99) * 1000, "ms",
                          "bare ocpp-library CSMS, same run", percentile(base, 99) * 1000, command=COMMAND))
        out.append(Result(f"ocpp 1.6 {action} round trips per second (one station)", len(ours) / sum(ours),
                          "frames/s", "bare ocpp-library CSMS, same run", len(base) / sum(base),
                          lower_is_better=False, command=COMMAND))
    seconds = 2.0 if quick else 10.0
    ours = await _many(_serve_layer, 40, seconds)
    base = await _many(_serve_bare, 40, seconds)
    out.append(Result("ocpp 1.6 MeterValues, 40 stations at once", ours, "frames/s",
                      "bare ocpp-library CSMS, same run", base, lower_is_better=False, command=COMMAND))
    return out


def run(quick: bool) -> list[Result]:
    from bench import ocpp_daemon

    results = validation(500 if quick else 5000)
    results += asyncio.run(_wire(quick))
    results += ocpp_daemon.run(quick)  # the same through the real daemon (issue 17 §8)
    return results


if __name__ == "__main__":
    import sys
    for r in run("--quick" in sys.argv):
        print(f"{r.name}: {r.value:.4g} {r.unit} | {r.baseline}: {r.baseline_value:.4g} | ratio {r.ratio:.3g}")
