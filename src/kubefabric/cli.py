"""The `kubefabric` command: `kubefabric [flags]` serves; `route` and `topology check` inspect a topology;
`snapshot restore` loads a backup into a store."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING, NoReturn

from pydantic import ValidationError

from kubefabric import __version__
from kubefabric.config import DURATIONS, OPTIONS, Settings, format_duration
from kubefabric.core import Backend, Topology, TopologyError
from kubefabric.stores import redact

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

MULTI = "multi://"
# `topology check` without a multi:// --endpoint: the default backend's endpoint is not known.
PLACEHOLDER_DEFAULT = "sqlite://(the default: --endpoint multi://...)"


def _add_options(parser: argparse.ArgumentParser, *, top_level: bool) -> None:
    """The flags of config.OPTIONS. The top level takes its defaults from the environment; a command
    takes the same flags after its name and sets only those given there, keeping the top level's."""
    defaults = Settings()
    for option in OPTIONS:
        default = getattr(defaults, option.field)
        shown = format_duration(default) if option.field in DURATIONS else repr(default)
        parser.add_argument(
            option.flag,
            default=os.environ.get(option.env) if top_level else argparse.SUPPRESS,
            metavar=option.field.upper(),
            help=f"{option.help} [env {option.env}] (default: {shown})",
        )


def _parser() -> argparse.ArgumentParser:
    epilog = "Every flag can also be set by the environment variable shown; a flag wins over it."
    parser = argparse.ArgumentParser(
        prog="kubefabric",
        description="A drop-in etcd v3 server for Kubernetes that keeps its data in real databases. "
        "Without a command, it serves.",
        epilog=epilog,
        usage="%(prog)s [FLAGS]                        serve\n"
        "       %(prog)s route KEY [KEY ...] [FLAGS]    which backend of the topology a key goes to\n"
        "       %(prog)s topology check FILE [FLAGS]    validate a topology file\n"
        "       %(prog)s topology migrate [FLAGS]       move the stored keys to where --topology-config places them\n"
        "       %(prog)s snapshot restore FILE [FLAGS]  load a snapshot into the (empty) --endpoint store",
    )
    parser.add_argument("--version", action="version", version=f"kubefabric {__version__}")
    _add_options(parser, top_level=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands (none: serve)")

    route = commands.add_parser(
        "route",
        prog="kubefabric route",
        help="print which backend of the topology each key goes to, and by which rule",
        description="Print which backend of the topology (--topology-config, with --endpoint multi://DEFAULT) "
        "each key goes to, and by which rule.",
        epilog=epilog,
    )
    route.add_argument("keys", nargs="+", metavar="KEY", help="a key, e.g. /registry/pods/kube-system/coredns")
    _add_options(route, top_level=False)

    topology = commands.add_parser(
        "topology", prog="kubefabric topology", help="work with topology files", description="Work with topology files."
    )
    topology_commands = topology.add_subparsers(dest="topology_command", metavar="COMMAND", required=True)
    check = topology_commands.add_parser(
        "check",
        prog="kubefabric topology check",
        help="validate a topology file and summarize its rules",
        description="Validate a topology file and summarize its rules; exit 1 if it cannot be used. The default "
        "backend is --endpoint's multi://DEFAULT if given. It checks the file alone: it connects to no database, "
        "so it cannot tell whether an endpoint answers (or is the address kubefabric itself listens on), nor "
        "whether the rules agree with where the keys are stored; the server checks both at start-up.",
        epilog=epilog,
    )
    check.add_argument("file", metavar="FILE", help="the topology YAML file")
    _add_options(check, top_level=False)
    migrate = topology_commands.add_parser(
        "migrate",
        prog="kubefabric topology migrate",
        help="move the stored keys to the backends --topology-config places them in",
        description="Move every stored key to the backend the rules of --topology-config (with --endpoint "
        "multi://DEFAULT) place it in, keeping its revisions, version and lease, then record those rules. Run it "
        "with kubefabric stopped; an interrupted migration is finished by running it again. Reads and watches "
        "before the migration's revision answer 'compacted' afterwards, if any key moved.",
        epilog=epilog,
    )
    migrate.add_argument(
        "--batch-size",
        type=int,
        default=500,
        metavar="KEYS",
        help="keys copied and removed per database transaction (default: 500)",
    )
    _add_options(migrate, top_level=False)

    snapshot = commands.add_parser(
        "snapshot", prog="kubefabric snapshot", help="work with snapshots", description="Work with snapshots."
    )
    snapshot_commands = snapshot.add_subparsers(dest="snapshot_command", metavar="COMMAND", required=True)
    restore = snapshot_commands.add_parser(
        "restore",
        prog="kubefabric snapshot restore",
        help="load a snapshot (`etcdctl snapshot save` of kubefabric or etcd) into an empty store",
        description="Load a snapshot, as `etcdctl snapshot save` writes it from kubefabric or from etcd, into "
        "the empty store --endpoint (and --topology-config) name, with its revisions, leases and compaction "
        "point. The server must be stopped; exit 1 if the file is not a sound snapshot or the store is not empty.",
        epilog=epilog,
    )
    restore.add_argument("file", metavar="FILE", help="the snapshot file")
    restore.add_argument(
        "--skip-hash-check",
        action="store_true",
        help="do not check the sha256 at the end of the file; also reads an etcd data directory's member/snap/db",
    )
    _add_options(restore, top_level=False)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    """The settings from the flags and environment; exit 2 naming the flag if one is unusable."""
    given = {option.field: getattr(args, option.field) for option in OPTIONS}
    try:
        return Settings(**{name: value for name, value in given.items() if value is not None})
    except ValidationError as error:
        for problem in error.errors():
            # pydantic prefixes the validators' own messages; they read better without it.
            message = problem["msg"].removeprefix("Value error, ")
            if not problem["loc"]:  # a rule across several settings names its flags itself
                print(f"kubefabric: {message}", file=sys.stderr)
                continue
            name = str(problem["loc"][0])
            option = next(option for option in OPTIONS if option.field == name)
            print(f"kubefabric: {option.flag} / {option.env}: {message}", file=sys.stderr)
        sys.exit(2)


def _describe(backend: Backend) -> str:
    return f"{backend.name} ({backend.rule}) {redact(backend.endpoint)}"


def _route(settings: Settings, keys: list[str]) -> int:
    if not settings.topology_config:
        print(
            "kubefabric route: no topology is configured: give --topology-config / TOPOLOGY_CONFIG "
            "and --endpoint multi://DEFAULT-ENDPOINT, as for the server",
            file=sys.stderr,
        )
        return 2
    try:
        topology = Topology.load(settings.topology_config, settings.endpoint.removeprefix(MULTI))
    except TopologyError as error:
        print(f"kubefabric route: {error}", file=sys.stderr)
        return 1
    for key in keys:
        print(f"{key} -> {_describe(topology.route(os.fsencode(key)))}")
    return 0


def _check_topology(path: str, endpoint: str | None) -> int:
    default = endpoint.removeprefix(MULTI) if endpoint and endpoint.startswith(MULTI) else PLACEHOLDER_DEFAULT
    try:
        topology = Topology.load(path, default)
    except TopologyError as error:
        print(f"kubefabric topology check: {error}", file=sys.stderr)
        return 1
    rules = len(topology.backends) - 1
    print(f"{path}: OK, {rules} rule{'' if rules == 1 else 's'} (first match wins), then the default")
    rows = [
        (str(position) if position <= rules else "", backend.name, backend.rule, redact(backend.endpoint))
        for position, backend in enumerate(topology.backends, 1)
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    for row in rows:
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)) + "  " + row[3])
    print(
        "Not checked: whether each database answers, and whether the rules agree with where the stored keys "
        "are (the server checks both at start-up)."
    )
    return 0


def _migrate_topology(settings: Settings, batch_size: int) -> int:
    # Imported here: the other commands need none of the stores' drivers.
    import asyncio

    from rich.console import Console
    from rich.progress import TaskID

    from kubefabric.app import StartupError, configured_store
    from kubefabric.core import Moves, RoutedStore, migrate
    from kubefabric.stores import EndpointError

    command = "kubefabric topology migrate"
    if batch_size < 1:
        print(f"{command}: --batch-size must be at least 1", file=sys.stderr)
        return 2
    if not settings.topology_config or not settings.endpoint.startswith(MULTI):
        print(f"{command}: give the new rules: --topology-config FILE and --endpoint multi://DEFAULT", file=sys.stderr)
        return 2
    try:
        store = configured_store(settings)
    except (EndpointError, StartupError) as error:
        print(f"{command}: {error}", file=sys.stderr)
        return 2
    assert isinstance(store, RoutedStore)
    console = Console(stderr=True)

    class Bar:
        def __init__(self, progress: Progress) -> None:
            self._progress = progress
            self._task: TaskID | None = None

        def planned(self, moves: Moves) -> None:
            for (holder, target), count in sorted(moves.items()):
                console.print(f"{count} keys to move from {holder!r} to {target!r}")
            if moves:
                self._task = self._progress.add_task("moving keys", total=sum(moves.values()))

        def moved(self, count: int) -> None:
            assert self._task is not None, "keys moved that were not planned"
            self._progress.advance(self._task, count)

    async def run() -> Moves:
        with _progress(console) as progress:
            return await migrate(store, Bar(progress), batch_size)

    try:
        moves = asyncio.run(run())
    except Exception as error:  # noqa: BLE001 - refused rules or moves, or a database's own words
        print(f"{command}: {error}", file=sys.stderr)
        return 1
    moved = sum(moves.values())
    done = f"moved {moved} keys (reads before now answer 'compacted')" if moved else "no key to move"
    print(f"{done}; the rules of {settings.topology_config} are recorded")
    return 0


def _progress(console: Console) -> Progress:
    """A progress bar for long work over many keys: what, how far, how many, how long still."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    return Progress(*columns, console=console)


def _is_etcd_endpoint(endpoint: str) -> bool:
    return endpoint.startswith(("http://", "https://"))


def _is_etcd(backend: Backend) -> bool:
    return _is_etcd_endpoint(backend.endpoint)


def _restore_snapshot(settings: Settings, path: str, skip_hash_check: bool) -> int:
    # Imported here: the other commands need none of the stores' drivers.
    import asyncio

    from rich.console import Console

    from kubefabric.app import StartupError, configured_store
    from kubefabric.core import RoutedStore, restore_snapshot
    from kubefabric.snapshot import SnapshotError, read_snapshot
    from kubefabric.stores import EndpointError

    command = "kubefabric snapshot restore"
    endpoint = redact(settings.endpoint)
    console = Console(stderr=True)
    try:
        with console.status(f"reading {path}"):
            snapshot = read_snapshot(path, skip_hash_check)
        store = configured_store(settings)
    except SnapshotError as error:
        print(f"{command}: {error}", file=sys.stderr)
        return 1
    except (EndpointError, StartupError) as error:
        print(f"{command}: --endpoint {endpoint}: {error}", file=sys.stderr)
        return 2
    # An etcd store cannot set version counts: etcd keeps its own, from the writes it saw.
    if isinstance(store, RoutedStore):
        in_etcd = [key for key in snapshot.keys_created_before_compaction() if _is_etcd(store.topology.route(key))]
    else:
        in_etcd = snapshot.keys_created_before_compaction() if _is_etcd_endpoint(settings.endpoint) else []
    if in_etcd:
        print(
            f"{command}: {endpoint}: {len(in_etcd)} keys for an etcd store (such as {os.fsdecode(in_etcd[0])!r}) "
            "were created before the snapshot's compaction point, and etcd would count their versions from 1 "
            "again. Restore the snapshot into that etcd's data directory instead (etcdctl snapshot restore, "
            "then start etcd on it): kubefabric adopts it with its revisions.",
            file=sys.stderr,
        )
        return 1

    async def load() -> None:
        with _progress(console) as progress:
            task = progress.add_task(f"restoring into {endpoint}", total=len(snapshot.versions))
            await restore_snapshot(store, snapshot, lambda written: progress.advance(task, written))

    try:
        asyncio.run(load())
    except Exception as error:  # noqa: BLE001 - a non-empty store, or the database's own words
        print(f"{command}: {endpoint}: {error}", file=sys.stderr)
        return 1
    compacted = f", compacted at {snapshot.compact_revision}" if snapshot.compact_revision > 0 else ""
    print(
        f"restored {path} into {endpoint}: {len(snapshot.versions)} key versions at revision "
        f"{snapshot.revision}{compacted}, {len(snapshot.leases)} leases"
    )
    return 0


def _serve(settings: Settings) -> NoReturn:
    # Imported here: `route` and `topology check` need none of the server.
    import uvloop

    from kubefabric.app import serve

    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # uvloop takes about a fifth off the CPU time gRPC spends on each request.
    sys.exit(uvloop.run(serve(settings)))


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "topology" and args.topology_command == "check":
        sys.exit(_check_topology(args.file, args.endpoint))
    settings = _settings(args)
    if args.command == "topology":
        sys.exit(_migrate_topology(settings, args.batch_size))
    if args.command == "route":
        sys.exit(_route(settings, args.keys))
    if args.command == "snapshot":
        sys.exit(_restore_snapshot(settings, args.file, args.skip_hash_check))
    _serve(settings)
