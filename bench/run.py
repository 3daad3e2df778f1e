"""Benchmark kubefabric against a real etcd: `python -m bench.run [--targets etcd,sqlite] [--quick]`.

Each workload runs on a freshly started, empty server of each target in turn; the load comes from a
pool of spawned processes running grpc.aio clients (see bench/load.py), and the result is a Markdown
table with each target's numbers and their ratio to etcd's.
"""

from __future__ import annotations

import argparse
import multiprocessing
import multiprocessing.pool
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import load
from bench.report import CpuUse, Measured, TargetRun, WorkloadRows, render
from bench.targets import REFERENCE, TARGETS, clean_up, start_target
from tests._servers import ServerProcess

# One process per core: a single grpc.aio event loop tops out near one core (~200 µs of CPU per txn),
# while 3-4 processes on 2 cores cost 10-25% more generator CPU per request and gained no throughput.
DEFAULT_PROCESSES = 2
CONCURRENT_CLIENTS = 64
LIST_KEYS = 20_000
LIST_NAMESPACES = 100
UPDATE_KEYS_PER_CLIENT = 16
WATCH_PUTS_PER_SECOND = 200.0
WINDOW_START_DELAY = 1.0  # lets every worker connect before the window opens


@dataclass(frozen=True)
class Settings:
    """What --quick and --processes change."""

    processes: int
    duration: float
    sequential_lists: int


@dataclass(frozen=True)
class Workload:
    """A named measurement, the table rows it fills, and how to take it against one fresh server."""

    name: str
    rows: tuple[str, ...]
    measure: Callable[[Bench, ServerProcess], Measured]


def cpu_seconds(root_pid: int) -> float:
    """User + system CPU time used so far by a process and all its live descendants, from /proc."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # the process ended while we looked
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # skip "pid (comm) ": comm may contain spaces
        parents[int(entry)] = int(fields[1])
        ticks[int(entry)] = int(fields[11]) + int(fields[12])
    tree, frontier = {root_pid}, [root_pid]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        tree.update(children)
        frontier.extend(children)
    return sum(ticks.get(pid, 0) for pid in tree) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU time all CPUs together have spent neither idle nor waiting on I/O since boot, from /proc/stat."""
    ticks = [int(field) for field in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = ticks[:7]  # steal and guest are not work done here
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def client_groups(processes: int) -> list[load.ClientGroup]:
    """CONCURRENT_CLIENTS spread as evenly as possible over the worker processes."""
    share, extra = divmod(CONCURRENT_CLIENTS, processes)
    counts = [share + (1 if index < extra else 0) for index in range(processes)]
    return [load.ClientGroup(sum(counts[:index]), count) for index, count in enumerate(counts)]


def sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.time()))


class Bench:
    """The worker pool and settings shared by every workload of a run."""

    def __init__(self, pool: multiprocessing.pool.Pool, settings: Settings) -> None:
        self.pool = pool
        self.settings = settings

    def run_alone(self, job: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> Any:
        """Run one job in one worker process while the others stay idle."""
        return self.pool.apply(load.run_job, (job, *args))

    def preload(self, server: ServerProcess, keys: Sequence[bytes]) -> None:
        """Put a 1 KiB value under every key, the work spread over all worker processes."""
        processes = self.settings.processes
        concurrency = CONCURRENT_CLIENTS // processes
        pending = [
            self.pool.apply_async(load.run_job, (load.put_keys, server.address, keys[offset::processes], concurrency))
            for offset in range(processes)
        ]
        for result in pending:
            result.get()

    def run_window(
        self,
        server: ServerProcess,
        job: Callable[..., Coroutine[Any, Any, load.WindowResult]],
        per_process_args: Sequence[tuple[Any, ...]],
    ) -> tuple[float, CpuUse]:
        """Run job in one worker per args tuple over the same window: total operations/s and CPU use."""
        assert server.process is not None
        window = load.Window(time.time() + WINDOW_START_DELAY, self.settings.duration)
        pending = [
            self.pool.apply_async(load.run_job, (job, server.address, *args, window)) for args in per_process_args
        ]
        sleep_until(window.start_at)
        server_cpu_at_start, machine_busy_at_start = cpu_seconds(server.process.pid), machine_busy_seconds()
        sleep_until(window.end_at)
        server_cpu = cpu_seconds(server.process.pid) - server_cpu_at_start
        machine_busy = machine_busy_seconds() - machine_busy_at_start
        results: list[load.WindowResult] = [result.get() for result in pending]
        generator_cpu = sum(result.cpu_seconds for result in results)
        operations_per_second = sum(result.operations_per_second for result in results)
        other_cpu = max(0.0, machine_busy - server_cpu - generator_cpu)
        return operations_per_second, CpuUse(*(cpu / window.duration for cpu in (server_cpu, generator_cpu, other_cpu)))


def measure_creates(bench: Bench, server: ServerProcess) -> Measured:
    per_process_args = [(group,) for group in client_groups(bench.settings.processes)]
    creates_per_second, cpu = bench.run_window(server, load.creates, per_process_args)
    return Measured((creates_per_second,), cpu)


def measure_updates(bench: Bench, server: ServerProcess) -> Measured:
    keys = [
        load.object_key(client, index)
        for client in range(CONCURRENT_CLIENTS)
        for index in range(UPDATE_KEYS_PER_CLIENT)
    ]
    bench.preload(server, keys)
    per_process_args = [(group, UPDATE_KEYS_PER_CLIENT) for group in client_groups(bench.settings.processes)]
    updates_per_second, cpu = bench.run_window(server, load.updates, per_process_args)
    return Measured((updates_per_second,), cpu)


def measure_list(bench: Bench, server: ServerProcess) -> Measured:
    bench.preload(server, [load.object_key(index % LIST_NAMESPACES, index) for index in range(LIST_KEYS)])
    durations = bench.run_alone(load.list_seconds, server.address, LIST_KEYS, bench.settings.sequential_lists)
    lists_per_second, cpu = bench.run_window(server, load.lists, [(LIST_KEYS,)] * bench.settings.processes)
    return Measured((statistics.median(durations) * 1000, lists_per_second), cpu)


def measure_watch(bench: Bench, server: ServerProcess) -> Measured:
    delays = bench.run_alone(load.watch_delays, server.address, WATCH_PUTS_PER_SECOND, bench.settings.duration)
    percentiles = statistics.quantiles([delay * 1000 for delay in delays], n=100)
    return Measured((percentiles[49], percentiles[98]))


WORKLOADS = [
    Workload("creates", ("creates (txn), ops/s",), measure_creates),
    Workload("updates", ("updates (get + txn), ops/s",), measure_updates),
    Workload(
        "list",
        (
            f"list {LIST_KEYS:,} keys, ms per full list (median, alone)",
            f"list {LIST_KEYS:,} keys, full lists/s (one lister per process)",
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
    """One line for the report: the error's first line and, for a multi-line one (a log tail), its last."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    return lines[0] if len(lines) == 1 else f"{lines[0]} … {lines[-1]}"


def run_target(bench: Bench, target: str, workdir: Path, workloads: Sequence[Workload]) -> TargetRun:
    """Each workload against target, each on a fresh server; a failing workload does not stop the rest."""
    run = TargetRun()
    for workload in workloads:
        print(f"{target}: {workload.name} ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        server: ServerProcess | None = None
        try:
            server = start_target(target, workdir / workload.name)
            run.measured[workload.name] = measured = workload.measure(bench, server)
            numbers = ", ".join(
                f"{label}: {value:.1f}" for label, value in zip(workload.rows, measured.values, strict=True)
            )
            print(f"  {numbers} ({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)
        except Exception as error:  # a server under development may fail one workload; keep the others
            run.failures[workload.name] = error_summary(error)
            print(f"  failed: {error}", file=sys.stderr)
            if server is not None:
                print(f"  server log tail:\n{log_tail(server)}", file=sys.stderr, flush=True)
        finally:
            if server is not None:
                server.stop()
    return run


def notes(settings: Settings) -> list[str]:
    groups = "+".join(str(group.count) for group in client_groups(settings.processes))
    return [
        f"Load generator: {settings.processes} spawned processes, one grpc.aio channel each. Creates and "
        f"updates: {CONCURRENT_CLIENTS} concurrent clients ({groups}); lists/s: one lister per process; "
        f"watch: one process; ms per full list is the median of {settings.sequential_lists} lists run alone. "
        f"Windows of {settings.duration:g} s; 1 KiB values; every workload on a fresh, empty server.",
        f"The generator shares this machine's {os.cpu_count()} CPUs with the server, so etcd's column is the "
        "ceiling of this generator here, not etcd's own limit.",
        f"Ratio = target ÷ {REFERENCE}: below 1 is worse for ops/s and lists/s, above 1 is worse for ms.",
    ]


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


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated, from: {', '.join(TARGETS)}")
    parser.add_argument("--quick", action="store_true", help="3 s windows instead of 10 s, for a smoke run")
    parser.add_argument("--processes", type=int, default=DEFAULT_PROCESSES, help="load generator processes")
    parser.add_argument("--workloads", default=",".join(WORKLOAD_NAMES), help="comma-separated subset to run")
    parser.add_argument("--markdown", metavar="FILE", help="also write the report to FILE")
    parser.add_argument("--workdir", metavar="DIR", help="keep server data and logs in a new directory under DIR")
    args = parser.parse_args(argv)
    args.targets = comma_separated(parser, "targets", args.targets, TARGETS)
    args.workloads = comma_separated(parser, "workloads", args.workloads, WORKLOAD_NAMES)
    return args


def comma_separated(parser: argparse.ArgumentParser, option: str, value: str, choices: Sequence[str]) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in choices]
    if unknown:
        parser.error(f"unknown {option} {', '.join(unknown)}; choose from {', '.join(choices)}")
    return names


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(argv)
    settings = Settings(
        processes=args.processes,
        duration=3.0 if args.quick else 10.0,
        sequential_lists=3 if args.quick else 5,
    )
    # spawn, not fork: a forked child would inherit grpc's threads and state from the parent.
    context = multiprocessing.get_context("spawn")
    with (
        context.Pool(settings.processes, initializer=load.prepare_worker) as pool,
        work_directory(args.workdir) as workdir,
    ):
        bench = Bench(pool, settings)
        selected = [workload for workload in WORKLOADS if workload.name in args.workloads]
        try:
            runs = {target: run_target(bench, target, workdir / target, selected) for target in args.targets}
        finally:
            clean_up()
    report = render([WorkloadRows(workload.name, workload.rows) for workload in selected], runs, notes(settings))
    print(report)
    if args.markdown:
        Path(args.markdown).write_text(report)
    return 1 if any(run.failures for run in runs.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
