"""Linearizability checker for histories of per-key read/write registers.

Each key is modelled as an independent register holding ``str | None`` (``None`` means the
key is absent). A delete is a write of ``None``: afterwards the key is absent and a get
returns None. Linearizability is local (Herlihy & Wing), so a history is linearizable
iff the sub-history of every key is, and each key is checked on its own.

The per-key search is the Wing & Gong algorithm with Lowe's memoisation ("Testing for
linearizability", 2017), the same design as the Porcupine checker: operations' invoke and
complete events sit in one time-ordered doubly linked list; an operation may be linearized
next if its invoke event comes before the first remaining complete event, and linearizing
it unlinks both of its events. A configuration (set of linearized operations, register
value) that has been explored once is never explored again. The search is an explicit
stack, so it never recurses, whatever the history length.

Pruning rules, each provably safe, keep typical histories close to linear time:

* A pending read that matches the current register value is linearized at once, without
  trying alternatives: it can be moved to the front of any linearization of the remaining
  operations (it changes no state and nothing remaining must precede it).
* Otherwise a pending required write whose value no remaining read returns is linearized at
  once: in any linearization it is followed by a write (or nothing), so it can be moved to
  the front. This stops the search from trying every placement of unobserved writes.
* A write is never linearized over a value that remaining reads still return unless some
  remaining write can produce that value again; with unique written values this leaves
  essentially one choice at every step.
* A write whose outcome is unknown (INFO) is never linearized while no remaining read
  returns its value: dropping it from any linearization leaves every read's view unchanged.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

__all__ = [
    "CheckResult",
    "CheckerBudgetExceeded",
    "Operation",
    "Outcome",
    "check_history",
    "check_key",
]

GET = "get"
SET = "set"
DELETE = "delete"
_KINDS = (GET, SET, DELETE)
_PREFIX_LINES_SHOWN = 20


class Outcome(Enum):
    """What the client learned about an operation."""

    OK = "ok"
    """Completed with a known result."""
    FAIL = "fail"
    """Definitely did not take effect."""
    INFO = "info"
    """Unknown (e.g. timeout): may have taken effect at any time after invoke, or never."""


@dataclass(frozen=True, slots=True)
class Operation:
    """One client operation on one key, as observed by the client."""

    process: str
    kind: str
    key: str
    value: str | None
    """For a set: the value written. For a get: the value read (None = absent); only
    meaningful when the outcome is OK. For a delete: None (it writes "absent")."""
    invoke: float
    complete: float | None
    """None when the outcome is INFO (and ignored for INFO operations if given)."""
    outcome: Outcome

    def describe(self) -> str:
        if self.kind == GET:
            action = f"get({self.key!r})" + (
                f" -> {self.value!r}" if self.outcome is Outcome.OK else ""
            )
        elif self.kind == DELETE:
            action = f"delete({self.key!r})"
        else:
            action = f"set({self.key!r}, {self.value!r})"
        complete = "?" if self.outcome is Outcome.INFO or self.complete is None else self.complete
        return f"{self.process}: {action} [{self.invoke}, {complete}] {self.outcome.value}"


@dataclass(frozen=True, slots=True)
class CheckResult:
    ok: bool
    key: str | None
    """The first key (in sorted order) whose history is not linearizable; None if ok."""
    explanation: str
    operations_checked: int


class CheckerBudgetExceeded(RuntimeError):  # noqa: N818 -- name is part of the agreed API
    """The search needed more than ``max_states`` configurations; no verdict was reached."""

    def __init__(self, key: str, max_states: int, operation_count: int) -> None:
        super().__init__(
            f"linearizability check of key {key!r} gave up after exploring {max_states} "
            f"configurations of {operation_count} operations without reaching a verdict; "
            "the history is too concurrent to check exhaustively: raise max_states or "
            "check a shorter history"
        )
        self.key = key
        self.max_states = max_states
        self.operation_count = operation_count


def check_history(
    ops: Iterable[Operation], *, initial: str | None = None, max_states: int = 2_000_000
) -> CheckResult:
    """Check a multi-key history; every key's register starts out holding ``initial``.

    Keys are checked in sorted order and checking stops at the first key that is not
    linearizable. ``max_states`` bounds the search of each key separately.
    """
    all_ops = list(ops)
    for op in all_ops:
        _validate(op)
    by_key: defaultdict[str, list[Operation]] = defaultdict(list)
    for op in all_ops:
        by_key[op.key].append(op)

    checked = 0
    for key in sorted(by_key):
        result = check_key(key, by_key[key], initial=initial, max_states=max_states)
        checked += result.operations_checked
        if not result.ok:
            return CheckResult(False, key, result.explanation, checked)
    return CheckResult(
        True,
        None,
        f"linearizable: {len(by_key)} key(s), {checked} operation(s)",
        checked,
    )


def check_key(
    key: str,
    ops: Sequence[Operation],
    *,
    initial: str | None = None,
    max_states: int = 2_000_000,
) -> CheckResult:
    """Check the history of a single register; every operation must be on ``key``."""
    for op in ops:
        _validate(op)
        if op.key != key:
            raise ValueError(f"check_key({key!r}) was given an operation on another key: {op}")

    read_values = {op.value for op in ops if op.kind == GET and op.outcome is Outcome.OK}
    relevant: list[Operation] = []
    ignored_failures = ignored_unknown_reads = ignored_unread_writes = 0
    for op in ops:
        if op.outcome is Outcome.FAIL:
            ignored_failures += 1
        elif op.outcome is Outcome.INFO and op.kind == GET:
            ignored_unknown_reads += 1
        elif op.outcome is Outcome.INFO and op.value not in read_values:
            # Nobody ever observed this value, so assuming the write never happened is
            # always at least as good as any other choice.
            ignored_unread_writes += 1
        else:
            relevant.append(op)
    relevant.sort(key=lambda op: (op.invoke, math.inf if op.complete is None else op.complete))

    search = _RegisterSearch(relevant, initial, max_states, key)
    if search.run():
        return CheckResult(
            True,
            None,
            f"key {key!r}: linearizable ({len(ops)} operation(s), "
            f"{search.states_explored} configuration(s) explored)",
            len(ops),
        )

    notes = []
    if ignored_failures:
        notes.append(f"{ignored_failures} failed operation(s)")
    if ignored_unknown_reads:
        notes.append(f"{ignored_unknown_reads} read(s) with unknown outcome")
    if ignored_unread_writes:
        notes.append(f"{ignored_unread_writes} unknown-outcome write(s) whose value nobody read")
    ignored = f" (ignored as irrelevant: {', '.join(notes)})" if notes else ""
    explanation = (
        f"key {key!r} is not linearizable: checked {len(ops)} operation(s){ignored}, "
        f"initial value {initial!r}, explored {search.states_explored} configuration(s).\n"
        + search.explain_failure()
    )
    return CheckResult(False, key, explanation, len(ops))


def _validate(op: Operation) -> None:
    if op.kind not in _KINDS:
        raise ValueError(
            f"operation kind must be 'get', 'set' or 'delete', got {op.kind!r}: {op!r}"
        )
    if op.kind == DELETE and op.value is not None:
        raise ValueError(f"a delete writes None (the key is absent), not a value: {op!r}")
    if not isinstance(op.outcome, Outcome):
        raise ValueError(f"operation outcome must be an Outcome, got {op.outcome!r}: {op!r}")
    if not _is_finite_time(op.invoke):
        raise ValueError(f"operation invoke time must be a finite number: {op!r}")
    if op.outcome is Outcome.OK:
        if op.complete is None:
            raise ValueError(f"an OK operation needs a complete time: {op!r}")
        if not _is_finite_time(op.complete):
            raise ValueError(f"operation complete time must be a finite number: {op!r}")
        if op.complete < op.invoke:
            raise ValueError(
                f"operation completed at {op.complete} before it was invoked at {op.invoke}: {op!r}"
            )


def _is_finite_time(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True, slots=True)
class _DeadEnd:
    """Where the search got stuck with the most operations linearized."""

    prefix: tuple[int, ...]
    register: str | None
    pending: tuple[int, ...]
    """Operations that were allowed to go next, none of which led anywhere."""
    blocking: int | None
    """The unlinearized OK operation that completes first: nothing invoked after its
    completion may be linearized before it."""


class _RegisterSearch:
    """Depth-first search for a linearization of one register's history.

    ``ops`` must be sorted by invoke time and contain only operations that matter: OK gets
    and sets (which must be linearized) and INFO sets (which may be).
    """

    def __init__(
        self, ops: list[Operation], initial: str | None, max_states: int, key: str
    ) -> None:
        self.ops = ops
        self.initial = initial
        self.max_states = max_states
        self.key = key
        self.states_explored = 0
        self.dead_end: _DeadEnd | None = None

        count = len(ops)
        # A delete is a write of None (absent); from here on both are "sets".
        self.is_set = [op.kind != GET for op in ops]
        self.required = [op.outcome is Outcome.OK for op in ops]
        self.values = [op.value for op in ops]

        # Invokes sort before completes at equal times: an operation that starts exactly
        # when another finishes is concurrent with it, not after it.
        events = [(op.invoke, 0, index) for index, op in enumerate(ops)]
        events += [
            (op.complete, 1, index)
            for index, op in enumerate(ops)
            if op.outcome is Outcome.OK and op.complete is not None
        ]
        events.sort()
        # Node 0 is the head sentinel and node len(events) + 1 the tail sentinel.
        self.tail: int = len(events) + 1
        self.next_node: list[int] = [*range(1, self.tail + 1), self.tail]
        self.prev_node: list[int] = [0, *range(self.tail)]
        self.node_op: list[int] = [-1] * (self.tail + 1)
        self.node_is_invoke: list[bool] = [False] * (self.tail + 1)
        self.invoke_node: list[int] = [0] * count
        self.complete_node: list[int] = [-1] * count
        for node, (_, is_complete, index) in enumerate(events, start=1):
            self.node_op[node] = index
            if is_complete:
                self.complete_node[index] = node
            else:
                self.node_is_invoke[node] = True
                self.invoke_node[index] = node

        self.register: str | None = initial
        self.linearized = 0  # bitmask of linearized operations
        self.required_left = sum(self.required)
        # Per value, how many unlinearized reads return it and how many unlinearized writes
        # could still produce it: a value with readers but no writers must not be overwritten.
        self.reads_left = Counter(op.value for op in ops if op.kind == GET)
        self.writes_left = Counter(op.value for op in ops if op.kind != GET)
        # Frames are (operation, register value before it, forced). A forced operation was
        # taken without trying alternatives because it is safe to go first, so when it
        # fails, the configuration it was taken from fails too.
        self.stack: list[tuple[int, str | None, bool]] = []
        # Configurations known to lead nowhere: (lowest unlinearized op, linearized bits
        # from there up, register value).
        self.seen: set[tuple[int, int, str | None]] = set()

    def run(self) -> bool:
        """Return whether a linearization exists; on failure, record the deepest dead end.

        Call once: the search consumes the state set up by the constructor.
        """
        next_node, node_op, node_is_invoke = self.next_node, self.node_op, self.node_is_invoke
        is_set, required, values = self.is_set, self.required, self.values

        node = 0
        fresh = True  # a configuration reached by a push, not yet scanned
        while self.required_left:
            if fresh:
                fresh = False
                forced = self._operation_safe_to_take_first()
                if forced >= 0:
                    if self._push(forced, forced=True):
                        fresh = True
                        continue
                    # Taking it first is safe, so if that configuration is a known dead end,
                    # so is this one.
                    node = self._backtrack()
                    if node < 0:
                        return False
                    continue
                node = next_node[0]
            if node_is_invoke[node]:
                index = node_op[node]
                node = next_node[node]
                # No pending read matches the register (it would have been forced), so only
                # writes can go next; INFO writes only while someone can observe them.
                if (
                    is_set[index]
                    and (required[index] or self.reads_left[values[index]] > 0)
                    and self._push(index, forced=False)
                ):
                    fresh = True
                continue
            # Reached a completion before finding a usable invoke: this configuration is done.
            node = self._backtrack()
            if node < 0:
                return False
        return True

    def _operation_safe_to_take_first(self) -> int:
        """A pending operation that some linearization (if any exists) takes next, or -1.

        A read of the current value qualifies: moving it to the front of any linearization
        of the rest changes nothing anybody observes. Failing that, every linearization
        starts with a write, and a required write whose value no remaining read returns can
        be moved to the front: it is always followed by another write or by nothing, so
        taking it out of its old position changes no read's view either.
        """
        next_node, node_op, node_is_invoke = self.next_node, self.node_op, self.node_is_invoke
        is_set, values, reads_left = self.is_set, self.values, self.reads_left
        unread_write = -1
        node = next_node[0]
        while node_is_invoke[node]:
            index = node_op[node]
            if not is_set[index]:
                if values[index] == self.register:
                    return index
            elif unread_write < 0 and self.required[index] and reads_left[values[index]] == 0:
                unread_write = index
            node = next_node[node]
        return unread_write

    def _push(self, index: int, *, forced: bool) -> bool:
        """Linearize ``index`` next, unless that configuration was explored already or is
        certainly a dead end."""
        register = self.register
        if self.is_set[index]:
            new_register = self.values[index]
            if (
                new_register != register
                and self.reads_left[register] > 0
                and self.writes_left[register] == 0
            ):
                return False  # the remaining reads of the current value could never be served
        else:
            new_register = register
        linearized = self.linearized | (1 << index)
        # Keying on the bits above the lowest unlinearized operation keeps memo entries small:
        # everything below that is linearized by definition.
        lowest_pending = (~linearized & (linearized + 1)).bit_length() - 1
        memo_key = (lowest_pending, linearized >> lowest_pending, new_register)
        if memo_key in self.seen:
            return False
        if self.states_explored >= self.max_states:
            raise CheckerBudgetExceeded(self.key, self.max_states, len(self.ops))
        self.seen.add(memo_key)
        self.states_explored += 1

        self.stack.append((index, register, forced))
        self.linearized = linearized
        self.register = new_register
        if self.required[index]:
            self.required_left -= 1
        if self.is_set[index]:
            self.writes_left[new_register] -= 1
        else:
            self.reads_left[new_register] -= 1
        self._unlink(self.invoke_node[index])
        if self.complete_node[index] >= 0:
            self._unlink(self.complete_node[index])
        return True

    def _backtrack(self) -> int:
        """Undo linearizations until one with untried alternatives remains.

        Returns the node to continue scanning from, or -1 if the search space is exhausted.
        """
        if self.dead_end is None or len(self.stack) > len(self.dead_end.prefix):
            self._record_dead_end()
        while self.stack:
            index, register_before, forced = self.stack.pop()
            # Relink in the reverse order of unlinking so the list is restored exactly.
            if self.complete_node[index] >= 0:
                self._relink(self.complete_node[index])
            self._relink(self.invoke_node[index])
            self.linearized &= ~(1 << index)
            self.register = register_before
            if self.required[index]:
                self.required_left += 1
            if self.is_set[index]:
                self.writes_left[self.values[index]] += 1
            else:
                self.reads_left[self.values[index]] += 1
            if not forced:
                return self.next_node[self.invoke_node[index]]
        return -1

    def _unlink(self, node: int) -> None:
        before, after = self.prev_node[node], self.next_node[node]
        self.next_node[before] = after
        self.prev_node[after] = before

    def _relink(self, node: int) -> None:
        self.next_node[self.prev_node[node]] = node
        self.prev_node[self.next_node[node]] = node

    def _record_dead_end(self) -> None:
        pending = []
        node = self.next_node[0]
        while self.node_is_invoke[node]:
            pending.append(self.node_op[node])
            node = self.next_node[node]
        self.dead_end = _DeadEnd(
            prefix=tuple(index for index, _, _ in self.stack),
            register=self.register,
            pending=tuple(pending),
            blocking=self.node_op[node] if node != self.tail else None,
        )

    def explain_failure(self) -> str:
        dead_end = self.dead_end
        if dead_end is None:
            return "no dead end was recorded"
        ops = self.ops
        prefix = dead_end.prefix
        shown_from = max(0, len(prefix) - _PREFIX_LINES_SHOWN)
        lines = [
            f"Longest linearizable prefix found: {len(prefix)} operation(s)"
            + (f", showing the last {_PREFIX_LINES_SHOWN}:" if shown_from else ":")
        ]
        lines += [
            f"  {pos + 1}. {ops[prefix[pos]].describe()}" for pos in range(shown_from, len(prefix))
        ]
        if not prefix:
            lines.append("  (none)")
        lines.append(f"Register value after that prefix: {dead_end.register!r}.")

        stranded_reads = self._stranded_reads(dead_end)
        lines.append("None of the operations that may go next can be linearized there:")
        for index in dead_end.pending:
            reason = self._why_stuck(index, dead_end, bool(stranded_reads))
            lines.append(f"  {ops[index].describe()}  <- {reason}")
        if not dead_end.pending:
            lines.append("  (none)")
        if stranded_reads:
            lines.append(
                f"No remaining write can put {dead_end.register!r} back, yet these remaining "
                "reads return it:"
            )
            lines += [f"  {ops[index].describe()}" for index in stranded_reads[:5]]
            if len(stranded_reads) > 5:
                lines.append(f"  ... and {len(stranded_reads) - 5} more")
        if dead_end.blocking is not None:
            blocking = ops[dead_end.blocking]
            lines.append(
                f"Nothing invoked after {blocking.complete} may be ordered before "
                f"{blocking.describe()}, which completed then."
            )
        return "\n".join(lines)

    def _stranded_reads(self, dead_end: _DeadEnd) -> list[int]:
        """Unlinearized reads of the register's value at the dead end, if no unlinearized
        write can produce that value again (so no write may be linearized there)."""
        done = set(dead_end.prefix)
        remaining = [index for index in range(len(self.ops)) if index not in done]
        if any(self.is_set[i] and self.values[i] == dead_end.register for i in remaining):
            return []
        return [i for i in remaining if not self.is_set[i] and self.values[i] == dead_end.register]

    def _why_stuck(self, index: int, dead_end: _DeadEnd, register_is_pinned: bool) -> str:
        if not self.is_set[index]:
            value = self.values[index]
            written = {self.initial} | {
                self.values[i] for i in range(len(self.ops)) if self.is_set[i]
            }
            if value not in written:
                return f"reads {value!r}, which no operation that may have taken effect wrote"
            return f"reads {value!r} but the register holds {dead_end.register!r}"
        if register_is_pinned and self.values[index] != dead_end.register:
            return f"would overwrite {dead_end.register!r}, which remaining reads still need"
        if not self.required[index]:
            return "outcome unknown; taking effect here leads to a dead end"
        return "every ordering that puts this write here leads to a dead end"
