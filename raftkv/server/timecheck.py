"""Does the host's time service keep this node's clock rate within 1 ± ρ? (docs/design.md §3)

Leases assume every node's clock runs within `1 ± ρ` of real time (ρ is `max_clock_drift`).
A time service keeps the clock near real time by *slewing* it: to remove an offset it runs the
clock fast or slow on purpose, and CLOCK_BOOTTIME and CLOCK_MONOTONIC follow (only steps of the
wall clock leave them alone). chrony bounds the slew with `maxslewrate`, in ppm; its default,
83333.333 ppm (8.3 %), is far beyond ρ = 1 % = 10000 ppm. The node runs this check once at
start, writes its outcome to the dump, warns on stderr when the rate is not known to be bounded,
and starts either way.

Outcomes (`Outcome`):

- BOUNDED: chronyd runs, and its `maxslewrate` is at most ρ.
- UNBOUNDED: chronyd runs, and may slew faster than ρ allows (no `maxslewrate`, or one above
  ρ): the warning names the file and the line to add.
- UNKNOWN: another time service runs (systemd-timesyncd, ntpd: their bounds cannot be read
  here), none is seen (in a container the host's disciplines this clock), or chrony's
  configuration cannot be read: the warning says what to check.

What is read, none of it needing root. Whether chronyd runs: the names of the running
processes (/proc/PID/comm); when /proc hides other users' processes (systemd's ProtectProc,
which the deployed unit sets), chronyd's pid file; when that is out of reach too (Debian's
/run/chrony is closed to other users), `chronyc -n tracking`, which asks chronyd over
127.0.0.1:323 (in a container that shares its host's network, that may be the host's chronyd).
Which configuration: chronyd's `-f FILE` (/proc/PID/cmdline), else /etc/chrony/chrony.conf
(Debian) or /etc/chrony.conf, with the files it pulls in by `include` (glob patterns) and
`confdir` (*.conf from each directory, by file name, the first directory winning a name), in
chronyd's order, the last `maxslewrate` counting. `sourcedir` files hold only time sources,
never `maxslewrate`, so they are not read.

`assess` is pure and `read_chrony_config` reads only the files it is pointed to; `check_host`
gathers the facts from the real paths and programs (or those a test gives it).
"""

from __future__ import annotations

import enum
import glob
import math
import os
import shutil
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CHRONY_DEFAULT_MAXSLEWRATE",
    "DEFAULT_CHRONY_CONFS",
    "DEFAULT_CHRONY_PIDFILES",
    "ChronyConfig",
    "Outcome",
    "TimeServiceCheck",
    "assess",
    "check_host",
    "chrony_config_argument",
    "chronyc_reaches_chronyd",
    "read_chrony_config",
    "running_time_services",
    "suggested_maxslewrate",
]

# chrony's maxslewrate when none is set (ppm): 1/12 of the clock's rate.
CHRONY_DEFAULT_MAXSLEWRATE = 83333.333
# What an UNBOUNDED warning suggests (ppm), at most a tenth of ρ; the Ansible role sets the same.
SUGGESTED_MAXSLEWRATE = 500.0
DEFAULT_CHRONY_CONFS = (Path("/etc/chrony/chrony.conf"), Path("/etc/chrony.conf"))
DEFAULT_CHRONY_PIDFILES = (Path("/run/chrony/chronyd.pid"), Path("/run/chronyd.pid"))
# chrony's own limit on nested include/confdir levels.
MAX_INCLUDE_DEPTH = 10
# How long `chronyc -n tracking` may take (it answers at once, or fails at once without chronyd).
CHRONYC_TIMEOUT = 3.0

CHRONYD = "chronyd"
# A process's comm (at most 15 characters) -> the time service it is.
TIME_SERVICE_COMMS = {
    "chronyd": CHRONYD,
    "systemd-timesyn": "systemd-timesyncd",
    "ntpd": "ntpd",
}
_COMMENT_STARTS = "!;#%"


class Outcome(enum.Enum):
    BOUNDED = "bounded"
    UNBOUNDED = "unbounded"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class TimeServiceCheck:
    """The outcome and the sentence that explains it."""

    outcome: Outcome
    detail: str

    @property
    def warning(self) -> bool:
        """True unless the clock's rate is known to be bounded within ρ."""
        return self.outcome is not Outcome.BOUNDED

    def dump_line(self, node_id: int) -> str:
        if self.warning:
            return f"Node {node_id} clock rate WARNING ({self.outcome.value}): {self.detail}"
        return f"Node {node_id} clock rate {self.outcome.value}: {self.detail}"

    def stderr_line(self, node_id: int) -> str:
        what = f"clock rate {self.outcome.value}"
        return f"raftkv-node: node {node_id}: warning: {what}: {self.detail}"


@dataclass(frozen=True)
class ChronyConfig:
    """What chrony's configuration says about the slew rate, from `read_chrony_config`."""

    path: Path  # the main file
    maxslewrate: float | None = None  # the last setting (ppm); None: chrony's default
    setting: str | None = None  # where that setting is: "FILE:LINE"
    pidfile: Path | None = None  # a `pidfile` directive
    problem: str | None = None  # why the configuration could not be read whole


def _ppm(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".")


def suggested_maxslewrate(rho: float) -> float:
    """A maxslewrate well within ρ: 500 ppm, or a tenth of ρ when that is less."""
    return min(SUGGESTED_MAXSLEWRATE, rho * 1e6 / 10)


class _ChronyReader:
    """Reads a configuration as chronyd does: line by line, each include where it stands."""

    def __init__(self) -> None:
        self.maxslewrate: float | None = None
        self.setting: str | None = None
        self.pidfile: Path | None = None
        self.problem: str | None = None
        self._open: list[Path] = []

    def _fail(self, problem: str) -> None:
        if self.problem is None:
            self.problem = problem

    def read(self, path: Path, *, required: bool) -> None:
        if len(self._open) >= MAX_INCLUDE_DEPTH or path in self._open:
            self._fail(f"{path} is included more than {MAX_INCLUDE_DEPTH} levels deep")
            return
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            # chronyd skips an include that is gone; without its main file it reads another.
            if required:
                self._fail(f"{path} does not exist")
            return
        except OSError as error:
            self._fail(f"{path} cannot be read ({error.strerror or error})")
            return
        self._open.append(path)
        try:
            for number, line in enumerate(text.splitlines(), start=1):
                self._line(path, number, line)
        finally:
            self._open.pop()

    def _line(self, path: Path, number: int, line: str) -> None:
        words = line.split()
        if not words or words[0][0] in _COMMENT_STARTS:
            return
        directive, arguments = words[0].lower(), words[1:]  # chronyd ignores the case
        if directive == "maxslewrate":
            try:
                (value,) = (float(argument) for argument in arguments)
            except ValueError:  # not a number, or not exactly one: chronyd refuses to start
                value = math.nan
            if not value >= 0:
                self._fail(f"{path}:{number} has an unreadable maxslewrate ({line.strip()!r})")
                return
            self.maxslewrate, self.setting = value, f"{path}:{number}"
        elif directive == "pidfile" and arguments:
            self.pidfile = Path(arguments[0])
        elif directive == "include" and arguments:
            for match in sorted(glob.glob(str(_absolute(arguments[0])))):
                self.read(Path(match), required=False)
        elif directive == "confdir":
            for file in _confdir_files(_absolute(argument) for argument in arguments):
                self.read(file, required=False)


def _absolute(name: str) -> Path:
    """chronyd runs in /, so a relative name in its configuration is relative to /."""
    return Path("/") / name


def _confdir_files(directories: Iterable[Path]) -> list[Path]:
    """The *.conf files of `confdir DIR...`: by file name; a name in several, the first DIR's."""
    chosen: dict[str, Path] = {}
    for directory in directories:
        try:
            names = sorted(entry.name for entry in os.scandir(directory) if entry.is_file())
        except OSError:
            continue
        for name in names:
            if name.endswith(".conf"):
                chosen.setdefault(name, directory / name)
    return [chosen[name] for name in sorted(chosen)]


def read_chrony_config(path: Path) -> ChronyConfig:
    """chrony's configuration in `path` and the files it includes, as chronyd reads it."""
    reader = _ChronyReader()
    reader.read(path, required=True)
    return ChronyConfig(path, reader.maxslewrate, reader.setting, reader.pidfile, reader.problem)


def running_time_services(proc: Path = Path("/proc")) -> dict[str, list[int]]:
    """The time services running, as far as /proc shows them: name -> pids."""
    found: dict[str, list[int]] = {}
    try:
        entries = [entry for entry in os.scandir(proc) if entry.name.isdigit()]
    except OSError:
        return found
    for entry in entries:
        try:
            comm = (Path(entry.path) / "comm").read_text().strip()
        except OSError:  # the process ended, or is hidden
            continue
        service = TIME_SERVICE_COMMS.get(comm)
        if service is not None:
            found.setdefault(service, []).append(int(entry.name))
    return found


def chrony_config_argument(argv: Sequence[str]) -> Path | None:
    """The FILE of chronyd's `-f FILE` (or `-fFILE`) in its command line, if any."""
    for index, argument in enumerate(argv[1:], start=1):
        if argument == "-f" and index + 1 < len(argv):
            return Path(argv[index + 1])
        if argument.startswith("-f") and len(argument) > 2:
            return Path(argument[2:])
    return None


def _command_line(proc: Path, pid: int) -> list[str]:
    try:
        raw = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


def _pidfile_alive(pidfiles: Iterable[Path], alive: Callable[[int], bool]) -> bool:
    for pidfile in pidfiles:
        try:
            pid = int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        if pid > 0 and alive(pid):
            return True
    return False


def chronyc_reaches_chronyd() -> bool:
    """Whether `chronyc -n tracking` gets an answer from a chronyd (False without chronyc)."""
    chronyc = shutil.which("chronyc")
    if chronyc is None:
        return False
    try:
        result = subprocess.run(
            [chronyc, "-n", "tracking"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=CHRONYC_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def assess(rho: float, running: Iterable[str], chrony: ChronyConfig) -> TimeServiceCheck:
    """The outcome for bound ρ, given the time services running and chrony's configuration."""
    bound = _ppm(rho * 1e6)
    limit = f"max drift {rho} ({bound} ppm)"
    services = set(running)
    others = sorted(services - {CHRONYD})
    if others:
        seen = ", ".join(sorted(services))
        return TimeServiceCheck(
            Outcome.UNKNOWN,
            f"{seen} running here; this node cannot read how fast {' or '.join(others)} may "
            f"slew the clock. Check that it stays within {limit}, or use chrony alone with "
            f"maxslewrate at most {bound}.",
        )
    if CHRONYD not in services:
        return TimeServiceCheck(
            Outcome.UNKNOWN,
            "no time service (chronyd, systemd-timesyncd, ntpd) seen running here, so this "
            f"node cannot tell whether the clock's rate stays within {limit}. In a container "
            f"the host's time service disciplines this clock: check that it slews at most "
            f"{bound} ppm (chrony: maxslewrate).",
        )
    if chrony.problem is not None:
        return TimeServiceCheck(
            Outcome.UNKNOWN,
            f"chronyd runs, but {chrony.problem}: check that its maxslewrate is at most "
            f"{bound} ppm, for max drift {rho}.",
        )
    rate = chrony.maxslewrate
    if rate is not None and rate <= rho * 1e6:
        return TimeServiceCheck(
            Outcome.BOUNDED,
            f"chronyd slews at most {_ppm(rate)} ppm (maxslewrate, {chrony.setting}), "
            f"within {limit}.",
        )
    line = f"maxslewrate {_ppm(suggested_maxslewrate(rho))}"
    if rate is None:
        what = f"{_ppm(CHRONY_DEFAULT_MAXSLEWRATE)} ppm (chrony's default: no maxslewrate in "
        what += f"{chrony.path} or the files it includes)"
        fix = f'Add "{line}" to {chrony.path}'
    else:
        what = f"{_ppm(rate)} ppm (maxslewrate, {chrony.setting})"
        fix = f'Change it to "{line}"'
    return TimeServiceCheck(
        Outcome.UNBOUNDED,
        f"chronyd may slew the clock at up to {what}, beyond {limit}: lease reads can be "
        f"stale. {fix} and restart chrony.",
    )


def check_host(
    rho: float,
    chrony_conf: Path | None = None,
    *,
    proc: Path = Path("/proc"),
    default_confs: Sequence[Path] = DEFAULT_CHRONY_CONFS,
    pidfiles: Sequence[Path] = DEFAULT_CHRONY_PIDFILES,
    alive: Callable[[int], bool] = _alive,
    chronyc: Callable[[], bool] = chronyc_reaches_chronyd,
) -> TimeServiceCheck:
    """Gathers from this host what `assess` needs, and assesses it.

    chronyd runs if /proc shows it, else if a pid file names a live process, else if `chronyc`
    reaches it. chrony's configuration is read from `chrony_conf` if given, else from running
    chronyd's `-f`, else from the first of `default_confs` that exists (the first if none does).
    """
    services = running_time_services(proc)
    path = chrony_conf
    if path is None:
        given = (chrony_config_argument(_command_line(proc, p)) for p in services.get(CHRONYD, []))
        path = next((argument for argument in given if argument is not None), None)
    if path is None:
        path = next((p for p in default_confs if p.exists()), default_confs[0])
    chrony = read_chrony_config(path)
    running = set(services)
    if CHRONYD not in running:
        named = [chrony.pidfile] if chrony.pidfile is not None else []
        if _pidfile_alive([*named, *pidfiles], alive) or chronyc():
            running.add(CHRONYD)
    return assess(rho, running, chrony)
