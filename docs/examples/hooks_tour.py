"""
A tour of the hooks: a small receiving server for two domains.

Run it with ``python docs/examples/hooks_tour.py`` and send it mail with
``swaks --server 127.0.0.1:2525 --to alice@example.com``.
"""

from __future__ import annotations

import sys

from twisted.internet import defer, task
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver

from smtphooks import Address, DataStream, Hooks, Session, SMTPError, SMTPServer

log = Logger()

MAILBOXES = {"alice@example.com", "bob@example.com", "postmaster@example.com"}
BLOCKED_NETWORKS = ("203.0.113.",)


class TourHooks(Hooks):
    """
    Accept mail for known mailboxes, keep the messages in memory.
    """

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []

    def on_connect(self, session: Session) -> None:
        # A plain function: return to accept, raise to reject.
        if session.remote_address.startswith(BLOCKED_NETWORKS):
            raise SMTPError("Your network is not welcome here", code=554)

    async def on_mail_from(self, address: Address, session: Session) -> None:
        # A coroutine: may await Deferreds (a database, a DNS lookup...).
        await task.deferLater(_reactor(), 0, lambda: None)
        if address.address.endswith("@spam.example"):
            raise SMTPError("Sender refused", code=550, enhanced="5.7.1")

    def on_rcpt_to(self, address: Address, session: Session) -> defer.Deferred[None]:
        # Returning a Deferred works as well.
        if address.address.lower() == "postmaster":
            return defer.succeed(None)
        if address.address.lower() not in MAILBOXES:
            return defer.fail(SMTPError("No such user here", code=550, enhanced="5.1.1"))
        return defer.succeed(None)

    async def on_data(self, stream: DataStream, session: Session) -> str:
        chunks = []
        async for chunk in stream:
            chunks.append(chunk)
        if stream.size_exceeded:
            return "ignored"  # the client gets 552 whatever we return
        envelope = session.envelope
        assert envelope.mail_from is not None
        self.messages.append(
            (
                envelope.mail_from.address,
                [rcpt.address for rcpt in envelope.rcpt_to],
                b"".join(chunks),
            )
        )
        return f"OK: stored as message {len(self.messages)}"

    def on_close(self, session: Session) -> None:
        log.info(
            "{client} left after {count} transaction(s)",
            client=session.remote_address,
            count=session.transaction - 1,
        )


def _reactor():  # type: ignore[no-untyped-def]
    from twisted.internet import reactor

    return reactor


def make_server(**options: object) -> tuple[SMTPServer, TourHooks]:
    """
    The server and its hooks, for the tests and for main().
    """
    hooks = TourHooks()
    server = SMTPServer(hooks, size=10 * 1024 * 1024, **options)
    return server, hooks


def main() -> None:
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    server, _ = make_server()
    server.listen("tcp:2525:interface=127.0.0.1")
    _reactor().run()


if __name__ == "__main__":
    main()
