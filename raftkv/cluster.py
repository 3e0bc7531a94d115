"""The cluster description: one JSON file naming every node, read by nodes, clients and tools.

`make cluster-up` writes it for a local cluster; the cloud path generates it from Terraform's
outputs. Example:

    {
      "name": "local",
      "cluster_id": "local-5f0c9a1e",
      "profile": "fast",
      "peer_certs": "tls",
      "nodes": [
        {"id": 0, "address": "127.0.0.1:50050", "peer_address": "127.0.0.1:51050",
         "host": "localhost", "data_dir": "cluster/data"},
        ...
      ]
    }

`address` is host:port where the node serves clients; `peer_address` where it serves the other
nodes (default: the client port + 1000 on the same host; docs/design.md §6). `host` is where
tools reach the machine (ssh target, or "localhost" for a local cluster); `data_dir` is the
parent of the node's `logs_node_<id>/` folder on that machine.

`cluster_id` (default: `name`) travels in every peer message; a node refuses messages from
another cluster. `initial_cluster_state` (`new`, the default, or `existing`; etcd's name) says
whether the cluster already exists: a node that finds its data directory empty under an
existing cluster does not take part until its data is restored (docs/design.md §5); the
node's --initial-cluster-state overrides it.
`peer_certs` (optional) is the folder `raftkv certs --out` wrote (ca.pem, node-<id>.pem,
node-<id>.key): the node's peer mTLS files, when its command line names none.
`tls` (optional) is `{"ca": PATH}` and, for --client-cert-auth, `"cert"` and `"key"`: the
client listener serves TLS with certificates signed by that CA, and clients present that pair.
Relative paths are relative to the description file's folder.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from raftkv.limits import MAX_CLUSTER_ID_BYTES

DEFAULT_BASE_PORT = 50050
# A node's peer port when the description gives none: its client port + this.
PEER_PORT_OFFSET = 1000
DEFAULT_DESCRIPTION = Path("cluster/cluster.json")
# What a node does with an empty data directory (docs/design.md §5): start as a member of a new
# cluster, or wait to be restored into one that already exists.
INITIAL_CLUSTER_STATES = ("new", "existing")


class ClusterConfigError(ValueError):
    """The cluster description is missing, malformed or inconsistent; the message says where."""


def default_peer_address(address: str) -> str:
    host, _, port = address.rpartition(":")
    return f"{host}:{int(port) + PEER_PORT_OFFSET}"


@dataclass(frozen=True, slots=True)
class NodeAddress:
    """One node: `address` for clients, `peer_address` for the other nodes ("" = the default)."""

    id: int
    address: str
    host: str = "localhost"
    data_dir: str = "."
    peer_address: str = ""

    def __post_init__(self) -> None:
        _check_address(self.address, f"node {self.id}")
        if not self.peer_address:
            object.__setattr__(self, "peer_address", default_peer_address(self.address))
        _check_address(self.peer_address, f"node {self.id} (peer_address)")

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    @property
    def bind_host(self) -> str:
        return self.address.rsplit(":", 1)[0]


@dataclass(frozen=True, slots=True)
class ClusterDescription:
    nodes: tuple[NodeAddress, ...]
    name: str = "local"
    profile: str = "fast"
    tls: dict[str, str] = field(default_factory=dict)
    cluster_id: str = ""
    peer_certs: str = ""
    initial_cluster_state: str = "new"

    def __post_init__(self) -> None:
        if not self.nodes:
            raise ClusterConfigError("the cluster description lists no nodes")
        ids = [n.id for n in self.nodes]
        if len(set(ids)) != len(ids):
            raise ClusterConfigError(f"duplicate node ids in {sorted(ids)}")
        addresses = [n.address for n in self.nodes] + [n.peer_address for n in self.nodes]
        if len(set(addresses)) != len(addresses):
            raise ClusterConfigError("two listeners share one address (address, peer_address)")
        if not self.cluster_id:
            object.__setattr__(self, "cluster_id", self.name)
        if len(self.cluster_id.encode()) > MAX_CLUSTER_ID_BYTES:
            raise ClusterConfigError(f"cluster_id is longer than {MAX_CLUSTER_ID_BYTES} bytes")
        if self.initial_cluster_state not in INITIAL_CLUSTER_STATES:
            raise ClusterConfigError(
                f"initial_cluster_state must be new or existing, not {self.initial_cluster_state!r}"
            )

    def node(self, node_id: int) -> NodeAddress:
        for node in self.nodes:
            if node.id == node_id:
                return node
        known = ", ".join(str(n.id) for n in self.nodes)
        raise ClusterConfigError(f"node {node_id} is not in the cluster (nodes: {known})")

    @property
    def ids(self) -> list[int]:
        return [n.id for n in self.nodes]

    def to_json(self) -> str:
        body: dict[str, object] = {
            "name": self.name,
            "cluster_id": self.cluster_id,
            "profile": self.profile,
            "nodes": [asdict(n) for n in self.nodes],
        }
        if self.peer_certs:
            body["peer_certs"] = self.peer_certs
        if self.initial_cluster_state != "new":
            body["initial_cluster_state"] = self.initial_cluster_state
        if self.tls:
            body["tls"] = self.tls
        return json.dumps(body, indent=2) + "\n"

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(self.to_json())
        temporary.replace(path)

    @classmethod
    def load(cls, path: Path) -> ClusterDescription:
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise ClusterConfigError(
                f"no cluster description at {path} (start one with `make cluster-up`, "
                "or pass --cluster FILE / --peers ADDR,...)"
            ) from None
        try:
            body = json.loads(text)
        except json.JSONDecodeError as error:
            raise ClusterConfigError(f"{path} is not valid JSON: {error}") from None
        description = cls.from_dict(body, source=str(path))
        # Paths in the file are relative to the file's own folder.
        if description.tls:
            tls = {k: str((path.parent / v).resolve()) for k, v in description.tls.items()}
            description = replace(description, tls=tls)
        if description.peer_certs:
            description = replace(
                description, peer_certs=str((path.parent / description.peer_certs).resolve())
            )
        return description

    @classmethod
    def from_dict(cls, body: object, source: str = "cluster description") -> ClusterDescription:
        if not isinstance(body, dict) or not isinstance(body.get("nodes"), list):
            raise ClusterConfigError(f"{source}: expected an object with a list 'nodes'")
        nodes = []
        for position, raw in enumerate(body["nodes"]):
            if not isinstance(raw, dict) or "id" not in raw or "address" not in raw:
                raise ClusterConfigError(f"{source}: nodes[{position}] needs 'id' and 'address'")
            if not isinstance(raw["id"], int) or raw["id"] < 0:
                raise ClusterConfigError(f"{source}: nodes[{position}].id must be an integer ≥ 0")
            nodes.append(
                NodeAddress(
                    id=raw["id"],
                    address=str(raw["address"]),
                    host=str(raw.get("host", "localhost")),
                    data_dir=str(raw.get("data_dir", ".")),
                    peer_address=str(raw.get("peer_address") or ""),
                )
            )
        tls = body.get("tls") or {}
        if not isinstance(tls, dict):
            raise ClusterConfigError(f"{source}: 'tls' must be an object")
        return cls(
            nodes=tuple(nodes),
            name=str(body.get("name", "cluster")),
            profile=str(body.get("profile", "fast")),
            tls={str(k): str(v) for k, v in tls.items()},
            cluster_id=str(body.get("cluster_id") or ""),
            peer_certs=str(body.get("peer_certs") or ""),
            initial_cluster_state=str(body.get("initial_cluster_state") or "new"),
        )

    @classmethod
    def from_addresses(cls, addresses: list[str]) -> ClusterDescription:
        """Nodes numbered 0.. in the order given, as `--peers a:1,b:2,...` lists them (client
        addresses; each peer address is the default, client port + PEER_PORT_OFFSET)."""
        return cls(tuple(NodeAddress(i, a) for i, a in enumerate(addresses)))

    @classmethod
    def local(
        cls,
        size: int,
        *,
        base_port: int = DEFAULT_BASE_PORT,
        data_dir: str = ".",
        profile: str = "fast",
        host: str = "127.0.0.1",
    ) -> ClusterDescription:
        """The assignment's `<node_id> <num_nodes>` cluster: ids 0..size-1 on one machine."""
        if size < 1:
            raise ClusterConfigError("a cluster needs at least one node")
        nodes = tuple(
            NodeAddress(i, f"{host}:{base_port + i}", "localhost", data_dir) for i in range(size)
        )
        return cls(nodes, name="local", profile=profile)


def _check_address(address: str, what: str) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClusterConfigError(f"{what}: address {address!r} is not host:port")
