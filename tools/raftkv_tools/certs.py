"""`raftkv certs`: a private CA and one TLS certificate per node, for --tls-ca/--tls-cert/--tls-key.

    raftkv certs --out cluster/gcp/tls --cluster cluster/gcp/cluster.json
    python -m raftkv_tools.certs --out DIR --hosts 0=10.0.0.2,raftkv-0 1=10.0.0.3,raftkv-1 ...
    raftkv certs --out cluster/tls --local 5 --client ops    # a local cluster, one client

Writes into DIR:

    ca.pem  ca.key                    the cluster's CA (ECDSA P-256), 10 years
    node-<id>.pem  node-<id>.key      node <id>: serverAuth + clientAuth, 1 year
    client-<name>.pem  client-<name>.key   a client (--client-cert-auth): clientAuth, 1 year

Every node certificate names `raftkv-node-<id>` among its DNS names: that name, not an
address, is the node's identity between peers (raftkv/tls.py). A client certificate names
`raftkv-client-<name>`, so it opens the client listener but never the peer listener.

With --cluster, a node's subject alternative names are every host part the description gives
it: `address`, and where present `peer_address` (the address peers use, e.g. a VM's internal
IP), `host` (the ssh target, without `user@`) and `name`; IP addresses become IP SANs, names
DNS SANs. With --hosts, each `ID=SAN,SAN...` lists them explicitly; --local N means nodes
0..N-1 on 127.0.0.1 and localhost.

Rotation (README, "Rotating certificates"): --reissue issues every node and client certificate
anew (new keys, same CA); a rolling restart then puts them in use without downtime.

Otherwise idempotent: an existing CA is reused, and an existing node certificate is kept
while it was signed by that CA, names exactly the wanted SANs and has more than --renew-days
left; anything else is (re)issued. Each file is reported on one line, `created`, `renewed` or
`kept`, so a caller (the Ansible role) can tell whether anything changed. Private keys are
mode 0600.
Exit status: 0 done, 2 bad arguments or cluster description.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from raftkv.tls import CLIENT_NAME_PREFIX, node_name

CA_DAYS = 3650
NODE_DAYS = 365
RENEW_DAYS = 30

SanValue = ipaddress.IPv4Address | ipaddress.IPv6Address | str


class CertsError(ValueError):
    """Bad arguments or cluster description; the message says which."""


@dataclass(frozen=True)
class NodeNames:
    node_id: int
    sans: tuple[SanValue, ...]


def parse_san(text: str) -> SanValue:
    text = text.strip()
    if not text:
        raise CertsError("an empty subject alternative name")
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        pass
    if not all(part and len(part) < 64 for part in text.split(".")) or " " in text:
        raise CertsError(f"{text!r} is neither an IP address nor a DNS name")
    return text.lower()


def _unique(values: Iterable[SanValue]) -> tuple[SanValue, ...]:
    seen: list[SanValue] = []
    for value in values:
        if value not in seen:
            seen.append(value)
    return tuple(seen)


def parse_hosts(specs: Sequence[str]) -> list[NodeNames]:
    nodes = []
    for spec in specs:
        node_id, sep, names = spec.partition("=")
        if not sep or not node_id.isdigit() or not names:
            raise CertsError(f"--hosts wants ID=SAN[,SAN...], got {spec!r}")
        nodes.append(NodeNames(int(node_id), _unique(parse_san(n) for n in names.split(","))))
    return _check_ids(nodes)


def names_from_cluster(path: Path) -> list[NodeNames]:
    """SANs for every node of a cluster description (extra keys such as peer_address included)."""
    try:
        body = json.loads(path.read_text())
    except FileNotFoundError:
        raise CertsError(f"no cluster description at {path}") from None
    except json.JSONDecodeError as error:
        raise CertsError(f"{path} is not valid JSON: {error}") from None
    raw_nodes = body.get("nodes") if isinstance(body, dict) else None
    if not isinstance(raw_nodes, list) or not raw_nodes:
        raise CertsError(f"{path}: expected an object with a non-empty list 'nodes'")
    nodes = []
    for position, raw in enumerate(raw_nodes):
        if not isinstance(raw, dict) or not isinstance(raw.get("id"), int):
            raise CertsError(f"{path}: nodes[{position}] needs an integer 'id'")
        names: list[SanValue] = []
        for key in ("address", "peer_address"):
            if isinstance(raw.get(key), str):
                names.append(parse_san(raw[key].rpartition(":")[0]))
        for key in ("host", "name"):
            value = raw.get(key)
            if isinstance(value, str) and value and value != "localhost":
                names.append(parse_san(value.rpartition("@")[2]))
        if not names:
            raise CertsError(f"{path}: node {raw['id']} has no address to certify")
        nodes.append(NodeNames(raw["id"], _unique(names)))
    return _check_ids(nodes)


def _check_ids(nodes: list[NodeNames]) -> list[NodeNames]:
    ids = [n.node_id for n in nodes]
    if len(set(ids)) != len(ids):
        raise CertsError(f"duplicate node ids in {sorted(ids)}")
    return nodes


# -- issuing ----------------------------------------------------------------------------------


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_private(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    temporary.replace(path)


def _write_public(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    temporary.chmod(0o644)
    temporary.replace(path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey | None:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (FileNotFoundError, ValueError, TypeError):
        return None
    return key if isinstance(key, ec.EllipticCurvePrivateKey) else None


def _load_cert(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (FileNotFoundError, ValueError):
        return None


def _same_key(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    encoding = serialization.Encoding.DER
    return cert.public_key().public_bytes(encoding, public) == key.public_key().public_bytes(
        encoding, public
    )


def _fresh(cert: x509.Certificate, renew_days: int) -> bool:
    return cert.not_valid_after_utc - _now() > dt.timedelta(days=renew_days)


def ensure_ca(
    out: Path, cluster_name: str, renew_days: int
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, str]:
    cert_path, key_path = out / "ca.pem", out / "ca.key"
    cert, key = _load_cert(cert_path), _load_key(key_path)
    if cert is not None and key is not None and _same_key(cert, key) and _fresh(cert, renew_days):
        return cert, key, "kept"
    action = "renewed" if cert_path.exists() else "created"
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"raftkv {cluster_name} CA")])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(key_path, _key_pem(key))
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert, key, action


def _sans_of(cert: x509.Certificate) -> set[SanValue]:
    try:
        extension = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    values: set[SanValue] = set(extension.get_values_for_type(x509.IPAddress))  # type: ignore[arg-type]
    values.update(name.lower() for name in extension.get_values_for_type(x509.DNSName))
    return values


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def ensure_leaf(
    out: Path,
    stem: str,
    common_name: str,
    sans: Sequence[SanValue],
    usages: Sequence[x509.ObjectIdentifier],
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    renew_days: int,
    reissue: bool = False,
) -> str:
    """`<stem>.pem` and `<stem>.key` signed by `ca`, naming exactly `sans`; the action taken."""
    cert_path, key_path = out / f"{stem}.pem", out / f"{stem}.key"
    cert, key = _load_cert(cert_path), _load_key(key_path)
    if (
        not reissue
        and cert is not None
        and key is not None
        and _same_key(cert, key)
        and _signed_by(cert, ca)
        and _sans_of(cert) == set(sans)
        and _fresh(cert, renew_days)
    ):
        return "kept"
    action = "renewed" if cert_path.exists() else "created"
    key = ec.generate_private_key(ec.SECP256R1())
    general_names: list[x509.GeneralName] = [
        x509.DNSName(san) if isinstance(san, str) else x509.IPAddress(san) for san in sans
    ]
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=NODE_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(general_names), critical=False)
        .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(key_path, _key_pem(key))
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return action


def ensure_node(
    out: Path,
    node: NodeNames,
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    renew_days: int,
    reissue: bool = False,
) -> str:
    return ensure_leaf(
        out,
        f"node-{node.node_id}",
        f"raftkv node {node.node_id}",
        _unique((node_name(node.node_id), *node.sans)),
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        ca,
        ca_key,
        renew_days,
        reissue,
    )


def ensure_client(
    out: Path,
    name: str,
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    renew_days: int,
    reissue: bool = False,
) -> str:
    return ensure_leaf(
        out,
        f"client-{name}",
        f"raftkv client {name}",
        (f"{CLIENT_NAME_PREFIX}{name}",),
        [ExtendedKeyUsageOID.CLIENT_AUTH],
        ca,
        ca_key,
        renew_days,
        reissue,
    )


def local_nodes(count: int) -> list[NodeNames]:
    """Nodes 0..count-1 of a cluster on this machine."""
    if count < 1:
        raise CertsError("--local needs at least 1 node")
    loopback = (parse_san("127.0.0.1"), parse_san("localhost"))
    return [NodeNames(node_id, loopback) for node_id in range(count)]


def _check_client_name(name: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,40}", name):
        raise CertsError(f"client name {name!r}: use 1-41 of a-z, 0-9 and '-'")
    return name


def issue(
    out: Path,
    nodes: Sequence[NodeNames],
    *,
    cluster_name: str = "cluster",
    renew_days: int = 30,
    clients: Sequence[str] = (),
    reissue: bool = False,
) -> list[tuple[str, Path]]:
    """Make sure `out` holds a CA, a certificate per node and per client; returns (action, path)
    pairs. `reissue` makes every node and client certificate anew (rotation)."""
    out.mkdir(parents=True, exist_ok=True)
    out.chmod(0o700)
    ca, ca_key, ca_action = ensure_ca(out, cluster_name, renew_days)
    report = [(ca_action, out / "ca.pem")]
    for node in sorted(nodes, key=lambda n: n.node_id):
        # A new CA fails the signed-by check, so every node certificate follows it.
        action = ensure_node(out, node, ca, ca_key, renew_days, reissue)
        report.append((action, out / f"node-{node.node_id}.pem"))
    for name in clients:
        action = ensure_client(out, _check_client_name(name), ca, ca_key, renew_days, reissue)
        report.append((action, out / f"client-{name}.pem"))
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raftkv certs",
        description="Make a CA and per-node TLS certificates for a raftkv cluster.",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, required=True, help="directory for the PEM files")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--cluster", type=Path, help="take nodes and names from this description")
    source.add_argument("--hosts", nargs="+", metavar="ID=SAN[,SAN...]", help="nodes and names")
    source.add_argument("--local", type=int, metavar="N", help="nodes 0..N-1 on this machine")
    parser.add_argument(
        "--client", action="append", default=[], metavar="NAME", help="also a client certificate"
    )
    parser.add_argument(
        "--reissue", action="store_true", help="issue every node and client certificate anew"
    )
    parser.add_argument("--name", default=None, help="cluster name in the CA's common name")
    parser.add_argument("--renew-days", type=int, default=RENEW_DAYS, help="renew when fewer left")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.cluster is not None:
            nodes = names_from_cluster(args.cluster)
            name = args.name or str(json.loads(args.cluster.read_text()).get("name", "cluster"))
        elif args.local is not None:
            nodes = local_nodes(args.local)
            name = args.name or "local"
        else:
            nodes = parse_hosts(args.hosts)
            name = args.name or "cluster"
        if args.renew_days < 0:
            raise CertsError("--renew-days must be ≥ 0")
        report = issue(
            args.out,
            nodes,
            cluster_name=name,
            renew_days=args.renew_days,
            clients=args.client,
            reissue=args.reissue,
        )
    except CertsError as error:
        print(f"raftkv certs: {error}", file=sys.stderr)
        return 2
    for action, path in report:
        print(f"{action} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
