"""What one measured run does: the workload, its key space and its timing."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

KEY_COUNT = 1000
KEY_BYTES = 16
VALUE_BYTES = 64
VALUE_VARIANTS = 64

# GET share of each workload; "status" is the bare client↔node round trip (Status RPC, or an
# etcd serializable Range), used as the baseline for WAN read latency.
GET_FRACTION = {"set": 0.0, "get": 1.0, "mixed": 0.9, "status": 1.0}
WORKLOADS = ("set", "get", "mixed")


def keys(count: int = KEY_COUNT) -> list[str]:
    """`count` distinct keys of exactly KEY_BYTES ASCII bytes."""
    width = KEY_BYTES - len("key-")
    return [f"key-{i:0{width}d}" for i in range(count)]


def values(count: int = VALUE_VARIANTS, size: int = VALUE_BYTES) -> list[str]:
    """`count` distinct values of exactly `size` (≥ 6) ASCII bytes."""
    if size < 6:
        raise ValueError("values are at least 6 bytes")
    body = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_-"
    body *= -(-size // len(body))
    return [f"v{i:04d}-{body}"[:size] for i in range(count)]


@dataclass(frozen=True)
class Workload:
    name: str
    clients: int
    duration: float
    warmup: float
    key_count: int = KEY_COUNT
    # One RPC attempt; an operation retries (following leader hints) until op_timeout.
    per_try_timeout: float = 2.0
    op_timeout: float = 5.0
    # Keep (attempt start, completion) of every successful SET: the failover timeline.
    timeline: bool = False
    # Stop after this many operations in all (0: run for the whole duration).
    op_budget: int = 0
    seed: int = 1
    value_bytes: int = VALUE_BYTES
    # Keep the completion time of every measured operation (RunResult.op_finished, aligned
    # with RunResult.op_latency): per-second throughput and latency by moment.
    per_op: bool = False
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in GET_FRACTION:
            raise ValueError(f"unknown workload {self.name!r} (known: {', '.join(GET_FRACTION)})")
        if self.clients < 1:
            raise ValueError("clients must be ≥ 1")
        if self.duration <= 0 or self.warmup < 0:
            raise ValueError("duration must be > 0 and warm-up ≥ 0")

    @property
    def get_fraction(self) -> float:
        return GET_FRACTION[self.name]

    def with_(self, **changes: object) -> Workload:
        return replace(self, **changes)  # type: ignore[arg-type]
