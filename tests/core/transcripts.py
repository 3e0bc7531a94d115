"""A data-driven runner for core transcripts (tests/core/testdata/*.txt), in the style of
etcd-io/raft's `testdata/*.txt` and its `rafttest` interaction environment.

A transcript is a sequence of blocks separated by blank lines. Lines starting with `#` outside a
block are comments. A block is one command line, a `----` line, and the expected output (which
never contains a blank line; a command with nothing to say prints `ok`):

    # node 1's election timer fires
    campaign 1
    ----
    t=1.1343 (election deadline of 1)

The cores are driven by hand: nothing happens unless a command says so. Messages a node sends
are queued, per recipient, in the order the node emitted them (send_now before
send_after_persist), until `deliver-msgs` or `stabilize` hands them over. Every node reads one
shared clock `t` (plus its own `skew`, 0 unless set); `t` only moves forward.

Commands (`ID…` = one or more node ids; `[…]` optional):
  add-nodes N [config=test|fast|seed] [election=MIN-MAX] [heartbeat=S] [lease=S] [drift=ρ]
            [read-mode=lease|read_index] [start=T] [prevote=off] [snapshot=E/T]
                        N nodes 1..N, node i with random.Random(i), all created at t=start (0).
  skew ID S             node ID's clock reads t + S from now on.
  advance-clock D       t += D.
  tick ID [at=T|deadline]
                        set t to T (or to the node's next_deadline()) if given, then tick it.
  campaign ID           move t to node ID's election deadline (if later) and tick it.
  process-ready ID…     for each node with work: take_ready, print it, persist, queue its
                        messages, advance (repeated while the node has more work).
  deliver-msgs [ID…] [drop=ID,…] [type=MsgApp,…] [match=WORD]
                        step every queued message to the given nodes (default all), printing
                        each; messages to a `drop` node are removed and printed as dropped;
                        `type` delivers only messages of those kinds and `match` only those
                        whose description has WORD as a whole word, e.g. `match=round=4`
                        (the others stay queued, in order).
  stabilize [ID…]       process-ready and deliver-msgs, repeatedly, until nothing is left.
  isolate ID… / heal    messages to or from an isolated node are dropped when delivered.
  propose ID KEY VALUE  propose `SET KEY VALUE`; prints the result and its token.
  read ID KEY           read KEY; prints the ReadResult and its token.
  status ID…            NodeStatus at the node's clock.
  log ID…               the node's log.
  deadline ID…          the node's next_deadline(), on its own clock (t + skew).
  restart ID            a new RaftNode built from what the harness persisted for ID (queued
                        messages to it stay queued; work it had not handed out is lost).
  save-snapshot ID [fail=REASON]
                        the node's oldest snapshot image being written becomes durable (or its
                        write fails), and the node is told; `add-nodes … snapshot=E/T` makes
                        the nodes snapshot every E committed entries and keep T after.
  raw-step ID MESSAGE   step a hand-written message, written as describe_message prints it
                        (`1->2 MsgApp term=2 prev=0/0 entries=[2:SET k v] commit=0 lease=0.5
                        round=1`; omitted fields take defaults). ID is the recipient.
  log-level quiet|normal
                        quiet: process-ready/deliver-msgs/stabilize print `ok` only.

Run with RAFTKV_REWRITE=1 to write the actual output into the expected sections (the test
still fails on that run, showing what changed; read the diff line by line before committing).
"""

from __future__ import annotations

import difflib
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from raftkv.core.config import (
    DEFAULT_SNAPSHOTS,
    FAST_PROFILE,
    SEED_PROFILE,
    ReadMode,
    SnapshotPolicy,
    TimingConfig,
)
from raftkv.core.describe import (
    describe_entries,
    describe_message,
    describe_ready,
    describe_result,
    fmt_float,
)
from raftkv.core.messages import (
    NO_OP,
    AppendEntries,
    AppendEntriesReply,
    Envelope,
    InstallSnapshot,
    LogEntry,
    Message,
    RequestVote,
    RequestVoteReply,
    SetCommand,
)
from raftkv.core.node import SAFE, HardState, PersistentState, RaftNode, UnsafeSwitches
from raftkv.core.state_machine import SnapshotImage
from raftkv.core.validation import sender_of

# The unit tests' timings (tests/unit/test_core_node.py): no drift, so lease arithmetic is exact.
TEST_PROFILE = TimingConfig(
    election_timeout_min=1.0,
    election_timeout_max=2.0,
    heartbeat_interval=0.1,
    lease_duration=0.5,
    max_clock_drift=0.0,
)
CONFIGS = {"test": TEST_PROFILE, "fast": FAST_PROFILE, "seed": SEED_PROFILE}

REWRITE_ENV = "RAFTKV_REWRITE"
# No idle snapshots unless a transcript asks: the clock moves by hand, in large steps.
TRANSCRIPT_SNAPSHOTS = replace(DEFAULT_SNAPSHOTS, idle=None)


class TranscriptError(Exception):
    """A transcript that cannot be run (unknown command, bad argument): a bug in the file."""


# ---------------------------------------------------------------------------------------------
# The file format


@dataclass
class Block:
    line: int  # 1-based line of the command
    command: str
    expected: list[str]


@dataclass
class Transcript:
    # Text before each block (comments, blank lines), and after the last one.
    preludes: list[list[str]]
    blocks: list[Block]
    trailer: list[str]

    def render(self, outputs: list[list[str]]) -> str:
        lines: list[str] = []
        for prelude, block, output in zip(self.preludes, self.blocks, outputs, strict=True):
            lines += prelude
            lines += [block.command, "----", *output]
        lines += self.trailer
        return "\n".join(lines) + "\n"


def parse_transcript(text: str, name: str = "<transcript>") -> Transcript:
    lines = text.splitlines()
    preludes: list[list[str]] = []
    blocks: list[Block] = []
    pending: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.startswith("#"):
            pending.append(line)
            i += 1
            continue
        if i + 1 >= len(lines) or lines[i + 1] != "----":
            raise TranscriptError(f"{name}:{i + 1}: command {line!r} is not followed by ----")
        expected: list[str] = []
        j = i + 2
        while j < len(lines) and lines[j].strip():
            expected.append(lines[j])
            j += 1
        preludes.append(pending)
        pending = []
        blocks.append(Block(i + 1, line, expected))
        i = j
    return Transcript(preludes, blocks, pending)


# ---------------------------------------------------------------------------------------------
# Parsing hand-written messages (the inverse of describe_message)

_TOKEN = re.compile(r"([\w-]+)=(\[[^\]]*\]|\S+)|(\S+)")


def _words(text: str) -> tuple[list[str], dict[str, str]]:
    bare: list[str] = []
    options: dict[str, str] = {}
    for match in _TOKEN.finditer(text):
        if match.group(1):
            options[match.group(1)] = match.group(2)
        else:
            bare.append(match.group(3))
    return bare, options


def _position(text: str) -> tuple[int, int]:
    index, _, term = text.partition("/")
    return int(index), int(term or 0)


def _entries(text: str) -> tuple[LogEntry, ...]:
    inner = text.strip()[1:-1].strip()
    if not inner:
        return ()
    entries = []
    for item in inner.split(","):
        term, _, command = item.strip().partition(":")
        if command == "NO-OP":
            entries.append(LogEntry(int(term), NO_OP))
            continue
        verb, key, value = command.split(" ", 2)
        if verb != "SET":
            raise TranscriptError(f"unknown command {command!r} in entries")
        entries.append(LogEntry(int(term), SetCommand(key, value)))
    return tuple(entries)


def parse_message(text: str, default_lease: float = 0.5) -> Envelope:
    """`1->2 MsgApp term=2 …` (describe_message's format) back into an Envelope."""
    head, _, rest = text.strip().partition(" ")
    match = re.fullmatch(r"(\d+)->(\d+)", head)
    if match is None:
        raise TranscriptError(f"a message starts with FROM->TO, got {head!r}")
    sender, to = int(match.group(1)), int(match.group(2))
    bare, opts = _words(rest)
    if not bare:
        raise TranscriptError("a message needs a kind (MsgApp, MsgAppResp, MsgVote, MsgVoteResp)")
    kind, flags = bare[0], set(bare[1:])
    term = int(opts.get("term", "0"))
    message: Message
    if kind == "MsgApp":
        prev_index, prev_term = _position(opts.get("prev", "0/0"))
        message = AppendEntries(
            term=term,
            leader_id=sender,
            prev_log_index=prev_index,
            prev_log_term=prev_term,
            entries=_entries(opts.get("entries", "[]")),
            leader_commit=int(opts.get("commit", "0")),
            lease_duration=float(opts.get("lease", str(default_lease))),
            round=int(opts.get("round", "0")),
            timeout_now="timeout_now" in flags,
            max_clock_drift=float(opts.get("drift", "0")),
        )
    elif kind == "MsgAppResp":
        message = AppendEntriesReply(
            term=term,
            follower_id=sender,
            success="ok" in flags,
            match_index=int(opts.get("match", "0")),
            conflict_index=int(opts.get("conflict", "0")),
            round=int(opts.get("round", "0")),
            max_clock_drift=float(opts.get("drift", "0")),
            incarnation=int(opts.get("incarnation", "0"), 16),
        )
    elif kind in ("MsgVote", "MsgPreVote"):
        last_index, last_term = _position(opts.get("last", "0/0"))
        message = RequestVote(
            term,
            sender,
            last_index,
            last_term,
            pre_vote=kind == "MsgPreVote",
            transfer="transfer" in flags,
            max_clock_drift=float(opts.get("drift", "0")),
        )
    elif kind in ("MsgVoteResp", "MsgPreVoteResp"):
        message = RequestVoteReply(
            term,
            sender,
            "granted" in flags,
            float(opts.get("old_lease", "0")),
            pre_vote=kind == "MsgPreVoteResp",
            max_clock_drift=float(opts.get("drift", "0")),
        )
    else:
        raise TranscriptError(f"unknown message kind {kind!r}")
    return Envelope(to, message)


# ---------------------------------------------------------------------------------------------
# The environment


@dataclass
class Storage:
    """What a node has persisted (the harness plays its disk)."""

    hard_state: HardState = field(default_factory=lambda: HardState(0, None))
    # The log entries offset + 1, offset + 2, ...; the entry at `offset` had `offset_term`.
    entries: list[LogEntry] = field(default_factory=list)
    commit_index: int = 0
    offset: int = 0
    offset_term: int = 0
    snapshot: SnapshotImage | None = None
    # Images handed out by Readys and not yet reported saved or failed, oldest first.
    writing: list[SnapshotImage] = field(default_factory=list)


@dataclass
class Env:
    config: TimingConfig | None = None
    nodes: dict[int, RaftNode] = field(default_factory=dict)
    storage: dict[int, Storage] = field(default_factory=dict)
    skew: dict[int, float] = field(default_factory=dict)
    # Queued messages in send order: (recipient, envelope).
    queue: list[Envelope] = field(default_factory=list)
    isolated: set[int] = field(default_factory=set)
    clock: float = 0.0
    next_token: int = 1
    quiet: bool = False
    unsafe: UnsafeSwitches = SAFE
    snapshots: SnapshotPolicy = TRANSCRIPT_SNAPSHOTS

    # -- helpers ----------------------------------------------------------------------------

    def now(self, node_id: int) -> float:
        skew = self.skew.get(node_id, 0.0)
        return self.clock + skew if skew else self.clock

    def set_clock(self, t: float) -> None:
        """Not rounded: `tick at=deadline` must reach the deadline exactly."""
        if t < self.clock:
            raise TranscriptError(f"the clock only moves forward (t={fmt_float(self.clock)})")
        self.clock = t

    def node(self, text: str) -> RaftNode:
        try:
            return self.nodes[int(text)]
        except (KeyError, ValueError):
            raise TranscriptError(f"no node {text!r}") from None

    def ids(self, words: list[str]) -> list[int]:
        return [self.node(w).id for w in words] if words else sorted(self.nodes)

    # -- Ready handling ---------------------------------------------------------------------

    def process_ready(self, node_id: int) -> list[str]:
        out: list[str] = []
        node = self.nodes[node_id]
        while node.has_ready():
            ready = node.take_ready()
            out += describe_ready(ready).splitlines()
            disk = self.storage[node_id]
            if ready.installed is not None:
                disk.snapshot = ready.installed
            if ready.log_reset is not None:
                disk.entries, (disk.offset, disk.offset_term) = [], ready.log_reset
            if ready.log_changed:
                del disk.entries[ready.first_index - disk.offset - 1 :]
                disk.entries.extend(ready.entries)
            if ready.compact_to > disk.offset:
                keep = ready.compact_to - disk.offset
                disk.offset_term = disk.entries[keep - 1].term
                disk.offset, disk.entries = ready.compact_to, disk.entries[keep:]
            if ready.snapshot is not None:
                disk.writing.append(ready.snapshot)
            if ready.hard_state is not None:
                disk.hard_state = ready.hard_state
            disk.commit_index = ready.commit_index
            self.queue.extend(ready.send_now)
            self.queue.extend(ready.send_after_persist)
            node.advance(ready)
        return out

    def deliver(
        self,
        targets: list[int],
        drop: set[int],
        kinds: set[str] | None = None,
        word: str | None = None,
    ) -> dict[int, list[str]]:
        """Deliver every queued message to `targets` (of the given kinds, whose description
        contains `word` as a whole word); output grouped by recipient."""
        out: dict[int, list[str]] = {}
        remaining: list[Envelope] = []
        for envelope in self.queue:
            text = describe_message(envelope)
            wanted = (
                envelope.to in targets
                and (kinds is None or text.split(" ")[1] in kinds)
                and (word is None or f" {word} " in f" {text} ")
            )
            if not wanted:
                remaining.append(envelope)
                continue
            lines = out.setdefault(envelope.to, [])
            sender = sender_of(envelope.message)
            cut = {envelope.to, sender} & self.isolated
            if envelope.to in drop or cut:
                lines.append(f"dropped: {describe_message(envelope)}")
                continue
            message = envelope.message
            if isinstance(message, InstallSnapshot) and message.image is None:
                # The shells stream the leader's durable snapshot; the harness hands it over
                # whole, as the last chunk (its bytes verified, the image attached).
                image = self.storage[sender].snapshot
                if image is None:
                    raise TranscriptError(f"node {sender} sends a snapshot it has not saved")
                message = replace(
                    message, last_index=image.index, last_term=image.term, done=True, image=image
                )
                envelope = Envelope(envelope.to, message)
            lines.append(describe_message(envelope))
            self.nodes[envelope.to].step(message, self.now(envelope.to))
        self.queue = remaining
        return out

    # -- commands ---------------------------------------------------------------------------

    def run(self, command: str) -> list[str]:
        name, _, rest = command.strip().partition(" ")
        handler = _COMMANDS.get(name)
        if handler is None:
            raise TranscriptError(f"unknown command {name!r}")
        if name not in ("add-nodes",) and self.config is None:
            raise TranscriptError("add-nodes must come first")
        output = handler(self, rest)
        return output or ["ok"]

    def cmd_add_nodes(self, rest: str) -> list[str]:
        bare, opts = _words(rest)
        if len(bare) != 1 or self.nodes:
            raise TranscriptError("add-nodes N, once")
        config = CONFIGS[opts.pop("config", "test")]
        if "election" in opts:
            low, _, high = opts.pop("election").partition("-")
            config = replace(
                config, election_timeout_min=float(low), election_timeout_max=float(high or low)
            )
        if "heartbeat" in opts:
            config = replace(config, heartbeat_interval=float(opts.pop("heartbeat")))
        if "lease" in opts:
            config = replace(config, lease_duration=float(opts.pop("lease")))
        if "drift" in opts:
            config = replace(config, max_clock_drift=float(opts.pop("drift")))
        if "read-mode" in opts:
            config = config.with_read_mode(ReadMode(opts.pop("read-mode")))
        # prevote=off: the classic election of the Raft paper (no PreVote, no leader stickiness,
        # no CheckQuorum), for transcripts about the rules underneath; prevote.txt has PreVote.
        if opts.pop("prevote", "on") == "off":
            self.unsafe = UnsafeSwitches(no_pre_vote=True)
        # snapshot=ENTRIES/TRAILING: snapshot every ENTRIES committed entries, keep TRAILING.
        if "snapshot" in opts:
            every, _, trailing = opts.pop("snapshot").partition("/")
            self.snapshots = SnapshotPolicy(
                entries=int(every), trailing_entries=int(trailing), idle=None
            )
        self.clock = float(opts.pop("start", "0"))
        if opts:
            raise TranscriptError(f"unknown add-nodes options {sorted(opts)}")
        self.config = config
        ids = list(range(1, int(bare[0]) + 1))
        for i in ids:
            peers = [p for p in ids if p != i]
            self.nodes[i] = RaftNode(
                i,
                peers,
                config,
                random.Random(i),
                self.now(i),
                unsafe=self.unsafe,
                snapshots=self.snapshots,
            )
            self.storage[i] = Storage()
        c = config
        return [
            f"t={fmt_float(self.clock)} nodes={','.join(map(str, ids))}",
            f"election={fmt_float(c.election_timeout_min)}-{fmt_float(c.election_timeout_max)} "
            f"heartbeat={fmt_float(c.heartbeat_interval)} lease={fmt_float(c.lease_duration)} "
            f"drift={fmt_float(c.max_clock_drift)} read-mode={c.read_mode.value}",
            f"leader_lease_span={fmt_float(c.leader_lease_span)} "
            f"drift_stretch={fmt_float(c.drift_stretch)}",
        ]

    def cmd_skew(self, rest: str) -> list[str]:
        bare, _ = _words(rest)
        self.skew[self.node(bare[0]).id] = float(bare[1])
        return []

    def cmd_advance_clock(self, rest: str) -> list[str]:
        # Rounded so that decimal steps do not accumulate binary noise (0.1 + 0.2).
        self.set_clock(round(self.clock + float(rest), 9))
        return [f"t={fmt_float(self.clock)}"]

    def cmd_tick(self, rest: str) -> list[str]:
        bare, opts = _words(rest)
        node = self.node(bare[0])
        at = opts.get("at")
        if at == "deadline":
            self.set_clock(max(self.clock, node.next_deadline() - self.skew.get(node.id, 0.0)))
        elif at is not None:
            self.set_clock(float(at))
        node.tick(self.now(node.id))
        return [f"t={fmt_float(self.clock)}"]

    def cmd_campaign(self, rest: str) -> list[str]:
        node = self.node(rest.strip())
        deadline = node.next_deadline() - self.skew.get(node.id, 0.0)
        if not math.isfinite(deadline):
            raise TranscriptError(f"node {node.id} has no election deadline (a leader?)")
        self.set_clock(max(self.clock, deadline))
        node.tick(self.now(node.id))
        return [f"t={fmt_float(self.clock)} (election deadline of {node.id})"]

    def cmd_process_ready(self, rest: str) -> list[str]:
        bare, _ = _words(rest)
        ids = self.ids(bare)
        out: list[str] = []
        for i in ids:
            lines = self.process_ready(i)
            if len(ids) > 1 and lines:
                out += [f"> {i} handling Ready", *("  " + line for line in lines)]
            else:
                out += lines
        return ["ok"] if self.quiet else out

    def _kinds(self, opts: dict[str, str]) -> set[str] | None:
        return set(opts["type"].split(",")) if "type" in opts else None

    def cmd_deliver_msgs(self, rest: str) -> list[str]:
        bare, opts = _words(rest)
        drop = {int(d) for d in opts["drop"].split(",")} if "drop" in opts else set()
        out: list[str] = []
        delivered = self.deliver(self.ids(bare), drop, self._kinds(opts), opts.get("match"))
        for i, lines in sorted(delivered.items()):
            out += [f"> {i} receiving messages", *("  " + line for line in lines)]
        return ["ok"] if self.quiet else out

    def cmd_stabilize(self, rest: str) -> list[str]:
        bare, _ = _words(rest)
        ids = self.ids(bare)
        out: list[str] = []
        for _ in range(1000):
            busy = False
            for i in ids:
                lines = self.process_ready(i)
                if lines:
                    busy = True
                    out += [f"> {i} handling Ready", *("  " + line for line in lines)]
            for i, lines in sorted(self.deliver(ids, set()).items()):
                busy = True
                out += [f"> {i} receiving messages", *("  " + line for line in lines)]
            if not busy:
                return ["ok"] if self.quiet else out
        raise TranscriptError("stabilize did not settle in 1000 rounds: a livelock")

    def cmd_isolate(self, rest: str) -> list[str]:
        bare, _ = _words(rest)
        self.isolated.update(self.ids(bare))
        return [f"isolated={','.join(map(str, sorted(self.isolated)))}"]

    def cmd_heal(self, rest: str) -> list[str]:
        self.isolated.clear()
        return []

    def cmd_propose(self, rest: str) -> list[str]:
        node_text, key, value = rest.split(" ", 2)
        node = self.node(node_text)
        token, self.next_token = self.next_token, self.next_token + 1
        result = node.propose(SetCommand(key, value), self.now(node.id), token)
        return [f"token={token} {describe_result(result)}"]

    def cmd_transfer_leader(self, rest: str) -> list[str]:
        bare, opts = _words(rest)
        node = self.node(bare[0])
        target = int(opts["to"]) if "to" in opts else None
        refusal = node.transfer_leadership(self.now(node.id), target)
        return ["started" if refusal is None else f"refused: {refusal}"]

    def cmd_read(self, rest: str) -> list[str]:
        node_text, key = rest.split(" ", 1)
        node = self.node(node_text)
        token, self.next_token = self.next_token, self.next_token + 1
        result = node.read(key, self.now(node.id), token)
        return [f"token={token} {describe_result(result)}"]

    def cmd_status(self, rest: str) -> list[str]:
        bare, _ = _words(rest)
        out = []
        for i in self.ids(bare):
            s = self.nodes[i].status(self.now(i))
            out.append(
                f"{i}: {s.role.value} term={s.term} leader={s.leader_id or 'none'} "
                f"vote={s.voted_for or 'none'} log={s.log_length} commit={s.commit_index} "
                f"applied={s.last_applied} lease_remaining={fmt_float(s.lease_remaining)} "
                f"waiting_for_old_lease={fmt_float(s.waiting_for_old_lease)}"
            )
        return out

    def cmd_deadline(self, rest: str) -> list[str]:
        bare, _ = _words(rest)
        return [
            f"{i}: next_deadline={fmt_float(self.nodes[i].next_deadline())}" for i in self.ids(bare)
        ]

    def cmd_log(self, rest: str) -> list[str]:
        bare, _ = _words(rest)
        out = []
        for i in self.ids(bare):
            log = self.nodes[i].log
            after = f"after {log.offset}/{log.offset_term} " if log.offset else ""
            out.append(f"{i}: {after}{describe_entries(log.held())}")
        return out

    def cmd_restart(self, rest: str) -> list[str]:
        node = self.node(rest.strip())
        disk = self.storage[node.id]
        persisted = PersistentState(
            disk.hard_state,
            tuple(disk.entries),
            disk.commit_index,
            snapshot=disk.snapshot,
            log_offset=disk.offset,
            log_offset_term=disk.offset_term,
        )
        disk.writing.clear()  # a write in flight dies with the process
        self.nodes[node.id] = RaftNode(
            node.id,
            list(node.peer_ids),
            node.config,
            random.Random(node.id),
            self.now(node.id),
            persisted=persisted,
            unsafe=node.unsafe,
            snapshots=node.snapshots,
        )
        vote = disk.hard_state.voted_for
        snapshot = f"snapshot={disk.snapshot.index}/{disk.snapshot.term} " if disk.snapshot else ""
        after = f"after {disk.offset}/{disk.offset_term} " if disk.offset else ""
        return [
            f"restarted {node.id} at t={fmt_float(self.clock)} from term={disk.hard_state.term} "
            f"vote={'none' if vote is None else vote} {snapshot}log={after}"
            f"{describe_entries(disk.entries)} commit_hint={disk.commit_index}"
        ]

    def cmd_save_snapshot(self, rest: str) -> list[str]:
        """save-snapshot ID [fail=REASON]: the node's oldest image in flight becomes durable
        (or its write fails); the node is told, as an input."""
        bare, opts = _words(rest)
        node = self.node(bare[0])
        disk = self.storage[node.id]
        if not disk.writing:
            raise TranscriptError(f"node {node.id} is writing no snapshot")
        image = disk.writing.pop(0)
        if "fail" in opts:
            node.snapshot_failed(image.index, self.now(node.id), opts["fail"])
            return [f"snapshot {image.index} of {node.id} failed"]
        disk.snapshot = image
        node.snapshot_saved(image.index, self.now(node.id))
        return [f"snapshot {image.index}/{image.term} of {node.id} is durable"]

    def cmd_raw_step(self, rest: str) -> list[str]:
        node_text, _, text = rest.strip().partition(" ")
        node = self.node(node_text)
        assert self.config is not None
        envelope = parse_message(text, self.config.lease_duration)
        if envelope.to != node.id:
            raise TranscriptError(f"message is addressed to {envelope.to}, not {node.id}")
        node.step(envelope.message, self.now(node.id))
        return [describe_message(envelope)]

    def cmd_log_level(self, rest: str) -> list[str]:
        if rest.strip() not in ("quiet", "normal"):
            raise TranscriptError("log-level quiet|normal")
        self.quiet = rest.strip() == "quiet"
        return []


_COMMANDS: dict[str, Callable[[Env, str], list[str]]] = {
    "add-nodes": Env.cmd_add_nodes,
    "skew": Env.cmd_skew,
    "advance-clock": Env.cmd_advance_clock,
    "tick": Env.cmd_tick,
    "campaign": Env.cmd_campaign,
    "process-ready": Env.cmd_process_ready,
    "deliver-msgs": Env.cmd_deliver_msgs,
    "stabilize": Env.cmd_stabilize,
    "isolate": Env.cmd_isolate,
    "heal": Env.cmd_heal,
    "propose": Env.cmd_propose,
    "read": Env.cmd_read,
    "transfer-leader": Env.cmd_transfer_leader,
    "status": Env.cmd_status,
    "log": Env.cmd_log,
    "deadline": Env.cmd_deadline,
    "restart": Env.cmd_restart,
    "save-snapshot": Env.cmd_save_snapshot,
    "raw-step": Env.cmd_raw_step,
    "log-level": Env.cmd_log_level,
}


# ---------------------------------------------------------------------------------------------
# Running a file


@dataclass
class Result:
    name: str
    transcript: Transcript
    outputs: list[list[str]]
    # One readable diff per block whose output differs from the expected section.
    mismatches: list[str]

    @property
    def rewritten(self) -> str:
        return self.transcript.render(self.outputs)


def run_text(text: str, name: str = "<transcript>") -> Result:
    transcript = parse_transcript(text, name)
    env = Env()
    outputs: list[list[str]] = []
    mismatches: list[str] = []
    for block in transcript.blocks:
        try:
            actual = env.run(block.command)
        except TranscriptError as error:
            raise TranscriptError(f"{name}:{block.line}: {block.command}: {error}") from None
        if any(not line.strip() for line in actual):
            raise AssertionError(f"{name}:{block.line}: output contains a blank line")
        outputs.append(actual)
        if actual != block.expected:
            diff = difflib.unified_diff(
                block.expected, actual, "expected", "actual", lineterm="", n=2
            )
            mismatches.append(f"{name}:{block.line}: {block.command}\n" + "\n".join(diff))
    return Result(name, transcript, outputs, mismatches)


def run_file(path: Path, *, rewrite: bool = False) -> Result:
    result = run_text(path.read_text(), path.name)
    if rewrite and result.mismatches:
        path.write_text(result.rewritten)
    return result
