"""hubctl without a daemon: arguments, times, errors, config validate (R-T1)."""

import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from edge.hubctl import main
from edge.hubctl_render import parse_when

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)


def test_relative_and_absolute_times():
    assert parse_when("2h", NOW) == datetime(2026, 11, 24, 10, 0, tzinfo=timezone.utc)
    assert parse_when("3d", NOW).day == 21
    assert parse_when("2026-11-01", NOW) == datetime(2026, 11, 1, tzinfo=timezone.utc)
    assert parse_when("2026-11-01T08:00+01:00", NOW).hour == 7
    with pytest.raises(Exception) as exc:
        parse_when("yesterday-ish", NOW)
    assert "relative time" in str(exc.value)


def test_missing_daemon_is_one_line_and_exit_5(tmp_path, capsys):
    code = main(["--socket", str(tmp_path / "none.sock"), "status"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 5
    assert len(err) == 1 and "no hub-edge daemon" in err[0] and "start it" in err[0]


def test_config_validate_good_and_bad(tmp_path, capsys):
    assert main(["config", "validate", str(ROOT / "config" / "hub-small.toml")]) == 0
    assert "valid" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text('[hub]\nid = "H1"\ncountry = "nl"\nvat_rate = "0.21"\nextra = 1\n')
    assert main(["--json", "config", "validate", str(bad)]) == 6
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False
    assert any(p.startswith("hub.country") for p in out["problems"])
    assert any(p.startswith("hub.extra: unknown key") for p in out["problems"])


def test_bad_arguments_exit_2():
    proc = subprocess.run([sys.executable, "-m", "edge.hubctl", "connector", "explode", "C1"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "no choice 'explode'" in proc.stderr and "available, unavailable, unlock" in proc.stderr
