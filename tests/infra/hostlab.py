"""Real Debian 12 "VMs" on this machine: systemd-nspawn containers on a private bridge.

Each host boots systemd as PID 1 from an overlay over one cached debootstrap root file system,
lives in its own network namespace with its own address on a bridge (10.232.0.0/24 by default,
the bridge being 10.232.0.1), runs sshd with freshly generated host keys, and has a `deploy`
user with passwordless sudo whose authorized_keys holds the lab's own key: what a GCE Debian 12
image gives Ansible and Fabric.

    with HostLab(3) as lab:          # or: python -m tests.infra.hostlab up / down
        lab.hosts[0].address         # "10.232.0.11"
        lab.ssh(lab.hosts[0], "sudo systemctl is-system-running --wait")

Only addresses inside namespaces the lab itself created are ever used. One lab runs at a time
on a machine (an flock on /run/raftkv-hostlab.lock); leftovers of a lab that was killed are
removed by the next one before it starts. Everything it starts (nspawn processes, mounts,
namespaces, the bridge) is stopped and removed by `down()` even when a test fails.

Needs root, debootstrap, systemd-container, iproute2 and openssh-client (`make infra-deps`).
The root file system is built once (~70 s, ~330 MB) under /var/cache/raftkv-test/ and reused;
`LabUnavailable` says why the lab cannot run here (not root, a tool missing, the Debian mirror
unreachable), so tests can skip with that reason.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import ipaddress
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

CACHE_DIR = Path("/var/cache/raftkv-test")
STATE_DIR = Path("/var/lib/raftkv-hostlab")
LOCK_FILE = Path("/run/raftkv-hostlab.lock")
SUITE = "bookworm"
# Everything a GCE Debian 12 image has that Ansible, the role and the faults need, so that the
# offline hosts never reach for a package mirror (python3-apt: Ansible's apt module).
INCLUDE = (
    "systemd,systemd-sysv,dbus,openssh-server,sudo,python3,python3-venv,python3-apt,"
    "iproute2,nftables,chrony,procps,python3-packaging"
)
ROOTFS_VERSION = "1"
BRIDGE = "rkvbr0"
NETWORK = ipaddress.ip_network("10.232.0.0/24")
FIRST_HOST_OCTET = 11
DEPLOY_USER = "deploy"
REQUIRED_TOOLS = ("debootstrap", "systemd-nspawn", "ip", "ssh", "ssh-keygen", "mount", "chroot")


class LabUnavailable(RuntimeError):  # noqa: N818 - reads as a skip reason
    """The lab cannot run on this machine; the message says why (used as a skip reason)."""


class LabError(RuntimeError):
    """The lab failed while starting or running."""


@dataclass
class Host:
    index: int
    name: str
    address: str
    netns: str
    veth: str
    root: Path
    process: subprocess.Popen[bytes] | None = None
    console: IO[bytes] | None = None

    @property
    def ssh_target(self) -> str:
        return f"{DEPLOY_USER}@{self.address}"


@dataclass
class HostLab:
    """`count` booted hosts; use as a context manager (or call up() / down())."""

    count: int = 3
    name_prefix: str = "rkv-h"
    work_dir: Path = STATE_DIR
    boot_timeout: float = 60.0
    hosts: list[Host] = field(default_factory=list)
    key_path: Path = field(init=False)
    bridge_address: str = field(init=False)
    _lock: IO[bytes] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not 1 <= self.count <= 50:
            raise ValueError("a lab has 1 to 50 hosts")
        self.key_path = self.work_dir / "id_ed25519"
        self.bridge_address = str(NETWORK.network_address + 1)

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> HostLab:
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self) -> None:
        check_prerequisites()
        self._lock = acquire_lock()
        cleanup_leftovers(self.work_dir, self.name_prefix)
        rootfs = ensure_rootfs()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._make_key()
        _run(["ip", "link", "add", BRIDGE, "type", "bridge"])
        _run(["ip", "addr", "add", f"{self.bridge_address}/{NETWORK.prefixlen}", "dev", BRIDGE])
        _run(["ip", "link", "set", BRIDGE, "up"])
        for index in range(self.count):
            host = self._make_host(index, rootfs)
            self.hosts.append(host)
        for host in self.hosts:
            self._boot(host)
        deadline = time.monotonic() + self.boot_timeout
        for host in self.hosts:
            self._wait_for_ssh(host, deadline)

    def down(self) -> None:
        """Power every host off and remove what up() made. Safe to call more than once."""
        for host in self.hosts:
            if host.process is not None and host.process.poll() is None:
                host.process.send_signal(signal.SIGTERM)
        for host in self.hosts:
            if host.process is not None:
                try:
                    host.process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    host.process.kill()
                    host.process.wait(timeout=10)
            if host.console is not None:
                host.console.close()
        self.hosts.clear()
        cleanup_leftovers(self.work_dir, self.name_prefix)
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # -- use ---------------------------------------------------------------------------------

    def ssh_command(self, host: Host) -> list[str]:
        return ["ssh", *self.ssh_options(), host.ssh_target]

    def ssh_options(self) -> list[str]:
        return [
            "-i",
            str(self.key_path),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=5",
        ]

    def ssh(
        self, host: Host, command: str, *, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.ssh_command(host), command],
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )

    def console_log(self, host: Host) -> str:
        path = self.work_dir / f"{host.name}.console"
        return path.read_text(errors="replace") if path.exists() else ""

    # -- internals ---------------------------------------------------------------------------

    def _make_key(self) -> None:
        _run(
            [
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "raftkv-hostlab",
                "-f",
                str(self.key_path),
            ]
        )

    def _make_host(self, index: int, rootfs: Path) -> Host:
        name = f"{self.name_prefix}{index}"
        address = str(NETWORK.network_address + FIRST_HOST_OCTET + index)
        base = self.work_dir / name
        upper, work, merged = base / "upper", base / "work", base / "root"
        for directory in (upper, work, merged):
            directory.mkdir(parents=True)
        _run(
            [
                "mount",
                "-t",
                "overlay",
                "overlay",
                "-o",
                f"lowerdir={rootfs},upperdir={upper},workdir={work}",
                str(merged),
            ]
        )
        host = Host(index, name, address, name, f"{self.name_prefix}v{index}", merged)
        self._personalise(host)
        _run(["ip", "netns", "add", host.netns])
        _run(
            [
                "ip",
                "link",
                "add",
                host.veth,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                host.netns,
            ]
        )
        _run(["ip", "link", "set", host.veth, "master", BRIDGE, "up"])
        inside = ["ip", "-n", host.netns]
        _run([*inside, "addr", "add", f"{address}/{NETWORK.prefixlen}", "dev", "eth0"])
        _run([*inside, "link", "set", "eth0", "up"])
        _run([*inside, "link", "set", "lo", "up"])
        _run([*inside, "route", "add", "default", "via", self.bridge_address])
        return host

    def _personalise(self, host: Host) -> None:
        root = host.root
        (root / "etc/hostname").write_text(host.name + "\n")
        (root / "etc/machine-id").write_text(secrets.token_hex(16) + "\n")
        hosts_lines = ["127.0.0.1 localhost", f"127.0.1.1 {host.name}"]
        hosts_lines += [
            f"{NETWORK.network_address + FIRST_HOST_OCTET + i} {self.name_prefix}{i}"
            for i in range(self.count)
        ]
        (root / "etc/hosts").write_text("\n".join(hosts_lines) + "\n")
        # No DNS server exists on the lab's network: an empty resolv.conf makes lookups fail at
        # once instead of timing out (Ansible's fact gathering would wait ~12 s per host).
        resolv = root / "etc/resolv.conf"
        if resolv.is_symlink() or resolv.exists():
            resolv.unlink()
        resolv.write_text("")
        for old in (root / "etc/ssh").glob("ssh_host_*"):
            old.unlink()
        _run(["ssh-keygen", "-A", "-f", str(root)])
        ssh_dir = root / "home" / DEPLOY_USER / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        authorized = ssh_dir / "authorized_keys"
        authorized.write_text(Path(str(self.key_path) + ".pub").read_text())
        authorized.chmod(0o600)
        uid, gid = _ids_in(root, DEPLOY_USER)
        for path in (ssh_dir, authorized):
            os.chown(path, uid, gid)

    def _boot(self, host: Host) -> None:
        console_path = self.work_dir / f"{host.name}.console"
        host.console = console_path.open("wb")
        host.process = subprocess.Popen(
            [
                "systemd-nspawn",
                "-q",
                "-b",
                "-D",
                str(host.root),
                f"--machine={host.name}",
                "--register=no",
                "--keep-unit",
                f"--network-namespace-path=/run/netns/{host.netns}",
                "--console=passive",
                "--resolv-conf=off",
                "--timezone=off",
                "--link-journal=no",
                # nftables inside (Fabric's partition task); the namespace is the lab's own.
                "--capability=CAP_NET_ADMIN",
            ],
            stdin=subprocess.DEVNULL,
            stdout=host.console,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _wait_for_ssh(self, host: Host, deadline: float) -> None:
        assert host.process is not None
        while time.monotonic() < deadline:
            if host.process.poll() is not None:
                raise LabError(
                    f"{host.name} stopped while booting (exit {host.process.returncode}):\n"
                    + self.console_log(host)[-3000:]
                )
            with contextlib.suppress(OSError), socket.create_connection((host.address, 22), 1):
                probe = self.ssh(host, "true", check=False, timeout=15)
                if probe.returncode == 0:
                    return
            time.sleep(0.3)
        raise LabError(f"{host.name} ({host.address}) did not answer SSH within the boot timeout")


# -- root file system ---------------------------------------------------------------------------


def rootfs_path() -> Path:
    return CACHE_DIR / f"{SUITE}-rootfs-v{ROOTFS_VERSION}"


def ensure_rootfs() -> Path:
    """The cached debootstrap root, built on first use (under the lab lock)."""
    root = rootfs_path()
    stamp = root / ".raftkv-hostlab-complete"
    if stamp.exists() and stamp.read_text().strip() == INCLUDE:
        return root
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    mirror = debian_mirror()
    probe_mirror(mirror)
    building = CACHE_DIR / f"{root.name}.building"
    shutil.rmtree(building, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    started = time.monotonic()
    result = subprocess.run(
        ["debootstrap", "--variant=minbase", f"--include={INCLUDE}", SUITE, str(building), mirror],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if result.returncode != 0:
        shutil.rmtree(building, ignore_errors=True)
        tail = (result.stdout + result.stderr)[-2000:]
        raise LabUnavailable(f"debootstrap of Debian {SUITE} from {mirror} failed:\n{tail}")
    _customise_rootfs(building)
    (building / stamp.name).write_text(INCLUDE + "\n")
    building.rename(root)
    print(f"hostlab: built {root} in {time.monotonic() - started:.0f}s", file=sys.stderr)
    return root


def _customise_rootfs(root: Path) -> None:
    def chroot(*command: str) -> None:
        _run(["chroot", str(root), *command])

    chroot("useradd", "--create-home", "--shell", "/bin/bash", DEPLOY_USER)
    sudoers = root / "etc/sudoers.d" / DEPLOY_USER
    sudoers.write_text(f"{DEPLOY_USER} ALL=(ALL) NOPASSWD:ALL\n")
    sudoers.chmod(0o440)
    (root / "etc/ssh/sshd_config.d/raftkv-hostlab.conf").write_text(
        "UseDNS no\nPasswordAuthentication no\n"
    )
    # Ask no questions at first boot; the containers share the host's clock, so nothing there
    # may try to set it.
    masks = ("systemd-firstboot.service", "systemd-timesyncd.service", "getty@tty1.service")
    for unit in masks:
        link = root / "etc/systemd/system" / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/machine-id").write_text("")
    for deb in (root / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (deb822 or one-line format)."""
    deb822 = Path("/etc/apt/sources.list.d/debian.sources")
    if deb822.exists():
        for line in deb822.read_text().splitlines():
            if line.startswith("URIs:"):
                for uri in line.split()[1:]:
                    if "security" not in uri:
                        return uri
    classic = Path("/etc/apt/sources.list")
    if classic.exists():
        for line in classic.read_text().splitlines():
            match = re.match(r"\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+\S+", line)
            if match and "security" not in match.group(1):
                return match.group(1)
    return "http://deb.debian.org/debian"


def probe_mirror(mirror: str) -> None:
    url = f"{mirror.rstrip('/')}/dists/{SUITE}/Release"
    try:
        with urllib.request.urlopen(url, timeout=15) as response:
            response.read(64)
    except (urllib.error.URLError, OSError, TimeoutError) as error:
        raise LabUnavailable(f"the Debian mirror {mirror} is unreachable ({error})") from None


# -- checks, locking and cleanup ------------------------------------------------------------------


def check_prerequisites() -> None:
    if sys.platform != "linux":
        raise LabUnavailable("the host lab needs Linux")
    if os.geteuid() != 0:
        raise LabUnavailable("the host lab needs root (network namespaces, mounts, nspawn)")
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        raise LabUnavailable(
            f"missing tools: {', '.join(missing)} (run `make infra-deps` to install them)"
        )
    if "overlay" not in Path("/proc/filesystems").read_text():
        raise LabUnavailable("the kernel has no overlay file system")


def acquire_lock(timeout: float = 900) -> IO[bytes]:
    """One lab per machine: wait for a running lab (another test run) to finish."""
    handle = LOCK_FILE.open("wb")
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if time.monotonic() > deadline:
                handle.close()
                raise LabError(f"another host lab held {LOCK_FILE} for {timeout:.0f}s") from None
            time.sleep(1)


def cleanup_leftovers(work_dir: Path, name_prefix: str) -> None:
    """Remove what a lab (this one, or one that was killed) left: only the lab's own names."""
    for pid in _nspawn_pids(work_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for mount_point in sorted(_mounts_under(work_dir), reverse=True):
        subprocess.run(["umount", "-l", mount_point], capture_output=True, check=False)
    netns_dir = Path("/run/netns")
    if netns_dir.is_dir():
        for netns in netns_dir.iterdir():
            if netns.name.startswith(name_prefix):
                subprocess.run(["ip", "netns", "del", netns.name], capture_output=True, check=False)
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=False)
    for match in re.finditer(r"^\d+: ([^:@]+)", links.stdout, re.MULTILINE):
        name = match.group(1)
        if name == BRIDGE or name.startswith(f"{name_prefix}v"):
            subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)
    if work_dir.exists():
        shutil.rmtree(work_dir, ignore_errors=True)


def _nspawn_pids(work_dir: Path) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            argv
            and argv[0].endswith(b"systemd-nspawn")
            and any(arg.startswith(str(work_dir).encode()) for arg in argv)
        ):
            pids.append(int(proc.name))
    return pids


def _mounts_under(directory: Path) -> list[str]:
    prefix = str(directory) + "/"
    found = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        mount_point = line.split()[1].replace("\\040", " ")
        if mount_point.startswith(prefix):
            found.append(mount_point)
    return found


def _ids_in(root: Path, user: str) -> tuple[int, int]:
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return int(fields[2]), int(fields[3])
    raise LabError(f"no user {user} in {root}/etc/passwd")


def _run(command: Sequence[str]) -> None:
    result = subprocess.run(list(command), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise LabError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.infra.hostlab",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("action", choices=["rootfs", "up", "down"])
    parser.add_argument("--hosts", type=int, default=3)
    args = parser.parse_args(argv)
    try:
        if args.action == "rootfs":
            check_prerequisites()
            with contextlib.closing(acquire_lock()):
                print(ensure_rootfs())
        elif args.action == "down":
            cleanup_leftovers(STATE_DIR, "rkv-h")
        else:
            lab = HostLab(args.hosts)
            try:
                lab.up()
            except BaseException:
                lab.down()
                raise
            for host in lab.hosts:
                print(
                    f"{host.name} {host.address}  ssh {' '.join(lab.ssh_options())} "
                    f"{host.ssh_target}"
                )
            print("Ctrl-C (or SIGTERM) powers the hosts off and removes them.", flush=True)

            def stop(signum: int, frame: object) -> None:
                raise KeyboardInterrupt

            # Set both explicitly: a shell starts background jobs with SIGINT ignored.
            signal.signal(signal.SIGINT, stop)
            signal.signal(signal.SIGTERM, stop)
            try:
                signal.pause()
            except KeyboardInterrupt:
                pass
            finally:
                lab.down()
    except (LabUnavailable, LabError) as error:
        print(f"hostlab: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
