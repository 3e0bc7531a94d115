"""gRPC channel and server options, in one place for the node, the client and the tools.

Each set keeps the values its users had; they differ on purpose:
- `NODE_OPTIONS`: a node's server and its channels to peers. Peers must notice a vanished peer
  and reconnect to a restarted one quickly, and batches of AppendEntries may be large.
- `CLIENT_CHANNEL_OPTIONS`: the client library's channels. Gentler keepalive (a client may be
  idle for long), a reconnect back-off short enough that a restarted node is usable again soon.
- `POLL_CHANNEL_OPTIONS`: short-lived channels of the local cluster supervisor and the tests,
  which poll nodes that are still starting.
- `BENCH_CHANNEL_OPTIONS`: the benchmark's load generator.
"""

from __future__ import annotations

from raftkv.limits import MAX_MESSAGE_BYTES

Options = tuple[tuple[str, int], ...]

# gRPC's default is 4 MiB; a peer batch of AppendEntries with large values can be bigger.
MESSAGE_SIZE: Options = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
)

# Ping even without calls in flight, and without a limit on pings between data frames, so that a
# connection to a machine that vanished (no FIN, no RST) is noticed while it is idle.
_PING_WHEN_IDLE: Options = (
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
)

# A node that is still starting refuses connections, and gRPC's default back-off (1 s, growing to
# two minutes) would hide it for seconds after it starts listening.
_FAST_RECONNECT: Options = (
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 250),
)

NODE_OPTIONS: Options = (
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    *_PING_WHEN_IDLE,
    # Accept clients' keepalive pings (every 30 s) instead of answering GOAWAY too_many_pings.
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    # gRPC shares ports (SO_REUSEPORT) by default: a second node started on a taken port would
    # silently get half the connections instead of failing to start.
    ("grpc.so_reuseport", 0),
    # Reconnect to a restarted peer within a heartbeat or two, before its election timer fires
    # (gRPC's default back-off starts at 1 s and grows to 2 minutes).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
    *MESSAGE_SIZE,
)

CLIENT_CHANNEL_OPTIONS: Options = (
    # Probe idle connections so that a node whose machine vanished (no FIN, no RST) is noticed
    # before the next request has to wait out its per-try timeout on a dead socket. Servers must
    # allow pings this often (grpc.http2.min_ping_interval_without_data_ms ≤ 30 s, and
    # grpc.keepalive_permit_without_calls), or they answer with GOAWAY "too_many_pings".
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    *_PING_WHEN_IDLE,
    # gRPC's default reconnect backoff grows to two minutes, during which every call on the
    # channel fails at once: a node that restarts would stay unusable long after it is back.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
)

POLL_CHANNEL_OPTIONS: Options = (*_FAST_RECONNECT, *MESSAGE_SIZE)

BENCH_CHANNEL_OPTIONS: Options = (
    *_FAST_RECONNECT,
    # The client's keepalive period (see CLIENT_CHANNEL_OPTIONS), with gRPC's default timeout.
    ("grpc.keepalive_time_ms", 30_000),
    *_PING_WHEN_IDLE,
    # Replies only: the load generator sends small requests.
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
)
