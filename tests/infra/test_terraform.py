"""Terraform without a cloud: formatting, the provider-free modules (`terraform test`), the root
module's variable rules (on a copy of variables.tf) and its structure (parsed with python-hcl2).

The root module itself cannot be `terraform validate`d here: that needs the google provider,
which cannot be downloaded on this machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from raftkv.cluster import PEER_PORT_OFFSET

REPO_ROOT = Path(__file__).resolve().parents[2]
TERRAFORM_DIR = REPO_ROOT / "infra" / "terraform"
MODULES = ["topology", "cluster_files"]

if shutil.which("terraform") is None:
    pytest.skip("terraform is not on PATH", allow_module_level=True)


@pytest.fixture
def tf_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    config = tmp_path / "terraformrc"
    config.write_text("")
    env = dict(os.environ)
    env.update(
        TF_CLI_CONFIG_FILE=str(config),  # no plugin cache or registry settings from the machine
        TF_DATA_DIR=str(tmp_path / "tfdata"),  # .terraform/ outside the source tree
        TF_IN_AUTOMATION="1",
        CHECKPOINT_DISABLE="1",  # no version check over the network
    )
    yield env


def terraform(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["terraform", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_everything_is_formatted(tf_env: dict[str, str]) -> None:
    result = terraform(["fmt", "-check", "-recursive", "-diff", "-no-color"], TERRAFORM_DIR, tf_env)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("module", MODULES)
def test_a_provider_free_module_validates_and_passes_its_tests(
    module: str, tf_env: dict[str, str]
) -> None:
    directory = TERRAFORM_DIR / "modules" / module
    for args in (
        ["init", "-backend=false", "-input=false", "-no-color"],
        ["validate", "-no-color"],
        ["test", "-no-color"],
    ):
        result = terraform(args, directory, tf_env)
        assert result.returncode == 0, f"terraform {args[0]}:\n{result.stdout}{result.stderr}"
    assert "0 failed" in result.stdout
    assert not (directory / ".terraform").exists()


def test_the_root_module_variable_rules(tmp_path: Path, tf_env: dict[str, str]) -> None:
    scratch = tmp_path / "root-variables"
    (scratch / "tests").mkdir(parents=True)
    shutil.copy2(TERRAFORM_DIR / "variables.tf", scratch / "variables.tf")
    shutil.copy2(
        Path(__file__).parent / "terraform" / "root_variables.tftest.hcl",
        scratch / "tests" / "root_variables.tftest.hcl",
    )
    assert terraform(["init", "-backend=false", "-no-color"], scratch, tf_env).returncode == 0
    result = terraform(["test", "-no-color"], scratch, tf_env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "14 passed, 0 failed" in result.stdout


def load_hcl(path: Path) -> dict[str, Any]:
    hcl2 = pytest.importorskip("hcl2", reason="install the deploy extra: make infra-deps")
    options = hcl2.SerializationOptions(strip_string_quotes=True, explicit_blocks=False)
    with path.open() as handle:
        body: dict[str, Any] = hcl2.load(handle, serialization_options=options)
    return body


def variables(path: Path) -> dict[str, dict[str, Any]]:
    return {name: spec for block in load_hcl(path)["variable"] for name, spec in block.items()}


@pytest.mark.parametrize(
    "path",
    [TERRAFORM_DIR / "variables.tf"]
    + [TERRAFORM_DIR / "modules" / m / "variables.tf" for m in MODULES],
    ids=["root", *MODULES],
)
def test_every_variable_is_typed_and_described(path: Path) -> None:
    for name, spec in variables(path).items():
        assert "type" in spec, f"{path.name}: variable {name} has no type"
        assert len(spec.get("description", "")) > 15, f"{path.name}: {name} is not described"


def test_the_root_contract() -> None:
    spec = variables(TERRAFORM_DIR / "variables.tf")
    assert "default" not in spec["project_id"], "the project id must have no default"
    assert "default" not in spec["admin_cidrs"]
    for name in (
        "project_id",
        "zones",
        "node_count",
        "client_cidrs",
        "admin_cidrs",
        "ssh_public_key",
        "network_cidr",
        "raftkv_port",
        "raftkv_peer_port",
    ):
        assert spec[name].get("validation"), f"{name} needs a validation block"
    assert spec["raftkv_peer_port"]["default"] == 50050 + PEER_PORT_OFFSET
    assert spec["client_cert_auth"]["default"] is True and spec["tls"]["default"] is True
    outputs = {name for block in load_hcl(TERRAFORM_DIR / "outputs.tf")["output"] for name in block}
    assert {
        "node_ids",
        "node_names",
        "zones",
        "internal_addresses",
        "external_addresses",
        "cluster_description",
        "inventory",
        "ports",
        "cluster_id",
    } <= outputs
    versions = load_hcl(TERRAFORM_DIR / "versions.tf")["terraform"][0]
    assert versions["required_providers"][0]["google"]["source"] == "hashicorp/google"


def resources(path: Path) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for block in load_hcl(path)["resource"]:
        for kind, named in block.items():
            for name, body in named.items():
                found[f"{kind}.{name}"] = body
    return found


PEER_PORT = "${tostring(module.topology.ports.peer)}"
CLIENT_PORT = "${tostring(module.topology.ports.client)}"


def tcp_ports(rule: dict[str, Any]) -> list[str]:
    return [
        port for allow in rule["allow"] if allow["protocol"] == "tcp" for port in allow["ports"]
    ]


def test_the_firewall_opens_only_what_it_must() -> None:
    found = resources(TERRAFORM_DIR / "main.tf")
    rules = {k: v for k, v in found.items() if k.startswith("google_compute_firewall.")}
    ssh = found["google_compute_firewall.ssh"]
    assert ssh["source_ranges"] == "${var.admin_cidrs}"
    assert tcp_ports(ssh) == ["22"]
    # The peer port: the cluster's own VMs (by tag), nobody else; they also reach the client
    # port (the readiness probe).
    peers = found["google_compute_firewall.peers"]
    assert peers["source_tags"] == ["${local.node_tag}"] and "source_ranges" not in peers
    assert tcp_ports(peers) == [PEER_PORT, CLIENT_PORT]
    # client_cidrs: the client port only.
    clients = found["google_compute_firewall.clients"]
    assert clients["source_ranges"] == "${var.client_cidrs}" and "source_tags" not in clients
    assert tcp_ports(clients) == [CLIENT_PORT]
    assert sorted(rules) == sorted(
        f"google_compute_firewall.{name}" for name in ("ssh", "peers", "clients")
    )
    for name, rule in rules.items():
        assert rule["direction"] == "INGRESS" and rule["target_tags"] == ["${local.node_tag}"]
        if rule is not peers:
            assert PEER_PORT not in tcp_ports(rule), f"{name} opens the peer port"


def test_the_modules_get_both_ports_and_the_tls_switches() -> None:
    modules = {
        n: b for block in load_hcl(TERRAFORM_DIR / "main.tf")["module"] for n, b in block.items()
    }
    assert modules["topology"]["port"] == "${var.raftkv_port}"
    assert modules["topology"]["peer_port"] == "${var.raftkv_peer_port}"
    files = modules["cluster_files"]
    assert files["port"] == "${module.topology.ports.client}"
    assert files["peer_port"] == "${module.topology.ports.peer}"
    assert files["tls"] == "${var.tls}" and files["client_cert_auth"] == "${var.client_cert_auth}"


def test_nodes_are_spread_and_subnets_follow_regions() -> None:
    found = resources(TERRAFORM_DIR / "main.tf")
    instance = found["google_compute_instance.node"]
    assert instance["zone"] == "${each.value.zone}"
    assert instance["boot_disk"][0]["initialize_params"][0]["image"] == "${var.image}"
    assert found["google_compute_subnetwork.raftkv"]["for_each"] == "${module.topology.subnets}"
    assert found["google_compute_network.raftkv"]["auto_create_subnetworks"] is False
