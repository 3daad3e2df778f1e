"""etcd's errors, with the exact messages clients match on.

Each carries the name of the gRPC status code etcd answers with; the protocol layer maps it.
"""

from __future__ import annotations


class EtcdError(Exception):
    code = "UNKNOWN"
    message = ""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.message)


class Compacted(EtcdError):
    code, message = "OUT_OF_RANGE", "etcdserver: mvcc: required revision has been compacted"


class FutureRevision(EtcdError):
    code, message = "OUT_OF_RANGE", "etcdserver: mvcc: required revision is a future revision"


class EmptyKey(EtcdError):
    code, message = "INVALID_ARGUMENT", "etcdserver: key is not provided"


class KeyNotFound(EtcdError):
    code, message = "INVALID_ARGUMENT", "etcdserver: key not found"


class ValueProvided(EtcdError):
    code, message = "INVALID_ARGUMENT", "etcdserver: value is provided"


class LeaseProvided(EtcdError):
    code, message = "INVALID_ARGUMENT", "etcdserver: lease is provided"


class TooManyOps(EtcdError):
    code, message = "INVALID_ARGUMENT", "etcdserver: too many operations in txn request"


class DuplicateKey(EtcdError):
    code, message = "INVALID_ARGUMENT", "etcdserver: duplicate key given in txn request"


class RequestTooLarge(EtcdError):
    code, message = "INVALID_ARGUMENT", "etcdserver: request is too large"


class LeaseNotFound(EtcdError):
    code, message = "NOT_FOUND", "etcdserver: requested lease not found"


class LeaseExists(EtcdError):
    code, message = "FAILED_PRECONDITION", "etcdserver: lease already exists"


class LeaseTTLTooLarge(EtcdError):
    code, message = "OUT_OF_RANGE", "etcdserver: too large lease TTL"


class CrossBackendTxn(EtcdError):
    code = "INVALID_ARGUMENT"

    def __init__(self, backends: list[str]) -> None:
        super().__init__(
            f"kubefabric: a transaction may only write keys of one backend; this one writes to {', '.join(backends)}"
        )
