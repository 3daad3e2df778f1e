"""The postgres:// TLS options, end to end, against a throwaway PostgreSQL cluster that only speaks TLS.

The shared local server has TLS off, so this module starts its own cluster (initdb, a private port
and socket directory) with a certificate authority made for it by openssl: the server certificate
names 127.0.0.1, and the role `certuser` logs in with a client certificate only.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kubefabric.stores._postgres import PostgresStore
from tests._databases import POSTGRES_CLUSTERS, POSTGRES_HOST, POSTGRES_PORT, accepts_connections
from tests._servers import free_port

PASSWORD = "not-a-real-secret"


@dataclass(frozen=True)
class TlsCluster:
    port: int
    certificates: Path

    def endpoint(self, user: str, database: str, **options: str) -> str:
        query = "&".join(f"{name}={value}" for name, value in options.items())
        return f"postgres://{user}:{PASSWORD}@127.0.0.1:{self.port}/{database}?{query}"

    def file(self, name: str) -> str:
        return str(self.certificates / name)


def openssl(directory: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)


def make_certificates(directory: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 signed by it, a client one for certuser, and a stranger CA."""
    for ca in ("ca", "other-ca"):
        openssl(directory, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={ca}",
                "-keyout", f"{ca}.key", "-out", f"{ca}.crt")  # fmt: skip
    for name, subject, extension in (
        ("server", "/CN=127.0.0.1", "subjectAltName=IP:127.0.0.1"),
        ("client", "/CN=certuser", "keyUsage=digitalSignature"),
    ):
        openssl(directory, "req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", f"{name}.key",
                "-out", f"{name}.csr")  # fmt: skip
        (directory / f"{name}.ext").write_text(extension + "\n")
        openssl(directory, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt")  # fmt: skip


def as_postgres(*command: str) -> None:
    done = subprocess.run(["runuser", "-u", "postgres", "--", *command], capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}"


@pytest.fixture(scope="module")
def cluster() -> Iterator[TlsCluster]:
    version = sorted(Path(POSTGRES_CLUSTERS).iterdir())[-1].name
    binaries = Path(f"/usr/lib/postgresql/{version}/bin")
    # Not under pytest's temporary directory: the postgres user could not reach into it.
    with tempfile.TemporaryDirectory(prefix="kubefabric-postgres-tls-") as directory:
        root = Path(directory)
        root.chmod(0o755)
        yield from start_cluster(root, binaries)


def start_cluster(root: Path, binaries: Path) -> Iterator[TlsCluster]:
    certificates, data = root / "certificates", root / "data"
    certificates.mkdir()
    make_certificates(certificates)
    shutil.chown(certificates / "server.key", "postgres")
    (certificates / "server.key").chmod(0o600)
    shutil.chown(root, "postgres")
    as_postgres(str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust")
    port = free_port()
    with (data / "postgresql.conf").open("a") as conf:
        conf.write(
            f"port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{root}'\n"
            f"ssl = on\nssl_cert_file = '{certificates / 'server.crt'}'\n"
            f"ssl_key_file = '{certificates / 'server.key'}'\nssl_ca_file = '{certificates / 'ca.crt'}'\n"
        )
    (data / "pg_hba.conf").write_text(
        "local all all trust\n"
        "hostssl all certuser 127.0.0.1/32 cert\n"
        "hostssl all all 127.0.0.1/32 trust\n"
        "host all all 127.0.0.1/32 reject\n"
    )
    as_postgres(str(binaries / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "start")
    try:
        as_postgres(str(binaries / "createuser"), "-h", str(root), "-p", str(port), "--createdb", "certuser")
        yield TlsCluster(port, certificates)
    finally:
        as_postgres(str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")


def opens(endpoint: str) -> None:
    async def open_and_close() -> None:
        store = PostgresStore(endpoint)
        await store.open()
        assert await store.revision() == 1
        await store.close()

    asyncio.run(open_and_close())


def test_the_shared_server_is_untouched() -> None:
    assert accepts_connections(POSTGRES_HOST, POSTGRES_PORT)


@pytest.mark.parametrize("database", ["required", "verified_ca", "verified_name"])
def test_sslmodes_that_encrypt_connect(cluster: TlsCluster, database: str) -> None:
    options = {
        "required": {"sslmode": "require"},
        "verified_ca": {"sslmode": "verify-ca", "sslrootcert": cluster.file("ca.crt")},
        "verified_name": {"sslmode": "verify-full", "sslrootcert": cluster.file("ca.crt")},
    }[database]
    opens(cluster.endpoint("postgres", database, **options))


def test_a_client_certificate_logs_in(cluster: TlsCluster) -> None:
    opens(
        cluster.endpoint(
            "certuser",
            "by_certificate",
            sslmode="verify-full",
            sslrootcert=cluster.file("ca.crt"),
            sslcert=cluster.file("client.crt"),
            sslkey=cluster.file("client.key"),
        )
    )


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"sslmode": "disable"}, "no encryption"),
        ({"sslmode": "verify-ca", "sslrootcert": "other-ca.crt"}, "certificate verify failed"),
    ],
    ids=["unencrypted", "server signed by an unknown CA"],
)
def test_connections_the_server_or_the_client_must_refuse_fail_without_the_password(
    cluster: TlsCluster, options: dict[str, str], reason: str
) -> None:
    options = {name: cluster.file(value) if name == "sslrootcert" else value for name, value in options.items()}
    with pytest.raises(Exception) as refused:
        opens(cluster.endpoint("postgres", "refused", **options))
    assert reason in str(refused.value)
    assert PASSWORD not in str(refused.value)
