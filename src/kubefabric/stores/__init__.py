"""Databases that keep etcd's key-value history; one module per database, one small interface."""

from __future__ import annotations

import re
from collections.abc import Callable

from kubefabric.stores._base import (
    LIVE,
    Attribute,
    Change,
    HistoryUnavailable,
    KeyValue,
    Lookup,
    PartialWriteFailure,
    RangeRows,
    Selection,
    Store,
    StoredState,
    StoreUnavailable,
    WriteBatch,
)
from kubefabric.stores._etcd import EtcdOptions, EtcdStore
from kubefabric.stores._ownership import OwnershipLock, OwnershipRefused, announce_listen_address
from kubefabric.stores._selection import BLOCKING, COLLECTING, OPAQUE, OWNER, UID, attributes
from kubefabric.stores._sqlite import SqliteStore


class EndpointError(ValueError):
    """An --endpoint the project cannot use."""


def open_store(endpoint: str, etcd_options: EtcdOptions | None = None) -> Store:
    """The store an endpoint URL names (not yet opened)."""
    scheme = endpoint.partition("://")[0]
    store_class: Callable[[str], Store]
    # The network stores' drivers are imported only when used: they slow start-up down.
    if scheme == "sqlite":
        store_class = SqliteStore
    elif scheme in ("postgres", "postgresql"):
        from kubefabric.stores._postgres import PostgresStore as store_class
    elif scheme == "mysql":
        from kubefabric.stores._mysql import MysqlStore as store_class
    elif scheme in ("http", "https"):

        def store_class(endpoint: str) -> Store:
            return EtcdStore(endpoint, etcd_options)
    else:
        raise EndpointError(
            f"unsupported endpoint scheme {scheme!r} in {redact(endpoint)!r}; "
            "supported: sqlite://, postgres://, mysql://, http:// and https:// (etcd)"
        )
    try:
        return store_class(endpoint)
    except ValueError as error:
        raise EndpointError(str(error)) from None


def redact(endpoint: str) -> str:
    """The endpoint with any password replaced, for logs and messages."""
    scheme, sep, rest = endpoint.partition("://")
    rest = re.sub(r"([?&]password=)[^&]*", r"\1***", rest)
    credentials, at, host = rest.rpartition("@")
    if not at or ":" not in credentials:
        return f"{scheme}{sep}{rest}"
    user = credentials.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"


__all__ = [
    "BLOCKING",
    "COLLECTING",
    "LIVE",
    "OPAQUE",
    "OWNER",
    "UID",
    "Attribute",
    "Change",
    "EndpointError",
    "EtcdOptions",
    "EtcdStore",
    "HistoryUnavailable",
    "KeyValue",
    "Lookup",
    "OwnershipLock",
    "OwnershipRefused",
    "PartialWriteFailure",
    "RangeRows",
    "Selection",
    "SqliteStore",
    "Store",
    "StoreUnavailable",
    "StoredState",
    "WriteBatch",
    "announce_listen_address",
    "attributes",
    "open_store",
    "redact",
]
