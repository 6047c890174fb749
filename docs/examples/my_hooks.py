"""
The hooks of a small receiving server, written as an application would
write them.  docs/testing.md shows how to test them: see test_my_hooks.py
(trial) and test_my_hooks_pytest.py (pytest) next to this file.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred

from smtphooks import (
    Address,
    AuthRequest,
    AuthResponse,
    DataStream,
    Session,
    SMTPError,
    SMTPServer,
)

MAILBOXES = {"alice@example.com", "bob@example.com"}
BLOCKED_NETWORK = "203.0.113."
#: Submission users and their passwords (keep hashes in a real program).
USERS = {"alice": "correct horse"}


class MyHooks:
    """
    Accept mail for known mailboxes, ask a spam scorer about each message,
    and keep the messages it lets through.

    @ivar scorer: gives a message's spam score, later (a Deferred): it calls
        a service over the network.
    @ivar delivered: the accepted messages: (sender, recipients, body).
    @ivar closed: how many connections have ended.
    """

    def __init__(self, scorer: Callable[[bytes], Deferred[float]]) -> None:
        self.scorer = scorer
        self.delivered: list[tuple[str, list[str], bytes]] = []
        self.closed = 0

    def on_connect(self, session: Session) -> None:
        if session.remote_address.startswith(BLOCKED_NETWORK):
            raise SMTPError("Your network is not welcome here", code=554)

    def on_rcpt_to(self, address: Address, session: Session) -> None:
        if address.address.lower() not in MAILBOXES:
            raise SMTPError("No such user here", code=550, enhanced="5.1.1")

    async def on_data(self, stream: DataStream, session: Session) -> str:
        body = await stream.read()
        score = await self.scorer(body)
        if score > 5.0:
            raise SMTPError(f"Spam score {score:.1f} is too high", code=554, enhanced="5.7.1")
        envelope = session.envelope
        assert envelope.mail_from is not None
        self.delivered.append(
            (envelope.mail_from.address, [r.address for r in envelope.rcpt_to], body)
        )
        return f"Queued as {len(self.delivered)}"

    def on_close(self, session: Session) -> None:
        self.closed += 1


def on_auth(auth: AuthRequest, session: Session) -> AuthResponse | None:
    """
    Accept the users of L{USERS}, with any SASL mechanism.
    """
    password = USERS.get(auth.username)
    if password is None or not auth.validate_password(password):
        return None
    return AuthResponse(auth.username)


def make_server(hooks: MyHooks, **options: Any) -> SMTPServer:
    """
    The production server.  It takes extra options, so that tests can give it
    a clock: C{make_server(hooks, reactor=task.Clock(), ...)}.
    """
    return SMTPServer(hooks, size=10 * 1024 * 1024, hook_timeout=30, **options)
