"""
Helpers for the tests that talk to a real L{smtphooks.SMTPServer} over loopback sockets
(C{tests/test_wire_*.py}): starting a server on an ephemeral port (in this process, or in
a child process for input that might wedge it), a raw line client that collects replies,
a pull producer that sends big bodies in bounded memory, smtplib in a thread, and a
counter that tests can wait on instead of sleeping.
"""

from __future__ import annotations

import json
import os
import re
import resource
import smtplib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone, ProcessExitedAlready
from twisted.internet.interfaces import IPullProducer
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from smtphooks import SMTPServer

__all__ = [
    "LOCAL",
    "SERVER_NAME",
    "BodyProducer",
    "ChildServer",
    "Counter",
    "LineClient",
    "WireReply",
    "connect",
    "current_rss",
    "later",
    "leaked_calls",
    "max_rss",
    "open_session",
    "start_server",
    "still_serving",
    "with_smtp",
    "within",
]

#: Where every test server listens: an ephemeral port on the IPv4 loopback.
LOCAL = "tcp:0:interface=127.0.0.1"

#: The C{name} option given to test servers, so that no test depends on the host's FQDN.
SERVER_NAME = "mx.example.test"

#: Seconds a test waits for something that normally takes milliseconds.  Only a bound for
#: when the server misbehaves: tests never wait for a fixed time.
PATIENCE = 20.0

_T = TypeVar("_T")


# -- servers -----------------------------------------------------------------------------


@inlineCallbacks
def start_server(
    test: TestCase,
    server: SMTPServer | None = None,
    *,
    cleanup_timeout: float = 5.0,
    **kwargs: Any,
) -> Any:  # Deferred[int]
    """
    Start a server on L{LOCAL} and close it when the test ends.

    @param test: the running test (for cleanups).
    @param server: a server built by the test; by default one is built from C{kwargs}
        with C{disable_reverse_lookup=True} and C{name=SERVER_NAME} unless they are given.
    @param cleanup_timeout: the C{timeout} of the C{server.close()} that ends the test.
    @param kwargs: hooks and options for the server built here.
    @return: a L{Deferred} that fires with the port number.
    """
    if server is None:
        kwargs.setdefault("disable_reverse_lookup", True)
        kwargs.setdefault("name", SERVER_NAME)
        server = SMTPServer(**kwargs)
    elif kwargs:
        raise TypeError("give either a server or the arguments to build one")
    port = yield server.listen(LOCAL)
    # Clients' cleanups are added later, so they run before this one.
    test.addCleanup(server.close, cleanup_timeout)
    return port.getHost().port


class ChildServer(ProcessProtocol):
    """
    A server in a child Python process, for input that might wedge a server (an endless
    loop would freeze the test's own reactor, and with it the whole test run): the child
    is killed when the test ends, whatever state it is in.

    The child prints C{PORT <n>} once listening and C{CLOSE <session id>} from its
    C{on_close}.

    @ivar port: the port number, once L{start} has fired.
    @ivar closed: counts the child's C{on_close} calls.
    @ivar stderr: what the child wrote to its standard error.
    """

    def __init__(self) -> None:
        self.port = 0
        self.closed = Counter()
        self.stderr = b""
        self._out = b""
        self._listening: Deferred[int] = Deferred()
        self._ended: Deferred[None] = Deferred()

    @classmethod
    @inlineCallbacks
    def start(cls, test: TestCase, **options: Any) -> Any:  # Deferred[ChildServer]
        """
        Start a child server with these options (JSON-serialisable values only), on
        L{LOCAL}, with C{disable_reverse_lookup=True} and C{name=SERVER_NAME}.

        @return: a L{Deferred} that fires with the L{ChildServer} once it listens.
        """
        from twisted.internet import reactor

        options.setdefault("disable_reverse_lookup", True)
        options.setdefault("name", SERVER_NAME)
        child = cls()
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        code = "from tests.wire import _child_main; _child_main()"
        reactor.spawnProcess(
            child, sys.executable, [sys.executable, "-c", code, json.dumps(options)], env=env
        )
        test.addCleanup(child.kill)
        try:
            child.port = yield within(child._listening, PATIENCE)
        except BaseException:
            test.fail(f"child server did not start: {child.stderr.decode(errors='replace')}")
        return child

    def outReceived(self, data: bytes) -> None:
        self._out += data
        while b"\n" in self._out:
            line, self._out = self._out.split(b"\n", 1)
            word, _, rest = line.decode().partition(" ")
            if word == "PORT":
                self._listening.callback(int(rest))
            elif word == "CLOSE":
                self.closed()

    def errReceived(self, data: bytes) -> None:
        self.stderr += data

    def processEnded(self, reason: Failure) -> None:
        if not self._listening.called:
            self._listening.errback(reason)
        self._ended.callback(None)

    def kill(self) -> Deferred[None]:
        """
        Kill the child (if it still runs).

        @return: a L{Deferred} that fires once it is gone.
        """
        if not self._ended.called and self.transport is not None:
            try:
                self.transport.signalProcess("KILL")
            except ProcessExitedAlready:
                pass
        d: Deferred[None] = Deferred()

        def ended(result: object) -> object:
            d.callback(None)
            return result

        self._ended.addBoth(ended)
        return d


def _child_main() -> None:
    """
    The body of a L{ChildServer} process.
    """
    from twisted.internet import reactor

    options = json.loads(sys.argv[1])

    def on_close(session: Any) -> None:
        print("CLOSE", session.id, flush=True)

    server = SMTPServer(on_close=on_close, **options)

    def listening(port: Any) -> None:
        print("PORT", port.getHost().port, flush=True)

    server.listen(LOCAL).addCallback(listening)
    reactor.run()


# -- replies -----------------------------------------------------------------------------

_ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")


@dataclass
class WireReply:
    """
    One SMTP reply as it came over the wire.

    @ivar code: the three-digit reply code.
    @ivar lines: the text of each line, without the code and the separator.
    """

    code: int
    lines: list[str]

    @property
    def enhanced(self) -> str | None:
        """
        The RFC 3463 enhanced status code at the start of the last line, or L{None}.
        """
        first = self.lines[-1].split(" ", 1)[0] if self.lines else ""
        return first if _ENHANCED.match(first) else None

    @property
    def text(self) -> str:
        """
        All lines, joined with newlines.
        """
        return "\n".join(self.lines)

    def __str__(self) -> str:
        return " | ".join(f"{self.code} {line}" for line in self.lines)


class ConnectionClosed(Exception):
    """
    The connection ended while a test was waiting for a reply.
    """


class LineClient(Protocol):
    """
    A raw SMTP client: it sends whatever bytes a test gives it and parses the replies.

    @ivar received: every byte received, for tests of exact bytes.
    @ivar replies: every complete reply, in order.
    @ivar lost: a L{Deferred} that fires with the exception that ended the connection
        (C{ConnectionDone}, C{ConnectionLost}, ...), as a value.
    @ivar greeting: the first reply, once L{connect} has waited for it.
    """

    def __init__(self) -> None:
        self.received = b""
        self.replies: list[WireReply] = []
        self.lost: Deferred[BaseException] = Deferred()
        self.greeting: WireReply | None = None
        self._buffer = b""
        self._partial: list[str] = []
        self._read = 0
        self._waiters: list[tuple[int, Deferred[list[WireReply]]]] = []
        self._closed = False

    # Protocol

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self._buffer += data
        while True:
            line, sep, rest = self._buffer.partition(b"\r\n")
            if not sep:
                break
            self._buffer = rest
            text = line.decode("utf-8", "replace")
            self._partial.append(text[4:])
            if text[3:4] != "-":
                code = int(text[:3]) if text[:3].isdigit() else 0
                self.replies.append(WireReply(code, self._partial))
                self._partial = []
        self._wake()

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self._closed = True
        waiters, self._waiters = self._waiters, []
        for count, d in waiters:
            d.errback(
                ConnectionClosed(
                    f"connection closed while waiting for {count} replies; "
                    f"unread: {[str(r) for r in self.replies[self._read:]]}, "
                    f"partial: {self._buffer!r}"
                )
            )
        self.lost.callback(cast(BaseException, reason.value))

    # Sending

    def send(self, data: bytes) -> None:
        """
        Write raw bytes.
        """
        assert self.transport is not None
        self.transport.write(data)

    def command(self, line: str | bytes) -> Deferred[WireReply]:
        """
        Send one command line (CRLF is added) and wait for the next reply.
        """
        if isinstance(line, str):
            line = line.encode("utf-8")
        self.send(line + b"\r\n")
        return self.reply()

    # Receiving

    def reply(self) -> Deferred[WireReply]:
        """
        @return: a L{Deferred} that fires with the next reply not read yet.
        """
        return self.next_replies(1).addCallback(lambda replies: replies[0])

    def next_replies(self, count: int) -> Deferred[list[WireReply]]:
        """
        @return: a L{Deferred} that fires with the next C{count} replies not read yet; it
            fails with L{ConnectionClosed} if the connection ends first.
        """
        d: Deferred[list[WireReply]] = Deferred()
        self._waiters.append((count, d))
        self._wake()
        if self._closed and not d.called:
            self._waiters.remove((count, d))
            d.errback(ConnectionClosed(f"connection closed; wanted {count} more replies"))
        return d

    def _wake(self) -> None:
        while self._waiters:
            count, d = self._waiters[0]
            if len(self.replies) - self._read < count:
                return
            self._waiters.pop(0)
            got = self.replies[self._read:self._read + count]
            self._read += count
            d.callback(got)

    def disconnect(self) -> Deferred[BaseException]:
        """
        Abort the connection (if it is still open).

        @return: L{lost}'s result, without consuming it.
        """
        d: Deferred[BaseException] = Deferred()

        def lost(reason: BaseException) -> BaseException:
            d.callback(reason)
            return reason

        self.lost.addCallback(lost)
        if not self._closed and self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]
        return d


@inlineCallbacks
def connect(test: TestCase, port: int, *, greeting: bool = True) -> Any:  # Deferred[LineClient]
    """
    Connect a L{LineClient} to a local server; it is disconnected when the test ends.

    @param greeting: wait for the greeting (kept in C{client.greeting}).
    @return: a L{Deferred} that fires with the client.
    """
    from twisted.internet import reactor

    client = LineClient()
    yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
    test.addCleanup(client.disconnect)
    if greeting:
        client.greeting = yield client.reply()
    return client


@inlineCallbacks
def open_session(test: TestCase, port: int, helo: str = "EHLO client.example.test") -> Any:
    """
    Connect, wait for the greeting, and send C{helo}; the reply must be 250.

    @return: a L{Deferred} that fires with the L{LineClient}.
    """
    client = yield connect(test, port)
    test.assertEqual(client.greeting.code, 220, str(client.greeting))
    reply = yield client.command(helo)
    test.assertEqual(reply.code, 250, str(reply))
    return client


@inlineCallbacks
def up_to_data(test: TestCase, client: Any) -> Any:  # Deferred[None]
    """
    Take a connected client through EHLO, MAIL, RCPT and DATA (C{354}),
    so that it is in the middle of a transaction.
    """
    for line, code in [
        ("EHLO client.example.net", 250),
        ("MAIL FROM:<a@example.org>", 250),
        ("RCPT TO:<b@example.com>", 250),
        ("DATA", 354),
    ]:
        reply = yield client.command(line)
        test.assertEqual(reply.code, code, f"{line}: {reply}")


@inlineCallbacks
def still_serving(test: TestCase, port: int) -> Any:  # Deferred[None]
    """
    Check that a new client gets a full dialogue, one message included.
    """
    client = yield open_session(test, port)
    for line, code in [
        ("NOOP", 250),
        ("MAIL FROM:<second@example.com>", 250),
        ("RCPT TO:<rcpt@example.com>", 250),
        ("DATA", 354),
    ]:
        reply = yield client.command(line)
        test.assertEqual(reply.code, code, f"{line}: {reply}")
    reply = yield client.command(b"Subject: still serving\r\n\r\nhello\r\n.")
    test.assertEqual(reply.code, 250, str(reply))
    reply = yield client.command("QUIT")
    test.assertEqual(reply.code, 221, str(reply))
    yield client.lost


# -- bodies ----------------------------------------------------------------------------


@implementer(IPullProducer)
class BodyProducer:
    """
    Write the same chunk C{count} times, then C{tail}, to a transport, one chunk each
    time the transport asks for more: the sender's memory stays at one chunk however big
    the body.

    @ivar done: a L{Deferred} that fires when everything was handed to the transport.
    """

    def __init__(
        self,
        transport: Any,
        chunk: bytes,
        count: int,
        tail: bytes,
        on_chunk: Callable[[], None] | None = None,
    ) -> None:
        self._transport = transport
        self._chunk = chunk
        self._left = count
        self._tail = tail
        self._on_chunk = on_chunk
        self.done: Deferred[None] = Deferred()

    def start(self) -> Deferred[None]:
        """
        Register with the transport and start writing.
        """
        self._transport.registerProducer(self, False)
        return self.done

    def resumeProducing(self) -> None:
        if self.done.called:
            return
        if self._on_chunk is not None:
            self._on_chunk()
        if self._left:
            self._left -= 1
            self._transport.write(self._chunk)
            return
        self._transport.write(self._tail)
        self._transport.unregisterProducer()
        self.done.callback(None)

    def stopProducing(self) -> None:
        if not self.done.called:
            self.done.errback(ConnectionClosed(f"stopped with {self._left} chunks left"))


def max_rss() -> int:
    """
    @return: the peak resident set size of this process so far, in bytes.
    """
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def current_rss() -> int | None:
    """
    @return: the current resident set size of this process in bytes, or L{None} where
        C{/proc} is not available.
    """
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


# -- waiting -----------------------------------------------------------------------------


class Counter:
    """
    Count events (hook calls) and let a test wait until a number is reached.
    """

    def __init__(self) -> None:
        self.count = 0
        self._waiters: list[tuple[int, Deferred[int]]] = []

    def __call__(self, *args: object) -> None:
        """
        Count one event; usable directly as a hook.
        """
        self.count += 1
        waiting = [(n, d) for n, d in self._waiters if self.count >= n]
        self._waiters = [(n, d) for n, d in self._waiters if self.count < n]
        for _, d in waiting:
            d.callback(self.count)

    def wait_for(self, n: int) -> Deferred[int]:
        """
        @return: a L{Deferred} that fires once at least C{n} events were counted.
        """
        d: Deferred[int] = Deferred()
        if self.count >= n:
            d.callback(self.count)
        else:
            self._waiters.append((n, d))
        return d


def later(delay: float, value: object = None, error: BaseException | None = None) -> Deferred[Any]:
    """
    A L{Deferred} that fires with C{value} (or fails with C{error}) after C{delay}
    seconds of the global reactor: for hooks that answer later.
    """
    from twisted.internet import reactor

    d: Deferred[Any] = Deferred()
    if error is not None:
        reactor.callLater(delay, d.errback, error)
    else:
        reactor.callLater(delay, d.callback, value)
    return d


def within(d: Deferred[_T], seconds: float = PATIENCE) -> Deferred[_T]:
    """
    Bound the wait for something that normally happens at once, so that a test whose
    server misbehaves fails with C{TimeoutError} instead of hanging until trial's timeout.
    """
    from twisted.internet import reactor

    return d.addTimeout(seconds, reactor)


def leaked_calls(before: set[Any], horizon: float = 1.0) -> list[str]:
    """
    Find timers that were scheduled since C{before} and are still waiting at least
    C{horizon} seconds: what a finished connection left behind.  They are cancelled, so
    that the test reports them itself (trial's janitor would report them as an error that
    a C{todo} cannot cover).  Trial's timeout of the running test is left alone.

    @param before: C{set(reactor.getDelayedCalls())} taken at the start of the test.
    @return: a description of each.
    """
    from twisted.internet import reactor

    now = reactor.seconds()
    found = []
    for call in reactor.getDelayedCalls():
        if call in before or not call.active() or call.getTime() - now < horizon:
            continue
        func = getattr(call, "func", None)
        if getattr(func, "__module__", "").startswith("twisted.trial"):
            continue  # the test's own timeout
        found.append(f"{func!r} in {call.getTime() - now:.1f}s")
        call.cancel()
    return found


# -- smtplib -----------------------------------------------------------------------------


def with_smtp(port: int, use: Callable[[smtplib.SMTP], _T]) -> Deferred[_T]:
    """
    Run C{use(smtp)} in a thread with an C{smtplib.SMTP} connected to the local server;
    C{QUIT} is sent afterwards (the connection is closed in any case).

    @return: a L{Deferred} that fires with what C{use} returned, or fails with what it
        raised.
    """

    def run() -> _T:
        smtp = smtplib.SMTP("127.0.0.1", port, local_hostname="client.example.test", timeout=PATIENCE)
        try:
            result = use(smtp)
            try:
                smtp.quit()
            except smtplib.SMTPServerDisconnected:
                pass
            return result
        finally:
            smtp.close()

    return deferToThread(run)
