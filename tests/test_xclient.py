"""
Postfix XCLIENT and XFORWARD: the sans-IO attribute parsers (tables and a Hypothesis
property), who is trusted, what an accepted command does to the session, and, once the
commands are wired into the protocol, the dialogue over a real socket with a raw client
and with C{swaks --xclient-*}.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from smtphooks import Address, DataStream, Session, SMTPServer
from smtphooks import _errors as R
from smtphooks._parse import ParseError
from smtphooks._session import Envelope
from smtphooks._xclient import (
    TEMPUNAVAIL,
    UNAVAILABLE,
    XCLIENT_KEYWORD,
    XFORWARD_KEYWORD,
    apply_xclient,
    apply_xforward,
    is_trusted,
    parse_xclient,
    parse_xforward,
)

from tests.support import require_tool, run_process
from tests.wire import LOCAL, SERVER_NAME, Counter, connect, open_session

bounded = settings(max_examples=200, derandomize=True, deadline=None, database=None)


class ParseXclientTests(SynchronousTestCase):
    """
    L{parse_xclient}: attributes of XCLIENT.
    """

    def test_valid(self) -> None:
        """
        Each attribute parses and is normalized: names upper-cased, xtext decoded,
        C{IPV6:} removed, ports without leading zeros, PROTO upper-cased, special values
        upper-cased; a name given twice keeps its last value.
        """
        cases: list[tuple[bytes, dict[str, str]]] = [
            (b"ADDR=192.0.2.9", {"ADDR": "192.0.2.9"}),
            (b"addr=IPV6:2001:DB8::9", {"ADDR": "2001:db8::9"}),
            (b"ADDR=ipv6:2001:db8:0:0:0:0:0:9", {"ADDR": "2001:db8::9"}),
            (b"ADDR=2001:db8::9", {"ADDR": "2001:db8::9"}),
            (b"ADDR=[unavailable]", {"ADDR": UNAVAILABLE}),
            (
                b"NAME=mail.example.org ADDR=192.0.2.9 PORT=04242",
                {"NAME": "mail.example.org", "ADDR": "192.0.2.9", "PORT": "4242"},
            ),
            (b"NAME=[TempUnavail]", {"NAME": TEMPUNAVAIL}),
            (b"NAME=[UNAVAILABLE]", {"NAME": UNAVAILABLE}),
            (b"NAME=under_score.example", {"NAME": "under_score.example"}),
            (b"PROTO=esmtp", {"PROTO": "ESMTP"}),
            (b"PROTO=SMTP", {"PROTO": "SMTP"}),
            (b"HELO=[192.0.2.9]", {"HELO": "[192.0.2.9]"}),
            (b"HELO=[IPv6:2001:db8::9]", {"HELO": "[IPv6:2001:db8::9]"}),
            (b"LOGIN=user+40example.com", {"LOGIN": "user@example.com"}),
            (b"LOGIN=J+C3+B6rg+20M+C3+BCller", {"LOGIN": "J\u00f6rg M\u00fcller"}),
            (b"LOGIN=[UNAVAILABLE]", {"LOGIN": UNAVAILABLE}),
            (b"DESTADDR=198.51.100.1 DESTPORT=25", {"DESTADDR": "198.51.100.1", "DESTPORT": "25"}),
            (b"PORT=0 PORT=65535", {"PORT": "65535"}),
            (b"NAME=a.example  ADDR=192.0.2.1", {"NAME": "a.example", "ADDR": "192.0.2.1"}),
        ]
        for argument, expected in cases:
            self.assertEqual(parse_xclient(argument), expected, argument)

    def test_invalid(self) -> None:
        """
        Each bad argument gets C{501 5.5.4}: nothing, no C{=}, an empty value, an unknown
        name (XFORWARD-only ones included), a value over 255 characters, control or
        non-ASCII bytes, bad xtext, and values that are not valid for their attribute.
        """
        cases = [
            b"",
            b"ADDR",
            b"ADDR=",
            b"=192.0.2.1",
            b"FOO=bar",
            b"IDENT=x",
            b"SOURCE=LOCAL",
            b"REVERSE_NAME=a.example",
            b"NAME=" + b"a" * 256,
            b"HELO=" + b"a" * 256,
            b"NAME=a.example\rADDR=192.0.2.1",
            b"NAME=a.example\tADDR=192.0.2.1",
            b"NAME=a.example\x00",
            b"NAME=\xc3\xa9.example",
            b"NAME=a+0D+0Ab.example",
            b"HELO=a+0Db",
            b"LOGIN=user+0D+0A",
            b"LOGIN=a+7Fb",
            b"LOGIN=+C2+85",
            b"NAME=a+zz",
            b"LOGIN=+FF+FE",
            b"ADDR=192.0.2",
            b"ADDR=192.0.2.01",
            b"ADDR=IPV6:192.0.2.1",
            b"ADDR=fe80::1%eth0",
            b"ADDR=[192.0.2.1]",
            b"ADDR=[TEMPUNAVAIL]",
            b"ADDR=mail.example.org",
            b"PORT=65536",
            b"PORT=-1",
            b"PORT=123456",
            b"PORT=+D9+A0",
            b"DESTPORT=x",
            b"DESTADDR=nowhere",
            b"PROTO=LMTP",
            b"PROTO=[UNAVAILABLE]",
            b"NAME=-bad.example",
            b"NAME=bad-.example",
            b"NAME=bad..example",
            b"NAME=bad.example.",
            b"NAME=192.0.2.1",
            b"NAME=" + b"a" * 64 + b".example",
            b"NAME=a+20b",
            b"HELO=a+20b",
            b"HELO=<a.example>",
            b"HELO=user@a.example",
            b'HELO=a"b',
            b"LOGIN=" + b"+41" * 86,
        ]
        for argument in cases:
            e = self.assertRaises(ParseError, parse_xclient, argument)
            self.assertEqual((e.reply.code, e.reply.enhanced), (501, "5.5.4"), argument)

    def test_messages(self) -> None:
        """
        The 501 texts say what is wrong, naming the attribute but never echoing a value;
        a long unknown name is cut.
        """
        cases = [
            (b"", "Syntax: XCLIENT attribute=value ..."),
            (b"ADDR", "Error: attribute=value expected"),
            (b"FOO=1", "Bad XCLIENT attribute name: FOO"),
            (b"X" * 100 + b"=1", "Bad XCLIENT attribute name: " + "X" * 32 + "..."),
            (b"ADDR=" + b"1" * 300, "Error: attribute value too long"),
            (b"ADDR=not+0Aan+0Daddress", "Bad ADDR syntax"),
        ]
        for argument, text in cases:
            e = self.assertRaises(ParseError, parse_xclient, argument)
            self.assertEqual(e.reply.text, text)

    def test_longest(self) -> None:
        """
        A raw value of exactly 255 characters is accepted (a 255-character host name).
        """
        name = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 63])
        self.assertEqual(len(name), 255)
        self.assertEqual(parse_xclient(b"NAME=" + name.encode()), {"NAME": name})


class ParseXforwardTests(SynchronousTestCase):
    """
    L{parse_xforward}: attributes of XFORWARD.
    """

    def test_valid(self) -> None:
        """
        Each attribute parses; PROTO may be any short token, IDENT any token, SOURCE is
        LOCAL or REMOTE, and every attribute takes C{[UNAVAILABLE]}.
        """
        cases: list[tuple[bytes, dict[str, str]]] = [
            (
                b"NAME=spike.porcupine.org ADDR=168.100.189.2 PROTO=ESMTP",
                {"NAME": "spike.porcupine.org", "ADDR": "168.100.189.2", "PROTO": "ESMTP"},
            ),
            (b"HELO=spike.porcupine.org", {"HELO": "spike.porcupine.org"}),
            (b"ADDR=IPV6:::1 PORT=25", {"ADDR": "::1", "PORT": "25"}),
            (b"PROTO=QMQP", {"PROTO": "QMQP"}),
            (b"PROTO=" + b"P" * 64, {"PROTO": "P" * 64}),
            (b"IDENT=4Qx7Yk2Lz9z1", {"IDENT": "4Qx7Yk2Lz9z1"}),
            (b"SOURCE=local", {"SOURCE": "LOCAL"}),
            (b"source=REMOTE", {"SOURCE": "REMOTE"}),
            (
                b"NAME=[UNAVAILABLE] ADDR=[UNAVAILABLE] PORT=[unavailable] PROTO=[UNAVAILABLE] "
                b"HELO=[UNAVAILABLE] IDENT=[UNAVAILABLE] SOURCE=[UNAVAILABLE]",
                dict.fromkeys(
                    ["NAME", "ADDR", "PORT", "PROTO", "HELO", "IDENT", "SOURCE"], UNAVAILABLE
                ),
            ),
        ]
        for argument, expected in cases:
            self.assertEqual(parse_xforward(argument), expected, argument)

    def test_invalid(self) -> None:
        """
        Bad XFORWARD arguments get C{501 5.5.4}, XCLIENT-only attributes included.
        """
        cases = [
            b"",
            b"LOGIN=user",
            b"DESTADDR=192.0.2.1",
            b"SOURCE=ELSEWHERE",
            b"PROTO=" + b"P" * 65,
            b"PROTO=E+20SMTP",
            b"IDENT=a+0Ab",
            b"IDENT=<id@example>",
            b"NAME=[TEMPUNAVAIL]",
            b"ADDR=localhost",
            b"PORT=99999",
        ]
        for argument in cases:
            e = self.assertRaises(ParseError, parse_xforward, argument)
            self.assertEqual((e.reply.code, e.reply.enhanced), (501, "5.5.4"), argument)
        e = self.assertRaises(ParseError, parse_xforward, b"")
        self.assertEqual(e.reply.text, "Syntax: XFORWARD attribute=value ...")
        e = self.assertRaises(ParseError, parse_xforward, b"LOGIN=x")
        self.assertEqual(e.reply.text, "Bad XFORWARD attribute name: LOGIN")


_SAFE_ASCII = frozenset(chr(c) for c in range(0x21, 0x7F))


class ParserPropertyTests(SynchronousTestCase):
    """
    Properties of both parsers over generated input.
    """

    @bounded
    @given(
        st.one_of(
            st.binary(max_size=300),
            st.lists(
                st.tuples(
                    st.sampled_from(
                        ["NAME", "ADDR", "PORT", "PROTO", "HELO", "LOGIN", "IDENT", "x"]
                    ),
                    st.text(max_size=30),
                ),
                max_size=4,
            ).map(lambda pairs: " ".join(f"{k}={v}" for k, v in pairs).encode("utf-8")),
        )
    )
    def test_safeValues(self, argument: bytes) -> None:
        """
        On any input, the parsers either raise L{ParseError} with a 501, or return values
        without control characters; every value but LOGIN is printable ASCII without
        spaces.
        """
        for parse in (parse_xclient, parse_xforward):
            try:
                attributes = parse(argument)
            except ParseError as e:
                self.assertEqual(e.reply.code, 501)
                continue
            self.assertTrue(attributes)
            for name, value in attributes.items():
                self.assertTrue(value.isprintable(), (name, value))
                if name != "LOGIN":
                    self.assertTrue(set(value) <= _SAFE_ASCII, (name, value))


class TrustTests(SynchronousTestCase):
    """
    L{is_trusted}: which client addresses a C{use_xclient}/C{use_xforward} value allows.
    """

    def test_table(self) -> None:
        """
        C{False} allows nobody; C{True} allows loopback (IPv4, IPv6, IPv4-mapped);
        networks allow their members, whatever the IP version of the others; an empty
        address or a non-address is never trusted.
        """
        nets = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32"))
        cases: list[tuple[str, Any, bool]] = [
            ("127.0.0.1", False, False),
            ("127.0.0.1", True, True),
            ("127.1.2.3", True, True),
            ("::1", True, True),
            ("::ffff:127.0.0.1", True, True),
            ("192.0.2.1", True, False),
            ("", True, False),
            ("localhost", True, False),
            ("10.1.2.3", nets, True),
            ("::ffff:10.1.2.3", nets, True),
            ("2001:db8::5", nets, True),
            ("fe80::1%eth0", (ipaddress.ip_network("fe80::/10"),), True),
            ("11.0.0.1", nets, False),
            ("127.0.0.1", nets, False),
            ("2001:db9::1", nets, False),
            ("", nets, False),
            ("10.1.2.3", (), False),
        ]
        for address, setting, expected in cases:
            self.assertEqual(is_trusted(address, setting), expected, (address, setting))


def _session() -> Session:
    session = Session(
        local_address="10.0.0.25",
        local_port=25,
        remote_address="127.0.0.1",
        remote_port=40000,
        client_hostname="localhost",
        opening_command="EHLO",
        host_name_appears_as="filter.example",
        user="someone",
    )
    session.envelope.rcpt_to.append(Address("x@example.com"))
    session.xforward["NAME"] = "old.example"
    return session


class ApplyTests(SynchronousTestCase):
    """
    What an accepted XCLIENT or XFORWARD does to the session.
    """

    def test_xclientAll(self) -> None:
        """
        Every attribute lands where hooks look for it, and the session starts over:
        no opening command, an empty envelope, no XFORWARD attributes.
        """
        session = _session()
        attributes = parse_xclient(
            b"NAME=mail.example.org ADDR=192.0.2.9 PORT=4242 PROTO=ESMTP HELO=helo.example.org "
            b"LOGIN=alice DESTADDR=198.51.100.1 DESTPORT=587"
        )
        apply_xclient(session, attributes)
        self.assertEqual(
            (
                session.remote_address,
                session.remote_port,
                session.local_address,
                session.local_port,
                session.client_hostname,
                session.host_name_appears_as,
                session.user,
                session.opening_command,
            ),
            (
                "192.0.2.9",
                4242,
                "198.51.100.1",
                587,
                "mail.example.org",
                "helo.example.org",
                "alice",
                "",
            ),
        )
        self.assertEqual(session.xclient, attributes)
        self.assertEqual(session.envelope, Envelope())
        self.assertEqual(session.xforward, {})

    def test_xclientPartial(self) -> None:
        """
        ADDR without NAME makes the host name C{[address]} (no stale name, no lookup);
        without HELO and LOGIN, both are reset; attributes accumulate over commands.
        """
        session = _session()
        apply_xclient(session, parse_xclient(b"PROTO=SMTP"))
        apply_xclient(session, parse_xclient(b"ADDR=192.0.2.9"))
        self.assertEqual(session.client_hostname, "[192.0.2.9]")
        self.assertEqual((session.host_name_appears_as, session.user), ("", None))
        self.assertEqual(session.xclient, {"PROTO": "SMTP", "ADDR": "192.0.2.9"})
        self.assertEqual((session.remote_port, session.local_port), (40000, 25))

    def test_xclientUnavailable(self) -> None:
        """
        Unavailable values: an unknown address is C{""} and port 0; an unknown name is
        C{[address]}, or C{[UNAVAILABLE]} when the address is unknown too.
        """
        session = _session()
        apply_xclient(session, parse_xclient(b"ADDR=192.0.2.9 NAME=[TEMPUNAVAIL]"))
        self.assertEqual(session.client_hostname, "[192.0.2.9]")
        unknown = b"ADDR=[UNAVAILABLE] PORT=[UNAVAILABLE] LOGIN=[UNAVAILABLE]"
        apply_xclient(session, parse_xclient(unknown))
        self.assertEqual(
            (session.remote_address, session.remote_port, session.client_hostname, session.user),
            ("", 0, UNAVAILABLE, None),
        )

    def test_xforward(self) -> None:
        """
        XFORWARD attributes accumulate in C{session.xforward} and change nothing else.
        """
        session = _session()
        apply_xforward(session, parse_xforward(b"ADDR=192.0.2.9 PROTO=ESMTP"))
        apply_xforward(session, parse_xforward(b"HELO=up.example IDENT=ABC123"))
        self.assertEqual(
            session.xforward,
            {
                "NAME": "old.example",
                "ADDR": "192.0.2.9",
                "PROTO": "ESMTP",
                "HELO": "up.example",
                "IDENT": "ABC123",
            },
        )
        self.assertEqual(session.remote_address, "127.0.0.1")
        self.assertEqual(len(session.envelope.rcpt_to), 1)

    def test_keywords(self) -> None:
        """
        The EHLO keywords list the attributes Postfix's documents define.
        """
        self.assertEqual(
            XCLIENT_KEYWORD, "XCLIENT NAME ADDR PORT PROTO HELO LOGIN DESTADDR DESTPORT"
        )
        self.assertEqual(XFORWARD_KEYWORD, "XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE")

    def test_catalogue(self) -> None:
        """
        The replies of the protocol side: 550 5.7.0 for untrusted clients, 503 5.5.1
        inside a transaction.
        """
        self.assertEqual((R.XCLIENT_DENIED.code, R.XCLIENT_DENIED.enhanced), (550, "5.7.0"))
        self.assertEqual(
            (R.XCLIENT_IN_TRANSACTION.code, R.XCLIENT_IN_TRANSACTION.enhanced), (503, "5.5.1")
        )


# -- over a real socket, once the commands exist -----------------------------------------


class Recorder:
    """
    Hooks that record what the session looked like at each step.
    """

    def __init__(self) -> None:
        self.connects: list[tuple[str, str]] = []
        self.mails: list[tuple[str, int, str, str, Any, dict[str, str]]] = []
        self.datas: list[dict[str, str]] = []
        self.messages = Counter()

    def on_connect(self, session: Session) -> None:
        self.connects.append((session.remote_address, session.client_hostname))

    def on_mail_from(self, address: Address, session: Session) -> None:
        self.mails.append(
            (
                session.remote_address,
                session.remote_port,
                session.client_hostname,
                session.host_name_appears_as,
                session.user,
                dict(session.xforward),
            )
        )

    async def on_data(self, stream: DataStream, session: Session) -> None:
        await stream.read()
        self.datas.append(dict(session.xforward))
        self.messages()


class WireTests(TestCase):
    """
    XCLIENT and XFORWARD over loopback; skipped until the options are wired in.
    """

    timeout = 60

    def setUp(self) -> None:
        try:
            SMTPServer(use_xclient=True, use_xforward=True)
        except ValueError as e:
            raise SkipTest(
                f"XCLIENT/XFORWARD are not integrated into SMTPServer yet: {e}"
            ) from None

    @inlineCallbacks
    def serve(self, hooks: Recorder, **options: Any) -> Any:
        options.setdefault("disable_reverse_lookup", True)
        options.setdefault("name", SERVER_NAME)
        server = SMTPServer(hooks=hooks, **options)
        port = yield server.listen(LOCAL)
        self.addCleanup(server.close, 5.0)
        return port.getHost().port

    @inlineCallbacks
    def test_swaks(self) -> Any:
        """
        C{swaks --xclient-*}: XCLIENT is advertised with its attributes, the server
        re-greets, swaks says EHLO again and delivers; the hooks see the new address,
        port, name and HELO.
        """
        swaks = require_tool("swaks")
        hooks = Recorder()
        port = yield self.serve(hooks, use_xclient=True)
        code, out, err = yield run_process(
            [
                swaks,
                "--server", "127.0.0.1", "--port", str(port),
                "--from", "sender@example.com", "--to", "rcpt@example.com",
                "--helo", "filter.example.test", "--timeout", "20",
                "--xclient-addr", "192.0.2.9",
                "--xclient-name", "mail.example.org",
                "--xclient-port", "4242",
                "--xclient-helo", "client.example.org",
            ],
            timeout=40,
        )  # fmt: skip
        self.assertEqual(code, 0, out + err)
        self.assertIn(b"XCLIENT", out)
        self.assertEqual(len(hooks.mails), 1)
        address, port_, name, helo, user, _ = hooks.mails[0]
        self.assertEqual((address, port_, name), ("192.0.2.9", 4242, "mail.example.org"))
        self.assertEqual(hooks.messages.count, 1)

    @inlineCallbacks
    def test_dialogue(self) -> Any:
        """
        XCLIENT answers with a new 220 greeting; MAIL before a new EHLO is 503; the new
        EHLO greets the new address; LOGIN makes the session authenticated.
        """
        hooks = Recorder()
        port = yield self.serve(hooks, use_xclient=True)
        client = yield open_session(self, port)
        reply = yield client.command("XCLIENT ADDR=192.0.2.9 NAME=mail.example.org LOGIN=alice")
        self.assertEqual(reply.code, 220, str(reply))
        reply = yield client.command("MAIL FROM:<a@example.com>")
        self.assertEqual((reply.code, reply.enhanced), (503, None), str(reply))
        reply = yield client.command("EHLO client.example.org")
        self.assertEqual(reply.code, 250)
        self.assertIn("greets mail.example.org", reply.lines[0])
        reply = yield client.command("MAIL FROM:<a@example.com>")
        self.assertEqual(reply.code, 250, str(reply))
        address, _, name, helo, user, _ = hooks.mails[-1]
        self.assertEqual(
            (address, name, helo, user),
            ("192.0.2.9", "mail.example.org", "client.example.org", "alice"),
        )

    @inlineCallbacks
    def test_refusals(self) -> Any:
        """
        XCLIENT inside a transaction is 503 5.5.1; a bad attribute is 501 5.5.4; after
        XCLIENT ADDR moved the session to an address outside C{use_xclient}, a second
        XCLIENT is 550 5.7.0, as Postfix does.
        """
        hooks = Recorder()
        port = yield self.serve(hooks, use_xclient=True)
        client = yield open_session(self, port)
        reply = yield client.command("XCLIENT FOO=bar")
        self.assertEqual((reply.code, reply.enhanced), (501, "5.5.4"), str(reply))
        yield client.command("MAIL FROM:<a@example.com>")
        reply = yield client.command("XCLIENT ADDR=192.0.2.9")
        self.assertEqual((reply.code, reply.enhanced), (503, "5.5.1"), str(reply))
        yield client.command("RSET")
        reply = yield client.command("XCLIENT ADDR=192.0.2.9")
        self.assertEqual(reply.code, 220, str(reply))
        yield client.command("EHLO x.example")
        reply = yield client.command("XCLIENT ADDR=127.0.0.1")
        self.assertEqual((reply.code, reply.enhanced), (550, "5.7.0"), str(reply))

    @inlineCallbacks
    def test_untrusted(self) -> Any:
        """
        A client outside C{use_xclient}/C{use_xforward} is not offered the extensions and
        gets 550 5.7.0 for both commands; a trusted one is offered both, last in EHLO.
        """
        hooks = Recorder()
        port = yield self.serve(hooks, use_xclient=["10.0.0.0/8"], use_xforward=["10.0.0.0/8"])
        client = yield connect(self, port)
        reply = yield client.command("EHLO client.example.test")
        self.assertFalse([line for line in reply.lines if line.startswith(("XCLIENT", "XFORWARD"))])
        for command in ("XCLIENT ADDR=192.0.2.9", "XFORWARD ADDR=192.0.2.9"):
            reply = yield client.command(command)
            self.assertEqual((reply.code, reply.enhanced), (550, "5.7.0"), command)
        port = yield self.serve(hooks, use_xclient=True, use_xforward=True)
        client = yield connect(self, port)
        reply = yield client.command("EHLO client.example.test")
        self.assertEqual(reply.lines[-2:], [XCLIENT_KEYWORD, XFORWARD_KEYWORD])

    @inlineCallbacks
    def test_xforward(self) -> Any:
        """
        XFORWARD answers 250 2.0.0, accumulates, is seen by C{on_mail_from} and
        C{on_data}, is refused inside a transaction, and is gone for the next transaction.
        """
        hooks = Recorder()
        port = yield self.serve(hooks, use_xforward=True)
        client = yield open_session(self, port)
        reply = yield client.command(
            "XFORWARD NAME=spike.porcupine.org ADDR=168.100.189.2 PROTO=ESMTP"
        )
        self.assertEqual((reply.code, reply.enhanced), (250, "2.0.0"), str(reply))
        reply = yield client.command("XFORWARD HELO=spike.porcupine.org IDENT=ABC123")
        self.assertEqual(reply.code, 250)
        expected = {
            "NAME": "spike.porcupine.org",
            "ADDR": "168.100.189.2",
            "PROTO": "ESMTP",
            "HELO": "spike.porcupine.org",
            "IDENT": "ABC123",
        }
        yield client.command("MAIL FROM:<a@example.com>")
        reply = yield client.command("XFORWARD ADDR=192.0.2.1")
        self.assertEqual((reply.code, reply.enhanced), (503, "5.5.1"), str(reply))
        yield client.command("RCPT TO:<b@example.com>")
        yield client.command("DATA")
        reply = yield client.command("Subject: x\r\n\r\nbody\r\n.")
        self.assertEqual(reply.code, 250, str(reply))
        yield client.command("MAIL FROM:<a@example.com>")
        self.assertEqual([m[5] for m in hooks.mails], [expected, {}])
        self.assertEqual(hooks.datas, [expected])
        self.assertEqual(hooks.mails[0][0], "127.0.0.1")
