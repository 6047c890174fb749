"""
TLS: the server's connection creator (default certificate, SNI, client
certificates, hot swap) and what a session learns from a handshake.
"""

from __future__ import annotations

import weakref
from typing import Any, Mapping

from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

from ._session import TLSInfo

__all__ = ["ServerTLS", "load_pem", "tls_info"]


def load_pem(cert_path: str, key_path: str) -> ssl.CertificateOptions:
    """
    Read a PEM certificate chain and its private key.

    @param cert_path: the certificate, then any intermediates, in PEM.
    @param key_path: the private key in PEM.
    @raise ValueError: if a file cannot be read or does not hold what it
        should, naming the file.
    """
    try:
        with open(cert_path, "rb") as f:
            chain_pem = f.read()
    except OSError as e:
        raise ValueError(f"tls_cert: cannot read {cert_path!r}: {e.strerror}") from None
    try:
        with open(key_path, "rb") as f:
            key_pem = f.read()
    except OSError as e:
        raise ValueError(f"tls_key: cannot read {key_path!r}: {e.strerror}") from None
    marker = b"-----END CERTIFICATE-----"
    blocks = [block + marker for block in chain_pem.split(marker) if b"-----BEGIN" in block]
    try:
        certs = [crypto.load_certificate(crypto.FILETYPE_PEM, block) for block in blocks]
    except crypto.Error:
        certs = []
    if not certs:
        raise ValueError(f"tls_cert: {cert_path!r} holds no PEM certificate")
    try:
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, key_pem)
    except crypto.Error:
        raise ValueError(f"tls_key: {key_path!r} holds no PEM private key") from None
    try:
        options = ssl.CertificateOptions(
            privateKey=key, certificate=certs[0], extraCertChain=certs[1:]
        )
        options.getContext()  # checks that the key matches the certificate
    except (SSL.Error, ValueError) as e:
        raise ValueError(
            f"tls_cert/tls_key: {cert_path!r} and {key_path!r} do not go together: {e}"
        ) from None
    return options


def _check_factory(name: str, factory: Any) -> None:
    if not callable(getattr(factory, "getContext", None)):
        raise TypeError(
            f"TLS context for {name} must have getContext() "
            f"(e.g. twisted.internet.ssl.CertificateOptions), not {factory!r}"
        )
    try:
        factory.getContext()
    except SSL.Error as e:
        raise ValueError(f"TLS context for {name} is not usable: {e}") from None


def _accept_any(*args: object) -> bool:
    # With request_cert the server asks for a certificate and hands whatever
    # it gets to on_secure; judging it is the application's business.
    return True


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """
    Makes the server side of each TLS connection: the default certificate,
    another one chosen by the client's SNI name, and (with C{request_cert})
    a request for the client's certificate.

    @ivar default: the context factory (anything with C{getContext()}, such as
        L{ssl.CertificateOptions}) for new connections; L{update} swaps it.
    @ivar sni: server name -> context factory.
    """

    def __init__(self, default: Any, sni: Mapping[str, Any], request_cert: bool) -> None:
        _check_factory("'tls'", default)
        for name, factory in sni.items():
            _check_factory(f"sni name {name!r}", factory)
        self.default = default
        self.sni = {name.lower().rstrip("."): factory for name, factory in sni.items()}
        self.request_cert = request_cert
        self._prepared: weakref.WeakSet[SSL.Context] = weakref.WeakSet()

    def update(self, default: Any) -> None:
        """
        Use another default certificate for new connections.
        """
        _check_factory("update_tls", default)
        self.default = default

    def _context(self, factory: Any) -> SSL.Context:
        context: SSL.Context = factory.getContext()
        if context not in self._prepared:
            self._prepared.add(context)
            if self.request_cert:
                context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_CLIENT_ONCE, _accept_any)
            if self.sni:
                context.set_tlsext_servername_callback(self._servername)
        return context

    def _servername(self, connection: SSL.Connection) -> None:
        name = connection.get_servername()
        if not name:
            return
        factory = self.sni.get(name.decode("ascii", "replace").lower().rstrip("."))
        if factory is not None:
            connection.set_context(self._context(factory))

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        """
        A new server-side OpenSSL connection.
        """
        return SSL.Connection(self._context(self.default), None)


def tls_connection(transport: Any) -> SSL.Connection | None:
    """
    The OpenSSL connection under a transport, or L{None} if it has none.
    """
    for candidate in (transport, getattr(transport, "protocol", None)):
        get = getattr(candidate, "getHandle", None)
        if get is not None:
            handle = get()
            if isinstance(handle, SSL.Connection):
                return handle
    return None


def tls_info(transport: Any) -> TLSInfo | None:
    """
    What a finished handshake negotiated.
    """
    connection = tls_connection(transport)
    if connection is None:
        return None
    servername = connection.get_servername()
    peer = connection.get_peer_certificate()
    return TLSInfo(
        version=connection.get_protocol_version_name(),
        cipher=connection.get_cipher_name(),
        servername=servername.decode("ascii", "replace") if servername else None,
        peer_certificate=peer,
    )
