"""Server TLS and mutual TLS from PEM files named in settings."""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc

from millibatch.settings import Settings


def _files(settings: Settings) -> tuple[Path, Path, Path | None] | None:
    """(certificate, key, client CA or None) when TLS is configured, None for plaintext; refuses half a setup."""
    cert, key, client_ca = settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file
    if cert is None and key is None:
        if client_ca is not None:
            raise ValueError("tls_client_ca_file needs tls_cert_file and tls_key_file too")
        return None
    if cert is None or key is None:
        raise ValueError("TLS needs both tls_cert_file and tls_key_file")
    return cert, key, client_ca


def server_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The same TLS (and mutual TLS) as `server_credentials`, for the HTTP door; None for plaintext."""
    files = _files(settings)
    if files is None:
        return None
    cert, key, client_ca = files
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.load_verify_locations(cafile=client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials when a certificate and key are configured; None for plaintext.

    With `tls_client_ca_file`, clients must present a certificate signed by that CA (mutual TLS)."""
    files = _files(settings)
    if files is None:
        return None
    cert, key, client_ca = files
    root = client_ca.read_bytes() if client_ca is not None else None
    return grpc.ssl_server_credentials(
        [(key.read_bytes(), cert.read_bytes())], root_certificates=root, require_client_auth=root is not None
    )
