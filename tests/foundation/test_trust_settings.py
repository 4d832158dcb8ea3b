"""The settings behind downlink trust and the hub's clock: the TLS private
key is checked like the command key (R-M5), allow_unsigned is explicit, the
clock says whether it has synchronised (and `hubctl status` shows it), a
reload names what needs a restart, and the control socket's directory is
given to the technicians' group when it is the daemon's own (R-T1)."""

from __future__ import annotations

import grp
import os
import stat
from pathlib import Path

import pytest

import units as clock_module
from units import Clock, FakeClock
from edge.core.config import ConfigError, parse_config
from edge.core.control import ControlServer
from edge.hubctl_render import Style, render_status
from edge.core.reload import needs_restart

HUB = {"id": "H1", "country": "NL", "vat_rate": "0.21"}


def tls_files(tmp_path: Path, key_mode: int) -> dict:
    for name in ("ca.crt", "hub.crt", "hub.key"):
        (tmp_path / name).write_text("-----BEGIN-----\n")
    os.chmod(tmp_path / "hub.key", key_mode)
    return {"broker": "mqtts://broker.example:8883", "ca_file": "ca.crt", "cert_file": "hub.crt", "key_file": "hub.key"}


@pytest.mark.parametrize("mode", [0o640, 0o644, 0o604, 0o660])
def test_a_tls_key_others_may_read_is_refused_like_the_command_key_R_M5(tmp_path, mode):
    with pytest.raises(ConfigError) as exc:
        parse_config({"hub": HUB, "cloud": tls_files(tmp_path, mode)}, tmp_path / "hub.toml")
    problem = next(p for p in exc.value.problems if p.startswith("cloud.key_file:"))
    assert f"{mode:04o}" in problem and f"chmod 600 {tmp_path / 'hub.key'}" in problem


def test_a_tls_key_for_its_owner_only_is_accepted(tmp_path):
    cfg = parse_config({"hub": HUB, "cloud": tls_files(tmp_path, 0o600)}, tmp_path / "hub.toml")
    assert cfg.cloud.key_file == "hub.key"


def test_allow_unsigned_is_off_by_default_and_excludes_a_key_file(tmp_path):
    cfg = parse_config({"hub": HUB}, tmp_path / "hub.toml")
    assert cfg.cloud.allow_unsigned is False and cfg.cloud.command_max_age_s == 3600 and cfg.cloud.clock_skew_s == 300
    (tmp_path / "k").write_text(bytes(32).hex() + "\n")
    os.chmod(tmp_path / "k", 0o600)
    with pytest.raises(ConfigError) as exc:
        parse_config({"hub": HUB, "cloud": {"command_key_file": "k", "allow_unsigned": True}}, tmp_path / "hub.toml")
    assert any(p.startswith("cloud.allow_unsigned:") for p in exc.value.problems)


# ------------------------------------------------------------------ clock
def test_clock_synced_by_timesyncd_flag_rtc_or_kernel(tmp_path, monkeypatch):
    monkeypatch.setattr(clock_module, "TIMESYNC_FLAG", tmp_path / "synchronized")
    kernel = clock_module.kernel_clock_synced()
    assert kernel in (None, "kernel")  # whatever this machine's kernel says, read without privilege
    (tmp_path / "synchronized").touch()
    assert Clock().sync_source == "timesyncd" and Clock().synced
    assert Clock(rtc=True).sync_source == "rtc"


def test_clock_once_synced_stays_synced(monkeypatch):
    answers = iter([None, "kernel", None])
    monkeypatch.setattr(clock_module, "kernel_clock_synced", lambda: next(answers))
    c = Clock()
    assert c.synced is False
    assert c.synced is True and c.synced is True  # asked once more at most


def test_hubctl_status_says_whether_the_clock_synchronised():
    base = {"hub": "H1", "version": "x", "ts": "2026-01-01T00:00:00.000Z", "connectors": [], "cloud": {}, "outbox": {}}
    unsynced = render_status({**base, "clock": FakeClock(synced=False).view()}, Style(False))
    assert "clock: not synchronised" in unsynced and "timedatectl" in unsynced
    synced = render_status({**base, "clock": Clock(rtc=True).view()}, Style(False))
    assert "clock: synchronised (rtc)" in synced


# ----------------------------------------------------------------- reload
def test_reload_names_what_needs_a_restart(tmp_path):
    old = parse_config({"hub": HUB}, tmp_path / "hub.toml")
    new = parse_config({"hub": HUB, "logging": {"level": "debug"}, "control": {"group": "staff"},
                        "cloud": {"allow_unsigned": True, "keepalive_s": 60}, "charging": {"poll_interval_s": 2}},
                       tmp_path / "hub.toml")
    assert needs_restart(old, new) == ["cloud.keepalive_s", "charging"]
    assert needs_restart(old, old) == []


# ------------------------------------------------ the control socket's directory
def own_group() -> str:
    """A group other than this process's own that it may give a file to
    (root: any; anyone else: one of its supplementary groups)."""
    mine = os.getgid()
    choices = [g.gr_gid for g in grp.getgrall()] if os.geteuid() == 0 else os.getgroups()
    other = next((g for g in choices if g != mine), None)
    if other is None:
        pytest.skip("this user is in no group but its own: nothing to give the directory to")
    return grp.getgrgid(other).gr_name


async def test_the_runtime_directory_systemd_made_goes_to_the_technicians_group_R_T1(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir(mode=0o750)
    os.chmod(run, 0o750)
    monkeypatch.setenv("RUNTIME_DIRECTORY", f"/elsewhere:{run}")
    group = own_group()
    server = ControlServer(run / "control.sock", group, {})
    await server.start()
    try:
        st = run.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o750, grp.getgrnam(group).gr_gid)
        sock = (run / "control.sock").stat()
        assert (stat.S_IMODE(sock.st_mode), sock.st_gid) == (0o660, grp.getgrnam(group).gr_gid)
    finally:
        await server.stop()


async def test_a_directory_someone_else_provided_is_left_alone_with_a_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    other = tmp_path / "other"
    other.mkdir()
    os.chmod(other, 0o700)
    before = other.stat()
    group = own_group()
    server = ControlServer(other / "control.sock", group, {})
    await server.start()
    try:
        after = other.stat()
        assert (after.st_mode, after.st_gid) == (before.st_mode, before.st_gid)
        if before.st_gid != grp.getgrnam(group).gr_gid:
            assert "control.socket_unreachable" in caplog.text
    finally:
        await server.stop()

