"""TLS for the ext_proc port: on by default with a generated self-signed certificate, as the reference EPP.

A real deployment passes a certificate (``--cert-path DIR`` with ``tls.crt``/``tls.key``, the layout of a
Kubernetes TLS Secret, or ``--cert``/``--key``) and may require client certificates (``--client-ca``) so
only the gateway can talk to the picker. The key material itself is ``kvgate.httpfront.tls``'s.
"""

from __future__ import annotations

import grpc

from kvgate.httpfront.tls import KeyPair, https_context, load, self_signed

__all__ = ["KeyPair", "https_context", "load", "self_signed", "server_credentials"]


def server_credentials(pair: KeyPair, client_ca: bytes | None = None) -> grpc.ServerCredentials:
    """Server TLS; with ``client_ca`` every client must present a certificate that CA signed (mTLS)."""
    return grpc.ssl_server_credentials(
        [(pair.key_pem, pair.cert_pem)],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )
