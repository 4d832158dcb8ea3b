"""OCPP through the real daemon (`python -m bench ocpp`, issue 17 §8).

The daemon (`hubedge run`) is the CSMS of 40 OCPP 1.6J stations on
127.0.0.1, with a real mosquitto as its cloud broker and a token list of a
million own cards (100,000 with --quick). The stations are small websocket
clients in this process: they boot, report their status, send MeterValues
every second and a heartbeat every ten, and answer the hub's calls
(TriggerMessage is answered with the StatusNotification it asks for).

Figures, each with its baseline from the same run:
- the daemon's CPU share of one core with the 40 stations talking; baseline
  a bare `ocpp`-library CSMS (its own process) serving the same 40 stations;
- resident memory the daemon adds per station; baseline the bare CSMS's;
- Authorize round trip p99 against the million-token list while the 40
  stations talk; baseline the bare CSMS answering Accepted to all;
- StatusNotification sent to the retained connector state received from the
  broker, p99; baseline a retained publish to receipt through the same broker;
- a hub restart (SIGKILL, then start) with 40 stations reconnecting: time
  until every station is Accepted again and has sent the status the hub
  asked for; baseline the same daemon's start to answering its control socket.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp

from bench.common import Result, cpu_seconds, percentile, rss_mb

COMMAND = "python -m bench ocpp"
ROOT = Path(__file__).resolve().parent.parent
HUB = "BENCH-OCPP"
PASSWORD = "bench-station-pw-42"
STATIONS = 40


def stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def meter_values(wh: int) -> dict:
    return {"connectorId": 1, "transactionId": 1, "meterValue": [{"timestamp": stamp(), "sampledValue": [
        {"value": str(wh), "unit": "Wh"}, {"value": "350.5", "measurand": "Power.Active.Import", "unit": "kW"},
        {"value": "55", "measurand": "SoC", "unit": "Percent", "location": "EV"}]}]}


class Station:
    """A minimal OCPP 1.6J station: one CALL at a time, answers the hub."""

    def __init__(self, sid: str, url: str, password: str | None):
        self.id, self.url, self.password = sid, url, password
        self.ws = None
        self.pending: dict[str, asyncio.Future] = {}
        self.ids = itertools.count(1)
        self.lock = asyncio.Lock()
        self.triggered = asyncio.Event()
        self.booted = False
        self.reader: asyncio.Task | None = None

    async def connect(self, session: aiohttp.ClientSession) -> None:
        headers = {"Authorization": aiohttp.encode_basic_auth(self.id, self.password)} if self.password else {}
        self.ws = await session.ws_connect(f"{self.url}/{self.id}", protocols=("ocpp1.6",), headers=headers,
                                           heartbeat=None)
        self.reader = asyncio.create_task(self._read())

    @property
    def connected(self) -> bool:
        return self.ws is not None and not self.ws.closed

    async def call(self, action: str, payload: dict, timeout: float = 10.0) -> dict:
        async with self.lock:
            mid = f"{self.id}-{next(self.ids)}"
            fut = asyncio.get_running_loop().create_future()
            self.pending[mid] = fut
            try:
                await self.ws.send_str(json.dumps([2, mid, action, payload]))
                return await asyncio.wait_for(fut, timeout)
            finally:
                self.pending.pop(mid, None)

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                frame = json.loads(msg.data)
                if frame[0] == 2:
                    await self._answer(frame[1], frame[2], frame[3])
                elif frame[1] in self.pending and not self.pending[frame[1]].done():
                    if frame[0] == 3:
                        self.pending[frame[1]].set_result(frame[2])
                    else:
                        self.pending[frame[1]].set_exception(RuntimeError(f"{frame[2]}: {frame[3]}"))
        finally:
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("closed"))

    async def _answer(self, mid: str, action: str, payload: dict) -> None:
        if action == "TriggerMessage":
            await self.ws.send_str(json.dumps([3, mid, {"status": "Accepted"}]))
            if payload.get("requestedMessage") == "StatusNotification":
                asyncio.create_task(self._status_after_trigger())
            return
        if action in ("ChangeConfiguration", "SetChargingProfile", "ChangeAvailability", "ClearChargingProfile"):
            await self.ws.send_str(json.dumps([3, mid, {"status": "Accepted"}]))
            return
        await self.ws.send_str(json.dumps([4, mid, "NotSupported", f"{action} not in this bench station", {}]))

    async def _status_after_trigger(self) -> None:
        try:
            await self.status("Available")
            self.triggered.set()
        except Exception:
            pass

    async def boot(self) -> None:
        answer = await self.call("BootNotification", {"chargePointVendor": "Bench", "chargePointModel": "B-1"})
        self.booted = answer.get("status") == "Accepted"

    async def status(self, status: str) -> None:
        await self.call("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": status})

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.reader is not None:
            await asyncio.gather(self.reader, return_exceptions=True)


class Daemon:
    def __init__(self, tmp: Path, broker_url: str, tokens: int):
        from simulators.broker import free_port

        self.tmp = tmp
        self.port = free_port()
        self.socket = tmp / "control.sock"
        self.config = tmp / "hub.toml"
        self.proc: subprocess.Popen | None = None
        lines = [f"""[hub]
id = "{HUB}"
country = "NL"
vat_rate = "0.21"
[cloud]
broker = "{broker_url}"
client_id = "hubedge-{HUB}"
allow_unsigned = true
[storage]
state_dir = "{tmp / 'state'}"
outbox_quota_mb = 512
[control]
socket = "{self.socket}"
[logging]
level = "warning"
[ocpp]
listen = "127.0.0.1:{self.port}"
heartbeat_interval_s = 10
offline_after_s = 60
meter_interval_s = 1
"""]
        for i in range(STATIONS):
            key = tmp / f"S{i:02d}.key"
            key.write_text(PASSWORD + "\n")
            os.chmod(key, 0o600)
            lines.append(f'[[chargers]]\nid = "S{i:02d}"\nprotocol = "ocpp1.6"\npassword_file = "{key}"\n'
                         f'connectors = [ {{ id = "K{i:02d}", evse = 1 }} ]\n')
        self.config.write_text("\n".join(lines))
        (tmp / "state").mkdir(exist_ok=True)
        self.uids = _load_tokens(tmp / "state" / "tokens.sqlite3", tokens)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ocpp"

    def start(self) -> float:
        t0 = time.perf_counter()
        log = open(self.tmp / "hubedge.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--config", str(self.config)],
                                     stdout=log, stderr=log, cwd=str(ROOT), env=dict(os.environ, PYTHONUNBUFFERED="1"))
        return t0

    async def ready(self, timeout: float = 60) -> float:
        from edge.core.control import request
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited; see {self.tmp / 'hubedge.log'}")
            try:
                resp = await request(self.socket, "status", {}, timeout=2)
                if resp.get("ok") and resp["data"]["ready"] and resp["data"]["cloud"].get("connected"):
                    return time.perf_counter()
            except (OSError, asyncio.TimeoutError):
                pass
            await asyncio.sleep(0.02)
        raise RuntimeError("the daemon was not ready in time")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _load_tokens(path: Path, n: int) -> list[str]:
    from edge.parts.cards.tokens import TokenStore

    rnd = random.Random(17)
    uids = ["%014X" % rnd.getrandbits(56) for _ in range(n)]
    store = TokenStore(path)
    result = store.apply({"version": 1, "kind": "full", "upsert": [
        {"uid": u, "status": "Active", "type": "own", "group": "bench"} for u in uids]})
    store.close()
    if not result.ok:
        raise RuntimeError(f"token list not applied: {result}")
    return uids


def _bare_csms_process() -> tuple[subprocess.Popen, int]:
    from simulators.broker import free_port
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.ocpp_daemon", "--bare", str(port)], cwd=str(ROOT),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, port


async def _wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        try:
            _r, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


async def _talk(stations: list[Station], until: float) -> None:
    """MeterValues every second, a heartbeat every ten, from every station."""
    async def one(st: Station, offset: float) -> None:
        await asyncio.sleep(offset)
        wh, n = 1_000_000, 0
        while time.perf_counter() < until:
            t0 = time.perf_counter()
            wh += 97
            try:
                await st.call("MeterValues", meter_values(wh))
                if n % 10 == 0:
                    await st.call("Heartbeat", {})
            except Exception:
                return
            n += 1
            await asyncio.sleep(max(0.0, 1.0 - (time.perf_counter() - t0)))
    await asyncio.gather(*(one(st, i / len(stations)) for i, st in enumerate(stations)))


async def _authorize_p99(st: Station, uids: list[str], n: int) -> list[float]:
    rnd = random.Random(3)
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        answer = await st.call("Authorize", {"idTag": rnd.choice(uids)[:20]})
        out.append(time.perf_counter() - t0)
        assert answer["idTagInfo"]["status"] == "Accepted", answer
    return out


async def _load_phase(url: str, pid: int, password: str | None, uids: list[str], seconds: float,
                      n_auth: int) -> tuple[float, float, list[float]]:
    """40 stations connect and talk for ``seconds``; returns CPU % of a core
    and RSS added per station (MB) over that time, then Authorize latencies
    measured while 39 of them go on talking."""
    async with aiohttp.ClientSession() as session:
        rss0 = rss_mb(pid)
        stations = [Station(f"S{i:02d}", url, password) for i in range(STATIONS)]
        for st in stations:
            await st.connect(session)
            await st.boot()
            await st.status("Available")
        await asyncio.sleep(2.0)  # the hub's after-connection calls settle
        # The CPU share of the steady load alone: every station sending
        # MeterValues each second and its heartbeats, nothing else.
        cpu0, t0 = cpu_seconds(pid), time.perf_counter()
        await _talk(stations, t0 + seconds)
        cpu = (cpu_seconds(pid) - cpu0) / (time.perf_counter() - t0) * 100
        rss = (rss_mb(pid) - rss0) / STATIONS
        # Then Authorize round trips back to back from one station while the
        # others keep sending meter values.
        authorizer = stations[0]
        talking = asyncio.create_task(_talk(stations[1:], time.perf_counter() + 3600))
        try:
            latencies = await _authorize_p99(authorizer, uids, n_auth)
        finally:
            talking.cancel()
            await asyncio.gather(talking, return_exceptions=True)
        for st in stations:
            await st.close()
    return cpu, rss, latencies


class _StateWatch:
    """Retained connector states from the broker, timestamped on arrival."""

    def __init__(self, broker_url: str, topic: str):
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.got: list[tuple[float, dict]] = []
        self.cond = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-watch-{os.getpid()}")
        self.client.on_message = self._message
        host, port = broker_url.split("//")[1].split(":")
        self.client.connect(host, int(port))
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()

    def _message(self, _c, _u, msg) -> None:
        with self.cond:
            try:
                self.got.append((time.perf_counter(), json.loads(msg.payload)))
            except ValueError:
                self.got.append((time.perf_counter(), {}))
            self.cond.notify_all()

    def wait(self, ok, after: int, timeout: float = 5.0) -> float | None:
        deadline = time.perf_counter() + timeout
        with self.cond:
            while True:
                for at, doc in self.got[after:]:
                    if ok(doc):
                        return at
                left = deadline - time.perf_counter()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


async def _status_to_state(d: Daemon, broker_url: str, n: int) -> list[float]:
    watch = _StateWatch(broker_url, f"hub/{HUB}/state/connector/K39")
    out = []
    try:
        async with aiohttp.ClientSession() as session:
            st = Station("S39", d.url, PASSWORD)
            await st.connect(session)
            await st.boot()
            await asyncio.sleep(1.0)
            for i in range(n):
                status = ("Preparing", "Available")[i % 2]
                mark = len(watch.got)
                t0 = time.perf_counter()
                await st.status(status)
                at = await asyncio.to_thread(watch.wait, lambda doc, s=status: doc.get("status") == s, mark)
                if at is not None:
                    out.append(at - t0)
            await st.close()
    finally:
        watch.stop()
    return out


def _broker_round_trip(broker_url: str, n: int) -> list[float]:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    topic = f"bench/ocpp/{os.getpid()}/state"
    watch = _StateWatch(broker_url, topic)
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{os.getpid()}")
    host, port = broker_url.split("//")[1].split(":")
    pub.connect(host, int(port))
    pub.loop_start()
    out = []
    try:
        time.sleep(0.3)
        for i in range(n):
            mark = len(watch.got)
            t0 = time.perf_counter()
            pub.publish(topic, json.dumps({"i": i}), qos=1, retain=True)
            at = watch.wait(lambda doc, i=i: doc.get("i") == i, mark)
            if at is not None:
                out.append(at - t0)
    finally:
        pub.loop_stop()
        pub.disconnect()
        watch.stop()
    return out


async def _restart(d: Daemon) -> tuple[float, float]:
    """SIGKILL with 40 stations connected; they reconnect (every 0.2 s, as a
    station retries) and boot. Returns (seconds from start to all stations
    Accepted and their status re-read, seconds from start to control socket)."""
    async with aiohttp.ClientSession() as session:
        stations = [Station(f"S{i:02d}", d.url, PASSWORD) for i in range(STATIONS)]
        for st in stations:
            await st.connect(session)
            await st.boot()
        d.kill()
        t0 = d.start()

        async def back(st: Station) -> float:
            st.triggered.clear()
            while True:
                try:
                    await st.connect(session)
                    break
                except (aiohttp.ClientError, OSError):
                    await asyncio.sleep(0.2)
            await st.boot()
            await asyncio.wait_for(st.triggered.wait(), 30)
            assert st.booted
            return time.perf_counter()

        done = asyncio.gather(*(back(st) for st in stations))
        ready_at = await d.ready()
        last = max(await done)
        for st in stations:
            await st.close()
    return last - t0, ready_at - t0


async def _figures(quick: bool) -> list[Result]:
    from simulators.broker import Broker, mosquitto_available

    if not mosquitto_available():
        raise RuntimeError("mosquitto is not installed: the OCPP daemon bench needs it (apt-get install mosquitto)")
    seconds = 8.0 if quick else 30.0
    n_auth = 200 if quick else 2000
    n_state = 50 if quick else 300
    tokens = 100_000 if quick else 1_000_000
    tmp = Path(tempfile.mkdtemp(prefix="bench-ocpp-"))
    broker = Broker(tmp / "broker", persistence=False).start()
    d = Daemon(tmp, broker.url, tokens)
    bare, bare_port = _bare_csms_process()
    out: list[Result] = []
    try:
        d.start()
        await d.ready()
        await asyncio.sleep(1.0)
        cpu, rss, auth = await _load_phase(d.url, d.proc.pid, PASSWORD, d.uids, seconds, n_auth)
        await _wait_port(bare_port)
        bcpu, brss, bauth = await _load_phase(f"ws://127.0.0.1:{bare_port}/ocpp", bare.pid, None, d.uids, seconds,
                                              n_auth)
        tk = f"{tokens // 1000}k" if tokens < 1_000_000 else "1M"
        out.append(Result(f"ocpp daemon CPU, {STATIONS} stations MeterValues 1/s + heartbeats", cpu, "% of a core",
                          "bare ocpp-library CSMS process, same stations", bcpu, goal=10.0, command=COMMAND))
        out.append(Result(f"ocpp daemon RSS added per station ({STATIONS} stations)", rss, "MB",
                          "bare ocpp-library CSMS process", brss, goal=1.0, command=COMMAND))
        out.append(Result(f"ocpp Authorize round trip p99, {tk}-token list, {STATIONS - 1} stations talking",
                          percentile(auth, 99) * 1000, "ms", "bare ocpp-library CSMS answering Accepted",
                          percentile(bauth, 99) * 1000, goal=20.0, command=COMMAND))
        state = await _status_to_state(d, broker.url, n_state)
        base = await asyncio.to_thread(_broker_round_trip, broker.url, n_state)
        if len(state) < n_state:
            raise RuntimeError(f"only {len(state)} of {n_state} status changes reached the retained state")
        out.append(Result("ocpp StatusNotification to retained MQTT connector state p99", percentile(state, 99) * 1000,
                          "ms", "retained publish to receipt through the same broker", percentile(base, 99) * 1000,
                          goal=20.0, command=COMMAND))
        back, ready = await _restart(d)
        out.append(Result(f"ocpp hub restart (SIGKILL): {STATIONS} stations Accepted and status re-read", back, "s",
                          "the same daemon's start to answering its control socket", ready, goal=10.0,
                          command=COMMAND))
    finally:
        d.stop()
        bare.terminate()
        bare.wait(10)
        broker.kill()
    return out


def run(quick: bool) -> list[Result]:
    return asyncio.run(_figures(quick))


def _serve_bare(port: int) -> None:
    from aiohttp import web

    from bench.ocpp import _bare_library_app
    web.run_app(_bare_library_app(), host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--bare"]:
        _serve_bare(int(sys.argv[2]))
    else:
        for r in run("--quick" in sys.argv):
            print(f"{r.name}: {r.value:.4g} {r.unit} | {r.baseline}: {r.baseline_value:.4g} | ratio {r.ratio:.3g}"
                  f"{r.goal_text()}")
