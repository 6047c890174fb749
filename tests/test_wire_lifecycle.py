"""
Real-socket tests of the life of connections: C{on_close}, C{server.connections} and the
graceful C{server.close()}.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionRefusedError
from twisted.trial.unittest import TestCase

from smtphooks import DataStream, Session, SMTPError, SMTPServer

from tests.wire import (
    SERVER_NAME,
    Counter,
    LineClient,
    connect,
    leaked_calls,
    open_session,
    start_server,
    with_smtp,
)


class OnCloseTests(TestCase):
    """
    C{on_close} runs exactly once per connection, however the connection ended.
    """

    timeout = 60

    @inlineCallbacks
    def test_oncePerConnection(self) -> Any:
        """
        Connections ended by QUIT, by the client dropping the socket after EHLO, during a
        transaction, in the middle of DATA, and by smtplib after a message, each get one
        C{on_close}, with their own session; closing the server afterwards calls no more.
        """
        closed: list[str] = []
        counter = Counter()

        def on_close(session: Session) -> None:
            closed.append(session.id)
            counter()

        server = SMTPServer(on_close=on_close, disable_reverse_lookup=True, name=SERVER_NAME)
        port = yield start_server(self, server)

        quitter = yield open_session(self, port)
        yield quitter.command("QUIT")
        yield quitter.lost

        dropper = yield open_session(self, port)
        yield dropper.disconnect()

        mid = yield open_session(self, port)
        yield mid.command("MAIL FROM:<a@example.com>")
        yield mid.disconnect()

        in_data = yield open_session(self, port)
        in_data.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
        yield in_data.next_replies(3)
        in_data.send(b"Subject: cut\r\n\r\npart of a body")
        yield in_data.disconnect()

        yield with_smtp(port, lambda s: s.sendmail("a@example.com", ["b@example.com"], b"x\r\n"))

        yield counter.wait_for(5)
        yield server.close()
        self.assertEqual(len(closed), 5)
        self.assertEqual(len(set(closed)), 5)
        self.assertEqual(server.connections, [])

    @inlineCallbacks
    def test_disconnectWhileOnDataReads(self) -> Any:
        """
        A client that goes away in the middle of DATA while C{on_data} iterates the stream:
        the hook's iteration fails (the message is incomplete), C{on_close} runs once, and
        the server leaves nothing scheduled behind (the test's reactor is clean).
        """
        before = set(reactor.getDelayedCalls())
        closed = Counter()
        outcome: list[object] = []
        started = Counter()

        async def on_data(stream: DataStream, session: Session) -> None:
            started()
            try:
                async for chunk in stream:
                    pass
            except BaseException as e:
                outcome.append(type(e).__name__)
                raise
            outcome.append("ended")

        port = yield start_server(self, on_data=on_data, on_close=closed)
        client = yield open_session(self, port)
        client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
        yield client.next_replies(3)
        yield started.wait_for(1)
        client.send(b"Subject: cut\r\n\r\npart of a body\r\n")
        yield client.disconnect()
        yield closed.wait_for(1)
        self.assertEqual(len(outcome), 1)
        self.assertNotEqual(outcome, ["ended"])
        self.assertEqual(closed.count, 1)
        self.assertEqual(leaked_calls(before), [])

    @inlineCallbacks
    def test_closeRunsOnCloseBeforeFiring(self) -> Any:
        """
        When C{server.close()} fires, C{on_close} has run for every connection it closed
        (SPEC §2: "runs on_close for each, and fires when all are gone").
        """
        closed = Counter()
        server = SMTPServer(on_close=closed, disable_reverse_lookup=True, name=SERVER_NAME)
        port = yield start_server(self, server)
        clients = []
        for _ in range(3):
            clients.append((yield open_session(self, port)))
        try:
            yield server.close()
            self.assertEqual(closed.count, 3)
        finally:
            for client in clients:
                yield client.lost



class ConnectionsTests(TestCase):
    """
    C{server.connections} lists the sessions of the live connections.
    """

    timeout = 60

    @inlineCallbacks
    def test_liveSessions(self) -> Any:
        """
        Two connected clients are two sessions, whose remote ports are the clients' own;
        after one quits (and its C{on_close} ran), only the other is listed.
        """
        closed = Counter()
        server = SMTPServer(on_close=closed, disable_reverse_lookup=True, name=SERVER_NAME)
        port = yield start_server(self, server)
        self.assertEqual(server.connections, [])
        one = yield open_session(self, port)
        two = yield open_session(self, port)
        ports = {one.transport.getHost().port, two.transport.getHost().port}
        sessions = server.connections
        self.assertEqual(len(sessions), 2)
        self.assertEqual({s.remote_port for s in sessions}, ports)
        self.assertEqual({s.remote_address for s in sessions}, {"127.0.0.1"})
        self.assertTrue(all(isinstance(s.id, str) and s.id for s in sessions))
        yield one.command("QUIT")
        yield closed.wait_for(1)
        remaining = server.connections
        self.assertEqual([s.remote_port for s in remaining], [two.transport.getHost().port])

    @inlineCallbacks
    def test_noDelay(self) -> Any:
        """
        Accepted TCP sockets have C{TCP_NODELAY} set: the server sends the
        replies to one read together, and a reply that follows a delayed hook
        must not wait for the client's acknowledgement of the previous one.
        """
        server = SMTPServer(disable_reverse_lookup=True, name=SERVER_NAME)
        port = yield start_server(self, server)
        client = yield open_session(self, port)
        [protocol] = server._protocols
        sock = protocol.transport.getHandle()
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 1)
        reply = yield client.command("NOOP")
        self.assertEqual(reply.code, 250)


class GracefulCloseTests(TestCase):
    """
    C{server.close()} stops listening, says C{421} to idle clients, lets a transaction in
    progress finish, then says C{421} to that client too.
    """

    timeout = 60

    @inlineCallbacks
    def test_idleAndBusyClients(self) -> Any:
        """
        An idle client gets C{421} and is disconnected at once; a client in the middle of
        a transaction can send its message (C{250}), then gets C{421}; C{close()} fires
        only once both are gone, after which the port refuses connections.
        """
        bodies: list[bytes] = []

        async def on_data(stream: DataStream, session: Session) -> None:
            bodies.append(await stream.read())

        closed = Counter()
        server = SMTPServer(
            on_data=on_data, on_close=closed, disable_reverse_lookup=True, name=SERVER_NAME
        )
        port = yield start_server(self, server)
        idle = yield open_session(self, port)
        busy = yield open_session(self, port)
        for line in ("MAIL FROM:<a@example.com>", "RCPT TO:<b@example.com>"):
            reply = yield busy.command(line)
            self.assertEqual(reply.code, 250)

        done = server.close()
        fired: list[object] = []

        def record(result: object) -> object:
            fired.append(result)
            return result

        done.addBoth(record)

        reply = yield idle.reply()
        self.assertEqual(reply.code, 421, str(reply))
        self.assertEqual(reply.enhanced, "4.3.2")
        yield idle.lost
        self.assertEqual(fired, [])

        reply = yield busy.command("DATA")
        self.assertEqual(reply.code, 354, str(reply))
        self.assertEqual(fired, [])
        busy.send(b"Subject: last one\r\n\r\nfinished during shutdown\r\n.\r\n")
        replies = yield busy.next_replies(2)
        self.assertEqual([r.code for r in replies], [250, 421], [str(r) for r in replies])
        yield busy.lost
        yield done
        self.assertEqual(bodies, [b"Subject: last one\r\n\r\nfinished during shutdown\r\n"])
        self.assertEqual(closed.count, 2)
        self.assertEqual(server.connections, [])
        yield self.assertFailure(
            connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), LineClient()),
            ConnectionRefusedError,
        )

    @inlineCallbacks
    def test_closeTimeout(self) -> Any:
        """
        A client that keeps a transaction open past the close timeout gets C{421} and is
        disconnected; C{close()} then fires.
        """
        server = SMTPServer(disable_reverse_lookup=True, name=SERVER_NAME)
        port = yield start_server(self, server)
        busy = yield open_session(self, port)
        reply = yield busy.command("MAIL FROM:<a@example.com>")
        self.assertEqual(reply.code, 250)
        done = server.close(timeout=0.2)
        reply = yield busy.reply()
        self.assertEqual(reply.code, 421, str(reply))
        yield busy.lost
        yield done

    @inlineCallbacks
    def test_closeWithoutConnections(self) -> Any:
        """
        Closing a server with no client fires at once and the port is closed.
        """
        server = SMTPServer(disable_reverse_lookup=True, name=SERVER_NAME)
        port = yield start_server(self, server)
        client = yield connect(self, port)
        yield client.command("QUIT")
        yield client.lost
        d: Deferred[None] = server.close()
        yield d
        yield self.assertFailure(
            connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), LineClient()),
            ConnectionRefusedError,
        )


class ConnectHookTests(TestCase):
    """
    C{on_connect} runs before the greeting and can refuse the connection.
    """

    timeout = 60

    @inlineCallbacks
    def test_rejectConnection(self) -> Any:
        """
        C{SMTPError} from C{on_connect} is the greeting (C{554} by default) and the
        connection is closed; C{on_close} still runs once; the next client is greeted.
        """
        closed = Counter()
        calls: list[str] = []

        def on_connect(session: Session) -> None:
            calls.append(session.remote_address)
            if len(calls) == 1:
                raise SMTPError("You are not welcome")

        port = yield start_server(self, on_connect=on_connect, on_close=closed)
        client = yield connect(self, port)
        self.assertEqual(client.greeting.code, 554, str(client.greeting))
        self.assertIn("You are not welcome", client.greeting.text)
        yield client.lost
        yield closed.wait_for(1)
        client = yield connect(self, port)
        self.assertEqual(client.greeting.code, 220, str(client.greeting))
        self.assertEqual(calls, ["127.0.0.1", "127.0.0.1"])

    @inlineCallbacks
    def test_connectHookCrash(self) -> Any:
        """
        An unexpected exception in C{on_connect} is C{421} and close, and it is logged.
        """
        closed = Counter()

        def on_connect(session: Session) -> None:
            raise RuntimeError("bug in on_connect")

        port = yield start_server(self, on_connect=on_connect, on_close=closed)
        client = yield connect(self, port)
        self.assertEqual(client.greeting.code, 421, str(client.greeting))
        yield client.lost
        yield closed.wait_for(1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @inlineCallbacks
    def test_greetingWaitsForHook(self) -> Any:
        """
        The greeting is sent only once an asynchronous C{on_connect} has answered.
        """
        gate: Deferred[None] = Deferred()
        called = Counter()

        def on_connect(session: Session) -> Deferred[None]:
            called()
            return gate

        port = yield start_server(self, on_connect=on_connect)
        client = yield connect(self, port, greeting=False)
        yield called.wait_for(1)
        self.assertEqual(client.received, b"")
        gate.callback(None)
        reply = yield client.reply()
        self.assertEqual(reply.code, 220, str(reply))

    @inlineCallbacks
    def test_earlyTalkerDuringConnectHook(self) -> Any:
        """
        A client that sends a command before the greeting (while C{on_connect} is still
        pending) gets C{421} instead of being served (SPEC §6, early talker).
        """
        gate: Deferred[None] = Deferred()
        called = Counter()

        def on_connect(session: Session) -> Deferred[None]:
            called()
            return gate

        port = yield start_server(self, on_connect=on_connect)
        client = yield connect(self, port, greeting=False)
        yield called.wait_for(1)
        # A direct send: on loopback the bytes are in the server's socket buffer when it
        # returns, so they were certainly sent before the greeting.
        client.transport.getHandle().send(b"EHLO early.example.test\r\n")
        # Answer the hook two reactor iterations later: the reactor polls the
        # sockets between them, so the server has read the early bytes.
        reactor.callLater(0, reactor.callLater, 0, gate.callback, None)
        reply = yield client.reply()
        self.assertEqual(reply.code, 421, str(reply))
        yield client.lost

