"""The asyncio shell around one core: disk, timers, peers and client waiters.

One task (`run`) owns the core. Inputs (peer messages, proposals) are queued and fed in batches;
each batch's Ready is persisted with one fsync for everything that queued up while the previous
one ran (group commit; a leader's in a worker thread, its AppendEntries leave before) — then
its other messages are sent, and only then is the core advanced. Reads bypass the queue: they
are checked against the clock at the moment they arrive (docs/design.md §3 rule 4).

Peer messages travel on one stream per peer (raftkv/server/peers.py): request/response on the
wire but one-way in the core. Every AppendEntries, RequestVote and InstallSnapshot the core
receives produces exactly one reply, in order, so an inbound request waits on a FIFO of futures
keyed by (sender, reply type) and the Nth reply resolves the Nth waiter.

Snapshots (docs/design.md §5): the core hands out an image (`Ready.snapshot`, an O(1) reference
to its persistent maps); one background task writes it (`NodeStorage.save_snapshot` in a worker
thread) and reports the outcome as an input, and the compaction the core asks for once it is
durable (`Ready.compact_to`) runs in a worker thread too, finished before the next write to the
log. InstallSnapshot's bytes are moved by raftkv/server/snapshot_transfer.py: a sender task per
follower on a leader, one receiver on every node; an installed snapshot (`Ready.installed`)
becomes snapshot.txt before the log is reset and before any reply leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import math
import os
import random
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from raftkv.cluster import ClusterDescription, NodeAddress
from raftkv.core.config import DEFAULT_SNAPSHOTS, SnapshotPolicy, TimingConfig
from raftkv.core.messages import (
    AppendEntries,
    AppendEntriesReply,
    Command,
    Envelope,
    InstallSnapshot,
    InstallSnapshotReply,
    Message,
    ReadPending,
    ReadRange,
    ReadValue,
    Refusal,
    Refused,
    RequestVote,
    RequestVoteReply,
)
from raftkv.core.node import (
    SAFE,
    CoreMisuseError,
    NodeStatus,
    PersistentState,
    RaftNode,
    Ready,
    Role,
    UnsafeSwitches,
)
from raftkv.core.state_machine import DEFAULT_SESSION_RULES, SessionRules, SnapshotImage
from raftkv.rpc.options import NODE_OPTIONS
from raftkv.server.dump import DumpLog
from raftkv.server.peers import PeerLink
from raftkv.server.seams import (
    FAILPOINT_ENV,
    Seam,
    SeamError,
    clock_rate_from,
    seams_in_effect,
)
from raftkv.server.snapshot_transfer import (
    SnapshotReceiver,
    SnapshotSender,
    TransferFailedError,
)
from raftkv.server.storage import (
    SNAPSHOT_FILE_NAME,
    SNAPSHOT_RECV_NAME,
    NodeStorage,
    SnapshotWriteStoppedError,
    StorageError,
    encode_lines,
    node_data_dir,
)
from raftkv.server.timecheck import TimeServiceCheck
from raftkv.server.transfer import TransferDone, TransferRefusal, TransferRefused, TransferRequest
from raftkv.tls import TARGET_NAME_OPTION, LoadedTls, node_name

# How often, at most, the lazily written commitLength hint is refreshed on disk.
COMMIT_HINT_INTERVAL = 2.0
# A node that appended entries this recently is busy: its snapshot write keeps to a small duty
# (raftkv.server.snapshot_file.Pace) instead of taking a core's worth of CPU at once.
BUSY_WINDOW = 0.5


# The names the start-up line gives the node's clock (`clock CLOCK_BOOTTIME`).
BOOTTIME = "CLOCK_BOOTTIME"
MONOTONIC = "monotonic"


def lease_clock_source() -> tuple[str, Callable[[], float]]:
    """The clock the node's leases are measured on: its name and a function that reads it.

    CLOCK_BOOTTIME where the system has one (Linux): it counts the time the machine spends
    suspended, which time.monotonic() (CLOCK_MONOTONIC) does not, so a leader that wakes from a
    suspend sees its lease as lapsed instead of still running (docs/design.md §3). Elsewhere
    time.monotonic(). Neither moves when the wall clock is set.
    """
    clock_id = getattr(time, "CLOCK_BOOTTIME", None)
    if clock_id is not None:
        try:
            time.clock_gettime(clock_id)
        except OSError:  # EINVAL: a kernel older than the constant (Linux < 2.6.39)
            pass
        else:
            return BOOTTIME, functools.partial(time.clock_gettime, clock_id)
    return MONOTONIC, time.monotonic


class Clock:
    """This node's lease clock (`lease_clock_source`): seconds since the Clock was made.

    Every `now` the shell feeds to the core comes from here. Test-only seam: RAFTKV_CLOCK_RATE
    makes it run at that multiple of the underlying clock, to show what leases depend on (a rate
    outside 1 ± max_clock_drift breaks their safety).
    """

    def __init__(self, rate: float = 1.0) -> None:
        if not (math.isfinite(rate) and rate > 0):
            raise SeamError(f"a clock rate must be a finite number above 0, not {rate!r}")
        self.rate = rate
        self.name, self._read = lease_clock_source()
        self._origin = self._read()

    @classmethod
    def from_environment(cls) -> Clock:
        """The rate from RAFTKV_CLOCK_RATE (1 when unset); SeamError for a value it refuses."""
        return cls(clock_rate_from(os.environ))

    def now(self) -> float:
        return (self._read() - self._origin) * self.rate


@dataclass(frozen=True)
class ReplicaOptions:
    node_id: int
    cluster: ClusterDescription
    config: TimingConfig
    data_root: Path
    unsafe: UnsafeSwitches = SAFE
    # The client listener's TLS (None: plaintext) and whether it demands client certificates.
    client_tls: LoadedTls | None = None
    client_cert_auth: bool = False
    # The peer listener's and peer links' mutual TLS; None only with --insecure-peers.
    peer_tls: LoadedTls | None = None
    # False only for the `--unsafe-no-fsync` negative control.
    fsync: bool = True
    # When to snapshot and how much log to keep after (--snapshot-entries, --snapshot-bytes,
    # --trailing-entries).
    snapshots: SnapshotPolicy = DEFAULT_SNAPSHOTS
    # The product's session rules; others only through the RAFTKV_TEST_SESSION_LIFETIME_MS seam.
    sessions: SessionRules = DEFAULT_SESSION_RULES

    def seams(self, clock_rate: float) -> list[Seam]:
        """The test seams these options turn on, with the node's clock rate and RAFTKV_FAILPOINT
        from the environment: what the node refuses without --allow-unsafe, and names in the
        dump's UNSAFE line."""
        return seams_in_effect(
            self.unsafe,
            fsync=self.fsync,
            clock_rate=clock_rate,
            failpoint=os.environ.get(FAILPOINT_ENV) or None,
            insecure_peers=self.peer_tls is None,
            sessions=self.sessions,
        )


class FatalNodeError(RuntimeError):
    """The node cannot continue safely (storage failure, broken invariant)."""


@dataclass(frozen=True, slots=True)
class _SnapshotWritten:
    """Input: the background write of the image at `index` ended (`error` None: durable, or
    superseded by a newer snapshot, which the core ignores as it does any index ≤ its own)."""

    index: int
    error: str | None


@dataclass(frozen=True, slots=True)
class _SnapshotSendFailed:
    """Input: streaming the snapshot to `peer` failed or ran past its deadline."""

    peer: int


def _peer_channel(peer: NodeAddress, tls: LoadedTls | None) -> grpc.aio.Channel:
    """A channel to `peer`'s peer listener that accepts only a certificate naming that node."""
    if tls is None:
        return grpc.aio.insecure_channel(peer.peer_address, options=NODE_OPTIONS)
    options = (*NODE_OPTIONS, (TARGET_NAME_OPTION, node_name(peer.id)))
    return grpc.aio.secure_channel(peer.peer_address, tls.channel_credentials(), options=options)


class Replica:
    def __init__(
        self,
        options: ReplicaOptions,
        dump: DumpLog,
        clock: Clock | None = None,
        time_service: TimeServiceCheck | None = None,
    ) -> None:
        self.options = options
        self.node_id = options.node_id
        self.dump = dump
        self.clock = clock or Clock.from_environment()
        # The start-up check of the host's time service (timecheck.py), for the dump.
        self.time_service = time_service
        self.address = options.cluster.node(self.node_id).address
        self.data_dir = node_data_dir(options.data_root, self.node_id)
        self.storage = NodeStorage(
            self.data_dir, self.node_id, sync=options.fsync, cluster_id=options.cluster.cluster_id
        )
        # docs/design.md §5: an empty directory under a cluster that already exists is not
        # admitted (its old votes and acknowledgements are lost), and stays so until restored.
        loaded = self.storage.load(admit_if_new=options.cluster.initial_cluster_state == "new")
        self._not_admitted = None if loaded.admitted else self._not_admitted_notice(loaded.created)
        if loaded.dropped_torn_line:
            dump.write(f"Node {self.node_id} dropped a torn last line of logs.txt (crash).")
        if loaded.upgraded_old_format:
            dump.write(
                f"Node {self.node_id} upgraded logs.txt to the indexed line format "
                f"({len(loaded.entries)} entries)."
            )
        self._hard_state = loaded.hard_state
        self._commit_hint_written = loaded.commit_length
        self._commit_hint_at = 0.0
        peer_ids = [n.id for n in options.cluster.nodes if n.id != self.node_id]
        snapshot = loaded.snapshot.image() if loaded.snapshot is not None else None
        self.core = RaftNode(
            self.node_id,
            peer_ids,
            options.config,
            random.Random(),
            self.clock.now(),
            persisted=PersistentState(
                loaded.hard_state,
                loaded.entries,
                loaded.commit_length,
                snapshot=snapshot,
                log_offset=loaded.log_offset,
                log_offset_term=loaded.log_offset_term,
            ),
            unsafe=options.unsafe,
            admitted=loaded.admitted,
            incarnation=loaded.incarnation,
            snapshots=options.snapshots,
            sessions=options.sessions,
        )
        self._inputs: deque[
            tuple[Message | _SnapshotWritten | _SnapshotSendFailed, None]
            | tuple[Command | TransferRequest, asyncio.Future[object]]
        ] = deque()
        # Set, and replaced by a fresh one, whenever the node's role, term or leader changes.
        self._leadership_changed = asyncio.Event()
        self._leadership = (self.core.role, self.core.term, self.core.leader_id)
        self._wake = asyncio.Event()
        self._reply_waiters: dict[tuple[int, type], deque[asyncio.Future[Message]]] = {}
        self._client_waiters: dict[int, asyncio.Future[object]] = {}
        self._tokens = itertools.count(1)
        rpc_timeout = options.config.election_timeout_min
        self.peers = {
            n.id: PeerLink(
                n.id,
                _peer_channel(n, options.peer_tls),
                rpc_timeout,
                self.submit_message,
                self.dump.write,
                cluster_id=options.cluster.cluster_id,
            )
            for n in options.cluster.nodes
            if n.id != self.node_id
        }
        self.receiver = SnapshotReceiver(
            self.data_dir / SNAPSHOT_RECV_NAME,
            self.node_id,
            options.cluster.cluster_id,
            self.begin_exchange,
            self.dump.write,
            sync=options.fsync,
            current_term=lambda: self.core.term,
        )
        # The background work the loop does not wait for: the one snapshot write, the last
        # compaction (awaited before the next write to the log), a sender per follower.
        self._snapshot_write: asyncio.Task[None] | None = None
        # Set at shutdown: the writer's thread gives up before its next chunk (`stop`).
        self._stop_snapshot_write = threading.Event()
        self._entries_at = -math.inf
        self._compaction: asyncio.Task[None] | None = None
        self._senders: dict[int, tuple[int, asyncio.Task[None]]] = {}
        self._stopping = False

    # ------------------------------------------------------------------------------------------
    # What the gRPC services call

    def submit_message(self, message: Message) -> None:
        self._inputs.append((message, None))
        self._wake.set()

    def begin_exchange(
        self, message: AppendEntries | RequestVote | InstallSnapshot
    ) -> asyncio.Future[Message]:
        """Feed an inbound peer request to the core; the future gets the core's reply to it."""
        if isinstance(message, AppendEntries):
            key: tuple[int, type] = (message.leader_id, AppendEntriesReply)
        elif isinstance(message, InstallSnapshot):
            key = (message.leader_id, InstallSnapshotReply)
        else:
            key = (message.candidate_id, RequestVoteReply)
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._reply_waiters.setdefault(key, deque()).append(future)
        self.submit_message(message)
        return future

    def begin_proposal(self, command: Command) -> asyncio.Future[object]:
        """Queue `command`; the future gets WriteDone or Refused. Cancel it to stop waiting."""
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._inputs.append((command, future))
        self._wake.set()
        return future

    async def propose(self, command: Command, timeout: float) -> object:
        """Returns WriteDone or Refused; raises TimeoutError when the outcome is unknown."""
        return await asyncio.wait_for(self.begin_proposal(command), timeout)

    def begin_read(self, key: str) -> ReadValue | Refused | asyncio.Future[object]:
        """A lease read is answered at once; a read_index read returns a future that gets
        ReadValue or Refused. Cancel the future to stop waiting."""
        token = next(self._tokens)
        result = self.core.read(key, self.clock.now(), token)
        return self._held_read(token) if isinstance(result, ReadPending) else result

    def begin_read_range(
        self, prefix: str, start_after: str, limit: int
    ) -> ReadRange | Refused | asyncio.Future[object]:
        """A LIST page, as `begin_read` (the same rules; the future gets ReadRange or
        Refused)."""
        token = next(self._tokens)
        result = self.core.read_range(prefix, start_after, limit, self.clock.now(), token)
        return self._held_read(token) if isinstance(result, ReadPending) else result

    def begin_read_image(self) -> SnapshotImage | Refused | asyncio.Future[object]:
        """The whole state for a backup, as `begin_read` (the same rules; the future gets
        SnapshotImage or Refused). O(1): the image shares the state machine's maps."""
        token = next(self._tokens)
        result = self.core.read_image(self.clock.now(), token)
        return self._held_read(token) if isinstance(result, ReadPending) else result

    def _held_read(self, token: int) -> asyncio.Future[object]:
        """The future that the core's ClientReply with `token` resolves: a read it holds
        (read_index mode) until a majority has answered a later round."""
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._client_waiters[token] = future
        self._wake.set()
        return future

    async def transfer_leadership(
        self, target: int | None, timeout: float
    ) -> TransferDone | TransferRefused:
        """Hand leadership to `target` (None: the most up-to-date follower) and wait, up to
        `timeout` seconds, until another node leads (docs/design.md §3 rule 8)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + timeout
        term = self.core.term
        if target == self.node_id and self.core.role is Role.LEADER:
            return TransferDone(self.node_id, self.node_id, term, 0.0)
        future: asyncio.Future[object] = loop.create_future()
        self._inputs.append((TransferRequest(target), future))
        self._wake.set()
        try:
            answer = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            answer = TransferRefused(
                TransferRefusal.TIMED_OUT, f"node {self.node_id} did not take the request in time"
            )
        if isinstance(answer, TransferRefused):
            return answer
        what = "the most up-to-date follower" if target is None else f"node {target}"
        while True:
            core = self.core
            leader = core.leader_id
            if core.role is not Role.LEADER and leader is not None and leader != self.node_id:
                seconds = loop.time() - started
                self.dump.write(
                    f"Node {self.node_id} handed leadership over to node {leader} "
                    f"(term {core.term}) in {seconds:.3f} s."
                )
                return TransferDone(leader, self.node_id, core.term, seconds)
            if core.role is Role.LEADER and core.term > term:
                return TransferRefused(
                    TransferRefusal.FAILED,
                    f"the transfer to {what} failed: node {self.node_id} was elected again "
                    f"(term {core.term})",
                )
            remaining = deadline - loop.time()
            if remaining <= 0:
                return TransferRefused(
                    TransferRefusal.TIMED_OUT,
                    f"leadership did not move from node {self.node_id} to {what} within "
                    f"{timeout:.2f} s (now: {core.role.value} in term {core.term}, leader "
                    f"{'unknown' if leader is None else leader})",
                    leader,
                )
            changed = self._leadership_changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)

    async def read(self, key: str, timeout: float) -> ReadValue | Refused:
        result = self.begin_read(key)
        if not isinstance(result, asyncio.Future):
            return result
        answer = await asyncio.wait_for(result, timeout)
        assert isinstance(answer, ReadValue | Refused)
        return answer

    async def read_range(
        self, prefix: str, start_after: str, limit: int, timeout: float
    ) -> ReadRange | Refused:
        """A LIST page (ReadRange) or why not; raises TimeoutError like `read`."""
        result = self.begin_read_range(prefix, start_after, limit)
        if not isinstance(result, asyncio.Future):
            return result
        answer = await asyncio.wait_for(result, timeout)
        assert isinstance(answer, ReadRange | Refused)
        return answer

    async def read_image(self, timeout: float) -> SnapshotImage | Refused:
        """The whole state (SnapshotImage) or why not; raises TimeoutError like `read`."""
        result = self.begin_read_image()
        if not isinstance(result, asyncio.Future):
            return result
        answer = await asyncio.wait_for(result, timeout)
        assert isinstance(answer, SnapshotImage | Refused)
        return answer

    def status(self) -> NodeStatus:
        return self.core.status(self.clock.now())

    def leader_address(self, leader_id: int | None) -> str | None:
        if leader_id is None:
            return None
        try:
            return self.options.cluster.node(leader_id).address
        except ValueError:
            return None

    def _configuration_notice(self) -> str | None:
        """What the persisted bounds change about this node's own flags (rules 2 and 6)."""
        config = self.options.config
        parts = []
        lease, recorded = config.lease_duration, self.core.lease_bound
        if recorded > lease:
            parts.append(
                f"its lease is {lease:g} s but it recorded a {recorded:g} s lease before; it "
                f"waits {recorded:g} s after this start and honours each leader's lease"
            )
        drift, announced = config.max_clock_drift, self.core.drift_bound
        if announced > drift:
            parts.append(
                f"its max clock drift is {drift:g} but a node announced {announced:g} before; "
                f"it uses {announced:g}"
            )
        if not parts:
            return None
        return f"Node {self.node_id} configuration notice: {'; '.join(parts)}."

    def _not_admitted_notice(self, first_start: bool) -> str:
        """What a node that is not admitted says at start: why, and how to recover."""
        cluster = self.options.cluster.cluster_id
        if first_start:
            why = (
                f"has an empty data directory but cluster {cluster!r} already exists "
                "(--initial-cluster-state existing)"
            )
        else:
            metadata = self.storage.directory / "metadata.txt"
            why = (
                f"is not admitted to cluster {cluster!r}: its data directory was empty when it "
                f"first started under the existing cluster ({metadata} says admitted false)"
            )
        return (
            f"Node {self.node_id} {why}: it will not vote or acknowledge entries. Recover its "
            "data from the leader: stop this node, run `raftkv restore-node --from <the "
            f"leader's logs_node_<id> directory> --into {self.options.data_root} --id "
            f"{self.node_id}`, then start it again."
        )

    # ------------------------------------------------------------------------------------------
    # The loop

    def startup_lines(self) -> list[str]:
        """The dump lines a node starts with: where it is and how it is configured (naming its
        lease clock); the test seams in effect, if any, in the UNSAFE line right after (where
        tools look for it); its peer listener; the time-service check, if one was made."""
        config = self.options.config
        # The format is parsed by `raftkv logs review`; a node that starts from a snapshot says
        # so in the core's own line (SnapshotLoaded), and "log entries" counts from index 1.
        lines = [
            f"Node {self.node_id} starting at {self.address}: term {self.core.term}, "
            f"{self.core.log.last_index} log entries, read mode {config.read_mode.value}, "
            f"election {config.election_timeout_min}-{config.election_timeout_max}s, "
            f"heartbeat {config.heartbeat_interval}s, lease {config.lease_duration}s, "
            f"max drift {config.max_clock_drift}, clock {self.clock.name}."
        ]
        unsafe = self.options.seams(self.clock.rate)
        if unsafe:
            names = ", ".join(seam.name for seam in unsafe)
            lines.append(f"Node {self.node_id} UNSAFE test switches on: {names}.")
        member = self.options.cluster.node(self.node_id)
        security = "mutual TLS" if self.options.peer_tls is not None else "NO AUTHENTICATION"
        lines.append(
            f"Node {self.node_id} serves peers at {member.peer_address} ({security}), "
            f"cluster id {self.options.cluster.cluster_id!r}."
        )
        if self.time_service is not None:
            lines.append(self.time_service.dump_line(self.node_id))
        notice = self._configuration_notice()
        if notice is not None:
            lines.append(notice)
        return lines

    async def run(self) -> None:
        self.dump.write_lines(self.startup_lines())
        if self._not_admitted is not None:
            self.dump.write(self._not_admitted)
            print(f"raftkv-node: {self._not_admitted}", file=sys.stderr, flush=True)
        while not self._stopping:
            self._wake.clear()
            self._pump()
            while self.core.has_ready() and not self._stopping:
                await self._handle_ready(self.core.take_ready())
                self._pump()
            self._note_leadership()
            if self._inputs or self._stopping:
                continue
            delay = self.core.next_deadline() - self.clock.now()
            if delay > 0:
                # A timer that sets the wake event: cheaper than wait_for's task per iteration.
                # The loop's timers run on CLOCK_MONOTONIC, which stops during a suspend while
                # the lease clock (CLOCK_BOOTTIME) does not: a deadline that passed while the
                # machine slept is acted on when the timer fires, at most `delay` after the
                # wake-up, and `_pump` judges it on the lease clock. Reads do not wait for that:
                # `begin_read` checks the lease on the lease clock as each one arrives.
                timer = None
                if delay != float("inf"):
                    loop = asyncio.get_running_loop()
                    timer = loop.call_later(delay / self.clock.rate, self._wake.set)
                await self._wake.wait()
                if timer is not None:
                    timer.cancel()

    def _pump(self) -> None:
        now = self.clock.now()
        while self._inputs:
            item, future = self._inputs.popleft()
            if future is None:
                if isinstance(item, _SnapshotWritten):
                    if item.error is None:
                        self.core.snapshot_saved(item.index, now)
                    else:
                        self.core.snapshot_failed(item.index, now, item.error)
                elif isinstance(item, _SnapshotSendFailed):
                    self.core.snapshot_send_failed(item.peer, now)
                else:
                    self.core.step(item, now)  # type: ignore[arg-type]
                continue
            if isinstance(item, TransferRequest):
                if not future.done():
                    future.set_result(self._start_transfer(item.target, now))
                continue
            token = next(self._tokens)
            result = self.core.propose(item, now, token)  # type: ignore[arg-type]
            if isinstance(result, Refused):
                if not future.done():
                    future.set_result(result)
            else:
                self._client_waiters[token] = future
        if now >= self.core.next_deadline():
            self.core.tick(now)

    def _start_transfer(self, target: int | None, now: float) -> TransferRefused | None:
        """The core's transfer_leadership (an input: fed here, never between take_ready and
        advance); None when the transfer started."""
        refusal = self.core.transfer_leadership(now, target)
        if refusal is None:
            return None
        if self.core.role is not Role.LEADER:
            return TransferRefused(TransferRefusal.NOT_LEADER, refusal, self.core.leader_id)
        if self.core.status(now).waiting_for_old_lease > 0:
            return TransferRefused(TransferRefusal.NOT_YET, refusal, self.node_id)
        return TransferRefused(TransferRefusal.REFUSED, refusal)

    def _note_leadership(self) -> None:
        leadership = (self.core.role, self.core.term, self.core.leader_id)
        if leadership != self._leadership:
            self._leadership = leadership
            self._leadership_changed.set()
            self._leadership_changed = asyncio.Event()

    async def _handle_ready(self, ready: Ready) -> None:
        # A leader's AppendEntries first: the majority round is the longest wait in a SET.
        persisting = ready.needs_persist
        if ready.log_changed:
            self._entries_at = time.monotonic()
        for envelope in ready.send_now:
            self._dispatch(envelope)
        # Then replies: they report entries already durable on a majority (a leader counts
        # itself only after `advance`), so they need not wait for this Ready's fsync, which is
        # usually the next batch of SETs.
        for reply in ready.replies:
            future = self._client_waiters.pop(reply.token, None)
            if future is not None and not future.done():
                future.set_result(reply.result)
        self.dump.write_lines(map(str, ready.events))
        now = time.monotonic()  # only for the hint's throttle, never given to the core
        hint_due = (
            ready.commit_index != self._commit_hint_written
            and now - self._commit_hint_at >= COMMIT_HINT_INTERVAL
        )
        if persisting or hint_due:
            # The last compaction first: log writes stay in the order the core made them, and
            # the loop never blocks on the storage lock a compaction in a thread holds.
            await self._compaction_finished()
            try:
                lines = encode_lines(ready.entries, ready.first_index) if ready.log_changed else []
                if self.core.role is Role.LEADER:
                    # In a worker thread: the AppendEntries dispatched above go out, and reads
                    # are served, while the leader's own fsync runs (inline, the fsync took 30%
                    # of the loop under 90/10 GET/SET load and GET p50 went from ~4 to ~8 ms).
                    # Encoded here, so that the thread needs the GIL only around its system
                    # calls: this loop is busy, and a thread waiting for the GIL waits up to the
                    # 5 ms switch interval.
                    await asyncio.to_thread(self._persist, ready, lines, hint_due)
                else:
                    # A follower has nothing to do before its fsync is done (its reply must
                    # wait for it), so the thread hop would only add latency and CPU.
                    self._persist(ready, lines, hint_due)
            except StorageError as error:
                # On stderr too: a full disk may keep the dump from recording it.
                print(f"raftkv-node: node {self.node_id}: {error}", file=sys.stderr, flush=True)
                self.dump.write(f"Node {self.node_id} storage failure, stopping: {error}")
                raise FatalNodeError(str(error)) from error
            if hint_due:
                self._commit_hint_at = now
        if ready.compact_to:
            # After this Ready's writes (it may hold the entries up to compact_to), in a worker
            # thread: rewriting logs.txt takes a copy of the kept tail and two fsyncs. Nothing
            # sent depends on it (the snapshot it follows is durable already).
            await self._compaction_finished()
            self._compaction = asyncio.create_task(self._compact(ready.compact_to))
        if ready.snapshot is not None:
            self._start_snapshot_write(ready.snapshot)
        for envelope in ready.send_after_persist:
            self._dispatch(envelope)
        self.core.advance(ready)

    def _persist(self, ready: Ready, lines: list[bytes], write_hint: bool) -> None:
        """A received snapshot first, then the log reset it implies, the log lines, and the
        metadata that refers to them (a leader: in a worker thread)."""
        if ready.installed is not None:
            # The receiver wrote, synced and checked snapshot.txt.recv before the core took it.
            installed = ready.installed
            self.storage.install_received_snapshot(
                self.receiver.path, installed.index, installed.term
            )
        if ready.log_reset is not None:
            self.storage.reset_log(*ready.log_reset)
        if ready.log_changed:
            self.storage.append_encoded(ready.first_index, lines)
        if ready.hard_state is not None or write_hint:
            hard_state = ready.hard_state or self._hard_state
            self.storage.save_metadata(hard_state, ready.commit_index)
            self._hard_state = hard_state
            self._commit_hint_written = ready.commit_index

    def _dispatch(self, envelope: Envelope) -> None:
        message = envelope.message
        if isinstance(message, AppendEntriesReply | RequestVoteReply | InstallSnapshotReply):
            waiters = self._reply_waiters.get((envelope.to, type(message)))
            if waiters:
                future = waiters.popleft()
                if not future.done():
                    future.set_result(message)
            return
        if isinstance(message, InstallSnapshot):
            self._start_sender(envelope.to, message)
            return
        link = self.peers.get(envelope.to)
        if link is not None:
            link.send(message)

    # ------------------------------------------------------------------------------------------
    # Snapshots: the background write, compaction, the sender tasks

    def _queue_input(self, item: _SnapshotWritten | _SnapshotSendFailed) -> None:
        """An outcome for the core: fed in `_pump`, never between take_ready and advance."""
        self._inputs.append((item, None))
        self._wake.set()

    def _start_snapshot_write(self, image: SnapshotImage) -> None:
        if self._snapshot_write is not None and not self._snapshot_write.done():
            # The core hands out one image at a time (it waits for the outcome of this one).
            raise CoreMisuseError(f"a snapshot at {image.index} while another is being written")
        # The start of the window in which a snapshot's CPU and disk work compete with the
        # node's other work (`raftkv bench growth` measures throughput inside it).
        self.dump.write(f"Node {self.node_id} began writing a snapshot at index {image.index}.")
        self._snapshot_write = asyncio.create_task(self._write_snapshot(image))

    async def _write_snapshot(self, image: SnapshotImage) -> None:
        """Serialise and fsync `image` in a worker thread (seconds for a large state: the loop
        goes on), then tell the core. None from save_snapshot (a newer snapshot, installed
        meanwhile, won) is reported as saved: the core ignores an index ≤ its snapshot's."""
        try:
            await asyncio.to_thread(
                self.storage.save_snapshot,
                image,
                stop=self._stop_snapshot_write,
                busy=self._taking_entries,
            )
        except SnapshotWriteStoppedError:
            return  # the node is stopping: there is no core to tell
        except (StorageError, OSError, ValueError) as error:
            self._queue_input(_SnapshotWritten(image.index, str(error)))
        else:
            self._queue_input(_SnapshotWritten(image.index, None))

    def _taking_entries(self) -> bool:
        """Whether this node appended entries in the last `BUSY_WINDOW` s (read from the snapshot
        writer's thread: one float, written by the loop)."""
        return time.monotonic() - self._entries_at < BUSY_WINDOW

    async def _compact(self, compact_to: int) -> None:
        try:
            await asyncio.to_thread(self.storage.compact, compact_to)
        except StorageError as error:
            # The storage refuses every later write too: the next persist stops the node.
            self.dump.write(f"Node {self.node_id} could not compact its log: {error}")

    async def _compaction_finished(self) -> None:
        compaction = self._compaction
        if compaction is not None:
            self._compaction = None
            await compaction

    def _start_sender(self, peer: int, intent: InstallSnapshot) -> None:
        """The core's intent to stream its snapshot to `peer` (a leader's): one sender task per
        follower; one of an earlier term that still runs is replaced."""
        link = self.peers.get(peer)
        if link is None:
            return
        running = self._senders.get(peer)
        if running is not None and not running[1].done():
            if running[0] == intent.term:
                return
            running[1].cancel()
        task = asyncio.create_task(self._send_snapshot(peer, link, intent))
        self._senders[peer] = (intent.term, task)

    async def _send_snapshot(self, peer: int, link: PeerLink, intent: InstallSnapshot) -> None:
        core = self.core
        sender = SnapshotSender(
            self.data_dir / SNAPSHOT_FILE_NAME,
            link,
            intent,
            self.options.config,
            lambda: core.role is Role.LEADER and core.term == intent.term,
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            done = await sender.run()
        except TransferFailedError as error:
            self.dump.write(
                f"Leader {self.node_id} stopped sending its snapshot to Node {peer} after "
                f"{sender.chunks_sent} chunks: {error}"
            )
            self._queue_input(_SnapshotSendFailed(peer))
            return
        except Exception as error:  # not CancelledError: a cancelled sender reports nothing
            # A bug or an error the sender did not foresee must still reach the core: unreported,
            # the follower would stay waiting for a snapshot (role SNAPSHOT) for the whole term.
            self.dump.write(
                f"Leader {self.node_id} stopped sending its snapshot to Node {peer} after "
                f"{sender.chunks_sent} chunks: unexpected {type(error).__name__}: {error}"
            )
            self._queue_input(_SnapshotSendFailed(peer))
            return
        if done:
            header = sender.header
            index = header.last_index if header is not None else intent.last_index
            self.dump.write(
                f"Leader {self.node_id} sent its snapshot at index {index} to Node {peer}: "
                f"{sender.size} bytes in {sender.chunks_sent} chunks, "
                f"{loop.time() - started:.3f} s."
            )

    # ------------------------------------------------------------------------------------------
    # Shutdown

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        for _, task in self._senders.values():
            task.cancel()
        self.receiver.close()
        # A snapshot write may take seconds: it is told to stop before its next chunk and
        # awaited, never just cancelled, which would leave its thread running past
        # storage.close() below. Once that releases the directory's lock another process may
        # take the directory, and the old thread's clean-up would delete the new process's
        # snapshot.txt.tmp. A compaction is short and holds the storage lock: let it finish.
        self._stop_snapshot_write.set()
        if self._snapshot_write is not None:
            try:
                await self._snapshot_write
            except Exception as error:  # the write's own errors are caught in the task
                self.dump.write(f"Node {self.node_id} snapshot write failed at stop: {error}")
        with contextlib.suppress(StorageError):
            await self._compaction_finished()
        for future in self._client_waiters.values():
            if not future.done():
                future.set_result(Refused(Refusal.NOT_LEADER, None))
        for link in self.peers.values():
            await link.close()
        try:
            # Only when the term and vote on disk are the core's. The core's lease bound is
            # safe to save at any time: it comes down only once its promises have run out.
            hard_state = self.core.hard_state
            saved = self._hard_state
            if (hard_state.term, hard_state.voted_for) == (saved.term, saved.voted_for):
                self.storage.save_metadata(hard_state, self.core.commit_index)
        except StorageError as error:
            self.dump.write(f"Node {self.node_id} could not save the commit hint: {error}")
        self.storage.close()
