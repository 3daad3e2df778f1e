"""Benchmark kubefabric against a real etcd: `python -m bench.run [--targets etcd,sqlite] [--quick]`.

Each workload runs on a freshly started, empty server of each target in turn; the load comes from
bench/loadgen, a Go program built on etcd's own client, and the result is a Markdown table with
each target's numbers and their ratio to etcd's.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc

from bench.report import CpuUse, Measured, TargetRun, Window, WorkloadRows, render
from bench.targets import FLOOR, FLOOR_WORKLOADS, REFERENCE, TARGETS, clean_up, start_target
from tests._servers import REPO_ROOT, ServerProcess

T = TypeVar("T")

LOADGEN_SOURCE = Path(__file__).parent / "loadgen" / "main.go"
LOADGEN_BUILD_DIR = REPO_ROOT / "build" / "bench"
GOPATH = "/usr/share/gocode"  # where Debian's golang-*-dev packages put Go sources
GO_INSTALL_HINT = "apt-get install golang-go golang-etcd-server-dev"

CONCURRENT_CLIENTS = 64
LISTERS = 2
LIST_KEYS = 20_000
NAMESPACES = 100
UPDATE_KEYS_PER_CLIENT = 16
WATCH_PUTS_PER_SECOND = 200.0
WINDOW_START_DELAY = 1.0  # lets the generator connect before the window opens
DEFAULT_RSS_KEYS = (10_000, 100_000, 1_000_000)


@dataclass(frozen=True)
class Settings:
    """What --quick changes."""

    duration: float
    sequential_lists: int


@dataclass(frozen=True)
class Workload:
    """A named measurement, the table rows it fills, and how to take it against one fresh server."""

    name: str
    rows: tuple[str, ...]
    measure: Callable[[Bench, ServerProcess], Measured]


@dataclass(frozen=True)
class Generated:
    """What one run of the generator printed: see `result` in bench/loadgen/main.go."""

    operations_per_second: float
    cpu_seconds: float
    seconds: tuple[float, ...]


def build_loadgen() -> Path:
    """The generator's binary, built from bench/loadgen/main.go unless this very source was built before."""
    source = LOADGEN_SOURCE.read_bytes()
    binary = LOADGEN_BUILD_DIR / f"loadgen-{hashlib.sha256(source).hexdigest()[:16]}"
    if binary.exists():
        return binary
    go = shutil.which("go")
    if go is None:
        sys.exit(f"the load generator is a Go program and go is not installed: {GO_INSTALL_HINT}")
    if not Path(GOPATH, "src/go.etcd.io/etcd/clientv3").is_dir():
        sys.exit(f"the load generator needs etcd's Go client under {GOPATH}: {GO_INSTALL_HINT}")
    print(f"building {LOADGEN_SOURCE.relative_to(REPO_ROOT)} ...", file=sys.stderr, flush=True)
    LOADGEN_BUILD_DIR.mkdir(parents=True, exist_ok=True)
    for stale in LOADGEN_BUILD_DIR.glob("loadgen-*"):
        stale.unlink()
    partial = binary.with_suffix(".partial")  # an interrupted build never passes for a finished one
    build = subprocess.run(
        [go, "build", "-o", str(partial), str(LOADGEN_SOURCE)],
        env={**os.environ, "GO111MODULE": "off", "GOPATH": GOPATH},  # Debian's sources, offline
        capture_output=True,
        text=True,
    )
    if build.returncode != 0:
        sys.exit(f"building {LOADGEN_SOURCE} failed:\n{build.stderr}")
    partial.rename(binary)
    return binary


def process_tree(root_pid: int) -> set[int]:
    """A process and all its live descendants, from /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:  # the process ended while we looked
                continue
            parents[int(entry)] = int(stat[stat.rindex(")") + 2 :].split()[1])  # after "pid (comm) state"
    tree, frontier = {root_pid}, [root_pid]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        tree.update(children)
        frontier.extend(children)
    return tree


def cpu_seconds(root_pid: int) -> float:
    """User + system CPU time used so far by a process and all its live descendants, from /proc."""
    ticks = 0
    for pid in process_tree(root_pid):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # skip "pid (comm) ": comm may contain spaces
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def resident_mib(root_pid: int) -> float:
    """Resident memory (VmRSS) of a process and all its live descendants, from /proc, in MiB."""
    kib = 0
    for pid in process_tree(root_pid):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        kib += sum(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return kib / 1024


def machine_busy_seconds() -> float:
    """CPU time all CPUs together have spent neither idle nor waiting on I/O since boot, from /proc/stat."""
    ticks = [int(field) for field in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = ticks[:7]  # steal and guest are not work done here
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.time()))


class Bench:
    """The generator's binary and the settings shared by every workload of a run."""

    def __init__(self, loadgen: Path, settings: Settings) -> None:
        self.loadgen = loadgen
        self.settings = settings

    def start(self, server: ServerProcess, workload: str, **flags: object) -> subprocess.Popen[str]:
        """Start the generator on one workload; flags become its -flag=value arguments."""
        command = [str(self.loadgen), f"-endpoint={server.address}", f"-workload={workload}"]
        command += [f"-{name.replace('_', '-')}={value}" for name, value in flags.items()]
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    @staticmethod
    def result(generator: subprocess.Popen[str]) -> Generated:
        """Wait for a started generator: what it printed, or its error as a RuntimeError."""
        stdout, stderr = generator.communicate()
        if generator.returncode != 0:
            raise RuntimeError(stderr.strip() or f"the load generator exited with {generator.returncode}")
        printed = json.loads(stdout)
        return Generated(printed["operations_per_second"], printed["cpu_seconds"], tuple(printed.get("seconds", ())))

    def generate(self, server: ServerProcess, workload: str, **flags: object) -> Generated:
        return self.result(self.start(server, workload, **flags))

    def preload(self, server: ServerProcess, keys: int, namespaces: int, first: int = 0) -> None:
        """Put a 1 KiB value under keys first..first+keys-1, key i in namespace i % namespaces."""
        self.generate(server, "preload", keys=keys, namespaces=namespaces, first=first, clients=CONCURRENT_CLIENTS)

    def run_window(self, server: ServerProcess, workload: str, **flags: object) -> Window:
        """Run a closed-loop workload over one window: operations/s and the CPU of server, generator and the rest."""
        assert server.process is not None
        start_at = time.time() + WINDOW_START_DELAY
        end_at = start_at + self.settings.duration
        generator = self.start(server, workload, start_at=start_at, duration=f"{self.settings.duration}s", **flags)
        sleep_until(start_at)
        server_cpu_at_start, machine_busy_at_start = cpu_seconds(server.process.pid), machine_busy_seconds()
        sleep_until(end_at)
        server_cpu = cpu_seconds(server.process.pid) - server_cpu_at_start
        machine_busy = machine_busy_seconds() - machine_busy_at_start
        generated = self.result(generator)
        other_cpu = max(0.0, machine_busy - server_cpu - generated.cpu_seconds)
        cpu = (cpu / self.settings.duration for cpu in (server_cpu, generated.cpu_seconds, other_cpu))
        return Window(generated.operations_per_second, CpuUse(*cpu))


def measure_creates(bench: Bench, server: ServerProcess) -> Measured:
    window = bench.run_window(server, "creates", clients=CONCURRENT_CLIENTS)
    return Measured((window.operations_per_second,), window)


def measure_updates(bench: Bench, server: ServerProcess) -> Measured:
    # namespace n holds client n's keys
    bench.preload(server, CONCURRENT_CLIENTS * UPDATE_KEYS_PER_CLIENT, namespaces=CONCURRENT_CLIENTS)
    window = bench.run_window(server, "updates", clients=CONCURRENT_CLIENTS, keys_per_client=UPDATE_KEYS_PER_CLIENT)
    return Measured((window.operations_per_second,), window)


def measure_list(bench: Bench, server: ServerProcess) -> Measured:
    bench.preload(server, LIST_KEYS, namespaces=NAMESPACES)
    alone = bench.generate(server, "list-latency", keys=LIST_KEYS, count=bench.settings.sequential_lists)
    window = bench.run_window(server, "lists", clients=LISTERS, keys=LIST_KEYS)
    return Measured((statistics.median(alone.seconds) * 1000, window.operations_per_second), window)


def measure_watch(bench: Bench, server: ServerProcess) -> Measured:
    watch = bench.generate(server, "watch", rate=WATCH_PUTS_PER_SECOND, duration=f"{bench.settings.duration}s")
    percentiles = statistics.quantiles([delay * 1000 for delay in watch.seconds], n=100)
    return Measured((percentiles[49], percentiles[98]))


def rss_workload(key_counts: Sequence[int]) -> Workload:
    """The server's resident memory after loading each of key_counts (ascending) keys, on one server."""

    def measure(bench: Bench, server: ServerProcess) -> Measured:
        assert server.process is not None
        resident, loaded = [], 0
        for count in key_counts:
            bench.preload(server, count - loaded, namespaces=NAMESPACES, first=loaded)
            loaded = count
            resident.append(resident_mib(server.process.pid))
        return Measured(tuple(resident))

    return Workload("rss", tuple(f"server RSS after loading {count:,} keys, MiB" for count in key_counts), measure)


WORKLOADS = [
    Workload("creates", ("creates (txn), ops/s",), measure_creates),
    Workload("updates", ("updates (get + txn), ops/s",), measure_updates),
    Workload(
        "list",
        (
            f"list {LIST_KEYS:,} keys, ms per full list (median, alone)",
            f"list {LIST_KEYS:,} keys, full lists/s ({LISTERS} concurrent listers)",
        ),
        measure_list,
    ),
    Workload(
        "watch",
        (
            f"watch latency p50 at {WATCH_PUTS_PER_SECOND:.0f} puts/s, ms",
            f"watch latency p99 at {WATCH_PUTS_PER_SECOND:.0f} puts/s, ms",
        ),
        measure_watch,
    ),
]
WORKLOAD_NAMES = [workload.name for workload in WORKLOADS]


def log_tail(server: ServerProcess, lines: int = 15) -> str:
    try:
        return "\n".join(server.log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


def error_summary(error: Exception) -> str:
    """One line for the report: a gRPC status, or the error's first line and, for a multi-line one (a log
    tail), its last."""
    if isinstance(error, grpc.Call):
        return f"{error.code().name}: {error.details()}"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    return lines[0] if len(lines) == 1 else f"{lines[0]} … {lines[-1]}"


@dataclass(frozen=True)
class Failed:
    summary: str  # one line, for the report


def on_fresh_server(target: str, workdir: Path, measure: Callable[[ServerProcess], T]) -> T | Failed:
    """`measure` on a freshly started server of target, stopped afterwards. A server under development may fail
    one measurement and the others still run: a failure is printed with the server's log tail and returned."""
    server: ServerProcess | None = None
    try:
        server = start_target(target, workdir)
        return measure(server)
    except Exception as error:
        print(f"  failed: {error}", file=sys.stderr)
        if server is not None:
            print(f"  server log tail:\n{log_tail(server)}", file=sys.stderr, flush=True)
        return Failed(error_summary(error))
    finally:
        if server is not None:
            server.stop()


def run_target(bench: Bench, target: str, workdir: Path, workloads: Sequence[Workload]) -> TargetRun:
    """Each workload against target, each on a fresh server; a failing workload does not stop the rest."""
    run = TargetRun()
    for workload in workloads:
        if target == FLOOR and workload.name not in FLOOR_WORKLOADS:
            continue
        print(f"{target}: {workload.name} ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        measured = on_fresh_server(target, workdir / workload.name, functools.partial(workload.measure, bench))
        if isinstance(measured, Failed):
            run.failures[workload.name] = measured.summary
            continue
        run.measured[workload.name] = measured
        numbers = ", ".join(
            f"{label}: {value:.1f}" for label, value in zip(workload.rows, measured.values, strict=True)
        )
        print(f"  {numbers} ({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)
    return run


def notes(settings: Settings, workloads: Sequence[str]) -> list[str]:
    lines = [
        "Load generator: bench/loadgen, one Go process on etcd's own client (clientv3, one gRPC connection). "
        f"Creates and updates: {CONCURRENT_CLIENTS} concurrent clients; lists/s: {LISTERS} concurrent listers; "
        f"ms per full list is the median of {settings.sequential_lists} lists run alone. Windows of "
        f"{settings.duration:g} s; 1 KiB values; every workload on a fresh, empty server.",
        f"The generator shares this machine's {os.cpu_count()} CPUs with the server. Its ceiling is what one of "
        f"its cores sends at the CPU per operation it spent against {REFERENCE}; an operation is a create, an "
        "update (get + txn) or a full list.",
        f"Ratio = target ÷ {REFERENCE}: below 1 is worse for ops/s and lists/s, above 1 is worse for ms and MiB.",
    ]
    if "rss" in workloads:
        lines.append(
            "RSS: VmRSS of the server process and its children once the keys are loaded (one server per target, "
            "loaded up to each count in turn). The memory of a database behind the server (PostgreSQL, MariaDB, "
            "the etcd of etcd-store) is not included."
        )
    return lines


@contextmanager
def work_directory(path: str | None) -> Iterator[Path]:
    """A new directory under path, kept afterwards; or, without path, a temporary one removed afterwards."""
    if path is not None:
        Path(path).mkdir(parents=True, exist_ok=True)
        kept = Path(tempfile.mkdtemp(prefix="kubefabric-bench-", dir=path))
        print(f"server data and logs: {kept}", file=sys.stderr)
        yield kept
        return
    with tempfile.TemporaryDirectory(prefix="kubefabric-bench-") as temporary:
        yield Path(temporary)


def key_counts(value: str) -> tuple[int, ...]:
    """--rss-keys: comma-separated positive key counts, measured in ascending order."""
    try:
        counts = {int(count) for count in value.split(",") if count.strip()}
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of key counts: {value!r}") from None
    if not counts or min(counts) <= 0:
        raise argparse.ArgumentTypeError(f"key counts must be positive: {value!r}")
    return tuple(sorted(counts))


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated, from: {', '.join(TARGETS)}")
    parser.add_argument("--quick", action="store_true", help="3 s windows instead of 10 s, for a smoke run")
    parser.add_argument(
        "--workloads",
        default=",".join(WORKLOAD_NAMES),
        help=f"comma-separated subset of {', '.join(WORKLOAD_NAMES)}, or rss (server memory; not run by default)",
    )
    parser.add_argument(
        "--rss-keys",
        type=key_counts,
        metavar="N,N,...",
        help="also run rss: the server's memory after loading each count of keys "
        f"(default with --workloads rss: {','.join(map(str, DEFAULT_RSS_KEYS))})",
    )
    parser.add_argument("--markdown", metavar="FILE", help="also write the report to FILE")
    parser.add_argument("--workdir", metavar="DIR", help="keep server data and logs in a new directory under DIR")
    args = parser.parse_args(argv)
    args.targets = comma_separated(parser, "targets", args.targets, TARGETS)
    args.workloads = comma_separated(parser, "workloads", args.workloads, [*WORKLOAD_NAMES, "rss"])
    if args.rss_keys and "rss" not in args.workloads:
        args.workloads.append("rss")
    return args


def comma_separated(parser: argparse.ArgumentParser, option: str, value: str, choices: Sequence[str]) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in choices]
    if unknown:
        parser.error(f"unknown {option} {', '.join(unknown)}; choose from {', '.join(choices)}")
    return names


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(argv)
    settings = Settings(duration=3.0 if args.quick else 10.0, sequential_lists=3 if args.quick else 5)
    bench = Bench(build_loadgen(), settings)
    workloads = [*WORKLOADS, rss_workload(args.rss_keys or DEFAULT_RSS_KEYS)]
    selected = [workload for workload in workloads if workload.name in args.workloads]
    with work_directory(args.workdir) as workdir:
        try:
            runs = {target: run_target(bench, target, workdir / target, selected) for target in args.targets}
        finally:
            clean_up()
    rows = [WorkloadRows(workload.name, workload.rows) for workload in selected]
    report = render(rows, runs, notes(settings, args.workloads))
    print(report)
    if args.markdown:
        Path(args.markdown).write_text(report)
    return 1 if any(run.failures for run in runs.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
