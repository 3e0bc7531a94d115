"""gRPC channel and server options, in one place for the node, the client and the tools.

Each set keeps the values its users had; they differ on purpose:
- `NODE_OPTIONS`: a node's server and its channels to peers. Peers must notice a vanished peer
  and reconnect to a restarted one quickly, and batches of AppendEntries may be large.
- `CLIENT_SERVER_OPTIONS`: a node's server for clients: the server side of `NODE_OPTIONS`, and
  limits on what one connection may hold, since clients are not trusted.
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

# A node's keepalive (a vanished peer or client is noticed within ~15 s, and frees what it held)
# and its server's rules, for the peer and the client port alike.
_NODE_SERVER: Options = (
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    *_PING_WHEN_IDLE,
    # Accept clients' keepalive pings (every 30 s) instead of answering GOAWAY too_many_pings.
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    # gRPC shares ports (SO_REUSEPORT) by default: a second node started on a taken port would
    # silently get half the connections instead of failing to start.
    ("grpc.so_reuseport", 0),
)

NODE_OPTIONS: Options = (
    *_NODE_SERVER,
    # Reconnect to a restarted peer within a heartbeat or two, before its election timer fires
    # (gRPC's default back-off starts at 1 s and grows to 2 minutes).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
    *MESSAGE_SIZE,
)

CLIENT_SERVER_OPTIONS: Options = (
    *_NODE_SERVER,
    # The client library's batches: 4 MiB plus one value can exceed gRPC's default of 4 MiB.
    *MESSAGE_SIZE,
    # Close a connection that has not completed its handshake (the HTTP/2 preface, or TLS)
    # within 10 s instead of gRPC's 120 s: a silent TCP connection holds a descriptor (and, with
    # a connection cap, a slot) for 10 s only. Honest handshakes take milliseconds.
    ("grpc.server_handshake_timeout_ms", 10_000),
    # Close (GOAWAY) a connection without any call for 60 s: idle HTTP/2 connections cannot pile
    # up. A client with an open Pipeline stream is never idle; one that is reconnects on its next
    # call, which gRPC does by itself.
    ("grpc.max_connection_idle_ms", 60_000),
    # Streams one connection may have open; the client queues more (HTTP/2
    # SETTINGS_MAX_CONCURRENT_STREAMS, gRPC's default: unlimited). One connection then holds at
    # most 256 of the node's MAX_CONCURRENT_CLIENT_RPCS, far above the benchmark's 64 calls.
    ("grpc.max_concurrent_streams", 256),
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
