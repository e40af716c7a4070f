"""Server TLS and mutual TLS from PEM files named in settings."""

from __future__ import annotations

import grpc

from millibatch.settings import Settings


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials when a certificate and key are configured; None for plaintext.

    With `tls_client_ca_file`, clients must present a certificate signed by that CA (mutual TLS)."""
    cert, key, client_ca = settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file
    if cert is None and key is None:
        if client_ca is not None:
            raise ValueError("tls_client_ca_file needs tls_cert_file and tls_key_file too")
        return None
    if cert is None or key is None:
        raise ValueError("TLS needs both tls_cert_file and tls_key_file")
    root = client_ca.read_bytes() if client_ca is not None else None
    return grpc.ssl_server_credentials(
        [(key.read_bytes(), cert.read_bytes())], root_certificates=root, require_client_auth=root is not None
    )
