"""TLS for both listeners: the PEM files a node or client uses, and who a certificate names.

Identities (docs/design.md §8). `raftkv certs` writes one certificate per node whose subject
alternative names include the DNS name `raftkv-node-<id>`, and client certificates named
`raftkv-client-<name>`. Between peers that name is the identity:

- the node that answers a PeerStream takes the sender's id from the certificate it presented
  (`node_id_from_names` over the SANs gRPC reports), never from the message;
- the node that dials checks the answering node's certificate for `raftkv-node-<id>` of the node
  it meant to reach (gRPC's `ssl_target_name_override`), so a proxy, NAT or shared IP address
  cannot make it talk to the wrong node.

A client certificate has no node name, so it opens the client listener (with
--client-cert-auth) but never the peer listener.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

NODE_NAME_PREFIX = "raftkv-node-"
CLIENT_NAME_PREFIX = "raftkv-client-"
# The gRPC channel option that makes TLS verify this name instead of the dialled host.
TARGET_NAME_OPTION = "grpc.ssl_target_name_override"

_NODE_NAME = re.compile(re.escape(NODE_NAME_PREFIX) + r"(0|[1-9][0-9]{0,9})")


class TlsConfigError(ValueError):
    """A PEM file is missing or unreadable; the message names it."""


def node_name(node_id: int) -> str:
    """The DNS name that identifies node `node_id` in its certificate."""
    return f"{NODE_NAME_PREFIX}{node_id}"


def node_id_from_names(names: Iterable[bytes | str]) -> int | None:
    """The node id a certificate's names give, or None when they name no node or several."""
    ids = set()
    for raw in names:
        name = raw.decode("ascii", "replace") if isinstance(raw, bytes) else raw
        match = _NODE_NAME.fullmatch(name.lower())
        if match:
            ids.add(int(match.group(1)))
    return ids.pop() if len(ids) == 1 else None


def peer_node_id(auth_context: Mapping[str, Iterable[bytes]]) -> int | None:
    """The node id of an mTLS peer, from gRPC's `ServicerContext.auth_context()`."""
    return node_id_from_names(auth_context.get("x509_subject_alternative_name", ()))


def _read(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise TlsConfigError(f"cannot read the {what} {path}: {error.strerror or error}") from None
    if b"-----BEGIN" not in data:
        raise TlsConfigError(f"the {what} {path} is not a PEM file")
    return data


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the CA bundle that signed the other side's certificate, and our own pair.

    `ca` may hold several certificates (a bundle): while a CA is being rotated it holds the old
    and the new one, so either side's certificate verifies (README, "Rotating certificates").
    """

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def in_directory(cls, directory: Path, node_id: int) -> TlsFiles:
        """The layout `raftkv certs --out DIR` writes: ca.pem, node-<id>.pem, node-<id>.key."""
        return cls(
            directory / "ca.pem",
            directory / f"node-{node_id}.pem",
            directory / f"node-{node_id}.key",
        )

    def load(self) -> LoadedTls:
        """Read all three files now, so that a missing one stops the node at start."""
        return LoadedTls(
            _read(self.ca, "CA certificate"),
            _read(self.cert, "certificate"),
            _read(self.key, "private key"),
        )


@dataclass(frozen=True)
class LoadedTls:
    ca: bytes
    cert: bytes
    key: bytes

    def server_credentials(self, *, require_client_auth: bool) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)],
            root_certificates=self.ca,
            require_client_auth=require_client_auth,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Credentials that verify the server against `ca` and present our own certificate."""
        return grpc.ssl_channel_credentials(self.ca, self.key, self.cert)


def client_tls(tls: Mapping[str, str]) -> tuple[bytes | None, tuple[bytes, bytes] | None]:
    """(CA, (key, certificate) or None) for a client, from a description's `tls` object:
    `ca` turns TLS on, `cert` and `key` present a client certificate (--client-cert-auth)."""
    ca = tls.get("ca")
    if not ca:
        return None, None
    root = _read(Path(ca).expanduser(), "CA certificate")
    cert, key = tls.get("cert"), tls.get("key")
    if bool(cert) != bool(key):
        raise TlsConfigError(
            "the cluster description's tls needs both 'cert' and 'key', or neither"
        )
    if not cert or not key:
        return root, None
    return root, (
        _read(Path(key).expanduser(), "private key"),
        _read(Path(cert).expanduser(), "certificate"),
    )
