"""Databases that keep etcd's key-value history; one module per database, one small interface."""

from __future__ import annotations

import re

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
    if scheme in ("postgres", "postgresql"):
        return _open_postgres(endpoint)
    if scheme == "mysql":
        return _open_mysql(endpoint)
    raise EndpointError(
        f"unsupported endpoint scheme {scheme!r} in {redact(endpoint)!r}; supported: sqlite://, postgres://, mysql://"
    )


def _open_postgres(endpoint: str) -> Store:
    try:
        # asyncpg is an optional dependency, so the module is imported only when it is needed.
        from kubefabric.stores._postgres import PostgresStore
    except ImportError:
        raise EndpointError("postgres:// endpoints need asyncpg: pip install 'kubefabric[postgres]'") from None
    try:
        return PostgresStore(endpoint)
    except ValueError as error:
        raise EndpointError(str(error)) from None


def _open_mysql(endpoint: str) -> Store:
    try:
        # asyncmy is an optional dependency, so the module is imported only when it is needed.
        from kubefabric.stores._mysql import MysqlStore
    except ImportError:
        raise EndpointError("mysql:// endpoints need asyncmy: pip install 'kubefabric[mysql]'") from None
    try:
        return MysqlStore(endpoint)
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
