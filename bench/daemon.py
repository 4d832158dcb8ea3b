"""The whole daemon on a 40-connector hub (Foundation benchmarks).

Ten simulated four-connector chargers run in their own processes; the real
daemon (`hubedge run`) polls them at 1 Hz. Measured from outside the daemon:
start to READY (systemd's READY=1 on a notify socket), resident memory, and
the daemon's CPU share of one core while it polls. Baselines in the same run:
a bare Python interpreter started the same way (start time, memory), and the
raw pymodbus polling loop of bench.polling (CPU).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Result, cpu_seconds, rss_mb

ROOT = Path(__file__).resolve().parent.parent
MAP = ROOT / "config" / "register-maps" / "hubcharge-mcs1200.toml"
CMD = "python -m bench daemon"  # add --quick for a 10 s run


def hub_config(path: Path, state: Path, ports: list[int], *, hub_id: str = "BENCH-01", extra: str = "",
               tail: str = "") -> Path:
    """A hub of four-connector chargers at ``ports`` (40 connectors for ten),
    state in ``state``, written to ``path``. Shared by the benchmarks."""
    lines = [f"""[hub]
id = "{hub_id}"
country = "NL"
vat_rate = "0.21"
[storage]
state_dir = "{state}"
outbox_quota_mb = 512
[control]
socket = "{state / 'control.sock'}"
[logging]
level = "warning"
{extra}"""]
    n = 0
    for i, port in enumerate(ports):
        conns = []
        for k in range(1, 5):
            n += 1
            conns.append(f'{{ id = "C{n:02d}", index = {k} }}')
        lines.append(f"""[[chargers]]
id = "CH{i + 1:02d}"
address = "127.0.0.1:{port}"
register_map = "{MAP}"
connectors = [ {", ".join(conns)} ]
""")
    path.write_text("\n".join(lines) + "\n" + tail)
    return path


def _ready_time(cmd: list[str], tmp: Path) -> tuple[float, subprocess.Popen]:
    sock_path = tmp / f"notify-{time.monotonic_ns()}.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(30)
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "NOTIFY_SOCKET": str(sock_path)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            msg = sock.recv(4096).decode()
            if msg.startswith("READY=1"):
                return time.monotonic() - t0, proc
    finally:
        sock.close()


def run(quick: bool) -> list[Result]:
    from bench.polling import _start_simulator_process

    seconds = 10 if quick else 60
    sims, ports = [], []
    for _ in range(2):
        proc, more = _start_simulator_process(5)
        sims.append(proc)
        ports += more
    daemon = None
    try:
        with tempfile.TemporaryDirectory(prefix="hubedge-bench-") as d:
            tmp = Path(d)
            cfg = hub_config(tmp / "hub.toml", tmp / "state", ports)
            # Baseline: a bare interpreter that says READY as soon as it runs.
            bare = [sys.executable, "-c", "import os,socket;s=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM);"
                    "s.connect(os.environ['NOTIFY_SOCKET']);s.send(b'READY=1');import time;time.sleep(3)"]
            bare_t, bare_proc = _ready_time(bare, tmp)
            bare_rss = rss_mb(bare_proc.pid)
            bare_proc.kill()
            bare_proc.wait()
            ready_t, daemon = _ready_time([sys.executable, "-m", "edge.cli", "run", "--config", str(cfg)], tmp)
            time.sleep(2)  # let start-up work settle before measuring steady state
            c0, t0 = cpu_seconds(daemon.pid), time.monotonic()
            time.sleep(seconds)
            cpu = (cpu_seconds(daemon.pid) - c0) / (time.monotonic() - t0) * 100
            rss = rss_mb(daemon.pid)
            daemon.terminate()
            daemon.wait(15)
    finally:
        if daemon and daemon.poll() is None:
            daemon.kill()
        for p in sims:
            p.kill()
            p.wait()
    raw_cpu = _raw_poll_cpu(ports_needed=10, seconds=seconds)
    return [
        Result("daemon.start_to_ready_40_connectors", ready_t, "s", "bare python start to READY=1", bare_t, goal=1.5, command=CMD),
        Result("daemon.resident_memory_40_connectors", rss, "MB", "bare python interpreter", bare_rss, goal=60, command=CMD),
        Result("daemon.cpu_share_40_connectors_1hz", cpu, "% of one core", "bare pymodbus reads of the same 40 connectors (bench.polling)", raw_cpu, goal=3, command=CMD),
    ]


def _raw_poll_cpu(ports_needed: int, seconds: float) -> float:
    """CPU share of a bare pymodbus loop reading the same registers (from bench.polling)."""
    from bench import polling

    for r in polling.run(quick=seconds <= 10):
        if "cpu_share" in r.name:
            return r.baseline_value
    return float("nan")
