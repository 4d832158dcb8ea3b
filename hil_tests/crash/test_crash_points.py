"""R-C9, R-P4, R-M2, R-G6, R-C5: the daemon SIGKILLed just before and just
after a durable commit of each journey, restarted, the journey finished: every
event reaches the cloud once with gapless seqs, every session and every hold
is recorded and announced once, each hold settled or released with the
amount the terminal's own records show, and nothing is left open.

The quick subset of `python -m bench crashpoints` (hil_tests/crash/harness.py):
each journey's commit points are listed from a clean run, then a fixed
sample is crashed (``harness.sample``: a third of the way through the
journey's commits before, two thirds after). The full run crashes them all.
"""

from __future__ import annotations

import pytest

from hil_tests.crash.harness import crash_points, sample
from hil_tests.crash.journeys import JOURNEYS
from hil_tests.crash.site import CrashSite

pytestmark = [
    pytest.mark.hil,
    pytest.mark.cloud,
    pytest.mark.sim_only(reason="plays the trucks, the cards, the gates and a SIGKILL on the simulated hub",
                         devices=["charger", "terminal", "reader", "gate"]),
]


@pytest.mark.timeout(480)
@pytest.mark.parametrize("journey", list(JOURNEYS))
async def test_r_c9_r_p4_sigkill_before_and_after_a_commit_keeps_every_invariant(tmp_path, journey):
    site = await CrashSite(tmp_path).start()
    try:
        report = await crash_points(site, [journey], sample)
    finally:
        await site.stop()
    assert len(report.points[journey]) >= 10, f"too few commit points found for {journey}: {report.points[journey]}"
    assert {o.when for o in report.outcomes} == {"before", "after"}
    assert not report.not_reached, "\n".join(report.lines())
    assert not report.failed, "\n".join(report.lines())
