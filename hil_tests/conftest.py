"""Shared set-up for the hardware-in-the-loop tests (R-H1, R-H2)."""

import logging
import os

import pytest

from hil_tests.rig import RigError, load_rig

# pymodbus logs every request it could not send, with a hex dump, as an
# error; the drivers report the same thing once as a device fault.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

DEVICE_MARKERS = {"charger": "charger", "terminal": "terminal", "reader": "reader", "gate": "barrier",
                  "station": "station"}


def pytest_addoption(parser):
    parser.addoption("--rig", default=os.environ.get("HUBEDGE_RIG"), metavar="FILE",
                     help="rig file naming real devices (see hil_tests/rig.py); default: simulators only")


def pytest_configure(config):
    try:
        config._hubedge_rig = load_rig(config.getoption("--rig"))
    except RigError as exc:
        raise pytest.UsageError(str(exc))


def pytest_report_header(config):
    return config._hubedge_rig.describe()


# The device class each folder's tests talk to, and whether they drive the
# simulator's side (a truck to plug, a card to tap, a fault to inject); a
# test marked on_real_device does not, and runs against a rig's real device.
FOLDERS = {
    "charger": ("charger", True), "hub": ("charger", True), "demo": ("charger", True),
    "zvt": ("terminal", True), "payments": ("terminal", True),
    "auth": ("reader", True), "cards": ("reader", True),
    "gate_devices": ("gate", True), "site": ("gate", True),
    "sync": ("cloud", False), "fleet": ("cloud", False),
    "scenarios": ("charger", True), "ocpp": ("station", True),
}


def pytest_collection_modifyitems(config, items):
    rig = config._hubedge_rig
    for item in items:
        parts = item.path.parts
        folder = parts[parts.index("hil_tests") + 1] if "hil_tests" in parts and parts.index("hil_tests") + 2 < len(parts) else None
        if folder in FOLDERS:
            device_class, drives_simulator = FOLDERS[folder]
            item.add_marker(getattr(pytest.mark, device_class))
            if drives_simulator and item.get_closest_marker("sim_only") is None \
                    and item.get_closest_marker("on_real_device") is None:
                item.add_marker(pytest.mark.sim_only(reason="drives the simulator's side of the device", devices=[device_class]))
    if not rig.devices:
        return
    for item in items:
        marker = item.get_closest_marker("sim_only")
        if marker is None:
            continue
        needs = marker.kwargs.get("devices") or [m for m, cls in DEVICE_MARKERS.items() if item.get_closest_marker(m)]
        real = [d for d in needs if rig.is_real(DEVICE_MARKERS.get(d, d))]
        if real or not needs:
            why = marker.kwargs.get("reason") or "needs a simulator's fault injection"
            item.add_marker(pytest.mark.skip(reason=f"real {', '.join(real) or 'device'} on this rig: {why}"))


@pytest.fixture(scope="session")
def rig(pytestconfig):
    return pytestconfig._hubedge_rig
