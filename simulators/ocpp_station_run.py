"""The OCPP station simulator run on its own, as `python -m
simulators.ocpp_station` (or this module): it connects to a central system,
reconnects whenever the link goes (booting only the first time, as a real
station), and with ``--traffic`` plays trucks arriving, a card tapped,
charging and leaving."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import signal

import aiohttp

from simulators.ocpp_station import CallFailed, OcppStation


async def _traffic(station: OcppStation, rng: random.Random, cards: list[str]) -> None:
    """Trucks arrive, a driver taps a card, they charge and leave."""
    async def bay(i: int) -> None:
        while True:
            await asyncio.sleep(rng.uniform(5, 30) / station.time_scale)
            station.plug(i, soc=rng.uniform(10, 50), battery_kwh=rng.choice([400, 600, 720]))
            await asyncio.sleep(2)
            card = rng.choice(cards)
            with contextlib.suppress(CallFailed):
                await station.tap(card, i)
            await asyncio.sleep(rng.uniform(300, 1800) / station.time_scale)
            if station.connectors[i].tx is not None:
                with contextlib.suppress(CallFailed):
                    await station.tap(card, i)
            await asyncio.sleep(rng.uniform(10, 60) / station.time_scale)
            station.unplug(i)

    await asyncio.gather(*(bay(i) for i in range(len(station.connectors))))


async def _main(args: argparse.Namespace) -> None:
    password = None
    if args.password_file:
        with open(args.password_file, encoding="latin-1") as f:
            password = f.read().strip()
    station = OcppStation(args.id, args.version, args.url, password=password, connectors=args.connectors,
                          time_scale=args.time_scale, signed=args.signed,
                          local_list={c: "Accepted" for c in args.card})
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    traffic = None
    first = True
    while not done.is_set():
        try:
            await station.connect(boot=first)
            first = False
            print(f"ocpp_station_connected id={args.id} version={args.version} boot={station.boot_status}", flush=True)
            if args.traffic and traffic is None:
                traffic = asyncio.create_task(_traffic(station, random.Random(args.id), args.card or ["04A1B2C3"]))
            while station.connected and not done.is_set():
                await asyncio.sleep(1)
        except (aiohttp.ClientError, CallFailed, OSError) as exc:
            print(f"ocpp_station_unconnected id={args.id} error={exc}; retrying in 5 s", flush=True)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(done.wait(), 5)
    if traffic:
        traffic.cancel()
    await station.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m simulators.ocpp_station",
                                     description="Simulated charging station speaking OCPP 1.6J or 2.0.1.")
    parser.add_argument("--url", required=True, help="the central system's endpoint, e.g. ws://127.0.0.1:9000/ocpp")
    parser.add_argument("--id", required=True, help="station identity (appended to the URL, Basic-auth user)")
    parser.add_argument("--version", choices=["ocpp1.6", "ocpp2.0.1"], default="ocpp1.6")
    parser.add_argument("--password-file", help="file holding the HTTP Basic password")
    parser.add_argument("--connectors", type=int, default=1)
    parser.add_argument("--time-scale", type=float, default=1.0, help="simulated seconds per real second")
    parser.add_argument("--signed", action="store_true", help="send signed meter values (OCMF)")
    parser.add_argument("--card", action="append", default=[], help="a card in the local list (repeatable)")
    parser.add_argument("--traffic", action="store_true", help="scripted trucks arrive, charge and leave")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
