"""`python -m bench crashpoints [--quick]`: a SIGKILL at every commit point.

Four journeys (a bank card at the arch with its settlement, an own charge
card at the charger's reader, a roaming card checked with the cloud, a
booked truck through the entry and exit gates) each run once cleanly to
list the durable commits they make; then each commit point is crashed twice,
the daemon SIGKILLed just before it and just after it, restarted, the
journey finished and the invariants checked (hil_tests/crash/). Every
violation fails the run; the points covered are reported beside the points
listed. `--quick` crashes the fixed sample CI runs (two
points per journey). docs/chaos.md says how to read the output.

HUBEDGE_CRASHPOINTS_JOURNEYS=bank_card,roaming runs only those journeys;
HUBEDGE_CRASHPOINTS_KEEP=1 keeps the state directory when all is well.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Result

COMMAND = "python -m bench crashpoints"


def _journeys() -> list[str]:
    from hil_tests.crash.journeys import JOURNEYS

    wanted = [j for j in os.environ.get("HUBEDGE_CRASHPOINTS_JOURNEYS", "").split(",") if j]
    unknown = [j for j in wanted if j not in JOURNEYS]
    if unknown:
        raise SystemExit(f"HUBEDGE_CRASHPOINTS_JOURNEYS names {', '.join(unknown)}: choose from {', '.join(JOURNEYS)}")
    return wanted or list(JOURNEYS)


def _progress(outcome, points: int) -> None:
    verdict = "ok" if not outcome.violations else f"{len(outcome.violations)} VIOLATIONS"
    reached = "" if outcome.point is None or outcome.reached else " (point not reached)"
    sys.stderr.write(f"  {outcome.title} [{outcome.seconds:.0f} s]: {verdict}{reached}\n")
    sys.stderr.flush()


def run(quick: bool) -> list[Result]:
    from edge.core.journal import setup_logging
    from hil_tests.crash.harness import crash_points, every_point, sample
    from hil_tests.crash.site import CrashSite

    setup_logging("warning")
    base = Path(tempfile.mkdtemp(prefix="hubedge-crashpoints-"))
    journeys = _journeys()
    sys.stderr.write(f"crash points ({'quick sample' if quick else 'every point'}) of {', '.join(journeys)}; "
                     f"state in {base}\n")
    t0 = time.monotonic()
    site = CrashSite(base)

    async def go():
        # SIGTERM stops the run like Ctrl-C: the daemon, broker and simulators go with it.
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)
        await site.start()
        try:
            return await crash_points(site, journeys, sample if quick else every_point, _progress)
        finally:
            await site.stop()

    try:
        report = asyncio.run(go())
    except (asyncio.CancelledError, KeyboardInterrupt):
        sys.stderr.write(f"\ncrash-point run stopped; its daemon, broker and simulators are stopped. State kept in {base}\n")
        raise SystemExit(130) from None
    wall = time.monotonic() - t0
    for line in report.lines():
        sys.stderr.write(line + "\n")
    (base / "report.json").write_text(json.dumps({
        "points": {j: [p.name for p in ps] for j, ps in report.points.items()},
        "runs": [{"journey": o.journey, "point": o.point.name if o.point else None, "when": o.when,
                  "reached": o.reached, "seconds": round(o.seconds, 1), "violations": o.violations, "notes": o.notes}
                 for o in report.clean + report.outcomes]}, indent=2))
    if not report.failed and not os.environ.get("HUBEDGE_CRASHPOINTS_KEEP"):
        shutil.rmtree(base, ignore_errors=True)
    else:
        sys.stderr.write(f"report and kept state: {base}\n")
    cmd = COMMAND + (" --quick" if quick else "")
    runs = len(report.outcomes) + len(report.clean)
    total = sum(len(ps) for ps in report.points.values())
    what = "sampled" if quick else "listed"
    out = [Result("crashpoints: runs with a violated invariant", float(len(report.failed)), "runs",
                  f"runs ({runs}: a clean one per journey, then one per crash)", float(runs), goal=0, command=cmd)]
    for j, ps in report.points.items():
        planned = len({o.point for o in report.outcomes if o.journey == j})
        out.append(Result(f"crashpoints: {j}: points crashed before and after", float(report.covered_points(j)),
                          "points", f"{what} ({planned} of {len(ps)} commit points)", float(planned), command=cmd))
    out.append(Result("crashpoints: commit points crashed before and after", float(report.covered_points()), "points",
                      f"commit points of the {len(report.points)} journeys", float(total), command=cmd))
    out.append(Result("crashpoints: wall time", wall, "s", "mean seconds per run", wall / max(1, runs), command=cmd))
    return out


if __name__ == "__main__":
    # `python -m bench.crashpoints [--quick]`: the same run, exit status 1 on a violation.
    results = run("--quick" in sys.argv[1:])
    for r in results:
        print(f"{r.name}: {r.value:g} {r.unit} | {r.baseline}: {r.baseline_value:g} | {'ok' if r.ok else 'FAILED' if r.ok is False else '-'}")
    sys.exit(0 if all(r.ok is not False for r in results) else 1)
