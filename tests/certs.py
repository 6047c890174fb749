"""
Test certificates, generated when the tests run: a private certificate authority, server
certificates for several names (with subjectAltName), and a client certificate.

Nothing here is committed but this code: every key is made fresh, with C{cryptography}
(which pyOpenSSL already depends on), and written to a temporary directory that is removed
when the process exits.  Keys are ECDSA P-256, so that making them takes milliseconds.

Typical use::

    pki = test_pki()
    server = SMTPServer(tls_cert=pki.server.cert_path, tls_key=pki.server.key_path)
    context = pki.client_context("mx.example.test")   # an ssl.SSLContext trusting the CA
"""

from __future__ import annotations

import atexit
import datetime
import ipaddress
import shutil
import ssl
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import ssl as tssl

__all__ = [
    "ALPHA_NAME",
    "BETA_NAME",
    "CLIENT_NAME",
    "DEFAULT_NAME",
    "Issued",
    "TestPKI",
    "test_pki",
]

#: The name on the default server certificate (the test servers' C{name} option).
DEFAULT_NAME = "mx.example.test"
#: Names with their own certificate, for SNI tests.
ALPHA_NAME = "alpha.example.test"
BETA_NAME = "beta.example.test"
#: The subject of the client certificate.
CLIENT_NAME = "client.example.test"


@dataclass(frozen=True)
class Issued:
    """
    A certificate and its private key, in memory and on disk.

    @ivar certificate: the parsed certificate.
    @ivar cert_pem: the certificate in PEM (followed by nothing: the CA is the trust anchor).
    @ivar key_pem: the private key in PEM (PKCS#8, unencrypted).
    @ivar cert_path: the file holding C{cert_pem}.
    @ivar key_path: the file holding C{key_pem}.
    """

    certificate: x509.Certificate
    cert_pem: bytes
    key_pem: bytes
    cert_path: str
    key_path: str

    @property
    def fingerprint(self) -> bytes:
        """
        The SHA-256 fingerprint of the certificate (DER).
        """
        return self.certificate.fingerprint(hashes.SHA256())

    def options(self) -> tssl.CertificateOptions:
        """
        Twisted server TLS options (a context factory) for this certificate.
        """
        options: tssl.CertificateOptions = tssl.PrivateCertificate.loadPEM(
            self.cert_pem + self.key_pem
        ).options()
        return options


class TestPKI:
    """
    A certificate authority and the certificates it issued, under one directory.

    @ivar directory: where the PEM files are.
    @ivar ca: the authority's own certificate and key.
    @ivar server: the default server certificate, for L{DEFAULT_NAME} (and C{localhost},
        C{127.0.0.1}).
    @ivar server2: a second certificate for the same names, with another key (a renewal):
        for hot-swap tests.
    @ivar alpha: the certificate for L{ALPHA_NAME}.
    @ivar beta: the certificate for L{BETA_NAME}.
    @ivar client: a client certificate for L{CLIENT_NAME}.
    """

    __test__ = False  # not a test case, whatever its name

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._serial = 1000
        self._now = datetime.datetime.now(datetime.timezone.utc)
        self.ca = self._make_ca()
        self.server = self._issue("server", [DEFAULT_NAME, "localhost"], ips=["127.0.0.1"])
        self.server2 = self._issue("server2", [DEFAULT_NAME, "localhost"], ips=["127.0.0.1"])
        self.alpha = self._issue("alpha", [ALPHA_NAME])
        self.beta = self._issue("beta", [BETA_NAME])
        self.client = self._issue("client", [CLIENT_NAME], client=True)

    @property
    def ca_path(self) -> str:
        """
        The file of the authority's certificate, the trust anchor for clients.
        """
        return self.ca.cert_path

    def _write(self, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Issued:
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        cert_path = Path(self.directory, f"{stem}.crt")
        key_path = Path(self.directory, f"{stem}.key")
        cert_path.write_bytes(cert_pem)
        key_path.touch(mode=0o600)
        key_path.write_bytes(key_pem)
        return Issued(cert, cert_pem, key_pem, str(cert_path), str(key_path))

    def _builder(self, subject: str, public: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
        self._serial += 1
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .public_key(public)
            .serial_number(self._serial)
            .not_valid_before(self._now - datetime.timedelta(hours=1))
            .not_valid_after(self._now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        )

    def _make_ca(self) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        name = "smtphooks test CA"
        cert = (
            self._builder(name, key.public_key())
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        self._ca_key = key
        return self._write("ca", cert, key)

    def _issue(
        self, stem: str, names: list[str], *, ips: Sequence[str] = (), client: bool = False
    ) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        alt: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
        alt += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        cert = (
            self._builder(names[0], key.public_key())
            .issuer_name(self.ca.certificate.subject)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._ca_key.public_key()),
                critical=False,
            )
            .sign(self._ca_key, hashes.SHA256())
        )
        return self._write(stem, cert, key)

    # -- client side ---------------------------------------------------------------------

    def client_context(self, *, client_cert: bool = False) -> ssl.SSLContext:
        """
        A stdlib client context that trusts only the test CA and checks host names.

        @param client_cert: present L{client} when the server asks for a certificate.
        """
        context = ssl.create_default_context(cafile=self.ca_path)
        if client_cert:
            context.load_cert_chain(self.client.cert_path, self.client.key_path)
        return context

    def twisted_trust(self) -> tssl.Certificate:
        """
        The test CA as a Twisted L{tssl.Certificate}, for C{optionsForClientTLS}.
        """
        return tssl.Certificate.loadPEM(self.ca.cert_pem)


_pki: TestPKI | None = None


def test_pki() -> TestPKI:
    """
    The certificates of this test run, made on first use (shared by every test: they are
    only read).
    """
    global _pki
    if _pki is None:
        directory = tempfile.mkdtemp(prefix="smtphooks-pki-")
        atexit.register(shutil.rmtree, directory, True)
        _pki = TestPKI(directory)
    return _pki


test_pki.__test__ = False  # type: ignore[attr-defined]
