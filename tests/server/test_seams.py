"""Test seams on a real `raftkv-node` process: each one is refused unless --allow-unsafe
acknowledges it, and is then named in the dump's UNSAFE line; a bad RAFTKV_CLOCK_RATE is
refused with a message that names it. Also the rest of the start-up lines: the lease clock
the node reads, and its check of the host's time service.

The node is one of a two-node cluster whose other member never starts: it never elects, so it
writes nothing to its log (a failpoint never fires) and runs until it is stopped.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from raftkv.cluster import PEER_PORT_OFFSET
from raftkv.core.node import UnsafeSwitches
from raftkv.server.dump import DUMP_FILE
from raftkv.server.launch import PYTHON_MODULE, NodeLaunch
from raftkv.server.replica import Clock
from raftkv.server.seams import unsafe_flag
from raftkv.server.storage import FAILPOINT_LOG_WRITE, node_data_dir
from raftkv_tools.certs import issue as issue_certificates
from raftkv_tools.certs import local_nodes
from raftkv_tools.ports import free_ports

START_TIMEOUT = 30.0
CLOCK_RATE_MARK = "Node 0 clock rate "  # the time-service check's dump line, the last at start
Start = Callable[[Sequence[str], Mapping[str, str]], list[str]]
UNSAFE_LINE = re.compile(r"^\S+ Node 0 UNSAFE test switches on: (?P<names>.*)\.$")

# (flags, environment, the name in the UNSAFE line, how the refusal names it)
SEAMS = [
    *(([unsafe_flag(name)], {}, name, unsafe_flag(name)) for name in UnsafeSwitches.__slots__),
    (["--unsafe-no-fsync"], {}, "no_fsync", "--unsafe-no-fsync"),
    ([], {"RAFTKV_CLOCK_RATE": "0.3"}, "clock_rate=0.3", "RAFTKV_CLOCK_RATE=0.3"),
    (
        [],
        {"RAFTKV_FAILPOINT": FAILPOINT_LOG_WRITE},
        f"failpoint={FAILPOINT_LOG_WRITE}",
        f"RAFTKV_FAILPOINT={FAILPOINT_LOG_WRITE}",
    ),
    (["--insecure-peers"], {}, "insecure_peers", "--insecure-peers"),
    (
        [],
        {"RAFTKV_TEST_SESSION_LIFETIME_MS": "2000"},
        "session_lifetime_ms=2000",
        "RAFTKV_TEST_SESSION_LIFETIME_MS=2000",
    ),
]
SEAM_IDS = [seam[2].split("=")[0] for seam in SEAMS]


def node_command(data_dir: Path, *flags: str) -> list[str]:
    ports = free_ports(2, offsets=(0, PEER_PORT_OFFSET))
    certs = None
    if "--insecure-peers" not in flags:
        certs = data_dir / "tls"
        issue_certificates(certs, local_nodes(2))
    spec = NodeLaunch(
        0,
        peers=[f"127.0.0.1:{port}" for port in ports],
        data_dir=data_dir,
        quiet=True,
        certs=certs,
    )
    return [*spec.command(PYTHON_MODULE), *flags]


def clean_environment(extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAFTKV_")}
    return {**env, **extra}


def refused(data_dir: Path, flags: Sequence[str], env: Mapping[str, str]) -> tuple[int, str]:
    result = subprocess.run(
        node_command(data_dir, *flags),
        env=clean_environment(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
        check=False,
    )
    return result.returncode, result.stderr


@pytest.fixture
def started(tmp_path: Path) -> Iterator[Start]:
    processes: list[subprocess.Popen[bytes]] = []

    def start(flags: Sequence[str], env: Mapping[str, str]) -> list[str]:
        """Start the node, wait for its start-up lines (the last is the time-service check's),
        return its dump from the first. Its stderr goes to tmp_path/node-<n>.err, n counting
        the starts from 0."""
        stderr = tmp_path / f"node-{len(processes)}.err"
        with stderr.open("wb") as sink:
            process = subprocess.Popen(
                node_command(tmp_path, *flags),
                env=clean_environment(env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=sink,
            )
        processes.append(process)
        dump = node_data_dir(tmp_path, 0) / DUMP_FILE
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert process.poll() is None, stderr.read_text()
            lines = dump.read_text().splitlines() if dump.exists() else []
            starting = [i for i, line in enumerate(lines) if " starting at " in line]
            if starting and any(CLOCK_RATE_MARK in line for line in lines[starting[0] :]):
                return lines[starting[0] :]
            time.sleep(0.05)
        raise AssertionError(f"no start-up lines in {dump} after {START_TIMEOUT}s")

    yield start
    for process in processes:
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.parametrize(("flags", "env", "name", "given"), SEAMS, ids=SEAM_IDS)
def test_a_seam_without_acknowledgement_is_refused(
    tmp_path: Path, flags: list[str], env: dict[str, str], name: str, given: str
) -> None:
    status, stderr = refused(tmp_path, flags, env)
    assert status == 2, stderr
    assert stderr.strip() == (
        f"raftkv-node: refusing to start with test-only seams that break safety: {given}; "
        "add --allow-unsafe to acknowledge (tests and negative controls only)"
    )
    assert not (node_data_dir(tmp_path, 0) / DUMP_FILE).exists()


@pytest.mark.parametrize(("flags", "env", "name", "given"), SEAMS, ids=SEAM_IDS)
def test_an_acknowledged_seam_starts_and_is_named_in_the_dump(
    started: Start, flags: list[str], env: dict[str, str], name: str, given: str
) -> None:
    lines = started([*flags, "--allow-unsafe"], env)
    match = UNSAFE_LINE.match(lines[1])
    assert match is not None, lines[:2]
    assert match.group("names") == name


def test_every_seam_at_once_is_refused_by_name_and_named_in_one_line(
    tmp_path: Path, started: Start
) -> None:
    flags = [flag for seam in SEAMS for flag in seam[0]]
    env = {k: v for seam in SEAMS for k, v in seam[1].items()}
    status, stderr = refused(tmp_path, flags, env)
    assert status == 2
    for seam in SEAMS:
        assert seam[3] in stderr
    lines = started([*flags, "--allow-unsafe"], env)
    match = UNSAFE_LINE.match(lines[1])
    assert match is not None, lines[:2]
    assert match.group("names").split(", ") == [seam[2] for seam in SEAMS]


@pytest.mark.parametrize("rate", ["0", "-1", "nan", "inf", "abc", ""])
def test_a_bad_clock_rate_is_refused_naming_the_variable(tmp_path: Path, rate: str) -> None:
    # Even when acknowledged: the node cannot run on such a clock.
    status, stderr = refused(tmp_path, ["--allow-unsafe"], {"RAFTKV_CLOCK_RATE": rate})
    assert status == 2, stderr
    assert stderr.strip() == (
        f"raftkv-node: RAFTKV_CLOCK_RATE={rate!r} is not a usable clock rate: "
        "it must be a finite number above 0 (1 = real time)"
    )


@pytest.mark.parametrize("lifetime", ["0", "1.5", "abc"])
def test_a_bad_session_lifetime_is_refused_naming_the_variable(
    tmp_path: Path, lifetime: str
) -> None:
    status, stderr = refused(
        tmp_path, ["--allow-unsafe"], {"RAFTKV_TEST_SESSION_LIFETIME_MS": lifetime}
    )
    assert status == 2, stderr
    assert stderr.strip() == (
        f"raftkv-node: RAFTKV_TEST_SESSION_LIFETIME_MS={lifetime!r} is not a usable session "
        "lifetime: it must be a whole number of milliseconds above 0"
    )


@pytest.mark.parametrize(
    ("flags", "env"),
    [([], {}), ([], {"RAFTKV_CLOCK_RATE": "1"}), (["--allow-unsafe"], {})],
    ids=["plain", "clock-rate-1", "acknowledged-but-no-seam"],
)
def test_a_node_without_seams_has_no_unsafe_line(
    started: Start, flags: list[str], env: dict[str, str]
) -> None:
    lines = started(flags, env)
    assert not [line for line in lines if "UNSAFE" in line], lines


def test_the_start_up_lines_name_the_lease_clock_and_check_the_time_service(
    started: Start, tmp_path: Path
) -> None:
    lines = started([], {})
    assert lines[0].endswith(f", clock {Clock().name}."), lines[0]
    (check,) = [line for line in lines if CLOCK_RATE_MARK in line]
    detail = check.split(": ", 1)[1]
    # Whatever this host's time service, a warning kind also goes to stderr, word for word.
    warned = "WARNING" in check
    assert warned == (" clock rate bounded: " not in check), check
    errors = (tmp_path / "node-0.err").read_text().splitlines()
    warnings = [line for line in errors if ": warning: clock rate " in line]
    if warned:
        assert len(warnings) == 1 and warnings[0].endswith(f": {detail}"), errors
    else:
        assert warnings == [], errors
