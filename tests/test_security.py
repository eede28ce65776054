"""TLS, mutual TLS between the parts, and bearer tokens, with real certificates."""

from __future__ import annotations

import datetime
import ipaddress
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chronoscore import (
    Client,
    FailedPrecondition,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from chronoscore._cluster import LocalCluster
from chronoscore._ring import SHARD_HEADER
from chronoscore._security import Tokens, token_digest
from chronoscore.v1 import shard_pb2 as spb
from chronoscore.v1 import shard_pb2_grpc as spb_grpc

READER, WRITER = "reader-token-1f6c", "writer-token-93ab"


@dataclass
class Issued:
    cert: Path
    key: Path


class Authority:
    """A certificate authority made for the test."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory = directory
        self.name = name
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            self._builder(subject, self.key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(self.key, hashes.SHA256())
        )
        self.path = self._write(f"{name}-ca.crt", self.cert.public_bytes(_PEM))

    def issue(self, name: str) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        names = [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]
        cert = (
            self._builder(subject, key.public_key())
            .add_extension(x509.SubjectAlternativeName(names), False)
            .sign(self.key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            _PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return Issued(
            self._write(f"{name}.crt", cert.public_bytes(_PEM)),
            self._write(f"{name}.key", key_pem),
        )

    def _builder(
        self, subject: x509.Name, public_key: object
    ) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.UTC)
        issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.name)])
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )

    def _write(self, name: str, data: bytes) -> Path:
        path = self.directory / name
        path.write_bytes(data)
        return path


_PEM = serialization.Encoding.PEM


@dataclass
class Secured:
    cluster: LocalCluster
    public: Authority
    internal: Authority
    rogue: Authority
    coordinator: Issued


@pytest.fixture
def secured(dsn: str, tmp_path: Path) -> Iterator[Secured]:
    internal = Authority(tmp_path, "cluster")
    public = Authority(tmp_path, "public")
    rogue = Authority(tmp_path, "rogue")
    shard, coordinator = internal.issue("shard"), internal.issue("coordinator")
    api = public.issue("api")
    tokens = tmp_path / "tokens.json"
    tokens.write_text(
        json.dumps(
            {
                "tokens": [
                    {
                        "name": "dashboards",
                        "sha256": token_digest(READER),
                        "scopes": ["read"],
                    },
                    {
                        "name": "game-server",
                        "sha256": token_digest(WRITER),
                        "scopes": ["read", "write"],
                    },
                ]
            }
        )
    )
    cluster = LocalCluster(
        dsn,
        3,
        workdir=tmp_path / "run",
        log_dir=tmp_path / "logs",
        shard_args=["--tls-cert", str(shard.cert), "--tls-key", str(shard.key)]
        + ["--tls-client-ca", str(internal.path)],
        coordinator_args=["--tls-cert", str(api.cert), "--tls-key", str(api.key)]
        + ["--shard-tls-cert", str(coordinator.cert)]
        + ["--shard-tls-key", str(coordinator.key)]
        + ["--shard-tls-ca", str(internal.path), "--tokens", str(tokens)],
    )
    with cluster:
        yield Secured(cluster, public, internal, rogue, coordinator)


def test_tokens_and_scopes(secured: Secured) -> None:
    target, ca = secured.cluster.target, secured.public.path
    with Client(target, token=WRITER, tls_ca=ca) as writer:
        writer.create_leaderboard("secure")
        assert writer.submit_score("secure", "u", 5).score == 5
    with Client(target, token=READER, tls_ca=ca) as reader:
        assert [e.user_id for e in reader.top("secure").entries] == ["u"]
        with pytest.raises(PermissionDenied, match="write"):
            reader.submit_score("secure", "u", 9)
        with pytest.raises(PermissionDenied):
            reader.delete_leaderboard("secure")
    for token in (None, "not-a-token"):
        with Client(target, token=token, tls_ca=ca) as stranger:
            with pytest.raises(Unauthenticated, match="bearer token"):
                stranger.top("secure")
            with pytest.raises(Unauthenticated):
                next(stranger.watch_top("secure"))
    with Client(target, token=WRITER, tls_ca=ca) as writer:
        assert writer.rank("secure", "u").entry.score == 5


def test_public_api_needs_tls_and_trust(secured: Secured) -> None:
    target = secured.cluster.target
    with Client(target, token=WRITER, timeout=3) as plaintext:
        with pytest.raises(Unavailable):
            plaintext.list_leaderboards()
    with Client(target, token=WRITER, tls_ca=secured.rogue.path, timeout=3) as fooled:
        with pytest.raises(Unavailable):
            fooled.list_leaderboards()

    # Health checks need no token, so probes work.
    credentials = grpc.ssl_channel_credentials(secured.public.path.read_bytes())
    with grpc.secure_channel(target, credentials) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def _shard_call(secured: Secured, issued: Issued | None) -> grpc.RpcError:
    cluster = secured.cluster
    name = cluster.names[0]
    credentials = grpc.ssl_channel_credentials(
        root_certificates=secured.internal.path.read_bytes(),
        private_key=None if issued is None else issued.key.read_bytes(),
        certificate_chain=None if issued is None else issued.cert.read_bytes(),
    )
    headers = ((SHARD_HEADER, name),)
    with grpc.secure_channel(
        f"127.0.0.1:{cluster.shard_ports[name]}", credentials
    ) as ch:
        stub = spb_grpc.ShardServiceStub(ch)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Prune(spb.PruneRequest(board_id=0), metadata=headers, timeout=5)
    return caught.value


def test_shards_take_only_the_cluster_credential(secured: Secured) -> None:
    # No client certificate, or one from another CA: the handshake fails.
    assert _shard_call(secured, None).code() == grpc.StatusCode.UNAVAILABLE
    rogue = secured.rogue.issue("intruder")
    assert _shard_call(secured, rogue).code() == grpc.StatusCode.UNAVAILABLE

    # The cluster credential gets through to the service, which then
    # judges the request itself.
    allowed = _shard_call(secured, secured.coordinator)
    assert allowed.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("entry", "complaint"),
    [
        ({"sha256": READER, "scopes": ["read"]}, "not a SHA-256 hex digest"),
        ({"sha256": token_digest(READER), "scopes": "read"}, "non-empty list"),
        ({"sha256": token_digest(READER), "scopes": []}, "non-empty list"),
        ({"sha256": token_digest(READER), "scopes": ["Read"]}, "are not 'read'"),
        ({"scopes": ["read"]}, "sha256"),
    ],
)
def test_tokens_that_could_never_work_are_refused(
    tmp_path: Path, entry: dict[str, object], complaint: str
) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"tokens": [entry]}))
    with pytest.raises(FailedPrecondition, match=complaint):
        Tokens.load(path)
