"""`raftkv`: the command-line client.

    raftkv [--cluster FILE | --peers HOST:PORT,...] [--timeout SECONDS] [-v] COMMAND

    raftkv get KEY            print the value (nothing on stdout if the key is absent)
    raftkv set KEY VALUE...   store the VALUE words joined by single spaces; prints OK
    raftkv del KEY            remove KEY; prints OK (also when KEY was absent)
    raftkv ls [PREFIX] [--limit N] [--keys-only]
                              every key that starts with PREFIX, in order, one `KEY VALUE` line
                              each, both escaped as logs.txt escapes them (a space is %20)
    raftkv status             one row per node: role, term, commit, leader, lease, reachable
    raftkv shell              interactive GET / SET / DEL / STATUS prompt (also piped stdin)
    raftkv transfer-leader [--to N]
                              hand leadership to node N (default: the most up-to-date
                              follower) and wait until it leads
    raftkv snapshot save FILE a checked backup of the whole state (linearizable) to FILE
    raftkv snapshot restore FILE --data-dir DIR [--node-id N] [--cluster FILE | --cluster-id ID]
                              build node N's data directory for a NEW cluster from a backup
                              (on the node's machine; talks to no cluster)

With the development and operations tools installed (raftkv-tools, tools/), also:

    raftkv bench [OPTIONS]    benchmark a cluster (own options: raftkv bench --help)
    raftkv logs review DIR    merge gathered dump files, check invariants (--plot FILE.png)
    raftkv certs --out DIR    make a CA and per-node TLS certificates (raftkv certs --help)
    raftkv restore-node --from DIR --into DATA --id N
                              give a node whose disk was lost the leader's log

Those come from the entry-point group `raftkv.commands` (raftkv/client/commands.py), so
`raftkv --help` lists every command this installation accepts. Global options given before such
a command reach it (`raftkv --cluster FILE bench` = `raftkv bench --cluster FILE`).

The cluster comes from --peers (ids 0..n-1 in the order given), else --cluster, else the file
named by $RAFTKV_CLUSTER, else cluster/cluster.json. The description's `tls` object turns TLS
on (`ca`) and, where nodes demand one (--client-cert-auth), presents a client certificate
(`cert`, `key`).

Exit codes:
    0  success
    1  key not found (get); snapshot: the backup failed its check or could not be written,
       or the restore was refused
    2  usage error, or the cluster description is missing or malformed
    3  no leader: the cluster could not serve before the timeout (status: no node answered)
    4  SET or DEL outcome unknown: it may or may not have been applied
    5  invalid request (empty or oversized key, oversized value, text that is not Unicode)
    6  SET or DEL refused for a stale sequence number: not applied, because a higher sequence
       number of its client id was already applied (another writer used the same client id)
    7  transfer-leader: refused by the leader, not done in time, or its outcome is unknown
    8  SET or DEL refused because its client session expired (docs/design.md §11): not applied,
       or, when an earlier try may have been, its outcome is unknown (the message says which)
  130  interrupted (Ctrl-C)

Client sessions: every `raftkv set` or `raftkv del` run is a client of its own, with a fresh
client id, so each run opens one session in the cluster's exactly-once table; the cluster drops
it 15 minutes after its last write, so one-shot commands leave no state that lives forever.
`raftkv shell` keeps one session for as long as it runs (after an exit-8 refusal it goes on in
a new one).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from enum import IntEnum
from pathlib import Path

from raftkv.cluster import DEFAULT_DESCRIPTION, ClusterConfigError, ClusterDescription
from raftkv.limits import MAX_LIST_LIMIT
from raftkv.textformat import escape_field
from raftkv.tls import TlsConfigError, client_tls

from .backup import BackupError
from .commands import TOOLS_COMMANDS, Command, GlobalOptions, NotInstalledCommand, discover
from .errors import (
    InvalidRequestError,
    NoLeaderError,
    RaftKVError,
    SessionExpiredError,
    StaleSequenceError,
    TransferError,
    UnknownOutcomeError,
)
from .library import SyncClient
from .status import format_status_table

CLUSTER_ENVIRONMENT_VARIABLE = "RAFTKV_CLUSTER"
HISTORY_FILE_NAME = ".raftkv_history"
PROMPT = "raftkv> "
PRODUCT_COMMANDS = (
    "get",
    "set",
    "del",
    "ls",
    "status",
    "shell",
    "transfer-leader",
    "snapshot",
)


class ExitCode(IntEnum):
    OK = 0
    NOT_FOUND = 1
    USAGE = 2
    NO_LEADER = 3
    OUTCOME_UNKNOWN = 4
    INVALID_REQUEST = 5
    STALE_SEQUENCE = 6
    TRANSFER_FAILED = 7
    SESSION_EXPIRED = 8
    INTERRUPTED = 130


EXIT_CODES_HELP = """\
exit codes:
  0    success
  1    key not found (get); snapshot save/restore failed or refused (the message says why)
  2    usage error, or the cluster description is missing or malformed
  3    no leader: the cluster could not serve before the timeout (status: no node answered)
  4    SET or DEL outcome unknown: it may or may not have been applied
  5    invalid request (empty or oversized key, oversized value, text that is not Unicode)
  6    SET or DEL refused for a stale sequence number (not applied; another writer used its
       client id)
  7    transfer-leader refused, not done in time, or its outcome unknown
  8    SET or DEL refused: its client session expired (not applied, or outcome unknown when
       an earlier try may have been applied; the message says which)
  130  interrupted

Each `set` or `del` run is one client session (a fresh client id); the cluster forgets it 15
minutes after its last write. `shell` keeps one session while it runs.

The cluster comes from --peers, else --cluster, else $RAFTKV_CLUSTER, else cluster/cluster.json.
Values that start with '-' go after '--':  raftkv set KEY -- -1
"""

SHELL_HELP = """\
commands (case-insensitive):
  GET key          print the value of key
  SET key value    store value (it may contain spaces)
  DEL key          remove key (DELETE too; no error when it is absent)
  STATUS           show every node
  HELP             this text
  EXIT, QUIT       leave (Ctrl-D too)"""


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    extra_commands = discover(reserved=PRODUCT_COMMANDS)
    parser = _build_parser(extra_commands)
    try:
        # Known args only: what follows an extra command's name is that command's to parse.
        args, rest = parser.parse_known_args(arguments)
        if rest and getattr(args, "extra", None) is None:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
    except SystemExit as request:
        # argparse exits on --help and on usage errors; callers of main() want a return code.
        return request.code if isinstance(request.code, int) else ExitCode.USAGE
    if getattr(args, "extra", None) is not None:
        return _run_extra_command(args.extra_name, args.extra, rest, args)
    offline: Callable[[argparse.Namespace], int] | None = getattr(args, "offline", None)
    if offline is not None:
        # A command that works on local files only (snapshot restore): no cluster to reach.
        return offline(args)
    try:
        cluster = _load_cluster(args)
    except ClusterConfigError as error:
        print(f"raftkv: {error}", file=sys.stderr)
        return ExitCode.USAGE
    command: Callable[[SyncClient, argparse.Namespace], int] = args.command
    try:
        root_cert, client_cert = client_tls(cluster.tls)
    except TlsConfigError as error:
        print(f"raftkv: {error}", file=sys.stderr)
        return ExitCode.USAGE
    try:
        with SyncClient(
            cluster, timeout=args.timeout, tls_root_cert=root_cert, tls_client_cert=client_cert
        ) as client:
            return command(client, args)
    except RaftKVError as error:
        print(f"raftkv: {error}", file=sys.stderr)
        return _exit_code_for(error)
    except KeyboardInterrupt:
        maybe_applied = (
            f" (the {_WRITES[command]} may or may not have been applied)"
            if command in _WRITES
            else ""
        )
        print(f"raftkv: interrupted{maybe_applied}", file=sys.stderr)
        return ExitCode.INTERRUPTED


def _run_extra_command(name: str, extra: Command, argv: list[str], args: argparse.Namespace) -> int:
    options = GlobalOptions(
        cluster=args.cluster,
        peers=args.peers,
        timeout=args.timeout,
        verbose=args.verbose,
    )
    try:
        return extra.run(argv, options)
    except ModuleNotFoundError as error:
        # An optional dependency of the tool is missing: say which, not a traceback.
        print(
            f"raftkv {name}: the Python module {error.name!r} is not installed ({error})",
            file=sys.stderr,
        )
        return ExitCode.USAGE


def _build_parser(extra_commands: Mapping[str, Command]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raftkv",
        description="Client for a raftkv cluster.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--cluster",
        metavar="FILE",
        type=Path,
        help=f"cluster description (default: ${CLUSTER_ENVIRONMENT_VARIABLE} or "
        f"{DEFAULT_DESCRIPTION})",
    )
    where.add_argument(
        "--peers",
        metavar="HOST:PORT,...",
        help="node addresses instead of a cluster file; node ids are 0..n-1 in this order",
    )
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_positive_seconds,
        default=5.0,
        help="give up after this long, retries included (default: 5)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="set: also print the index")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    get = commands.add_parser("get", help="print the value of KEY")
    get.add_argument("key", metavar="KEY")
    get.set_defaults(command=_get_command)

    set_ = commands.add_parser("set", help="store VALUE (words joined by spaces) under KEY")
    set_.add_argument("key", metavar="KEY")
    set_.add_argument("words", metavar="VALUE", nargs="+")
    # SUPPRESS keeps an absent sub-command -v from overwriting a global one.
    set_.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="print the index"
    )
    set_.set_defaults(command=_set_command)

    delete = commands.add_parser("del", help="remove KEY (no error when it is absent)")
    delete.add_argument("key", metavar="KEY")
    delete.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="print the index"
    )
    delete.set_defaults(command=_delete_command)

    ls = commands.add_parser(
        "ls",
        help="list the keys that start with PREFIX, with their values",
        description="Print every key that starts with PREFIX (default: all keys) in Unicode "
        "code point order, one `KEY VALUE` line each. Keys and values are escaped as logs.txt "
        "escapes them, so every line has exactly two fields: a space, %%, = and unprintable "
        "characters are %%XX (UTF-8 bytes), the empty value is %%-. Each page of up to 1000 "
        "keys is a linearizable read; the whole listing is not one snapshot.",
    )
    ls.add_argument("prefix", metavar="PREFIX", nargs="?", default="")
    ls.add_argument(
        "--limit",
        metavar="N",
        type=_positive_count,
        default=None,
        help="print at most N keys (default: all); a note on stderr says when more follow",
    )
    ls.add_argument("--keys-only", action="store_true", help="print the keys only")
    ls.set_defaults(command=_ls_command)

    status = commands.add_parser("status", help="show every node of the cluster")
    status.set_defaults(command=_status_command)

    shell = commands.add_parser("shell", help="interactive GET/SET/DEL/STATUS prompt")
    shell.set_defaults(command=_shell_command)

    transfer = commands.add_parser(
        "transfer-leader",
        help="hand leadership to another node and wait until it leads",
        description="Ask the leader to hand leadership over (it stops serving lease reads at "
        "once, catches the target up and tells it to campaign), then wait until another node "
        "leads. Useful before taking the leader down for maintenance.",
    )
    transfer.add_argument(
        "--to",
        metavar="N",
        type=_node_id,
        help="the node to hand leadership to (default: the most up-to-date follower)",
    )
    transfer.set_defaults(command=_transfer_leader_command)

    _add_snapshot_commands(commands)

    for name, extra in extra_commands.items():
        # No options of its own (not even -h): everything after the name goes to the command.
        sub = commands.add_parser(name, help=extra.summary, add_help=False)
        sub.set_defaults(extra=extra, extra_name=name)
    for name in TOOLS_COMMANDS:
        if name not in extra_commands:
            # Not listed by --help (no help=): it is not available, but asking for it gets a
            # sentence saying where it comes from rather than "invalid choice".
            sub = commands.add_parser(name, add_help=False)
            sub.set_defaults(extra=NotInstalledCommand(name), extra_name=name)
    return parser


def _add_snapshot_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    snapshot = commands.add_parser(
        "snapshot",
        help="back up the whole state to a file, or build a new cluster's node from one",
        description="Backup and restore (docs/design.md, README: Backup and restore).",
    )
    actions = snapshot.add_subparsers(title="actions", metavar="ACTION", required=True)
    save = actions.add_parser(
        "save",
        help="save a checked backup of the whole state to FILE",
        description="Fetch the leader's state at its commit index (linearizable: it holds "
        "every write acknowledged before the command started) as a snapshot file, check it as "
        "a node checks its snapshot.txt (format, counts, checksum) while writing FILE.tmp, "
        "then sync it and rename it to FILE. Prints what it saved. --timeout bounds finding "
        "the leader and its first chunk; each later chunk may take max(timeout, 30 s).",
    )
    save.add_argument("file", metavar="FILE", type=Path)
    save.set_defaults(command=_snapshot_save_command)
    restore = actions.add_parser(
        "restore",
        help="build node N's data directory for a NEW cluster from a backup FILE",
        description="Write DIR/logs_node_N/ from the backup FILE so that node N starts (with "
        "--initial-cluster-state new) holding exactly its data, in a new cluster: the backup's "
        "keys under a new cluster id, without client sessions. Run it for every node of the "
        "new cluster, with the same FILE and cluster id. The cluster id comes from --cluster "
        "(its cluster_id; also the global --cluster), else --cluster-id, else a new "
        "restored-<hex> that is printed. Refuses a DIR/logs_node_N that holds anything, a "
        "backup that fails its check, and the backup's own cluster id.",
    )
    restore.add_argument("file", metavar="FILE", type=Path)
    restore.add_argument(
        "--data-dir",
        metavar="DIR",
        type=Path,
        required=True,
        help="the node's data directory (the parent of logs_node_N/, as raftkv-node's)",
    )
    restore.add_argument(
        "--node-id",
        metavar="N",
        type=_node_id,
        help="the node to restore (default: the description's node, when it has only one)",
    )
    new_id = restore.add_mutually_exclusive_group()
    new_id.add_argument(
        "--cluster",
        dest="restore_cluster",
        metavar="FILE",
        type=Path,
        help="the new cluster's description (its cluster_id, its nodes)",
    )
    new_id.add_argument("--cluster-id", metavar="ID", help="the new cluster's id")
    restore.set_defaults(offline=_snapshot_restore_command)


def _positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (seconds > 0 and math.isfinite(seconds)):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return seconds


def _positive_count(text: str) -> int:
    if not text.isdecimal() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive whole number: {text!r}")
    return int(text)


def _node_id(text: str) -> int:
    if not text.isdecimal():
        raise argparse.ArgumentTypeError(f"not a node id: {text!r}")
    return int(text)


def _load_cluster(args: argparse.Namespace) -> ClusterDescription:
    if args.peers is not None:
        addresses = [address.strip() for address in args.peers.split(",") if address.strip()]
        if not addresses:
            raise ClusterConfigError("--peers lists no addresses")
        return ClusterDescription.from_addresses(addresses)
    path = args.cluster
    if path is None:
        path = Path(os.environ.get(CLUSTER_ENVIRONMENT_VARIABLE) or DEFAULT_DESCRIPTION)
    try:
        return ClusterDescription.load(path)
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as error:
        raise ClusterConfigError(f"cannot read the cluster description {path}: {error}") from None


def _exit_code_for(error: RaftKVError) -> ExitCode:
    if isinstance(error, InvalidRequestError):
        return ExitCode.INVALID_REQUEST
    if isinstance(error, UnknownOutcomeError):
        return ExitCode.OUTCOME_UNKNOWN
    if isinstance(error, StaleSequenceError):
        return ExitCode.STALE_SEQUENCE
    if isinstance(error, SessionExpiredError):
        return ExitCode.SESSION_EXPIRED
    if isinstance(error, TransferError):
        return ExitCode.TRANSFER_FAILED
    return ExitCode.NO_LEADER


# -- one-shot commands --------------------------------------------------------------------------


def _get_command(client: SyncClient, args: argparse.Namespace) -> int:
    value = client.get(args.key)
    if value is None:
        print("raftkv: key not found", file=sys.stderr)
        return ExitCode.NOT_FOUND
    print(value)
    return ExitCode.OK


def _set_command(client: SyncClient, args: argparse.Namespace) -> int:
    index = client.set(args.key, " ".join(args.words))
    print(f"OK (index {index})" if args.verbose else "OK")
    return ExitCode.OK


def _delete_command(client: SyncClient, args: argparse.Namespace) -> int:
    # Exit 0 whether or not the key existed: the key is absent afterwards either way, and
    # telling the two apart would need a read the DELETE does not make.
    index = client.delete(args.key)
    print(f"OK (index {index})" if args.verbose else "OK")
    return ExitCode.OK


def _ls_command(client: SyncClient, args: argparse.Namespace) -> int:
    wanted: int | None = args.limit
    shown = 0
    start_after = ""
    while wanted is None or shown < wanted:
        page_size = MAX_LIST_LIMIT if wanted is None else min(MAX_LIST_LIMIT, wanted - shown)
        page = client.list(args.prefix, start_after, page_size)
        for key, value in page.items:
            # Escaped like logs.txt: a key or value with a space or a newline stays one field.
            print(
                escape_field(key)
                if args.keys_only
                else f"{escape_field(key)} {escape_field(value)}"
            )
        shown += len(page.items)
        if page.next_start_after is None:
            return ExitCode.OK
        start_after = page.next_start_after
    print(
        f"raftkv: more keys follow the {shown} shown (raise --limit to see them)", file=sys.stderr
    )
    return ExitCode.OK


# Exit status 1 for a backup or restore that failed or was refused, as for `raftkv
# restore-node` (and for a get that found nothing: the one other "did not happen" outcome).
_SNAPSHOT_FAILED = ExitCode.NOT_FOUND


def _snapshot_save_command(client: SyncClient, args: argparse.Namespace) -> int:
    try:
        saved = client.snapshot_save(args.file)
    except BackupError as error:
        print(f"raftkv: {error}; nothing was saved", file=sys.stderr)
        return _SNAPSHOT_FAILED
    print(saved.describe())
    return ExitCode.OK


def _snapshot_restore_command(args: argparse.Namespace) -> int:
    # Imported here: the server's storage code is for this command only.
    from raftkv.server.backup import RestoreError, new_cluster_id, restore_snapshot

    description_path: Path | None = args.restore_cluster or args.cluster
    description: ClusterDescription | None = None
    if description_path is not None:
        try:
            description = ClusterDescription.load(description_path)
        except (ClusterConfigError, OSError, UnicodeDecodeError) as error:
            print(f"raftkv: {error}", file=sys.stderr)
            return ExitCode.USAGE
    if args.cluster_id is not None and description is not None:
        print("raftkv: give --cluster-id or a cluster description, not both", file=sys.stderr)
        return ExitCode.USAGE
    node_id: int | None = args.node_id
    if node_id is None:
        if description is None or len(description.nodes) != 1:
            print(
                "raftkv: give --node-id N (the node whose data directory to build)",
                file=sys.stderr,
            )
            return ExitCode.USAGE
        node_id = description.nodes[0].id
    elif description is not None and node_id not in description.ids:
        print(f"raftkv: node {node_id} is not in {description_path}", file=sys.stderr)
        return ExitCode.USAGE
    cluster_id = description.cluster_id if description is not None else args.cluster_id
    generated = cluster_id is None
    if cluster_id is None:
        cluster_id = new_cluster_id()
    try:
        restored = restore_snapshot(args.file, args.data_dir, node_id, cluster_id)
    except RestoreError as error:
        print(f"raftkv: {error}", file=sys.stderr)
        return _SNAPSHOT_FAILED
    print(restored.describe(args.file))
    if generated:
        print(
            f"new cluster id {cluster_id}: restore the other nodes with --cluster-id "
            f"{cluster_id}, and set it as cluster_id in the new cluster's description"
        )
    return ExitCode.OK


# The commands that write, for the interrupted message: their outcome is unknown.
_WRITES = {_set_command: "SET", _delete_command: "DEL"}


def _status_command(client: SyncClient, args: argparse.Namespace) -> int:
    rows = client.status()
    print(format_status_table(rows))
    if not any(row.reachable for row in rows):
        print("raftkv: no node answered", file=sys.stderr)
        return ExitCode.NO_LEADER
    return ExitCode.OK


def _transfer_leader_command(client: SyncClient, args: argparse.Namespace) -> int:
    result = client.transfer_leader(args.to)
    if not result.moved:
        print(f"node {result.leader_id} is already the leader (term {result.term})")
    else:
        print(
            f"leader is now node {result.leader_id} (was {result.previous_leader_id}), "
            f"took {result.seconds:.2f} s"
        )
    return ExitCode.OK


# -- the shell ----------------------------------------------------------------------------------


def _shell_command(client: SyncClient, args: argparse.Namespace) -> int:
    interactive = sys.stdin.isatty()
    save_history = _start_history() if interactive else None
    if interactive:
        print("raftkv shell: type HELP for the commands, EXIT or Ctrl-D to leave.")
    try:
        while True:
            line = _read_line(interactive)
            if line is None:
                break
            if not _run_shell_line(client, line, verbose=args.verbose):
                break
    finally:
        if save_history is not None:
            save_history()
    return ExitCode.OK


def _read_line(interactive: bool) -> str | None:
    """The next command line, or None at end of input."""
    if not interactive:
        # No prompt when reading a pipe: the transcript should hold only the answers.
        line = sys.stdin.readline()
        return line if line else None
    while True:
        try:
            return input(PROMPT)
        except EOFError:
            print()
            return None
        except KeyboardInterrupt:
            # Like Python's own prompt: Ctrl-C abandons the line, not the session.
            print()


def _run_shell_line(client: SyncClient, line: str, *, verbose: bool) -> bool:
    """Run one shell line and print its answer; False means the user asked to leave."""
    words = line.split()
    if not words or words[0].startswith("#"):
        return True
    command = words[0].upper()
    try:
        if command in ("EXIT", "QUIT"):
            return False
        if command == "HELP":
            _say(SHELL_HELP)
        elif command == "GET" and len(words) == 2:
            value = client.get(words[1])
            _say("(key not found)" if value is None else value)
        elif command == "SET" and len(words) >= 3:
            index = client.set(words[1], " ".join(words[2:]))
            _say(f"OK (index {index})" if verbose else "OK")
        elif command in ("DEL", "DELETE") and len(words) == 2:
            index = client.delete(words[1])
            _say(f"OK (index {index})" if verbose else "OK")
        elif command == "STATUS" and len(words) == 1:
            _say(format_status_table(client.status()))
        else:
            _say(_shell_usage(command))
    except UnknownOutcomeError as error:
        _say(f"error: {error}")
    except NoLeaderError as error:
        _say(str(error))
    except InvalidRequestError as error:
        _say(f"invalid request: {error}")
    except (StaleSequenceError, SessionExpiredError) as error:
        # After a session-expired refusal the client is in a new session already: the shell
        # goes on with it.
        _say(f"error: {error}")
    except KeyboardInterrupt:
        writes = ("SET", "DEL", "DELETE")
        interrupted_write = (
            f" (a {command} may or may not have been applied)" if command in writes else ""
        )
        _say(f"interrupted{interrupted_write}")
    return True


def _shell_usage(command: str) -> str:
    usages = {
        "GET": "usage: GET key",
        "SET": "usage: SET key value",
        "DEL": "usage: DEL key",
        "DELETE": "usage: DELETE key",
        "STATUS": "usage: STATUS",
    }
    if command in usages:
        return usages[command]
    return (
        f"unknown command {command!r}; usage: GET key | SET key value | DEL key | STATUS | HELP "
        "| EXIT"
    )


def _say(text: str) -> None:
    # Answers and errors both go to stdout, flushed, so a piped transcript keeps its order.
    print(text, flush=True)


def _start_history() -> Callable[[], None] | None:
    """Load ~/.raftkv_history into readline; returns what saves it, or None without history."""
    try:
        import readline
    except ImportError:
        return None
    try:
        path = Path.home() / HISTORY_FILE_NAME
    except RuntimeError:  # no home directory can be determined
        return None
    # A missing or unreadable file (first run) just means an empty history.
    with contextlib.suppress(OSError):
        readline.read_history_file(path)
    readline.set_history_length(1000)

    def save() -> None:
        # A read-only HOME loses the history, not the session.
        with contextlib.suppress(OSError):
            readline.write_history_file(path)

    return save


if __name__ == "__main__":
    sys.exit(main())
