"""infra/deploy.py: nothing is created without credentials and settings; Terraform's outputs
become the cluster description and the inventory (through python-terraform, on the real
provider-free module)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("hcl2", reason="install the deploy extra: make infra-deps")
pytest.importorskip("python_terraform", reason="install the deploy extra: make infra-deps")

REPO_ROOT = Path(__file__).resolve().parents[2]
from infra import deploy  # noqa: E402
from raftkv.cluster import ClusterDescription  # noqa: E402

yaml = pytest.importorskip("yaml")

FULL_TFVARS = """
project_id     = "raftkv-test-1"
admin_cidrs    = ["203.0.113.7/32"]
ssh_public_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ+test test@example"
"""


@pytest.fixture
def no_terraform(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record any attempt to run Terraform (there must be none before the checks pass)."""
    calls: list[str] = []

    def refuse(working_dir: Path) -> Any:
        calls.append(str(working_dir))
        raise AssertionError("terraform must not run")

    monkeypatch.setattr(deploy, "terraform", refuse)
    return calls


def test_no_credentials_stops_before_anything_is_created(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    no_terraform: list[str],
) -> None:
    for name in (
        "GOOGLE_APPLICATION_CREDENTIALS",
        "GOOGLE_CREDENTIALS",
        "GOOGLE_OAUTH_ACCESS_TOKEN",
        "CLOUDSDK_CONFIG",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    for command in ("up", "down", "check"):
        assert deploy.main([command]) == 2
        error = capsys.readouterr().err
        assert "no Google Cloud credentials found, so nothing was created" in error
        assert "gcloud auth application-default login" in error
        assert "GOOGLE_APPLICATION_CREDENTIALS" in error
    assert no_terraform == []


def test_a_missing_key_file_is_named(tmp_path: Path) -> None:
    env = {"GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "key.json")}
    with pytest.raises(deploy.SetupError, match=r"key\.json, which does not exist"):
        deploy.find_credentials(env, tmp_path)


def test_each_credential_source_is_recognised(tmp_path: Path) -> None:
    key = tmp_path / "key.json"
    key.write_text(json.dumps({"type": "service_account"}))
    assert "service_account" in deploy.find_credentials(
        {"GOOGLE_APPLICATION_CREDENTIALS": str(key)}, tmp_path
    )
    assert deploy.find_credentials({"GOOGLE_OAUTH_ACCESS_TOKEN": "x"}, tmp_path) == (
        "GOOGLE_OAUTH_ACCESS_TOKEN"
    )
    adc = tmp_path / ".config/gcloud/application_default_credentials.json"
    adc.parent.mkdir(parents=True)
    adc.write_text("{}")
    assert "application-default" in deploy.find_credentials({}, tmp_path)


def test_missing_settings_are_named_before_anything_is_created(tmp_path: Path) -> None:
    with pytest.raises(deploy.SetupError) as caught:
        deploy.check_settings(tmp_path / "terraform.tfvars", {})
    message = str(caught.value)
    assert "project_id, admin_cidrs, ssh_public_key must be set, so nothing was created" in message
    assert "terraform.tfvars.example" in message
    tfvars = tmp_path / "terraform.tfvars"
    tfvars.write_text(FULL_TFVARS)
    deploy.check_settings(tfvars, {})
    tfvars.write_text('admin_cidrs = ["203.0.113.7/32"]\n')
    deploy.check_settings(
        tfvars, {"TF_VAR_project_id": "p-123456", "TF_VAR_ssh_public_key": "ssh-ed25519 AAAA"}
    )


def test_the_example_tfvars_sets_every_required_variable() -> None:
    deploy.check_settings(deploy.TERRAFORM_DIR / "terraform.tfvars.example", {})


@pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform is not on PATH")
def test_terraform_outputs_become_the_cluster_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHECKPOINT_DISABLE", "1")
    config = tmp_path / "terraformrc"
    config.write_text("")
    monkeypatch.setenv("TF_CLI_CONFIG_FILE", str(config))
    nodes = [deploy.LabNode(i, f"n{i}", f"192.0.2.{10 + i}", zone=f"z-{i}") for i in range(3)]
    cluster_json, inventory = deploy.render_cluster_files(
        nodes,
        tmp_path / "out",
        cluster_name="t",
        profile="seed",
        port=50051,
        peer_port=51051,
        ssh_user="deploy",
        tls=True,
        client_cert_auth=True,
    )
    description = ClusterDescription.load(cluster_json)
    assert [n.address for n in description.nodes] == [f"192.0.2.{10 + i}:50051" for i in range(3)]
    assert [n.peer_address for n in description.nodes] == [
        f"192.0.2.{10 + i}:51051" for i in range(3)
    ]
    assert [n.host for n in description.nodes] == [f"deploy@192.0.2.{10 + i}" for i in range(3)]
    # Relative to the file's folder, where the playbook makes the certificates.
    raw = json.loads(cluster_json.read_text())
    assert raw["tls"] == {
        "ca": "tls/ca.pem",
        "cert": "tls/client-ops.pem",
        "key": "tls/client-ops.key",
    }
    tls_dir = (cluster_json.parent / "tls").resolve()
    assert description.profile == "seed" and description.tls == {
        "ca": str(tls_dir / "ca.pem"),
        "cert": str(tls_dir / "client-ops.pem"),
        "key": str(tls_dir / "client-ops.key"),
    }
    assert re.fullmatch(r"t-[0-9a-f]{8}", description.cluster_id)
    text = inventory.read_text()
    assert "n2:\n          ansible_host: 192.0.2.12\n          raftkv_node_id: 2\n" in text
    group = yaml.safe_load(text)["all"]["children"]["raftkv"]["vars"]
    assert group["raftkv_cluster_id"] == description.cluster_id
    assert (group["raftkv_port"], group["raftkv_peer_port"]) == (50051, 51051)
    assert group["raftkv_tls_enabled"] is True and group["raftkv_client_cert_auth"] is True
    assert group["raftkv_client_cert_names"] == ["ops"]
    before = cluster_json.stat().st_mtime_ns
    deploy.write_artifacts(
        {"cluster_description": cluster_json.read_text(), "inventory": text}, tmp_path / "out"
    )
    assert cluster_json.stat().st_mtime_ns == before  # unchanged content is not rewritten


def test_the_status_step_reads_the_written_description(tmp_path: Path) -> None:
    outputs = {
        "cluster_description": json.dumps(
            {"name": "x", "nodes": [{"id": 0, "address": "192.0.2.1:50050"}]}
        ),
        "inventory": "all: {}\n",
    }
    cluster_json, inventory = deploy.write_artifacts(outputs, tmp_path)
    assert ClusterDescription.load(cluster_json).nodes[0].address == "192.0.2.1:50050"
    assert inventory.read_text() == "all: {}\n"
