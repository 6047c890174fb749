"""
Real-socket tests with other real clients: Twisted's own C{ESMTPSenderFactory}, C{swaks},
and Postfix's C{smtp-source} load generator.
"""

from __future__ import annotations

import io
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.mail.smtp import ESMTPSenderFactory
from twisted.trial.unittest import TestCase

from smtphooks import Address, DataStream, Session

from tests.support import require_tool, run_process
from tests.wire import Counter, later, start_server


class Collector:
    """
    Hooks that keep every message's envelope and body, and count connections.
    """

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.helos: list[str] = []
        self.closed = Counter()

    def on_mail_from(self, address: Address, session: Session) -> None:
        self.helos.append(session.host_name_appears_as)

    async def on_data(self, stream: DataStream, session: Session) -> None:
        body = await stream.read()
        envelope = session.envelope
        assert envelope.mail_from is not None
        self.messages.append(
            (envelope.mail_from.address, [r.address for r in envelope.rcpt_to], body)
        )

    def on_close(self, session: Session) -> None:
        self.closed()


class _SenderFactory(ESMTPSenderFactory):
    """
    An L{ESMTPSenderFactory} that also says when its connection is gone, so that the test
    ends with a clean reactor.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gone: Deferred[None] = Deferred()

    def clientConnectionLost(self, connector: Any, reason: Any) -> None:
        super().clientConnectionLost(connector, reason)
        if not self.gone.called:
            self.gone.callback(None)

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        super().clientConnectionFailed(connector, reason)
        if not self.gone.called:
            self.gone.callback(None)


class TwistedClientTests(TestCase):
    """
    Twisted's SMTP client delivers to the server.
    """

    timeout = 60

    @inlineCallbacks
    def test_esmtpSender(self) -> Any:
        """
        C{ESMTPSenderFactory} (no AUTH, no TLS) sends a message to two recipients; the hook
        gets it byte-exact: the client's LF line endings as CRLF, its stuffed dots removed.
        """
        source = (
            b"From: sender@example.com\n"
            b"To: one@example.com, two@example.com\n"
            b"Subject: from twisted.mail\n"
            b"\n"
            b"Line one.\n"
            b".starts with a dot\n"
            b"..two dots\n"
            b"\n"
            b"Last line.\n"
        )
        hooks = Collector()
        port = yield start_server(self, hooks=hooks)
        result: Deferred[Any] = Deferred()
        factory = _SenderFactory(
            None,
            None,
            "sender@example.com",
            ["one@example.com", "two@example.com"],
            io.BytesIO(source),
            result,
            retries=0,
            requireAuthentication=False,
            requireTransportSecurity=False,
            hostname="client.example.test",
        )
        reactor.connectTCP("127.0.0.1", port, factory)
        accepted, addresses = yield result
        yield factory.gone
        self.assertEqual(accepted, 2)
        self.assertEqual([a[1] for a in addresses], [250, 250])
        self.assertEqual(
            hooks.messages,
            [
                (
                    "sender@example.com",
                    ["one@example.com", "two@example.com"],
                    source.replace(b"\n", b"\r\n"),
                )
            ],
        )
        yield hooks.closed.wait_for(1)


class SwaksTests(TestCase):
    """
    C{swaks}, the Swiss army knife for SMTP, delivers to the server.
    """

    timeout = 60

    def _swaks(self, port: int, *args: str) -> Deferred[tuple[int, bytes, bytes]]:
        swaks = require_tool("swaks")
        return run_process(
            [
                swaks,
                "--server",
                "127.0.0.1",
                "--port",
                str(port),
                "--from",
                "sender@example.com",
                "--helo",
                "swaks.example.test",
                "--timeout",
                "20",
                *args,
            ],
            timeout=30,
        )

    @inlineCallbacks
    def test_plainSend(self) -> Any:
        """
        A plain swaks send exits 0, and the hook sees the envelope, the EHLO name, and the
        body swaks built with our header and text.
        """
        hooks = Collector()
        port = yield start_server(self, hooks=hooks)
        code, out, err = yield self._swaks(
            port,
            "--to",
            "rcpt@example.com",
            "--header",
            "Subject: swaks wire test",
            "--body",
            "Hello from swaks.",
        )
        self.assertEqual(code, 0, out + err)
        self.assertEqual(len(hooks.messages), 1)
        sender, recipients, body = hooks.messages[0]
        self.assertEqual((sender, recipients), ("sender@example.com", ["rcpt@example.com"]))
        self.assertIn(b"\r\nSubject: swaks wire test\r\n", body)
        self.assertIn(b"\r\n\r\nHello from swaks.\r\n", body)
        self.assertEqual(hooks.helos, ["swaks.example.test"])

    @inlineCallbacks
    def test_pipeline(self) -> Any:
        """
        C{swaks --pipeline} with four recipients, whose hook answers late, exits 0; swaks
        saw PIPELINING, and the hook got every recipient in order and one message.
        """
        hooks = Collector()
        recipients: list[str] = []

        def on_rcpt_to(address: Address, session: Session) -> Deferred[None]:
            recipients.append(address.address)
            return later(0.01 * len(recipients))

        port = yield start_server(self, hooks=hooks, on_rcpt_to=on_rcpt_to)
        to = [f"r{i}@example.com" for i in range(4)]
        code, out, err = yield self._swaks(
            port, "--pipeline", "--to", ",".join(to), "--body", "pipelined body"
        )
        self.assertEqual(code, 0, out + err)
        self.assertIn(b"PIPELINING", out)
        self.assertEqual(recipients, to)
        self.assertEqual(len(hooks.messages), 1)
        self.assertEqual(hooks.messages[0][:2], ("sender@example.com", to))
        self.assertIn(b"\r\n\r\npipelined body\r\n", hooks.messages[0][2])


class SmtpSourceTests(TestCase):
    """
    Postfix's C{smtp-source} load generator: every message it sends is counted exactly
    once by the hook.
    """

    timeout = 120

    @inlineCallbacks
    def _load(self, messages: int, sessions: int, *flags: str) -> Any:
        tool = require_tool("smtp-source")
        counts: dict[str, int] = {}
        sizes: set[int] = set()
        connections = Counter()

        async def on_data(stream: DataStream, session: Session) -> None:
            n = 0
            async for chunk in stream:
                n += len(chunk)
            sizes.add(n)
            counts[session.id] = counts.get(session.id, 0) + 1

        port = yield start_server(self, on_data=on_data, on_connect=lambda s: connections())
        code, out, err = yield run_process(
            [
                tool,
                *flags,
                "-s",
                str(sessions),
                "-m",
                str(messages),
                "-l",
                "1024",
                "-c",
                "-M",
                "client.example.test",
                "-f",
                "sender@example.com",
                "-t",
                "to@example.com",
                f"127.0.0.1:{port}",
            ],
            timeout=90,
        )
        self.assertEqual(code, 0, out + err)
        self.assertNotIn(b"error", err.lower(), err)
        self.assertEqual(sum(counts.values()), messages)
        # -l 1024 is the body; smtp-source adds a few headers of varying length.
        self.assertGreaterEqual(min(sizes), 1024)
        self.assertLess(max(sizes), 2048)
        return counts, connections.count

    @inlineCallbacks
    def test_newConnectionPerMessage(self) -> Any:
        """
        C{smtp-source -s 20 -m 2000 -l 1024}: 2000 messages, one connection each, 20 at a
        time; the hook counts exactly 2000.
        """
        counts, connections = yield self._load(2000, 20)
        self.assertEqual(len(counts), 2000)
        self.assertEqual(connections, 2000)

    @inlineCallbacks
    def test_persistentSessions(self) -> Any:
        """
        C{smtp-source -d}: 20 sessions send 2000 messages without disconnecting between
        them; the hook counts exactly 2000, over 20 connections.
        """
        counts, connections = yield self._load(2000, 20, "-d")
        self.assertEqual(connections, 20)
        self.assertEqual(len(counts), 20)
