"""
What C{on_auth} receives and returns: L{AuthRequest} and L{AuthResponse}.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Any

__all__ = ["AuthRequest", "AuthResponse"]


@dataclass(slots=True)
class AuthResponse:
    """
    What C{on_auth} returns to accept a client.

    @ivar user: becomes C{session.user}; any object (a name, a record).
        L{None} rejects with C{535 5.7.8}.
    @ivar message: the text of the C{235} reply, or L{None} for the default.
    @ivar code: the reply code, or L{None} for C{235}.
    @ivar data: for a failed XOAUTH2 exchange, the RFC 7628 error fields
        (C{{"status": "401", "schemes": "bearer"}}) sent to the client as
        its error challenge.
    """

    user: Any = None
    message: str | None = None
    code: int | None = None
    data: dict[str, str] | None = None


@dataclass(slots=True, repr=False)
class AuthRequest:
    """
    One AUTH exchange, decoded.

    @ivar method: C{"PLAIN"}, C{"LOGIN"}, C{"CRAM-MD5"} or C{"XOAUTH2"}.
    @ivar username: the user name the client gave.
    @ivar password: the password (L{None} for CRAM-MD5 and XOAUTH2).
    @ivar authzid: the authorization identity of PLAIN, or L{None}.
    @ivar access_token: the XOAUTH2 bearer token, or L{None}.
    @ivar challenge: the CRAM-MD5 challenge the server sent, or L{None}.
    @ivar challenge_response: the client's CRAM-MD5 digest (hex), or
        L{None}.
    """

    method: str
    username: str = ""
    password: str | None = None
    authzid: str | None = None
    access_token: str | None = None
    challenge: str | None = None
    challenge_response: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def validate_password(self, password: str) -> bool:
        """
        Check a CRAM-MD5 response against the password you hold for
        C{username}.

        @return: L{True} if the client knew C{password}.
        """
        if self.challenge is None or self.challenge_response is None:
            if self.password is None:
                return False
            return hmac.compare_digest(self.password.encode(), password.encode())
        expected = hmac.new(
            password.encode("utf-8"), self.challenge.encode("utf-8"), "md5"
        ).hexdigest()
        return hmac.compare_digest(expected, self.challenge_response.lower())

    def __repr__(self) -> str:
        # Never show secrets: reprs end up in logs and tracebacks.
        return f"AuthRequest(method={self.method!r}, username={self.username!r})"
