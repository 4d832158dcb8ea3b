"""`hubedge demo` itself: checks its options, runs the demo site and tells
its day, with the live view on a terminal or plain lines elsewhere."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from edge.demo.site import DemoHub
from edge.demo.story import DayClock, base_day, tell_the_day
from edge.demo.view import brief, day_summary, day_view, events_since
from edge.hubctl_render import Style, render_status


def hubctl_command() -> str:
    """How to run hubctl on this machine, as a person would type it: through
    ./dev when the demo was started by it, else the hubctl beside this Python."""
    if os.environ.get("HUBEDGE_HUBCTL"):
        return os.environ["HUBEDGE_HUBCTL"]
    beside = Path(sys.executable).parent / "hubctl"
    if shutil.which("hubctl") == str(beside):
        return "hubctl"
    if beside.exists():
        return shlex.quote(str(beside))
    return f"{shlex.quote(sys.executable)} -m edge.hubctl"


def broker_problem(broker: str | None) -> str | None:
    """What is wrong with a --broker URL, in words, or None."""
    if broker is None:
        return None
    if re.fullmatch(r"[\w.\-\[\]:]+:\d+", broker) and "://" not in broker:
        return f"--broker {broker} has no scheme: the demo needs a URL such as --broker mqtt://{broker}"
    if not broker.startswith("mqtt://"):
        return (f"--broker {broker} is not a plain mqtt:// URL: the demo and its simulated cloud speak MQTT without "
                f"TLS on this machine, e.g. --broker mqtt://127.0.0.1:1883")
    return None


async def _run(args) -> int:
    speed = max(1.0, float(args.speed))
    own_dir = args.state_dir is None
    state_dir = Path(args.state_dir or tempfile.mkdtemp(prefix="hubedge-demo-")).resolve()
    socket = Path(args.socket).resolve() if args.socket else state_dir / "control.sock"
    hub = DemoHub(state_dir=state_dir, socket=socket, speed=speed)
    # SIGTERM (and SIGHUP, a closed terminal) end the demo as Ctrl-C does:
    # through the finally below, which stops every child.
    main = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, main.cancel)
    tty = sys.stdout.isatty() and not args.no_view
    style = Style(tty and os.environ.get("NO_COLOR") is None)
    watch = f"{hubctl_command()} --socket {shlex.quote(str(socket))} status"
    notes: list[str] = []
    story: asyncio.Task | None = None
    cut = ""  # why the day did not end by itself
    interrupted = False
    try:
        try:
            for note in await hub.start(broker=args.broker):
                print(f"hub-edge demo: {note}", flush=True)
            if args.broker and hub.command_key_file is not None:
                kept = ("it is deleted with the demo's temporary state when the demo ends (give --state-dir DIR to keep it)"
                        if own_dir else "it stays there after the demo")
                notes.append(f"the hub obeys only what is signed with the command key in {hub.command_key_file}; {kept}")
            print(f"hub-edge demo: state in {state_dir}", flush=True)
            print(f"hub-edge demo: watch it from another terminal with: {watch}", flush=True)
            for note in notes:
                print(f"hub-edge demo: {note}", flush=True)
            await hub.wait_ready()
            steps = base_day(hub)
            for part in hub.parts:
                steps += part.steps()
            steps.sort(key=lambda st: st.at_s)
            t0 = time.monotonic()
            hub.clock = DayClock(speed)  # the day starts now that the hub is ready
            story = asyncio.get_running_loop().create_task(tell_the_day(hub, steps))
            offset = hub.log_size()
            recent: list[str] = []
            duration = args.duration
            ends = (f"the day ends by itself after {duration:g} s" if duration is not None
                    else "the day ends by itself when its story is told")
            while True:
                elapsed = time.monotonic() - t0
                recent += hub.news
                hub.news.clear()
                events, offset = events_since(hub.log_path, offset)
                for e in events:
                    recent.append("    " + brief(e, 150 if tty else 400))
                if hub.daemon.poll() is not None:
                    print(f"hub-edge demo: the daemon stopped unexpectedly (status {hub.daemon.returncode}); see {hub.log_path}", file=sys.stderr)
                    return 1
                if tty:
                    try:
                        status = await hub.ask("status")
                        screen = render_status(status, style, day_view(hub, status), hide=("LAST END-OF-DAY", "NEXT END-OF-DAY"))
                    except Exception as exc:
                        screen = f"(daemon not answering: {exc})"
                    head = (f"hub-edge demo — demo time {hub.clock.text()} (x{speed:g}); {ends}; Ctrl-C ends it early, "
                            f"with the summary\nwatch it from another terminal: {watch}\n\n")
                    sys.stdout.write("\033[H\033[2J" + head + screen + "\n\nthe day so far:\n" + "\n".join(recent[-12:]) + "\n")
                    sys.stdout.flush()
                else:
                    for line in recent:
                        print(line, flush=True)
                    recent.clear()
                if story.done():
                    break
                if duration is not None and elapsed >= duration:
                    cut = f"ended by --duration {duration:g} at demo time {hub.clock.text()}, before the day was over"
                    break
                await asyncio.sleep(1.0 if tty else 0.5)
        except asyncio.CancelledError:
            # Ctrl-C: the day is cut short, the summary still comes.
            asyncio.current_task().uncancel()
            interrupted = True
            cut = f"cut short at demo time {hub.clock.text()} by Ctrl-C"
        if story is not None and not story.done():
            story.cancel()
            await asyncio.gather(story, return_exceptions=True)
        if hub.daemon is not None and hub.daemon.poll() is None:
            try:
                summary = await day_summary(hub, notes, cut=cut)
            except (OSError, RuntimeError, asyncio.TimeoutError) as exc:
                summary = f"hub-edge demo: no summary, the daemon did not answer ({exc}); its log is {hub.log_path}"
            print(summary, flush=True)
        return 130 if interrupted else 0
    finally:
        await hub.stop()
        if own_dir and os.environ.get("HUBEDGE_DEMO_KEEP") is None:
            shutil.rmtree(state_dir, ignore_errors=True)


def run_demo(args) -> int:
    from edge.core.journal import setup_logging

    problem = broker_problem(args.broker)
    if problem:
        print(f"hub-edge demo: {problem}", file=sys.stderr)
        return 2
    setup_logging("warning")
    try:
        return asyncio.run(_run(args))
    except KeyboardInterrupt:
        return 130
    except asyncio.CancelledError:  # SIGTERM or SIGHUP: stopped cleanly all the same
        return 143
    except RuntimeError as exc:
        print(f"hub-edge demo: {exc}", file=sys.stderr)
        return 1
