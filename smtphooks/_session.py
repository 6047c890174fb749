"""
What hooks are told: L{Session}, L{Envelope}, L{Address}, L{TLSInfo}.

These are plain data; the protocol fills them in and hands them to hooks.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Address", "Envelope", "Session", "TLSInfo", "MailDSN", "RecipientDSN"]


@dataclass(slots=True)
class RecipientDSN:
    """
    RFC 3461 parameters of one RCPT TO.

    @ivar notify: the C{NOTIFY} keywords (C{["SUCCESS", "FAILURE"]},
        C{["NEVER"]}), or L{None} when not given.
    @ivar orcpt: the C{ORCPT} value, xtext-decoded (C{"rfc822;a@example.com"}),
        or L{None}.
    """

    notify: list[str] | None = None
    orcpt: str | None = None


@dataclass(slots=True)
class MailDSN:
    """
    RFC 3461 parameters of MAIL FROM.

    @ivar ret: C{"FULL"}, C{"HDRS"} or L{None}.
    @ivar envid: the C{ENVID} value, xtext-decoded, or L{None}.
    """

    ret: str | None = None
    envid: str | None = None


@dataclass(slots=True, eq=False)
class Address:
    """
    A sender or recipient as the client gave it.

    @ivar address: the address without angle brackets (C{""} for the null
        sender C{<>}).
    @ivar args: the ESMTP parameters: upper-cased keys, C{True} for a bare
        keyword, values xtext-decoded.
    @ivar dsn: for a recipient, its L{RecipientDSN}; otherwise L{None}.
    """

    address: str
    args: dict[str, str | bool] = field(default_factory=dict)
    dsn: RecipientDSN | None = None

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Address):
            return (self.address, self.args, self.dsn) == (other.address, other.args, other.dsn)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.address)


@dataclass(slots=True)
class Envelope:
    """
    The transaction in progress.

    @ivar mail_from: the sender (C{Address("")} for the null sender), or
        L{None} before MAIL FROM.
    @ivar rcpt_to: the accepted recipients, in order.
    @ivar body_type: C{"7BIT"}, C{"8BITMIME"} or C{"BINARYMIME"}.
    @ivar smtputf8: the client asked for SMTPUTF8.
    @ivar require_tls: the client asked for REQUIRETLS (RFC 8689).
    @ivar dsn: the RFC 3461 parameters of MAIL FROM.
    """

    mail_from: Address | None = None
    rcpt_to: list[Address] = field(default_factory=list)
    body_type: str = "7BIT"
    smtputf8: bool = False
    require_tls: bool = False
    dsn: MailDSN = field(default_factory=MailDSN)


@dataclass(slots=True, frozen=True)
class TLSInfo:
    """
    The TLS parameters of a secure session.

    @ivar version: the protocol version (C{"TLSv1.3"}).
    @ivar cipher: the cipher suite name.
    @ivar servername: the SNI name the client asked for, or L{None}.
    @ivar peer_certificate: the client's certificate (an
        C{OpenSSL.crypto.X509}), or L{None}.
    """

    version: str | None = None
    cipher: str | None = None
    servername: str | None = None
    peer_certificate: Any = None


class Session:
    """
    One client connection, as hooks see it.

    Hooks may change C{user} and C{extra}; the other attributes belong to the
    server.

    @ivar id: a unique random identifier of this connection.
    @ivar local_address: the server's address of this connection.
    @ivar local_port: the server's port.
    @ivar remote_address: the client's address (after PROXY or XCLIENT).
    @ivar remote_port: the client's port.
    @ivar client_hostname: the name the client's address resolves to, or
        C{"[address]"} when there is none or the lookup is disabled.
    @ivar opening_command: C{"HELO"}, C{"EHLO"} or C{"LHLO"}, or C{""}
        before the client sent one.
    @ivar host_name_appears_as: the argument of that command.
    @ivar envelope: the transaction in progress.
    @ivar user: whatever C{on_auth} gave, or L{None}.
    @ivar transaction: the 1-based number of the current transaction in
        this connection; it goes up after each message (accepted or not).
    @ivar secure: the connection is protected by TLS.
    @ivar tls: the L{TLSInfo} of a secure connection, or L{None}.
    @ivar xclient: attributes received with XCLIENT.
    @ivar xforward: attributes received with XFORWARD.
    @ivar error: the text of the error that ended the session, or L{None}.
    @ivar extra: the application's own per-session state.
    """

    # A server holds one Session per connection, idle ones included: the
    # id, the envelope, the "[address]" name and the three dicts are only
    # made when first asked for.
    __slots__ = (
        "_id",
        "local_address",
        "local_port",
        "remote_address",
        "remote_port",
        "_client_hostname",
        "opening_command",
        "host_name_appears_as",
        "_envelope",
        "user",
        "transaction",
        "secure",
        "tls",
        "_xclient",
        "_xforward",
        "error",
        "_extra",
    )

    def __init__(
        self,
        id: str | None = None,
        local_address: str = "",
        local_port: int = 0,
        remote_address: str = "",
        remote_port: int = 0,
        client_hostname: str | None = None,
        opening_command: str = "",
        host_name_appears_as: str = "",
        envelope: Envelope | None = None,
        user: Any = None,
        transaction: int = 1,
        secure: bool = False,
        tls: TLSInfo | None = None,
        xclient: dict[str, str] | None = None,
        xforward: dict[str, str] | None = None,
        error: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self._id = id
        self.local_address = local_address
        self.local_port = local_port
        self.remote_address = remote_address
        self.remote_port = remote_port
        self._client_hostname = client_hostname
        self.opening_command = opening_command
        self.host_name_appears_as = host_name_appears_as
        self._envelope = envelope
        self.user = user
        self.transaction = transaction
        self.secure = secure
        self.tls = tls
        self._xclient = xclient
        self._xforward = xforward
        self.error = error
        self._extra = extra

    @property
    def id(self) -> str:
        """
        A unique random identifier of this connection.
        """
        if self._id is None:
            self._id = secrets.token_hex(8)
        return self._id

    @property
    def client_hostname(self) -> str:
        """
        The name the client's address resolves to; unless one was found (or
        set), C{"[address]"}, or C{"localhost"} without an address.
        """
        name = self._client_hostname
        if name is None:
            address = self.remote_address
            return f"[{address}]" if address else "localhost"
        return name

    @client_hostname.setter
    def client_hostname(self, value: str) -> None:
        self._client_hostname = value

    @property
    def envelope(self) -> Envelope:
        """
        The transaction in progress (an empty L{Envelope} between
        transactions).
        """
        envelope = self._envelope
        if envelope is None:
            envelope = self._envelope = Envelope()
        return envelope

    @envelope.setter
    def envelope(self, value: Envelope) -> None:
        self._envelope = value

    @property
    def xclient(self) -> dict[str, str]:
        """
        Attributes received with XCLIENT.
        """
        if self._xclient is None:
            self._xclient = {}
        return self._xclient

    @xclient.setter
    def xclient(self, value: dict[str, str]) -> None:
        self._xclient = value

    @property
    def xforward(self) -> dict[str, str]:
        """
        Attributes received with XFORWARD (for the current transaction).
        """
        if self._xforward is None:
            self._xforward = {}
        return self._xforward

    @xforward.setter
    def xforward(self, value: dict[str, str]) -> None:
        self._xforward = value

    @property
    def extra(self) -> dict[str, Any]:
        """
        The application's own per-session state: a C{dict} to keep anything
        in from one hook to the next.
        """
        if self._extra is None:
            self._extra = {}
        return self._extra

    @extra.setter
    def extra(self, value: dict[str, Any]) -> None:
        self._extra = value

    def __repr__(self) -> str:
        return (
            f"<Session {self.id} {self.remote_address}:{self.remote_port}"
            f" {self.opening_command or '-'} {self.host_name_appears_as!r}"
            f" transaction={self.transaction}>"
        )

    @property
    def transmission_type(self) -> str:
        """
        The RFC 3848 protocol name: C{SMTP}, C{ESMTP}, C{ESMTPA},
        C{ESMTPS}, C{ESMTPSA}, C{LMTP}, C{LMTPA}, C{LMTPS} or C{LMTPSA}.
        """
        command = self.opening_command
        if command == "HELO" or command == "":
            base = "SMTP"
        elif command == "LHLO":
            base = "LMTP"
        else:
            base = "ESMTP"
        if base != "SMTP":
            if self.secure:
                base += "S"
            if self.user is not None:
                base += "A"
        return base
