"""Conformance-suite gating: some assertions only make sense on kubefabric (etcd is the oracle)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "kubefabric_only(reason): skip on the real etcd, before its server is started"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        marker = item.get_closest_marker("kubefabric_only")
        callspec = getattr(item, "callspec", None)
        if marker is not None and callspec is not None and callspec.params.get("server") == "etcd":
            item.add_marker(pytest.mark.skip(reason=f"not asserted on etcd: {marker.args[0]}"))
