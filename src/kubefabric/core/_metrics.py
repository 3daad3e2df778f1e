"""Prometheus metrics of the core."""

from prometheus_client import Counter, Gauge, Histogram

REVISION = Gauge("kubefabric_revision", "The last durable revision")
COMPACT_REVISION = Gauge("kubefabric_compact_revision", "The revision history was compacted to")
COMMIT_SECONDS = Histogram(
    "kubefabric_commit_seconds",
    "Time to make one group of writes durable",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
COMMIT_GROUP_SIZE = Histogram(
    "kubefabric_commit_group_size",
    "Write requests made durable by one database transaction",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
COMMIT_FAILURES = Counter("kubefabric_commit_failures_total", "Database transactions that failed")
WATCHERS = Gauge("kubefabric_watchers", "Open watchers")
LEASES = Gauge("kubefabric_leases", "Granted leases")
OPAQUE_VALUES = Counter(
    "kubefabric_opaque_values_total",
    "Values written that are no Kubernetes object kubefabric can read (encrypted at rest, say): they match every selector",
)
GC_COLLECTED = Counter(
    "kubefabric_gc_collected_total",
    "Objects the garbage collector in storage deleted",
)
GC_PENDING = Gauge(
    "kubefabric_gc_pending",
    "Work the garbage collector in storage has yet to do: gone owners whose dependents, and objects, to examine",
)
GC_FAILED = Counter(
    "kubefabric_gc_failed_total",
    "Rounds of garbage collection in storage that failed (a database unreachable); their work is tried again",
)
