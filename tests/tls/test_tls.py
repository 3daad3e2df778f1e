"""TLS on the etcd API listener, as kube-apiserver uses it with --etcd-cafile, --etcd-certfile and --etcd-keyfile.

Certificates are made at test time: a CA, a server certificate for 127.0.0.1 and localhost, a client
certificate from the same CA, and one from a CA the server does not trust.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kubefabric.etcdpb import rpc_pb2
from tests._client import Etcd
from tests._servers import (
    REPO_ROOT,
    EtcdTls,
    ServerProcess,
    free_port,
    kubefabric_command,
    start_etcd,
    start_kubefabric,
)

STARTUP_TIMEOUT = 30.0
ETCDCTL_TIMEOUT = 20.0


# -- certificates ----------------------------------------------------------------------------------


class CertificateAuthority:
    """A CA whose certificates are valid for this test run."""

    def __init__(self, common_name: str) -> None:
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.certificate = self._sign(self.name, self.key, x509.BasicConstraints(ca=True, path_length=None))

    def issue(
        self, common_name: str, usage: x509.ObjectIdentifier, *addresses: x509.GeneralName
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        extensions: list[x509.ExtensionType] = [x509.ExtendedKeyUsage([usage])]
        if addresses:
            extensions.append(x509.SubjectAlternativeName(addresses))
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        return self._sign(subject, key, *extensions), key

    def _sign(
        self, subject: x509.Name, key: ec.EllipticCurvePrivateKey, *extensions: x509.ExtensionType
    ) -> x509.Certificate:
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
        )
        for extension in extensions:
            builder = builder.add_extension(extension, critical=isinstance(extension, x509.BasicConstraints))
        return builder.sign(self.key, hashes.SHA256())


@dataclass(frozen=True)
class Pem:
    """A certificate and its private key in PEM files."""

    cert: Path
    key: Path

    @classmethod
    def write(cls, directory: Path, name: str, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Pem:
        pem = cls(directory / f"{name}.pem", directory / f"{name}-key.pem")
        pem.cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        pem.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return pem


@dataclass(frozen=True)
class Pki:
    ca: Path
    server: Pem
    client: Pem
    stranger: Pem  # a client certificate from a CA the server does not trust


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca, other_ca = CertificateAuthority("kubefabric test CA"), CertificateAuthority("another CA")
    loopback = (x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost"))
    (directory / "ca.pem").write_bytes(ca.certificate.public_bytes(serialization.Encoding.PEM))
    return Pki(
        ca=directory / "ca.pem",
        server=Pem.write(directory, "server", *ca.issue("kubefabric", ExtendedKeyUsageOID.SERVER_AUTH, *loopback)),
        client=Pem.write(directory, "client", *ca.issue("kube-apiserver", ExtendedKeyUsageOID.CLIENT_AUTH)),
        stranger=Pem.write(directory, "stranger", *other_ca.issue("stranger", ExtendedKeyUsageOID.CLIENT_AUTH)),
    )


def tls_credentials(pki: Pki, client: Pem | None) -> grpc.ChannelCredentials:
    """Trusting the test CA, presenting the client certificate if one is given."""
    if client is None:
        return grpc.ssl_channel_credentials(pki.ca.read_bytes())
    return grpc.ssl_channel_credentials(pki.ca.read_bytes(), client.key.read_bytes(), client.cert.read_bytes())


# -- servers ---------------------------------------------------------------------------------------


def start_tls_kubefabric(
    workdir: Path, credentials: grpc.ChannelCredentials, *flags: str | Path, env: dict[str, str] | None = None
) -> ServerProcess:
    """kubefabric on SQLite, serving once a Status call over TLS with these credentials succeeds."""
    address = f"127.0.0.1:{free_port()}"
    command = kubefabric_command(address, f"sqlite://{workdir}/state.db", "--metrics-address", "", *map(str, flags))
    return ServerProcess(command, address, workdir / "kubefabric.log", env or {}, credentials).start()


@pytest.fixture(scope="module")
def mutual_tls(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Client certificates required, as etcd with --client-cert-auth and --trusted-ca-file."""
    server = start_tls_kubefabric(
        tmp_path_factory.mktemp("mutual-tls"),
        tls_credentials(pki, pki.client),
        "--cert-file", pki.server.cert,
        "--key-file", pki.server.key,
        "--trusted-ca-file", pki.ca,
    )  # fmt: skip
    yield server
    assert server.stop() == 0


@pytest.fixture(scope="module")
def server_only_tls(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """TLS without client certificates, configured by environment variables only."""
    env = {"KUBEFABRIC_CERT_FILE": str(pki.server.cert), "KUBEFABRIC_KEY_FILE": str(pki.server.key)}
    server = start_tls_kubefabric(tmp_path_factory.mktemp("server-only-tls"), tls_credentials(pki, None), env=env)
    yield server
    assert server.stop() == 0


def refused(address: str, credentials: grpc.ChannelCredentials | None) -> grpc.RpcError:
    """The error of a Status call that must fail; None means a plaintext client."""
    channel = grpc.insecure_channel(address) if credentials is None else grpc.secure_channel(address, credentials)
    with Etcd(channel) as client, pytest.raises(grpc.RpcError) as failure:
        client.status()
    assert isinstance(failure.value, grpc.Call)
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE, failure.value
    return failure.value


# -- serving over TLS ------------------------------------------------------------------------------


def test_a_client_with_the_ca_and_a_client_certificate_can_put_and_range(mutual_tls: ServerProcess, pki: Pki) -> None:
    with Etcd(grpc.secure_channel(mutual_tls.address, tls_credentials(pki, pki.client))) as client:
        revision = client.put(b"/registry/tls", b"secret").header.revision

        [kv] = client.get(b"/registry/tls").kvs
        assert (kv.value, kv.mod_revision) == (b"secret", revision)


def test_the_member_list_and_the_log_name_an_https_url(mutual_tls: ServerProcess, pki: Pki) -> None:
    with Etcd(grpc.secure_channel(mutual_tls.address, tls_credentials(pki, pki.client))) as client:
        [member] = client.cluster.MemberList(rpc_pb2.MemberListRequest(), timeout=10).members

    assert list(member.clientURLs) == [f"https://{mutual_tls.address}"]
    assert f"serving the etcd v3 API on https://{mutual_tls.address}" in mutual_tls.log.read_text()


@pytest.mark.parametrize("server", ["mutual_tls", "server_only_tls"])
def test_a_plaintext_client_is_refused(server: str, request: pytest.FixtureRequest) -> None:
    refused(request.getfixturevalue(server).address, None)


def test_a_client_without_a_certificate_is_refused_when_a_trusted_ca_is_set(
    mutual_tls: ServerProcess, pki: Pki
) -> None:
    refused(mutual_tls.address, tls_credentials(pki, None))


def test_a_client_certificate_from_an_untrusted_ca_is_refused(mutual_tls: ServerProcess, pki: Pki) -> None:
    refused(mutual_tls.address, tls_credentials(pki, pki.stranger))


def test_without_a_trusted_ca_a_client_needs_no_certificate(server_only_tls: ServerProcess, pki: Pki) -> None:
    with Etcd(grpc.secure_channel(server_only_tls.address, tls_credentials(pki, None))) as client:
        revision = client.put(b"/registry/no-client-cert", b"ok").header.revision

        assert client.get(b"/registry/no-client-cert").kvs[0].mod_revision == revision


def test_etcdctl_puts_and_gets_over_mutual_tls(mutual_tls: ServerProcess, pki: Pki) -> None:
    etcdctl = shutil.which("etcdctl")
    if etcdctl is None:
        pytest.fail("etcdctl is needed for this test: apt-get install etcd-client")
    command = [
        etcdctl,
        f"--endpoints=https://{mutual_tls.address}",
        f"--cacert={pki.ca}",
        f"--cert={pki.client.cert}",
        f"--key={pki.client.key}",
        "--command-timeout=10s",
    ]

    def run(*args: str) -> str:
        result = subprocess.run(
            [*command, *args],
            capture_output=True,
            text=True,
            env={**os.environ, "ETCDCTL_API": "3"},
            timeout=ETCDCTL_TIMEOUT,
        )
        assert result.returncode == 0, f"etcdctl {' '.join(args)} failed:\n{result.stderr}"
        return result.stdout

    assert run("put", "/registry/etcdctl", "over TLS") == "OK\n"
    assert run("get", "/registry/etcdctl") == "/registry/etcdctl\nover TLS\n"


# -- refused settings ------------------------------------------------------------------------------


def run_kubefabric(tmp_path: Path, *flags: str | Path) -> subprocess.CompletedProcess[str]:
    """A kubefabric that is expected to exit by itself, soon; no KUBEFABRIC_* settings leak in."""
    clean_env = {name: value for name, value in os.environ.items() if not name.startswith("KUBEFABRIC_")}
    address = f"127.0.0.1:{free_port()}"
    command = kubefabric_command(address, f"sqlite://{tmp_path}/state.db", "--metrics-address", "", *map(str, flags))
    result = subprocess.run(
        command, capture_output=True, text=True, env=clean_env, cwd=REPO_ROOT, timeout=STARTUP_TIMEOUT
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def tls_flags(pki: Pki, *given: str) -> list[str | Path]:
    files = {"--cert-file": pki.server.cert, "--key-file": pki.server.key, "--trusted-ca-file": pki.ca}
    return [part for flag in given for part in (flag, files[flag])]


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (["--cert-file"], "--cert-file and --key-file must be given together"),
        (["--key-file"], "--cert-file and --key-file must be given together"),
        (["--trusted-ca-file"], "--trusted-ca-file needs --cert-file and --key-file"),
    ],
)
def test_an_incomplete_set_of_tls_files_exits_2_saying_what_is_missing(
    pki: Pki, tmp_path: Path, given: list[str], message: str
) -> None:
    result = run_kubefabric(tmp_path, *tls_flags(pki, *given))

    assert result.returncode == 2, result.stderr
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("flag", "env"),
    [
        ("--cert-file", "KUBEFABRIC_CERT_FILE"),
        ("--key-file", "KUBEFABRIC_KEY_FILE"),
        ("--trusted-ca-file", "KUBEFABRIC_TRUSTED_CA_FILE"),
    ],
)
def test_a_missing_tls_file_exits_2_naming_the_flag_and_the_path(pki: Pki, tmp_path: Path, flag: str, env: str) -> None:
    missing = tmp_path / "missing.pem"
    others = [other for other in ("--cert-file", "--key-file", "--trusted-ca-file") if other != flag]

    result = run_kubefabric(tmp_path, *tls_flags(pki, *others), flag, missing)

    assert result.returncode == 2, result.stderr
    assert flag in result.stderr and env in result.stderr and str(missing) in result.stderr, result.stderr


@pytest.mark.parametrize(
    "problem", ["certificate-not-pem", "key-of-another-certificate", "encrypted-key", "ca-not-pem"]
)
def test_an_unusable_tls_file_stops_start_up_naming_it(pki: Pki, tmp_path: Path, problem: str) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not PEM\n")
    encrypted_key = tmp_path / "encrypted-key.pem"
    server_key = serialization.load_pem_private_key(pki.server.key.read_bytes(), password=None)
    encrypted_key.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    flags, named = {
        "certificate-not-pem": (["--cert-file", garbage, "--key-file", pki.server.key], garbage),
        "key-of-another-certificate": (["--cert-file", pki.server.cert, "--key-file", pki.client.key], pki.client.key),
        "encrypted-key": (["--cert-file", pki.server.cert, "--key-file", encrypted_key], encrypted_key),
        "ca-not-pem": ([*tls_flags(pki, "--cert-file", "--key-file"), "--trusted-ca-file", garbage], garbage),
    }[problem]

    result = run_kubefabric(tmp_path, *flags)

    assert result.returncode == 1, result.stderr
    assert str(named) in result.stderr, result.stderr


def test_an_https_etcd_store_is_reached_with_the_etcd_flags(pki: Pki, tmp_path: Path) -> None:
    """kubefabric keeps its data in an etcd that requires TLS and client certificates."""
    (tmp_path / "store").mkdir()
    store = start_etcd(
        tmp_path / "store", EtcdTls(pki.server.cert, pki.server.key, pki.ca, tls_credentials(pki, pki.client))
    )
    try:
        flags = ["--etcd-cafile", pki.ca, "--etcd-certfile", pki.client.cert, "--etcd-keyfile", pki.client.key]
        server = start_kubefabric(tmp_path, f"https://{store.address}", *map(str, flags))
        try:
            with Etcd(server.channel()) as kubefabric:
                written = kubefabric.put(b"/registry/configmaps/default/tls", b"over TLS").header.revision
                [kv] = kubefabric.get(b"/registry/configmaps/default/tls").kvs
                assert (kv.value, kv.mod_revision) == (b"over TLS", written)
        finally:
            server.stop()
        with Etcd(store.channel()) as etcd:
            [stored] = etcd.get(b"/registry/configmaps/default/tls").kvs
            assert stored.value == b"over TLS"  # stored natively in the etcd
    finally:
        store.stop()


def test_an_https_etcd_store_without_the_client_certificate_stops_start_up(pki: Pki, tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()
    store = start_etcd(
        tmp_path / "store", EtcdTls(pki.server.cert, pki.server.key, pki.ca, tls_credentials(pki, pki.client))
    )
    try:
        result = run_kubefabric(
            tmp_path,
            *("--endpoint", f"https://{store.address}", "--etcd-cafile", pki.ca),
            *("--revision-mapper-endpoint", f"sqlite://{tmp_path}/revisions.db"),
        )
        assert result.returncode == 1, result.stderr
        assert f"cannot open store https://{store.address}" in result.stderr, result.stderr
    finally:
        store.stop()
