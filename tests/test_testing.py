"""
Tests for L{smtphooks.testing}, the helpers users test their hooks with, and
for the examples of docs/testing.md, which are run here so that they cannot
rot.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path
from types import ModuleType

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.reporter import TestResult
from twisted.trial.runner import TestLoader
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from smtphooks import (
    Address,
    AuthRequest,
    AuthResponse,
    DataStream,
    Session,
    SMTPError,
    SMTPServer,
)
from smtphooks.testing import (
    TEST_SERVER_NAME,
    ConnectionClosed,
    HookPending,
    Reply,
    ReplyPending,
    SMTPTestClient,
    _parse_replies,
    make_address,
    make_session,
    make_stream,
    make_test_server,
    run_hook,
)
from tests.support import run_process

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "docs" / "examples"
GUIDE = ROOT / "docs" / "testing.md"

QUEUED = Reply(250, "2.0.0 OK: message queued")


class Recorder:
    """
    Hooks that record what they are given, and accept.
    """

    def __init__(self) -> None:
        self.senders: list[Address] = []
        self.recipients: list[Address] = []
        self.bodies: list[bytes] = []
        self.closed: list[Session] = []

    def on_mail_from(self, address: Address, session: Session) -> None:
        self.senders.append(address)

    def on_rcpt_to(self, address: Address, session: Session) -> None:
        if address.address.startswith("no@"):
            raise SMTPError("No such user", code=550)
        self.recipients.append(address)

    async def on_data(self, stream: DataStream, session: Session) -> None:
        self.bodies.append(await stream.read())

    def on_close(self, session: Session) -> None:
        self.closed.append(session)


class MakeTestServerTests(SynchronousTestCase):
    """
    L{make_test_server} builds a deterministic server.
    """

    def test_defaults(self) -> None:
        """
        The server keeps time with a fresh L{Clock}, does no reverse lookup,
        and is named C{mx.example}.
        """
        server = make_test_server()
        self.assertIsInstance(server, SMTPServer)
        self.assertIsInstance(server.clock, Clock)
        self.assertTrue(server.options.disable_reverse_lookup)
        self.assertEqual(server.options.name, TEST_SERVER_NAME)
        self.assertIsNot(make_test_server().clock, server.clock)

    def test_overrides(self) -> None:
        """
        Hooks, options and the defaults themselves can be given.
        """
        clock = Clock()
        hooks = Recorder()
        server = make_test_server(hooks, reactor=clock, name="other.example", size=10)
        self.assertIs(server.clock, clock)
        self.assertEqual(server.options.name, "other.example")
        self.assertEqual(server.options.size, 10)
        self.assertEqual(server.on_rcpt_to, hooks.on_rcpt_to)

    def test_badOption(self) -> None:
        """
        Options are checked as L{SMTPServer} checks them.
        """
        self.assertRaises(TypeError, make_test_server, no_such_option=1)


class ConnectTests(SynchronousTestCase):
    """
    Connecting: what the client accepts, the greeting, the session.
    """

    def test_realReactorRefused(self) -> None:
        """
        A server on the real reactor is refused with a message that says
        what to do.
        """
        server = SMTPServer(disable_reverse_lookup=True)
        error = self.assertRaises(TypeError, SMTPTestClient, server)
        self.assertIn("make_test_server", str(error))

    def test_reverseLookupRefused(self) -> None:
        """
        A server that would query the DNS for the client is refused, unless
        the client is on loopback.
        """
        server = SMTPServer(reactor=Clock())
        error = self.assertRaises(ValueError, SMTPTestClient, server)
        self.assertIn("disable_reverse_lookup", str(error))
        client = SMTPTestClient(server, remote_address="127.0.0.1")
        self.assertEqual(client.session.client_hostname, "localhost")

    def test_greetingAndSession(self) -> None:
        """
        The greeting is a L{Reply}; the session has the given addresses.
        """
        client = SMTPTestClient(
            make_test_server(),
            remote_address="198.51.100.7",
            remote_port=4242,
            local_address="192.0.2.25",
            local_port=587,
        )
        self.assertEqual(client.greeting, Reply(220, "mx.example ESMTP"))
        self.assertEqual(client.greeting, (220, "mx.example ESMTP"))
        session = client.session
        self.assertEqual(
            (session.remote_address, session.remote_port, session.local_address, session.local_port),
            ("198.51.100.7", 4242, "192.0.2.25", 587),
        )
        self.assertIs(client.protocol.session, session)
        self.assertEqual(client.replies, [client.greeting])
        self.assertTrue(client.connected)

    def test_ipv6(self) -> None:
        """
        The client may come from an IPv6 address.
        """
        client = SMTPTestClient(make_test_server(), remote_address="2001:db8::1")
        self.assertEqual(client.session.remote_address, "2001:db8::1")
        self.assertEqual(client.ehlo().code, 250)

    def test_pendingGreeting(self) -> None:
        """
        While C{on_connect} is pending, the greeting is pending, and
        commands are not sent (the client would be an early talker).
        """
        gate: Deferred[None] = Deferred()
        client = SMTPTestClient(make_test_server(on_connect=lambda session: gate))
        self.assertRaises(ReplyPending, lambda: client.greeting)
        self.assertRaises(ReplyPending, client.ehlo)
        gate.callback(None)
        self.assertEqual(client.greeting.code, 220)
        self.assertEqual(client.ehlo().code, 250)

    def test_heldWhilePaused(self) -> None:
        """
        Bytes written while the server does not read (here: during a pending
        C{on_mail_from}) wait on the client's side, as they would in the
        network, and are read when the server reads again.
        """
        gate: Deferred[None] = Deferred()
        client = SMTPTestClient(make_test_server(on_mail_from=lambda address, session: gate))
        client.ehlo()
        self.assertRaises(ReplyPending, client.mail, "a@example.com")
        client.write(b"NOOP\r\n", replies=1)
        self.assertEqual(client.transport.producerState, "paused")
        gate.callback(None)
        self.assertEqual(client.wait_all(), [(250, "2.1.0 Sender OK"), (250, "2.0.0 OK")])

    def test_earlyTalker(self) -> None:
        """
        Bytes the server reads before its greeting (here: during the
        reverse lookup) make it answer 421 instead; the connection is then
        closed, and the reply to the early bytes never comes.
        """
        from tests.test_protocol import FakeResolver

        resolver = FakeResolver()
        server = make_test_server(disable_reverse_lookup=False, resolver=resolver)
        client = SMTPTestClient(server)
        client.write(b"EHLO client.example\r\n", replies=1)
        resolver.answer("client.example")
        self.assertEqual(
            client.greeting,
            (421, "Protocol error: data sent before the greeting; closing connection"),
        )
        self.assertFalse(client.connected)
        self.assertRaises(ConnectionClosed, client.wait)

    def test_rejectedConnection(self) -> None:
        """
        When C{on_connect} rejects, the greeting is the rejection, the
        connection is closed, C{on_close} has run, and commands raise
        L{ConnectionClosed}.
        """
        closed: list[Session] = []

        def on_connect(session: Session) -> None:
            raise SMTPError("Go away")

        client = SMTPTestClient(make_test_server(on_connect=on_connect, on_close=closed.append))
        self.assertEqual(client.greeting, (554, "Go away"))
        self.assertFalse(client.connected)
        self.assertEqual(closed, [client.session])
        error = self.assertRaises(ConnectionClosed, client.ehlo)
        self.assertIn("554 Go away", str(error))


class CommandTests(SynchronousTestCase):
    """
    The command methods send what they say and return the reply.
    """

    def setUp(self) -> None:
        self.hooks = Recorder()
        self.server = make_test_server(self.hooks)
        self.client = SMTPTestClient(self.server)

    def test_ehlo(self) -> None:
        """
        EHLO's reply is one L{Reply}, its lines joined by newlines.
        """
        reply = self.client.ehlo("me.example")
        self.assertEqual(reply.code, 250)
        lines = reply.text.split("\n")
        self.assertEqual(lines[0], "mx.example greets [192.0.2.1]")
        self.assertIn("PIPELINING", lines)
        self.assertEqual(self.client.session.host_name_appears_as, "me.example")

    def test_helo(self) -> None:
        """
        HELO gets the server's name.
        """
        self.assertEqual(self.client.helo(), (250, "mx.example"))
        self.assertEqual(self.client.session.opening_command, "HELO")

    def test_mailParameters(self) -> None:
        """
        Keyword arguments become ESMTP parameters: C{True} a bare keyword,
        other values xtext-encoded, so the hook sees them as given.
        """
        self.client.ehlo()
        reply = self.client.mail(
            "a@example.com", SIZE=100, BODY="8BITMIME", SMTPUTF8=True, ENVID="id+1=2", RET=False
        )
        self.assertEqual(reply, (250, "2.1.0 Sender OK"))
        [sender] = self.hooks.senders
        self.assertEqual(
            sender.args, {"SIZE": "100", "BODY": "8BITMIME", "SMTPUTF8": True, "ENVID": "id+1=2"}
        )
        envelope = self.client.session.envelope
        self.assertEqual(envelope.dsn.envid, "id+1=2")
        self.assertTrue(envelope.smtputf8)

    def test_rcptParameters(self) -> None:
        """
        RCPT parameters reach the address's C{dsn}.
        """
        self.client.ehlo()
        self.client.mail("")
        self.assertEqual(self.hooks.senders, [Address("")])
        self.client.rcpt("b@example.com", NOTIFY="SUCCESS,DELAY", ORCPT="rfc822;b+x@example.com")
        [recipient] = self.hooks.recipients
        assert recipient.dsn is not None
        self.assertEqual(recipient.dsn.notify, ["SUCCESS", "DELAY"])
        self.assertEqual(recipient.dsn.orcpt, "rfc822;b+x@example.com")

    def test_commandAndHelpers(self) -> None:
        """
        L{SMTPTestClient.command} sends any line; C{noop} and C{rset} are
        there too.
        """
        self.assertEqual(self.client.command("VRFY alice").code, 252)
        self.assertEqual(self.client.command(b"NOOP").code, 250)
        self.assertEqual(self.client.noop(), (250, "OK"))
        self.assertEqual(self.client.rset(), (250, "OK"))
        self.assertEqual(self.client.command("BOGUS").code, 500)

    def test_data(self) -> None:
        """
        The body is dot-stuffed on the wire, so the hook gets it byte for
        byte; a CRLF is added when it does not end with one.
        """
        self.client.ehlo()
        self.client.mail("a@example.com")
        self.client.rcpt("b@example.com")
        body = b".starts with a dot\r\n.\r\n..\r\nlast line"
        self.assertEqual(self.client.data(body), QUEUED)
        self.assertEqual(self.hooks.bodies, [body + b"\r\n"])

    def test_dataRefused(self) -> None:
        """
        When DATA itself is refused, its reply is returned and no body is
        sent.
        """
        self.client.ehlo()
        self.assertEqual(self.client.data(b"x\r\n").code, 503)
        self.assertEqual(self.client.noop().code, 250)

    def test_dataNeedsBytes(self) -> None:
        """
        A body that is not bytes is refused before anything is sent.
        """
        self.client.ehlo()
        self.assertRaises(TypeError, self.client.data, "text")

    def test_bigData(self) -> None:
        """
        A body of several megabytes goes through in pieces.
        """
        self.client.ehlo()
        self.client.mail("a@example.com")
        self.client.rcpt("b@example.com")
        body = (b"y" * 998 + b"\r\n") * 3000
        self.assertEqual(self.client.data(body), QUEUED)
        self.assertEqual(self.hooks.bodies, [body])

    def test_send(self) -> None:
        """
        C{send} greets, sends the envelope and the message, and returns the
        reply to the message; rejected recipients are skipped.
        """
        reply = self.client.send("a@example.com", ["b@example.com", "no@example.com"], b"hi\r\n")
        self.assertEqual(reply, QUEUED)
        self.assertEqual([a.address for a in self.hooks.recipients], ["b@example.com"])
        self.assertEqual([r.code for r in self.client.replies], [220, 250, 250, 250, 550, 354, 250])
        self.assertEqual(self.client.send("c@example.com", "d@example.com", b"again\r\n"), QUEUED)
        self.assertEqual(self.hooks.bodies, [b"hi\r\n", b"again\r\n"])
        self.assertEqual(self.client.session.transaction, 3)

    def test_sendAllRejected(self) -> None:
        """
        When every recipient is rejected, C{send} returns the last
        rejection and resets the transaction.
        """
        reply = self.client.send("a@example.com", ["no@example.com"], b"hi\r\n")
        self.assertEqual(reply, (550, "5.1.1 No such user"))
        self.assertEqual(self.client.replies[-1], (250, "2.0.0 OK"))
        self.assertIsNone(self.client.session.envelope.mail_from)
        self.assertEqual(self.hooks.bodies, [])

    def test_sendMailRejected(self) -> None:
        """
        When MAIL is rejected, C{send} returns that reply.
        """

        def on_mail_from(address: Address, session: Session) -> None:
            raise SMTPError("Not you")

        client = SMTPTestClient(make_test_server(on_mail_from=on_mail_from))
        self.assertEqual(client.send("a@example.com", ["b@example.com"], b"x\r\n"), (550, "5.7.1 Not you"))

    def test_quit(self) -> None:
        """
        QUIT gets 221, the connection closes and C{on_close} runs once;
        later commands raise L{ConnectionClosed}.
        """
        self.client.ehlo()
        self.assertEqual(self.client.quit(), (221, "2.0.0 Bye"))
        self.assertFalse(self.client.connected)
        self.assertEqual(self.hooks.closed, [self.client.session])
        self.assertRaises(ConnectionClosed, self.client.noop)
        self.client.close()
        self.assertEqual(len(self.hooks.closed), 1)

    def test_close(self) -> None:
        """
        C{close} drops the connection: C{on_close} runs once, and the
        session has no error (the client just went away).
        """
        self.client.ehlo()
        self.client.close()
        self.client.close()
        self.assertFalse(self.client.connected)
        self.assertEqual(self.hooks.closed, [self.client.session])
        self.assertIsNone(self.client.session.error)
        self.assertEqual(self.server.connections, [])

    def test_contextManager(self) -> None:
        """
        Used as a context manager, the client closes the connection at the
        end of the block.
        """
        with SMTPTestClient(self.server) as client:
            client.ehlo()
        self.assertFalse(client.connected)
        self.assertEqual(len(self.hooks.closed), 1)

    def test_repr(self) -> None:
        """
        The repr says whether the connection is open.
        """
        self.assertIn("open", repr(self.client))
        self.client.close()
        self.assertIn("closed", repr(self.client))


class PendingTests(SynchronousTestCase):
    """
    Replies that depend on hooks that have not finished.
    """

    def setUp(self) -> None:
        self.gates: dict[str, Deferred[None]] = {}
        self.seen: list[str] = []

        def on_rcpt_to(address: Address, session: Session) -> Deferred[None] | None:
            self.seen.append(address.address)
            return self.gates.get(address.address)

        self.server = make_test_server(on_rcpt_to=on_rcpt_to, hook_timeout=20)
        self.client = SMTPTestClient(self.server)
        self.client.ehlo()
        self.client.mail("a@example.com")

    def test_pipelined(self) -> None:
        """
        A pending reply raises L{ReplyPending}; the next command is
        pipelined behind it; when the Deferred fires, L{wait} gives the
        replies in command order.
        """
        self.gates["slow@example.com"] = Deferred()
        self.assertRaises(ReplyPending, self.client.rcpt, "slow@example.com")
        self.assertRaises(ReplyPending, self.client.rcpt, "fast@example.com")
        self.assertEqual(self.client.pending, 2)
        self.assertEqual(self.seen, ["slow@example.com"])
        self.assertRaises(ReplyPending, self.client.wait)
        self.gates["slow@example.com"].errback(SMTPError("Later", code=450))
        self.assertEqual(self.client.wait(), (450, "4.0.0 Later"))
        self.assertEqual(self.client.wait(), (250, "2.1.5 Recipient OK"))
        self.assertEqual(self.client.pending, 0)
        self.assertRaises(LookupError, self.client.wait)

    def test_waitAll(self) -> None:
        """
        L{wait_all} gives every reply still waited for.
        """
        self.gates["slow@example.com"] = Deferred()
        self.assertRaises(ReplyPending, self.client.rcpt, "slow@example.com")
        self.assertRaises(ReplyPending, self.client.noop)
        self.assertRaises(ReplyPending, self.client.wait_all)
        self.gates["slow@example.com"].callback(None)
        self.assertEqual(
            self.client.wait_all(), [(250, "2.1.5 Recipient OK"), (250, "2.0.0 OK")]
        )
        self.assertEqual(self.client.wait_all(), [])

    def test_dataWaitsForEarlierReplies(self) -> None:
        """
        C{data} and C{send} send nothing while earlier replies are pending.
        """
        self.gates["slow@example.com"] = Deferred()
        self.assertRaises(ReplyPending, self.client.rcpt, "slow@example.com")
        self.assertRaises(ReplyPending, self.client.data, b"x\r\n")
        self.assertRaises(ReplyPending, self.client.send, "a@example.com", "b@example.com", b"x")
        self.gates["slow@example.com"].callback(None)
        self.assertEqual(self.client.wait().code, 250)
        self.assertEqual(self.client.data(b"x\r\n"), QUEUED)

    def test_hookTimeout(self) -> None:
        """
        Advancing the client's clock past C{hook_timeout} makes the server
        give up on the hook: 451.
        """
        self.gates["slow@example.com"] = Deferred()
        self.assertRaises(ReplyPending, self.client.rcpt, "slow@example.com")
        self.client.clock.advance(19)
        self.assertRaises(ReplyPending, self.client.wait)
        self.client.clock.advance(1)
        self.assertEqual(self.client.wait().code, 451)
        self.assertIs(self.client.clock, self.server.clock)

    def test_socketTimeout(self) -> None:
        """
        An idle client gets 421 when the clock passes C{socket_timeout}: a
        reply nobody asked for, in L{SMTPTestClient.replies}; then the
        connection is closed.
        """
        self.client.clock.advance(60)
        self.assertEqual(self.client.replies[-1], (421, "4.4.2 Timeout, closing connection"))
        self.assertFalse(self.client.connected)
        self.assertEqual(self.client.session.error, "timeout")
        self.assertRaises(ConnectionClosed, self.client.noop)


class SlowDataTests(SynchronousTestCase):
    """
    An C{on_data} that reads slowly or answers late.
    """

    def setUp(self) -> None:
        self.gate: Deferred[None] = Deferred()
        self.received: list[bytes] = []

        async def on_data(stream: DataStream, session: Session) -> str:
            await self.gate
            async for chunk in stream:
                self.received.append(chunk)
            return "done"

        self.client = SMTPTestClient(make_test_server(on_data=on_data))
        self.client.ehlo()
        self.client.mail("a@example.com")
        self.client.rcpt("b@example.com")

    def test_lateAnswer(self) -> None:
        """
        A small message is read by the server (buffered in the stream) and
        its reply waits for the hook.
        """
        self.assertRaises(ReplyPending, self.client.data, b"small\r\n")
        self.gate.callback(None)
        self.assertEqual(self.client.wait(), (250, "2.0.0 done"))
        self.assertEqual(b"".join(self.received), b"small\r\n")

    def test_backpressure(self) -> None:
        """
        A big message stops being read while the hook does not consume it
        (the transport is paused); the rest goes through once it does.
        """
        body = (b"z" * 1022 + b"\r\n") * 1024  # 1 MiB
        self.assertRaises(ReplyPending, self.client.data, body)
        self.assertEqual(self.client.transport.producerState, "paused")
        self.gate.callback(None)
        self.assertEqual(self.client.wait(), (250, "2.0.0 done"))
        self.assertEqual(b"".join(self.received), body)


class WriteTests(SynchronousTestCase):
    """
    Raw bytes, for tests of clients that misbehave.
    """

    def test_replies(self) -> None:
        """
        Bytes written with C{replies=n} are answered through L{wait}, and
        later commands still get their own replies.
        """
        client = SMTPTestClient(make_test_server())
        client.write(b"NOOP\r\nNOOP\n", replies=2)
        self.assertEqual(client.noop(), (250, "OK"))
        self.assertEqual(client.wait_all(), [(250, "OK"), (250, "OK")])

    def test_closingReply(self) -> None:
        """
        A command that makes the server close gets its reply; the next
        raises L{ConnectionClosed}.
        """
        client = SMTPTestClient(make_test_server())
        self.assertEqual(client.command("GET / HTTP/1.1").code, 421)
        self.assertFalse(client.connected)
        self.assertRaises(ConnectionClosed, client.write, b"NOOP\r\n")


class ExtensionTests(SynchronousTestCase):
    """
    BDAT, LMTP, AUTH and STARTTLS through the test client.
    """

    def test_bdat(self) -> None:
        """
        C{bdat} sends chunks; the last one is answered by the hook.
        """
        hooks = Recorder()
        client = SMTPTestClient(make_test_server(hooks))
        client.ehlo()
        client.mail("a@example.com", BODY="BINARYMIME")
        client.rcpt("b@example.com")
        self.assertEqual(client.bdat(b"\x00binary\r\n.\r\n"), (250, "2.0.0 12 octets received"))
        self.assertEqual(client.bdat(b"end", last=True), QUEUED)
        self.assertEqual(hooks.bodies, [b"\x00binary\r\n.\r\nend"])

    def test_lmtp(self) -> None:
        """
        On an LMTP server, C{lmtp_data} returns one reply per recipient;
        C{data} and C{send}, which expect one reply, refuse.
        """

        async def on_data(stream: DataStream, session: Session) -> list[object]:
            await stream.read()
            return ["kept", SMTPError("Over quota", code=452)]

        client = SMTPTestClient(make_test_server(on_data=on_data, lmtp=True))
        self.assertEqual(client.greeting, (220, "mx.example LMTP"))
        self.assertEqual(client.lhlo().code, 250)
        client.mail("a@example.com")
        client.rcpt("b@example.com")
        client.rcpt("c@example.com")
        self.assertRaises(TypeError, client.data, b"x\r\n")
        self.assertRaises(TypeError, client.send, "a@example.com", "b@example.com", b"x\r\n")
        self.assertRaises(TypeError, client.bdat, b"x", last=True)
        self.assertEqual(
            client.lmtp_data(b"x\r\n"), [(250, "2.0.0 kept"), (452, "4.0.0 Over quota")]
        )

    def test_auth(self) -> None:
        """
        C{auth} runs the SASL exchange of each mechanism.
        """
        requests: list[AuthRequest] = []

        def on_auth(auth: AuthRequest, session: Session) -> AuthResponse | None:
            requests.append(auth)
            if auth.method == "XOAUTH2":
                if auth.access_token == "token":
                    return AuthResponse(auth.username)
                return AuthResponse(None, data={"status": "401", "schemes": "bearer"})
            return AuthResponse(auth.username) if auth.validate_password("pw") else None

        methods = ["PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2"]
        for method in methods:
            server = make_test_server(
                on_auth=on_auth, allow_insecure_auth=True, auth_methods=methods
            )
            client = SMTPTestClient(server)
            client.ehlo()
            wrong = "bad" if method == "XOAUTH2" else "wrong"
            right = "token" if method == "XOAUTH2" else "pw"
            self.assertEqual(client.auth("al", wrong, method=method).code, 535, method)
            self.assertEqual(client.auth("al", right, method=method.lower()).code, 235, method)
            self.assertEqual(client.session.user, "al")
        self.assertEqual([r.method for r in requests], [m for m in methods for _ in "12"])
        client = SMTPTestClient(make_test_server(on_auth=on_auth, allow_insecure_auth=True))
        self.assertRaises(ValueError, client.auth, "al", "pw", method="NTLM")

    def test_starttls(self) -> None:
        """
        STARTTLS is simulated: after 220 the session is secure (without TLS
        details), C{on_secure} runs, and EHLO is needed again.
        """
        from tests import certs

        secured: list[Session] = []
        server = make_test_server(
            tls=certs.test_pki().server.options(),
            on_secure=lambda transport, session: secured.append(session),
        )
        client = SMTPTestClient(server)
        self.assertIn("STARTTLS", client.ehlo().text.split("\n"))
        self.assertEqual(client.starttls().code, 220)
        self.assertTrue(client.session.secure)
        self.assertIsNone(client.session.tls)
        self.assertEqual(secured, [client.session])
        self.assertEqual(client.mail("a@example.com").code, 503)
        reply = client.ehlo()
        self.assertNotIn("STARTTLS", reply.text.split("\n"))
        self.assertEqual(client.send("a@example.com", "b@example.com", b"x\r\n"), QUEUED)
        self.assertEqual(client.session.transmission_type, "ESMTPS")


class ParseRepliesTests(SynchronousTestCase):
    """
    L{_parse_replies} splits server output into replies.
    """

    def test_parse(self) -> None:
        """
        Single- and multi-line replies, a code alone, and an incomplete
        reply kept for later.
        """
        replies, rest = _parse_replies(b"250-a\r\n250-b\r\n250 c\r\n221\r\n354 go\r\n250-x\r\n25")
        self.assertEqual(replies, [Reply(250, "a\nb\nc"), Reply(221, ""), Reply(354, "go")])
        self.assertEqual(rest, b"250-x\r\n25")

    def test_garbage(self) -> None:
        """
        A line that is not a reply is an error: the server is broken.
        """
        self.assertRaises(ValueError, _parse_replies, b"hello\r\n")


class BuilderTests(SynchronousTestCase):
    """
    L{make_session}, L{make_address}, L{make_stream}.
    """

    def test_sessionDefaults(self) -> None:
        """
        A session as after EHLO from 192.0.2.1.
        """
        session = make_session()
        self.assertEqual(session.remote_address, "192.0.2.1")
        self.assertEqual(session.client_hostname, "[192.0.2.1]")
        self.assertEqual(session.transmission_type, "ESMTP")
        self.assertIsNone(session.envelope.mail_from)
        self.assertNotEqual(session.id, make_session().id)

    def test_sessionFields(self) -> None:
        """
        Any field can be given; the host name follows the address.
        """
        session = make_session(remote_address="198.51.100.1", user="al", secure=True)
        self.assertEqual(session.client_hostname, "[198.51.100.1]")
        self.assertEqual(session.transmission_type, "ESMTPSA")
        self.assertRaises(TypeError, make_session, colour="blue")

    def test_sessionEnvelope(self) -> None:
        """
        C{mail_from} and C{rcpt_to} build the envelope.
        """
        session = make_session(
            mail_from="a@example.com", rcpt_to=["b@example.com", Address("c@example.com")]
        )
        self.assertEqual(session.envelope.mail_from, Address("a@example.com"))
        self.assertEqual(
            session.envelope.rcpt_to, [Address("b@example.com"), Address("c@example.com")]
        )
        self.assertRaises(
            TypeError, make_session, envelope=session.envelope, mail_from="a@example.com"
        )

    def test_address(self) -> None:
        """
        Parameters are upper-cased into C{args}; NOTIFY and ORCPT fill
        C{dsn} as the server does.
        """
        address = make_address("b@example.com", notify="success, failure", ORCPT="rfc822;x@y", smtputf8=True)
        self.assertEqual(
            address.args, {"NOTIFY": "success, failure", "ORCPT": "rfc822;x@y", "SMTPUTF8": True}
        )
        assert address.dsn is not None
        self.assertEqual((address.dsn.notify, address.dsn.orcpt), (["SUCCESS", "FAILURE"], "rfc822;x@y"))
        self.assertIsNone(make_address("a@example.com").dsn)
        self.assertEqual(make_address("", SIZE="10"), Address("", {"SIZE": "10"}))

    def test_stream(self) -> None:
        """
        A stream holds the body, in chunks if asked, and has ended.
        """
        stream = make_stream(b"0123456789", chunk_size=4)
        self.assertTrue(stream.ended)
        self.assertEqual(stream.byte_length, 10)
        self.assertFalse(stream.size_exceeded)
        chunks: list[bytes] = []

        async def read() -> None:
            async for chunk in stream:
                chunks.append(chunk)

        self.successResultOf(Deferred.fromCoroutine(read()))
        self.assertEqual(chunks, [b"0123", b"4567", b"89"])
        self.assertTrue(make_stream(b"x", size_exceeded=True).size_exceeded)
        self.assertEqual(self.successResultOf(make_stream(b"").read()), b"")
        self.assertRaises(ValueError, make_stream, b"x", chunk_size=0)


class RunHookTests(SynchronousTestCase):
    """
    L{run_hook} calls one hook as the server does.
    """

    def test_kinds(self) -> None:
        """
        A plain function, a fired Deferred and a coroutine give their
        result.
        """

        async def coroutine(x: int) -> int:
            return await succeed(x + 1)

        self.assertEqual(run_hook(lambda x: x * 2, 21), 42)
        self.assertEqual(run_hook(lambda x: succeed(x), "d"), "d")
        self.assertEqual(run_hook(coroutine, 1), 2)

    def test_raises(self) -> None:
        """
        What the hook raises (or fails its Deferred with) is raised.
        """

        async def reject(address: Address, session: Session) -> None:
            raise SMTPError("no", code=551)

        error = self.assertRaises(SMTPError, run_hook, reject, make_address("a@b"), make_session())
        self.assertEqual(error.code, 551)

    def test_pending(self) -> None:
        """
        A hook that has not finished raises L{HookPending}; its later
        failure is not logged as unhandled.
        """
        d: Deferred[None] = Deferred()
        self.assertRaises(HookPending, run_hook, lambda: d)
        d.errback(RuntimeError("later"))
        self.assertEqual(self.flushLoggedErrors(RuntimeError), [])


# -- the examples of docs/testing.md ---------------------------------------------


def load(name: str, path: Path) -> ModuleType:
    """
    Import the file C{path} as the module C{name}.
    """
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_examples() -> ModuleType:
    """
    Import docs/examples/my_hooks.py (as C{my_hooks}, the name the example
    tests import) and docs/examples/test_my_hooks.py.
    """
    load("my_hooks", EXAMPLES / "my_hooks.py")
    return load("docs_example_test_my_hooks", EXAMPLES / "test_my_hooks.py")


class ExampleTests(TestCase):
    """
    The examples of docs/testing.md pass.
    """

    def test_trialExample(self) -> None:
        """
        Every test of docs/examples/test_my_hooks.py passes.
        """
        module = load_examples()
        suite = TestLoader().loadModule(module)
        result = TestResult()
        suite.run(result)
        problems = [
            f"{test}: {error}" for test, error in result.errors + result.failures
        ]
        self.assertEqual(problems, [])
        self.assertEqual(result.testsRun, 9)
        self.assertTrue(result.wasSuccessful())

    def test_pytestExample(self) -> Deferred[None]:
        """
        docs/examples/test_my_hooks_pytest.py passes under pytest, run from
        the examples directory as its docstring says.
        """
        if importlib.util.find_spec("pytest") is None:
            raise SkipTest("pytest is not installed")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        argv = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "test_my_hooks_pytest.py",
        ]
        d = run_process(argv, timeout=120, env=env, path=str(EXAMPLES))

        def check(result: tuple[int, bytes, bytes]) -> None:
            code, out, err = result
            report = (out + err).decode("utf-8", "replace")
            self.assertEqual(code, 0, report)
            self.assertIn("4 passed", report)

        return d.addCallback(check)

    def test_guideCodeIsExampleCode(self) -> None:
        """
        Every Python block of docs/testing.md is taken from a file under
        docs/examples/ (so it is run above), word for word once dedented.
        """
        guide = GUIDE.read_text(encoding="utf-8")
        blocks = re.findall(r"```python\n(.*?)```", guide, re.DOTALL)
        self.assertGreater(len(blocks), 3)
        sources = {
            path.name: path.read_text(encoding="utf-8")
            for path in EXAMPLES.glob("*.py")
        }
        normalized = {name: _squash(text) for name, text in sources.items()}
        missing = [
            block
            for block in blocks
            if not any(_squash(block) in text for text in normalized.values())
        ]
        self.assertEqual(missing, [], "blocks of docs/testing.md not found in docs/examples/")

    def test_guideNamesExamples(self) -> None:
        """
        The guide links to its example files, which exist.
        """
        guide = GUIDE.read_text(encoding="utf-8")
        for name in ["my_hooks.py", "test_my_hooks.py", "test_my_hooks_pytest.py"]:
            self.assertIn(f"(examples/{name})", guide)
            self.assertTrue((EXAMPLES / name).is_file(), name)


def _squash(text: str) -> str:
    """
    C{text} with each line stripped of its indentation and blank lines
    dropped, so that a block quoted from inside a class matches.
    """
    return "\n".join(line.strip() for line in text.splitlines() if line.strip())
