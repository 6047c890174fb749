"""
Real-socket tests of bad input, limits and options: each gets its exact SMTP reply, and
the server goes on serving other clients.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from smtphooks import Address, Session

from tests.wire import (
    SERVER_NAME,
    Counter,
    WireReply,
    connect,
    open_session,
    start_server,
    still_serving,
)

#: The EHLO keywords of SPEC §6, in the order the server must advertise them.
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


def keywords(reply: WireReply) -> list[str]:
    """
    The extension keywords of an EHLO reply (its lines after the first).
    """
    return [line.split(" ")[0].upper() for line in reply.lines[1:]]


class _Base(TestCase):
    timeout = 60

    @inlineCallbacks
    def expect(self, client: Any, line: str | bytes, code: int, enhanced: str | None) -> Any:
        """
        Send C{line}; check the reply's code and enhanced status code.
        """
        reply = yield client.command(line)
        self.assertEqual((reply.code, reply.enhanced), (code, enhanced), f"{line!r}: {reply}")
        return reply


class CommandErrorTests(_Base):
    """
    Unknown, over-long and HTTP command lines.
    """

    @inlineCallbacks
    def test_unknownCommand(self) -> Any:
        """
        An unknown command is C{500 5.5.2}; the session goes on.
        """
        port = yield start_server(self)
        client = yield open_session(self, port)
        yield self.expect(client, "FROBNICATE now", 500, "5.5.2")
        yield self.expect(client, "NOOP", 250, "2.0.0")
        yield still_serving(self, port)

    @inlineCallbacks
    def test_tooManyUnrecognized(self) -> Any:
        """
        With C{max_unrecognized_commands=3}, three unknown commands are C{500 5.5.2}; the
        fourth is C{421} and the connection is closed.
        """
        port = yield start_server(self, max_unrecognized_commands=3)
        client = yield open_session(self, port)
        client.send(b"X1\r\nX2\r\nX3\r\nX4\r\nNOOP\r\n")
        replies = yield client.next_replies(4)
        self.assertEqual(
            [(r.code, r.enhanced) for r in replies],
            [(500, "5.5.2")] * 3 + [(421, "4.7.0")],
            [str(r) for r in replies],
        )
        yield client.lost
        self.assertEqual(len(client.replies), 6)  # greeting, EHLO, 3 x 500, 421: no NOOP
        yield still_serving(self, port)

    @inlineCallbacks
    def test_lineTooLong(self) -> Any:
        """
        A command line over C{max_command_length} (512) is C{500 5.5.2}; the connection
        goes on with the next line.  (A 100 kB line is in C{test_wire_robustness}.)
        """
        port = yield start_server(self)
        client = yield open_session(self, port)
        reply = yield self.expect(client, "NOOP " + "x" * 600, 500, "5.5.2")
        self.assertIn("too long", reply.text.lower())
        yield self.expect(client, "MAIL FROM:<a@example.com>", 250, "2.1.0")
        yield still_serving(self, port)

    @inlineCallbacks
    def test_lineAtLimit(self) -> Any:
        """
        A command line of exactly C{max_command_length} bytes (CRLF not counted) is
        accepted; one byte more is C{500 5.5.2}.
        """
        port = yield start_server(self, max_command_length=100)
        client = yield open_session(self, port)
        line = "NOOP " + "x" * 95
        self.assertEqual(len(line), 100)
        yield self.expect(client, line, 250, "2.0.0")
        yield self.expect(client, line + "x", 500, "5.5.2")

    @inlineCallbacks
    def test_httpRequest(self) -> Any:
        """
        C{GET / HTTP/1.1} (an HTTP client at the SMTP port) is C{421} and the connection is
        closed; so is C{POST} after EHLO.
        """
        port = yield start_server(self)
        client = yield connect(self, port)
        client.send(b"GET / HTTP/1.1\r\nHost: mx.example.test\r\n\r\n")
        reply = yield client.reply()
        self.assertEqual(reply.code, 421, str(reply))
        yield client.lost
        self.assertEqual(len(client.replies), 2)

        client = yield open_session(self, port)
        client.send(b"POST /upload HTTP/1.0\r\n")
        reply = yield client.reply()
        self.assertEqual((reply.code, reply.enhanced), (421, "4.7.0"), str(reply))
        yield client.lost
        yield still_serving(self, port)

    @inlineCallbacks
    def test_disabledCommand(self) -> Any:
        """
        With C{disabled_commands=["VRFY"]}, VRFY is an unknown command (C{500 5.5.2}); HELP
        no longer lists it.
        """
        port = yield start_server(self, disabled_commands=["VRFY"])
        client = yield open_session(self, port)
        yield self.expect(client, "VRFY postmaster", 500, "5.5.2")
        reply = yield self.expect(client, "HELP", 214, "2.0.0")
        self.assertNotIn("VRFY", reply.text)
        yield still_serving(self, port)

    @inlineCallbacks
    def test_bareLfCommands(self) -> Any:
        """
        Command lines ending in a bare LF are accepted (SPEC §6).
        """
        port = yield start_server(self)
        client = yield connect(self, port)
        client.send(b"EHLO lf.example.test\nNOOP\n")
        replies = yield client.next_replies(2)
        self.assertEqual([r.code for r in replies], [250, 250])


class SequenceTests(_Base):
    """
    Commands out of order are C{503}, and no hook is called.
    """

    @inlineCallbacks
    def test_mailBeforeEhlo(self) -> Any:
        """
        MAIL before HELO/EHLO is C{503} (without an enhanced code: no EHLO yet).
        """
        calls = Counter()
        port = yield start_server(self, on_mail_from=lambda a, s: calls())
        client = yield connect(self, port)
        reply = yield client.command("MAIL FROM:<a@example.com>")
        self.assertEqual(reply.code, 503, str(reply))
        self.assertEqual(calls.count, 0)
        yield still_serving(self, port)

    @inlineCallbacks
    def test_outOfOrder(self) -> Any:
        """
        RCPT before MAIL, DATA before RCPT and a nested MAIL are C{503 5.5.1}; DATA before
        MAIL too; the transaction then completes normally.
        """
        rcpts = Counter()
        port = yield start_server(self, on_rcpt_to=lambda a, s: rcpts())
        client = yield open_session(self, port)
        yield self.expect(client, "RCPT TO:<b@example.com>", 503, "5.5.1")
        yield self.expect(client, "DATA", 503, "5.5.1")
        self.assertEqual(rcpts.count, 0)
        yield self.expect(client, "MAIL FROM:<a@example.com>", 250, "2.1.0")
        yield self.expect(client, "DATA", 503, "5.5.1")
        yield self.expect(client, "MAIL FROM:<c@example.com>", 503, "5.5.1")
        yield self.expect(client, "RCPT TO:<b@example.com>", 250, "2.1.5")
        yield self.expect(client, "DATA", 354, None)
        yield self.expect(client, b"hi\r\n.", 250, "2.0.0")
        yield still_serving(self, port)


    @inlineCallbacks
    def test_ehloResetsEnvelope(self) -> Any:
        """
        A new EHLO in the middle of a transaction ends it: RCPT is then C{503 5.5.1}.
        """
        port = yield start_server(self)
        client = yield open_session(self, port)
        yield self.expect(client, "MAIL FROM:<a@example.com>", 250, "2.1.0")
        reply = yield client.command("EHLO again.example.test")
        self.assertEqual(reply.code, 250)
        yield self.expect(client, "RCPT TO:<b@example.com>", 503, "5.5.1")
        yield self.expect(client, "MAIL FROM:<a@example.com>", 250, "2.1.0")


class AddressTests(_Base):
    """
    Path syntax of MAIL and RCPT: what is refused with 501, and the valid but unusual
    forms that are accepted and handed to the hooks as given.
    """

    @inlineCallbacks
    def _session(self, **options: Any) -> Any:
        self.seen: list[str] = []

        def record(address: Address, session: Session) -> None:
            self.seen.append(address.address)

        port = yield start_server(self, on_mail_from=record, on_rcpt_to=record, **options)
        self.port = port
        client = yield open_session(self, port)
        return client

    @inlineCallbacks
    def test_badSyntax(self) -> Any:
        """
        Bad paths are C{501 5.1.7} for MAIL and C{501 5.1.3} for RCPT; no hook sees them.
        """
        client = yield self._session()
        for path in [
            "<no-at-sign>",
            "<a b@example.com>",
            "<a@@example.com>",
            "<ilo.@example.com>",
            "<.a@example.com>",
            "<a..b@example.com>",
            "<a@-example.com>",
            "<a@[300.1.1.1]>",
            "<a@example.com",
        ]:
            yield self.expect(client, f"MAIL FROM:{path}", 501, "5.1.7")
        yield self.expect(client, "MAIL FROM:<a@example.com>", 250, "2.1.0")
        for path in ["<>", "<no-at-sign>", "<ilo.@example.com>", "<a@[1.2.3]>", "<a b@c.d>"]:
            yield self.expect(client, f"RCPT TO:{path}", 501, "5.1.3")
        self.assertEqual(self.seen, ["a@example.com"])
        yield still_serving(self, self.port)

    @inlineCallbacks
    def test_missingFromTo(self) -> Any:
        """
        C{MAIL} without C{FROM:} and C{RCPT} without C{TO:} are C{501 5.5.4}.
        """
        client = yield self._session()
        yield self.expect(client, "MAIL <a@example.com>", 501, "5.5.4")
        yield self.expect(client, "MAIL FROM:", 501, "5.5.4")
        yield self.expect(client, "MAIL FROM:<a@example.com>", 250, "2.1.0")
        yield self.expect(client, "RCPT <b@example.com>", 501, "5.5.4")

    @inlineCallbacks
    def test_unknownParameter(self) -> Any:
        """
        An unknown MAIL or RCPT parameter is C{555 5.5.4}; a known one is accepted.
        """
        client = yield self._session()
        yield self.expect(client, "MAIL FROM:<a@example.com> FOO=bar", 555, "5.5.4")
        yield self.expect(client, "MAIL FROM:<a@example.com> BODY=8BITMIME", 250, "2.1.0")
        yield self.expect(client, "RCPT TO:<b@example.com> XYZZY", 555, "5.5.4")
        yield self.expect(client, "RCPT TO:<b@example.com> NOTIFY=NEVER", 250, "2.1.5")
        self.assertEqual(self.seen, ["a@example.com", "b@example.com"])

    @inlineCallbacks
    def test_validUnusualForms(self) -> Any:
        """
        The null sender C{<>}, C{<postmaster>} (any case) as a recipient, quoted local
        parts, IPv4 and IPv6 address literals and a source route are accepted; hooks get
        the address as given (C{""} for the null sender, the route dropped).
        """
        client = yield self._session()
        yield self.expect(client, "MAIL FROM:<>", 250, "2.1.0")
        for path in [
            "<postmaster>",
            "<PostMaster>",
            '<"john doe"@example.com>',
            '<"quoted\\"q"@example.com>',
            "<user@[127.0.0.1]>",
            "<user@[IPv6:::1]>",
            "<@relay.example.com:routed@example.com>",
        ]:
            yield self.expect(client, f"RCPT TO:{path}", 250, "2.1.5")
        yield self.expect(client, "RSET", 250, "2.0.0")
        yield self.expect(client, 'mail from: <"a b"@[127.0.0.1]>', 250, "2.1.0")
        self.assertEqual(
            self.seen,
            [
                "",
                "postmaster",
                "PostMaster",
                '"john doe"@example.com',
                '"quoted\\"q"@example.com',
                "user@[127.0.0.1]",
                "user@[IPv6:::1]",
                "routed@example.com",
                '"a b"@[127.0.0.1]',
            ],
        )

    @inlineCallbacks
    def test_lenientAddresses(self) -> Any:
        """
        With C{lenient_addresses=True}, C{<ilo.@host>} (as Japanese mobile carriers send)
        is accepted for MAIL and RCPT and handed to the hooks as given.
        """
        client = yield self._session(lenient_addresses=True)
        yield self.expect(client, "MAIL FROM:<ilo.@host.example>", 250, "2.1.0")
        yield self.expect(client, "RCPT TO:<a..b@host.example>", 250, "2.1.5")
        yield self.expect(client, "RCPT TO:<with space@host.example>", 501, "5.1.3")
        self.assertEqual(self.seen, ["ilo.@host.example", "a..b@host.example"])
        yield still_serving(self, self.port)


class SimpleCommandTests(_Base):
    """
    VRFY, HELP, NOOP, RSET.
    """

    @inlineCallbacks
    def test_simpleCommands(self) -> Any:
        """
        VRFY is C{252}, HELP C{214}, NOOP and RSET C{250}, all with enhanced codes after
        EHLO; RSET in a transaction empties it (RCPT is then C{503}).
        """
        port = yield start_server(self)
        client = yield open_session(self, port)
        yield self.expect(client, "VRFY someone", 252, "2.5.0")
        reply = yield self.expect(client, "HELP", 214, "2.0.0")
        for verb in ("EHLO", "MAIL", "RCPT", "DATA", "QUIT"):
            self.assertIn(verb, reply.text)
        yield self.expect(client, "NOOP", 250, "2.0.0")
        yield self.expect(client, "NOOP anything", 250, "2.0.0")
        yield self.expect(client, "MAIL FROM:<a@example.com>", 250, "2.1.0")
        yield self.expect(client, "RSET", 250, "2.0.0")
        yield self.expect(client, "RCPT TO:<b@example.com>", 503, "5.5.1")
        reply = yield self.expect(client, "QUIT", 221, "2.0.0")
        yield client.lost


class LimitTests(_Base):
    """
    Limits answer with an SMTP reply and keep the server serving.
    """

    @inlineCallbacks
    def test_maxRecipients(self) -> Any:
        """
        With C{max_recipients=2}, the third RCPT is C{452 4.5.3} (no hook call); the
        message goes to the first two.
        """
        bodies: list[list[str]] = []
        rcpts = Counter()

        def on_data(stream: Any, session: Session) -> None:
            bodies.append([r.address for r in session.envelope.rcpt_to])

        port = yield start_server(
            self, max_recipients=2, on_rcpt_to=lambda a, s: rcpts(), on_data=on_data
        )
        client = yield open_session(self, port)
        yield self.expect(client, "MAIL FROM:<a@example.com>", 250, "2.1.0")
        yield self.expect(client, "RCPT TO:<r1@example.com>", 250, "2.1.5")
        yield self.expect(client, "RCPT TO:<r2@example.com>", 250, "2.1.5")
        yield self.expect(client, "RCPT TO:<r3@example.com>", 452, "4.5.3")
        self.assertEqual(rcpts.count, 2)
        yield self.expect(client, "DATA", 354, None)
        yield self.expect(client, b"x\r\n.", 250, "2.0.0")
        self.assertEqual(bodies, [["r1@example.com", "r2@example.com"]])

    @inlineCallbacks
    def _connectionLimit(self, **options: Any) -> Any:
        closed = Counter()
        port = yield start_server(self, on_close=closed, **options)
        one = yield open_session(self, port)
        two = yield open_session(self, port)
        third = yield connect(self, port)
        self.assertEqual(third.greeting.code, 421, str(third.greeting))
        yield third.lost
        yield self.expect(one, "NOOP", 250, "2.0.0")
        yield self.expect(two, "NOOP", 250, "2.0.0")
        yield one.command("QUIT")
        yield closed.wait_for(2)  # the refused one and the one that quit
        yield still_serving(self, port)

    def test_maxClients(self) -> Any:
        """
        With C{max_clients=2}, a third simultaneous connection is greeted with C{421} and
        closed; the first two go on; once one of them has left, a new client is served.
        """
        return self._connectionLimit(max_clients=2)

    def test_maxClientsPerIp(self) -> Any:
        """
        With C{max_clients_per_ip=2}, a third connection from 127.0.0.1 is greeted with
        C{421} and closed; once one has left, a new client is served.
        """
        return self._connectionLimit(max_clients_per_ip=2)

    @inlineCallbacks
    def test_socketTimeoutInData(self) -> Any:
        """
        A client that stops sending in the middle of DATA is timed out too: C{421 4.4.2},
        and the partial message is not delivered.
        """
        delivered = Counter()
        port = yield start_server(self, socket_timeout=0.3, on_data=lambda st, se: delivered())
        client = yield open_session(self, port)
        client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
        yield client.next_replies(3)
        client.send(b"Subject: unfinished\r\n\r\nand then nothing")
        reply = yield client.reply()
        self.assertEqual((reply.code, reply.enhanced), (421, "4.4.2"), str(reply))
        yield client.lost

    @inlineCallbacks
    def test_socketTimeout(self) -> Any:
        """
        With C{socket_timeout=0.3}, an idle client gets C{421 4.4.2} and is disconnected;
        the server goes on.
        """
        closed = Counter()
        port = yield start_server(self, socket_timeout=0.3, on_close=closed)
        client = yield open_session(self, port)
        reply = yield client.reply()
        self.assertEqual((reply.code, reply.enhanced), (421, "4.4.2"), str(reply))
        yield client.lost
        yield closed.wait_for(1)
        yield still_serving(self, port)


class EhloTests(_Base):
    """
    The greeting, the EHLO reply and its options, and enhanced status codes.
    """

    @inlineCallbacks
    def test_greetingNameBanner(self) -> Any:
        """
        The greeting is C{220 <name> ESMTP <banner>}; HELO and EHLO replies start with the
        name.
        """
        port = yield start_server(self, name="smtp.example.org", banner="Welcome, friend")
        client = yield connect(self, port)
        self.assertEqual(client.greeting.code, 220)
        self.assertEqual(client.greeting.lines, ["smtp.example.org ESMTP Welcome, friend"])
        reply = yield client.command("EHLO c.example")
        self.assertTrue(reply.lines[0].startswith("smtp.example.org"), str(reply))
        reply = yield client.command("HELO c.example")
        self.assertEqual(reply.code, 250)
        self.assertTrue(reply.lines[0].startswith("smtp.example.org"), str(reply))

    @inlineCallbacks
    def test_defaultExtensionsInOrder(self) -> Any:
        """
        With default options, EHLO advertises PIPELINING, 8BITMIME, SMTPUTF8, SIZE,
        ENHANCEDSTATUSCODES and DSN in the order of SPEC §6 (any other keyword must also be
        one of SPEC §6, in its place), and nothing that needs TLS or AUTH.  CHUNKING is
        advertised exactly when BDAT is understood.
        """
        port = yield start_server(self)
        client = yield connect(self, port)
        reply = yield client.command("EHLO client.example.test")
        self.assertEqual(reply.code, 250)
        self.assertTrue(reply.lines[0].startswith(SERVER_NAME), str(reply))
        advertised = keywords(reply)
        for keyword in advertised:
            self.assertIn(keyword, SPEC_ORDER, str(reply))
        self.assertEqual(advertised, sorted(advertised, key=SPEC_ORDER.index), str(reply))
        self.assertEqual(len(advertised), len(set(advertised)))
        for keyword in ("PIPELINING", "8BITMIME", "SMTPUTF8", "SIZE", "ENHANCEDSTATUSCODES", "DSN"):
            self.assertIn(keyword, advertised)
        for keyword in ("AUTH", "STARTTLS", "REQUIRETLS"):
            self.assertNotIn(keyword, advertised)
        self.assertIn("SIZE", reply.lines)  # no limit: bare SIZE
        bdat = yield client.command("BDAT 0 LAST")
        self.assertEqual(bdat.code != 500, "CHUNKING" in advertised, str(bdat))
        self.assertEqual("BINARYMIME" in advertised, "CHUNKING" in advertised)

    @inlineCallbacks
    def test_hideOptions(self) -> Any:
        """
        Each C{hide_*} option removes its line from the EHLO reply; hiding all of them
        leaves only the greeting line.
        """
        names = {
            "hide_pipelining": "PIPELINING",
            "hide_8bitmime": "8BITMIME",
            "hide_smtputf8": "SMTPUTF8",
            "hide_size": "SIZE",
            "hide_enhancedstatuscodes": "ENHANCEDSTATUSCODES",
            "hide_dsn": "DSN",
            "hide_chunking": "CHUNKING",
        }
        port = yield start_server(self)
        client = yield connect(self, port)
        default = keywords((yield client.command("EHLO c.example")))
        for option, keyword in names.items():
            options: dict[str, Any] = {option: True}
            port = yield start_server(self, **options)
            client = yield connect(self, port)
            reply = yield client.command("EHLO c.example")
            expected = [k for k in default if k != keyword]
            if keyword == "CHUNKING":
                expected = [k for k in expected if k != "BINARYMIME"]
            self.assertEqual(keywords(reply), expected, option)
        options = {option: True for option in names}
        port = yield start_server(self, **options)
        client = yield connect(self, port)
        reply = yield client.command("EHLO c.example")
        self.assertEqual(len(reply.lines), 1, str(reply))

    @inlineCallbacks
    def test_hiddenExtensionsRefused(self) -> Any:
        """
        A hidden extension is not accepted either: C{BODY=8BITMIME} with C{hide_8bitmime},
        C{SMTPUTF8} with C{hide_smtputf8} and C{NOTIFY=} with C{hide_dsn} are refused
        (501 or 555); C{SIZE=} is still enforced with C{hide_size}.
        """
        port = yield start_server(
            self, hide_8bitmime=True, hide_smtputf8=True, hide_dsn=True, hide_size=True, size=1000
        )
        client = yield open_session(self, port)
        for line in (
            "MAIL FROM:<a@example.com> BODY=8BITMIME",
            "MAIL FROM:<a@example.com> SMTPUTF8",
            "MAIL FROM:<a@example.com> RET=HDRS",
        ):
            reply = yield client.command(line)
            self.assertIn(reply.code, (501, 555), f"{line}: {reply}")
        yield self.expect(client, "MAIL FROM:<a@example.com> SIZE=1001", 552, "5.3.4")
        yield self.expect(client, "MAIL FROM:<a@example.com>", 250, "2.1.0")
        reply = yield client.command("RCPT TO:<b@example.com> NOTIFY=NEVER")
        self.assertIn(reply.code, (501, 555), str(reply))

    @inlineCallbacks
    def test_enhancedCodesAfterEhloOnly(self) -> Any:
        """
        After EHLO every reply carries an enhanced status code; after HELO none does; with
        C{hide_enhancedstatuscodes}, none does after EHLO either.
        """
        lines = [
            "NOOP",
            "VRFY x",
            "FOO",
            "RCPT TO:<b@example.com>",
            "MAIL FROM:<a@example.com>",
            "RCPT TO:<b@example.com>",
            "RSET",
        ]
        port = yield start_server(self)
        client = yield open_session(self, port, "EHLO c.example")
        for line in lines:
            reply = yield client.command(line)
            self.assertIsNotNone(reply.enhanced, f"EHLO, {line}: {reply}")
        client = yield open_session(self, port, "HELO c.example")
        for line in lines:
            reply = yield client.command(line)
            self.assertIsNone(reply.enhanced, f"HELO, {line}: {reply}")
        port = yield start_server(self, hide_enhancedstatuscodes=True)
        client = yield open_session(self, port, "EHLO c.example")
        for line in lines:
            reply = yield client.command(line)
            self.assertIsNone(reply.enhanced, f"hidden, {line}: {reply}")

    @inlineCallbacks
    def test_heloSyntax(self) -> Any:
        """
        EHLO and HELO without an argument are C{501}; a later EHLO works.
        """
        port = yield start_server(self)
        client = yield connect(self, port)
        reply = yield client.command("EHLO")
        self.assertEqual(reply.code, 501, str(reply))
        reply = yield client.command("HELO")
        self.assertEqual(reply.code, 501, str(reply))
        reply = yield client.command("EHLO ok.example")
        self.assertEqual(reply.code, 250, str(reply))
