"""
Real-socket tests of hooks with Python's C{smtplib} as the client (run in a thread, so
that the server keeps running in the reactor of the test).
"""

from __future__ import annotations

import io
import smtplib
from email.generator import BytesGenerator
from email.message import EmailMessage
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase

from smtphooks import Address, DataStream, Hooks, Session, SMTPError, SMTPServer

from tests.wire import Counter, later, start_server, with_smtp

MESSAGE = (
    b"From: sender@example.com\r\n"
    b"To: a@example.com\r\n"
    b"Subject: wire test\r\n"
    b"\r\n"
    b"Hello.\r\n"
    b".leading dot\r\n"
    b"Bye.\r\n"
)


class Recorder:
    """
    Hooks that record what they were given; C{on_data} reads the whole body.
    """

    def __init__(self) -> None:
        self.senders: list[str] = []
        self.recipients: list[str] = []
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.closed = Counter()

    def on_mail_from(self, address: Address, session: Session) -> None:
        self.senders.append(address.address)

    def on_rcpt_to(self, address: Address, session: Session) -> None:
        self.recipients.append(address.address)

    async def on_data(self, stream: DataStream, session: Session) -> None:
        body = await stream.read()
        envelope = session.envelope
        assert envelope.mail_from is not None
        self.messages.append(
            (envelope.mail_from.address, [r.address for r in envelope.rcpt_to], body)
        )

    def on_close(self, session: Session) -> None:
        self.closed()


class SmtplibDeliveryTests(TestCase):
    """
    Messages sent with C{smtplib} reach C{on_data} intact, with the envelope the hooks
    accepted.
    """

    timeout = 60

    @inlineCallbacks
    def test_multipleRecipientsOneRejected(self) -> Any:
        """
        A recipient rejected by C{on_rcpt_to} with C{SMTPError(code=550)} is refused with
        550 and its text; the message goes to the other recipients, and C{on_data} sees only
        them in the envelope.
        """
        hooks = Recorder()

        def on_rcpt_to(address: Address, session: Session) -> None:
            hooks.on_rcpt_to(address, session)
            if address.address == "nobody@example.com":
                raise SMTPError("No such user here", code=550)

        port = yield start_server(self, on_rcpt_to=on_rcpt_to, on_data=hooks.on_data)
        refused = yield with_smtp(
            port,
            lambda s: s.sendmail(
                "sender@example.com",
                ["a@example.com", "nobody@example.com", "b@example.com"],
                MESSAGE,
            ),
        )
        self.assertEqual(list(refused), ["nobody@example.com"])
        code, text = refused["nobody@example.com"]
        self.assertEqual(code, 550)
        self.assertIn(b"No such user here", text)
        self.assertEqual(
            hooks.recipients, ["a@example.com", "nobody@example.com", "b@example.com"]
        )
        self.assertEqual(
            hooks.messages,
            [("sender@example.com", ["a@example.com", "b@example.com"], MESSAGE)],
        )

    @inlineCallbacks
    def test_sendMessage(self) -> Any:
        """
        C{send_message} of an L{EmailMessage} delivers exactly the bytes smtplib flattened
        (CRLF line endings, lines starting with a dot unstuffed again), and the envelope
        comes from the headers.
        """
        msg = EmailMessage()
        msg["From"] = "Alice <alice@example.com>"
        msg["To"] = "Bob <bob@example.com>, carol@example.com"
        msg["Subject"] = "Grüße über SMTP"
        msg.set_content("First line.\n.dot line\n..two dots\n.\nLast line.\n")
        out = io.BytesIO()
        BytesGenerator(out, policy=msg.policy).flatten(msg, linesep="\r\n")
        expected = out.getvalue()
        hooks = Recorder()
        port = yield start_server(self, hooks=hooks)
        refused = yield with_smtp(port, lambda s: s.send_message(msg))
        self.assertEqual(refused, {})
        self.assertEqual(len(hooks.messages), 1)
        sender, recipients, body = hooks.messages[0]
        self.assertEqual(sender, "alice@example.com")
        self.assertEqual(recipients, ["bob@example.com", "carol@example.com"])
        self.assertEqual(body, expected)

    @inlineCallbacks
    def test_twoMessagesOneConnection(self) -> Any:
        """
        Two messages in one connection are two transactions: C{session.transaction} is 1
        then 2, and the envelope is empty again when the second MAIL comes.
        """
        seen: list[tuple[str, int, Any, list[Any]]] = []
        transactions: list[int] = []

        def on_mail_from(address: Address, session: Session) -> None:
            envelope = session.envelope
            seen.append(
                (address.address, session.transaction, envelope.mail_from, list(envelope.rcpt_to))
            )

        def on_data(stream: DataStream, session: Session) -> None:
            transactions.append(session.transaction)

        port = yield start_server(self, on_mail_from=on_mail_from, on_data=on_data)

        def send(s: smtplib.SMTP) -> None:
            s.sendmail("one@example.com", ["x@example.com"], MESSAGE)
            s.sendmail("two@example.com", ["y@example.com"], MESSAGE)

        yield with_smtp(port, send)
        self.assertEqual(transactions, [1, 2])
        self.assertEqual(seen, [("one@example.com", 1, None, []), ("two@example.com", 2, None, [])])

    @inlineCallbacks
    def test_sessionFields(self) -> Any:
        """
        Hooks see the client's loopback address and port, the EHLO argument,
        C{client_hostname} C{[127.0.0.1]} (reverse lookup disabled), C{ESMTP}, the server's
        own address, and in C{on_rcpt_to} the sender already in the envelope.  After RSET,
        the next MAIL finds an empty envelope.
        """
        views: list[dict[str, Any]] = []

        def on_mail_from(address: Address, session: Session) -> None:
            views.append(
                {
                    "hook": "mail",
                    "remote": session.remote_address,
                    "remote_port": session.remote_port,
                    "local": session.local_address,
                    "local_port": session.local_port,
                    "helo": session.host_name_appears_as,
                    "opening": session.opening_command,
                    "client_hostname": session.client_hostname,
                    "type": session.transmission_type,
                    "from": session.envelope.mail_from,
                    "rcpts": list(session.envelope.rcpt_to),
                    "id": session.id,
                }
            )

        def on_rcpt_to(address: Address, session: Session) -> None:
            views.append(
                {
                    "hook": "rcpt",
                    "from": session.envelope.mail_from.address,  # type: ignore[union-attr]
                    "rcpts": [r.address for r in session.envelope.rcpt_to],
                    "id": session.id,
                }
            )

        port = yield start_server(self, on_mail_from=on_mail_from, on_rcpt_to=on_rcpt_to)

        def talk(s: smtplib.SMTP) -> int:
            s.ehlo("helo.name.example")
            s.mail("a@example.com")
            s.rcpt("r1@example.com")
            s.rcpt("r2@example.com")
            s.rset()
            s.mail("b@example.com")
            return s.sock.getsockname()[1]  # type: ignore[union-attr, no-any-return]

        client_port = yield with_smtp(port, talk)
        self.assertEqual([v["hook"] for v in views], ["mail", "rcpt", "rcpt", "mail"])
        first = views[0]
        self.assertEqual(first["remote"], "127.0.0.1")
        self.assertEqual(first["remote_port"], client_port)
        self.assertEqual(first["local"], "127.0.0.1")
        self.assertEqual(first["local_port"], port)
        self.assertEqual(first["helo"], "helo.name.example")
        self.assertEqual(first["opening"], "EHLO")
        self.assertEqual(first["client_hostname"], "[127.0.0.1]")
        self.assertEqual(first["type"], "ESMTP")
        self.assertIsNone(first["from"])
        self.assertEqual(first["rcpts"], [])
        self.assertEqual(views[1]["from"], "a@example.com")
        self.assertEqual(views[1]["rcpts"], [])
        self.assertEqual(views[2]["rcpts"], ["r1@example.com"])
        self.assertIsNone(views[3]["from"], "envelope not reset by RSET")
        self.assertEqual(views[3]["rcpts"], [])
        self.assertEqual(len({v["id"] for v in views}), 1)


class SmtplibRejectionTests(TestCase):
    """
    Rejections and failures of hooks reach C{smtplib} with the right codes, and the server
    keeps serving.
    """

    timeout = 60

    @inlineCallbacks
    def test_mailFromCustomCode(self) -> Any:
        """
        C{SMTPError(message, code=553, enhanced="5.7.1")} raised by C{on_mail_from} is
        sent as C{553 5.7.1 message}.
        """

        def on_mail_from(address: Address, session: Session) -> None:
            raise SMTPError("Sender blocked by policy", code=553, enhanced="5.7.1")

        port = yield start_server(self, on_mail_from=on_mail_from)
        error = yield self.assertFailure(
            with_smtp(port, lambda s: s.sendmail("spam@example.com", ["a@example.com"], MESSAGE)),
            smtplib.SMTPSenderRefused,
        )
        self.assertEqual(error.smtp_code, 553)
        self.assertEqual(error.smtp_error, b"5.7.1 Sender blocked by policy")

    @inlineCallbacks
    def test_mailFromDefaultCode(self) -> Any:
        """
        C{SMTPError} without a code from C{on_mail_from} is a 550 rejection.
        """

        def on_mail_from(address: Address, session: Session) -> None:
            raise SMTPError("Go away")

        port = yield start_server(self, on_mail_from=on_mail_from)
        error = yield self.assertFailure(
            with_smtp(port, lambda s: s.sendmail("spam@example.com", ["a@example.com"], MESSAGE)),
            smtplib.SMTPSenderRefused,
        )
        self.assertEqual(error.smtp_code, 550)
        self.assertIn(b"Go away", error.smtp_error)

    @inlineCallbacks
    def test_onDataRejects(self) -> Any:
        """
        C{SMTPError} from C{on_data} (after reading the body) rejects the message with its
        code; the same connection can then send another message, which is accepted.
        """
        bodies: list[bytes] = []

        async def on_data(stream: DataStream, session: Session) -> None:
            body = await stream.read()
            bodies.append(body)
            if b"SPAM" in body:
                raise SMTPError("Looks like spam", code=554, enhanced="5.7.1")

        port = yield start_server(self, on_data=on_data)

        def send(s: smtplib.SMTP) -> tuple[Any, Any]:
            first: tuple[int, bytes | str] | None
            try:
                s.sendmail("a@example.com", ["b@example.com"], b"Subject: SPAM\r\n\r\nbuy\r\n")
            except smtplib.SMTPDataError as e:
                first = (e.smtp_code, e.smtp_error)
            else:
                first = None
            return first, s.sendmail("a@example.com", ["b@example.com"], MESSAGE)

        first, second = yield with_smtp(port, send)
        self.assertEqual(first, (554, b"5.7.1 Looks like spam"))
        self.assertEqual(second, {})
        self.assertEqual(len(bodies), 2)
        self.assertEqual(bodies[1], MESSAGE)

    @inlineCallbacks
    def test_onDataDefaultRejection(self) -> Any:
        """
        C{SMTPError} without a code from C{on_data} is C{450}: the default of the hook.
        """

        def on_data(stream: DataStream, session: Session) -> None:
            raise SMTPError("Not now")

        port = yield start_server(self, on_data=on_data)
        error = yield self.assertFailure(
            with_smtp(port, lambda s: s.sendmail("a@example.com", ["b@example.com"], MESSAGE)),
            smtplib.SMTPDataError,
        )
        self.assertEqual(error.smtp_code, 450)
        self.assertIn(b"Not now", error.smtp_error)

    @inlineCallbacks
    def test_hookCrashIsTemporaryFailure(self) -> Any:
        """
        A hook that raises an unexpected exception gets the client C{451 4.3.0}; the
        traceback is logged; the session and the server go on: the other recipients of the
        message are accepted and a second connection is served.
        """

        def on_rcpt_to(address: Address, session: Session) -> None:
            if address.address == "crash@example.com":
                raise ZeroDivisionError("bug in the hook")

        port = yield start_server(self, on_rcpt_to=on_rcpt_to)
        refused = yield with_smtp(
            port,
            lambda s: s.sendmail("a@example.com", ["crash@example.com", "ok@example.com"], MESSAGE),
        )
        self.assertEqual(list(refused), ["crash@example.com"])
        code, text = refused["crash@example.com"]
        self.assertEqual(code, 451)
        self.assertTrue(text.startswith(b"4.3.0 "), text)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        refused = yield with_smtp(
            port, lambda s: s.sendmail("a@example.com", ["ok@example.com"], MESSAGE)
        )
        self.assertEqual(refused, {})

    @inlineCallbacks
    def test_onDataCrash(self) -> Any:
        """
        An unexpected exception in C{on_data} is C{451 4.3.0}, not an acceptance (no mail
        is lost), and it is logged.
        """

        async def on_data(stream: DataStream, session: Session) -> None:
            await stream.read()
            raise KeyError("bug")

        port = yield start_server(self, on_data=on_data)
        error = yield self.assertFailure(
            with_smtp(port, lambda s: s.sendmail("a@example.com", ["b@example.com"], MESSAGE)),
            smtplib.SMTPDataError,
        )
        self.assertEqual(error.smtp_code, 451)
        self.assertTrue(error.smtp_error.startswith(b"4.3.0 "), error.smtp_error)
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    @inlineCallbacks
    def test_responseCodeAttribute(self) -> Any:
        """
        An exception that is not an L{SMTPError} but has an integer C{response_code} is a
        rejection with that code and the exception's text, and nothing is logged.
        """

        class Refused(Exception):
            response_code = 553

        def on_rcpt_to(address: Address, session: Session) -> None:
            raise Refused("Mailbox name not allowed")

        port = yield start_server(self, on_rcpt_to=on_rcpt_to)
        error = yield self.assertFailure(
            with_smtp(port, lambda s: s.sendmail("a@example.com", ["b@example.com"], MESSAGE)),
            smtplib.SMTPRecipientsRefused,
        )
        code, text = error.recipients["b@example.com"]
        self.assertEqual(code, 553)
        self.assertIn(b"Mailbox name not allowed", text)
        self.assertEqual(self.flushLoggedErrors(), [])

    @inlineCallbacks
    def test_hookTimeout(self) -> Any:
        """
        A hook that never answers is given up after C{hook_timeout} seconds: the client
        gets C{451 4.3.0} and the session continues (RSET and a new MAIL work).
        """
        calls = Counter()

        def on_mail_from(address: Address, session: Session) -> Deferred[None]:
            calls()
            if address.address == "slow@example.com":
                return Deferred()  # never fires
            return later(0)

        port = yield start_server(self, on_mail_from=on_mail_from, hook_timeout=0.5)

        def talk(s: smtplib.SMTP) -> tuple[Any, Any, Any]:
            s.ehlo()
            first = s.mail("slow@example.com")
            second = s.rset()
            third = s.mail("fast@example.com")
            return first, second, third

        first, second, third = yield with_smtp(port, talk)
        self.assertEqual(first[0], 451)
        self.assertTrue(first[1].startswith(b"4.3.0 "), first)
        self.assertEqual(second[0], 250)
        self.assertEqual(third[0], 250)
        self.assertEqual(calls.count, 2)


class Rejecter(Hooks):
    """
    A L{Hooks} subclass that rejects one recipient.
    """

    def on_rcpt_to(self, address: Address, session: Session) -> None:
        if address.address == "bad@example.com":
            raise SMTPError("Rejected by the Hooks subclass", code=550)


class HookStyleTests(TestCase):
    """
    A hook may return a value, a L{Deferred} that fires later, or be a coroutine; and it
    may be given by keyword, attribute, subclass or C{hooks=} object.  All are the same to
    the client.
    """

    timeout = 60

    def _check(self, port: int, text: bytes, code: int = 550) -> Deferred[None]:
        d = with_smtp(
            port,
            lambda s: s.sendmail("a@example.com", ["good@example.com", "bad@example.com"], MESSAGE),
        )

        def check(refused: dict[str, tuple[int, bytes]]) -> None:
            self.assertEqual(list(refused), ["bad@example.com"])
            self.assertEqual(refused["bad@example.com"][0], code)
            self.assertIn(text, refused["bad@example.com"][1])

        return d.addCallback(check)

    @inlineCallbacks
    def test_plainValue(self) -> Any:
        """
        A plain function that returns or raises at once.
        """

        def on_rcpt_to(address: Address, session: Session) -> None:
            if address.address == "bad@example.com":
                raise SMTPError("plain", code=550)

        port = yield start_server(self, on_rcpt_to=on_rcpt_to)
        yield self._check(port, b"plain")

    @inlineCallbacks
    def test_deferredFiredLater(self) -> Any:
        """
        A L{Deferred} that fires (or fails) on a later reactor turn.
        """

        def on_rcpt_to(address: Address, session: Session) -> Deferred[None]:
            d: Deferred[None] = Deferred()
            if address.address == "bad@example.com":
                reactor.callLater(0, d.errback, SMTPError("deferred", code=551))
            else:
                reactor.callLater(0, d.callback, None)
            return d

        port = yield start_server(self, on_rcpt_to=on_rcpt_to)
        yield self._check(port, b"deferred", 551)

    @inlineCallbacks
    def test_coroutine(self) -> Any:
        """
        An C{async def} hook that awaits a L{Deferred} before answering.
        """

        async def on_rcpt_to(address: Address, session: Session) -> None:
            await later(0.01)
            if address.address == "bad@example.com":
                raise SMTPError("coroutine", code=550)

        port = yield start_server(self, on_rcpt_to=on_rcpt_to)
        yield self._check(port, b"coroutine")

    @inlineCallbacks
    def test_attribute(self) -> Any:
        """
        A hook assigned as an attribute after construction is used.
        """
        server = SMTPServer(disable_reverse_lookup=True, name="mx.example.test")

        def on_rcpt_to(address: Address, session: Session) -> None:
            if address.address == "bad@example.com":
                raise SMTPError("attribute", code=550)

        server.on_rcpt_to = on_rcpt_to
        port = yield start_server(self, server)
        yield self._check(port, b"attribute")

    @inlineCallbacks
    def test_subclass(self) -> Any:
        """
        A method of an L{SMTPServer} subclass is a hook.
        """

        class Server(SMTPServer):
            def on_rcpt_to(self, address: Address, session: Session) -> None:
                if address.address == "bad@example.com":
                    raise SMTPError("subclass", code=550)

        port = yield start_server(self, Server(disable_reverse_lookup=True, name="mx.example.test"))
        yield self._check(port, b"subclass")

    @inlineCallbacks
    def test_hooksObject(self) -> Any:
        """
        C{hooks=} an instance of a L{Hooks} subclass supplies the hooks.
        """
        port = yield start_server(self, hooks=Rejecter())
        yield self._check(port, b"Rejected by the Hooks subclass")

    @inlineCallbacks
    def test_keywordOverridesHooksObject(self) -> Any:
        """
        A hook given by keyword wins over the same hook of the C{hooks=} object; the
        object's other hooks are still used.
        """
        closed = Counter()

        class Closing(Rejecter):
            def on_close(self, session: Session) -> None:
                closed()

        def on_rcpt_to(address: Address, session: Session) -> None:
            if address.address == "bad@example.com":
                raise SMTPError("keyword", code=550)

        port = yield start_server(self, hooks=Closing(), on_rcpt_to=on_rcpt_to)
        yield self._check(port, b"keyword")
        yield closed.wait_for(1)
