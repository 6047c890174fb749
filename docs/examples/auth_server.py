"""
A mail submission server (the port 587 kind): clients upgrade with STARTTLS, log in with
AUTH PLAIN or LOGIN against a table of scrypt-hashed passwords, and may only send as the
address they logged in with.  Messages go to a Maildir.

Make a users file, one ``address:hash`` line per user (the same format as
``twistd smtphooks --hash-password``)::

    python docs/examples/auth_server.py --hash >> users.txt      # asks for the password
    # then edit the line to read  alice@example.com:scrypt$16384$8$...

Run it::

    python docs/examples/auth_server.py --cert fullchain.pem --key privkey.pem \\
        --users users.txt --listen tcp:587 --maildir ./Maildir

Send ``SIGHUP`` after renewing the certificate: the new one is loaded for new
connections, without a restart.

The test suite imports this file (tests/test_auth.py) and drives it with smtplib.
"""

from __future__ import annotations

import argparse
import base64
import getpass
import hashlib
import hmac
import os
import signal
import sys
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from smtphooks import Address, AuthRequest, AuthResponse, Session, SMTPError, SMTPServer

log = Logger(namespace="submission")

# -- passwords ---------------------------------------------------------------------------

#: scrypt cost: 2**14 * 8 * 128 bytes = 16 MiB and about 50 ms per check.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p,
        maxmem=128 * n * r * p + 2**20, dklen=length,
    )  # fmt: skip


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """
    Hash a password: C{scrypt$n$r$p$salt$key}, salt and key in base64.
    """
    salt = os.urandom(16)
    key = _scrypt(password, salt, n, r, p, 32)
    return f"scrypt${n}${r}${p}${base64.b64encode(salt).decode()}${base64.b64encode(key).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    """
    Check a password against a hash from L{hash_password}, in constant time.

    @return: L{False} for a wrong password or a malformed hash.
    """
    try:
        scheme, n, r, p, salt, key = encoded.split("$")
        if scheme != "scrypt":
            return False
        n_, r_, p_ = int(n), int(r), int(p)
        salt_bytes, key_bytes = base64.b64decode(salt), base64.b64decode(key)
        if 128 * n_ * r_ * p_ > 2**28:  # a hash from a bad file must not eat the memory
            return False
        candidate = _scrypt(password, salt_bytes, n_, r_, p_, len(key_bytes))
    except ValueError:
        return False
    return hmac.compare_digest(candidate, key_bytes)


def read_users(path: str) -> dict[str, str]:
    """
    Read C{address:hash} lines (blank lines and C{#} comments are skipped).
    """
    users = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            address, sep, encoded = line.rpartition(":")
            if not sep or not address:
                raise ValueError(f"{path}, line {number}: expected address:hash")
            users[address.lower()] = encoded
    return users


# -- certificates ------------------------------------------------------------------------


def load_tls(cert_path: str, key_path: str) -> ssl.CertificateOptions:
    """
    Read a PEM chain (certificate first, then intermediates) and its key.

    @raise ValueError: if the files cannot be read, or the key does not belong to the
        certificate.
    """
    try:
        with open(cert_path, "rb") as f:
            chain = x509.load_pem_x509_certificates(f.read())
        with open(key_path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot load {cert_path} / {key_path}: {e}") from None
    certs = [crypto.X509.from_cryptography(c) for c in chain]
    options = ssl.CertificateOptions(
        privateKey=crypto.PKey.from_cryptography_key(key),  # type: ignore[arg-type]
        certificate=certs[0],
        extraCertChain=certs[1:],
    )
    try:
        options.getContext()  # checks now that the key matches the certificate
    except SSL.Error as e:
        raise ValueError(f"{key_path} does not belong to {cert_path}: {e}") from None
    return options


# -- the hooks ---------------------------------------------------------------------------


class Submission:
    """
    The AUTH and MAIL FROM policy of a submission server.

    @ivar users: lower-cased address -> password hash.
    """

    def __init__(self, users: dict[str, str]) -> None:
        self.users = {address.lower(): encoded for address, encoded in users.items()}
        # Unknown users cost one scrypt too, so timing does not tell which names exist.
        self._dummy = hash_password(os.urandom(8).hex())

    def on_auth(self, auth: AuthRequest, session: Session) -> Deferred[AuthResponse | None]:
        """
        Check PLAIN and LOGIN passwords in a thread (scrypt is slow on purpose; the
        reactor keeps serving other clients meanwhile).
        """
        username = auth.username.lower()
        password = auth.password or ""
        # PLAIN may carry an authorization identity: acting as someone else is refused.
        impersonating = auth.authzid is not None and auth.authzid.lower() != username
        encoded = self.users.get(username, self._dummy)

        def decide(ok: bool) -> AuthResponse | None:
            if ok and username in self.users and not impersonating:
                return AuthResponse(user=username)
            # Log who failed, never what they typed.
            log.info("AUTH failed for {user!r} from {ip}", user=username, ip=session.remote_address)
            return None  # 535 5.7.8

        return deferToThread(verify_password, password, encoded).addCallback(decide)

    def on_mail_from(self, address: Address, session: Session) -> None:
        """
        An authenticated user sends as themselves (the server refuses MAIL before AUTH
        already, so C{session.user} is set here).
        """
        if address.address.lower() != session.user:
            raise SMTPError(
                f"Sender address rejected: not owned by {session.user}", code=553, enhanced="5.7.1"
            )


def make_server(
    users: dict[str, str], cert_path: str, key_path: str, *, on_data: Any = None, **options: Any
) -> SMTPServer:
    """
    A submission server: STARTTLS with the given certificate, AUTH PLAIN/LOGIN required
    (offered only over TLS), senders checked against the login.

    @param users: address -> hash from L{hash_password}.
    @param on_data: where messages go (default: a Maildir in C{./Maildir}).
    @param options: more L{SMTPServer} options (C{name}, C{size}, ...).
    """
    if on_data is None:
        from smtphooks import MaildirDelivery

        on_data = MaildirDelivery("Maildir")
    policy = Submission(users)
    return SMTPServer(
        on_auth=policy.on_auth,
        on_mail_from=policy.on_mail_from,
        on_data=on_data,
        tls=load_tls(cert_path, key_path),
        auth_methods=["PLAIN", "LOGIN"],
        auth_required_message="Authentication required: STARTTLS, then AUTH",
        **options,
    )


def reload_tls(server: SMTPServer, cert_path: str, key_path: str) -> None:
    """
    Load the certificate again (after a renewal) for new connections; a broken new pair
    is logged and the old one kept.
    """
    try:
        server.update_tls(load_tls(cert_path, key_path))
    except ValueError as e:
        log.error("certificate not reloaded: {error}", error=str(e))
    else:
        log.info("certificate reloaded from {path}", path=cert_path)


def main(argv: list[str] | None = None) -> None:
    """
    The command line: serve, or print a hash with C{--hash}.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hash", action="store_true", help="print a hash for a password and exit")
    parser.add_argument("--cert", help="PEM certificate chain")
    parser.add_argument("--key", help="PEM private key")
    parser.add_argument("--users", help="file of address:hash lines")
    parser.add_argument("--listen", default="tcp:587", help="endpoint (default tcp:587)")
    parser.add_argument("--maildir", default="Maildir", help="where messages go")
    args = parser.parse_args(argv)
    if args.hash:
        print(hash_password(getpass.getpass("Password: ")))
        return
    if not (args.cert and args.key and args.users):
        parser.error("--cert, --key and --users are required")

    from twisted.internet import reactor as _reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from smtphooks import MaildirDelivery

    reactor: Any = _reactor
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    server = make_server(
        read_users(args.users), args.cert, args.key, on_data=MaildirDelivery(args.maildir)
    )
    server.listen(args.listen)
    signal.signal(
        signal.SIGHUP,
        lambda *_: reactor.callFromThread(reload_tls, server, args.cert, args.key),
    )
    reactor.run()


if __name__ == "__main__":
    main()
