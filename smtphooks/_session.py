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


def _new_id() -> str:
    return secrets.token_hex(8)


@dataclass(slots=True, eq=False)
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

    id: str = field(default_factory=_new_id)
    local_address: str = ""
    local_port: int = 0
    remote_address: str = ""
    remote_port: int = 0
    client_hostname: str = ""
    opening_command: str = ""
    host_name_appears_as: str = ""
    envelope: Envelope = field(default_factory=Envelope)
    user: Any = None
    transaction: int = 1
    secure: bool = False
    tls: TLSInfo | None = None
    xclient: dict[str, str] = field(default_factory=dict)
    xforward: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

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
