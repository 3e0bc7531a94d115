"""Run many seeded simulated clusters: `python -m tests.simulation --seeds 500`.

Prints one line per failing seed with the command that replays it, the share of the time some
node could serve while a majority was up and connected (per seed with --serving), then
`N passed, M failed`. Exit status 1 when any seed failed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from raftkv.core.config import ReadMode
from raftkv.core.node import UnsafeSwitches

from .cluster import (
    ALL_FAULTS,
    KNOWN_FAULTS,
    SCENARIOS,
    SIM_PROFILES,
    SuspendClock,
    run_scenario,
)
from .runner import Options, SeedOutcome, run_seeds, scenario_for


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.simulation", description=__doc__)
    parser.add_argument("--seeds", type=int, default=100, help="how many seeds to run")
    parser.add_argument("--start", type=int, default=0, help="first seed")
    parser.add_argument("--nodes", type=int, choices=[1, 3, 5, 7], help="cluster size")
    parser.add_argument("--profile", choices=sorted(SIM_PROFILES), help="timing profile")
    parser.add_argument("--read-mode", choices=[m.value for m in ReadMode])
    parser.add_argument(
        "--faults",
        default=",".join(sorted(ALL_FAULTS)),
        help=f"comma-separated subset of {','.join(sorted(KNOWN_FAULTS))}, or 'none' "
        f"(default: all but {','.join(sorted(KNOWN_FAULTS - ALL_FAULTS))})",
    )
    parser.add_argument(
        "--unsafe",
        default="",
        help="comma-separated negative-control switches: " + ",".join(UnsafeSwitches.__slots__),
    )
    parser.add_argument(
        "--scenario",
        choices=SCENARIOS,
        help="a fixed scenario instead of drawn ones (it sets nodes, profile and faults): "
        "one-way-cut = 3 nodes, fast profile, one follower that can send but not receive for "
        "most of the run, no other fault (implies --serving)",
    )
    parser.add_argument(
        "--suspend-clock",
        choices=[c.value for c in SuspendClock],
        default=SuspendClock.MONOTONIC.value,
        help="what a suspended node's clock does (the clockstop fault): monotonic stops, as "
        "time.monotonic() does across suspend; boottime keeps counting, as CLOCK_BOOTTIME does",
    )
    parser.add_argument(
        "--serving",
        action="store_true",
        help="print each seed's serving fraction (time some node could serve, over the time "
        "a majority was up and connected)",
    )
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument("--trace", action="store_true", help="print the event trace of each seed")
    return parser.parse_args(argv)


def options_from(args: argparse.Namespace) -> Options:
    faults = frozenset() if args.faults == "none" else frozenset(args.faults.split(","))
    unknown = faults - KNOWN_FAULTS
    if unknown:
        raise SystemExit(f"unknown faults: {', '.join(sorted(unknown))}")
    switches = [s for s in args.unsafe.split(",") if s]
    bad = [s for s in switches if s not in UnsafeSwitches.__slots__]
    if bad:
        raise SystemExit(f"unknown unsafe switches: {', '.join(bad)}")
    if args.scenario is not None and (args.nodes is not None or args.profile is not None):
        raise SystemExit(f"--scenario {args.scenario} sets the cluster size and profile itself")
    return Options(
        nodes=args.nodes,
        profile=args.profile,
        faults=faults,
        read_mode=ReadMode(args.read_mode) if args.read_mode else None,
        unsafe=UnsafeSwitches(**{s: True for s in switches}),
        scenario=args.scenario,
        suspend_clock=SuspendClock(args.suspend_clock),
    )


def replay_command(seed: int, args: argparse.Namespace) -> str:
    parts = ["python -m tests.simulation", f"--start {seed}", "--seeds 1", "--trace"]
    for flag in ("nodes", "profile", "read_mode"):
        value = getattr(args, flag)
        if value is not None:
            parts.append(f"--{flag.replace('_', '-')} {value}")
    if args.faults != ",".join(sorted(ALL_FAULTS)):
        parts.append(f"--faults {args.faults}")
    if args.unsafe:
        parts.append(f"--unsafe {args.unsafe}")
    if args.scenario is not None:
        parts.append(f"--scenario {args.scenario}")
    if args.suspend_clock != SuspendClock.MONOTONIC.value:
        parts.append(f"--suspend-clock {args.suspend_clock}")
    return " ".join(parts)


def format_fraction(fraction: float | None) -> str:
    return "n/a" if fraction is None else f"{fraction:.2%}"


def serving_summary(outcomes: list[SeedOutcome]) -> str:
    measured = [o.serving_fraction for o in outcomes if o.serving_fraction is not None]
    if not measured:
        return "serving fraction: never measured (no majority up and connected while serving)"
    return (
        f"serving fraction (some node could serve / a majority up and connected): "
        f"min {min(measured):.2%}, median {statistics.median(measured):.2%}, "
        f"mean {statistics.fmean(measured):.2%} over {len(measured)} seeds"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    options = options_from(args)
    seeds = range(args.start, args.start + args.seeds)
    started = time.monotonic()
    if args.trace:
        any_failed = False
        for seed in seeds:
            scenario = scenario_for(seed, options)
            result = run_scenario(scenario, trace=True)
            print("\n".join(result.trace or []))
            print(f"serving fraction {format_fraction(result.serving_fraction)}")
            print(scenario.describe(), "OK" if result.ok else f"FAILED: {result.failure}")
            any_failed = any_failed or not result.ok
        return 1 if any_failed else 0
    outcomes = run_seeds(seeds, options, args.jobs)
    failed = [o for o in outcomes if not o.ok]
    for outcome in failed:
        headline = outcome.failure.splitlines()[0] if outcome.failure else "failed"
        print(f"seed {outcome.seed} FAILED ({outcome.description}): {headline}")
        print(f"  replay: {replay_command(outcome.seed, args)}")
    if args.serving or args.scenario is not None:
        for outcome in outcomes:
            print(f"seed {outcome.seed} serving {format_fraction(outcome.serving_fraction)}")
    print(serving_summary(outcomes))
    operations = sum(o.operations for o in outcomes)
    elapsed = time.monotonic() - started
    print(f"{operations} client operations checked in {elapsed:.1f}s")
    print(f"{len(outcomes) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
