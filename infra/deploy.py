"""Create, configure and remove a raftkv cluster on Google Cloud.

    python infra/deploy.py up   [--ssh-key ~/.ssh/id_ed25519]   # make cluster-up CLOUD=gcp
    python infra/deploy.py down                                 # make cluster-down CLOUD=gcp
    python infra/deploy.py check                                # credentials and tfvars only

`up`: checks the Google credentials and infra/terraform/terraform.tfvars before anything is
created, runs `terraform init` and `terraform apply` (through python-terraform), writes the
cluster description and the Ansible inventory that Terraform rendered from its outputs to
cluster/gcp/ (cluster.json, inventory.yml), runs infra/ansible/site.yml on them, and prints the
cluster's status table. Re-running it converges: Terraform and Ansible change only what differs.

`down`: `terraform destroy`, then removes cluster/gcp/ (the certificates and the CA's key with it).

Ports (infra/terraform): each node serves clients on raftkv_port (50050), open to client_cidrs
and to the cluster's own VMs (the role's readiness probe), and the other nodes on
raftkv_peer_port (51050), open to the cluster's own VMs only; SSH (22) is open to admin_cidrs.
Certificates: the playbook makes them on this machine with `raftkv certs`, in cluster/gcp/tls/:
ca.pem and ca.key (the cluster's CA; the key never leaves this machine), node-<id>.pem and .key
(copied to node <id>, which uses them for both listeners: peers always authenticate each other
by mutual TLS), and client-ops.pem and .key, which cluster.json names so that Fabric and the
raftkv CLI can pass --client-cert-auth. infra/README.md says how to rotate them.

Credentials, as the google provider looks for them: GOOGLE_APPLICATION_CREDENTIALS (a key file),
GOOGLE_CREDENTIALS, GOOGLE_OAUTH_ACCESS_TOKEN, or gcloud's application-default credentials
(`gcloud auth application-default login`). Exit status: 0 done, 1 a step failed, 2 missing
credentials or settings (nothing was created).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
TERRAFORM_DIR = REPO_ROOT / "infra" / "terraform"
ANSIBLE_DIR = REPO_ROOT / "infra" / "ansible"
CLUSTER_FILES_MODULE = TERRAFORM_DIR / "modules" / "cluster_files"
DEFAULT_OUT = REPO_ROOT / "cluster" / "gcp"
TFVARS = TERRAFORM_DIR / "terraform.tfvars"


class DeployError(RuntimeError):
    """A step failed; the message says which and why."""


class SetupError(DeployError):
    """Credentials or settings are missing: nothing was created."""


# -- pre-flight checks ----------------------------------------------------------------------


def find_credentials(env: Mapping[str, str], home: Path) -> str:
    """Which Google credentials the provider will use; raises SetupError when there are none."""
    key_file = env.get("GOOGLE_APPLICATION_CREDENTIALS")
    if key_file:
        path = Path(key_file).expanduser()
        if not path.is_file():
            raise SetupError(
                f"GOOGLE_APPLICATION_CREDENTIALS names {path}, which does not exist. "
                "Point it at a service account key file, or unset it to use "
                "`gcloud auth application-default login`."
            )
        try:
            kind = json.loads(path.read_text()).get("type")
        except (json.JSONDecodeError, AttributeError, OSError) as error:
            raise SetupError(
                f"{path} (GOOGLE_APPLICATION_CREDENTIALS) is not JSON: {error}"
            ) from None
        return f"GOOGLE_APPLICATION_CREDENTIALS ({kind or 'unknown type'}, {path})"
    for name in ("GOOGLE_CREDENTIALS", "GOOGLE_OAUTH_ACCESS_TOKEN"):
        if env.get(name):
            return name
    config_dir = (
        Path(env["CLOUDSDK_CONFIG"]) if env.get("CLOUDSDK_CONFIG") else home / ".config/gcloud"
    )
    adc = config_dir / "application_default_credentials.json"
    if adc.is_file():
        return f"gcloud application-default credentials ({adc})"
    raise SetupError(
        "no Google Cloud credentials found, so nothing was created. Either run\n"
        "    gcloud auth application-default login\n"
        "or set GOOGLE_APPLICATION_CREDENTIALS to a service account key file "
        "(roles: Compute Admin on the project)."
    )


def required_variables(variables_tf: Path) -> list[str]:
    """Names of the root module's variables that have no default."""
    import hcl2  # python-hcl2, from the deploy extra

    options = hcl2.SerializationOptions(strip_string_quotes=True, explicit_blocks=False)
    with variables_tf.open() as handle:
        body = hcl2.load(handle, serialization_options=options)
    names = []
    for block in body.get("variable", []):
        for name, settings in block.items():
            if "default" not in settings:
                names.append(name)
    return names


def check_settings(tfvars: Path, env: Mapping[str, str]) -> None:
    """Every variable without a default must be set in terraform.tfvars or TF_VAR_<name>."""
    import hcl2

    given: dict[str, Any] = {}
    if tfvars.is_file():
        options = hcl2.SerializationOptions(strip_string_quotes=True, explicit_blocks=False)
        with tfvars.open() as handle:
            given = hcl2.load(handle, serialization_options=options)
    missing = [
        name
        for name in required_variables(TERRAFORM_DIR / "variables.tf")
        if name not in given and f"TF_VAR_{name}" not in env
    ]
    if missing:
        example = TERRAFORM_DIR / "terraform.tfvars.example"
        raise SetupError(
            f"{', '.join(missing)} must be set, so nothing was created: copy {example} to "
            f"{tfvars} and fill it in (or export TF_VAR_<name>)."
        )


# -- Terraform ------------------------------------------------------------------------------


def terraform(working_dir: Path) -> Any:
    from python_terraform import Terraform  # type: ignore[import-untyped]

    return Terraform(working_dir=str(working_dir))


def _check(result: tuple[int, str | None, str | None], step: str) -> str:
    code, out, err = result
    if code != 0:
        raise DeployError(f"terraform {step} failed (exit {code}){': ' + err if err else ''}")
    return out or ""


def terraform_outputs(tf: Any) -> dict[str, Any]:
    """`terraform output -json` as {name: value}. python-terraform 0.10.1's own output() cannot
    parse current Terraform's JSON, so this goes through cmd()."""
    text = _check(tf.cmd("output", "-json"), "output")
    return {name: entry["value"] for name, entry in json.loads(text).items()}


def write_artifacts(outputs: Mapping[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Save the cluster description and inventory Terraform rendered; returns their paths."""
    description = json.loads(outputs["cluster_description"])
    out_dir.mkdir(parents=True, exist_ok=True)
    cluster_json = out_dir / "cluster.json"
    inventory = out_dir / "inventory.yml"
    _replace(cluster_json, json.dumps(description, indent=2) + "\n")
    _replace(inventory, outputs["inventory"])
    return cluster_json, inventory


def _replace(path: Path, text: str) -> None:
    if path.exists() and path.read_text() == text:
        return
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    temporary.replace(path)


@dataclass(frozen=True)
class LabNode:
    """A node whose address Terraform did not allocate (the host-lab test's containers)."""

    id: int
    name: str
    address: str
    zone: str = "lab"


def render_cluster_files(
    nodes: Sequence[LabNode],
    out_dir: Path,
    *,
    cluster_name: str,
    profile: str,
    port: int,
    peer_port: int,
    ssh_user: str,
    tls: bool,
    client_cert_auth: bool,
    data_dir: str = "/var/lib/raftkv",
) -> tuple[Path, Path]:
    """Render cluster.json and inventory.yml with the same Terraform module and templates the
    cloud deployment uses (modules/cluster_files, provider-free, applied in a scratch dir; the
    cluster id is a new one each time)."""
    with tempfile.TemporaryDirectory(prefix="raftkv-render-") as scratch_name:
        scratch = Path(scratch_name)
        variables = {
            "cluster_name": cluster_name,
            "port": port,
            "peer_port": peer_port,
            "data_dir": data_dir,
            "profile": profile,
            "ssh_user": ssh_user,
            "tls": tls,
            "client_cert_auth": client_cert_auth,
            "nodes": [
                {
                    "id": n.id,
                    "name": n.name,
                    "zone": n.zone,
                    "internal_ip": n.address,
                    "external_ip": n.address,
                }
                for n in nodes
            ],
        }
        (scratch / "main.tf").write_text(
            f'module "files" {{\n  source = "{CLUSTER_FILES_MODULE}"\n'
            + "".join(f"  {key} = var.{key}\n" for key in variables)
            + "}\n"
            + "".join(f'variable "{key}" {{}}\n' for key in variables)
            + 'output "cluster_description" { value = module.files.cluster_description }\n'
            + 'output "inventory" { value = module.files.inventory }\n'
        )
        (scratch / "terraform.tfvars.json").write_text(json.dumps(variables))
        tf = terraform(scratch)
        _check(tf.init(backend=False, reconfigure=None), "init")
        _check(tf.apply(skip_plan=True), "apply")
        return write_artifacts(terraform_outputs(tf), out_dir)


# -- Ansible and status ---------------------------------------------------------------------


def ansible_environment(control_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["ANSIBLE_CONFIG"] = str(ANSIBLE_DIR / "ansible.cfg")
    # A fresh ControlPersist directory per run: a reused master for a host whose sshd restarted
    # hangs or fails.
    env["ANSIBLE_SSH_CONTROL_PATH_DIR"] = str(control_dir)
    env["ANSIBLE_FORCE_COLOR"] = "0"
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    return env


def playbook_command(
    inventory: Path,
    playbook: str = "site.yml",
    private_key: Path | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    command = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory)]
    if private_key is not None:
        command += ["--private-key", str(private_key)]
    return [*command, *extra, str(ANSIBLE_DIR / playbook)]


def run_playbook(
    inventory: Path, private_key: Path | None = None, extra: Sequence[str] = ()
) -> None:
    with tempfile.TemporaryDirectory(prefix="raftkv-ansible-cp-") as control_dir:
        result = subprocess.run(
            playbook_command(inventory, private_key=private_key, extra=extra),
            env=ansible_environment(Path(control_dir)),
            check=False,
        )
    if result.returncode != 0:
        raise DeployError(f"ansible-playbook failed (exit {result.returncode})")


def print_status(cluster_json: Path, private_key: Path | None) -> None:
    sys.path.insert(0, str(REPO_ROOT))
    from fabric import Config  # type: ignore[import-untyped]
    from invoke.context import Context

    import fabfile

    config = Config()
    if private_key is not None:
        config.connect_kwargs.key_filename = [str(private_key)]
    print(fabfile.status_table(fabfile.load_cluster(str(cluster_json)), Context(config)))


# -- commands -------------------------------------------------------------------------------


def preflight(env: Mapping[str, str]) -> str:
    credentials = find_credentials(env, Path.home())
    check_settings(TFVARS, env)
    if shutil.which("terraform") is None:
        raise SetupError("terraform is not on PATH (Terraform ≥ 1.6 is needed)")
    return credentials


def up(out_dir: Path, private_key: Path | None) -> None:
    credentials = preflight(os.environ)
    print(f"deploy: using {credentials}")
    tf = terraform(TERRAFORM_DIR)
    _check(tf.init(capture_output=False, reconfigure=None), "init")
    _check(tf.apply(skip_plan=True, capture_output=False, var_file=str(TFVARS)), "apply")
    cluster_json, inventory = write_artifacts(terraform_outputs(tf), out_dir)
    print(f"deploy: wrote {cluster_json} and {inventory}")
    run_playbook(inventory, private_key)
    print_status(cluster_json, private_key)


def down(out_dir: Path) -> None:
    from python_terraform import IsFlagged, IsNotFlagged

    credentials = preflight(os.environ)
    print(f"deploy: using {credentials}")
    tf = terraform(TERRAFORM_DIR)
    _check(tf.init(capture_output=False, reconfigure=None), "init")
    # python-terraform 0.10.1 passes -force, which Terraform ≥ 0.15 no longer accepts.
    _check(
        tf.destroy(
            force=IsNotFlagged, auto_approve=IsFlagged, capture_output=False, var_file=str(TFVARS)
        ),
        "destroy",
    )
    if out_dir.exists():
        shutil.rmtree(out_dir)
        print(f"deploy: removed {out_dir}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python infra/deploy.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=["up", "down", "check"])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="for cluster.json etc.")
    parser.add_argument("--ssh-key", type=Path, help="private key for ssh_user (else ssh-agent)")
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            print(f"deploy: credentials: {preflight(os.environ)}; settings complete")
        elif args.command == "up":
            up(args.out, args.ssh_key)
        else:
            down(args.out)
    except SetupError as error:
        print(f"deploy: {error}", file=sys.stderr)
        return 2
    except DeployError as error:
        print(f"deploy: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
