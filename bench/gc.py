"""Garbage collection in storage: `python -m bench.gc [--targets sqlite,postgres] [--dependents 10000]`.

On a fresh server of each target, one ReplicaSet owns --dependents pods (JSON as kube-apiserver stores them,
about 1 KiB, each with an ownerReference to the ReplicaSet); owner and pods carry the label
`skip-controller-manager-metadata-caching`, so kubefabric collects them. Meanwhile bench/loadgen creates
unrelated keys from --writers clients, without pause. The run then

- counts the writer's keys over --baseline seconds: its create rate without a collection;
- deletes the ReplicaSet, as kube-apiserver does on `kubectl delete --cascade=background`, and polls a
  count-only Range of the pods until none is left: the time the collection takes;
- counts the writer's keys over that same time: its create rate while the collector deletes the pods.

The result is a Markdown table, one column per target.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from bench.run import (
    Bench,
    Failed,
    Settings,
    build_loadgen,
    comma_separated,
    cpu_seconds,
    on_fresh_server,
    work_directory,
)
from bench.targets import KUBEFABRIC_STORES, clean_up
from kubefabric.etcdpb import rpc_pb2, rpc_pb2_grpc
from kubefabric.objects import COLLECTED_LABEL
from tests._client import prefix_end, put_op
from tests._pods import PODS, pod, pod_key
from tests._servers import ServerProcess

DEFAULT_TARGETS = ("sqlite", "postgres", "mysql", "etcd-store")
OWNER_KEY = b"/registry/replicasets/default/web"
OWNER_UID = "6f1c2a52-0000-4000-8000-000000000001"
WRITER_KEYS = b"/registry/bench/"  # where bench/loadgen creates its keys
PUTS_PER_TXN = 100  # under etcd's limit of 128 operations per txn, for the etcd store
TXNS_IN_FLIGHT = 8
WARM_UP = 1.0  # seconds the writer runs before its rate is counted
POLL_INTERVAL = 0.05


def owner() -> bytes:
    return json.dumps(
        {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": "web",
                "namespace": "default",
                "uid": OWNER_UID,
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "labels": {"app": "web", COLLECTED_LABEL: ""},
            },
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}}},
        }
    ).encode()


def dependent(number: int) -> bytes:
    """A pod of the ReplicaSet, as its controller creates it (controller and blockOwnerDeletion set)."""
    obj = json.loads(pod(number))
    obj["metadata"]["labels"][COLLECTED_LABEL] = ""
    obj["metadata"]["ownerReferences"] = [
        {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "name": "web",
            "uid": OWNER_UID,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    return json.dumps(obj).encode()


@dataclass(frozen=True)
class Collection:
    """What one target measured; rates are the writer's creates per second, CPU is kubefabric's cores."""

    dependents: int
    collected: float  # kubefabric_gc_collected_total at the end
    seconds: float
    left: int  # dependents still there when the wait timed out (0: all collected)
    rate_without: float
    rate_during: float
    cpu_without: float
    cpu_during: float


def count(kv: rpc_pb2_grpc.KVStub, prefix: bytes) -> int:
    return kv.Range(rpc_pb2.RangeRequest(key=prefix, range_end=prefix_end(prefix), count_only=True)).count


def metric(server: ServerProcess, name: str) -> float | None:
    """The sum of a metric's samples on the server's /metrics, or None if it has none."""
    address = server.command[server.command.index("--metrics-address") + 1]
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        lines = response.read().decode().splitlines()
    samples = [float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith((name + " ", name + "{"))]
    return sum(samples) if samples else None


def create_objects(kv: rpc_pb2_grpc.KVStub, dependents: int) -> None:
    """The owner first (a dependent whose owner does not exist yet would be collected at once), then its pods."""
    kv.Put(rpc_pb2.PutRequest(key=OWNER_KEY, value=owner()))
    in_flight: list[Future[rpc_pb2.TxnResponse]] = []
    for first in range(0, dependents, PUTS_PER_TXN):
        puts = [put_op(pod_key(n), dependent(n)) for n in range(first, min(first + PUTS_PER_TXN, dependents))]
        in_flight.append(kv.Txn.future(rpc_pb2.TxnRequest(success=puts)))
        if len(in_flight) == TXNS_IN_FLIGHT:
            in_flight.pop(0).result()
    for txn in in_flight:
        txn.result()


def wait_until_idle(server: ServerProcess, timeout: float) -> None:
    """Until the collector has examined every object written so far (as far as its gauge tells)."""
    deadline = time.monotonic() + timeout
    while (metric(server, "kubefabric_gc_pending") or 0) > 0 and time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL)


def measure(bench: Bench, server: ServerProcess, args: argparse.Namespace) -> Collection:
    assert server.process is not None
    with server.channel() as channel:
        kv = rpc_pb2_grpc.KVStub(channel)
        create_objects(kv, args.dependents)
        wait_until_idle(server, args.timeout)
        if count(kv, PODS) != args.dependents:
            raise RuntimeError(f"{count(kv, PODS)} of {args.dependents} pods left before their owner was deleted")

        start_at = time.time() + WARM_UP
        writer = bench.start(
            server, "creates", clients=args.writers, start_at=start_at, duration=f"{args.timeout + 60}s"
        )
        try:
            time.sleep(max(0.0, start_at + WARM_UP - time.time()))
            baseline_keys, baseline_cpu, baseline_started = (
                count(kv, WRITER_KEYS),
                cpu_seconds(server.process.pid),
                time.perf_counter(),
            )
            time.sleep(args.baseline)
            keys, cpu, started = count(kv, WRITER_KEYS), cpu_seconds(server.process.pid), time.perf_counter()
            rate_without = (keys - baseline_keys) / (started - baseline_started)
            cpu_without = (cpu - baseline_cpu) / (started - baseline_started)

            kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=OWNER_KEY))
            deadline = started + args.timeout
            while (left := count(kv, PODS)) and time.perf_counter() < deadline:
                time.sleep(POLL_INTERVAL)
            seconds = time.perf_counter() - started
            rate_during = (count(kv, WRITER_KEYS) - keys) / seconds
            cpu_during = (cpu_seconds(server.process.pid) - cpu) / seconds
            if writer.poll() is not None:
                raise RuntimeError(f"the writer stopped early: {writer.communicate()[1].strip()}")
        finally:
            writer.kill()
            writer.wait()
    collected = metric(server, "kubefabric_gc_collected_total") or 0.0
    return Collection(args.dependents, collected, seconds, left, rate_without, rate_during, cpu_without, cpu_during)


def rows(collection: Collection) -> list[str]:
    """The table's cells for one target, in the order of ROWS."""
    done = (
        f"{collection.seconds:,.2f}"
        if not collection.left
        else f"not done after {collection.seconds:,.0f} s: {collection.left:,} left"
    )
    return [
        done,
        f"{(collection.dependents - collection.left) / collection.seconds:,.0f}",
        f"{collection.collected:,.0f}",
        f"{collection.rate_without:,.0f}",
        f"{collection.rate_during:,.0f}",
        f"{collection.rate_during / collection.rate_without:.2f}×",
        f"{collection.cpu_without:.2f} → {collection.cpu_during:.2f}",
    ]


ROWS = [
    "time until every dependent is gone, s",
    "dependents collected per second",
    "`kubefabric_gc_collected_total` afterwards",
    "writer's creates/s without a collection",
    "writer's creates/s during the collection",
    "during ÷ without",
    "kubefabric CPU, cores: without → during",
]


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gc", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--targets",
        default=",".join(DEFAULT_TARGETS),
        help=f"comma-separated, from: {', '.join(KUBEFABRIC_STORES)} (default: {','.join(DEFAULT_TARGETS)})",
    )
    parser.add_argument("--dependents", type=int, default=10_000, help="pods the owner has (default 10,000)")
    parser.add_argument("--writers", type=int, default=16, help="clients of the concurrent writer (default 16)")
    parser.add_argument(
        "--baseline", type=float, default=5.0, help="seconds the writer's rate is counted before the delete"
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the collection (default 600)")
    parser.add_argument("--workdir", metavar="DIR", help="keep server data and logs in a new directory under DIR")
    args = parser.parse_args(argv)
    args.targets = comma_separated(parser, "targets", args.targets, list(KUBEFABRIC_STORES))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(argv)
    bench = Bench(build_loadgen(), Settings(duration=args.baseline, sequential_lists=0))
    results: dict[str, list[str]] = {}
    with work_directory(args.workdir) as workdir:
        try:
            for target in args.targets:
                print(f"{target}: {args.dependents:,} dependents ...", file=sys.stderr, flush=True)
                measured = on_fresh_server(target, workdir / target, lambda server: rows(measure(bench, server, args)))
                if isinstance(measured, Failed):
                    results[target] = [f"failed: {measured.summary}"] + [""] * (len(ROWS) - 1)
                else:
                    results[target] = measured
                    print("  " + ", ".join(measured), file=sys.stderr, flush=True)
        finally:
            clean_up()
    print(
        f"\n### Collecting {args.dependents:,} dependents of one deleted owner, "
        f"beside a writer of {args.writers} clients\n"
    )
    print("| | " + " | ".join(args.targets) + " |")
    print("| --- |" + " ---: |" * len(args.targets))
    for index, row in enumerate(ROWS):
        print(f"| {row} | " + " | ".join(results[target][index] for target in args.targets) + " |")
    return 1 if any(cells[0].startswith("failed") for cells in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
