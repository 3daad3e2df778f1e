"""The `kubefabric` command: `kubefabric [flags]` serves; `route` and `topology check` inspect a topology."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import NoReturn

from pydantic import ValidationError

from kubefabric import __version__
from kubefabric.config import OPTIONS, Settings
from kubefabric.core import Backend, Topology, TopologyError
from kubefabric.stores import redact

MULTI = "multi://"
# `topology check` without a multi:// --endpoint: the default backend's endpoint is not known.
PLACEHOLDER_DEFAULT = "sqlite://(the default: --endpoint multi://...)"


def _add_options(parser: argparse.ArgumentParser, *, top_level: bool) -> None:
    """The flags of config.OPTIONS. The top level takes its defaults from the environment; a command
    takes the same flags after its name and sets only those given there, keeping the top level's."""
    defaults = Settings()
    for option in OPTIONS:
        default = getattr(defaults, option.field)
        parser.add_argument(
            option.flag,
            default=os.environ.get(option.env) if top_level else argparse.SUPPRESS,
            metavar=option.field.upper(),
            help=f"{option.help} [env {option.env}] (default: {default!r})",
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
        "       %(prog)s topology check FILE [FLAGS]    validate a topology file",
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
        "backend is --endpoint's multi://DEFAULT if given.",
        epilog=epilog,
    )
    check.add_argument("file", metavar="FILE", help="the topology YAML file")
    _add_options(check, top_level=False)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    """The settings from the flags and environment; exit 2 naming the flag if one is unusable."""
    given = {option.field: getattr(args, option.field) for option in OPTIONS}
    try:
        return Settings(**{name: value for name, value in given.items() if value is not None})
    except ValidationError as error:
        for problem in error.errors():
            if not problem["loc"]:  # a rule across several settings names its flags itself
                print(f"kubefabric: {problem['msg']}", file=sys.stderr)
                continue
            name = str(problem["loc"][0])
            option = next(option for option in OPTIONS if option.field == name)
            print(f"kubefabric: {option.flag} / {option.env}: {problem['msg']}", file=sys.stderr)
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
    if args.command == "topology":
        sys.exit(_check_topology(args.file, args.endpoint))
    settings = _settings(args)
    if args.command == "route":
        sys.exit(_route(settings, args.keys))
    _serve(settings)
