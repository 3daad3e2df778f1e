"""Settings: every command-line flag, its environment variable and its default, in one table."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str | float) -> float:
    """Seconds in "90s", "5m", "1h30m", "250ms", or a plain number of seconds."""
    if isinstance(text, int | float):
        return float(text)
    text = text.strip()
    if text[:1] == "-" and text[1:2] not in ("-", ""):  # "-5m": negative, which the settings refuse by name
        return -parse_duration(text[1:])
    try:
        return float(text)
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise ValueError(f"{text!r} is not a duration (examples: 30s, 5m, 1h, 250ms)")
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)


def format_duration(seconds: float) -> str:
    """The duration as the README spells it: 300.0 -> "5m", 5.0 -> "5s", 0.25 -> "250ms"."""
    if seconds == 0:
        return "0"
    for unit in ("h", "m", "s"):
        if seconds % _UNIT_SECONDS[unit] == 0:
            return f"{seconds / _UNIT_SECONDS[unit]:g}{unit}"
    return f"{seconds * 1000:g}ms"


# Settings given as durations (see parse_duration).
DURATIONS = (
    "compaction_interval",
    "watch_progress_notify_interval",
    "revision_mapper_history",
    "shutdown_grace_period",
)


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    listen_address: str = "127.0.0.1:2379"
    endpoint: str = "sqlite://./db/state.db"
    metrics_address: str = "127.0.0.1:2381"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    compaction_interval: float = 300.0
    compaction_retention: int = 1000
    watch_progress_notify_interval: float = 5.0
    cert_file: str = ""
    key_file: str = ""
    trusted_ca_file: str = ""
    topology_config: str = ""
    etcd_cafile: str = ""
    etcd_certfile: str = ""
    etcd_keyfile: str = ""
    revision_mapper_endpoint: str = ""  # empty: each etcd store keeps ./db/revisions-HOST-PORT.db
    revision_mapper_history: float = 4 * 3600.0
    revision_mapper_cache_capacity: int = 10000
    shutdown_grace_period: float = 10.0
    storage_gc: bool = True

    @field_validator("listen_address", "metrics_address")
    @classmethod
    def _host_port(cls, value: str) -> str:
        if value == "":
            return value
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{value!r} is not HOST:PORT")
        return value

    @field_validator(*DURATIONS, mode="before")
    @classmethod
    def _duration(cls, value: str | float) -> float:
        seconds = parse_duration(value)
        if seconds < 0:
            raise ValueError(f"{value!r} is negative: a duration is 0 or more")
        return seconds

    @field_validator("compaction_retention", "revision_mapper_cache_capacity")
    @classmethod
    def _not_negative(cls, value: int) -> int:
        if value < 0:
            raise ValueError("must be 0 or more")
        return value

    @field_validator(
        "cert_file", "key_file", "trusted_ca_file", "topology_config", "etcd_cafile", "etcd_certfile", "etcd_keyfile"
    )
    @classmethod
    def _readable_file(cls, value: str) -> str:
        if value and not (os.path.isfile(value) and os.access(value, os.R_OK)):
            raise ValueError(f"{value!r} is not a readable file")
        return value

    @model_validator(mode="after")
    def _tls_files_fit_together(self) -> Settings:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("--cert-file and --key-file must be given together")
        if self.trusted_ca_file and not self.cert_file:
            raise ValueError(
                "--trusted-ca-file needs --cert-file and --key-file: client certificates are checked only over TLS"
            )
        if bool(self.etcd_certfile) != bool(self.etcd_keyfile):
            raise ValueError("--etcd-certfile and --etcd-keyfile must be given together")
        if self.topology_config and not self.endpoint.startswith("multi://"):
            raise ValueError("--topology-config needs a multi:// --endpoint naming the default database")
        return self

    @property
    def tls(self) -> bool:
        return bool(self.cert_file)


@dataclass(frozen=True)
class Option:
    flag: str
    env: str
    help: str

    @property
    def field(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")


OPTIONS = [
    Option("--listen-address", "KUBEFABRIC_LISTEN_ADDRESS", "address the etcd v3 gRPC API listens on"),
    Option(
        "--endpoint", "KUBEFABRIC_ENDPOINT", "database to keep the data in: sqlite://PATH, postgres://..., mysql://..."
    ),
    Option(
        "--metrics-address",
        "KUBEFABRIC_METRICS_ADDRESS",
        "address of the Prometheus /metrics endpoint; empty turns it off",
    ),
    Option("--log-level", "KUBEFABRIC_LOG_LEVEL", "debug, info, warning or error"),
    Option(
        "--compaction-interval",
        "KUBEFABRIC_COMPACTION_INTERVAL",
        "how often old revisions are compacted automatically; 0 turns it off",
    ),
    Option("--compaction-retention", "KUBEFABRIC_COMPACTION_RETENTION", "revisions automatic compaction keeps"),
    Option(
        "--watch-progress-notify-interval",
        "KUBEFABRIC_WATCH_PROGRESS_NOTIFY_INTERVAL",
        "how often watchers that asked for progress notifications get one",
    ),
    Option("--cert-file", "KUBEFABRIC_CERT_FILE", "server certificate (PEM): serve the etcd API over TLS"),
    Option("--key-file", "KUBEFABRIC_KEY_FILE", "private key (PEM) of --cert-file"),
    Option(
        "--trusted-ca-file",
        "KUBEFABRIC_TRUSTED_CA_FILE",
        "CA certificates (PEM) for client certificates; when set, clients must present one signed by them",
    ),
    Option(
        "--topology-config",
        "TOPOLOGY_CONFIG",
        "YAML file routing resources to databases; needs --endpoint multi://DEFAULT-ENDPOINT",
    ),
    Option("--etcd-cafile", "KUBEFABRIC_ETCD_CAFILE", "CA certificates (PEM) that sign https:// etcd stores"),
    Option("--etcd-certfile", "KUBEFABRIC_ETCD_CERTFILE", "client certificate (PEM) for https:// etcd stores"),
    Option("--etcd-keyfile", "KUBEFABRIC_ETCD_KEYFILE", "private key (PEM) of --etcd-certfile"),
    Option(
        "--revision-mapper-endpoint",
        "REVISION_MAPPER_ENDPOINT",
        "sqlite://PATH where an etcd store keeps the mapping between kubefabric's revisions and the etcd's; "
        "unset, each etcd store keeps its own ./db/revisions-HOST-PORT.db",
    ),
    Option(
        "--revision-mapper-history",
        "REVISION_MAPPER_HISTORY",
        "how long revision mappings are kept; older revisions read as compacted; 0 keeps them forever",
    ),
    Option(
        "--revision-mapper-cache-capacity",
        "REVISION_MAPPER_CACHE_CAPACITY",
        "revision mappings kept in memory",
    ),
    Option(
        "--shutdown-grace-period",
        "KUBEFABRIC_SHUTDOWN_GRACE_PERIOD",
        "on SIGTERM, how long requests in flight may take to finish (watches end at once)",
    ),
    Option(
        "--storage-gc",
        "KUBEFABRIC_STORAGE_GC",
        "garbage-collect the objects labelled skip-controller-manager-metadata-caching in storage, as "
        "kube-controller-manager would; false leaves them to it",
    ),
]
