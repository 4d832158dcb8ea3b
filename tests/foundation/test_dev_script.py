"""The README's two set-up commands as a newcomer meets them (issue 19):
`./dev hubctl` runs the README's hubctl commands as written, `./dev test`
ends with one closing summary (tests, chaos and scale verdicts, total time)
and is what CI runs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from bench.closing import render, counts_of

ROOT = Path(__file__).resolve().parents[2]

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="1" failures="2"
skipped="3" tests="20" time="1.0"></testsuite></testsuites>"""


def test_closing_summary_counts_tests_and_gives_both_verdicts_and_the_time(tmp_path):
    junit = tmp_path / "junit.xml"
    junit.write_text(JUNIT)
    assert counts_of(junit) == (14, 3, 3)
    text, ok = render(counts_of(junit), 1, 0, 1, 754)
    lines = text.strip().splitlines()
    assert lines[0] == "=== ./dev test: summary ==="
    assert "tests: 14 passed, 3 failed, 3 skipped (pytest exit 1)" in text
    assert "chaos (quick): passed, every invariant held" in text
    assert "scale (quick): FAILED (exit 1)" in text
    assert "total time: 12m34s" in text and lines[-1] == "result: FAILED" and not ok
    good, ok = render((100, 0, 0), 0, 0, 0, 59)
    assert ok and good.strip().splitlines()[-1] == "result: passed" and "total time: 59s" in good


def test_closing_summary_without_results_is_a_failure(tmp_path):
    text, ok = render(counts_of(tmp_path / "missing.xml"), 2, None, None, 3)
    assert not ok and "no result file" in text and "chaos (quick): not run" in text


def test_dev_test_ends_with_the_closing_summary_and_ci_runs_it():
    dev = (ROOT / "dev").read_text()
    test_branch = dev.split("  test)", 1)[1].split(";;", 1)[0]
    assert test_branch.rstrip().splitlines()[-2].strip().startswith("exec .venv/bin/python -m bench.closing")
    assert "./dev test" in (ROOT / ".ci" / "run").read_text()


def test_dev_hubctl_runs_hubctl_from_the_venv(tmp_path):
    proc = subprocess.run([str(ROOT / "dev"), "hubctl", "--json", "--socket", str(tmp_path / "none.sock"), "status"],
                          capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert proc.returncode == 5, proc.stderr
    assert json.loads(proc.stdout)["code"] == "unreachable"


def test_readme_states_the_run_time_and_how_hubctl_runs():
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"`\./dev test` takes about \d+ minutes", readme)
    assert "./dev hubctl" in readme
    assert "Ctrl-C to leave" not in readme


def test_demo_help_says_the_broker_is_used_instead_and_how_it_ends():
    proc = subprocess.run([sys.executable, "-m", "edge.cli", "demo", "--help"],
                          capture_output=True, text=True, timeout=60, cwd=str(ROOT))
    text = " ".join(proc.stdout.split())
    assert proc.returncode == 0
    assert "instead of the demo's own" in text and "also sync" not in text
    assert "Ctrl-C ends it early, with the summary too" in text


def test_readme_dev_commands_exist():
    """Every `./dev X` the README shows is a command of ./dev."""
    dev = (ROOT / "dev").read_text()
    for sub in set(re.findall(r"\./dev (\w+)", (ROOT / "README.md").read_text())):
        assert f"\n  {sub})" in dev, sub
