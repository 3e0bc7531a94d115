"""The Ansible role without hosts: ansible-lint, syntax, the typed contract, the rendered
systemd unit (systemd-analyze verify, no warnings) and cluster description, and the readiness
probe's rules. The host lab test runs the same playbook against real hosts."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ansible", reason="install the deploy extra: make infra-deps")

import yaml  # type: ignore[import-untyped]

from raftkv.cluster import ClusterDescription

REPO_ROOT = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO_ROOT / "infra" / "ansible"
ROLE = ANSIBLE_DIR / "roles" / "raftkv"
VENV_BIN = Path(sys.executable).parent

INVENTORY = """
all:
  children:
    raftkv:
      vars:
        ansible_connection: local
        ansible_python_interpreter: {python}
        raftkv_cluster_name: static
        raftkv_profile: fast
      hosts:
        raftkv-0: {{ansible_host: 10.42.0.10, raftkv_node_id: 0, raftkv_internal_ip: 10.42.0.10}}
        raftkv-1: {{ansible_host: 10.42.1.11, raftkv_node_id: 1, raftkv_internal_ip: 10.42.1.11}}
        raftkv-2: {{ansible_host: 10.42.0.12, raftkv_node_id: 2, raftkv_internal_ip: 10.42.0.12}}
"""

# Renders the role's templates through a stand-in role that shares the real role's defaults,
# vars and templates (so variable precedence is the role's own) but only renders.
RENDER_TASKS = """
- name: Render the unit
  ansible.builtin.template:
    src: raftkv.service.j2
    dest: "{out}/{{{{ inventory_hostname }}}}.service"
    mode: "0644"
- name: Render the cluster description
  ansible.builtin.template:
    src: cluster.json.j2
    dest: "{out}/{{{{ inventory_hostname }}}}.json"
    mode: "0644"
"""
RENDER = """
- name: Render the raftkv templates for inspection
  hosts: raftkv
  gather_facts: false
  roles:
    - role: {role}
      raftkv_install_dir: {install}
      raftkv_lease_seconds: 4.0
"""


def ansible_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(ANSIBLE_DIR / "ansible.cfg"),
        ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"),
        ANSIBLE_HOME=str(tmp_path / "ansible-home"),
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


def run(command: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        env=ansible_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=REPO_ROOT,
    )


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp_path = tmp_path_factory.mktemp("render")
    install = tmp_path / "opt-raftkv"
    (install / "venv" / "bin").mkdir(parents=True)
    executable = install / "venv" / "bin" / "raftkv-node"
    executable.write_text("#!/bin/sh\n")
    executable.chmod(0o755)
    out = tmp_path / "out"
    out.mkdir()
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(INVENTORY.format(python=sys.executable))
    role = tmp_path / "render-role"
    (role / "tasks").mkdir(parents=True)
    for part in ("defaults", "vars", "templates"):
        (role / part).symlink_to(ROLE / part)
    (role / "tasks" / "main.yml").write_text(RENDER_TASKS.format(out=out))
    playbook = tmp_path / "render.yml"
    playbook.write_text(RENDER.format(role=role, install=install))
    result = run(
        [str(VENV_BIN / "ansible-playbook"), "-i", str(inventory), str(playbook)], tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def test_ansible_lint_passes_the_production_profile(tmp_path: Path) -> None:
    result = run(
        [
            str(VENV_BIN / "ansible-lint"),
            "-c",
            str(ANSIBLE_DIR / ".ansible-lint"),
            str(ANSIBLE_DIR),
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 failure(s), 0 warning(s)" in result.stderr + result.stdout


@pytest.mark.parametrize("playbook", ["site.yml", "rolling-restart.yml"])
def test_the_playbooks_parse(playbook: str, tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(INVENTORY.format(python=sys.executable))
    result = run(
        [
            str(VENV_BIN / "ansible-playbook"),
            "--syntax-check",
            "-i",
            str(inventory),
            str(ANSIBLE_DIR / playbook),
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def test_every_role_variable_is_prefixed_typed_and_described() -> None:
    specs = load(ROLE / "meta" / "argument_specs.yml")["argument_specs"]
    options = specs["main"]["options"]
    defaults = load(ROLE / "defaults" / "main.yml")
    for name in defaults:
        assert name in options, f"{name} has no entry in meta/argument_specs.yml"
    for entry in specs.values():
        for name, spec in entry["options"].items():
            assert name.startswith("raftkv_"), name
            assert spec.get("type") and spec.get("description"), f"{name} needs a type and text"
            assert (
                spec.get("required")
                or "default" in spec
                or name in defaults
                or name in ("raftkv_lease_seconds", "raftkv_client_ip")
            ), f"{name}: no default"
    for name in load(ROLE / "vars" / "main.yml"):
        assert name.startswith("raftkv_"), name


def test_templates_say_they_are_managed() -> None:
    for template in (ROLE / "templates").iterdir():
        assert "{{ ansible_managed" in template.read_text(), template.name


def test_the_unit_verifies_without_a_warning(rendered: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    unit = rendered / "raftkv-1.service"
    text = unit.read_text()
    for hardening in (
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "ReadWritePaths=/var/lib/raftkv",
        "Restart=on-failure",
        "CapabilityBoundingSet=\n",
        "User=raftkv",
    ):
        assert hardening in text
    assert "--id 1 " in text and "--lease 4.0" in text and "--max-drift 0.01" in text
    assert "--profile fast" in text and "Description=raftkv node 1 of cluster static" in text
    assert "--tls-key /etc/raftkv/tls/node.key" in text
    # systemd-analyze exits 0 on warnings: any output at all is a failure.
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_the_cluster_description_lists_every_peer(rendered: Path) -> None:
    descriptions = [ClusterDescription.load(rendered / f"raftkv-{i}.json") for i in range(3)]
    assert all(d == descriptions[0] for d in descriptions)
    nodes = descriptions[0].nodes
    assert [(n.id, n.address) for n in nodes] == [
        (0, "10.42.0.10:50050"),
        (1, "10.42.1.11:50050"),
        (2, "10.42.0.12:50050"),
    ]
    assert descriptions[0].tls == {"ca": "/etc/raftkv/tls/ca.pem"}
    assert descriptions[0].profile == "fast" and descriptions[0].name == "static"


def probe_module() -> Any:
    spec = importlib.util.spec_from_file_location(
        "raftkv_probe", ROLE / "files" / "raftkv_probe.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def row(
    node: int,
    role: str = "follower",
    term: int = 3,
    leader: int | None = 0,
    applied: int = 10,
    reachable: bool = True,
) -> Any:
    from raftkv.client.library import NodeStatusRow

    if not reachable:
        return NodeStatusRow(node, f"n{node}:1", False, error="connection refused")
    return NodeStatusRow(
        node,
        f"n{node}:1",
        True,
        role=role,
        term=term,
        leader_id=leader,
        commit_length=applied,
        applied_length=applied,
    )


def test_the_probe_lets_a_node_stop_only_while_the_others_keep_a_majority() -> None:
    probe = probe_module()
    healthy = [row(0, "leader"), row(1), row(2)]
    assert probe.safe_to_stop(healthy, 1) is None
    assert probe.safe_to_stop(healthy, 0) is None  # 1 and 2 still agree on the (old) leader
    one_down = [row(0, "leader"), row(1), row(2, reachable=False)]
    assert "only nodes [0]" in probe.safe_to_stop(one_down, 1)
    assert probe.safe_to_stop([row(0), row(1), row(2)], 0) == "no node is leader"


def test_the_probe_waits_for_a_restarted_node_to_catch_up() -> None:
    probe = probe_module()
    target: list[int] = []
    behind = [row(0, "leader", applied=10), row(1, applied=4), row(2)]
    assert "applied 4 of 10" in probe.joined(behind, 1, target)
    assert (
        probe.joined([row(0, "leader", applied=12), row(1, applied=10), row(2)], 1, target) is None
    )
    assert "does not follow" in probe.joined([row(0, "leader"), row(1, leader=None), row(2)], 1, [])
