"""
Hypothesis tests that attack the engine from inside, in memory (no sockets):

  - the sans-IO parsers take arbitrary bytes and either answer or raise
    L{ParseError}, never anything else; the DATA scanner never holds back
    more than a possible terminator;
  - no text (a hook's L{SMTPError} message, whatever it holds) can put a
    CR, an LF or another control character inside a reply line;
  - a stateful machine (L{SMTPMachine}) drives random sessions through
    L{smtphooks.testing.SMTPTestClient}: commands one by one and pipelined
    in random byte splits, DATA and BDAT bodies, hooks that answer at once,
    later, by rejecting or by crashing, and reconnections; after every step
    the replies are the ones a model predicts, in order, the session's state
    is what RFC 5321 says (the envelope resets after RSET, HELO/EHLO and
    each message), delivered bodies are byte-exact, no unexpected error is
    logged, and C{on_close} runs once per connection.

Every property runs with a bounded, derandomized profile (no database, no
deadline), so that CI is reproducible.

The last classes hold engine bugs found by these tests and by
benchmarks/attack.py, as failing tests marked C{todo}.
"""

from __future__ import annotations

import itertools
import re
import socket
from typing import Any, cast

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from smtphooks import SMTPError
from smtphooks._errors import Reply, reply_for_error
from smtphooks._parse import (
    DataScanner,
    ParseError,
    PathArgs,
    parse_mail,
    parse_rcpt,
    split_command,
    xtext_decode,
)
from smtphooks.testing import (
    ReplyPending,
    SMTPTestClient,
    make_test_server,
)

bounded = settings(
    max_examples=200,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# -- parsers -----------------------------------------------------------------

#: Bytes that matter to the path and parameter grammars, and some that break
#: UTF-8.
_PATH_BYTES = b"<>@.\"\\[]:,; =+-_azAZ09\t\xff\xc3\xa9\x00\r"
path_like = st.lists(st.sampled_from([bytes([b]) for b in _PATH_BYTES]), max_size=60).map(
    b"".join
)
params_like = st.lists(
    st.builds(
        lambda k, v: k + v,
        st.sampled_from([b"SIZE", b"BODY", b"RET", b"ENVID", b"NOTIFY", b"ORCPT", b"X", b"", b"="]),
        st.one_of(st.just(b""), path_like.map(lambda v: b"=" + v)),
    ),
    max_size=5,
).map(lambda ps: b"".join(b" " + p for p in ps))
arguments = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda prefix, path, params: prefix + path + params,
        st.sampled_from([b"FROM:", b"from: ", b"TO:", b"to:<", b"FROM:<", b"TO:<", b""]),
        path_like,
        params_like,
    ),
)


class ParserFuzzTests(SynchronousTestCase):
    """
    The parsers answer any input with a value or a L{ParseError}.
    """

    @bounded
    @given(st.binary(max_size=600))
    def test_split_command(self, line: bytes) -> None:
        """
        L{split_command} splits any line: an upper-case verb without spaces,
        an argument without leading spaces.
        """
        verb, argument = split_command(line)
        self.assertEqual(verb, verb.upper())
        self.assertNotIn(b" ", verb)
        self.assertFalse(argument.startswith(b" "))
        self.assertLessEqual(len(verb) + len(argument), len(line))

    @bounded
    @given(arguments, st.booleans())
    def test_paths_and_parameters(self, argument: bytes, lenient: bool) -> None:
        """
        L{parse_mail} and L{parse_rcpt} give a L{PathArgs} whose parameter
        keys are upper-case and whose values are text or L{True}, or raise
        L{ParseError} with a 5xx reply; nothing else escapes.
        """
        for parse in (parse_mail, parse_rcpt):
            try:
                result = parse(argument, lenient=lenient)
            except ParseError as e:
                self.assertIsInstance(e.reply, Reply)
                self.assertTrue(500 <= e.reply.code < 600, e.reply)
                continue
            self.assertIsInstance(result, PathArgs)
            self.assertIsInstance(result.address, str)
            for key, value in result.params.items():
                self.assertEqual(key, key.upper())
                self.assertTrue(value is True or isinstance(value, str), value)

    @bounded
    @given(st.text(max_size=80) | st.text("+0123456789abcdefABCDEFxyz\x00é", max_size=40))
    def test_xtext_decode(self, value: str) -> None:
        """
        L{xtext_decode} decodes any text or raises L{ParseError}.
        """
        try:
            self.assertIsInstance(xtext_decode(value), str)
        except ParseError as e:
            self.assertEqual(e.reply.code, 501)

    @bounded
    @given(
        st.lists(
            st.one_of(
                st.binary(max_size=200),
                st.sampled_from([b"\r", b"\n", b".", b"\r\n", b"\r\n.", b".\r\n", b"\r\n.\r"]),
            ),
            max_size=30,
        )
    )
    def test_scanner_holds_back_little(self, pieces: list[bytes]) -> None:
        """
        L{DataScanner} takes any bytes in any pieces without raising, and
        hands on all but at most a few of them at once (the two bytes of the
        CRLF before the first line, and at most four of a possible
        terminator): an endless line or a body without a terminator never
        piles up in it.
        """
        scanner = DataScanner()
        seen = b"\r\n"  # the CRLF that ended the DATA line starts the first line
        out = 0
        for piece in pieces:
            body, rest = scanner.feed(piece)
            seen += piece
            out += len(body)
            if rest is not None:
                self.assertLessEqual(out + len(rest), len(seen))
                return
            # Each line that starts with "." loses it (dot-unstuffing).
            unstuffed = seen.count(b"\r\n.")
            self.assertGreaterEqual(out, len(seen) - unstuffed - 2 - 4)


# -- reply-text hygiene ------------------------------------------------------

_REPLY_LINE = re.compile(rb"^[2-5][0-9][0-9](?:[ -][^\x00-\x1f\x7f]*)?$")


class ReplyHygieneTests(SynchronousTestCase):
    """
    Whatever text a reply carries, each of its lines is one well-formed reply
    line on the wire.
    """

    def check_wire(self, wire: bytes, code: int) -> None:
        self.assertTrue(wire.endswith(b"\r\n"), wire)
        lines = wire[:-2].split(b"\r\n")
        for i, line in enumerate(lines):
            self.assertRegex(line, _REPLY_LINE)
            self.assertEqual(int(line[:3]), code)
            if i < len(lines) - 1:
                self.assertEqual(line[3:4], b"-", wire)
            else:
                self.assertIn(line[3:4], (b" ", b""), wire)

    @bounded
    @given(st.integers(min_value=200, max_value=599), st.text(max_size=200))
    def test_any_text(self, code: int, text: str) -> None:
        """
        A L{Reply} with any text (CR, LF, NUL, DEL, C1 controls, Unicode line
        separators) renders as reply lines without control characters, each
        with the code and the right separator.
        """
        reply = Reply(code, f"{code // 100}.0.0", text)
        self.check_wire(reply.plain, code)
        self.check_wire(reply.extended, code)

    @bounded
    @given(
        st.text(max_size=200),
        st.one_of(st.none(), st.integers(min_value=200, max_value=599)),
        st.one_of(st.none(), st.sampled_from(["5.7.1", "4.2.2", "2.0.0", "bogus"])),
    )
    def test_hook_errors(self, message: str, code: int | None, enhanced: str | None) -> None:
        """
        What a hook raises (L{SMTPError}, or any exception with a
        C{response_code}) becomes a clean reply with a valid code.
        """
        try:
            error: BaseException = SMTPError(message, code=code, enhanced=enhanced)
        except ValueError:
            error = type("Rejection", (Exception,), {"response_code": code})(message)
        reply = reply_for_error(error, Reply(550, "5.1.1", "Recipient rejected"))
        self.check_wire(reply.extended, reply.code)


# -- the stateful machine ------------------------------------------------------

SIZE = 4096
MAX_RECIPIENTS = 3
TEST_NAME = "mx.example"
_ENHANCED = re.compile(r"^([245])\.\d{1,3}\.\d{1,3}(?: |$)")


class HookBug(Exception):
    """
    What the machine's C{on_rcpt_to} raises for C{crash@...}: a bug in user
    code, which the server logs and answers 451.
    """


bodies = st.lists(
    st.sampled_from(
        [
            b"Subject: fuzz",
            b"",
            b".",
            b"..",
            b".dot",
            b"a\nb",
            b"c\rd",
            b"\n.\n",
            b"\r.\r",
            b"\x00\xff\xfe",
            b"REJECT-ME",
            b"y" * 1500,
        ]
    ),
    max_size=8,
).map(b"\r\n".join) | st.binary(max_size=300) | st.integers(
    min_value=SIZE - 20, max_value=SIZE + 20
).map(lambda n: b"Subject: big\r\n\r\n" + b"z" * (n - 18))

SIMPLE = ["NOOP", "RSET", "VRFY someone", "HELP", "EHLO client.example", "HELO client.example"]
MAIL_KINDS = {
    "ok": "MAIL FROM:<alice@example.com>",
    "null": "MAIL FROM:<>",
    "reject": "MAIL FROM:<reject@example.com>",
    "syntax": "MAIL FROM:bogus",
    "toobig": f"MAIL FROM:<alice@example.com> SIZE={SIZE + 1}",
    "param": "MAIL FROM:<alice@example.com> FOO=bar",
}
RCPT_KINDS = {
    "ok": "RCPT TO:<bob@example.com>",
    "postmaster": "RCPT TO:<Postmaster>",
    "no": "RCPT TO:<no@example.com>",
    "later": "RCPT TO:<later@example.com>",
    "laterno": "RCPT TO:<laterno@example.com>",
    "crash": "RCPT TO:<crash@example.com>",
    "syntax": "RCPT TO:<>",
}


class SMTPMachine(RuleBasedStateMachine):
    """
    Random sessions against a model of the server.
    """

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.problems: list[str] = []
        self.delivered: list[bytes] = []
        self.closed = 0
        self.connections = 0
        self._observer = cast(ILogObserver, self.observe)
        globalLogPublisher.addObserver(self._observer)
        clock = self.clock

        def on_mail_from(address: Any, session: Any) -> None:
            if address.address.startswith("reject@"):
                raise SMTPError("Sender refused", code=550)

        def on_rcpt_to(address: Any, session: Any) -> Deferred[None] | None:
            local = address.address.split("@")[0]
            if local == "no":
                raise SMTPError("No such user\r\nInjected: header\x00", code=550)
            if local == "crash":
                raise HookBug("a bug in a hook")
            if local in ("later", "laterno"):
                d: Deferred[None] = Deferred()
                if local == "later":
                    clock.callLater(1, d.callback, None)
                else:
                    clock.callLater(1, d.errback, SMTPError("Not now", code=550))
                return d
            return None

        async def on_data(stream: Any, session: Any) -> None:
            chunks = []
            async for chunk in stream:
                chunks.append(chunk)
            body = b"".join(chunks)
            if stream.size_exceeded:
                return
            if b"REJECT-ME" in body:
                raise SMTPError("Content rejected", code=554)
            self.delivered.append(body)

        def on_close(session: Any) -> None:
            self.closed += 1

        self.server = make_test_server(
            reactor=clock,
            size=SIZE,
            max_recipients=MAX_RECIPIENTS,
            hook_timeout=5,
            on_mail_from=on_mail_from,
            on_rcpt_to=on_rcpt_to,
            on_data=on_data,
            on_close=on_close,
        )
        self.connect()

    # -- bookkeeping -----------------------------------------------------

    def observe(self, event: dict[str, Any]) -> None:
        failure = event.get("log_failure")
        if failure is not None:
            if failure.check(HookBug):
                return  # the hook's own bug, logged as it should be
            self.problems.append(f"logged failure: {failure.getTraceback()}")
        elif event.get("log_level") in (LogLevel.error, LogLevel.critical):
            self.problems.append(f"logged error: {event.get('log_format')}")

    def connect(self) -> None:
        self.client = SMTPTestClient(self.server)
        self.connections += 1
        greeting = self.client.greeting
        assert greeting.code == 220, greeting
        self.helo = False
        self.enhanced = False
        self.mail = False
        self.rcpts = 0
        self.chunks: bytes | None = None  # the chunks of an open BDAT transaction
        self.unrecognized = 0
        self.transaction = 1
        self.connected = True

    def teardown(self) -> None:
        try:
            self.client.close()
            self.clock.advance(10)
            assert self.closed == self.connections, (
                f"on_close ran {self.closed} times for {self.connections} connections"
            )
            assert self.server.connections == [], self.server.connections
            assert not self.problems, self.problems[0]
        finally:
            globalLogPublisher.removeObserver(self._observer)

    def reset(self) -> None:
        self.mail = False
        self.rcpts = 0
        self.chunks = None

    def check(self, reply: Any, code: int, what: str, enhanced: bool = True) -> None:
        assert reply.code == code, f"{what}: expected {code}, got {reply}"
        if not enhanced or code in (354,):
            return
        match = _ENHANCED.match(reply.text)
        if self.enhanced:
            assert match is not None, f"{what}: no enhanced status code in {reply}"
            assert match.group(1) == str(code)[0], f"{what}: {reply}"
        else:
            assert match is None, f"{what}: enhanced status code after HELO: {reply}"

    # -- the model -------------------------------------------------------

    def expect(self, command: str) -> tuple[int, bool]:
        """
        The reply code the server owes C{command} now, and whether it
        carries an enhanced code; the model moves on as the server does.
        """
        verb = command.split(" ")[0]
        if verb in ("EHLO", "HELO"):
            self.helo = True
            self.enhanced = verb == "EHLO"
            self.reset()
            return 250, False
        if verb in ("RSET", "NOOP"):
            if verb == "RSET":
                self.reset()
            return 250, True
        if verb == "VRFY":
            return 252, True
        if verb == "HELP":
            return 214, True
        if verb == "MAIL":
            if not self.helo or self.mail:
                return 503, True
            kind = next(k for k, v in MAIL_KINDS.items() if v == command)
            code = {"syntax": 501, "toobig": 552, "param": 555, "reject": 550}.get(kind, 250)
            self.mail = code == 250
            return code, True
        if verb == "RCPT":
            if not self.helo or not self.mail:
                return 503, True
            kind = next(k for k, v in RCPT_KINDS.items() if v == command)
            if kind == "syntax":
                return 501, True
            if self.rcpts >= MAX_RECIPIENTS:
                return 452, True
            code = {"no": 550, "laterno": 550, "crash": 451}.get(kind, 250)
            if code == 250:
                self.rcpts += 1
            return code, True
        raise AssertionError(f"no model for {command!r}")

    def refusal(self) -> int | None:
        """What DATA or the first BDAT gets instead of starting a message."""
        if not self.helo or not self.mail or not self.rcpts:
            return 503
        return None

    def finish_message(self, body: bytes) -> int:
        self.reset()
        self.transaction += 1
        if len(body) > SIZE:
            return 552
        if b"REJECT-ME" in body:
            return 554
        return 250

    # -- sending ---------------------------------------------------------

    def exchange(self, send: Any, what: str) -> Any:
        """Send, and advance the clock while a hook keeps the reply back."""
        try:
            return send()
        except ReplyPending:
            for _ in range(10):
                self.clock.advance(1)
                try:
                    return self.client.wait()
                except ReplyPending:
                    continue
            raise AssertionError(f"{what}: no reply after 10 s")

    def one(self, command: str) -> None:
        code, enhanced = self.expect(command)
        reply = self.exchange(lambda: self.client.command(command), command)
        self.check(reply, code, command, enhanced)

    # -- rules -----------------------------------------------------------

    @precondition(lambda self: self.connected)
    @rule(command=st.sampled_from(SIMPLE))
    def simple(self, command: str) -> None:
        self.one(command)

    @precondition(lambda self: self.connected)
    @rule(kind=st.sampled_from(sorted(MAIL_KINDS)))
    def mail_from(self, kind: str) -> None:
        self.one(MAIL_KINDS[kind])

    # RCPT after the first BDAT chunk is left out: see
    # EngineBugTests.test_rcpt_after_bdat.
    @precondition(lambda self: self.connected and self.chunks is None)
    @rule(kind=st.sampled_from(sorted(RCPT_KINDS)))
    def rcpt_to(self, kind: str) -> None:
        self.one(RCPT_KINDS[kind])

    @precondition(lambda self: self.connected and self.chunks is None)
    @rule(
        hello=st.sampled_from(["EHLO client.example", "HELO client.example"]),
        recipients=st.integers(min_value=1, max_value=MAX_RECIPIENTS + 1),
    )
    def open_transaction(self, hello: str, recipients: int) -> None:
        """
        Open a transaction (so that messages are sent often enough): HELO or
        EHLO if needed, MAIL, and RCPT up to one more than max_recipients.
        """
        if not self.helo or self.mail:
            self.one(hello)
        self.one(MAIL_KINDS["ok"])
        for _ in range(recipients):
            self.one(RCPT_KINDS["ok"])

    @precondition(lambda self: self.connected and self.chunks is None)
    @rule(body=bodies)
    def message(self, body: bytes) -> None:
        """
        A whole transaction with DATA.
        """
        self.open_transaction(hello="EHLO client.example", recipients=1)
        self.data(body)

    @precondition(lambda self: self.connected and self.chunks is None)
    @rule(chunks=st.lists(st.binary(max_size=2500), min_size=1, max_size=4))
    def chunked_message(self, chunks: list[bytes]) -> None:
        """
        A whole transaction with BDAT.
        """
        self.open_transaction(hello="EHLO client.example", recipients=2)
        for i, chunk in enumerate(chunks):
            self.bdat(chunk, last=i == len(chunks) - 1)

    @precondition(lambda self: self.connected)
    @rule(body=bodies)
    def data(self, body: bytes) -> None:
        refusal = self.refusal() or (503 if self.chunks is not None else None)
        before = len(self.delivered)
        reply = self.exchange(lambda: self.client.data(body), "DATA")
        if refusal is not None:
            self.check(reply, refusal, "DATA")
            return
        expected = body if body.endswith(b"\r\n") else body + b"\r\n"
        self.check(reply, self.finish_message(expected), "the message")
        if reply.code == 250:
            assert self.delivered[before:] == [expected], (self.delivered[before:], expected)
        else:
            assert len(self.delivered) == before

    @precondition(lambda self: self.connected)
    @rule(chunk=st.binary(max_size=3000), last=st.booleans())
    def bdat(self, chunk: bytes, last: bool) -> None:
        refusal = self.refusal() if self.chunks is None else None
        before = len(self.delivered)
        reply = self.exchange(lambda: self.client.bdat(chunk, last=last), "BDAT")
        if refusal is not None:
            self.check(reply, refusal, "BDAT")
            return
        self.chunks = (self.chunks or b"") + chunk
        if not last:
            self.check(reply, 250, "BDAT chunk")
            return
        body = self.chunks
        self.check(reply, self.finish_message(body), "BDAT LAST")
        if reply.code == 250:
            assert self.delivered[before:] == [body]

    @precondition(lambda self: self.connected)
    @rule(verb=st.sampled_from([b"FOO", b"XYZZY bar", b"\xff\xfe", b"", b"\x00"]))
    def unknown(self, verb: bytes) -> None:
        self.unrecognized += 1
        closing = self.unrecognized > 10
        reply = self.client.command(verb)
        self.check(reply, 421 if closing else 500, repr(verb), enhanced=not closing)
        if closing:
            self.connected = False

    @precondition(lambda self: self.connected)
    @rule(length=st.integers(min_value=500, max_value=700))
    def long_line(self, length: int) -> None:
        line = b"NOOP " + b"x" * (length - 5)
        reply = self.client.command(line)
        self.check(reply, 500 if length > 512 else 250, f"a line of {length} octets")

    @precondition(lambda self: self.connected and self.chunks is None)
    @rule(
        commands=st.lists(
            st.sampled_from(SIMPLE)
            | st.sampled_from(sorted(MAIL_KINDS.values()))
            | st.sampled_from(sorted(RCPT_KINDS.values())),
            min_size=2,
            max_size=8,
        ),
        cuts=st.lists(st.integers(min_value=0, max_value=500), max_size=5),
        lf_only=st.booleans(),
    )
    def pipeline(self, commands: list[str], cuts: list[int], lf_only: bool) -> None:
        """
        Commands sent at once, cut anywhere: one reply each, in order.
        """
        ending = b"\n" if lf_only else b"\r\n"
        expected = []
        for command in commands:
            code, enhanced = self.expect(command)
            expected.append((command, code, enhanced, self.enhanced))
        data = b"".join(c.encode() + ending for c in commands)
        points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
        pieces = [data[a:b] for a, b in itertools.pairwise(points)]
        self.client.write(pieces[0], replies=len(commands))
        for piece in pieces[1:]:
            self.client.write(piece)
        replies: list[Any] = []
        for _ in range(len(commands) + 10):
            try:
                while len(replies) < len(commands):
                    replies.append(self.client.wait())
                break
            except ReplyPending:
                self.clock.advance(1)
        assert len(replies) == len(commands), (replies, commands)
        enhanced_now = self.enhanced
        for reply, (command, code, enhanced, after) in zip(replies, expected):
            self.enhanced = after
            self.check(reply, code, command, enhanced)
        self.enhanced = enhanced_now

    @rule()
    def reconnect(self) -> None:
        """
        The client goes away (or was sent away); C{on_close} runs once, and a
        new connection starts afresh.
        """
        self.client.close()
        self.clock.advance(1)
        assert self.closed == self.connections, (self.closed, self.connections)
        self.connect()

    # -- invariants ------------------------------------------------------

    @invariant()
    def nothing_logged(self) -> None:
        assert not self.problems, self.problems[0]

    @invariant()
    def state(self) -> None:
        """
        The session is where the model is: the envelope is empty outside a
        transaction (RSET, HELO/EHLO and each message reset it), and counts
        the accepted recipients inside one; the transaction number counts
        the messages; an open connection is never left unread.
        """
        if not self.connected:
            assert not self.client.connected, "the server did not close after 421"
            return
        session = self.client.session
        envelope = session.envelope
        assert (envelope.mail_from is not None) == self.mail, envelope
        assert len(envelope.rcpt_to) == self.rcpts, envelope
        assert session.transaction == self.transaction, (session.transaction, self.transaction)
        assert self.client.connected
        assert self.client.transport.producerState == "producing"


class StatefulTests(SynchronousTestCase):
    """
    L{SMTPMachine}, with a bounded, derandomized profile.
    """

    def test_random_sessions(self) -> None:
        """
        Random sessions: see L{SMTPMachine}.
        """
        run_state_machine_as_test(
            SMTPMachine,
            settings=settings(
                max_examples=200,
                stateful_step_count=40,
                derandomize=True,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
        self.flushLoggedErrors(HookBug)


# -- engine bugs found here and by benchmarks/attack.py ------------------------


def _codes(output: bytes) -> list[int]:
    return [int(line[:3]) for line in output.split(b"\r\n")[:-1] if line[3:4] != b"-"]


class _ReadingTransport(StringTransport):
    """
    A transport that, like Twisted's TCP transports, pauses its producer
    (the protocol) when more than C{limit} bytes wait to be read by the
    client, and resumes it when the client reads them (L{read}).
    """

    limit = 16 * 1024

    def __init__(self) -> None:
        super().__init__(
            hostAddress=IPv4Address("TCP", "198.51.100.25", 25),
            peerAddress=IPv4Address("TCP", "192.0.2.1", 50000),
        )
        self.full = False

    def write(self, data: bytes) -> None:
        super().write(data)
        self._check()

    def writeSequence(self, data: Any) -> None:
        super().writeSequence(data)
        self._check()

    def _check(self) -> None:
        if not self.full and len(self.value()) > self.limit and self.producer is not None:
            self.full = True
            self.producer.pauseProducing()

    def read(self) -> bytes:
        """The client reads everything sent so far."""
        data: bytes = self.value()
        self.clear()
        if self.full and self.producer is not None:
            self.full = False
            self.producer.resumeProducing()
        return data


class EngineBugTests(SynchronousTestCase):
    """
    Engine bugs found by the attack script, kept as regression tests.
    """

    def test_slow_reader_is_not_idle(self) -> None:
        """
        A client that pipelined many commands and reads the replies steadily
        is not idle: the server answers every command, however long the
        client takes to read them all, and serves it afterwards.

        Here 3,000 HELP (about 330 KB of replies) are read 16 KiB a second,
        which takes longer than C{socket_timeout} (10 s).
        """
        clock = Clock()
        server = make_test_server(reactor=clock, socket_timeout=10)
        protocol = server.buildProtocol(IPv4Address("TCP", "192.0.2.1", 50000))
        transport = _ReadingTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(b"EHLO client.example\r\n")
        output = transport.read()
        protocol.dataReceived(b"HELP\r\n" * 3000)
        for _ in range(60):
            clock.advance(1)
            output += transport.read()
            if _codes(output).count(214) >= 3000 or transport.disconnecting:
                break
        protocol.dataReceived(b"NOOP\r\n")
        output += transport.read()
        codes = _codes(output)
        self.assertNotIn(421, codes, f"{codes.count(214)} of 3000 HELP answered, then 421")
        self.assertEqual(codes.count(214), 3000)
        self.assertEqual(codes[-1], 250)


    def test_never_reader_times_out(self) -> None:
        """
        A client that pipelines commands and never reads a reply is timed
        out one probe (1 s) after C{socket_timeout}, though replies wait in
        the kernel, and aborted another C{socket_timeout} later; one that
        reads some of them between the two looks is not idle.  (The attack
        script's "storm, never reads" allows 2 x socket_timeout + 5 s.)
        """
        for reads in (False, True):
            clock = Clock()
            server = make_test_server(reactor=clock, socket_timeout=10)
            protocol = server.buildProtocol(IPv4Address("TCP", "192.0.2.1", 50000))
            transport = _ReadingTransport()
            ours, peer = socket.socketpair()
            self.addCleanup(ours.close)
            self.addCleanup(peer.close)
            ours.setblocking(False)
            ours.send(b"x" * 4096)  # queued for the client, never read
            transport.socket = ours  # type: ignore[attr-defined]
            protocol.makeConnection(transport)
            protocol.dataReceived(b"EHLO client.example\r\n")
            protocol.dataReceived(b"HELP\r\n" * 3000)  # the transport is full: paused
            clock.advance(10)
            self.assertFalse(transport.disconnecting)
            if reads:
                peer.recv(65536)  # the client reads what is queued: the queue moves
            clock.advance(1)
            output = transport.value()
            if reads:
                self.assertNotIn(421, _codes(output))
                self.assertFalse(transport.disconnecting)
                protocol.connectionLost(Failure(ConnectionDone()))
                continue
            self.assertEqual(_codes(output)[-1], 421)
            self.assertTrue(transport.disconnecting)
            self.assertEqual(protocol.session.error, "timeout")
            clock.advance(9.9)
            self.assertFalse(transport.disconnected)
            clock.advance(0.1)
            self.assertTrue(transport.disconnected)  # abortConnection()
            protocol.connectionLost(Failure(ConnectionDone()))
            self.assertEqual(clock.getDelayedCalls(), [])

    def test_data_timeout_excludes_server_backpressure(self) -> None:
        """
        C{data_timeout} bounds the time a client takes to send a message,
        not the time the server makes it wait: while a slow C{on_data}
        consumer holds the client back (the server stops reading it), the
        client is not slow.  Here a 2 MB message is read by C{on_data} at
        one chunk a second, which takes longer than C{data_timeout} (10 s);
        the client sends as fast as it is let; the message must get 250.
        """
        clock = Clock()
        sizes: list[int] = []

        async def on_data(stream: Any, session: Any) -> None:
            size = 0
            async for chunk in stream:
                size += len(chunk)
                await deferLater(clock, 1.0)
            sizes.append(size)

        server = make_test_server(reactor=clock, data_timeout=10, on_data=on_data)
        client = SMTPTestClient(server)
        client.ehlo()
        client.mail("alice@example.com")
        client.rcpt("bob@example.com")
        body = (b"x" * 998 + b"\r\n") * 2048
        try:
            reply = client.data(body)
        except ReplyPending:
            for _ in range(300):
                clock.advance(1)
                try:
                    reply = client.wait()
                    break
                except ReplyPending:
                    continue
        self.assertEqual(reply.code, 250, f"after {clock.seconds():.0f} s: {reply}")
        self.assertEqual(sizes, [len(body)])


    def test_rcpt_after_bdat(self) -> None:
        """
        RCPT after the first BDAT chunk is a sequence error (503 5.5.1, as
        DATA after BDAT is): the message's recipients are fixed when
        C{on_data} starts.  Otherwise a hook that reads
        C{session.envelope.rcpt_to} when it starts (to open a mailbox per
        recipient) stores the message for fewer recipients than the server
        answers 250 for, and in LMTP the late recipient gets a 250 for a
        message it never received.
        """
        snapshots: list[list[str]] = []

        async def on_data(stream: Any, session: Any) -> None:
            recipients = [a.address for a in session.envelope.rcpt_to]
            await stream.read()
            snapshots.append(recipients)

        server = make_test_server(on_data=on_data, lmtp=True)
        client = SMTPTestClient(server)
        client.lhlo()
        client.mail("alice@example.com")
        client.rcpt("bob@example.com")
        self.assertEqual(client.bdat(b"Subject: chunk one\r\n").code, 250)
        late = client.rcpt("carol@example.com")
        client.write(b"BDAT 6 LAST\r\nbody\r\n", replies=1 if late.code != 250 else 2)
        replies = client.wait_all()
        self.assertEqual(late.code, 503, f"RCPT after BDAT: {late}; delivered to {snapshots}, "
                         f"answered {[r.code for r in replies]}")


    def test_reply_lines_within_512_octets(self) -> None:
        """
        RFC 5321 4.5.3.1.5: a reply line is at most 512 octets, CRLF
        included; a hook's long rejection text is wrapped (or cut), not sent
        as one longer line that clients may refuse.
        """

        def on_rcpt_to(address: Any, session: Any) -> None:
            raise SMTPError("No such user: " + "x" * 1000, code=550)

        client = SMTPTestClient(make_test_server(on_rcpt_to=on_rcpt_to))
        client.ehlo()
        client.mail("alice@example.com")
        reply = client.rcpt("bob@example.com")
        self.assertEqual(reply.code, 550)
        # On the wire each line is "550-" or "550 ", the text, and CRLF.
        longest = max(len(line.encode("utf-8")) + 6 for line in reply.text.split("\n"))
        self.assertLessEqual(longest, 512)


