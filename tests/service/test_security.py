"""TLS, mutual TLS and API keys on a real server; health stays open, keys are never logged."""

from __future__ import annotations

import datetime
import logging
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from millibatch.v1 import inference_pb2 as pb
from millibatch.v1 import inference_pb2_grpc
from tests.helpers import running_server

KEY = "s3cret-key-never-logged"


def _issue(name: str, issuer_key: ec.EllipticCurvePrivateKey | None, issuer: x509.Name | None,
           ca: bool) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer or subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
    return key, builder.sign(issuer_key or key, hashes.SHA256())


def _pem(key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> tuple[bytes, bytes]:
    return (key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()), cert.public_bytes(serialization.Encoding.PEM))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes | Path]:
    """A CA, a server certificate for localhost and a client certificate, as PEM files."""
    root = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert = _issue("millibatch test CA", None, None, ca=True)
    files: dict[str, bytes | Path] = {}
    for name in ("server", "client"):
        key, cert = _issue(name, ca_key, ca_cert.subject, ca=False)
        key_pem, cert_pem = _pem(key, cert)
        (root / f"{name}.key").write_bytes(key_pem)
        (root / f"{name}.crt").write_bytes(cert_pem)
        files[f"{name}_key"], files[f"{name}_cert"] = key_pem, cert_pem
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    (root / "ca.crt").write_bytes(ca_pem)
    files["ca"] = ca_pem
    files["dir"] = root
    return files


def _secure(port: int, ca: bytes, key: bytes | None = None, cert: bytes | None = None) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials,
                                   options=[("grpc.ssl_target_name_override", "localhost")])


async def _code(channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...] = ()) -> grpc.StatusCode:
    try:
        await inference_pb2_grpc.InferenceStub(channel).Embed(pb.EmbedRequest(inputs=["hi"]), timeout=5,
                                                              metadata=metadata)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_tls_serves_tls_only(tiny_embed_dir: Path, pki: dict[str, bytes | Path]) -> None:
    folder = pki["dir"]
    assert isinstance(folder, Path) and isinstance(pki["ca"], bytes)
    async with running_server([tiny_embed_dir], tls_cert_file=folder / "server.crt",
                              tls_key_file=folder / "server.key") as server:
        async with _secure(server.port, pki["ca"]) as channel:
            assert await _code(channel) == grpc.StatusCode.OK
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as plain:
            assert await _code(plain) == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_requires_a_client_certificate(tiny_embed_dir: Path, pki: dict[str, bytes | Path]) -> None:
    folder, ca, key, cert = pki["dir"], pki["ca"], pki["client_key"], pki["client_cert"]
    assert isinstance(folder, Path) and isinstance(ca, bytes) and isinstance(key, bytes) and isinstance(cert, bytes)
    async with running_server([tiny_embed_dir], tls_cert_file=folder / "server.crt", tls_key_file=folder / "server.key",
                              tls_client_ca_file=folder / "ca.crt") as server:
        async with _secure(server.port, ca, key, cert) as channel:
            assert await _code(channel) == grpc.StatusCode.OK
        async with _secure(server.port, ca) as anonymous:
            assert await _code(anonymous) == grpc.StatusCode.UNAVAILABLE


async def test_api_keys(tiny_embed_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with running_server([tiny_embed_dir], api_keys=[KEY, "second-key"]) as server:  # noqa: SIM117
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            assert await _code(channel) == grpc.StatusCode.UNAUTHENTICATED
            assert await _code(channel, (("authorization", "Bearer wrong"),)) == grpc.StatusCode.UNAUTHENTICATED
            assert await _code(channel, (("authorization", KEY),)) == grpc.StatusCode.UNAUTHENTICATED
            assert await _code(channel, (("authorization", f"Bearer {KEY}"),)) == grpc.StatusCode.OK
            assert await _code(channel, (("authorization", "bearer second-key"),)) == grpc.StatusCode.OK
            health = health_pb2_grpc.HealthStub(channel)
            answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)  # exempt: no key
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
    assert KEY not in caplog.text and "second-key" not in caplog.text


async def test_reflection_can_be_turned_off(tiny_embed_dir: Path) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    async with running_server([tiny_embed_dir], reflection=False) as server:  # noqa: SIM117
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            call = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                             timeout=5)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for _ in call:
                    pass
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
