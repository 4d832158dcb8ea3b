"""R-T1: only the technicians' group may use the control socket.

A real daemon with its socket 0660 root:<group>; `hubctl` run as other Unix
users through setpriv: `nobody` (outside the group) is refused with a clear
message and a non-zero exit - by the file mode, and by the daemon's own
SO_PEERCRED check when the mode has been loosened by mistake - and changes
nothing; a member of the group is let in and its actions are audited under
its name. Needs root (to switch users and to create a throw-away group and
user, removed afterwards).
"""

from __future__ import annotations

import asyncio
import grp
import json
import os
import pwd
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from drivers.register_map import load_register_map
from edge.core.control import request
from simulators.charger import ChargerSimulator

pytestmark = pytest.mark.hil

ROOT = Path(__file__).resolve().parents[2]
MAP = ROOT / "config" / "register-maps" / "voltflow-ccs400.toml"
OUTSIDER = "nobody"


def _tools_missing() -> str | None:
    if os.geteuid() != 0:
        return ("needs root: it runs hubctl as other users (setpriv) and creates a throw-away group and user; "
                "run the suite as root, as CI does, to cover R-T1's group check")
    for tool in ("setpriv", "groupadd", "groupdel", "useradd", "userdel"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (util-linux / passwd): install it to cover R-T1's group check"
    try:
        pwd.getpwnam(OUTSIDER)
    except KeyError:
        return f"there is no user {OUTSIDER!r} on this machine to play the outsider"
    return None


def _as_user(user: str, group: str, *, init_groups: bool) -> list[str]:
    groups = ["--init-groups"] if init_groups else ["--clear-groups"]
    return ["setpriv", f"--reuid={user}", f"--regid={group}", *groups, "--"]


def _interpreter_for(user: str, group: str) -> str | None:
    """A Python 3.11+ the unprivileged user may execute and that imports
    hubctl from this checkout (a venv under a private home is out of reach)."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    for candidate in dict.fromkeys([sys.executable, sys._base_executable, "/usr/bin/python3"]):
        probe = subprocess.run(
            [*_as_user(user, group, init_groups=False), candidate, "-c",
             "import sys; assert sys.version_info >= (3, 11); import edge.hubctl"],
            cwd=str(ROOT), env=env, capture_output=True, timeout=30)
        if probe.returncode == 0:
            return candidate
    return None


@pytest.fixture
def technicians():
    """A throw-away technicians' group and a member user; removed afterwards."""
    why = _tools_missing()
    if why:
        pytest.skip(why)
    tag = uuid.uuid4().hex[:6]
    group, member = f"hubtech-t{tag}", f"hubtech-u{tag}"
    subprocess.run(["groupadd", "--system", group], check=True, capture_output=True)
    try:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        "--gid", grp.getgrgid(pwd.getpwnam(OUTSIDER).pw_gid).gr_name, "--groups", group, member],
                       check=True, capture_output=True)
        try:
            yield group, member
        finally:
            subprocess.run(["userdel", member], capture_output=True)
    finally:
        subprocess.run(["groupdel", group], capture_output=True)


@pytest.fixture
def socket_dir():
    # The test's tmp_path sits in root's private pytest directory; the users
    # need to reach the socket, as they would reach /run/hubedge.
    d = Path(tempfile.mkdtemp(prefix="hubedge-ctl-"))
    d.chmod(0o711)
    yield d
    shutil.rmtree(d, ignore_errors=True)


class ControlledHub:
    """A daemon whose control socket belongs to a throw-away technicians'
    group, and hubctl run as other users against it."""

    def __init__(self, tmp: Path, sock: Path, group: str, member: str, python: str, sim: ChargerSimulator | None,
                 *, run_as: list[str] = (), env: dict[str, str] | None = None):
        """``run_as``: a command the daemon runs under (setpriv to another
        user); ``env``: the daemon's environment on top of this one's."""
        self.sock, self.group, self.member, self.python = sock, group, member, python
        self.outsider_group = grp.getgrgid(pwd.getpwnam(OUTSIDER).pw_gid).gr_name
        self.state = tmp / "state"
        self.log = tmp / "hubedge.log"
        self.config = tmp / "hub.toml"
        self.config.write_text(f"""
[hub]
id = "CTL-01"
country = "NL"
vat_rate = "0.21"
[storage]
state_dir = "{self.state}"
[control]
socket = "{sock}"
group = "{group}"
[charging]
poll_interval_s = 0.2
""" + (f"""[[chargers]]
id = "CH1"
address = "127.0.0.1:{sim.port}"
register_map = "{MAP}"
connectors = [ {{ id = "C1", index = 1 }} ]
""" if sim else ""))
        environ = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        with open(self.log, "ab") as f:
            self.proc = subprocess.Popen([*run_as, python if run_as else sys.executable, "-m", "edge.cli", "run",
                                          "--config", str(self.config)], stdout=f, stderr=f, cwd=str(ROOT),
                                         env={**environ, "PYTHONUNBUFFERED": "1", **(env or {})})

    async def wait_ready(self) -> None:
        deadline = time.monotonic() + 20
        while True:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                if (await request(self.sock, "status", {}, timeout=5))["data"]["ready"]:
                    return
            except (OSError, KeyError, asyncio.TimeoutError):
                pass
            assert time.monotonic() < deadline, f"daemon not ready: {self.log.read_text()[-3000:]}"
            await asyncio.sleep(0.1)

    async def hubctl(self, user: str, *args: str) -> subprocess.CompletedProcess:
        """hubctl as ``user``: the outsider with no supplementary groups, or
        the member with the groups /etc/group gives it (as at a login)."""
        member = user == self.member
        cmd = [*_as_user(user, self.outsider_group, init_groups=member), self.python, "-m", "edge.hubctl",
               "--socket", str(self.sock), *args]
        return await asyncio.to_thread(
            subprocess.run, cmd, capture_output=True, text=True, cwd=str(ROOT), timeout=30,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1", "NO_COLOR": "1"})

    def audits(self) -> list[dict]:
        db = sqlite3.connect(f"file:{self.state / 'hub.sqlite3'}?mode=ro", uri=True)
        try:
            bodies = [json.loads(r[0]) for r in db.execute("SELECT body FROM outbox WHERE stream = 'audit' ORDER BY pos")]
        finally:
            db.close()
        return [b["data"] for b in bodies]

    async def c1(self) -> str:
        resp = await request(self.sock, "status", {}, timeout=10)
        return next(c["status"] for c in resp["data"]["connectors"] if c["connector"] == "C1")

    async def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(self.proc.wait, 15)


@pytest.fixture
async def controlled(tmp_path, technicians, socket_dir):
    group, member = technicians
    python = _interpreter_for(OUTSIDER, grp.getgrgid(pwd.getpwnam(OUTSIDER).pw_gid).gr_name)
    if python is None:
        pytest.skip(f"no Python 3.11+ that user {OUTSIDER} may execute imports edge.hubctl from this checkout "
                    "(is the repository or its venv under a private directory?)")
    sim = ChargerSimulator(load_register_map(MAP), 1, time_scale=20)
    await sim.start()
    hub = ControlledHub(tmp_path, socket_dir / "control.sock", group, member, python, sim)
    try:
        await hub.wait_ready()
        yield hub
    finally:
        await hub.stop()
        await sim.stop()


async def test_fleet_control_socket_keeps_outsiders_out_and_lets_technicians_in_R_T1(controlled):
    hub = controlled
    st = os.stat(hub.sock)
    assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == grp.getgrnam(hub.group).gr_gid, oct(st.st_mode)

    # Outside the group: the socket's mode keeps the user out, hubctl says
    # what to do about it.
    for args in (("status",), ("connector", "unavailable", "C1", "--reason", "not mine to do")):
        out = await hubctl_checked(hub, OUTSIDER, *args)
        assert out.returncode == 5 and out.stdout == "", out
        assert "not allowed to open" in out.stderr and "technicians' group" in out.stderr, out.stderr
    assert await hub.c1() == "Available" and hub.audits() == []

    # A member of the group (by /etc/group, as `usermod -aG` makes one): let
    # in, and audited under its own name.
    out = await hub.hubctl(hub.member, "--json", "status")
    assert out.returncode == 0, out
    assert json.loads(out.stdout)["hub"] == "CTL-01"
    out = await hub.hubctl(hub.member, "connector", "unavailable", "C1", "--reason", "cable check")
    assert out.returncode == 0, out
    assert await hub.c1() == "Unavailable"
    assert [(a["user"], a["action"], a["reason"]) for a in hub.audits()] == [(hub.member, "connector.unavailable", "cable check")]


async def hubctl_checked(hub: ControlledHub, user: str, *args: str) -> subprocess.CompletedProcess:
    out = await hub.hubctl(user, *args)
    assert "Traceback" not in out.stderr, out.stderr
    return out


async def test_fleet_control_daemon_refuses_outsiders_even_when_the_socket_mode_is_loose_R_T1(controlled):
    """Defence in depth: with the socket's mode loosened by mistake, the
    daemon's own SO_PEERCRED check refuses, and the attempt changes nothing."""
    hub = controlled
    os.chmod(hub.sock, 0o666)
    unclear = []
    for args in (("connector", "unavailable", "C1", "--reason", "not mine to do"), ("--json", "status"), ("status",)):
        out = await hubctl_checked(hub, OUTSIDER, *args)
        assert out.returncode == 5, out
        if "did not answer" in out.stderr:
            unclear.append(out.stderr.strip())
        elif args[0] == "--json":
            assert json.loads(out.stdout)["code"] == "forbidden", out
        else:
            assert f"user {OUTSIDER} is not in the {hub.group} group" in out.stderr, out.stderr
            assert f"usermod -aG {hub.group} {OUTSIDER}" in out.stderr, out.stderr
    assert await hub.c1() == "Available"
    # The refusal itself is audited, once however often it is tried (R-T1).
    assert [(a["user"], a["action"], a["result"].split(":")[0]) for a in hub.audits()] == [(OUTSIDER, "control.connect", "refused")]
    assert f"control.refused user={OUTSIDER}" in hub.log.read_text()
    assert not unclear, unclear  # the refusal reaches the user every time


# ------------------------------------------------- the deployed layout (R-T1)
@pytest.fixture
def daemon_user(technicians):
    """A throw-away user playing `hubedge`: its own primary group, and the
    technicians' group as a supplementary one (the unit's SupplementaryGroups)."""
    group, _ = technicians
    name = f"hubedge-d{uuid.uuid4().hex[:6]}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group", name],
                   check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], capture_output=True)
        subprocess.run(["groupdel", name], capture_output=True)


async def test_fleet_technicians_reach_the_socket_in_the_runtime_directory_systemd_makes_R_T1(
        technicians, daemon_user, socket_dir):
    """As deployed: the daemon runs as its own user, and systemd makes its
    runtime directory (RuntimeDirectory=hubedge, RuntimeDirectoryMode=0750)
    owned by that user and *its* group. The socket inside was 0660 to the
    technicians' group, but the directory kept them out ("permission
    denied"): the daemon now gives the directory to the technicians' group,
    and still to nobody else."""
    group, member = technicians
    user = daemon_user
    python = sys.executable
    probe = subprocess.run(["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", python, "-c",
                            "import edge.core.daemon, paho.mqtt.client"], cwd=str(ROOT), capture_output=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"user {user} cannot run this checkout's Python ({python}): {probe.stderr.decode()[-300:]}")
    home = socket_dir / "home"  # the hub's user's own: configuration, state, log
    run = socket_dir / "run-hubedge"  # what systemd creates before ExecStart
    for d in (home, run):
        d.mkdir()
        os.chown(d, pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid)
        d.chmod(0o750)
    hub = ControlledHub(home, run / "control.sock", group, member, python, None,
                        run_as=["setpriv", f"--reuid={user}", f"--regid={user}", f"--groups={group}"],
                        env={"RUNTIME_DIRECTORY": str(run)})
    try:
        await hub.wait_ready()
        st = os.stat(run)
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o750, grp.getgrnam(group).gr_gid), (oct(st.st_mode), st.st_gid)
        out = await hubctl_checked(hub, member, "--json", "status")
        assert out.returncode == 0, out
        assert json.loads(out.stdout)["hub"] == "CTL-01"
        out = await hubctl_checked(hub, OUTSIDER, "status")
        assert out.returncode == 5 and "not allowed to open" in out.stderr, out
    finally:
        await hub.stop()
