"""
Real-socket tests of input that could wedge a server: command lines split across reads,
floods of pipelined commands, clients that never read.  The server runs in a child
process (L{ChildServer}), so that a server stuck in a loop fails the test after a bound
instead of freezing the test run; the child is killed at the end of each test.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.wire import ChildServer, connect, open_session, within

#: Seconds to wait for something that a working server does within milliseconds.
BOUND = 3.0



class SplitInputTests(TestCase):
    """
    Command lines may arrive in pieces.
    """

    timeout = 60

    @inlineCallbacks
    def test_commandSplitAcrossReads(self) -> Any:
        """
        C{NOOP\\r\\nNO} then C{OP\\r\\n}: the first NOOP is answered at once, the second
        once its line is complete (a client's TCP segments may split a line anywhere).
        """
        child = yield ChildServer.start(self)
        client = yield connect(self, child.port)
        sock = client.transport.getHandle()
        # Direct sends: each arrives at the server as one read.
        sock.send(b"NOOP\r\nNO")
        reply = yield within(client.reply(), BOUND)
        self.assertEqual(reply.code, 250, str(reply))
        sock.send(b"OP\r\n")
        reply = yield within(client.reply(), BOUND)
        self.assertEqual(reply.code, 250, str(reply))


    @inlineCallbacks
    def test_hugeLine(self) -> Any:
        """
        A 100 kB command line (read in several pieces, each beyond the limit) is one
        C{500 5.5.2}; the next line is served.
        """
        child = yield ChildServer.start(self)
        client = yield open_session(self, child.port)
        client.send(b"MAIL FROM:<" + b"a" * 100_000 + b"@example.com>\r\nNOOP\r\n")
        replies = yield within(client.next_replies(2), BOUND)
        self.assertEqual(
            [(r.code, r.enhanced) for r in replies], [(500, "5.5.2"), (250, "2.0.0")]
        )


class FloodTests(TestCase):
    """
    Many pipelined commands at once.
    """

    timeout = 60

    @inlineCallbacks
    def test_manyPipelinedCommands(self) -> Any:
        """
        5001 short commands in one write (far more than C{max_command_length} bytes in
        all) are each answered, in order; none is mistaken for an over-long line.
        """
        child = yield ChildServer.start(self)
        client = yield open_session(self, child.port)
        client.send(b"NOOP\r\n" * 2500 + b"RSET\r\n" * 2500 + b"VRFY x\r\n")
        replies = yield within(client.next_replies(5001), 10.0)
        self.assertEqual([r.code for r in replies], [250] * 5000 + [252])

    @inlineCallbacks
    def test_quitAfterManyReplies(self) -> Any:
        """
        After a batch big enough to fill the server's send buffer, QUIT still closes the
        connection (and C{on_close} runs) once the 221 is out.
        """
        child = yield ChildServer.start(self)
        client = yield open_session(self, child.port)
        client.send(b"NOOP\r\n" * 5000 + b"QUIT\r\n")
        replies = yield within(client.next_replies(5001), 10.0)
        self.assertEqual(replies[-1].code, 221)
        yield within(client.lost, BOUND)
        yield within(child.closed.wait_for(1), BOUND)

    @inlineCallbacks
    def test_socketTimeoutClientNotReading(self) -> Any:
        """
        A client that pipelines commands but never reads the replies fills the socket
        buffers until the server stops reading it; it is then idle, and after
        C{socket_timeout} it must be disconnected (C{on_close} runs) even though the
        C{421} cannot be delivered; otherwise such clients hold connections (and
        C{max_clients} slots) forever.
        """
        child = yield ChildServer.start(self, socket_timeout=0.3)
        client = yield open_session(self, child.port)
        client.transport.pauseProducing()  # stop reading replies
        # About 30 MB of HELP replies: more than loopback socket buffers hold.
        client.send(b"HELP\r\n" * 200_000)
        yield within(child.closed.wait_for(1), 5.0)



class SlowReaderTests(TestCase):
    """
    A client that reads its replies slowly is not idle.
    """

    timeout = 60

    @inlineCallbacks
    def test_repliesQueuedInTheKernel(self) -> Any:
        """
        A client pipelines 10,000 HELP commands and reads the replies (about
        a megabyte, mostly queued in the server's kernel send buffer) over
        about four times C{socket_timeout}: the server counts the shrinking
        queue as activity, answers every command, and serves the NOOP after.
        """
        import socket
        import time

        from twisted.internet.threads import deferToThread

        from smtphooks import SMTPServer

        server = SMTPServer(disable_reverse_lookup=True, name="slow.test", socket_timeout=0.5)
        port = yield server.listen("tcp:0:interface=127.0.0.1")
        self.addCleanup(server.close, 1)
        number = port.getHost().port
        count = 10_000

        def client() -> tuple[int, bytes]:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(10)
            sock.connect(("127.0.0.1", number))
            try:
                sock.recv(1000)
                sock.sendall(b"HELP\r\n" * count)
                got = bytearray()
                start = time.monotonic()
                while got.count(b"\r\n214 ") + got.startswith(b"214 ") < count:
                    data = sock.recv(4096)
                    if not data or b"421" in data:
                        break
                    got += data
                    # About 2 seconds for the whole megabyte.
                    ahead = len(got) / 500_000 - (time.monotonic() - start)
                    if ahead > 0:
                        time.sleep(ahead)
                sock.sendall(b"NOOP\r\n")
                tail = sock.recv(1000)
                return got.count(b"\r\n214 ") + got.startswith(b"214 "), tail
            finally:
                sock.close()

        answered, tail = yield deferToThread(client)
        self.assertEqual(answered, count)
        self.assertTrue(tail.startswith(b"250 "), tail)


class ChildServerTests(TestCase):
    """
    The child-process server used above works (so that the todo tests fail for the
    reason they state).
    """

    timeout = 60

    @inlineCallbacks
    def test_childServes(self) -> Any:
        """
        A child server answers a dialogue and reports C{on_close}.
        """
        child = yield ChildServer.start(self)
        client = yield open_session(self, child.port)
        reply = yield client.command("QUIT")
        self.assertEqual(reply.code, 221)
        yield within(client.lost, BOUND)
        yield within(child.closed.wait_for(1), BOUND)
        self.assertEqual(child.closed.count, 1)
