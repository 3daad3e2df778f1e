# TEMPORARY: etcd against etcd, to prove the normalization. Delete before handing back.
from pathlib import Path

import pytest

from tests._servers import ServerProcess, start_etcd
from tests.differential import test_against_etcd


@pytest.fixture
def second_etcd(tmp_path: Path):
    (tmp_path / "second").mkdir()
    process = start_etcd(tmp_path / "second")
    yield process
    process.stop()


def test_etcd_against_itself(etcd: ServerProcess, second_etcd: ServerProcess) -> None:
    test_against_etcd.test_operation_sequences_match_etcd(etcd, second_etcd)
