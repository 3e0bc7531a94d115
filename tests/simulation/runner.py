"""Running many seeds, in worker processes: importable, so that spawned workers find it."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from raftkv.core.config import ReadMode
from raftkv.core.node import UnsafeSwitches

from .cluster import (
    ONE_WAY_CUT,
    Scenario,
    SuspendClock,
    make_scenario,
    one_way_cut_scenario,
    run_scenario,
)


@dataclass(frozen=True)
class Options:
    nodes: int | None
    profile: str | None
    faults: frozenset[str]
    read_mode: ReadMode | None
    unsafe: UnsafeSwitches
    # A named scenario (cluster.SCENARIOS) instead of drawn ones: it fixes nodes, profile and
    # faults itself.
    scenario: str | None = None
    suspend_clock: SuspendClock = SuspendClock.MONOTONIC


@dataclass(frozen=True)
class SeedOutcome:
    seed: int
    ok: bool
    description: str
    failure: str
    operations: int
    serving_fraction: float | None = None


def scenario_for(seed: int, options: Options) -> Scenario:
    if options.scenario == ONE_WAY_CUT:
        return one_way_cut_scenario(seed, read_mode=options.read_mode, unsafe=options.unsafe)
    if options.scenario is not None:
        raise ValueError(f"unknown scenario {options.scenario!r}")
    return make_scenario(
        seed,
        nodes=options.nodes,
        profile=options.profile,
        faults=options.faults,
        read_mode=options.read_mode,
        unsafe=options.unsafe,
        suspend_clock=options.suspend_clock,
    )


def run_seed(seed: int, options: Options) -> SeedOutcome:
    scenario = scenario_for(seed, options)
    result = run_scenario(scenario)
    return SeedOutcome(
        seed,
        result.ok,
        scenario.describe(),
        result.failure,
        result.operations,
        result.serving_fraction,
    )


def run_seeds(seeds: range, options: Options, jobs: int) -> list[SeedOutcome]:
    if jobs <= 1:
        return [run_seed(seed, options) for seed in seeds]
    # "spawn": a worker forked from a busy parent (pytest after gRPC tests, with its threads)
    # crawled; a fresh interpreter per worker does not inherit any of that.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        return list(pool.map(run_seed, seeds, [options] * len(seeds), chunksize=4))
