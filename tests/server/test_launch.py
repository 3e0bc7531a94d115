"""raftkv.server.launch: the argv builder and the parser it mirrors (raftkv.server.main) agree."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from raftkv.core.config import ReadMode, SnapshotPolicy
from raftkv.core.node import UnsafeSwitches
from raftkv.core.state_machine import DEFAULT_SESSION_RULES
from raftkv.server import main as node_main
from raftkv.server.launch import CONSOLE_SCRIPT, PYTHON_MODULE, NodeLaunch, TlsFiles
from raftkv.server.main import build_parser
from raftkv.server.seams import session_rules_from

EVERY_SWITCH = UnsafeSwitches(**{name: True for name in UnsafeSwitches.__slots__})
# The assignment's positional form and its --base-port are not for launchers.
NOT_EMITTED = {"-h", "--help", "--base-port"}


def everything(**changes: object) -> NodeLaunch:
    options: dict[str, object] = {
        "cluster": Path("/c/cluster.json"),
        "data_dir": Path("/c/data"),
        "profile": "seed",
        "read_mode": ReadMode.READ_INDEX,
        "lease": 2.5,
        "max_drift": 0.25,
        "listen": "0.0.0.0:50051",
        "peer_listen": "0.0.0.0:51051",
        "tls": TlsFiles(Path("/t/ca.pem"), Path("/t/node.pem"), Path("/t/node.key")),
        "client_cert_auth": True,
        "certs": Path("/t"),
        "peer_tls": TlsFiles(Path("/p/ca.pem"), Path("/p/node.pem"), Path("/p/node.key")),
        "insecure_peers": True,
        "cluster_id": "c-1",
        "initial_cluster_state": "existing",
        "quiet": True,
        "chrony_conf": Path("/etc/chrony/other.conf"),
        "snapshots": SnapshotPolicy(50, 4096, 10),
        "unsafe": EVERY_SWITCH,
        "fsync": False,
        "allow_unsafe": True,
    }
    options.update(changes)
    return NodeLaunch(3, **options)  # type: ignore[arg-type]


def test_every_field_reaches_the_parser_with_its_meaning() -> None:
    args = build_parser().parse_args(everything().args())
    assert args.positional == []
    assert args.node_id == 3
    assert args.cluster == Path("/c/cluster.json")
    assert args.peers is None
    assert args.data_dir == Path("/c/data")
    assert args.profile == "seed"
    assert args.read_mode == ReadMode.READ_INDEX.value
    assert args.lease == 2.5
    assert args.max_drift == 0.25
    assert args.listen == "0.0.0.0:50051"
    assert (args.tls_ca, args.tls_cert, args.tls_key) == (
        Path("/t/ca.pem"),
        Path("/t/node.pem"),
        Path("/t/node.key"),
    )
    assert args.peer_listen == "0.0.0.0:51051"
    assert args.client_cert_auth is True
    assert args.certs == Path("/t")
    assert (args.peer_ca, args.peer_cert, args.peer_key) == (
        Path("/p/ca.pem"),
        Path("/p/node.pem"),
        Path("/p/node.key"),
    )
    assert args.insecure_peers is True
    assert args.cluster_id == "c-1"
    assert args.initial_cluster_state == "existing"
    assert args.quiet is True
    assert args.chrony_conf == Path("/etc/chrony/other.conf")
    assert (args.snapshot_entries, args.snapshot_bytes, args.trailing_entries) == (50, 4096, 10)
    assert args.unsafe_no_fsync is True
    assert args.allow_unsafe is True
    for name in UnsafeSwitches.__slots__:
        assert getattr(args, f"unsafe_{name}") is True, name


def test_defaults_emit_nothing_but_the_node_and_its_cluster() -> None:
    spec = NodeLaunch(0, peers=["10.0.0.1:50050", "10.0.0.2:50050"])
    assert spec.args() == ["--id", "0", "--peers", "10.0.0.1:50050,10.0.0.2:50050"]
    args = build_parser().parse_args(spec.args())
    assert args.peers == "10.0.0.1:50050,10.0.0.2:50050"
    assert not args.quiet and not args.unsafe_no_fsync and not args.allow_unsafe
    assert not any(getattr(args, f"unsafe_{name}") for name in UnsafeSwitches.__slots__)


def test_every_flag_of_the_parser_has_a_field() -> None:
    """The other direction: a flag added to raftkv-node without a field here fails this test."""
    parser_flags = {
        flag for action in build_parser()._actions for flag in action.option_strings
    } - NOT_EMITTED
    emitted = {a for a in everything().args() if a.startswith("--")}
    emitted |= {a for a in everything(cluster=None, peers=["h:1"]).args() if a.startswith("--")}
    assert emitted == parser_flags


def test_extra_args_come_last_and_env_is_not_on_the_command_line() -> None:
    spec = NodeLaunch(
        1,
        cluster=Path("c.json"),
        extra_args=["--unsafe-read-without-lease"],
        env={"RAFTKV_CLOCK_RATE": "1.005"},
        allow_unsafe=True,
    )
    assert spec.args()[-2:] == ["--allow-unsafe", "--unsafe-read-without-lease"]
    assert "RAFTKV_CLOCK_RATE" not in " ".join(spec.command())
    assert build_parser().parse_args(spec.args()).unsafe_read_without_lease


def test_programs_a_python_module_or_the_console_script() -> None:
    spec = NodeLaunch(1, cluster=Path("/etc/raftkv/cluster.json"), quiet=True)
    assert spec.command()[: len(PYTHON_MODULE)] == list(PYTHON_MODULE)
    assert shlex.join(spec.command(CONSOLE_SCRIPT)) == (
        "raftkv-node --id 1 --cluster /etc/raftkv/cluster.json --quiet"
    )


@pytest.mark.parametrize(
    "changes",
    [
        {"cluster": None},
        {"peers": ["h:1"]},
        {"read_mode": "eventual"},
        {"initial_cluster_state": "joining"},
    ],
)
def test_a_spec_the_node_would_refuse_is_refused_here(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        everything(**changes)


@pytest.mark.parametrize(
    ("changes", "seam"),
    [
        ({"unsafe": UnsafeSwitches(skip_lease_wait=True)}, "--unsafe-skip-lease-wait"),
        ({"fsync": False}, "--unsafe-no-fsync"),
        ({"extra_args": ["--unsafe-read-before-noop"]}, "--unsafe-read-before-noop"),
        ({"env": {"RAFTKV_CLOCK_RATE": "0.3"}}, "RAFTKV_CLOCK_RATE=0.3"),
        (
            {"env": {"RAFTKV_FAILPOINT": "after-log-write-before-fsync"}},
            "RAFTKV_FAILPOINT=after-log-write-before-fsync",
        ),
        (
            {"env": {"RAFTKV_TEST_SESSION_LIFETIME_MS": "2000"}},
            "RAFTKV_TEST_SESSION_LIFETIME_MS=2000",
        ),
    ],
)
def test_a_test_seam_needs_allow_unsafe(changes: dict[str, object], seam: str) -> None:
    with pytest.raises(ValueError, match=f"test seams {seam} need allow_unsafe=True"):
        NodeLaunch(1, cluster=Path("c.json"), **changes)  # type: ignore[arg-type]
    spec = NodeLaunch(1, cluster=Path("c.json"), allow_unsafe=True, **changes)  # type: ignore[arg-type]
    assert spec.seams() == [seam]
    assert "--allow-unsafe" in spec.args()


@pytest.mark.parametrize("rate", ["1", "1.0"])
def test_a_clock_at_rate_one_is_no_seam(rate: str) -> None:
    spec = NodeLaunch(1, cluster=Path("c.json"), env={"RAFTKV_CLOCK_RATE": rate})
    assert spec.seams() == []
    assert "--allow-unsafe" not in spec.args()


@pytest.mark.parametrize("rate", ["0", "-1", "nan", "inf", "abc", ""])
def test_a_clock_rate_the_node_refuses_is_refused_here(rate: str) -> None:
    with pytest.raises(ValueError, match="RAFTKV_CLOCK_RATE"):
        NodeLaunch(1, cluster=Path("c.json"), env={"RAFTKV_CLOCK_RATE": rate}, allow_unsafe=True)


@pytest.mark.parametrize("lifetime", ["0", "-5", "1.5", "abc", "", "٣"])
def test_a_session_lifetime_the_node_refuses_is_refused_here(lifetime: str) -> None:
    env = {"RAFTKV_TEST_SESSION_LIFETIME_MS": lifetime}
    with pytest.raises(ValueError, match="RAFTKV_TEST_SESSION_LIFETIME_MS"):
        NodeLaunch(1, cluster=Path("c.json"), env=env, allow_unsafe=True)


def test_a_session_lifetime_sets_the_rules_and_eviction_never_outlasts_it() -> None:
    assert session_rules_from({}) == DEFAULT_SESSION_RULES
    short = session_rules_from({"RAFTKV_TEST_SESSION_LIFETIME_MS": "2000"})
    assert (short.lifetime_ms, short.evict_idle_ms) == (2000, 2000)
    assert short.max_sessions == DEFAULT_SESSION_RULES.max_sessions
    long = session_rules_from({"RAFTKV_TEST_SESSION_LIFETIME_MS": "3600000"})
    assert (long.lifetime_ms, long.evict_idle_ms) == (
        3_600_000,
        DEFAULT_SESSION_RULES.evict_idle_ms,
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--snapshot-entries", "0"], "snapshot entries must be a positive integer, got 0"),
        (["--snapshot-bytes", "-5"], "snapshot bytes must be a positive integer, got -5"),
        (["--trailing-entries", "-1"], "trailing_entries must be an integer ≥ 0, got -1"),
        (["--snapshot-idle", "0"], "snapshot idle must be a positive number of seconds, got 0"),
        (["--snapshot-idle", "inf"], "snapshot idle must be a positive number of seconds"),
    ],
)
def test_a_snapshot_policy_the_core_refuses_exits_2_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    node = ["--id", "0", "--peers", "127.0.0.1:1,127.0.0.1:2", "--data-dir", str(tmp_path)]
    status = node_main.main([*node, "--insecure-peers", "--allow-unsafe", *flags])
    assert status == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
