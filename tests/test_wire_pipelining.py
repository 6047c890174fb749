"""
Real-socket tests of PIPELINING: however long each hook takes, replies go out in command
order, and the next command is not run before the previous one was answered.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase

from smtphooks import Address, DataStream, Session, SMTPError

from tests.wire import later, open_session, start_server


class PipeliningOrderTests(TestCase):
    """
    A batch of commands in one write gets its replies in command order.
    """

    timeout = 60

    @inlineCallbacks
    def test_delayedRecipients(self) -> Any:
        """
        With C{on_rcpt_to} answering after 50 ms, at once (a rejection), and after 10 ms
        from a coroutine, one write of MAIL/RCPT/RCPT/RCPT/DATA gets 250, 250, 550, 250,
        354 in that order; each hook call starts only after the previous one answered (the
        server does not read ahead while a hook is pending), and the message goes to the
        two accepted recipients.
        """
        events: list[str] = []
        bodies: list[tuple[list[str], bytes]] = []

        def on_mail_from(address: Address, session: Session) -> Deferred[None]:
            events.append("mail")
            d = later(0.02)
            d.addCallback(lambda _: events.append("mail done"))
            return d

        def on_rcpt_to(address: Address, session: Session) -> Any:
            name = address.address.split("@")[0]
            events.append(name)
            if name == "a":
                d = later(0.05)
                d.addCallback(lambda _: events.append("a done"))
                return d
            if name == "b":
                events.append("b done")
                raise SMTPError("b is not wanted", code=550)

            async def slow() -> None:
                await later(0.01)
                events.append("c done")

            return slow()

        async def on_data(stream: DataStream, session: Session) -> None:
            events.append("data")
            body = await stream.read()
            bodies.append(([r.address for r in session.envelope.rcpt_to], body))

        port = yield start_server(
            self, on_mail_from=on_mail_from, on_rcpt_to=on_rcpt_to, on_data=on_data
        )
        client = yield open_session(self, port)
        client.send(
            b"MAIL FROM:<s@example.com>\r\n"
            b"RCPT TO:<a@example.com>\r\n"
            b"RCPT TO:<b@example.com>\r\n"
            b"RCPT TO:<c@example.com>\r\n"
            b"DATA\r\n"
        )
        replies = yield client.next_replies(5)
        self.assertEqual(
            [(r.code, r.enhanced) for r in replies],
            [(250, "2.1.0"), (250, "2.1.5"), (550, "5.1.1"), (250, "2.1.5"), (354, None)],
            [str(r) for r in replies],
        )
        self.assertIn("b is not wanted", replies[2].text)
        client.send(b"Subject: pipelined\r\n\r\nbody\r\n.\r\nNOOP\r\nQUIT\r\n")
        replies = yield client.next_replies(3)
        self.assertEqual([r.code for r in replies], [250, 250, 221])
        self.assertEqual(
            events,
            ["mail", "mail done", "a", "a done", "b", "b done", "c", "c done", "data"],
        )
        self.assertEqual(
            bodies,
            [(["a@example.com", "c@example.com"], b"Subject: pipelined\r\n\r\nbody\r\n")],
        )

    @inlineCallbacks
    def test_wholeSessionInOneWrite(self) -> Any:
        """
        A whole session, EHLO to QUIT with two messages and an RSET, written at once while
        every hook answers late, gets every reply in order and delivers both messages.
        """
        delivered: list[bytes] = []

        def on_mail_from(address: Address, session: Session) -> Deferred[None]:
            return later(0.01)

        def on_rcpt_to(address: Address, session: Session) -> Deferred[None]:
            if address.address.startswith("no"):
                return later(0.01, error=SMTPError("no", code=550))
            return later(0.005)

        async def on_data(stream: DataStream, session: Session) -> str:
            delivered.append(await stream.read())
            await later(0.01)
            return f"queued as {len(delivered)}"

        port = yield start_server(
            self, on_mail_from=on_mail_from, on_rcpt_to=on_rcpt_to, on_data=on_data
        )
        client = yield open_session(self, port)
        commands = [
            (b"RSET", 250),
            (b"MAIL FROM:<a@example.com>", 250),
            (b"RCPT TO:<no1@example.com>", 550),
            (b"RCPT TO:<yes1@example.com>", 250),
            (b"DATA", 354),
            (b"one\r\n.", 250),
            (b"MAIL FROM:<b@example.com>", 250),
            (b"RCPT TO:<yes2@example.com>", 250),
            (b"RSET", 250),
            (b"MAIL FROM:<c@example.com>", 250),
            (b"RCPT TO:<yes3@example.com>", 250),
            (b"RCPT TO:<no2@example.com>", 550),
            (b"DATA", 354),
            (b"two\r\n.", 250),
            (b"NOOP", 250),
            (b"QUIT", 221),
        ]
        client.send(b"".join(line + b"\r\n" for line, _ in commands))
        replies = yield client.next_replies(len(commands))
        self.assertEqual(
            [r.code for r in replies], [code for _, code in commands], [str(r) for r in replies]
        )
        self.assertEqual(replies[5].text, "2.0.0 queued as 1")
        self.assertEqual(replies[13].text, "2.0.0 queued as 2")
        self.assertEqual(delivered, [b"one\r\n", b"two\r\n"])
        yield client.lost
