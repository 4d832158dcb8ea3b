"""The hardware-in-the-loop rig: which device of each class the tests talk to
(R-H2).

By default every device is a simulator started by the fixtures on loopback,
ptys and free ports. A rig file (TOML, `pytest --rig FILE` or
`HUBEDGE_RIG=FILE`) names real devices instead, per class:

    [charger]                    # a charger (or a Modbus charger emulator)
    address = "192.0.2.10:502"
    unit = 1
    register_map = "config/register-maps/hubcharge-mcs1200.toml"

    [terminal]                   # a ZVT terminal in test mode
    port = "/dev/ttyUSB0"        # or "tcp://192.0.2.20:20007"
    password = "000000"

    [reader]                     # an nfcpy reader
    path = "usb:054c:06c1"

    [barrier]                    # a barrier's Modbus I/O module
    address = "192.0.2.30:502"
    unit = 1

    [camera]                     # where the real camera posts its events
    listen = "0.0.0.0:8081"
    vendor = "hikvision"
    secret = "..."

    [station]                    # an OCPP charging station pointed at the rig's hub
    id = "CS-RIG1"               # its charge point identity, the last part of its CSMS URL
    protocol = "ocpp1.6"         # or "ocpp2.0.1"
    listen = "0.0.0.0:9000"      # the station's CSMS URL is ws://RIG:9000/ocpp/CS-RIG1
    password_file = "station.key"  # its HTTP Basic password, mode 0600
    connectors = 2               # its EVSEs (default 1)
    connect_within_s = 300       # how long to wait for it to (re)connect

Tests that need a simulator's fault injection (silence, garbage, declines on
demand, a truck to plug) are marked `sim_only`; on a rig whose device of that
class is real they are skipped with the reason shown. Markers per device
class (`charger`, `terminal`, `reader`, `gate`, `cloud`, `station`) select a subset:
`pytest hil_tests -m terminal --rig rig.toml`. Tests marked `on_real_device`
need no simulator's side and run against the real device, e.g.
`pytest hil_tests -m station --rig rig.toml` for a real OCPP station.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

CLASSES = ("charger", "terminal", "reader", "barrier", "camera", "station")


class RigError(Exception):
    pass


@dataclass
class Rig:
    source: str | None = None
    devices: dict[str, dict] = field(default_factory=dict)

    def is_real(self, device_class: str) -> bool:
        return device_class in self.devices

    def device(self, device_class: str) -> dict:
        return self.devices[device_class]

    def describe(self) -> str:
        if not self.devices:
            return "rig: simulators for every device class"
        real = ", ".join(f"{k}={_short(v)}" for k, v in sorted(self.devices.items()))
        return f"rig {self.source}: real {real}; simulators for the rest"


def _short(d: dict) -> str:
    return str(d.get("address") or d.get("port") or d.get("path") or d.get("listen") or "?")


REQUIRED = {
    "charger": ("address", "register_map"),
    "terminal": ("port",),
    "reader": ("path",),
    "barrier": ("address",),
    "camera": ("listen", "vendor"),
    "station": ("id", "protocol", "listen", "password_file"),
}


def load_rig(path: str | os.PathLike | None) -> Rig:
    if not path:
        return Rig()
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except OSError as exc:
        raise RigError(f"cannot read rig file {p}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise RigError(f"rig file {p} is not valid TOML: {exc}") from None
    problems = []
    for key, value in data.items():
        if key not in CLASSES:
            problems.append(f"{key}: unknown device class (expected one of {', '.join(CLASSES)})")
            continue
        if not isinstance(value, dict):
            problems.append(f"{key}: expected a table such as [{key}]")
            continue
        for req in REQUIRED[key]:
            if req not in value:
                problems.append(f"{key}.{req}: required for a real {key}")
    if problems:
        raise RigError(f"rig file {p}: " + "; ".join(problems))
    return Rig(str(p), data)
