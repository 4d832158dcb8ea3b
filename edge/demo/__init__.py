"""`hubedge demo`: the whole hub on simulated hardware, on this machine.

It starts every simulator on loopback, writes a configuration pointing the
daemon at them, runs the real daemon (`hubedge run`) as a child process, and
plays a scripted day against the simulators: trucks arriving, charging,
leaving; a charger going silent and coming back; a technician taking a
connector out of service. A live view shows the hub as `hubctl status` does;
at the end a summary says what happened. No hardware and no cloud needed;
with `--broker` the daemon syncs to that broker exactly as in the field.

The modules: `site` (the simulators, the configuration and the daemon run
against them: `DemoHub`, and `DemoPart`, what each part adds), `story` (the
day's steps, its clock and the base day), `view` (the live view's lines and
the summary), `run` (the `hubedge demo` command), `children` (child
processes that never outlive the demo). Each part's scene is its own
`edge/parts/<part>/demo.py`.
"""

from edge.demo.run import broker_problem, hubctl_command, run_demo
from edge.demo.site import (BLOCKED, CONNECTOR_SIMS, DEMO_PARTS, MAPS, MCS_BAYS, OWN, OWN_OTHER, ROAMING, ROOT,
                             STRANGER, DemoHub, DemoPart)
from edge.demo.story import DayClock, Step, all_of, first_answer

__all__ = [
    "BLOCKED", "CONNECTOR_SIMS", "DEMO_PARTS", "MAPS", "MCS_BAYS", "OWN", "OWN_OTHER", "ROAMING", "ROOT", "STRANGER",
    "DayClock", "DemoHub", "DemoPart", "Step",
    "all_of", "broker_problem", "first_answer", "hubctl_command", "run_demo",
]
