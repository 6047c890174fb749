"""
What C{on_auth} receives and returns: L{AuthRequest} and L{AuthResponse}.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["AuthRequest", "AuthResponse", "Challenge", "SASLError", "MECHANISMS", "new_mechanism"]


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
    @ivar extra: free for the application, e.g. to pass data from
        C{on_auth} to later hooks through C{session.user}.
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


# -- SASL mechanisms -------------------------------------------------------
# Each mechanism is a small object with one shape: start() with the
# client's initial response (or None), then step() with each later response,
# both given decoded bytes; each returns a Challenge for the client or the
# finished AuthRequest, or raises SASLError.


class SASLError(Exception):
    """
    The client's SASL data is malformed.
    """


@dataclass(slots=True, frozen=True)
class Challenge:
    """
    Bytes to send to the client in a C{334} reply (base64-encoded there).
    """

    data: bytes


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SASLError("credentials are not valid UTF-8") from None


class Plain:
    """
    RFC 4616: C{authzid NUL authcid NUL password} in one response.
    """

    name = "PLAIN"

    def start(self, initial: bytes | None) -> Challenge | AuthRequest:
        if initial is None:
            return Challenge(b"")
        return self.step(initial)

    def step(self, response: bytes) -> Challenge | AuthRequest:
        parts = response.split(b"\0")
        if len(parts) != 3 or not parts[1]:
            raise SASLError("malformed PLAIN response")
        authzid, username, password = (_text(part) for part in parts)
        return AuthRequest("PLAIN", username, password, authzid=authzid or None)


class Login:
    """
    The LOGIN mechanism: user name, then password, each asked for.
    """

    name = "LOGIN"

    def __init__(self) -> None:
        self._username: str | None = None

    def start(self, initial: bytes | None) -> Challenge | AuthRequest:
        if initial is None:
            return Challenge(b"Username:")
        return self.step(initial)

    def step(self, response: bytes) -> Challenge | AuthRequest:
        if self._username is None:
            self._username = _text(response)
            return Challenge(b"Password:")
        return AuthRequest("LOGIN", self._username, _text(response))


class CramMD5:
    """
    RFC 2195: the server sends a challenge, the client answers with its name
    and an HMAC-MD5 of the challenge keyed with the password.
    """

    name = "CRAM-MD5"

    def __init__(self, challenge: str) -> None:
        self._challenge = challenge

    def start(self, initial: bytes | None) -> Challenge | AuthRequest:
        if initial is not None:
            raise SASLError("CRAM-MD5 takes no initial response")
        return Challenge(self._challenge.encode("ascii"))

    def step(self, response: bytes) -> Challenge | AuthRequest:
        username, _, digest = _text(response).rpartition(" ")
        if not username or len(digest) != 32:
            raise SASLError("malformed CRAM-MD5 response")
        try:
            int(digest, 16)
        except ValueError:
            raise SASLError("malformed CRAM-MD5 response") from None
        return AuthRequest(
            "CRAM-MD5",
            username,
            challenge=self._challenge,
            challenge_response=digest.lower(),
        )


class XOAuth2:
    """
    Google's XOAUTH2: C{user=NAME^Aauth=Bearer TOKEN^A^A} in one response.
    """

    name = "XOAUTH2"

    def start(self, initial: bytes | None) -> Challenge | AuthRequest:
        if initial is None:
            return Challenge(b"")
        return self.step(initial)

    def step(self, response: bytes) -> Challenge | AuthRequest:
        fields = {}
        for part in _text(response).split("\x01"):
            key, sep, value = part.partition("=")
            if sep:
                fields[key.lower()] = value
        user, auth = fields.get("user"), fields.get("auth", "")
        scheme, _, token = auth.partition(" ")
        if not user or scheme.lower() != "bearer" or not token:
            raise SASLError("malformed XOAUTH2 response")
        return AuthRequest("XOAUTH2", user, access_token=token.strip())


Mechanism = Plain | Login | CramMD5 | XOAuth2


def new_mechanism(name: str, challenge: Callable[[], str]) -> Mechanism:
    """
    A fresh mechanism object for one AUTH exchange.

    @param name: an upper-case name from L{MECHANISMS}.
    @param challenge: makes a CRAM-MD5 challenge.
    """
    if name == "PLAIN":
        return Plain()
    if name == "LOGIN":
        return Login()
    if name == "CRAM-MD5":
        return CramMD5(challenge())
    if name == "XOAUTH2":
        return XOAuth2()
    raise ValueError(f"unknown SASL mechanism {name!r}")

MECHANISMS = ("PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2")
