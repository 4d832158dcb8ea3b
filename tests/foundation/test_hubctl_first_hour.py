"""hubctl without a daemon, as a technician meets it (issue 19): "did you
mean", --json anywhere and every error as JSON with it, a pipe closed early,
gate close refused in words (R-G5), the status table in words and in the
hub's local time, the outbox quota in MiB, session ids by prefix, ports
checked by `config validate`, and every command suggested anywhere parses
as printed."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

from edge.core.control import ControlError, resolve_prefix
from edge.hubctl import main
from edge.hubctl_render import MIB, Style, TimeView, render_outbox, render_status

ROOT = Path(__file__).resolve().parents[2]
NO_DAEMON = "/nonexistent/hubedge/control.sock"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge.hubctl", "--socket", NO_DAEMON, *args],
                          capture_output=True, text=True, timeout=30, cwd=str(ROOT))


def test_a_misspelt_command_gets_did_you_mean():
    proc = run("stauts")
    assert proc.returncode == 2
    assert "did you mean `hubctl status`?" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    nested = run("connector", "unlok", "C1")
    assert nested.returncode == 2 and "no choice 'unlok'" in nested.stderr


@pytest.mark.parametrize("argv", [["--json", "status"], ["status", "--json"], ["sessions", "--json", "--connector", "C1"]])
def test_json_before_or_after_the_command_and_no_daemon_is_json_too(argv):
    proc = run(*argv)
    assert proc.returncode == 5 and proc.stderr == ""
    error = json.loads(proc.stdout)
    assert error["ok"] is False and error["code"] == "unreachable" and "no hub-edge daemon" in error["message"]


@pytest.mark.parametrize("argv,code", [
    (["--json", "stauts"], 2),
    (["--json", "sessions", "--since", "yesterday-ish"], 2),
    (["--json", "session", "stop", "6b6a49be"], 2),  # no --reason
    (["--json", "tokens", "lookup"], 2),
    (["--json", "connector", "unavailable", "C1"], 2),  # no --reason
    (["--json", "gate", "close", "G-IN"], 3),
])
def test_with_json_every_error_is_json_on_stdout(argv, code):
    proc = run(*argv)
    assert proc.returncode == code, proc.stderr
    error = json.loads(proc.stdout)
    assert set(error) == {"ok", "code", "message"} and error["ok"] is False and error["message"]


def test_gate_close_is_refused_saying_software_never_closes_a_barrier():
    proc = run("gate", "close", "G-IN")
    assert proc.returncode == 3
    assert "software never closes a barrier (R-G5)" in proc.stderr and "`hubctl gate release G-IN`" in proc.stderr


def test_watch_into_a_pipe_closed_early_ends_without_a_traceback():
    proc = subprocess.Popen([sys.executable, "-m", "edge.hubctl", "--socket", NO_DAEMON, "--json", "watch", "--interval", "0.2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(ROOT))
    assert json.loads(proc.stdout.readline())["code"] == "unreachable"
    proc.stdout.close()  # `| head -1`
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0 and b"Traceback" not in err and b"BrokenPipe" not in err, err


def test_outbox_quota_in_the_unit_it_is_configured_in():
    text = render_outbox({"depth": 0, "quota": {"bytes_used": 3 * MIB, "quota_bytes": 64 * MIB, "state": "ok"},
                          "link": {"connected": True}}, Style(False))
    assert "quota: 3.0 MiB of 64 MiB (ok)" in text


STATUS = {
    "hub": "H1", "version": "0.1.0", "ts": "2026-12-04T08:00:00.000Z", "uptime_s": 60, "ready": True,
    "timezone": "Europe/Amsterdam",
    "connectors": [
        {"connector": "C5", "bay": "B5", "status": "Faulted", "since": "2026-12-04T07:58:00.000Z",
         "fault": "charger CH2 not answering: timeout", "session": "bcdd612b-0000-4000-8000-000000000000",
         "session_energy_wh": 12000, "session_method": "free_vend"},
    ],
    "bookings": [{"booking": "DM-1", "slot_start": "2026-12-04T09:00:00Z", "slot_end": "2026-12-04T11:00:00Z",
                  "type": "MCS", "side": "left", "bay": "B1", "connector": "C1", "state": "assigned"}],
    "gates": [{"gate": "G-IN", "role": "entry", "barrier": "closed", "presence": False, "hold_open": False,
               "last_decision": "open:booked", "decided_ago_s": 120}],
    "devices": [], "cloud": {"configured": False}, "outbox": {"depth": 0},
}


def test_status_table_shows_why_faulted_beside_the_session_in_words_and_local_time():
    view = TimeView("Europe/Amsterdam", now=datetime_utc("2026-12-04T08:00:00"))
    text = render_status(STATUS, Style(False), view)
    line = next(x for x in text.splitlines() if x.startswith("C5"))
    assert "why: charger CH2 not answering" in line and "session bcdd612b" in line
    assert "2m" in line  # Faulted for two minutes
    assert "10:00 to 12:00" in text  # the booking slot in Amsterdam time, not UTC
    assert "PRESENCE" not in text and "False" not in text and "DECIDED_AGO_S" not in text
    assert re.search(r"G-IN\s+entry\s+closed\s+none\s+open, booked\s+2m ago", text), text


def test_the_demos_view_keeps_one_clock():
    """Ages scaled by the demo's speed, instants on the demo's own day."""
    view = TimeView("Europe/Amsterdam", now=datetime_utc("2026-12-04T08:00:00"), scale=60, instant=lambda t: "sim")
    text = render_status(STATUS, Style(False), view)
    assert "2h00m" in next(x for x in text.splitlines() if x.startswith("C5"))  # 2 real minutes at x60
    assert "sim to sim" in text and "2h00m ago" in text


def datetime_utc(text: str):
    from datetime import datetime, timezone

    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def test_session_ids_by_any_unique_prefix_and_an_ambiguous_one_refused_with_candidates():
    ids = ["bcdd612b-1111", "bcdd6999-2222", "0a1b2c3d-3333"]
    assert resolve_prefix("0a1b", ids, "session", "hubctl sessions") == "0a1b2c3d-3333"
    assert resolve_prefix("bcdd612b", ids, "session", "hubctl sessions") == "bcdd612b-1111"
    with pytest.raises(ControlError) as ambiguous:
        resolve_prefix("bcdd6", ids, "session", "hubctl sessions")
    assert ambiguous.value.code == "ambiguous"
    assert "bcdd612b-1111" in ambiguous.value.message and "bcdd6999-2222" in ambiguous.value.message
    with pytest.raises(ControlError) as none:
        resolve_prefix("ffff", ids, "session", "hubctl sessions")
    assert none.value.code == "not_found" and "`hubctl sessions`" in none.value.message


@pytest.mark.parametrize("key,old,new", [
    ("chargers[0].address", '"10.10.1.11:502"', '"10.10.1.11:99999"'),
    ("cloud.broker", '"mqtt://127.0.0.1:1883"', '"mqtt://127.0.0.1:99999"'),
    ("terminals[0].port", '"/dev/ttyUSB0"', '"tcp://10.10.1.20:70000"'),
    ("readers[0].path", '"tty:AMA0:pn532"', '"udp:127.0.0.1:0"'),
    ("gates[0].barrier.address", '"10.10.1.30:502"', '"10.10.1.30:65536"'),
    ("gates[0].camera.listen", '"0.0.0.0:8081"', '"0.0.0.0:99999"'),
])
def test_config_validate_refuses_ports_out_of_range_in_every_address(tmp_path, capsys, key, old, new):
    text = (ROOT / "config" / "hub-small.toml").read_text()
    assert old in text
    path = tmp_path / "hub.toml"
    path.write_text(text.replace(old, new, 1))
    assert main(["--json", "config", "validate", str(path)]) == 6
    problems = json.loads(capsys.readouterr().out)["problems"]
    assert any(p.startswith(key) and "out of range" in p for p in problems), problems


SOURCES = sorted([*(ROOT / "edge").rglob("*.py"), *(ROOT / "drivers").rglob("*.py"), ROOT / "README.md",
                  *(ROOT / "docs").glob("*.md")])


def _text_of(path: Path) -> str:
    """What a person may read: a document, or the strings of a module
    (its messages; comments are for programmers)."""
    if path.suffix != ".py":
        return path.read_text()
    with open(path, "rb") as f:
        return "\n".join(t.string for t in tokenize.tokenize(f.readline) if t.type == tokenize.STRING)


def suggested_commands() -> list[tuple[str, str]]:
    found = []
    for path in SOURCES:
        for snippet in re.findall(r"`(hubctl [^`\n]*)`", _text_of(path)):
            if re.search(r"(^|\s)\.\.\.(\s|$)|\[--", snippet) or re.search(r"\b(watch|--follow)\b", snippet):
                continue  # a synopsis or an ellipsis, or a command that runs until Ctrl-C
            command = re.sub(r"\{[^}]*\}|<[^>]*>", "X1", snippet)
            found.append((str(path.relative_to(ROOT)), command))
    return found


def test_the_collection_of_suggested_commands_finds_them():
    commands = {c for _, c in suggested_commands()}
    assert "hubctl session stop X1 --reason 'truck cannot unplug'" in commands
    assert len(commands) > 20


@pytest.mark.parametrize("where,command", suggested_commands())
def test_every_suggested_command_parses_as_printed(where, command, capsys):
    """Run against no daemon: a command that parses ends 5 (unreachable),
    4 or 6 (a file that is not there); a usage error would be 2."""
    words = shlex.split(command.split("|")[0])[1:]
    if "--socket" not in words:
        words = ["--socket", NO_DAEMON, *words]
    code = main(words)
    err = capsys.readouterr().err
    assert code != 2, f"{where}: `{command}` does not run as printed: {err}"


def test_payment_ids_by_any_unique_prefix_and_an_ambiguous_one_refused(monkeypatch, capsys):
    import edge.hubctl as hubctl

    asked = []

    def fake_ask(socket_path, cmd, req, on_progress=None):
        asked.append((cmd, req))
        if cmd == "payments":
            return {"ok": True, "data": [{"id": "3f2a9c1e-aaaa"}, {"id": "3f2a0000-bbbb"}]}
        return {"ok": True, "data": {"state": "settled", "message": f"payment {req['id']} settled"}}

    monkeypatch.setattr(hubctl, "_ask", fake_ask)
    assert main(["payment", "retry", "3f2a9"]) == 0
    assert asked[-1] == ("payment_retry", {"id": "3f2a9c1e-aaaa", "timeout": 30})
    capsys.readouterr()
    assert main(["--json", "payment", "retry", "3f2a"]) == 2
    error = json.loads(capsys.readouterr().out)
    assert error["code"] == "ambiguous" and "3f2a9c1e-aaaa" in error["message"] and "3f2a0000-bbbb" in error["message"]
