"""
Real-socket tests of LMTP (RFC 2033, C{lmtp=True}): LHLO instead of HELO/EHLO, one reply
per accepted recipient after the end of data, in RCPT order, from the list C{on_data}
returns; over TCP and over a unix socket, with a raw client, C{swaks --protocol LMTP} and
Postfix's C{smtp-source -L}; and the LMTP delivery agent of C{docs/examples}.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import sys
import tempfile
from types import ModuleType
from typing import Any

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import UNIXClientEndpoint, UNIXServerEndpoint, connectProtocol
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import ILogObserver, LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase
from zope.interface import implementer

from smtphooks import Address, DataStream, Session, SMTPError, SMTPServer

from tests.support import require_tool, run_process
from tests.wire import SERVER_NAME, Counter, LineClient, connect, later, start_server

EXAMPLE = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), os.pardir, "docs", "examples", "lmtp_delivery.py"
)


# -- helpers -----------------------------------------------------------------------------


def socket_dir(test: TestCase) -> str:
    """
    A fresh directory for unix sockets, removed when the test ends.  It is under the
    system's temporary directory rather than trial's, whose paths can exceed the 107
    bytes a socket path may have.
    """
    path = tempfile.mkdtemp(prefix="smtphooks-lmtp-")
    test.addCleanup(shutil.rmtree, path, True)
    return path


@inlineCallbacks
def start_unix_server(test: TestCase, **kwargs: Any) -> Any:  # Deferred[(server, path)]
    """
    Start an LMTP server on a unix socket in a fresh directory; it is closed when the test
    ends.

    @return: a L{Deferred} that fires with the server and the socket's path.
    """
    path = os.path.join(socket_dir(test), "lmtp.sock")
    kwargs.setdefault("disable_reverse_lookup", True)
    kwargs.setdefault("name", SERVER_NAME)
    kwargs.setdefault("lmtp", True)
    server = SMTPServer(**kwargs)
    yield server.listen(f"unix:{path}")
    test.addCleanup(server.close, 5.0)
    return server, path


@inlineCallbacks
def connect_unix(test: TestCase, path: str) -> Any:  # Deferred[LineClient]
    """
    Connect a L{LineClient} to a unix socket and wait for the greeting.
    """
    client = LineClient()
    yield connectProtocol(UNIXClientEndpoint(reactor, path), client)
    test.addCleanup(client.disconnect)
    client.greeting = yield client.reply()
    return client


@inlineCallbacks
def lmtp_session(test: TestCase, port: int) -> Any:  # Deferred[LineClient]
    """
    Connect to an LMTP server on TCP and send LHLO; the reply must be 250.
    """
    client = yield connect(test, port)
    test.assertEqual(client.greeting.code, 220, str(client.greeting))
    reply = yield client.command("LHLO client.example.test")
    test.assertEqual(reply.code, 250, str(reply))
    return client


def transaction(recipients: list[str], body: bytes = b"Subject: t\r\n\r\nbody\r\n") -> bytes:
    """
    The bytes of one whole LMTP transaction, to be sent in a single write (PIPELINING).
    """
    lines = [b"MAIL FROM:<sender@example.com>"]
    lines += [f"RCPT TO:<{r}>".encode() for r in recipients]
    lines.append(b"DATA")
    return b"\r\n".join(lines) + b"\r\n" + body + b".\r\n"


def summary(replies: list[Any]) -> list[tuple[int, str | None, str]]:
    """
    Replies as (code, enhanced code, text after the enhanced code), for comparisons.
    """
    out = []
    for reply in replies:
        text = reply.lines[-1]
        if reply.enhanced is not None:
            text = text[len(reply.enhanced) + 1 :]
        out.append((reply.code, reply.enhanced, text))
    return out


class Messages:
    """
    Hooks that keep each message, and answer C{on_data} with a list made by C{answer}
    from the accepted recipients.

    @ivar messages: (sender, recipients, body) for each message.
    @ivar sessions: the session of each message, as C{on_data} saw it.
    """

    def __init__(self, answer: Any = None, reject: tuple[str, ...] = ()) -> None:
        self.answer = answer
        self.reject = reject
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.types: list[str] = []
        self.opening: list[str] = []

    def on_rcpt_to(self, address: Address, session: Session) -> None:
        if address.address in self.reject:
            raise SMTPError(f"no mailbox {address.address}", code=550, enhanced="5.1.1")

    async def on_data(self, stream: DataStream, session: Session) -> Any:
        body = await stream.read()
        envelope = session.envelope
        assert envelope.mail_from is not None
        recipients = [r.address for r in envelope.rcpt_to]
        self.messages.append((envelope.mail_from.address, recipients, body))
        self.types.append(session.transmission_type)
        self.opening.append(session.opening_command)
        if self.answer is None:
            return None
        return self.answer(recipients)


@implementer(ILogObserver)
class LogEvents:
    """
    Collect the log events of the C{smtphooks} namespace while a test runs.
    """

    def __init__(self, test: TestCase) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self)
        test.addCleanup(globalLogPublisher.removeObserver, self)

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "smtphooks":
            self.events.append(event)

    def at(self, level: LogLevel) -> list[dict[str, Any]]:
        """
        The events logged at C{level}.
        """
        return [e for e in self.events if e.get("log_level") == level]


# -- the dialogue ------------------------------------------------------------------------


class LHLOTests(TestCase):
    """
    An LMTP server greets as LMTP, opens with LHLO only, and says so in the session.
    """

    timeout = 30

    @inlineCallbacks
    def test_greetingSaysLMTP(self) -> Any:
        """
        The greeting is C{220 <name> LMTP}, not ESMTP.
        """
        port = yield start_server(self, lmtp=True)
        client = yield connect(self, port)
        self.assertEqual(client.greeting.code, 220)
        self.assertEqual(client.greeting.lines, [f"{SERVER_NAME} LMTP"])

    @inlineCallbacks
    def test_heloAndEhloRefused(self) -> Any:
        """
        HELO and EHLO are unknown commands in LMTP (C{500}), MAIL before LHLO is C{503};
        LHLO then answers 250 with PIPELINING, ENHANCEDSTATUSCODES and 8BITMIME, as
        RFC 2033 section 5 asks.
        """
        port = yield start_server(self, lmtp=True)
        client = yield connect(self, port)
        client.send(b"HELO client.example.test\r\nEHLO client.example.test\r\n")
        client.send(b"MAIL FROM:<a@example.com>\r\nLHLO client.example.test\r\n")
        helo, ehlo, mail, lhlo = yield client.next_replies(4)
        self.assertEqual(helo.code, 500, str(helo))
        self.assertEqual(ehlo.code, 500, str(ehlo))
        self.assertEqual(mail.code, 503, str(mail))
        self.assertEqual(lhlo.code, 250, str(lhlo))
        self.assertEqual(lhlo.lines[0], f"{SERVER_NAME} greets [127.0.0.1]")
        for extension in ("PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME"):
            self.assertIn(extension, lhlo.lines)

    @inlineCallbacks
    def test_lhloRefusedInSMTP(self) -> Any:
        """
        Without C{lmtp=True}, LHLO is an unknown command (RFC 2033 section 4.1: LMTP must
        not be spoken on an SMTP service), and EHLO works.
        """
        port = yield start_server(self)
        client = yield connect(self, port)
        reply = yield client.command("LHLO client.example.test")
        self.assertEqual(reply.code, 500, str(reply))
        reply = yield client.command("EHLO client.example.test")
        self.assertEqual(reply.code, 250, str(reply))

    @inlineCallbacks
    def test_transmissionType(self) -> Any:
        """
        The session of an LMTP delivery has C{opening_command == "LHLO"} and
        C{transmission_type == "LMTP"} (RFC 3848), and C{lmtp=True} answers a message to one
        recipient like SMTP does (C{250 2.0.0}) when C{on_data} returns L{None}.
        """
        hooks = Messages()
        port = yield start_server(self, hooks=hooks, lmtp=True)
        client = yield lmtp_session(self, port)
        client.send(transaction(["one@example.com"]))
        replies = yield client.next_replies(4)
        self.assertEqual([r.code for r in replies], [250, 250, 354, 250])
        self.assertEqual(replies[-1].enhanced, "2.0.0")
        self.assertEqual(hooks.types, ["LMTP"])
        self.assertEqual(hooks.opening, ["LHLO"])


# -- per-recipient replies ---------------------------------------------------------------


class PerRecipientReplyTests(TestCase):
    """
    After the end of data an LMTP server sends one reply per accepted recipient, in RCPT
    order, from the list C{on_data} returns.
    """

    timeout = 30

    @inlineCallbacks
    def _deliver(
        self, hooks: Messages, recipients: list[str], replies_expected: int, **options: Any
    ) -> Any:
        """
        Send one pipelined transaction, then NOOP, and return the replies that came after
        DATA's 354, up to and including NOOP's, which must be the last one.
        """
        port = yield start_server(self, hooks=hooks, lmtp=True, **options)
        client = yield lmtp_session(self, port)
        client.send(transaction(recipients) + b"NOOP\r\n")
        head = yield client.next_replies(len(recipients) + 2)
        self.assertEqual(head[-1].code, 354, [str(r) for r in head])
        tail = yield client.next_replies(replies_expected + 1)
        noop = tail.pop()
        self.assertEqual((noop.code, noop.lines), (250, ["2.0.0 OK"]), str(noop))
        return head[1:-1], tail

    @inlineCallbacks
    def test_repliesInRcptOrder(self) -> Any:
        """
        Three recipients and C{["ok", SMTPError("full", code=452, enhanced="4.2.2"), None]}
        from C{on_data}: the client gets C{250 ok}, C{452 4.2.2 full}, C{250 2.0.0} in that
        order, and nothing else before the NOOP's reply.
        """
        hooks = Messages(
            lambda rcpts: ["ok", SMTPError("full", code=452, enhanced="4.2.2"), None]
        )
        recipients = ["a@example.com", "b@example.com", "c@example.com"]
        rcpt, data = yield self._deliver(hooks, recipients, 3)
        self.assertEqual([r.code for r in rcpt], [250, 250, 250])
        self.assertEqual(
            summary(data),
            [(250, "2.0.0", "ok"), (452, "4.2.2", "full"), (250, "2.0.0", "OK: message queued")],
        )
        self.assertEqual(hooks.messages[0][1], recipients)

    @inlineCallbacks
    def test_delayedAnswerStillInOrder(self) -> Any:
        """
        An C{on_data} that answers only after a delay still gets its replies in order, and
        the NOOP pipelined behind the message is answered after all of them.
        """

        async def on_data(stream: DataStream, session: Session) -> list[str]:
            await stream.read()
            await later(0.05)
            return [f"delivered to {r.address}" for r in session.envelope.rcpt_to]

        hooks = Messages()
        hooks.on_data = on_data  # type: ignore[method-assign]
        recipients = ["x@example.com", "y@example.com"]
        _, data = yield self._deliver(hooks, recipients, 2)
        self.assertEqual(
            [r.lines for r in data],
            [["2.0.0 delivered to x@example.com"], ["2.0.0 delivered to y@example.com"]],
        )

    @inlineCallbacks
    def test_rejectedRecipientHasNoSlot(self) -> Any:
        """
        A recipient refused at RCPT gets no reply after the data: with the second of four
        refused, C{on_data} sees three recipients, returns three entries, and exactly three
        replies come, matched to the accepted recipients in order.
        """
        hooks = Messages(
            lambda rcpts: [f"stored for {r}" for r in rcpts], reject=("b@example.com",)
        )
        recipients = ["a@example.com", "b@example.com", "c@example.com", "d@example.com"]
        rcpt, data = yield self._deliver(hooks, recipients, 3)
        self.assertEqual([r.code for r in rcpt], [250, 550, 250, 250])
        self.assertEqual(hooks.messages[0][1], ["a@example.com", "c@example.com", "d@example.com"])
        self.assertEqual(
            [r.lines[-1] for r in data],
            [
                "2.0.0 stored for a@example.com",
                "2.0.0 stored for c@example.com",
                "2.0.0 stored for d@example.com",
            ],
        )

    @inlineCallbacks
    def test_wrongLengthIsTemporaryFailureForAll(self) -> Any:
        """
        A list with the wrong number of entries is a bug in the hook: every recipient gets
        C{451 4.3.0}, and the server logs an error naming what the hook returned.  (It is
        error with a C{TypeError} that C{flushLoggedErrors} sees.)
        """
        hooks = Messages(lambda rcpts: ["only one", None])
        recipients = ["a@example.com", "b@example.com", "c@example.com"]
        _, data = yield self._deliver(hooks, recipients, 3)
        self.assertEqual([(r.code, r.enhanced) for r in data], [(451, "4.3.0")] * 3)
        errors = self.flushLoggedErrors(TypeError)
        self.assertEqual(len(errors), 1)
        self.assertIn("['only one', None]", str(errors[0].value))
        self.assertIn("3 entries", str(errors[0].value))

    @inlineCallbacks
    def test_badEntryIsTemporaryFailureForAll(self) -> Any:
        """
        A list of the right length with an entry that is neither a string, L{None} nor a
        rejection (here an integer) is a bug too: C{451 4.3.0} for every recipient.
        """
        hooks = Messages(lambda rcpts: ["fine", 42])
        _, data = yield self._deliver(hooks, ["a@example.com", "b@example.com"], 2)
        self.assertEqual([(r.code, r.enhanced) for r in data], [(451, "4.3.0")] * 2)
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)

    @inlineCallbacks
    def test_stringAnswersEveryRecipient(self) -> Any:
        """
        A single string (not a list) is the 250 text for every recipient.
        """
        hooks = Messages(lambda rcpts: "queued as 4711")
        _, data = yield self._deliver(hooks, ["a@example.com", "b@example.com"], 2)
        self.assertEqual(summary(data), [(250, "2.0.0", "queued as 4711")] * 2)

    @inlineCallbacks
    def test_rejectionAnswersEveryRecipient(self) -> Any:
        """
        C{on_data} raising L{SMTPError} rejects the message for every recipient, each with
        the same reply.
        """

        def answer(rcpts: list[str]) -> None:
            raise SMTPError("Spam detected", code=554, enhanced="5.7.1")

        hooks = Messages(answer)
        _, data = yield self._deliver(hooks, ["a@example.com", "b@example.com", "c@example.com"], 3)
        self.assertEqual(summary(data), [(554, "5.7.1", "Spam detected")] * 3)

    @inlineCallbacks
    def test_crashAnswersEveryRecipient(self) -> Any:
        """
        C{on_data} raising an unexpected exception is answered C{451 4.3.0} for every
        recipient, and its traceback is logged once.
        """

        def answer(rcpts: list[str]) -> None:
            raise ZeroDivisionError("oops")

        hooks = Messages(answer)
        _, data = yield self._deliver(hooks, ["a@example.com", "b@example.com"], 2)
        self.assertEqual([(r.code, r.enhanced) for r in data], [(451, "4.3.0")] * 2)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    @inlineCallbacks
    def test_sizeExceededForEveryRecipient(self) -> Any:
        """
        With C{size=1000}, a 3000-byte body is answered C{552 5.3.4} for each recipient,
        whatever the hook returned.
        """
        hooks = Messages(lambda rcpts: ["ok"] * len(rcpts))
        port = yield start_server(self, hooks=hooks, lmtp=True, size=1000)
        client = yield lmtp_session(self, port)
        body = (b"x" * 98 + b"\r\n") * 30
        client.send(transaction(["a@example.com", "b@example.com", "c@example.com"], body))
        client.send(b"NOOP\r\n")
        replies = yield client.next_replies(9)
        self.assertEqual([r.code for r in replies[:5]], [250, 250, 250, 250, 354])
        self.assertEqual([(r.code, r.enhanced) for r in replies[5:8]], [(552, "5.3.4")] * 3)
        self.assertEqual(replies[8].code, 250)

    @inlineCallbacks
    def test_chunkedMessage(self) -> Any:
        """
        LMTP with BDAT: the LAST chunk is answered once per recipient, in order; the
        earlier chunk once.
        """
        hooks = Messages(lambda rcpts: [None, SMTPError("over quota", code=552, enhanced="5.2.2")])
        port = yield start_server(self, hooks=hooks, lmtp=True)
        client = yield lmtp_session(self, port)
        client.send(
            b"MAIL FROM:<s@example.com> BODY=BINARYMIME\r\n"
            b"RCPT TO:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
            b"BDAT 6\r\nhello\nBDAT 8 LAST\r\n\x00world\r\nNOOP\r\n"
        )
        replies = yield client.next_replies(7)
        self.assertEqual(
            summary(replies),
            [
                (250, "2.1.0", "Sender OK"),
                (250, "2.1.5", "Recipient OK"),
                (250, "2.1.5", "Recipient OK"),
                (250, "2.0.0", "6 octets received"),
                (250, "2.0.0", "OK: message queued"),
                (552, "5.2.2", "over quota"),
                (250, "2.0.0", "OK"),
            ],
        )
        self.assertEqual(hooks.messages[0][2], b"hello\n\x00world\r\n")

    @inlineCallbacks
    def test_transactionsFollowEachOther(self) -> Any:
        """
        After the per-recipient replies the connection takes a new transaction, whose
        replies again match its own recipients.
        """
        hooks = Messages(lambda rcpts: [f"for {r}" for r in rcpts])
        port = yield start_server(self, hooks=hooks, lmtp=True)
        client = yield lmtp_session(self, port)
        client.send(transaction(["a@example.com", "b@example.com"]))
        client.send(transaction(["c@example.com"]))
        client.send(b"QUIT\r\n")
        replies = yield client.next_replies(6 + 4 + 1)
        self.assertEqual(
            [r.lines[-1] for r in replies if r.lines[-1].startswith("2.0.0 for")],
            ["2.0.0 for a@example.com", "2.0.0 for b@example.com", "2.0.0 for c@example.com"],
        )
        self.assertEqual(replies[-1].code, 221)
        yield client.lost
        self.assertEqual(len(client.replies), 1 + 1 + 11)

    @inlineCallbacks
    def test_unixSocket(self) -> Any:
        """
        The same per-recipient dialogue over a unix socket, where LMTP usually lives.
        """
        hooks = Messages(lambda rcpts: [None, SMTPError("full", code=452, enhanced="4.2.2")])
        server, path = yield start_unix_server(self, hooks=hooks)
        client = yield connect_unix(self, path)
        self.assertEqual(client.greeting.lines, [f"{SERVER_NAME} LMTP"])
        reply = yield client.command("LHLO client.example.test")
        self.assertEqual(reply.code, 250)
        client.send(transaction(["a@example.com", "b@example.com"]))
        replies = yield client.next_replies(6)
        self.assertEqual([r.code for r in replies], [250, 250, 250, 354, 250, 452])
        self.assertEqual(hooks.types, ["LMTP"])

    @inlineCallbacks
    def test_unixSocketAddresses(self) -> Any:
        """
        On a unix socket the session's C{local_address} is the socket's path, as text, and
        the client (which has no address) has an empty C{remote_address}.
        """
        seen: list[tuple[str, str]] = []

        def on_mail_from(address: Address, session: Session) -> None:
            seen.append((session.local_address, session.remote_address))

        server, path = yield start_unix_server(self, on_mail_from=on_mail_from)
        client = yield connect_unix(self, path)
        yield client.command("LHLO client.example.test")
        reply = yield client.command("MAIL FROM:<a@example.com>")
        self.assertEqual(reply.code, 250)
        self.assertEqual(seen, [(path, "")])



# -- real clients ------------------------------------------------------------------------


class SwaksLMTPTests(TestCase):
    """
    C{swaks --protocol LMTP} delivers over TCP and over a unix socket and sees one reply
    per recipient.
    """

    timeout = 60

    def _swaks(self, target: list[str], *args: str) -> Deferred[tuple[int, bytes, bytes]]:
        swaks = require_tool("swaks")
        return run_process(
            [
                swaks,
                "--protocol",
                "LMTP",
                *target,
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

    def _hooks(self) -> Messages:
        def answer(rcpts: list[str]) -> list[Any]:
            return [
                SMTPError(f"{r} is over quota", code=452, enhanced="4.2.2")
                if r.startswith("full")
                else f"delivered to {r}"
                for r in rcpts
            ]

        return Messages(answer, reject=("nobody@example.com",))

    def _check(self, hooks: Messages, code: int, out: bytes, err: bytes) -> None:
        self.assertEqual(code, 0, out + err)
        text = out.decode("utf-8", "replace")
        self.assertIn(f"<-  220 {SERVER_NAME} LMTP", text)
        self.assertIn("-> LHLO swaks.example.test", text)
        self.assertIn("<** 550 5.1.1 no mailbox nobody@example.com", text)
        transcript = text.replace("\r", "").splitlines()
        self.assertIn(" -> .", transcript)
        after_data = transcript[transcript.index(" -> .") + 1 :]
        lines = [line for line in after_data if line.startswith(("<-  ", "<** "))]
        self.assertEqual(
            lines[:3],
            [
                "<-  250 2.0.0 delivered to a@example.com",
                "<** 452 4.2.2 full@example.com is over quota",
                "<-  250 2.0.0 delivered to c@example.com",
            ],
            text,
        )
        self.assertEqual(
            hooks.messages[0][1], ["a@example.com", "full@example.com", "c@example.com"]
        )
        self.assertIn(b"\r\n\r\nLMTP by swaks\r\n", hooks.messages[0][2])
        self.assertEqual(hooks.types, ["LMTP"])

    @inlineCallbacks
    def test_tcp(self) -> Any:
        """
        Over TCP: four recipients, one refused at RCPT, one over quota after the data;
        swaks exits 0 and shows the three per-recipient replies in order.
        """
        hooks = self._hooks()
        port = yield start_server(self, hooks=hooks, lmtp=True)
        code, out, err = yield self._swaks(
            ["--server", "127.0.0.1", "--port", str(port)],
            "--to",
            "a@example.com,nobody@example.com,full@example.com,c@example.com",
            "--body",
            "LMTP by swaks",
        )
        self._check(hooks, code, out, err)

    @inlineCallbacks
    def test_unixSocket(self) -> Any:
        """
        The same over a unix socket (C{swaks --socket}).
        """
        hooks = self._hooks()
        server, path = yield start_unix_server(self, hooks=hooks)
        code, out, err = yield self._swaks(
            ["--socket", path],
            "--to",
            "a@example.com,nobody@example.com,full@example.com,c@example.com",
            "--body",
            "LMTP by swaks",
        )
        self._check(hooks, code, out, err)


class SmtpSourceLMTPTests(TestCase):
    """
    Postfix's C{smtp-source -L}: every message it sends over LMTP is counted exactly once,
    with every recipient answered.
    """

    timeout = 60

    def _hooks(self) -> tuple[dict[str, Any], Any]:
        seen: dict[str, Any] = {"messages": 0, "recipients": set(), "sizes": set(), "types": set()}
        sessions = Counter()

        async def on_data(stream: DataStream, session: Session) -> list[None]:
            n = 0
            async for chunk in stream:
                n += len(chunk)
            seen["messages"] += 1
            seen["sizes"].add(n)
            seen["types"].add(session.transmission_type)
            seen["recipients"].add(len(session.envelope.rcpt_to))
            return [None] * len(session.envelope.rcpt_to)

        return seen, on_data

    def _smtp_source(self, target: str) -> Deferred[tuple[int, bytes, bytes]]:
        tool = require_tool("smtp-source")
        return run_process(
            [
                tool,
                "-L",
                "-s",
                "5",
                "-m",
                "200",
                "-r",
                "2",
                "-l",
                "512",
                "-M",
                "client.example.test",
                "-f",
                "sender@example.com",
                "-t",
                "to@example.com",
                target,
            ],
            timeout=45,
        )

    def _check(self, seen: dict[str, Any], code: int, out: bytes, err: bytes) -> None:
        self.assertEqual(code, 0, out + err)
        self.assertEqual(seen["messages"], 200)
        self.assertEqual(seen["recipients"], {2})
        self.assertEqual(seen["types"], {"LMTP"})
        # smtp-source's headers vary by a few bytes (numbered recipients).
        self.assertGreaterEqual(min(seen["sizes"]), 512)
        self.assertLess(max(seen["sizes"]) - min(seen["sizes"]), 64, seen["sizes"])

    @inlineCallbacks
    def test_tcp(self) -> Any:
        """
        C{smtp-source -L -s 5 -m 200 -r 2} over TCP: 200 messages to two recipients each,
        five sessions at a time; smtp-source reads two replies after each message and
        exits 0; the hook counts exactly 200.
        """
        seen, on_data = self._hooks()
        port = yield start_server(self, on_data=on_data, lmtp=True)
        code, out, err = yield self._smtp_source(f"127.0.0.1:{port}")
        self._check(seen, code, out, err)

    @inlineCallbacks
    def test_unixSocket(self) -> Any:
        """
        The same over a unix socket (C{unix:/path}).
        """
        seen, on_data = self._hooks()
        server, path = yield start_unix_server(self, on_data=on_data)
        code, out, err = yield self._smtp_source(f"unix:{path}")
        self._check(seen, code, out, err)

    @inlineCallbacks
    def test_partialFailureIsSeen(self) -> Any:
        """
        When the hook fails the second recipient of each message with C{452}, smtp-source
        (which aborts on a negative reply) sees the failure after the end of data: the
        per-recipient replies reach a real LMTP client.
        """
        answers = Counter()

        async def on_data(stream: DataStream, session: Session) -> list[Any]:
            await stream.read()
            answers()
            return [None, SMTPError("mailbox full", code=452, enhanced="4.2.2")]

        port = yield start_server(self, on_data=on_data, lmtp=True)
        tool = require_tool("smtp-source")
        code, out, err = yield run_process(
            [
                tool, "-L", "-m", "1", "-r", "2", "-M", "client.example.test",
                "-f", "s@example.com", "-t", "to@example.com", f"127.0.0.1:{port}",
            ],
            timeout=30,
        )
        self.assertNotEqual(code, 0)
        self.assertIn(b"452 4.2.2 mailbox full", err)
        self.assertEqual(answers.count, 1)


# -- the example delivery agent ----------------------------------------------------------


def load_example() -> ModuleType:
    """
    Import C{docs/examples/lmtp_delivery.py} as a module.
    """
    spec = importlib.util.spec_from_file_location("lmtp_delivery_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Runner(ProcessProtocol):
    """
    Run the example as a program; C{ready} fires with its first line of output, C{ended}
    with its exit code.
    """

    def __init__(self) -> None:
        self.ready: Deferred[bytes] = Deferred()
        self.ended: Deferred[int] = Deferred()
        self.out = b""
        self.err = b""

    def outReceived(self, data: bytes) -> None:
        self.out += data
        if b"\n" in self.out and not self.ready.called:
            self.ready.callback(self.out.split(b"\n", 1)[0])

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        if not self.ready.called:
            self.ready.errback(RuntimeError(f"example exited early: {self.err!r}"))
        value = reason.value
        code = value.exitCode if isinstance(value, (ProcessDone, ProcessTerminated)) else -1
        self.ended.callback(code if code is not None else -1)


class ExampleDeliveryAgentTests(TestCase):
    """
    C{docs/examples/lmtp_delivery.py}, the documented LMTP delivery agent, works as shown.
    """

    timeout = 60

    def _maildir_files(self, root: str, user: str) -> list[bytes]:
        new = os.path.join(root, user, "new")
        if not os.path.isdir(new):
            return []
        out = []
        for name in sorted(os.listdir(new)):
            with open(os.path.join(new, name), "rb") as f:
                out.append(f.read())
        return out

    @inlineCallbacks
    def test_perRecipientResults(self) -> Any:
        """
        Imported and listened on a unix socket: an unknown user is refused at RCPT
        (C{550 5.1.1}), a user whose quota the message would exceed gets C{452 4.2.2}
        after the data, the others get C{250} and a file in their Maildir's C{new/} with
        C{Return-Path} and C{Delivered-To} added and the body byte-exact.
        """
        example = load_example()
        root = socket_dir(self)
        agent = example.DeliveryAgent(root, {"alice": 100_000, "bob": 10, "carol": 100_000})
        server = example.make_server(agent, name=SERVER_NAME, disable_reverse_lookup=True)
        path = os.path.join(root, "lmtp.sock")
        yield server.listen(f"unix:{path}")
        self.addCleanup(server.close, 5.0)
        client = yield connect_unix(self, path)
        reply = yield client.command("LHLO mta.example.test")
        self.assertEqual(reply.code, 250)
        body = b"Subject: hi\r\n\r\n.leading dot kept\r\n"
        client.send(
            transaction(
                ["alice@example.com", "nobody@example.com", "bob@example.com", "carol@example.com"],
                b"Subject: hi\r\n\r\n..leading dot kept\r\n",
            )
        )
        replies = yield client.next_replies(1 + 4 + 1 + 3)
        self.assertEqual([r.code for r in replies[:6]], [250, 250, 550, 250, 250, 354])
        self.assertEqual(replies[2].enhanced, "5.1.1")
        data = replies[6:]
        self.assertEqual(
            [(r.code, r.enhanced) for r in data], [(250, "2.0.0"), (452, "4.2.2"), (250, "2.0.0")]
        )
        for user in ("alice", "carol"):
            files = self._maildir_files(root, user)
            self.assertEqual(len(files), 1, user)
            self.assertTrue(files[0].startswith(b"Return-Path: <sender@example.com>\r\n"), files[0])
            self.assertIn(f"Delivered-To: {user}@example.com\r\n".encode(), files[0])
            self.assertTrue(files[0].endswith(body), files[0])
        self.assertEqual(self._maildir_files(root, "bob"), [])
        self.assertEqual(os.listdir(os.path.join(root, "alice", "tmp")), [])

    @inlineCallbacks
    def test_runsAsProgram(self) -> Any:
        """
        C{python lmtp_delivery.py --socket PATH --root DIR --user NAME:QUOTA} listens on
        the socket, says so on its first line, and delivers what swaks sends with
        C{--protocol LMTP}; SIGTERM stops it.
        """
        swaks = require_tool("swaks")
        root = socket_dir(self)
        path = os.path.join(root, "agent.sock")
        runner = _Runner()
        env = dict(os.environ)
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [here, env.get("PYTHONPATH")]))
        process = reactor.spawnProcess(
            runner,
            sys.executable,
            [sys.executable, EXAMPLE, "--socket", path, "--root", root, "--user", "dave:1000000"],
            env=env,
        )

        def stop() -> Deferred[int]:
            try:
                process.signalProcess("TERM")
            except Exception:
                pass
            return runner.ended

        self.addCleanup(stop)
        first = yield runner.ready
        self.assertIn(path.encode(), first)
        code, out, err = yield run_process(
            [
                swaks, "--protocol", "LMTP", "--socket", path, "--from", "s@example.com",
                "--to", "dave@example.com", "--body", "to dave", "--timeout", "20",
            ],
            timeout=30,
        )
        self.assertEqual(code, 0, out + err)
        files = self._maildir_files(root, "dave")
        self.assertEqual(len(files), 1)
        self.assertIn(b"\r\n\r\nto dave\r\n", files[0])
        exit_code = yield stop()
        self.assertEqual(exit_code, 0, runner.err)


# -- a real Postfix ----------------------------------------------------------------------

#: The services a private Postfix instance needs to take mail from sendmail and hand it to
#: an LMTP server; no chroot, so that lmtp(8) reaches a socket anywhere.
_MASTER_CF = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class _Master(ProcessProtocol):
    """
    C{postfix start-fg}: the master runs as our child, so that the test can wait for it
    to end.
    """

    def __init__(self) -> None:
        self.ended: Deferred[None] = Deferred()
        self.output = b""

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)

    def gone(self) -> bool:
        """
        Whether the process has ended.
        """
        return self.ended.called


class PostfixLMTPTests(TestCase):
    """
    A real Postfix, with its own configuration, queue and master process, delivers to the
    server over LMTP on a unix socket (C{default_transport = lmtp:unix:/path}).
    """

    timeout = 60

    def _prerequisites(self) -> tuple[str, str]:
        import grp
        import pwd

        postfix = require_tool("postfix")
        sendmail = require_tool("sendmail")
        if os.geteuid() != 0:
            raise SkipTest("a private Postfix master must be started as root")
        try:
            pwd.getpwnam("postfix")
            grp.getgrnam("postdrop")
        except KeyError:
            raise SkipTest("no postfix user or postdrop group") from None
        return postfix, sendmail

    @inlineCallbacks
    def test_postfixDelivers(self) -> Any:
        """
        C{sendmail -N success,failure -R hdrs -V QQ314159} to three recipients: Postfix's
        lmtp(8) client gives the server an envelope with the DSN fields (RET, ENVID,
        NOTIFY and ORCPT, as Postfix forwards them to a DSN-capable server); the
        recipient refused at RCPT is bounced (C{550 5.1.1}), the one answered C{452 4.2.2}
        after the data is deferred, and the one answered C{250} is sent, as the Postfix
        log says.
        """
        postfix, sendmail = self._prerequisites()
        import pwd

        root = socket_dir(self)
        os.chmod(root, 0o755)
        etc, spool, data = (os.path.join(root, d) for d in ("etc", "spool", "data"))
        for directory in (etc, spool, data):
            os.mkdir(directory, 0o755)
        os.chown(data, pwd.getpwnam("postfix").pw_uid, -1)
        sock = os.path.join(root, "lmtp.sock")
        maillog = os.path.join(root, "maillog")
        with open(os.path.join(etc, "main.cf"), "w") as f:
            f.write(
                "compatibility_level = 3.6\n"
                f"queue_directory = {spool}\n"
                f"data_directory = {data}\n"
                "mail_owner = postfix\n"
                "setgid_group = postdrop\n"
                "inet_interfaces = 127.0.0.1\n"
                "inet_protocols = ipv4\n"
                "myhostname = postfix.example.test\n"
                "mydomain = example.test\n"
                "myorigin = example.test\n"
                "mydestination =\n"
                "relay_domains =\n"
                "alias_maps =\n"
                "alias_database =\n"
                f"default_transport = lmtp:unix:{sock}\n"
                f"relay_transport = lmtp:unix:{sock}\n"
                f"maillog_file = {maillog}\n"
                f"maillog_file_prefixes = {root}\n"
                "biff = no\n"
            )
        with open(os.path.join(etc, "master.cf"), "w") as f:
            f.write(_MASTER_CF)

        delivered = Counter()
        seen: list[tuple[Any, ...]] = []

        def on_rcpt_to(address: Address, session: Session) -> None:
            if address.address.startswith("nobody@"):
                raise SMTPError("No such user here", code=550, enhanced="5.1.1")

        async def on_data(stream: DataStream, session: Session) -> list[Any]:
            body = await stream.read()
            envelope = session.envelope
            rcpts = envelope.rcpt_to
            dsn = [
                (r.address, r.dsn.notify if r.dsn else None, r.dsn.orcpt if r.dsn else None)
                for r in rcpts
            ]
            seen.append(
                (envelope.dsn.ret, envelope.dsn.envid, dsn, body, session.transmission_type)
            )
            delivered()
            return [
                SMTPError("Mailbox full", code=452, enhanced="4.2.2")
                if r.address.startswith("full@")
                else "Delivered"
                for r in rcpts
            ]

        server = SMTPServer(
            on_rcpt_to=on_rcpt_to,
            on_data=on_data,
            lmtp=True,
            name=SERVER_NAME,
            disable_reverse_lookup=True,
        )
        yield server.listen(UNIXServerEndpoint(reactor, sock, mode=0o666))
        master = _Master()
        reactor.spawnProcess(master, postfix, [postfix, "-c", etc, "start-fg"], env=None)

        @inlineCallbacks
        def stop() -> Any:
            # First the server, so that Postfix's cached LMTP connections end, then Postfix.
            yield server.close(5.0)
            if master.gone():
                return
            yield run_process([postfix, "-c", etc, "stop"], timeout=20)
            for _ in range(1500):
                if master.gone():
                    return
                yield task.deferLater(reactor, 0.01, lambda: None)
            # "postfix stop" did not work: kill the master this test started.
            with open(os.path.join(spool, "pid", "master.pid")) as f:
                os.kill(int(f.read().strip()), signal.SIGKILL)
            yield master.ended

        self.addCleanup(stop)

        # sendmail waits and retries (for seconds) until the queue exists and pickup
        # listens: wait for the master to have started its services instead.
        pickup = os.path.join(spool, "public", "pickup")
        for _ in range(2000):
            if os.path.exists(pickup) or master.gone():
                break
            yield task.deferLater(reactor, 0.01, lambda: None)
        self.assertTrue(os.path.exists(pickup), f"Postfix did not start: {master.output!r}")
        message = b"Subject: through Postfix\n\nHello over LMTP.\n"
        code, out, err = yield run_process(
            [
                sendmail, "-C", etc, "-f", "sender@example.org",
                "-N", "success,failure", "-R", "hdrs", "-V", "QQ314159",
                "ok@example.com", "nobody@example.com", "full@example.com",
            ],
            stdin=message,
            timeout=20,
        )
        self.assertEqual(code, 0, out + err)
        yield delivered.wait_for(1).addTimeout(30, reactor)

        def logged() -> str:
            try:
                with open(maillog) as f:
                    return f.read()
            except OSError:
                return ""

        wanted = ("status=sent", "status=deferred", "status=bounced")
        for _ in range(1500):
            if all(w in logged() for w in wanted):
                break
            yield task.deferLater(reactor, 0.01, lambda: None)
        log = logged()
        lines = {
            status: [line for line in log.splitlines() if status in line and "lmtp[" in line]
            for status in wanted
        }
        for status, rcpt, reply in [
            ("status=sent", "to=<ok@example.com>", "250 2.0.0 Delivered"),
            ("status=deferred", "to=<full@example.com>", "452 4.2.2 Mailbox full"),
            ("status=bounced", "to=<nobody@example.com>", "550 5.1.1 No such user here"),
        ]:
            matching = [line for line in lines[status] if rcpt in line and reply in line]
            self.assertEqual(len(matching), 1, log)

        ret, envid, recipients, body, kind = seen[0]
        self.assertEqual((ret, envid, kind), ("HDRS", "QQ314159", "LMTP"))
        self.assertEqual(
            sorted(recipients),  # Postfix orders the recipients itself
            [
                ("full@example.com", ["SUCCESS", "FAILURE"], "rfc822;full@example.com"),
                ("ok@example.com", ["SUCCESS", "FAILURE"], "rfc822;ok@example.com"),
            ],
        )
        self.assertIn(b"\r\nSubject: through Postfix\r\n", body)
        self.assertTrue(body.endswith(b"\r\n\r\nHello over LMTP.\r\n"), body)
