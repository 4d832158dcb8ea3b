"""systemd unit (R-D1): verifies, is Type=notify with a watchdog and hardened,
restarts for ever with a growing delay, waits for NTP (within limits)."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

SYSTEMD = Path(__file__).resolve().parents[2] / "systemd"
UNIT = SYSTEMD / "hubedge.service"
# Keys newer than the oldest systemd the hub runs on: older ones warn and ignore them.
NEWER_KEYS = {"RestartSteps": 254, "RestartMaxDelaySec": 254}


def unit_entries(path: Path) -> dict[tuple[str, str], list[str]]:
    """(section, key) -> every value assigned, in order (a unit may assign a key many times)."""
    entries: dict[tuple[str, str], list[str]] = {}
    section = ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.setdefault((section, key.strip()), []).append(value.strip())
    return entries


def seconds(value: str) -> float:
    """A systemd time span: 5, 5s, 300ms, 5min, 1h 30min."""
    units = {"": 1, "s": 1, "sec": 1, "ms": 0.001, "m": 60, "min": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value))


def test_unit_restarts_for_ever_with_a_growing_delay_R_D1():
    """Restart=on-failure left a clean signal exit (a SIGHUP without a
    handler) down for good, and StartLimitBurst ended a crash loop in a
    permanent failed state. Now: always restarted, never given up on, the
    delay growing to minutes where systemd can."""
    unit = unit_entries(UNIT)
    assert unit[("Service", "Restart")] == ["always"]
    assert seconds(unit[("Unit", "StartLimitIntervalSec")][-1]) == 0  # no start limit: never "failed" for good
    assert ("Unit", "StartLimitBurst") not in unit and ("Service", "StartLimitBurst") not in unit
    assert ("Service", "StartLimitAction") not in unit and ("Service", "RestartPreventExitStatus") not in unit
    first, most = seconds(unit[("Service", "RestartSec")][-1]), seconds(unit[("Service", "RestartMaxDelaySec")][-1])
    assert 1 <= first < most <= 600, (first, most)
    assert int(unit[("Service", "RestartSteps")][-1]) >= 3
    assert unit[("Service", "ExecReload")] == ["/bin/kill -HUP $MAINPID"]  # handled by the daemon (edge/core/reload.py)


def test_unit_waits_for_ntp_but_not_for_ever_R_D1():
    unit = unit_entries(UNIT)
    wait = "systemd-time-wait-sync.service"
    assert wait in unit[("Unit", "Wants")][-1].split() and wait in unit[("Unit", "After")][-1].split()
    dropin = unit_entries(SYSTEMD / f"{wait}.d" / "hubedge.conf")
    assert 0 < seconds(dropin[("Service", "TimeoutStartSec")][-1]) <= 300  # the wait unit's own is infinity


def test_unit_runtime_directory_is_closed_to_others_R_T1():
    """/run/hubedge: the daemon gives it to the technicians' group itself
    (edge/core/control.py); the mode must leave everyone else out."""
    unit = unit_entries(UNIT)
    assert unit[("Service", "RuntimeDirectory")] == ["hubedge"]
    assert unit[("Service", "RuntimeDirectoryMode")] == ["0750"]
    assert "hubtech" in unit[("Service", "SupplementaryGroups")][-1].split()  # may chgrp to it


def systemd_version() -> int:
    out = subprocess.run(["systemctl", "--version"], capture_output=True, text=True).stdout
    found = re.match(r"systemd (\d+)", out)
    return int(found.group(1)) if found else 0


def test_unit_declares_notify_watchdog_and_hardening():
    text = UNIT.read_text()
    for line in ["Type=notify", "WatchdogSec=", "Restart=always", "User=hubedge", "NoNewPrivileges=yes",
                 "ProtectSystem=strict", "PrivateTmp=yes", "StateDirectory=hubedge", "ConfigurationDirectory=hubedge"]:
        assert line in text, line


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_passes(tmp_path):
    # verify checks that ExecStart exists: point it at a binary that does.
    unit = tmp_path / "hubedge.service"
    unit.write_text(UNIT.read_text().replace("/opt/hubedge/venv/bin/hubedge", shutil.which("true")))
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    version = systemd_version() if shutil.which("systemctl") else 0
    unknown = set(re.findall(r"Unknown key (?:name )?'(\w+)'", proc.stderr))
    assert unknown <= {k for k, since in NEWER_KEYS.items() if version < since}, proc.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_exposure_is_low(tmp_path):
    unit = tmp_path / "hubedge.service"
    unit.write_text(UNIT.read_text().replace("/opt/hubedge/venv/bin/hubedge", shutil.which("true")))
    proc = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)], capture_output=True, text=True)
    line = [x for x in proc.stdout.splitlines() if "Overall exposure level" in x]
    assert line, proc.stdout + proc.stderr
    level = float(line[0].split(":")[1].split()[0])
    assert level <= 2.5, line[0]
