"""The closing summary of `./dev test`: one block at the very end, so the
verdict is not 25 lines above the last line of output.

    python -m bench.closing --junit artifacts/junit.xml --pytest-exit N \
        --chaos-exit N --scale-exit N --seconds S

Exit status: 0 when the tests passed and both runs held, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def counts_of(junit: Path) -> tuple[int, int, int] | None:
    """(passed, failed, skipped) from pytest's JUnit XML; errors count as
    failed. None when the file is missing or unreadable."""
    try:
        root = ET.parse(junit).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    tests = failed = skipped = 0
    for s in suites:
        tests += int(s.get("tests", 0))
        failed += int(s.get("failures", 0)) + int(s.get("errors", 0))
        skipped += int(s.get("skipped", 0))
    return tests - failed - skipped, failed, skipped


def _took(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def render(counts: tuple[int, int, int] | None, pytest_exit: int, chaos_exit: int | None, scale_exit: int | None,
           seconds: float) -> tuple[str, bool]:
    """The summary's lines and whether everything passed."""
    lines = ["", "=== ./dev test: summary ==="]
    ok = pytest_exit == 0
    if counts is None:
        lines.append(f"tests: no result file (pytest exit {pytest_exit}): see the output above")
        ok = False
    else:
        passed, failed, skipped = counts
        lines.append(f"tests: {passed} passed, {failed} failed, {skipped} skipped"
                     + ("" if pytest_exit == 0 else f" (pytest exit {pytest_exit})") + "; details in artifacts/junit.xml")
    for name, code, good in (("chaos", chaos_exit, "every invariant held"), ("scale", scale_exit, "every goal met")):
        if code is None:
            lines.append(f"{name} (quick): not run")
            ok = False
        elif code == 0:
            lines.append(f"{name} (quick): passed, {good}")
        else:
            lines.append(f"{name} (quick): FAILED (exit {code}): its figures and the command to reproduce are above")
            ok = False
    lines.append(f"total time: {_took(seconds)}")
    lines.append("result: " + ("passed" if ok else "FAILED"))
    return "\n".join(lines), ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.closing", description=__doc__.splitlines()[0])
    p.add_argument("--junit", type=Path, default=Path("artifacts/junit.xml"))
    p.add_argument("--pytest-exit", type=int, required=True)
    p.add_argument("--chaos-exit", type=int)
    p.add_argument("--scale-exit", type=int)
    p.add_argument("--seconds", type=float, required=True)
    args = p.parse_args(argv)
    text, ok = render(counts_of(args.junit), args.pytest_exit, args.chaos_exit, args.scale_exit, args.seconds)
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
