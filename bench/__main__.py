"""`python -m bench [NAME ...] [--quick] [--json]`: the benchmarks.

Each figure is printed with a baseline measured in the same run and their
ratio. Names: see BENCHMARKS below (default: all).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time

BENCHMARKS = {
    "daemon": "bench.daemon",      # start to READY, resident memory, idle CPU of the whole daemon
    "polling": "bench.polling",    # 40 connectors polled at 1 Hz: CPU and cycle p99
    "outbox": "bench.outbox",      # durable append
    "uplink": "bench.uplink",      # drain to a local mosquitto
    "auth": "bench.auth",          # 1M tokens: tap to start, memory, apply
    "gate": "bench.gate",          # plate to decision, assignment
    "stall": "bench.stall",        # event loop stalls and gate decisions with a slow SD card (100 ms per fsync)
    "scale": "bench.scale",        # 1M tokens and 1M sessions: filters, insert, memory, CPU, READY
    "chaos": "bench.chaos",        # kills, broker restarts, garbled devices; invariants checked
    "fuzz": "bench.fuzz",          # every parser of outside input
    "ocpp": "bench.ocpp",          # the OCPP layer: validation cost, round trips, 40 stations
    "power": "bench.power",        # a simulated week of site power: limit kept, curtailments met, shares, loop cost
    "crashpoints": "bench.crashpoints",  # a SIGKILL before and after every commit of four journeys; invariants checked
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", metavar="NAME", help=f"which benchmarks ({', '.join(BENCHMARKS)}); default all")
    p.add_argument("--quick", action="store_true", help="short runs (CI); the figures are noisier")
    p.add_argument("--json", action="store_true", help="print a JSON list of {name, value, unit, baseline, baseline_value, ratio, goal, ratio_goal, ok}")
    p.add_argument("--strict", action="store_true", help="exit 1 when any figure misses its goal or any invariant fails (CI)")
    args = p.parse_args(argv)
    # chaos (45 min in full), fuzz (about 20 min) and crashpoints (about an hour) run only when named.
    names = args.names or [n for n in BENCHMARKS if n not in ("chaos", "fuzz", "crashpoints")]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        p.error(f"unknown benchmark {', '.join(unknown)}: choose from {', '.join(BENCHMARKS)}")
    results = []
    failed = False
    for name in names:
        t0 = time.monotonic()
        try:
            mod = importlib.import_module(BENCHMARKS[name])
            got = mod.run(args.quick)
        except Exception as exc:  # one broken benchmark does not hide the others
            print(f"bench {name}: failed: {exc!r}", file=sys.stderr)
            failed = True
            continue
        results += got
        if name in ("chaos", "crashpoints") and any(r.ok is False for r in got):
            failed = True  # an invariant broken is a failure, not a missed goal
        if not args.json:
            print(f"\n== {name} ({time.monotonic() - t0:.1f} s) ==")
            for r in got:
                print(f"{r.name}: {r.value:.4g} {r.unit}  | baseline ({r.baseline}): {r.baseline_value:.4g} {r.unit}  | ratio {r.ratio:.3g}{r.goal_text()}")
            cmds = sorted({r.command for r in got if r.command})
            for c in cmds:
                print(f"  reproduce: {c}")
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=2))
    missed = [r for r in results if r.ok is False]
    if missed and args.strict:
        print("bench: " + "; ".join(f"{r.name} missed ({r.value:.4g} {r.unit},{r.goal_text()})" for r in missed), file=sys.stderr)
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
