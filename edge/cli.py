"""`hubedge`: run the daemon, or the whole hub on simulated hardware."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hubedge", description="hub-edge: the charging hub's edge controller.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    r = sub.add_parser("run", help="run the daemon (systemd runs this)")
    r.add_argument("--config", required=True, metavar="FILE", help="the hub's TOML configuration, e.g. /etc/hubedge/hub.toml")
    d = sub.add_parser("demo", help="the whole hub on simulated hardware, with a scripted day and a live view",
                       description="The whole hub on simulated hardware on this machine: the daemon, every simulator, "
                                   "its own MQTT broker and a simulated cloud, and a scripted day told in a live view, "
                                   "ending with a summary (Ctrl-C ends it early, with the summary too).")
    d.add_argument("--broker", metavar="URL", help="use this MQTT broker instead of the demo's own, e.g. "
                   "mqtt://127.0.0.1:1883: the hub syncs to it as in the field, and the demo prints where the command key is")
    d.add_argument("--duration", type=float, metavar="SECONDS", help="end after this many real seconds, with the summary "
                   "(without it the demo ends by itself when its day is over)")
    d.add_argument("--speed", type=float, default=60.0, metavar="FACTOR",
                   help="demo seconds per real second (default 60: an hour of the demo day a minute); "
                        "the day tells the same story at any speed")
    d.add_argument("--state-dir", metavar="DIR", help="keep the demo hub's state here (default: a new temporary directory)")
    d.add_argument("--socket", metavar="PATH", help="control socket for hubctl (default: inside the state directory)")
    d.add_argument("--no-view", action="store_true", help="no live view; print events as lines (for logs and CI)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        from edge.core.config import ConfigError, load_config
        from edge.core.journal import setup_logging

        try:
            cfg = load_config(args.config)
        except ConfigError as exc:
            print(f"hubedge: {exc}", file=sys.stderr)
            return 6
        setup_logging(cfg.logging.level)
        from edge.core.daemon import run

        return run(cfg)
    if args.command == "demo":
        from edge.demo import run_demo

        return run_demo(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
