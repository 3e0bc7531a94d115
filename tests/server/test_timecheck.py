"""The start-up check of the host's time service (raftkv/server/timecheck.py): chrony's
configuration as chronyd reads it, the outcome for each situation, and the facts gathered from a
/proc tree and pid files (all built under tmp_path)."""

from __future__ import annotations

from pathlib import Path

import pytest

from raftkv.server.timecheck import (
    CHRONY_DEFAULT_MAXSLEWRATE,
    ChronyConfig,
    Outcome,
    TimeServiceCheck,
    assess,
    check_host,
    chrony_config_argument,
    chronyc_reaches_chronyd,
    read_chrony_config,
    running_time_services,
    suggested_maxslewrate,
)

RHO = 0.01  # the profiles' max_clock_drift: 10000 ppm


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def fake_process(proc: Path, pid: int, comm: str, *argv: str) -> None:
    write(proc / str(pid) / "comm", f"{comm}\n")
    (proc / str(pid) / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in argv))


# --- chrony's configuration ------------------------------------------------------------------


def test_the_setting_is_read_with_where_it_stands(tmp_path: Path) -> None:
    conf = write(tmp_path / "chrony.conf", "pool pool.example iburst\n\nmaxslewrate 500\n")
    config = read_chrony_config(conf)
    assert config == ChronyConfig(conf, 500.0, f"{conf}:3")


def test_no_setting_means_chronys_default(tmp_path: Path) -> None:
    conf = write(tmp_path / "chrony.conf", "pool pool.example iburst\nmakestep 1 3\n")
    assert read_chrony_config(conf) == ChronyConfig(conf)


def test_comments_are_skipped_and_directives_read_in_any_case(tmp_path: Path) -> None:
    conf = write(
        tmp_path / "chrony.conf",
        "# maxslewrate 1\n! maxslewrate 2\n  ; maxslewrate 3\n%maxslewrate 4\n"
        "\tMaxSlewRate   700\n",
    )
    config = read_chrony_config(conf)
    assert (config.maxslewrate, config.setting) == (700.0, f"{conf}:5")


def test_the_last_setting_counts_includes_read_where_they_stand(tmp_path: Path) -> None:
    included = write(tmp_path / "inc" / "slew.conf", "maxslewrate 90000\n")
    conf = write(tmp_path / "chrony.conf", f"maxslewrate 500\ninclude {tmp_path}/inc/*.conf\n")
    assert read_chrony_config(conf).setting == f"{included}:1"
    conf.write_text(f"include {tmp_path}/inc/*.conf\nmaxslewrate 500\n")
    assert read_chrony_config(conf).setting == f"{conf}:2"


def test_confdir_reads_conf_files_by_name_the_first_directory_winning_a_name(
    tmp_path: Path,
) -> None:
    local, vendor = tmp_path / "local", tmp_path / "vendor"
    write(vendor / "10-slew.conf", "maxslewrate 90000\n")  # overridden by local's file
    write(local / "10-slew.conf", "maxslewrate 1000\n")
    write(vendor / "20-more.conf", "maxslewrate 2000\n")  # read after 10-*, from vendor
    write(local / "30-notes.txt", "maxslewrate 3\n")  # not *.conf
    conf = write(tmp_path / "chrony.conf", f"confdir {local} {vendor}\n")
    config = read_chrony_config(conf)
    assert (config.maxslewrate, config.setting) == (2000.0, f"{vendor / '20-more.conf'}:1")
    (vendor / "20-more.conf").unlink()
    assert read_chrony_config(conf).setting == f"{local / '10-slew.conf'}:1"


def test_debians_layout_with_a_setting_in_conf_d(tmp_path: Path) -> None:
    setting = write(tmp_path / "conf.d" / "raftkv.conf", "maxslewrate 500\n")
    write(tmp_path / "sources.d" / "a.sources", "server ntp.example iburst\n")
    conf = write(
        tmp_path / "chrony.conf",
        f"confdir {tmp_path}/conf.d\npool 2.debian.pool.ntp.org iburst\n"
        f"sourcedir /run/chrony-dhcp\nsourcedir {tmp_path}/sources.d\n"
        "keyfile /etc/chrony/chrony.keys\ndriftfile /var/lib/chrony/chrony.drift\n"
        "makestep 1 3\nleapsectz right/UTC\n",
    )
    assert read_chrony_config(conf) == ChronyConfig(conf, 500.0, f"{setting}:1")


def test_includes_that_match_nothing_are_skipped(tmp_path: Path) -> None:
    conf = write(
        tmp_path / "chrony.conf",
        f"include {tmp_path}/none/*.conf\ninclude {tmp_path}/missing.conf\n"
        f"confdir {tmp_path}/nodir\nmaxslewrate 500\n",
    )
    assert read_chrony_config(conf) == ChronyConfig(conf, 500.0, f"{conf}:4")


def test_a_missing_or_unreadable_file_is_a_problem(tmp_path: Path) -> None:
    missing = tmp_path / "chrony.conf"
    assert read_chrony_config(missing).problem == f"{missing} does not exist"
    directory = tmp_path / "dir.conf"
    directory.mkdir()
    problem = read_chrony_config(directory).problem
    assert problem is not None and problem.startswith(f"{directory} cannot be read (")
    conf = write(tmp_path / "main.conf", f"include {directory}\nmaxslewrate 500\n")
    assert read_chrony_config(conf).problem == problem


@pytest.mark.parametrize("value", ["fast", "1 2", "", "nan", "-5"])
def test_an_unreadable_setting_is_a_problem(tmp_path: Path, value: str) -> None:
    conf = write(tmp_path / "chrony.conf", f"maxslewrate {value}\n")
    problem = read_chrony_config(conf).problem
    assert problem == f"{conf}:1 has an unreadable maxslewrate ({f'maxslewrate {value}'.strip()!r})"


def test_an_include_cycle_ends(tmp_path: Path) -> None:
    conf = write(tmp_path / "chrony.conf", f"include {tmp_path}/chrony.conf\n")
    assert read_chrony_config(conf).problem == f"{conf} is included more than 10 levels deep"


def test_the_pidfile_directive_is_read(tmp_path: Path) -> None:
    conf = write(tmp_path / "chrony.conf", "pidfile /run/elsewhere.pid\n")
    assert read_chrony_config(conf).pidfile == Path("/run/elsewhere.pid")


# --- the outcome -----------------------------------------------------------------------------


def chrony(rate: float | None, problem: str | None = None) -> ChronyConfig:
    path = Path("/etc/chrony/chrony.conf")
    return ChronyConfig(path, rate, None if rate is None else f"{path}:7", None, problem)


def test_chronyd_within_rho_is_bounded() -> None:
    check = assess(RHO, {"chronyd"}, chrony(500))
    assert check == TimeServiceCheck(
        Outcome.BOUNDED,
        "chronyd slews at most 500 ppm (maxslewrate, /etc/chrony/chrony.conf:7), "
        "within max drift 0.01 (10000 ppm).",
    )
    assert not check.warning
    assert check.dump_line(2) == f"Node 2 clock rate bounded: {check.detail}"


def test_the_bound_is_inclusive() -> None:
    assert assess(RHO, {"chronyd"}, chrony(10000)).outcome is Outcome.BOUNDED
    assert assess(RHO, {"chronyd"}, chrony(10000.001)).outcome is Outcome.UNBOUNDED


def test_chronys_default_is_unbounded_and_the_warning_says_what_to_add() -> None:
    check = assess(RHO, {"chronyd"}, chrony(None))
    assert check.outcome is Outcome.UNBOUNDED and check.warning
    assert check.detail == (
        "chronyd may slew the clock at up to 83333.333 ppm (chrony's default: no maxslewrate "
        "in /etc/chrony/chrony.conf or the files it includes), beyond max drift 0.01 "
        '(10000 ppm): lease reads can be stale. Add "maxslewrate 500" to '
        "/etc/chrony/chrony.conf and restart chrony."
    )
    assert CHRONY_DEFAULT_MAXSLEWRATE > RHO * 1e6
    assert check.dump_line(0) == f"Node 0 clock rate WARNING (unbounded): {check.detail}"
    assert (
        check.stderr_line(0)
        == f"raftkv-node: node 0: warning: clock rate unbounded: {check.detail}"
    )


def test_a_setting_above_rho_is_unbounded_and_named() -> None:
    check = assess(0.001, {"chronyd"}, chrony(2000))
    assert check.outcome is Outcome.UNBOUNDED
    assert check.detail == (
        "chronyd may slew the clock at up to 2000 ppm (maxslewrate, /etc/chrony/chrony.conf:7), "
        "beyond max drift 0.001 (1000 ppm): lease reads can be stale. Change it to "
        '"maxslewrate 100" and restart chrony.'
    )


def test_the_suggestion_stays_well_within_rho() -> None:
    assert suggested_maxslewrate(0.01) == 500
    assert suggested_maxslewrate(0.002) == pytest.approx(200)
    assert suggested_maxslewrate(0.4) == 500


@pytest.mark.parametrize(
    ("running", "start"),
    [
        (
            {"systemd-timesyncd"},
            "systemd-timesyncd running here; this node cannot read how fast "
            "systemd-timesyncd may slew the clock.",
        ),
        (
            {"chronyd", "ntpd"},
            "chronyd, ntpd running here; this node cannot read how fast ntpd may slew the clock.",
        ),
    ],
)
def test_another_time_service_is_unknown(running: set[str], start: str) -> None:
    check = assess(RHO, running, chrony(500))
    assert check.outcome is Outcome.UNKNOWN and check.warning
    assert check.detail == (
        f"{start} Check that it stays within max drift 0.01 (10000 ppm), or use chrony alone "
        "with maxslewrate at most 10000."
    )


def test_no_time_service_is_unknown_and_mentions_containers() -> None:
    check = assess(RHO, set(), chrony(500))
    assert check.outcome is Outcome.UNKNOWN
    assert check.detail.startswith("no time service (chronyd, systemd-timesyncd, ntpd) seen")
    assert "In a container the host's time service disciplines this clock" in check.detail
    assert check.dump_line(1).startswith("Node 1 clock rate WARNING (unknown): no time service")


def test_chronyd_with_an_unreadable_configuration_is_unknown() -> None:
    check = assess(RHO, {"chronyd"}, chrony(None, "/etc/chrony/chrony.conf does not exist"))
    assert check == TimeServiceCheck(
        Outcome.UNKNOWN,
        "chronyd runs, but /etc/chrony/chrony.conf does not exist: check that its maxslewrate "
        "is at most 10000 ppm, for max drift 0.01.",
    )


# --- the facts, from /proc and pid files -----------------------------------------------------


def test_time_services_are_found_by_process_name(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    fake_process(proc, 10, "chronyd", "/usr/sbin/chronyd", "-F", "1")
    fake_process(proc, 11, "systemd-timesyn", "/lib/systemd/systemd-timesyncd")
    fake_process(proc, 12, "bash", "bash")
    write(proc / "self" / "comm", "chronyd\n")  # not a pid
    (proc / "13").mkdir()  # a process that ended while /proc was read
    assert running_time_services(proc) == {"chronyd": [10], "systemd-timesyncd": [11]}
    assert running_time_services(tmp_path / "no-proc") == {}


@pytest.mark.parametrize(
    ("argv", "path"),
    [
        (["chronyd", "-F", "1", "-f", "/x/chrony.conf"], "/x/chrony.conf"),
        (["chronyd", "-f/x/chrony.conf"], "/x/chrony.conf"),
        (["chronyd", "-F", "1", "-d"], None),
        (["chronyd", "-f"], None),
    ],
)
def test_chronyds_f_option(argv: list[str], path: str | None) -> None:
    assert chrony_config_argument(argv) == (None if path is None else Path(path))


def no_pidfiles(pid: int) -> bool:
    raise AssertionError(f"no pid file should be consulted (pid {pid})")


def no_chronyc() -> bool:
    return False


def test_the_configuration_chronyd_was_started_with_is_read(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    given = write(tmp_path / "given.conf", "maxslewrate 500\n")
    default = write(tmp_path / "default.conf", "")
    fake_process(proc, 10, "chronyd", "/usr/sbin/chronyd", "-f", str(given))
    check = check_host(RHO, proc=proc, default_confs=[default], alive=no_pidfiles)
    assert check.outcome is Outcome.BOUNDED, check
    assert f"{given}:1" in check.detail
    # An explicit file wins over chronyd's -f.
    check = check_host(RHO, default, proc=proc, default_confs=[given], alive=no_pidfiles)
    assert check.outcome is Outcome.UNBOUNDED, check
    assert f'Add "maxslewrate 500" to {default}' in check.detail


def test_the_first_default_configuration_that_exists_is_read(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    fake_process(proc, 10, "chronyd", "/usr/sbin/chronyd")
    debian, other = tmp_path / "chrony" / "chrony.conf", write(tmp_path / "chrony.conf", "")
    check = check_host(RHO, proc=proc, default_confs=[debian, other], alive=no_pidfiles)
    assert f"no maxslewrate in {other}" in check.detail
    other.unlink()
    check = check_host(RHO, proc=proc, default_confs=[debian, other], alive=no_pidfiles)
    assert check.detail.startswith(f"chronyd runs, but {debian} does not exist")


def test_a_live_pidfile_stands_for_a_hidden_chronyd(tmp_path: Path) -> None:
    # systemd's ProtectProc=invisible (the deployed unit) hides chronyd from /proc.
    proc, pidfile = tmp_path / "proc", write(tmp_path / "chronyd.pid", "4242\n")
    conf = write(tmp_path / "chrony.conf", "maxslewrate 500\n")
    proc.mkdir()
    seen: list[int] = []

    def alive(pid: int) -> bool:
        seen.append(pid)
        return pid == 4242

    def check() -> Outcome:
        return check_host(
            RHO, conf, proc=proc, pidfiles=[pidfile], alive=alive, chronyc=no_chronyc
        ).outcome

    assert check() is Outcome.BOUNDED and seen == [4242]
    pidfile.write_text("4243\n")  # stale: that process is gone
    assert check() is Outcome.UNKNOWN
    # The configuration's own pidfile directive is consulted too.
    named = write(tmp_path / "elsewhere.pid", "4242\n")
    conf.write_text(f"pidfile {named}\nmaxslewrate 500\n")
    assert check() is Outcome.BOUNDED


def test_chronyc_stands_for_a_chronyd_hidden_with_its_pidfile(tmp_path: Path) -> None:
    # Debian's /run/chrony (the pid file's folder) is closed to other users.
    proc, conf = tmp_path / "proc", write(tmp_path / "chrony.conf", "maxslewrate 500\n")
    proc.mkdir()
    for chronyc, outcome in ((lambda: True, Outcome.BOUNDED), (no_chronyc, Outcome.UNKNOWN)):
        check = check_host(RHO, conf, proc=proc, pidfiles=[tmp_path / "x.pid"], chronyc=chronyc)
        assert check.outcome is outcome, check


@pytest.mark.parametrize(("status", "reached"), [(0, True), (1, False)])
def test_chronyc_is_asked_for_tracking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, status: int, reached: bool
) -> None:
    calls = tmp_path / "calls"
    write(
        tmp_path / "bin" / "chronyc", f'#!/bin/sh\nprintf "%s\\n" "$*" >> {calls}\nexit {status}\n'
    )
    (tmp_path / "bin" / "chronyc").chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert chronyc_reaches_chronyd() is reached
    assert calls.read_text() == "-n tracking\n"
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert chronyc_reaches_chronyd() is False


def test_another_time_service_in_proc_is_unknown(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    fake_process(proc, 11, "ntpd", "/usr/sbin/ntpd", "-g")
    conf = write(tmp_path / "chrony.conf", "maxslewrate 500\n")
    check = check_host(RHO, conf, proc=proc, pidfiles=[], alive=no_pidfiles, chronyc=no_chronyc)
    assert check.outcome is Outcome.UNKNOWN
    assert check.detail.startswith("ntpd running here")


def test_this_host_can_be_checked_without_root() -> None:
    # Whatever this machine runs, the check completes with one of the outcomes.
    check = check_host(RHO)
    assert check.outcome in set(Outcome)
    assert check.detail
