"""
Test your hooks without sockets, threads or a running reactor.

Two kinds of helpers live here:

    - L{SMTPTestClient} drives a whole session against I{your}
      L{SMTPServer} in memory: C{client.ehlo()}, C{client.mail(...)},
      C{client.rcpt(...)}, C{client.data(...)} each send one command and
      return the server's L{Reply}.  Build the server with
      L{make_test_server} (or with C{reactor=task.Clock()} and
      C{disable_reverse_lookup=True}), so that its timers run on a clock the
      test advances.
    - L{make_session}, L{make_address}, L{make_stream} and L{run_hook} build
      the arguments of one hook and call it, to unit-test a hook on its own.

Both work from trial's C{SynchronousTestCase} and from plain pytest
functions: nothing here needs the reactor to run.

A reply is available as soon as the hooks that produce it have finished.
Hooks that return a plain value, and coroutines that only await Deferreds
that have already fired, finish at once, so most tests never wait.  When a
hook returns a Deferred that has not fired yet, the command's reply is
pending: the method raises L{ReplyPending}; fire the Deferred (or advance
C{client.clock} past the server's C{hook_timeout}) and call
L{SMTPTestClient.wait} for the reply.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
from collections import deque
from typing import Any, Iterable, NamedTuple

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from ._data import DataStream
from ._hooks import call_hook
from ._parse import dot_stuff, xtext_encode
from ._protocol import SMTPProtocol
from ._server import SMTPServer
from ._session import Address, Envelope, RecipientDSN, Session

__all__ = [
    "ConnectionClosed",
    "HookPending",
    "Reply",
    "ReplyPending",
    "SMTPTestClient",
    "make_address",
    "make_session",
    "make_stream",
    "make_test_server",
    "run_hook",
]

#: The host name L{make_test_server} gives the server unless told otherwise.
TEST_SERVER_NAME = "mx.example"

#: The most bytes the test client hands the server at once, like one read
#: from a socket; flow control (backpressure) acts between these.
READ_SIZE = 64 * 1024


class Reply(NamedTuple):
    """
    One reply of the server, as a client reads it.

    It compares equal to a plain tuple: C{client.rcpt("b@example.com") ==
    (250, "2.1.5 Recipient OK")}.

    @ivar code: the three-digit reply code.
    @ivar text: the text after the code.  The enhanced status code, if any,
        is its first word; the lines of a multi-line reply are joined with
        C{"\\n"}.
    """

    code: int
    text: str


class ReplyPending(Exception):
    """
    The reply a test asked for has not arrived yet: a hook has not finished
    (it returned a Deferred that has not fired), or the server stopped
    reading the message because C{on_data} does not consume it.

    Fire the Deferred (or advance C{client.clock} past the server's
    C{hook_timeout}), then call L{SMTPTestClient.wait}.
    """


class ConnectionClosed(Exception):
    """
    The connection is closed: the server closed it (after a C{221} or
    C{421} reply, for instance) or the test did.  There is nothing more to
    send, and a reply that has not arrived never will.
    """


class HookPending(Exception):
    """
    L{run_hook} was given a hook that has not finished: it returned a
    Deferred that has not fired yet.
    """


def make_test_server(hooks: object | None = None, **kwargs: Any) -> SMTPServer:
    """
    Build an L{SMTPServer} for tests.

    It is C{SMTPServer(hooks, **kwargs)} with three defaults that make tests
    deterministic, each of which C{kwargs} may override:

        - C{reactor=task.Clock()}: timeouts (C{socket_timeout},
          C{hook_timeout}, C{close_timeout}) happen when the test advances
          C{server.clock}, never on their own;
        - C{disable_reverse_lookup=True}: no DNS query for the client's
          address (C{session.client_hostname} is C{"[192.0.2.1]"});
        - C{name="mx.example"}: the host name in the greeting, instead of
          this machine's.

    @param hooks: as for L{SMTPServer}: an object whose C{on_*} attributes are
        hooks.
    @param kwargs: hooks (C{on_rcpt_to=...}) and options, as for
        L{SMTPServer}.
    @return: the server, ready for L{SMTPTestClient}.
    @raise TypeError: as L{SMTPServer} does, for an unknown option or a value
        of the wrong type.
    @raise ValueError: as L{SMTPServer} does, for a bad value.
    """
    kwargs.setdefault("reactor", Clock())
    kwargs.setdefault("disable_reverse_lookup", True)
    kwargs.setdefault("name", TEST_SERVER_NAME)
    return SMTPServer(hooks, **kwargs)


class _TestTransport(StringTransport):
    """
    An in-memory transport that behaves like a TCP connection in the ways the
    server notices: closing the connection is followed by C{connectionLost},
    soon after (on the clock, as a reactor does it on its next iteration),
    and C{startTLS} is followed by a successful handshake.
    """

    def __init__(self, clock: Clock, host: Any, peer: Any) -> None:
        super().__init__(  # type: ignore[no-untyped-call]
            hostAddress=host, peerAddress=peer, lenient=True
        )
        self._clock = clock
        self.protocol: SMTPProtocol | None = None
        self.lost = False
        self._closing = False
        self.tls = False

    def loseConnection(self) -> None:
        super().loseConnection()  # type: ignore[no-untyped-call]
        if not self._closing:
            self._closing = True
            self._clock.callLater(0, self.connection_lost)

    def startTLS(self, contextFactory: object, *args: object) -> None:
        """
        Pretend to negotiate TLS: the handshake succeeds at once, without
        certificates or encryption.
        """
        self.tls = True
        self._clock.callLater(0, self._handshake)

    def _handshake(self) -> None:
        if self.protocol is not None and not self.lost:
            self.protocol.handshakeCompleted()

    def connection_lost(self, reason: Failure | None = None) -> None:
        """
        Tell the protocol that the connection is gone, once.
        """
        if self.lost:
            return
        self.lost = True
        self.disconnecting = True
        self.connected = False
        self.producerState = "stopped"
        protocol = self.protocol
        if protocol is not None:
            protocol.connectionLost(
                reason or Failure(ConnectionDone())  # type: ignore[no-untyped-call]
            )


def _ip_address(host: str, port: int) -> IPv4Address | IPv6Address:
    if ipaddress.ip_address(host).version == 6:
        return IPv6Address("TCP", host, port)
    return IPv4Address("TCP", host, port)


def _parse_replies(buffer: bytes) -> tuple[list[Reply], bytes]:
    """
    Split server output into complete replies.

    @return: the complete replies, and the bytes of an incomplete one.
    @raise ValueError: for a line that is not part of a reply.
    """
    replies: list[Reply] = []
    texts: list[str] = []
    start = done = 0
    while True:
        end = buffer.find(b"\r\n", start)
        if end < 0:
            break
        line = buffer[start:end].decode("utf-8", "replace")
        start = end + 2
        code, separator, text = line[:3], line[3:4], line[4:]
        if len(code) != 3 or not code.isdigit() or separator not in ("", " ", "-"):
            raise ValueError(f"the server sent a line that is not a reply: {line!r}")
        texts.append(text)
        if separator != "-":
            replies.append(Reply(int(code), "\n".join(texts)))
            texts = []
            done = start
    return replies, buffer[done:]


def _b64(data: str | bytes) -> str:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


class SMTPTestClient:
    """
    An SMTP client connected to a server in memory.

    Creating it opens the connection: the server runs C{on_connect} and sends
    its greeting (L{greeting}).  Each command method sends one command and
    returns the server's L{Reply} to it::

        server = make_test_server(on_rcpt_to=my_rcpt_hook)
        client = SMTPTestClient(server)
        assert client.ehlo().code == 250
        assert client.mail("alice@example.com") == (250, "2.1.0 Sender OK")
        assert client.rcpt("nobody@example.com").code == 550

    A command whose reply depends on a hook that has not finished raises
    L{ReplyPending}; the command was sent all the same, and commands sent
    after it are pipelined behind it.  Fire the hook's Deferred, or advance
    L{clock} past C{hook_timeout}, then call L{wait} for the reply.

    The client sends what a test asks for without checking it, so that
    tests can send wrong commands on purpose; L{command} and L{write} send
    anything at all.

    STARTTLS is simulated: after C{220}, the handshake succeeds at once, so
    C{session.secure} becomes L{True} but C{session.tls} stays L{None} (there
    is no certificate and no cipher).  Test real TLS over a socket.

    @ivar server: the server.
    @ivar clock: the server's clock; advance it to make timeouts happen.
    @ivar protocol: the server's protocol instance for this connection.
    @ivar transport: the in-memory transport (a
        L{twisted.internet.testing.StringTransport}).
    """

    def __init__(
        self,
        server: SMTPServer,
        *,
        remote_address: str = "192.0.2.1",
        remote_port: int = 50000,
        local_address: str = "198.51.100.25",
        local_port: int = 25,
    ) -> None:
        """
        Connect to C{server}.

        @param server: the server, built with a L{Clock} as its reactor (see
            L{make_test_server}).
        @param remote_address: the client's IP address, as the server sees it
            (C{session.remote_address}).
        @param remote_port: the client's port.
        @param local_address: the server's IP address
            (C{session.local_address}).
        @param local_port: the server's port.
        @raise TypeError: if the server does not keep time with a
            L{twisted.internet.task.Clock}: its timers would then be left on
            the real reactor, out of the test's control.
        @raise ValueError: if the server would look up the client's address in
            the DNS (the option C{disable_reverse_lookup} is off and no
            C{resolver} was given), or an address is not an IP address.
        """
        clock = server.clock
        if not isinstance(clock, Clock):
            raise TypeError(
                "SMTPTestClient needs a server whose reactor is a twisted.internet.task.Clock: "
                "build it with smtphooks.testing.make_test_server(...) or "
                "SMTPServer(..., reactor=Clock(), disable_reverse_lookup=True)"
            )
        options = server.options
        peer = _ip_address(remote_address, remote_port)
        if (
            not options.disable_reverse_lookup
            and options.resolver is None
            and not ipaddress.ip_address(remote_address).is_loopback
        ):
            raise ValueError(
                "this server would look up the client's address in the DNS: build it with "
                "disable_reverse_lookup=True (make_test_server does) or give it a resolver"
            )
        self.server = server
        self.clock: Clock = clock
        self._replies: list[Reply] = []
        self._answers: list[Reply] = []  # the replies to the commands, in order
        self._expected = 1  # replies asked for; the greeting is the first
        self._unclaimed: deque[tuple[int, str]] = deque()
        self._output = b""
        self._inbox: deque[bytes] = deque()
        self._greeted = False
        self._helo_sent = False
        transport = _TestTransport(clock, _ip_address(local_address, local_port), peer)
        self.transport: StringTransport = transport
        self._transport = transport
        protocol = server.buildProtocol(peer)
        transport.protocol = protocol
        self.protocol: SMTPProtocol = protocol
        protocol.makeConnection(transport)  # type: ignore[no-untyped-call]
        self._pump()

    # -- state -------------------------------------------------------------

    @property
    def session(self) -> Session:
        """
        The server's L{Session} of this connection, as the hooks see it.
        """
        return self.protocol.session

    @property
    def replies(self) -> list[Reply]:
        """
        Every reply received so far, in order: the greeting, the replies to
        commands, and replies nobody asked for (such as a C{421} after a
        timeout).
        """
        self._pump()
        return list(self._replies)

    @property
    def connected(self) -> bool:
        """
        L{True} until the server or the test closes the connection.
        """
        self._pump()
        return not self._transport.disconnecting

    @property
    def pending(self) -> int:
        """
        The number of replies asked for that have not arrived yet.
        """
        self._pump()
        return self._expected - len(self._answers)

    @property
    def greeting(self) -> Reply:
        """
        The server's first reply: normally C{220}; C{554} when C{on_connect}
        rejected the connection; C{421} for a temporary refusal.

        @raise ReplyPending: while C{on_connect} has not finished.
        @raise ConnectionClosed: if the connection closed before the server
            said anything.
        """
        return self._answer(0, "the greeting (on_connect has not finished)")

    # -- commands ----------------------------------------------------------

    def command(self, line: str | bytes) -> Reply:
        """
        Send one command line and return the reply to it.

        @param line: the command without its line ending (C{"NOOP"}); a
            L{str} is encoded as UTF-8.
        @return: the reply.
        @raise ReplyPending: if the reply depends on a hook that has not
            finished; or if the greeting has not arrived (then nothing was
            sent).
        @raise ConnectionClosed: if the connection is closed, or closes
            without a reply.
        """
        raw = line.encode("utf-8") if isinstance(line, str) else line
        return self._exchange(raw + b"\r\n", 1, repr(raw.decode("utf-8", "replace")))[0]

    def ehlo(self, name: str = "client.example") -> Reply:
        """
        Send C{EHLO name}.

        @return: the reply: C{250}, the server's name, then the extensions,
            one a line.
        """
        self._helo_sent = True
        return self.command(f"EHLO {name}")

    def helo(self, name: str = "client.example") -> Reply:
        """
        Send C{HELO name}.
        """
        self._helo_sent = True
        return self.command(f"HELO {name}")

    def lhlo(self, name: str = "client.example") -> Reply:
        """
        Send C{LHLO name}, to a server built with C{lmtp=True}.
        """
        self._helo_sent = True
        return self.command(f"LHLO {name}")

    def mail(self, address: str, **params: str | int | bool) -> Reply:
        """
        Send C{MAIL FROM:<address>} with ESMTP parameters.

        C{client.mail("a@example.com", SIZE=1000, BODY="8BITMIME",
        SMTPUTF8=True)} sends C{MAIL FROM:<a@example.com> SIZE=1000
        BODY=8BITMIME SMTPUTF8}: C{True} gives a bare keyword, other values
        are xtext-encoded (RFC 3461) as a client must do.  Use C{""} for the
        null sender.
        """
        return self.command(f"MAIL FROM:<{address}>{_params(params)}")

    def rcpt(self, address: str, **params: str | int | bool) -> Reply:
        """
        Send C{RCPT TO:<address>} with ESMTP parameters, as L{mail} does
        (C{client.rcpt("b@example.com", NOTIFY="SUCCESS,FAILURE")}).
        """
        return self.command(f"RCPT TO:<{address}>{_params(params)}")

    def rset(self) -> Reply:
        """
        Send C{RSET}.
        """
        return self.command("RSET")

    def noop(self) -> Reply:
        """
        Send C{NOOP}.
        """
        return self.command("NOOP")

    def data(self, body: bytes) -> Reply:
        """
        Send C{DATA} and, when the server answers C{354}, the message.

        The message is sent as a client sends it: dot-stuffed, ended by
        C{<CRLF>.<CRLF>} (a CRLF is added if C{body} does not end with one),
        in pieces of 64 KiB that the server stops reading (backpressure)
        while C{on_data} does not keep up.  Write C{body} with CRLF line
        endings, as on the wire: C{on_data} gets it byte for byte.

        @param body: the message, headers and body.
        @return: the reply to C{DATA} if it is not C{354}; otherwise the
            reply to the message.
        @raise ReplyPending: if the reply to an earlier command has not
            arrived (then nothing was sent); or if the reply to the message
            depends on an C{on_data} that has not finished, or that does not
            read the message; L{wait} gives it later.
        @raise ConnectionClosed: if the connection is closed.
        @raise TypeError: if the server speaks LMTP: use L{lmtp_data}.
        """
        if self.server.options.lmtp:
            raise TypeError(
                "an LMTP server answers a message once per recipient: use lmtp_data()"
            )
        return self._data(body)[0]

    def lmtp_data(self, body: bytes) -> list[Reply]:
        """
        Send C{DATA} and the message to an LMTP server, as L{data} does.

        @return: the replies to the message, one per accepted recipient, in
            the order of the recipients; or only the reply to C{DATA} if it
            is not C{354}.
        @raise ReplyPending: as for L{data}; L{wait_all} gives the replies
            later.
        @raise ConnectionClosed: if the connection is closed.
        """
        return self._data(body)

    def _data(self, body: bytes) -> list[Reply]:
        if not isinstance(body, bytes):
            raise TypeError(f"the message must be bytes, not {type(body).__name__}")
        self._require_idle("DATA")
        reply = self.command("DATA")
        if reply.code != 354:
            return [reply]
        count = len(self.session.envelope.rcpt_to) if self.server.options.lmtp else 1
        return self._exchange(dot_stuff(body), count, "the message")

    def bdat(self, chunk: bytes, *, last: bool = False) -> Reply:
        """
        Send C{BDAT} with one chunk of the message (RFC 3030 CHUNKING): the
        command line C{BDAT <size> [LAST]} and the chunk's bytes, as they
        are: no dot-stuffing, no line ending added.

        @param chunk: the bytes of this chunk.
        @param last: whether this is the last chunk.
        @return: the reply: C{250} for a chunk, or the reply to the message
            for the last one.
        @raise ReplyPending: if the reply depends on a hook that has not
            finished or on the server reading the chunk.
        @raise ConnectionClosed: if the connection is closed.
        @raise TypeError: for the last chunk to an LMTP server, which answers
            once per recipient: send it with L{write} and C{replies=} the
            number of recipients, and read the replies with L{wait_all}.
        """
        if last and self.server.options.lmtp:
            raise TypeError(
                "an LMTP server answers the last chunk once per recipient: send it with "
                "write(..., replies=number_of_recipients) and read them with wait_all()"
            )
        head = f"BDAT {len(chunk)}{' LAST' if last else ''}"
        return self._exchange(head.encode("ascii") + b"\r\n" + chunk, 1, repr(head))[0]

    def send(self, sender: str, recipients: str | Iterable[str], body: bytes) -> Reply:
        """
        Send one message: C{EHLO} (unless this client already greeted),
        C{MAIL}, one C{RCPT} per recipient, then C{DATA} and the message if a
        recipient was accepted, like L{smtplib.SMTP.sendmail}.

        @param sender: the sender's address (C{""} for the null sender).
        @param recipients: an address, or several.
        @param body: the message, as for L{data}.
        @return: the reply to the message; or the rejection of C{MAIL}; or,
            when every recipient was rejected, the last rejection (the
            client then sends C{RSET}).  The reply to each command is in
            L{replies}.
        @raise ReplyPending: if a reply depends on a hook that has not
            finished: for such tests, use the command methods one by one.
        @raise ConnectionClosed: if the connection is closed.
        @raise TypeError: if the server speaks LMTP (use L{lhlo}, L{mail},
            L{rcpt} and L{lmtp_data}).
        """
        if self.server.options.lmtp:
            raise TypeError("send() speaks SMTP: use lhlo(), mail(), rcpt() and lmtp_data()")
        self._require_idle("MAIL")
        if not self._helo_sent:
            self.ehlo()
        reply = self.mail(sender)
        if reply.code != 250:
            return reply
        if isinstance(recipients, str):
            recipients = [recipients]
        accepted = 0
        for recipient in recipients:
            reply = self.rcpt(recipient)
            if 200 <= reply.code < 300:
                accepted += 1
        if not accepted:
            if self.connected:
                self.rset()
            return reply
        return self.data(body)

    def auth(self, username: str, password: str, *, method: str = "PLAIN") -> Reply:
        """
        Authenticate with C{AUTH}, as a client does, for testing
        C{on_auth}.  The server offers AUTH only over TLS (see L{starttls})
        unless it has C{allow_insecure_auth=True}.

        @param username: the user name.
        @param password: the password; for C{XOAUTH2}, the access token.
        @param method: C{"PLAIN"}, C{"LOGIN"}, C{"CRAM-MD5"} or
            C{"XOAUTH2"}.
        @return: the final reply: C{235} on success; a C{334} challenge or
            an error that came instead of the next step of the exchange.
        @raise ValueError: for another C{method}.
        @raise ReplyPending: if C{on_auth} has not finished.
        """
        method = method.upper()
        if method == "PLAIN":
            return self.command("AUTH PLAIN " + _b64(f"\0{username}\0{password}"))
        if method == "LOGIN":
            reply = self.command("AUTH LOGIN")
            if reply.code == 334:
                reply = self.command(_b64(username))
            if reply.code == 334:
                reply = self.command(_b64(password))
            return reply
        if method == "CRAM-MD5":
            reply = self.command("AUTH CRAM-MD5")
            if reply.code != 334:
                return reply
            challenge = base64.b64decode(reply.text)
            digest = hmac.new(password.encode("utf-8"), challenge, "md5").hexdigest()
            return self.command(_b64(f"{username} {digest}"))
        if method == "XOAUTH2":
            token = f"user={username}\x01auth=Bearer {password}\x01\x01"
            reply = self.command("AUTH XOAUTH2 " + _b64(token))
            if reply.code == 334:
                # An error challenge (RFC 7628): acknowledge it to get the
                # final reply.
                reply = self.command("")
            return reply
        raise ValueError(f"unsupported AUTH method {method!r}")

    def starttls(self) -> Reply:
        """
        Send C{STARTTLS}; after C{220}, the handshake is simulated and
        succeeds at once (see the class description), C{on_secure} runs, and
        the session starts over: send L{ehlo} again.

        @return: the reply to C{STARTTLS}.
        """
        reply = self.command("STARTTLS")
        if reply.code == 220:
            self._helo_sent = False
        return reply

    def quit(self) -> Reply:
        """
        Send C{QUIT}; the server answers C{221} and closes the connection
        (and runs C{on_close}).
        """
        return self.command("QUIT")

    def write(self, data: bytes, *, replies: int = 0) -> None:
        """
        Send raw bytes, for tests of broken clients (bytes before the
        greeting, bare line feeds, a command split in the middle).

        @param data: the bytes.
        @param replies: how many replies these bytes ask for (one per command
            line), so that the replies to later commands are told apart; get
            them with L{wait}.
        @raise ConnectionClosed: if the connection is closed.
        """
        first = self._send(data, replies)
        for index in range(first, first + replies):
            self._unclaimed.append((index, "bytes sent with write()"))

    def close(self) -> None:
        """
        Drop the connection from the client's side, as a client that goes
        away without C{QUIT} does: the server runs C{on_close}.  Closing a
        closed connection does nothing.
        """
        self._transport.loseConnection()
        self._transport.connection_lost()
        self._pump()

    def __enter__(self) -> SMTPTestClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- replies -----------------------------------------------------------

    def wait(self) -> Reply:
        """
        The reply to the oldest command whose method raised L{ReplyPending}
        (or that was sent with L{write}), now that it has arrived.

        @raise ReplyPending: if it still has not arrived.
        @raise ConnectionClosed: if the connection closed without it.
        @raise LookupError: if no command is waiting for its reply.
        """
        self._pump()
        if not self._unclaimed:
            raise LookupError("no command is waiting for a reply")
        index, what = self._unclaimed[0]
        reply = self._answer(index, what)
        self._unclaimed.popleft()
        return reply

    def wait_all(self) -> list[Reply]:
        """
        L{wait} for every command still waiting for its reply.

        @return: the replies, in command order (possibly none).
        @raise ReplyPending: if one has not arrived (L{wait} gives it and
            those after it later).
        @raise ConnectionClosed: if the connection closed without one.
        """
        replies = []
        while self._unclaimed:
            replies.append(self.wait())
        return replies

    # -- internals ---------------------------------------------------------

    def _exchange(self, data: bytes, replies: int, what: str) -> list[Reply]:
        """
        Send C{data}, which asks for C{replies} replies, and return them; or
        leave them to L{wait} and raise L{ReplyPending}.
        """
        if not self._greeted:
            self._answer(0, "the greeting (on_connect has not finished); nothing was sent")
            self._greeted = True
        first = self._send(data, replies)
        answers = []
        try:
            for index in range(first, first + replies):
                answers.append(self._answer(index, what))
        except ReplyPending:
            for index in range(first, first + replies):
                self._unclaimed.append((index, what))
            raise
        return answers

    def _send(self, data: bytes, replies: int) -> int:
        """
        Queue C{data} for the server, which will answer it with C{replies}
        replies, and let the server read what it will.

        @return: the index of the first of those replies.
        @raise ConnectionClosed: if the connection is closed.
        """
        self._pump()
        if self._transport.disconnecting:
            raise ConnectionClosed(self._closed_message())
        first = self._expected
        self._expected += replies
        for start in range(0, len(data), READ_SIZE):
            self._inbox.append(data[start : start + READ_SIZE])
        self._pump()
        return first

    def _require_idle(self, what: str) -> None:
        waiting = self.pending
        if waiting:
            raise ReplyPending(
                f"{what} not sent: {waiting} earlier repl{'y' if waiting == 1 else 'ies'} "
                "still pending. Fire the Deferred your hook returned (or advance client.clock "
                "past the server's hook_timeout), then call client.wait()"
            )

    def _pump(self) -> None:
        """
        Let the connection make progress: hand the server the input it is
        willing to read, run what is due on the clock now, and collect the
        replies.
        """
        transport = self._transport
        while True:
            moved = False
            while (
                self._inbox
                and not transport.disconnecting
                and transport.producerState == "producing"
            ):
                self.protocol.dataReceived(self._inbox.popleft())
                moved = True
            self.clock.advance(0)
            if not moved:
                break
        if transport.disconnecting:
            self._inbox.clear()
        output: bytes = transport.value()  # type: ignore[no-untyped-call]
        if output:
            transport.clear()  # type: ignore[no-untyped-call]
            replies, self._output = _parse_replies(self._output + output)
            for reply in replies:
                self._replies.append(reply)
                if len(self._answers) < self._expected:
                    self._answers.append(reply)

    def _answer(self, index: int, what: str) -> Reply:
        self._pump()
        if index < len(self._answers):
            return self._answers[index]
        if self._transport.disconnecting:
            raise ConnectionClosed(f"no reply to {what}: {self._closed_message()}")
        raise ReplyPending(
            f"no reply yet to {what}: a hook has not finished, or on_data does not read "
            "the message. Fire the Deferred your hook returned (or advance client.clock past "
            "the server's hook_timeout), then call client.wait()"
        )

    def _closed_message(self) -> str:
        last = self._replies[-1] if self._replies else None
        return "the connection is closed" + (
            f" (last reply: {last.code} {last.text})" if last is not None else ""
        )

    def __repr__(self) -> str:
        state = "closed" if self._transport.disconnecting else "open"
        return f"<SMTPTestClient {state} session={self.session.id} replies={len(self._replies)}>"


def _params(params: dict[str, str | int | bool]) -> str:
    parts = []
    for key, value in params.items():
        if value is True:
            parts.append(f" {key}")
        elif value is not False:
            parts.append(f" {key}={xtext_encode(str(value))}")
    return "".join(parts)


def make_session(
    *,
    mail_from: str | Address | None = None,
    rcpt_to: Iterable[str | Address] = (),
    **fields: Any,
) -> Session:
    """
    Build a L{Session} to pass to a hook, as the server would after C{EHLO}.

    Every attribute of L{Session} may be given (C{user="alice"},
    C{secure=True}, C{extra={...}}, C{envelope=...}); the others are those of
    an ESMTP client C{client.example} at C{192.0.2.1} port C{50000},
    connected to C{198.51.100.25} port C{25}, without reverse lookup.

    @param mail_from: a shortcut for C{envelope}: the sender, as a string or
        an L{Address}.
    @param rcpt_to: a shortcut for C{envelope}: the accepted recipients.
    @param fields: attributes of the session.
    @raise TypeError: for a name that is not an attribute of L{Session}, or
        C{envelope} together with C{mail_from} or C{rcpt_to}.
    """
    fields.setdefault("remote_address", "192.0.2.1")
    fields.setdefault("remote_port", 50000)
    fields.setdefault("local_address", "198.51.100.25")
    fields.setdefault("local_port", 25)
    fields.setdefault("client_hostname", f"[{fields['remote_address']}]")
    fields.setdefault("opening_command", "EHLO")
    fields.setdefault("host_name_appears_as", "client.example")
    recipients = list(rcpt_to)
    if mail_from is not None or recipients:
        if "envelope" in fields:
            raise TypeError("give either envelope or mail_from/rcpt_to, not both")
        fields["envelope"] = Envelope(
            mail_from=_address(mail_from) if mail_from is not None else None,
            rcpt_to=[_address(r) for r in recipients],
        )
    return Session(**fields)


def _address(address: str | Address) -> Address:
    return address if isinstance(address, Address) else make_address(address)


def make_address(address: str, **params: str | bool) -> Address:
    """
    Build an L{Address} as the server hands it to C{on_mail_from} and
    C{on_rcpt_to}.

    C{make_address("b@example.com", NOTIFY="SUCCESS,FAILURE")} is what
    C{RCPT TO:<b@example.com> NOTIFY=SUCCESS,FAILURE} gives: parameter names
    are upper-cased into C{args}, and C{NOTIFY}/C{ORCPT} also fill
    C{address.dsn}.  Values are taken as decoded already (not xtext).

    @param address: the address without angle brackets (C{""} for the null
        sender).
    @param params: the ESMTP parameters: a string value, or C{True} for a
        bare keyword (C{SMTPUTF8=True}).
    """
    args = {key.upper(): value for key, value in params.items()}
    dsn = None
    notify, orcpt = args.get("NOTIFY"), args.get("ORCPT")
    if isinstance(notify, str) or isinstance(orcpt, str):
        dsn = RecipientDSN(
            notify=[v.strip().upper() for v in notify.split(",")]
            if isinstance(notify, str)
            else None,
            orcpt=orcpt if isinstance(orcpt, str) else None,
        )
    return Address(address, args, dsn)


def make_stream(
    body: bytes, *, chunk_size: int | None = None, size_exceeded: bool = False
) -> DataStream:
    """
    Build a L{DataStream} that holds C{body} and has ended, to pass to an
    C{on_data} hook.

    @param body: the message as the hook gets it (dot-unstuffed, CRLF line
        endings).
    @param chunk_size: split the body into chunks of this many bytes, as the
        server hands it on in pieces; by default, one chunk.
    @param size_exceeded: make the stream say that the message went over the
        server's size limit (C{stream.size_exceeded}).
    @raise ValueError: if C{chunk_size} is not positive.
    """
    if chunk_size is not None and chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, not {chunk_size!r}")
    stream = DataStream()
    step = chunk_size or max(len(body), 1)
    for start in range(0, len(body), step):
        stream.write(body[start : start + step])
    stream.end(size_exceeded=size_exceeded)
    return stream


def run_hook(hook: Any, *args: Any) -> Any:
    """
    Call a hook as the server does and return its result, for testing one
    hook without a server.

    The hook may return a value or a L{Deferred}, or be a coroutine
    function; it must finish at once (a coroutine that awaits only Deferreds
    that have already fired does).

    @param hook: the hook.
    @param args: its arguments (see L{make_session}, L{make_address},
        L{make_stream}).
    @return: the hook's result.
    @raise Exception: whatever the hook raised, such as the
        L{smtphooks.SMTPError} that rejects.
    @raise HookPending: if the hook has not finished; call it directly
        instead, and fire or inspect the Deferred it returns.
    """
    d = call_hook(hook, args, Clock(), None)
    results: list[Any] = []
    d.addBoth(results.append)
    if not results:
        _ignore_errors(d)
        raise HookPending(f"{hook!r} has not finished: it returned a Deferred that has not fired")
    result = results[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result


def _ignore_errors(d: Deferred[Any]) -> None:
    d.addErrback(lambda failure: None)
