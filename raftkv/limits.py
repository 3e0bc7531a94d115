"""The sizes a raftkv node accepts, in one place for the server, the client and the tools.

The server enforces them (raftkv/server/service.py); the client library checks a request against
them before sending it, so that a bad request fails fast and without a round trip.
"""

# A key: non-empty, at most this many bytes of UTF-8.
MAX_KEY_BYTES = 1024
# A value: at most this many bytes of UTF-8 (1 MiB).
MAX_VALUE_BYTES = 1024 * 1024
# A LIST page: `limit` items when the client does not say (0), at most MAX_LIST_LIMIT, and at
# most MAX_LIST_PAGE_BYTES of keys and values (UTF-8; a page always holds at least one item, so a
# 1 MiB value still comes back, alone). 4 MiB leaves a page far below MAX_MESSAGE_BYTES.
DEFAULT_LIST_LIMIT = 100
MAX_LIST_LIMIT = 1000
MAX_LIST_PAGE_BYTES = 4 * 1024 * 1024
# A SET's client_id, the key of the server's dedup table: at most this many bytes of UTF-8.
MAX_CLIENT_ID_BYTES = 256
# The largest gRPC message a node sends or receives (peer batches of AppendEntries can carry many
# values of MAX_VALUE_BYTES; gRPC's default of 4 MiB would refuse them).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# A cluster id (the cluster description's `cluster_id`, carried in every peer message).
MAX_CLUSTER_ID_BYTES = 128

# RPCs a node serves at once on its client port; gRPC answers any beyond with RESOURCE_EXHAUSTED
# "Concurrent RPC limit exceeded!" before a handler runs. A Pipeline stream is one RPC however
# many requests it carries, and an idle one costs the node ~30 KB (2,000 of them raised a node's
# RSS from 42 to 102 MB), so the cap holds a flood to ~120 MB while staying far above honest use:
# the client library keeps one stream per node, the benchmark 64 unary calls per process.
MAX_CONCURRENT_CLIENT_RPCS = 4096
# Client connections a node keeps at once (fewer when its descriptor limit is low, see
# raftkv/server/resources.py); gRPC closes any beyond as soon as it accepts them, so that
# connections cannot take the descriptors the node needs for its files and its peers.
MAX_CLIENT_CONNECTIONS = 4096
