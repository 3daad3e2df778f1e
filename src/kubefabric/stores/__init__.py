"""Databases that keep etcd's key-value history; one module per database, one small interface."""

from __future__ import annotations

from kubefabric.stores._base import (
    LIVE,
    Change,
    KeyValue,
    RangeRows,
    Store,
    StoredState,
    StoreUnavailable,
    WriteBatch,
)
from kubefabric.stores._sqlite import SqliteStore


class EndpointError(ValueError):
    """An --endpoint the project cannot use."""


def open_store(endpoint: str) -> Store:
    """The store an endpoint URL names."""
    scheme = endpoint.partition("://")[0]
    if scheme == "sqlite":
        try:
            return SqliteStore(endpoint)
        except ValueError as error:
            raise EndpointError(str(error)) from None
    raise EndpointError(f"unsupported endpoint scheme {scheme!r} in {redact(endpoint)!r}; supported: sqlite://")


def redact(endpoint: str) -> str:
    """The endpoint with any password replaced, for logs and messages."""
    scheme, sep, rest = endpoint.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at or ":" not in credentials:
        return endpoint
    user = credentials.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"


__all__ = [
    "LIVE",
    "Change",
    "EndpointError",
    "KeyValue",
    "RangeRows",
    "SqliteStore",
    "Store",
    "StoreUnavailable",
    "StoredState",
    "WriteBatch",
    "open_store",
    "redact",
]
