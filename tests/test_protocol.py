"""
In-memory tests of L{smtphooks._protocol.SMTPProtocol}, driven through
L{smtphooks.SMTPServer}: exact bytes on a L{StringTransport}, time from a
L{Clock}, Deferreds fired by hand.  Nothing here touches a socket or the
reactor.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from smtphooks import Address, DataStream, Session, SMTPError, SMTPServer
from smtphooks._data import HIGH_WATER
from smtphooks._parse import dot_stuff
from smtphooks._protocol import SMTPProtocol

bounded = settings(max_examples=100, derandomize=True, deadline=None, database=None)

NAME = "mx.example"
GREETING = b"220 mx.example ESMTP\r\n"
EHLO_DEFAULT = (
    b"250-mx.example greets [192.0.2.1]\r\n"
    b"250-PIPELINING\r\n"
    b"250-8BITMIME\r\n"
    b"250-SMTPUTF8\r\n"
    b"250-SIZE\r\n"
    b"250-ENHANCEDSTATUSCODES\r\n"
    b"250-DSN\r\n"
    b"250-CHUNKING\r\n"
    b"250 BINARYMIME\r\n"
)
#: SPEC section 6: the order in which EHLO advertises extensions.
SPEC_ORDER = [
    "PIPELINING",
    "8BITMIME",
    "SMTPUTF8",
    "SIZE",
    "AUTH",
    "STARTTLS",
    "ENHANCEDSTATUSCODES",
    "DSN",
    "CHUNKING",
    "BINARYMIME",
    "REQUIRETLS",
]

MAIL_OK = b"250 2.1.0 Sender OK\r\n"
RCPT_OK = b"250 2.1.5 Recipient OK\r\n"
START_DATA = b"354 End data with <CR><LF>.<CR><LF>\r\n"
QUEUED = b"250 2.0.0 OK: message queued\r\n"
HOOK_FAILED = b"451 4.3.0 Temporary server error, try again later\r\n"
HOOK_TIMEOUT = b"451 4.3.0 Timed out processing the command, try again later\r\n"
SIZE_EXCEEDED = b"552 5.3.4 Message size exceeds fixed maximum message size\r\n"
SHUTTING_DOWN = b"421 4.3.2 Service shutting down, closing connection\r\n"


class Hung(Exception):
    """
    The server did not return from C{dataReceived}: it is stuck in a loop.
    """


@contextmanager
def deadline(seconds: float = 1.0) -> Iterator[None]:
    """
    Turn a server that never returns into a test failure (L{Hung}) instead
    of a test run that never ends.
    """

    def alarm(signum: int, frame: object) -> None:
        raise Hung(f"the server did not return within {seconds} seconds (busy loop)")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def feed(protocol: SMTPProtocol, data: bytes, seconds: float = 1.0) -> None:
    """
    Give C{data} to the protocol as one read from the socket, within a
    deadline.
    """
    with deadline(seconds):
        protocol.dataReceived(data)


def make_server(**kwargs: Any) -> SMTPServer:
    """
    A server on a fresh L{Clock}, named C{mx.example}, without reverse lookups.
    """
    kwargs.setdefault("reactor", Clock())
    kwargs.setdefault("name", NAME)
    kwargs.setdefault("disable_reverse_lookup", True)
    return SMTPServer(**kwargs)


def connect(server: SMTPServer, host: str = "192.0.2.1") -> tuple[SMTPProtocol, StringTransport]:
    """
    Connect a new protocol of C{server} to a L{StringTransport}.
    """
    transport = StringTransport(
        hostAddress=IPv4Address("TCP", "198.51.100.25", 25),
        peerAddress=IPv4Address("TCP", host, 50000),
        # A real transport ignores resumeProducing() after loseConnection();
        # the protocol may call it when a hook finishes after a 421.
        lenient=True,
    )
    protocol = server.buildProtocol(transport.getPeer())
    protocol.makeConnection(transport)
    return protocol, transport


def take(transport: StringTransport) -> bytes:
    """
    What the server wrote since the last call.
    """
    value: bytes = transport.value()
    transport.clear()
    return value


def lose(protocol: SMTPProtocol, reason: BaseException | None = None) -> None:
    """
    Tell the protocol that its connection is gone, as the reactor would.
    """
    protocol.connectionLost(Failure(reason or ConnectionDone()))


def clock_of(server: SMTPServer) -> Clock:
    clock = server.clock
    assert isinstance(clock, Clock)
    return clock


class Session_:
    """
    A connected session with helpers: send lines, read what came back.
    """

    def __init__(self, server: SMTPServer, greet: bool = True, ehlo: bool = False) -> None:
        self.server = server
        self.protocol, self.transport = connect(server)
        if greet:
            assert take(self.transport) == GREETING, "no greeting"
        if ehlo:
            self.send(b"EHLO client.example\r\n")
            take(self.transport)

    def send(self, data: bytes) -> bytes:
        feed(self.protocol, data)
        return take(self.transport)

    def line(self, line: str | bytes) -> bytes:
        raw = line.encode("utf-8") if isinstance(line, str) else line
        return self.send(raw + b"\r\n")


@implementer(ILogObserver)
class LogCatcher:
    """
    Collect the log events emitted while it is installed.
    """

    def __init__(self, test: SynchronousTestCase) -> None:
        self.events: list[LogEvent] = []
        globalLogPublisher.addObserver(self)
        test.addCleanup(globalLogPublisher.removeObserver, self)

    def __call__(self, event: LogEvent) -> None:
        self.events.append(event)

    def errors(self) -> list[LogEvent]:
        return [
            e
            for e in self.events
            if e.get("log_level") is not None and e["log_level"].name in ("error", "critical")
        ]


class CloseCounter:
    """
    An C{on_close} hook that remembers every call.
    """

    def __init__(self) -> None:
        self.sessions: list[Session] = []

    def __call__(self, session: Session) -> None:
        self.sessions.append(session)


# -- greeting and EHLO ---------------------------------------------------------


class GreetingTests(SynchronousTestCase):
    """
    The greeting and the replies to HELO and EHLO, byte for byte.
    """

    def test_greeting(self) -> None:
        """
        The greeting is C{220 <name> ESMTP}, without enhanced status code.
        """
        protocol, transport = connect(make_server())
        self.assertEqual(transport.value(), GREETING)

    def test_banner(self) -> None:
        """
        The banner follows C{ESMTP} in the greeting.
        """
        protocol, transport = connect(make_server(banner="Welcome, no UCE"))
        self.assertEqual(transport.value(), b"220 mx.example ESMTP Welcome, no UCE\r\n")

    def test_ehloDefault(self) -> None:
        """
        With the default options EHLO advertises, in SPEC order, PIPELINING,
        8BITMIME, SMTPUTF8, SIZE (without a number: no limit),
        ENHANCEDSTATUSCODES, DSN, CHUNKING and BINARYMIME; no AUTH without
        an C{on_auth}, no STARTTLS without TLS, no REQUIRETLS without TLS.
        """
        s = Session_(make_server())
        self.assertEqual(s.line("EHLO client.example"), EHLO_DEFAULT)

    def test_ehloSize(self) -> None:
        """
        A size limit is advertised as C{SIZE <limit>}.
        """
        s = Session_(make_server(size=1000))
        self.assertEqual(
            s.line("EHLO client.example"), EHLO_DEFAULT.replace(b"250-SIZE\r\n", b"250-SIZE 1000\r\n")
        )

    def test_ehloOrderIsSpecOrder(self) -> None:
        """
        Whatever is hidden, the extensions that remain keep the order of
        SPEC section 6.
        """
        for hidden in [
            {},
            {"hide_pipelining": True},
            {"hide_8bitmime": True, "hide_dsn": True},
            {"hide_smtputf8": True, "hide_size": True, "hide_chunking": True},
            {"hide_enhancedstatuscodes": True},
        ]:
            s = Session_(make_server(**hidden))
            reply = s.line("EHLO client.example").decode("ascii").split("\r\n")[1:-1]
            keywords = [line[4:].split(" ")[0] for line in reply]
            self.assertEqual(keywords, [k for k in SPEC_ORDER if k in keywords], hidden)
            for option, keyword in [
                ("hide_pipelining", "PIPELINING"),
                ("hide_8bitmime", "8BITMIME"),
                ("hide_dsn", "DSN"),
                ("hide_smtputf8", "SMTPUTF8"),
                ("hide_size", "SIZE"),
                ("hide_chunking", "CHUNKING"),
                ("hide_enhancedstatuscodes", "ENHANCEDSTATUSCODES"),
            ]:
                self.assertEqual(keyword not in keywords, option in hidden, (option, hidden))

    def test_heloReply(self) -> None:
        """
        HELO is answered with the server's name alone.
        """
        s = Session_(make_server())
        self.assertEqual(s.line("HELO client.example"), b"250 mx.example\r\n")
        self.assertEqual(s.protocol.session.opening_command, "HELO")
        self.assertEqual(s.protocol.session.host_name_appears_as, "client.example")
        self.assertEqual(s.protocol.session.transmission_type, "SMTP")

    def test_enhancedCodesOnlyAfterEhlo(self) -> None:
        """
        Enhanced status codes appear on replies after EHLO, not before it,
        not after HELO, and not when hidden.
        """
        s = Session_(make_server())
        self.assertEqual(s.line("NOOP"), b"250 OK\r\n")
        s.line("EHLO client.example")
        self.assertEqual(s.line("NOOP"), b"250 2.0.0 OK\r\n")
        s.line("HELO client.example")
        self.assertEqual(s.line("NOOP"), b"250 OK\r\n")
        s = Session_(make_server(hide_enhancedstatuscodes=True))
        s.line("EHLO client.example")
        self.assertEqual(s.line("NOOP"), b"250 OK\r\n")

    def test_sessionAddresses(self) -> None:
        """
        The session knows both ends of the connection; without reverse
        lookup the client's host name is its address in brackets.
        """
        s = Session_(make_server(), ehlo=True)
        session = s.protocol.session
        self.assertEqual(
            (session.remote_address, session.remote_port, session.local_address, session.local_port),
            ("192.0.2.1", 50000, "198.51.100.25", 25),
        )
        self.assertEqual(session.client_hostname, "[192.0.2.1]")
        self.assertEqual(session.transmission_type, "ESMTP")


# -- sequencing and syntax -----------------------------------------------------


class SequenceTests(SynchronousTestCase):
    """
    The server does the sequencing: commands out of order get C{503 5.5.1}
    and never reach a hook.
    """

    def setUp(self) -> None:
        self.calls: list[str] = []
        self.server = make_server(
            on_mail_from=lambda a, s: self.calls.append("mail"),
            on_rcpt_to=lambda a, s: self.calls.append("rcpt"),
            on_data=lambda st, s: self.calls.append("data"),
        )

    def test_beforeHelo(self) -> None:
        """
        MAIL, RCPT and DATA before HELO/EHLO get 503 (plain: no EHLO yet).
        """
        s = Session_(self.server)
        for line in ["MAIL FROM:<a@b.example>", "RCPT TO:<c@d.example>", "DATA"]:
            self.assertEqual(s.line(line), b"503 Error: send HELO/EHLO first\r\n", line)
        self.assertEqual(self.calls, [])

    def test_outOfOrder(self) -> None:
        """
        RCPT before MAIL, DATA before RCPT, and a second MAIL get 503 5.5.1.
        """
        s = Session_(self.server, ehlo=True)
        self.assertEqual(s.line("RCPT TO:<c@d.example>"), b"503 5.5.1 Error: need MAIL command\r\n")
        self.assertEqual(s.line("DATA"), b"503 5.5.1 Error: need MAIL command\r\n")
        self.assertEqual(s.line("MAIL FROM:<a@b.example>"), MAIL_OK)
        self.assertEqual(s.line("DATA"), b"503 5.5.1 Error: need RCPT command\r\n")
        self.assertEqual(
            s.line("MAIL FROM:<a@b.example>"), b"503 5.5.1 Error: nested MAIL command\r\n"
        )
        self.assertEqual(self.calls, ["mail"])

    def test_rsetAndEhloEndTheTransaction(self) -> None:
        """
        RSET and EHLO start a new envelope: RCPT afterwards needs MAIL again.
        """
        s = Session_(self.server, ehlo=True)
        for reset in ["RSET", "EHLO again.example"]:
            s.line("MAIL FROM:<a@b.example>")
            s.line(reset)
            self.assertIsNone(s.protocol.session.envelope.mail_from)
            self.assertEqual(
                s.line("RCPT TO:<c@d.example>"), b"503 5.5.1 Error: need MAIL command\r\n"
            )


class SyntaxTests(SynchronousTestCase):
    """
    Malformed commands get C{501} (or C{500}/C{555}) and never reach a hook.
    """

    CASES: list[tuple[str, bytes]] = [
        ("EHLO", b"501 5.5.4 Syntax: EHLO hostname\r\n"),
        ("HELO", b"501 5.5.4 Syntax: HELO hostname\r\n"),
        ("MAIL", b"501 5.5.4 Syntax: MAIL FROM:<address>\r\n"),
        ("MAIL TO:<a@b.example>", b"501 5.5.4 Syntax: MAIL FROM:<address>\r\n"),
        ("MAIL FROM:<a", b"501 5.1.7 Bad sender address syntax\r\n"),
        ("MAIL FROM:a@b.example", b"501 5.1.7 Bad sender address syntax\r\n"),
        ("MAIL FROM:<a@b.example> SIZE=abc", b"501 5.5.4 Bad SIZE value\r\n"),
        ("MAIL FROM:<a@b.example> BODY=9BIT", b"501 5.5.4 Unsupported BODY type\r\n"),
        ("MAIL FROM:<a@b.example> SMTPUTF8=yes", b"501 5.5.4 SMTPUTF8 takes no value\r\n"),
        ("MAIL FROM:<a@b.example> RET=ALL", b"501 5.5.4 RET must be FULL or HDRS\r\n"),
        (
            "MAIL FROM:<a@b.example> SMTPUTF8 SMTPUTF8",
            b"501 5.5.4 Duplicate parameter SMTPUTF8\r\n",
        ),
        ("MAIL FROM:<a@b.example> FOO=BAR", b"555 5.5.4 Unsupported parameter: FOO\r\n"),
        ("MAIL FROM:<a@b.example> XYZ", b"555 5.5.4 Unsupported parameter: XYZ\r\n"),
        ("DATA now", b"501 5.5.4 Syntax error: this command takes no arguments\r\n"),
        ("RSET now", b"501 5.5.4 Syntax error: this command takes no arguments\r\n"),
        ("VRFY", b"501 5.5.4 Syntax error in parameters or arguments\r\n"),
        ("FOO", b"500 5.5.2 Error: command not recognized\r\n"),
        ("", b"500 5.5.2 Error: command not recognized\r\n"),
    ]

    RCPT_CASES: list[tuple[str, bytes]] = [
        ("RCPT", b"501 5.5.4 Syntax: RCPT TO:<address>\r\n"),
        ("RCPT TO:<>", b"501 5.1.3 Bad recipient address syntax\r\n"),
        ("RCPT TO:c@d.example", b"501 5.1.3 Bad recipient address syntax\r\n"),
        ("RCPT TO:<c@d.example> FOO=1", b"555 5.5.4 Unsupported parameter: FOO\r\n"),
        ("RCPT TO:<c@d.example> NOTIFY=NEVER,SUCCESS", b"501 5.5.4 Bad NOTIFY value\r\n"),
        ("RCPT TO:<c@d.example> NOTIFY=DELAY,DELAY", b"501 5.5.4 Bad NOTIFY value\r\n"),
        ("RCPT TO:<c@d.example> NOTIFY=SOMETIMES", b"501 5.5.4 Bad NOTIFY value\r\n"),
        ("RCPT TO:<c@d.example> ORCPT=nosemicolon", b"501 5.5.4 Bad ORCPT value\r\n"),
    ]

    def test_commands(self) -> None:
        """
        Each malformed command gets its reply; no hook is called.
        """
        calls: list[object] = []
        server = make_server(on_mail_from=lambda a, s: calls.append(a))
        for line, expected in self.CASES:
            s = Session_(server, ehlo=True)
            self.assertEqual(s.line(line), expected, line)
            self.assertIsNone(s.protocol.session.envelope.mail_from, line)
        self.assertEqual(calls, [])

    def test_recipients(self) -> None:
        """
        Each malformed RCPT gets its reply; C{on_rcpt_to} is not called and
        nothing is added to the envelope.
        """
        calls: list[object] = []
        server = make_server(on_rcpt_to=lambda a, s: calls.append(a))
        for line, expected in self.RCPT_CASES:
            s = Session_(server, ehlo=True)
            s.line("MAIL FROM:<a@b.example>")
            self.assertEqual(s.line(line), expected, line)
            self.assertEqual(s.protocol.session.envelope.rcpt_to, [], line)
        self.assertEqual(calls, [])

    def test_vrfyHelpNoop(self) -> None:
        """
        VRFY gets 252, HELP 214 (multi-line), NOOP 250.
        """
        s = Session_(make_server(), ehlo=True)
        self.assertEqual(
            s.line("VRFY alice"),
            b"252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery\r\n",
        )
        help_reply = s.line("HELP")
        self.assertTrue(help_reply.startswith(b"214-2.0.0 Commands: "), help_reply)
        self.assertTrue(help_reply.endswith(b"214 2.0.0 See RFC 5321\r\n"), help_reply)
        self.assertEqual(s.line("NOOP"), b"250 2.0.0 OK\r\n")

    def test_bareLineFeed(self) -> None:
        """
        A command line ended by a bare LF is accepted, as clients do it.
        """
        s = Session_(make_server())
        self.assertEqual(s.send(b"EHLO client.example\n"), EHLO_DEFAULT)
        self.assertEqual(s.send(b"NOOP\n"), b"250 2.0.0 OK\r\n")

    def test_splitCommand(self) -> None:
        """
        A command that arrives one byte at a time is answered once, when its
        line is complete.
        """
        s = Session_(make_server(), ehlo=True)
        out = b"".join(s.send(bytes([c])) for c in b"MAIL FROM:<a@b.example>\r\n")
        self.assertEqual(out, MAIL_OK)


    def test_partialLineHangs(self) -> None:
        """
        Two bytes without a line ending (C{NO}) are kept until the rest of
        the line comes; C{dataReceived} returns.
        """
        s = Session_(make_server(), ehlo=True)
        self.assertEqual(s.send(b"NO"), b"")
        self.assertEqual(s.send(b"OP\r\n"), b"250 2.0.0 OK\r\n")


    def test_lineTooLong(self) -> None:
        """
        A command line over C{max_command_length} gets C{500 5.5.2 Line too
        long}, once, and the session goes on.
        """
        s = Session_(make_server(max_command_length=100), ehlo=True)
        self.assertEqual(s.send(b"NOOP " + b"x" * 200), b"500 5.5.2 Line too long\r\n")
        self.assertEqual(s.send(b"x" * 200 + b"\r\n"), b"")
        self.assertEqual(s.line("NOOP"), b"250 2.0.0 OK\r\n")

    def test_tooManyUnrecognized(self) -> None:
        """
        After C{max_unrecognized_commands} unknown commands, the next one
        gets 421 and the connection is closed.
        """
        s = Session_(make_server(max_unrecognized_commands=2), ehlo=True)
        self.assertEqual(s.line("FOO"), b"500 5.5.2 Error: command not recognized\r\n")
        self.assertEqual(s.line("BAR"), b"500 5.5.2 Error: command not recognized\r\n")
        self.assertEqual(
            s.line("BAZ"), b"421 4.7.0 Too many unrecognized commands, closing connection\r\n"
        )
        self.assertTrue(s.transport.disconnecting)

    def test_disabledCommand(self) -> None:
        """
        A disabled command is answered as unknown.
        """
        s = Session_(make_server(disabled_commands=["VRFY"]), ehlo=True)
        self.assertEqual(s.line("VRFY alice"), b"500 5.5.2 Error: command not recognized\r\n")

    def test_httpRequest(self) -> None:
        """
        An HTTP request line gets 421 and the connection is closed.
        """
        for verb in ["GET", "POST", "HEAD", "PUT", "CONNECT", "OPTIONS"]:
            s = Session_(make_server())
            self.assertEqual(
                s.line(f"{verb} / HTTP/1.1"),
                b"421 This is an SMTP server, not an HTTP server; closing connection\r\n",
            )
            self.assertTrue(s.transport.disconnecting)
            self.assertEqual(s.protocol.session.error, "HTTP request")

    def test_quit(self) -> None:
        """
        QUIT gets 221 and the connection is closed; what follows is ignored.
        """
        s = Session_(make_server(), ehlo=True)
        self.assertEqual(s.send(b"QUIT\r\nNOOP\r\n"), b"221 2.0.0 Bye\r\n")
        self.assertTrue(s.transport.disconnecting)


# -- MAIL and RCPT parameters --------------------------------------------------


class ParameterTests(SynchronousTestCase):
    """
    ESMTP parameters of MAIL and RCPT reach the envelope and the hooks.
    """

    def setUp(self) -> None:
        self.senders: list[Address] = []
        self.recipients: list[Address] = []
        self.server = make_server(
            size=1000,
            on_mail_from=lambda a, s: self.senders.append(a),
            on_rcpt_to=lambda a, s: self.recipients.append(a),
        )
        self.s = Session_(self.server, ehlo=True)

    def test_sizeOverLimit(self) -> None:
        """
        C{SIZE=} above the limit gets 552 5.3.4 before C{on_mail_from} is
        called; at the limit it is accepted and the hook sees it.
        """
        self.assertEqual(self.s.line("MAIL FROM:<a@b.example> SIZE=1001"), SIZE_EXCEEDED)
        self.assertEqual(self.senders, [])
        self.assertEqual(self.s.line("MAIL FROM:<a@b.example> SIZE=1000"), MAIL_OK)
        self.assertEqual(self.senders, [Address("a@b.example", {"SIZE": "1000"})])

    def test_hugeSize(self) -> None:
        """
        A C{SIZE=} with too many digits is refused, not converted.
        """
        self.assertEqual(self.s.line("MAIL FROM:<a@b.example> SIZE=" + "9" * 30), b"501 5.5.4 Bad SIZE value\r\n")

    def test_mailDSN(self) -> None:
        """
        C{RET} and C{ENVID} (xtext-decoded) land in C{envelope.dsn} and in
        the address's C{args}.
        """
        self.assertEqual(
            self.s.line("MAIL FROM:<a@b.example> RET=hdrs ENVID=QQ+2BAA+3D1"), MAIL_OK
        )
        envelope = self.s.protocol.session.envelope
        self.assertEqual((envelope.dsn.ret, envelope.dsn.envid), ("HDRS", "QQ+AA=1"))
        self.assertEqual(self.senders[0].args, {"RET": "hdrs", "ENVID": "QQ+AA=1"})

    def test_recipientDSN(self) -> None:
        """
        C{NOTIFY} (upper-cased, split) and C{ORCPT} (xtext-decoded) land in
        C{Address.dsn}.
        """
        self.s.line("MAIL FROM:<a@b.example>")
        self.assertEqual(
            self.s.line("RCPT TO:<c@d.example> NOTIFY=success,Failure ORCPT=rfc822;c+40d.example"),
            RCPT_OK,
        )
        self.assertEqual(self.s.line("RCPT TO:<e@d.example> NOTIFY=NEVER"), RCPT_OK)
        self.assertEqual(self.s.line("RCPT TO:<f@d.example>"), RCPT_OK)
        first, second, third = self.recipients
        assert first.dsn is not None and second.dsn is not None
        self.assertEqual(first.dsn.notify, ["SUCCESS", "FAILURE"])
        self.assertEqual(first.dsn.orcpt, "rfc822;c@d.example")
        self.assertEqual(second.dsn.notify, ["NEVER"])
        self.assertIsNone(second.dsn.orcpt)
        self.assertIsNone(third.dsn)
        self.assertEqual(self.s.protocol.session.envelope.rcpt_to, self.recipients)

    def test_hiddenDSN(self) -> None:
        """
        With C{hide_dsn}, DSN parameters are unknown parameters.
        """
        s = Session_(make_server(hide_dsn=True), ehlo=True)
        self.assertEqual(
            s.line("MAIL FROM:<a@b.example> RET=FULL"), b"555 5.5.4 Unsupported parameter: RET\r\n"
        )

    def test_body8bitmime(self) -> None:
        """
        C{BODY=8BITMIME} (any case) sets C{envelope.body_type}; C{7BIT} is
        the default; with C{hide_8bitmime} 8BITMIME is refused.
        """
        self.assertEqual(self.s.line("MAIL FROM:<a@b.example> body=8bitmime"), MAIL_OK)
        self.assertEqual(self.s.protocol.session.envelope.body_type, "8BITMIME")
        self.s.line("RSET")
        self.s.line("MAIL FROM:<a@b.example>")
        self.assertEqual(self.s.protocol.session.envelope.body_type, "7BIT")
        s = Session_(make_server(hide_8bitmime=True), ehlo=True)
        self.assertEqual(
            s.line("MAIL FROM:<a@b.example> BODY=8BITMIME"),
            b"501 5.5.4 Unsupported BODY type\r\n",
        )

    def test_smtputf8(self) -> None:
        """
        With C{SMTPUTF8}, non-ASCII addresses are accepted and
        C{envelope.smtputf8} is set.
        """
        self.assertEqual(self.s.line("MAIL FROM:<jösé@exämple.test> SMTPUTF8"), MAIL_OK)
        self.assertTrue(self.s.protocol.session.envelope.smtputf8)
        self.assertEqual(self.s.line("RCPT TO:<用户@例子.测试>"), RCPT_OK)
        self.assertEqual(
            [a.address for a in (*self.senders, *self.recipients)],
            ["jösé@exämple.test", "用户@例子.测试"],
        )

    def test_nonAsciiWithoutSmtputf8(self) -> None:
        """
        Without C{SMTPUTF8}, a non-ASCII sender or recipient gets 553 5.6.7.
        """
        self.assertEqual(
            self.s.line("MAIL FROM:<jösé@exämple.test>"),
            b"553 5.6.7 Non-ASCII address requires the SMTPUTF8 parameter\r\n",
        )
        self.s.line("MAIL FROM:<a@b.example>")
        self.assertEqual(
            self.s.line("RCPT TO:<用户@例子.测试>"),
            b"553 5.6.7 Non-ASCII address requires the SMTPUTF8 parameter\r\n",
        )
        self.assertEqual(self.senders, [Address("a@b.example")])
        self.assertEqual(self.recipients, [])

    def test_nullSenderAndPostmaster(self) -> None:
        """
        The null sender is C{Address("")}; C{<postmaster>} needs no domain.
        """
        self.assertEqual(self.s.line("MAIL FROM:<>"), MAIL_OK)
        self.assertEqual(self.s.line("RCPT TO:<Postmaster>"), RCPT_OK)
        self.assertEqual(self.senders, [Address("")])
        self.assertEqual(self.recipients, [Address("Postmaster")])

    def test_maxRecipients(self) -> None:
        """
        More recipients than C{max_recipients} get 452 4.5.3.
        """
        s = Session_(make_server(max_recipients=2), ehlo=True)
        s.line("MAIL FROM:<a@b.example>")
        self.assertEqual(s.line("RCPT TO:<c@d.example>"), RCPT_OK)
        self.assertEqual(s.line("RCPT TO:<e@d.example>"), RCPT_OK)
        self.assertEqual(s.line("RCPT TO:<f@d.example>"), b"452 4.5.3 Too many recipients\r\n")


# -- hooks: rejections and errors ----------------------------------------------


class HookReplyTests(SynchronousTestCase):
    """
    What the client sees when a hook accepts, rejects or crashes.
    """

    def test_rejections(self) -> None:
        """
        C{SMTPError} rejects with its code and text; without a code, the
        hook's default (550 5.7.1 for MAIL, 550 5.1.1 for RCPT); an exception
        with an integer C{response_code} is honoured too.
        """

        class Custom(Exception):
            response_code = 451

        def on_mail_from(address: Address, session: Session) -> None:
            if address.address == "spam@b.example":
                raise SMTPError("Go away")

        def on_rcpt_to(address: Address, session: Session) -> None:
            local = address.address.split("@")[0]
            if local == "nobody":
                raise SMTPError("No such user", code=550, enhanced="5.1.1")
            if local == "full":
                raise SMTPError("Mailbox full", code=452)
            if local == "later":
                raise Custom("try later")

        s = Session_(make_server(on_mail_from=on_mail_from, on_rcpt_to=on_rcpt_to), ehlo=True)
        self.assertEqual(s.line("MAIL FROM:<spam@b.example>"), b"550 5.7.1 Go away\r\n")
        self.assertEqual(s.line("MAIL FROM:<a@b.example>"), MAIL_OK)
        self.assertEqual(s.line("RCPT TO:<nobody@d.example>"), b"550 5.1.1 No such user\r\n")
        self.assertEqual(s.line("RCPT TO:<full@d.example>"), b"452 4.0.0 Mailbox full\r\n")
        self.assertEqual(s.line("RCPT TO:<later@d.example>"), b"451 4.0.0 try later\r\n")
        self.assertEqual(s.line("RCPT TO:<ok@d.example>"), RCPT_OK)
        self.assertEqual(
            [a.address for a in s.protocol.session.envelope.rcpt_to], ["ok@d.example"]
        )

    def test_crashIsTemporary(self) -> None:
        """
        A hook that raises anything else gives 451 4.3.0 and its traceback
        is logged; the session goes on.
        """

        def on_rcpt_to(address: Address, session: Session) -> None:
            raise ZeroDivisionError("bug")

        s = Session_(make_server(on_rcpt_to=on_rcpt_to), ehlo=True)
        s.line("MAIL FROM:<a@b.example>")
        self.assertEqual(s.line("RCPT TO:<c@d.example>"), HOOK_FAILED)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(s.line("NOOP"), b"250 2.0.0 OK\r\n")

    def test_coroutineAndDeferredHooks(self) -> None:
        """
        A coroutine hook and a hook returning a fired Deferred answer at
        once, like plain functions.
        """

        async def on_mail_from(address: Address, session: Session) -> None:
            await succeed(None)
            raise SMTPError("async no", code=553)

        s = Session_(
            make_server(
                on_mail_from=on_mail_from, on_rcpt_to=lambda a, s: succeed(None)
            ),
            ehlo=True,
        )
        self.assertEqual(s.line("MAIL FROM:<a@b.example>"), b"553 5.0.0 async no\r\n")


# -- pipelining and hook timeouts ----------------------------------------------


class PipeliningTests(SynchronousTestCase):
    """
    A pending hook stops the processing of the input (and the reading of
    the transport): replies go out in command order.
    """

    def test_pendingHookPausesInput(self) -> None:
        """
        While the first recipient's hook is pending, the pipelined commands
        after it are not answered (nor is the second hook called) and the
        transport is paused; when the Deferred fires, every reply comes in
        order and the transport is resumed.
        """
        gate: Deferred[None] = Deferred()
        seen: list[str] = []

        def on_rcpt_to(address: Address, session: Session) -> Deferred[None] | None:
            seen.append(address.address)
            return gate if address.address == "slow@d.example" else None

        s = Session_(make_server(on_rcpt_to=on_rcpt_to), ehlo=True)
        out = s.send(
            b"MAIL FROM:<a@b.example>\r\n"
            b"RCPT TO:<slow@d.example>\r\n"
            b"RCPT TO:<fast@d.example>\r\n"
            b"DATA\r\n"
        )
        self.assertEqual(out, MAIL_OK)
        self.assertEqual(seen, ["slow@d.example"])
        self.assertEqual(s.transport.producerState, "paused")
        # More input meanwhile is kept, not answered.
        self.assertEqual(s.send(b"hello\r\n.\r\nNOOP\r\n"), b"")
        gate.callback(None)
        self.assertEqual(
            take(s.transport),
            RCPT_OK + RCPT_OK + START_DATA + QUEUED + b"250 2.0.0 OK\r\n",
        )
        self.assertEqual(seen, ["slow@d.example", "fast@d.example"])
        self.assertEqual(s.transport.producerState, "producing")

    def test_rejectionWhilePipelined(self) -> None:
        """
        A pending hook that rejects keeps its place in the order.
        """
        gate: Deferred[None] = Deferred()
        s = Session_(make_server(on_mail_from=lambda a, s: gate), ehlo=True)
        self.assertEqual(s.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n"), b"")
        gate.errback(SMTPError("Not you"))
        self.assertEqual(
            take(s.transport),
            b"550 5.7.1 Not you\r\n503 5.5.1 Error: need MAIL command\r\n",
        )

    def test_hookTimeout(self) -> None:
        """
        A hook that does not answer within C{hook_timeout} gets 451 4.3.0;
        the commands behind it are answered then; its late result is
        ignored.
        """
        late: Deferred[None] = Deferred()
        s = Session_(make_server(hook_timeout=10, on_rcpt_to=lambda a, s: late), ehlo=True)
        clock = clock_of(s.server)
        s.line("MAIL FROM:<a@b.example>")
        self.assertEqual(s.send(b"RCPT TO:<c@d.example>\r\nNOOP\r\n"), b"")
        clock.advance(9.9)
        self.assertEqual(take(s.transport), b"")
        clock.advance(0.1)
        self.assertEqual(take(s.transport), HOOK_TIMEOUT + b"250 2.0.0 OK\r\n")
        self.assertEqual(s.transport.producerState, "producing")
        late.callback(None)  # too late: ignored
        self.assertEqual(take(s.transport), b"")
        self.assertEqual(s.protocol.session.envelope.rcpt_to, [])

    def test_coroutineHookTimeout(self) -> None:
        """
        A coroutine hook awaiting a Deferred that never fires is cancelled
        after C{hook_timeout}: 451 4.3.0, and nothing is logged as an error.
        """
        never: Deferred[None] = Deferred()

        async def on_mail_from(address: Address, session: Session) -> None:
            await never

        catcher = LogCatcher(self)
        s = Session_(make_server(hook_timeout=5, on_mail_from=on_mail_from), ehlo=True)
        self.assertEqual(s.line("MAIL FROM:<a@b.example>"), b"")
        clock_of(s.server).advance(5)
        self.assertEqual(take(s.transport), HOOK_TIMEOUT)
        self.assertIsNone(s.protocol.session.envelope.mail_from)
        self.assertEqual(catcher.errors(), [])

    def test_pendingHookIsNotIdleness(self) -> None:
        """
        Time spent waiting for a hook does not count as the client's idle
        time: the socket timeout does not fire while a hook is pending.
        """
        gate: Deferred[None] = Deferred()
        s = Session_(
            make_server(socket_timeout=30, hook_timeout=100, on_mail_from=lambda a, s: gate),
            ehlo=True,
        )
        s.line("MAIL FROM:<a@b.example>")
        clock_of(s.server).advance(90)
        self.assertEqual(take(s.transport), b"")
        gate.callback(None)
        self.assertEqual(take(s.transport), MAIL_OK)


# -- timeouts ------------------------------------------------------------------


class SocketTimeoutTests(SynchronousTestCase):
    """
    An idle client gets C{421 4.4.2} after C{socket_timeout} seconds.
    """

    def test_idle(self) -> None:
        """
        After C{socket_timeout} seconds without input: 421 4.4.2, the
        connection is closed, and C{session.error} says why; C{on_close}
        runs once the connection is gone.
        """
        closes = CloseCounter()
        s = Session_(make_server(socket_timeout=30, on_close=closes), ehlo=True)
        clock = clock_of(s.server)
        clock.advance(29)
        self.assertEqual(take(s.transport), b"")
        clock.advance(1)
        self.assertEqual(take(s.transport), b"421 4.4.2 Timeout, closing connection\r\n")
        self.assertTrue(s.transport.disconnecting)
        self.assertEqual(s.protocol.session.error, "timeout")
        lose(s.protocol)
        lose(s.protocol)
        self.assertEqual(closes.sessions, [s.protocol.session])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_inputResetsTimer(self) -> None:
        """
        Every command restarts the idle timer.
        """
        s = Session_(make_server(socket_timeout=30), ehlo=True)
        clock = clock_of(s.server)
        for _ in range(5):
            clock.advance(20)
            self.assertEqual(s.line("NOOP"), b"250 2.0.0 OK\r\n")
        clock.advance(29.9)
        self.assertEqual(take(s.transport), b"")
        clock.advance(0.1)
        self.assertEqual(take(s.transport), b"421 4.4.2 Timeout, closing connection\r\n")

    def test_oneTimerForAllConnections(self) -> None:
        """
        However many connections are idle, the server keeps one timer for
        their deadlines, and each still times out C{socket_timeout} after
        its own last input.
        """
        server = make_server(socket_timeout=30)
        clock = clock_of(server)
        sessions = []
        for _ in range(50):
            sessions.append(Session_(server, ehlo=True))
            clock.advance(0.5)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        # At t=25 the last one talks again: its deadline moves to t=55.
        self.assertEqual(sessions[-1].line("NOOP"), b"250 2.0.0 OK\r\n")
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        clock.advance(30 - 25)  # t=30: the first one (input at t=0) is due
        timed_out = [s for s in sessions if take(s.transport)]
        self.assertEqual(timed_out, sessions[:1])
        clock.advance(24)  # t=54: all but the last are due
        timed_out = [s for s in sessions[1:] if take(s.transport)]
        self.assertEqual(timed_out, sessions[1:-1])
        clock.advance(0.9)
        self.assertEqual(take(sessions[-1].transport), b"")
        clock.advance(0.1)
        self.assertEqual(take(sessions[-1].transport), b"421 4.4.2 Timeout, closing connection\r\n")
        for s in sessions:
            lose(s.protocol)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_closingClientMustRead(self) -> None:
        """
        After its C{221}, a client that neither reads nor hangs up is cut off
        C{socket_timeout} later, even if it goes on sending.
        """
        s = Session_(make_server(socket_timeout=30), ehlo=True)
        clock = clock_of(s.server)
        self.assertEqual(s.line("QUIT"), b"221 2.0.0 Bye\r\n")
        self.assertTrue(s.transport.disconnecting)
        for _ in range(2):
            clock.advance(10)
            s.send(b"NOOP\r\n")
        clock.advance(9.9)
        self.assertFalse(s.transport.disconnected)
        clock.advance(0.1)
        self.assertEqual(take(s.transport), b"")
        self.assertTrue(s.transport.disconnected)  # abortConnection()


# -- DATA ----------------------------------------------------------------------


class DataTests(SynchronousTestCase):
    """
    DATA: the stream the hook reads, its end, its replies.
    """

    def transaction(self, server: SMTPServer) -> Session_:
        s = Session_(server, ehlo=True)
        s.line("MAIL FROM:<a@b.example>")
        s.line("RCPT TO:<c@d.example>")
        self.assertEqual(s.line("DATA"), START_DATA)
        return s

    def test_bodyByteExact(self) -> None:
        """
        The hook gets the body dot-unstuffed, CRLF kept, and bare CR/LF
        sequences that look like an end (smuggling) are data.
        """
        bodies: list[bytes] = []

        async def on_data(stream: DataStream, session: Session) -> None:
            bodies.append(await stream.read())

        body = b"Subject: x\r\n\r\n.leading dot\r\na\n.\nb\r.\r\nc\n.\r\nd\r.\ne\r\n..\r\n"
        s = self.transaction(make_server(on_data=on_data))
        self.assertEqual(s.send(dot_stuff(body)), QUEUED)
        self.assertEqual(bodies, [body])
        self.assertEqual(s.protocol.session.transaction, 2)
        self.assertIsNone(s.protocol.session.envelope.mail_from)

    def test_onDataAfter354(self) -> None:
        """
        C{on_data} is called once the C{354} is on its way, so the client can
        send the body while the hook starts; with the body in the same read
        as DATA (a client that does not wait), it is called before the body
        is fed to it.
        """
        seen: list[bytes] = []
        bodies: list[bytes] = []

        async def on_data(stream: DataStream, session: Session) -> None:
            seen.append(transport.value())
            bodies.append(await stream.read())

        s = Session_(make_server(on_data=on_data), ehlo=True)
        transport = s.transport
        s.line("MAIL FROM:<a@b.example>")
        s.line("RCPT TO:<c@d.example>")
        transport.clear()
        self.assertEqual(s.line("DATA"), START_DATA)
        self.assertEqual(seen, [START_DATA])
        self.assertEqual(s.send(b"x\r\n.\r\n"), QUEUED)
        s.line("MAIL FROM:<a@b.example>")
        s.line("RCPT TO:<c@d.example>")
        transport.clear()
        self.assertEqual(s.send(b"DATA\r\ny\r\n.\r\n"), START_DATA + QUEUED)
        self.assertEqual(seen[1], b"")
        self.assertEqual(bodies, [b"x\r\n", b"y\r\n"])

    def test_autoDrain(self) -> None:
        """
        A hook that returns at once without reading gets 250 after the end
        of the data, and the server never stops reading meanwhile.
        """
        s = self.transaction(make_server(on_data=lambda stream, session: None))
        line = b"x" * 1022 + b"\r\n"
        for _ in range(16):
            self.assertEqual(s.send(line * 64), b"")
            self.assertEqual(s.transport.producerState, "producing")
        self.assertEqual(s.send(b".\r\n"), QUEUED)

    def test_partialReadThenReturn(self) -> None:
        """
        A hook that reads one chunk and returns: the rest is discarded and
        the hook's text answers the end of data.
        """
        got: list[bytes] = []

        async def on_data(stream: DataStream, session: Session) -> str:
            async for chunk in stream:
                got.append(chunk)
                break
            return "Queued as 1234"

        s = self.transaction(make_server(on_data=on_data))
        self.assertEqual(s.send(b"first\r\n"), b"")
        self.assertEqual(got, [b"first"])
        self.assertEqual(s.send(b"x" * 500_000 + b"\r\n.\r\n"), b"250 2.0.0 Queued as 1234\r\n")

    def test_customText(self) -> None:
        """
        A string returned by C{on_data} is the text of the 250 reply.
        """

        async def on_data(stream: DataStream, session: Session) -> str:
            await stream.read()
            return "Queued as ABC123"

        s = self.transaction(make_server(on_data=on_data))
        self.assertEqual(s.send(b"hi\r\n.\r\n"), b"250 2.0.0 Queued as ABC123\r\n")

    def test_garbageResult(self) -> None:
        """
        A result that is neither None nor a string gives 451 4.3.0 and an
        error in the log.
        """
        s = self.transaction(make_server(on_data=lambda stream, session: 42))
        self.assertEqual(s.send(b"hi\r\n.\r\n"), HOOK_FAILED)
        errors = self.flushLoggedErrors(TypeError)
        self.assertEqual(len(errors), 1)
        self.assertIn("on_data returned 42", str(errors[0].value))

    def test_crash(self) -> None:
        """
        An C{on_data} that raises gives 451 4.3.0 after the end of data, and
        its traceback is logged.
        """

        async def on_data(stream: DataStream, session: Session) -> None:
            await stream.read()
            raise KeyError("bug")

        s = self.transaction(make_server(on_data=on_data))
        self.assertEqual(s.send(b"hi\r\n.\r\n"), HOOK_FAILED)
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    def test_rejection(self) -> None:
        """
        C{SMTPError} from C{on_data} answers the end of data; without a
        code, the default is 450 4.7.1.
        """
        errors = iter([SMTPError("Spam", code=554, enhanced="5.7.1"), SMTPError("Later")])

        async def on_data(stream: DataStream, session: Session) -> None:
            await stream.read()
            raise next(errors)

        s = self.transaction(make_server(on_data=on_data))
        self.assertEqual(s.send(b"hi\r\n.\r\n"), b"554 5.7.1 Spam\r\n")
        s.line("MAIL FROM:<a@b.example>")
        s.line("RCPT TO:<c@d.example>")
        s.line("DATA")
        self.assertEqual(s.send(b"hi\r\n.\r\n"), b"450 4.7.1 Later\r\n")

    def test_hookTimeoutAfterEnd(self) -> None:
        """
        An C{on_data} that has not answered C{hook_timeout} seconds after
        the end of the data gets 451 4.3.0; its late answer is ignored and
        the session goes on.
        """
        late: Deferred[str] = Deferred()
        s = self.transaction(make_server(hook_timeout=20, on_data=lambda stream, session: late))
        self.assertEqual(s.send(b"hi\r\n.\r\n"), b"")
        self.assertEqual(s.transport.producerState, "paused")
        clock_of(s.server).advance(20)
        self.assertEqual(take(s.transport), HOOK_TIMEOUT)
        self.assertEqual(s.transport.producerState, "producing")
        late.callback("too late")
        self.assertEqual(take(s.transport), b"")
        self.assertEqual(s.line("MAIL FROM:<a@b.example>"), MAIL_OK)

    def test_binarymimeNeedsBdat(self) -> None:
        """
        A C{BODY=BINARYMIME} transaction cannot use DATA: 503 5.5.1.
        """
        s = Session_(make_server(), ehlo=True)
        s.line("MAIL FROM:<a@b.example> BODY=BINARYMIME")
        s.line("RCPT TO:<c@d.example>")
        self.assertEqual(s.line("DATA"), b"503 5.5.1 Error: BODY=BINARYMIME requires BDAT\r\n")

    def test_sizeLimit(self) -> None:
        """
        A body over the size limit gets 552 5.3.4 whatever the hook
        returned; the hook's stream ends early with C{size_exceeded} set,
        having held no more than the limit; the session goes on.
        """
        seen: list[tuple[bool, int, int]] = []

        async def on_data(stream: DataStream, session: Session) -> str:
            total = 0
            async for chunk in stream:
                total += len(chunk)
            seen.append((stream.size_exceeded, stream.byte_length, total))
            return "accepted anyway"

        s = self.transaction(make_server(size=100, on_data=on_data))
        self.assertEqual(s.send(b"x" * 60 + b"\r\n"), b"")
        self.assertEqual(s.send(b"y" * 60 + b"\r\n" + b"z" * 10_000 + b"\r\n"), b"")
        self.assertEqual(s.send(b".\r\n"), SIZE_EXCEEDED)
        [(exceeded, length, total)] = seen
        self.assertTrue(exceeded)
        self.assertLessEqual(length, 100)
        self.assertEqual(length, total)
        self.assertEqual(s.line("MAIL FROM:<a@b.example>"), MAIL_OK)

    def test_sizeLimitHookIgnoresStream(self) -> None:
        """
        Also when the hook did not read anything, an oversized body gets 552.
        """
        s = self.transaction(make_server(size=100, on_data=lambda stream, session: None))
        self.assertEqual(s.send(b"x" * 200 + b"\r\n.\r\n"), SIZE_EXCEEDED)

    def test_connectionLostDuringData(self) -> None:
        """
        When the client goes away in the middle of the body, the hook's
        stream fails, C{session.error} says so, and nothing is logged as an
        unexpected error.
        """
        failures: list[Failure] = []

        async def on_data(stream: DataStream, session: Session) -> None:
            await stream.read()

        def on_data_wrapper(stream: DataStream, session: Session) -> Deferred[None]:
            d = Deferred.fromCoroutine(on_data(stream, session))
            d.addErrback(failures.append)
            return d

        closes = CloseCounter()
        s = self.transaction(make_server(on_data=on_data_wrapper, on_close=closes))
        s.send(b"half a message\r\n")
        lose(s.protocol, ConnectionLost("gone"))
        self.assertEqual(len(failures), 1)
        self.assertEqual(s.protocol.session.error, "connection lost during DATA")
        self.assertEqual(len(closes.sessions), 1)


class BackpressureTests(SynchronousTestCase):
    """
    Flow control: the server stops reading the client while the hook's
    consumer lags, and while the client does not read its replies.
    """

    LINE = b"x" * 1022 + b"\r\n"
    READ = LINE * 64  # 64 KiB, one read from a socket

    def test_slowHook(self) -> None:
        """
        An C{on_data} that reads nothing until a Deferred fires: once more
        than HIGH_WATER (256 KiB) is queued the transport is paused; when the
        hook reads, it is resumed; the hook gets every byte.
        """
        gate: Deferred[None] = Deferred()
        chunks: list[bytes] = []

        async def on_data(stream: DataStream, session: Session) -> None:
            await gate
            async for chunk in stream:
                chunks.append(chunk)

        s = Session_(make_server(on_data=on_data), ehlo=True)
        s.line("MAIL FROM:<a@b.example>")
        s.line("RCPT TO:<c@d.example>")
        s.line("DATA")
        sent = 0
        while s.transport.producerState == "producing":
            s.send(self.READ)
            sent += len(self.READ)
            self.assertLessEqual(sent, HIGH_WATER + 2 * len(self.READ))
        self.assertGreater(sent, HIGH_WATER)
        self.assertEqual(s.transport.producerState, "paused")
        gate.callback(None)
        self.assertEqual(s.transport.producerState, "producing")
        self.assertEqual(s.send(b".\r\n"), QUEUED)
        self.assertEqual(b"".join(chunks), self.READ * (sent // len(self.READ)))

    def test_pipeConsumer(self) -> None:
        """
        A hook that pipes the stream to a consumer: when the consumer pauses
        its producer, the server's transport is paused; when it resumes, the
        transport is resumed.
        """
        consumer = StringTransport()
        done: list[object] = []

        def on_data(stream: DataStream, session: Session) -> Deferred[None]:
            d = stream.pipe(consumer)
            d.addCallback(done.append)
            return d

        s = Session_(make_server(on_data=on_data), ehlo=True)
        s.line("MAIL FROM:<a@b.example>")
        s.line("RCPT TO:<c@d.example>")
        s.line("DATA")
        producer = consumer.producer
        assert producer is not None
        producer.pauseProducing()
        self.assertEqual(s.transport.producerState, "paused")
        producer.resumeProducing()
        self.assertEqual(s.transport.producerState, "producing")
        self.assertEqual(s.send(b"hello\r\n.\r\n"), QUEUED)
        self.assertEqual(consumer.value(), b"hello\r\n")
        self.assertEqual(done, [None])
        self.assertIsNone(consumer.producer)

    def test_writeSide(self) -> None:
        """
        The protocol is the transport's streaming producer: when the
        transport's write buffer is full (it calls C{pauseProducing}), the
        client is not read; C{resumeProducing} reads it again.  A pending
        hook and a full write buffer hold the transport paused together.
        """
        gate: Deferred[None] = Deferred()
        s = Session_(make_server(on_mail_from=lambda a, s: gate), ehlo=True)
        self.assertIs(s.transport.producer, s.protocol)
        self.assertTrue(s.transport.streaming)
        s.protocol.pauseProducing()
        self.assertEqual(s.transport.producerState, "paused")
        s.protocol.resumeProducing()
        self.assertEqual(s.transport.producerState, "producing")

        s.line("MAIL FROM:<a@b.example>")  # the hook is now pending
        s.protocol.pauseProducing()
        gate.callback(None)
        self.assertEqual(take(s.transport), MAIL_OK)
        self.assertEqual(s.transport.producerState, "paused")
        s.protocol.resumeProducing()
        self.assertEqual(s.transport.producerState, "producing")


# -- connection lifecycle ------------------------------------------------------


class ConnectTests(SynchronousTestCase):
    """
    C{on_connect}, the early talker, and C{on_close} exactly once.
    """

    def test_connectRejected(self) -> None:
        """
        C{on_connect} raising C{SMTPError} gets 554 (default) and the
        connection is closed; C{on_close} runs exactly once.
        """
        closes = CloseCounter()

        def on_connect(session: Session) -> None:
            raise SMTPError("Go away")

        protocol, transport = connect(make_server(on_connect=on_connect, on_close=closes))
        self.assertEqual(transport.value(), b"554 Go away\r\n")
        self.assertTrue(transport.disconnecting)
        lose(protocol)
        lose(protocol)
        self.assertEqual(len(closes.sessions), 1)
        self.assertEqual(closes.sessions[0].error, "connection rejected")

    def test_connectRejectedWithCode(self) -> None:
        """
        C{on_connect} may choose the code of its rejection.
        """

        def on_connect(session: Session) -> None:
            raise SMTPError("Busy", code=421)

        protocol, transport = connect(make_server(on_connect=on_connect))
        self.assertEqual(transport.value(), b"421 Busy\r\n")
        self.assertTrue(transport.disconnecting)

    def test_connectCrashes(self) -> None:
        """
        C{on_connect} raising anything else gets 421, is logged, and the
        connection is closed; C{on_close} runs once.
        """
        closes = CloseCounter()

        def on_connect(session: Session) -> None:
            raise ValueError("bug")

        protocol, transport = connect(make_server(on_connect=on_connect, on_close=closes))
        self.assertEqual(transport.value(), b"421 Temporary server error, try again later\r\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        lose(protocol)
        self.assertEqual(len(closes.sessions), 1)

    def test_connectTimeout(self) -> None:
        """
        An C{on_connect} that never answers: after C{hook_timeout}, 421 and
        close.
        """
        never: Deferred[None] = Deferred()
        server = make_server(hook_timeout=3, on_connect=lambda s: never)
        protocol, transport = connect(server)
        self.assertEqual(transport.value(), b"")
        clock_of(server).advance(3)
        self.assertEqual(transport.value(), b"421 Temporary server error, try again later\r\n")
        self.assertTrue(transport.disconnecting)

    def test_earlyTalker(self) -> None:
        """
        A client that sends a command before the greeting (while
        C{on_connect} is pending) gets 421 instead of the greeting, and the
        connection is closed; C{on_close} runs once.
        """
        closes = CloseCounter()
        gate: Deferred[None] = Deferred()
        protocol, transport = connect(make_server(on_connect=lambda s: gate, on_close=closes))
        feed(protocol, b"EHLO client.example\r\n")
        self.assertEqual(transport.value(), b"")
        gate.callback(None)
        self.assertEqual(
            transport.value(),
            b"421 Protocol error: data sent before the greeting; closing connection\r\n",
        )
        self.assertTrue(transport.disconnecting)
        self.assertEqual(protocol.session.error, "early talker")
        lose(protocol)
        lose(protocol)
        self.assertEqual(len(closes.sessions), 1)

    def test_earlyTalkerDuringConnectHook(self) -> None:
        """
        An early talker whose bytes arrive while C{on_connect} is pending:
        the transport keeps reading then, so the bytes are seen before the
        greeting is due, and the client gets 421 instead of 220.
        """
        gate: Deferred[None] = Deferred()
        protocol, transport = connect(make_server(on_connect=lambda s: gate))
        self.assertEqual(transport.producerState, "producing")
        feed(protocol, b"EHLO client.example\r\n")
        self.assertEqual(transport.value(), b"")
        gate.callback(None)
        output = transport.value()
        self.assertTrue(output.startswith(b"421 "), output)
        self.assertEqual(protocol.session.error, "early talker")

    def test_pendingConnectKeepsReading(self) -> None:
        """
        While C{on_connect} is pending, the server keeps reading, so that it
        sees an early talker; a flood longer than a command line is cut off
        at once (test_earlyFloodDuringLookup), so reading costs no memory.
        """
        gate: Deferred[None] = Deferred()
        protocol, transport = connect(make_server(on_connect=lambda s: gate))
        self.assertEqual(transport.producerState, "producing")
        gate.callback(None)
        self.assertEqual(transport.value(), GREETING)
        self.assertEqual(transport.producerState, "producing")

    def test_earlyFloodDuringLookup(self) -> None:
        """
        An early talker that sends more than a command line's worth while
        the reverse lookup is under way is cut off at once.
        """
        resolver = FakeResolver()
        server = make_server(disable_reverse_lookup=False, resolver=resolver)
        protocol, transport = connect(server)
        self.assertEqual(transport.value(), b"")
        feed(protocol, b"x" * 1000)
        self.assertEqual(
            transport.value(),
            b"421 Protocol error: data sent before the greeting; closing connection\r\n",
        )
        self.assertTrue(transport.disconnecting)

    def test_onCloseOnce(self) -> None:
        """
        C{on_close} runs exactly once for each way a connection ends: QUIT,
        the client going away, an error, a timeout.
        """
        closes = CloseCounter()
        server = make_server(on_close=closes, socket_timeout=5)
        ends: list[Callable[[Session_], object]] = [
            lambda s: s.line("QUIT"),
            lambda s: None,
            lambda s: s.line("GET / HTTP/1.0"),
            lambda s: clock_of(server).advance(5),
        ]
        for end in ends:
            s = Session_(server, ehlo=True)
            end(s)
            lose(s.protocol)
            lose(s.protocol)
        self.assertEqual(len(closes.sessions), len(ends))
        self.assertEqual(len({id(session) for session in closes.sessions}), len(ends))
        self.assertEqual(server.connections, [])

    def test_onCloseCrash(self) -> None:
        """
        An C{on_close} that raises is logged; nothing else happens.
        """

        def on_close(session: Session) -> None:
            raise RuntimeError("bug in on_close")

        s = Session_(make_server(on_close=on_close))
        lose(s.protocol)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_maxClients(self) -> None:
        """
        A connection over C{max_clients} gets 421 and is closed; when one
        goes away, a new one is served.
        """
        server = make_server(max_clients=1)
        first = Session_(server)
        protocol, transport = connect(server)
        self.assertEqual(
            transport.value(), b"421 Too many connections, try again later\r\n"
        )
        self.assertTrue(transport.disconnecting)
        lose(protocol)
        lose(first.protocol)
        Session_(server)


class FakeResolver:
    """
    Just enough of an L{IResolver} for the reverse lookup: each
    C{lookupPointer} returns a Deferred the test fires.
    """

    def __init__(self) -> None:
        self.queries: list[tuple[str, Deferred[Any]]] = []

    def lookupPointer(self, name: str, timeout: object = None) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.queries.append((name, d))
        return d

    def answer(self, hostname: str) -> None:
        from twisted.names import dns

        name, d = self.queries.pop(0)
        record = dns.RRHeader(name, dns.PTR, payload=dns.Record_PTR(hostname))
        d.callback(([record], [], []))


class ReverseLookupTests(SynchronousTestCase):
    """
    The PTR lookup of the client's address, before the greeting.
    """

    def test_found(self) -> None:
        """
        The greeting waits for the lookup; its answer is C{client_hostname},
        lower-cased, without the final dot.
        """
        resolver = FakeResolver()
        protocol, transport = connect(make_server(disable_reverse_lookup=False, resolver=resolver))
        self.assertEqual(transport.value(), b"")
        self.assertEqual(resolver.queries[0][0], "1.2.0.192.in-addr.arpa")
        resolver.answer("Client.Example.")
        self.assertEqual(transport.value(), GREETING)
        self.assertEqual(protocol.session.client_hostname, "client.example")

    def test_failure(self) -> None:
        """
        A failed lookup leaves C{[address]}.
        """
        resolver = FakeResolver()
        protocol, transport = connect(make_server(disable_reverse_lookup=False, resolver=resolver))
        resolver.queries[0][1].errback(Exception("NXDOMAIN"))
        self.assertEqual(transport.value(), GREETING)
        self.assertEqual(protocol.session.client_hostname, "[192.0.2.1]")

    def test_timeout(self) -> None:
        """
        A lookup that does not answer is given up after a few seconds.
        """
        resolver = FakeResolver()
        server = make_server(disable_reverse_lookup=False, resolver=resolver)
        protocol, transport = connect(server)
        clock_of(server).advance(server._reverse_lookup_timeout)
        self.assertEqual(transport.value(), GREETING)
        self.assertEqual(protocol.session.client_hostname, "[192.0.2.1]")

    def test_badName(self) -> None:
        """
        A PTR answer that is not a host name is not used.
        """
        resolver = FakeResolver()
        protocol, transport = connect(make_server(disable_reverse_lookup=False, resolver=resolver))
        resolver.answer("evil name\r\n250 ok")
        self.assertEqual(transport.value(), GREETING)
        self.assertEqual(protocol.session.client_hostname, "[192.0.2.1]")


# -- graceful close ------------------------------------------------------------


class ServerCloseTests(SynchronousTestCase):
    """
    C{server.close()}: idle sessions get 421 now, sessions in a transaction
    finish it first, the rest get 421 after C{close_timeout}.
    """

    def test_idleSession(self) -> None:
        """
        A session without a transaction gets 421 at once; C{close()} fires
        once the connection is gone.
        """
        closes = CloseCounter()
        server = make_server(on_close=closes)
        s = Session_(server, ehlo=True)
        d = server.close()
        self.assertEqual(take(s.transport), SHUTTING_DOWN)
        self.assertTrue(s.transport.disconnecting)
        self.assertNoResult(d)
        lose(s.protocol)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(len(closes.sessions), 1)
        self.assertEqual(clock_of(server).getDelayedCalls(), [])

    def test_transactionFinishes(self) -> None:
        """
        A session in a transaction finishes it, then gets 421.
        """
        server = make_server()
        s = Session_(server, ehlo=True)
        s.line("MAIL FROM:<a@b.example>")
        d = server.close()
        self.assertEqual(take(s.transport), b"")
        self.assertEqual(s.line("RCPT TO:<c@d.example>"), RCPT_OK)
        self.assertEqual(s.line("DATA"), START_DATA)
        self.assertEqual(s.send(b"hello\r\n.\r\n"), QUEUED + SHUTTING_DOWN)
        self.assertTrue(s.transport.disconnecting)
        lose(s.protocol)
        self.successResultOf(d)

    def test_rsetEndsTransaction(self) -> None:
        """
        RSET ends the transaction in progress: 250, then 421.
        """
        server = make_server()
        s = Session_(server, ehlo=True)
        s.line("MAIL FROM:<a@b.example>")
        server.close()
        self.assertEqual(s.line("RSET"), b"250 2.0.0 OK\r\n" + SHUTTING_DOWN)

    def test_closeTimeout(self) -> None:
        """
        A session still in its transaction after C{close_timeout} gets 421;
        C{close()} fires when it is gone.
        """
        closes = CloseCounter()
        server = make_server(close_timeout=30, on_close=closes)
        idle = Session_(server, ehlo=True)
        busy = Session_(server, ehlo=True)
        busy.line("MAIL FROM:<a@b.example>")
        d = server.close()
        self.assertEqual(take(idle.transport), SHUTTING_DOWN)
        lose(idle.protocol)
        clock = clock_of(server)
        clock.advance(29)
        self.assertEqual(take(busy.transport), b"")
        self.assertNoResult(d)
        clock.advance(1)
        self.assertEqual(take(busy.transport), SHUTTING_DOWN)
        self.assertTrue(busy.transport.disconnecting)
        lose(busy.protocol)
        self.successResultOf(d)
        self.assertEqual(len(closes.sessions), 2)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_unresponsiveClientAborted(self) -> None:
        """
        A client that does not go away after its 421 is aborted 5 seconds
        after C{close_timeout}.
        """
        server = make_server(close_timeout=10)
        s = Session_(server, ehlo=True)
        s.line("MAIL FROM:<a@b.example>")
        server.close()
        clock_of(server).advance(10)
        self.assertFalse(s.transport.disconnected)
        clock_of(server).advance(5)
        self.assertTrue(s.transport.disconnected)

    def test_newConnectionRefused(self) -> None:
        """
        A connection that arrives while the server closes gets 421.
        """
        server = make_server()
        server.close()
        protocol, transport = connect(server)
        self.assertEqual(transport.value(), b"421 Service shutting down, closing connection\r\n")
        self.assertTrue(transport.disconnecting)

    def test_ehloEndsTransaction(self) -> None:
        """
        EHLO in the middle of a transaction abandons it: during a close, the
        session must not start another transaction, and gets 421.
        """
        server = make_server()
        s = Session_(server, ehlo=True)
        s.line("MAIL FROM:<a@b.example>")
        server.close()
        s.line("EHLO client.example")
        out = s.line("MAIL FROM:<a@b.example>")
        self.assertTrue(s.transport.disconnecting, out)


    def test_pendingConnectHookThenClose(self) -> None:
        """
        A session whose C{on_connect} is pending when the server closes is
        not in a transaction: when the hook finishes, it gets 421, not a
        greeting.
        """
        gate: Deferred[None] = Deferred()
        server = make_server(on_connect=lambda s: gate)
        protocol, transport = connect(server)
        server.close()
        gate.callback(None)
        self.assertEqual(transport.value(), b"421 Service shutting down, closing connection\r\n")
        self.assertTrue(transport.disconnecting)



# -- random command sequences ----------------------------------------------------

# Command lines the property test draws from: good ones, bad ones, garbage.
VOCABULARY = [
    "EHLO client.example",
    "HELO client.example",
    "MAIL FROM:<a@b.example>",
    "MAIL FROM:<>",
    "MAIL FROM:<a@b.example> SIZE=10 BODY=8BITMIME",
    "MAIL FROM:<broken",
    "MAIL FROM:<a@b.example> BOGUS=1",
    "RCPT TO:<c@d.example>",
    "RCPT TO:<no@d.example>",
    "RCPT TO:<c@d.example> NOTIFY=NEVER,SUCCESS",
    "RCPT TO:<>",
    "DATA",
    "RSET",
    "NOOP",
    "VRFY alice",
    "HELP",
    "FOO bar",
    "",
    "\x00\x7f garbage \x1b[0m",
    "MAIL FROM:<\udcff@b.example>",
]


def expected_codes(lines: list[str], body_lines: list[str]) -> list[int]:
    """
    A model of the server: the code of each reply to C{lines} (each DATA
    line followed by C{body_lines} and C{"."}), with C{on_rcpt_to} refusing
    C{no@...}.
    """
    codes: list[int] = []
    helo = mail = False
    recipients = 0
    unrecognized = 0
    stream: list[str] = []
    for line in lines:
        stream.append(line)
        if line == "DATA":
            stream.extend(body_lines)
            stream.append(".")
    in_data = False
    for line in stream:
        if in_data:
            if line == ".":
                codes.append(250)
                in_data = False
                mail, recipients = False, 0
            continue
        verb = line.split(" ")[0].upper()
        if verb in ("EHLO", "HELO"):
            codes.append(250)
            helo, mail, recipients = True, False, 0
        elif verb == "MAIL":
            if not helo or mail:
                codes.append(503)
            elif "broken" in line or "\udcff" in line:
                codes.append(501)
            elif "BOGUS" in line:
                codes.append(555)
            else:
                codes.append(250)
                mail = True
        elif verb == "RCPT":
            if not helo or not mail:
                codes.append(503)
            elif "<>" in line or "NEVER," in line:
                codes.append(501)
            elif "no@" in line:
                codes.append(550)
            else:
                codes.append(250)
                recipients += 1
        elif verb == "DATA":
            if not helo or not mail or not recipients:
                codes.append(503)
            else:
                codes.append(354)
                in_data = True
        elif verb in ("RSET", "NOOP"):
            codes.append(250)
            if verb == "RSET":
                mail, recipients = False, 0
        elif verb == "VRFY":
            codes.append(252)
        elif verb == "HELP":
            codes.append(214)
        else:
            unrecognized += 1
            if unrecognized > 10:
                codes.append(421)
                break
            codes.append(500)
    return codes


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    """
    C{data} cut at the given offsets (taken modulo its length).
    """
    if not data:
        return []
    points = sorted({c % len(data) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


def codes_of(output: bytes) -> list[int]:
    """
    The code of each complete reply in C{output}.
    """
    codes = []
    for line in output.split(b"\r\n")[:-1]:
        if line[3:4] != b"-":
            codes.append(int(line[:3]))
    return codes


class RandomSequenceTests(SynchronousTestCase):
    """
    Random command sequences, cut into reads at random places, with hooks
    that answer at once or later: the replies match a model of the server,
    one per command line, in order; nothing raises; the session is never
    wedged and C{on_close} runs once.
    """

    def run_sequence(
        self, lines: list[str], cuts: list[int] | None, delayed: bool, lf_only: bool
    ) -> None:
        """
        Send C{lines} cut at C{cuts} (at each line end when L{None}) and check
        the replies.
        """
        clock = Clock()
        closes = CloseCounter()

        def on_rcpt_to(address: Address, session: Session) -> Deferred[None] | None:
            if delayed:
                d: Deferred[None] = Deferred()
                if address.address.startswith("no@"):
                    clock.callLater(1, d.errback, SMTPError("No such user", code=550))
                else:
                    clock.callLater(1, d.callback, None)
                return d
            if address.address.startswith("no@"):
                raise SMTPError("No such user", code=550)
            return None

        async def on_data(stream: DataStream, session: Session) -> None:
            async for chunk in stream:
                pass

        server = make_server(reactor=clock, on_rcpt_to=on_rcpt_to, on_data=on_data, on_close=closes)
        protocol, transport = connect(server)
        take(transport)
        body_lines = ["Subject: test", "", ".dot", "body"]
        ending = b"\n" if lf_only else b"\r\n"
        pieces = []
        for line in lines:
            pieces.append(line.encode("utf-8", "surrogateescape") + ending)
            if line == "DATA":
                pieces.append(dot_stuff("\r\n".join(body_lines).encode() + b"\r\n"))
        if cuts is not None:
            pieces = split_at(b"".join(pieces), cuts)
        for piece in pieces:
            feed(protocol, piece, 0.25)
            clock.advance(0.5)
        for _ in range(len(lines) + 1):
            clock.advance(1)
        output = take(transport)
        expected = expected_codes(lines, body_lines)
        self.assertEqual(codes_of(output), expected, output)
        if expected[-1:] == [421]:
            self.assertTrue(transport.disconnecting)
        else:
            # Not wedged: the session still answers.
            self.assertFalse(transport.disconnecting)
            self.assertEqual(transport.producerState, "producing")
            feed(protocol, b"NOOP\r\n", 0.5)
            self.assertEqual(codes_of(take(transport)), [250])
        lose(protocol)
        self.assertEqual(len(closes.sessions), 1)
        self.assertEqual(server.connections, [])

    @bounded
    @given(
        lines=st.lists(st.sampled_from(VOCABULARY), max_size=25),
        delayed=st.booleans(),
        lf_only=st.booleans(),
    )
    def test_wholeLines(self, lines: list[str], delayed: bool, lf_only: bool) -> None:
        """
        Each command line (and each message) arrives in a read of its own.
        """
        self.run_sequence(lines, None, delayed, lf_only)

    @bounded
    @given(
        lines=st.lists(st.sampled_from(VOCABULARY), max_size=25),
        cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
        delayed=st.booleans(),
        lf_only=st.booleans(),
    )
    def test_anySplit(self, lines: list[str], cuts: list[int], delayed: bool, lf_only: bool) -> None:
        """
        The same bytes cut anywhere, as TCP may deliver them.
        """
        self.run_sequence(lines, cuts, delayed, lf_only)

