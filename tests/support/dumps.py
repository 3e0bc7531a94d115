"""Reading a node's dump.txt in tests: each line's time and text, and the core event it is.

Tests match on the core's event classes (raftkv/core/events.py), never on copied sentences: a
changed sentence then fails in one place, the class, instead of silently matching nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from raftkv.core import events
from raftkv.core.events import Event


@dataclass(frozen=True)
class DumpEvent:
    when: float  # wall-clock time of the line, as a Unix timestamp
    text: str

    @property
    def event(self) -> Event | None:
        """The core event this line reports, or None for a shell line."""
        return events.parse(self.text)


def dump_lines(path: Path) -> list[str]:
    """The complete lines of a dump file (a line still being written has no newline yet)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    return text.split("\n")[:-1]


def dump_events(path: Path) -> list[DumpEvent]:
    """Every stamped line of a dump file, in order."""
    parsed = []
    for line in dump_lines(path):
        stamp, _, text = line.partition(" ")
        try:
            when = datetime.fromisoformat(stamp).timestamp()
        except ValueError:
            continue
        parsed.append(DumpEvent(when, text))
    return parsed


def core_events(path: Path) -> list[Event]:
    """The core events of a dump file, in order."""
    return [e for e in (d.event for d in dump_events(path)) if e is not None]
