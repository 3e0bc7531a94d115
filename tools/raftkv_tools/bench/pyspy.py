"""Sampling profiles of a node under load with py-spy (optional: `pip install py-spy`).

`record(pid, seconds, path)` runs `py-spy record --format raw` (collapsed stacks, one
"frame;frame;… count" line per distinct stack) and `summarize(path)` turns it into the two
views worth acting on: *self* time (the innermost frame of each sample: where the CPU actually
was) and *inclusive* time (every function on the stack, counted once per sample), each as % of
all samples. By default py-spy samples without pausing the process (`--nonblocking`) and sees
only Python frames, so time inside C (gRPC's core, protobuf's upb, fsync) is charged to the
Python function that called it; `native=True` pauses the process for each sample and also
unwinds C frames.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

# Frames that only say "the event loop ran something": useless in an inclusive ranking.
_PLUMBING = {
    "<module>",
    "_run_module_as_main",
    "_run_code",
    "run",
    "Runner.run",
    "BaseEventLoop.run_until_complete",
    "BaseEventLoop.run_forever",
    "BaseEventLoop._run_once",
    "Handle._run",
    "main",
    "Thread._bootstrap",
    "Thread._bootstrap_inner",
    "Thread.run",
    "_worker",
}
# A sample whose innermost frame is one of these, or whose stack passes through one of the
# markers, is a thread waiting rather than working (the event loop in epoll, an executor thread
# waiting for work); native frames included.
_WAITING_LEAVES = {
    "EpollSelector.select",
    "select",
    "poll",
    "Condition.wait",
    "Event.wait",
    "_worker",
    "epoll_wait",
    "pthread_cond_timedwait",
    "pthread_cond_wait",
}
_WAITING_MARKERS = {"EpollSelector.select", "_queue_SimpleQueue_get", "SimpleQueue.get"}
NOTE = (
    "Python-only sampling: time in C/Cython is charged to the innermost Python frame, so "
    "`Handle._run` as *self* time is work in callbacks written in C/Cython: gRPC's cygrpc "
    "(call set-up, (de)serialization) and asyncio's C Task.step. `Thread.run` of "
    "`Thread-N (_poll_wrapper)` is gRPC's poller thread, mostly in epoll_wait. --native "
    "resolves C frames (cygrpc without symbols) but pauses the node for every sample."
)
DEFAULT_RATE = 200


class PySpyError(RuntimeError):
    pass


def binary() -> str:
    candidates = [Path(sys.executable).with_name("py-spy"), shutil.which("py-spy")]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return str(candidate)
    raise PySpyError("py-spy is not installed (`.venv/bin/pip install py-spy`)")


def record(
    pid: int, seconds: float, output: Path, *, rate: int = 200, native: bool = False
) -> subprocess.Popen[str]:
    """Start sampling `pid` for `seconds` in the background; wait() on the result."""
    command = [
        binary(), "record",
        "--pid", str(pid),
        "--duration", str(max(1, round(seconds))),
        "--rate", str(rate),
        "--format", "raw",
        "--output", str(output),
        "--function",  # aggregate by function, not by line
        "--threads",
    ]  # fmt: skip
    command.append("--native" if native else "--nonblocking")
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _name(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    return f"{match.group('func')} ({match.group('file')})"


def _function(name: str) -> str:
    return name.split(" (", 1)[0]


@dataclass
class ThreadProfile:
    samples: int = 0
    waiting: int = 0
    self_counts: Counter[str] = field(default_factory=Counter)
    inclusive_counts: Counter[str] = field(default_factory=Counter)


@dataclass
class Profile:
    """Samples per thread; every percentage is of wall-clock time (≈ % of one core)."""

    seconds: float
    rate: int
    threads: dict[str, ThreadProfile] = field(default_factory=dict)

    @property
    def expected(self) -> float:
        return max(1.0, self.seconds * self.rate)

    def percent(self, count: int) -> float:
        return 100.0 * count / self.expected

    def busy_threads(self, minimum: float = 3.0) -> list[tuple[str, ThreadProfile]]:
        ranked = sorted(self.threads.items(), key=lambda item: -(item[1].samples - item[1].waiting))
        return [(n, t) for n, t in ranked if self.percent(t.samples - t.waiting) >= minimum]

    def top_self(self, thread: ThreadProfile, count: int = 15) -> list[tuple[str, float]]:
        return [(n, self.percent(c)) for n, c in thread.self_counts.most_common(count)]

    def top_inclusive(self, thread: ThreadProfile, count: int = 15) -> list[tuple[str, float]]:
        result = []
        for name, hits in thread.inclusive_counts.most_common():
            if _function(name) in _PLUMBING:
                continue
            result.append((name, self.percent(hits)))
            if len(result) == count:
                break
        return result

    def to_json(self, count: int = 20) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "rate_hz": self.rate,
            "threads": {
                name: {
                    "busy_percent_of_wall": round(self.percent(t.samples - t.waiting), 1),
                    "waiting_percent_of_wall": round(self.percent(t.waiting), 1),
                    "self": [
                        {"function": n, "percent": round(p, 1)} for n, p in self.top_self(t, count)
                    ],
                    "inclusive": [
                        {"function": n, "percent": round(p, 1)}
                        for n, p in self.top_inclusive(t, count)
                    ],
                }
                for name, t in self.busy_threads(0.0)
            },
        }

    def render(self, title: str, count: int = 12) -> str:
        lines = [f"{title} ({self.seconds:g} s at {self.rate} Hz; % of wall time ≈ % of a core)"]
        for name, thread in self.busy_threads():
            lines.append(
                f"  thread {name}: busy {self.percent(thread.samples - thread.waiting):.0f}%"
                f" (idle-waiting samples excluded: {self.percent(thread.waiting):.0f}%)"
            )
            lines.append("    self time: where the CPU was" + " " * 33 + "%")
            for function, percent in self.top_self(thread, count):
                lines.append(f"      {function[:62]:<62} {percent:5.1f}")
            lines.append("    inclusive: the function and its callees" + " " * 22 + "%")
            for function, percent in self.top_inclusive(thread, count):
                lines.append(f"      {function[:62]:<62} {percent:5.1f}")
        return "\n".join(lines)


def summarize(path: Path, seconds: float, rate: int = DEFAULT_RATE) -> Profile:
    profile = Profile(seconds=seconds, rate=rate)
    names: dict[str, str] = {}
    rows: list[tuple[str, list[str], int]] = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = [f.strip() for f in stack.split(";") if f.strip()]
        thread = "?"
        if frames and frames[0].startswith("thread ("):
            head = frames.pop(0)
            tid, _, name = head.partition(": ")
            thread = tid
            if name:
                names[tid] = name
        rows.append((thread, [_name(f) for f in frames], int(count_text)))
    for thread, frames, count in rows:
        label = names.get(thread, thread)
        profile_thread = profile.threads.setdefault(label, ThreadProfile())
        profile_thread.samples += count
        functions = {_function(f) for f in frames}
        if not frames or _function(frames[-1]) in _WAITING_LEAVES or functions & _WAITING_MARKERS:
            profile_thread.waiting += count
            continue
        profile_thread.self_counts[frames[-1]] += count
        for name in set(frames):
            profile_thread.inclusive_counts[name] += count
    return profile
