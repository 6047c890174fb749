"""
Real-socket tests of CHUNKING and BINARYMIME (RFC 3030): C{BDAT n [LAST]} read as exact
byte counts, chunks streamed into one L{DataStream}, replies in order however they are
pipelined, the size limit across chunks, refused chunks consumed, the DATA/BDAT mixing
rules, C{hide_chunking}, transactions abandoned between chunks, and flow control.

Neither C{swaks} (20201014) nor Python's C{smtplib} nor Twisted's SMTP client can send
BDAT, so these tests speak it on a raw socket.
"""

from __future__ import annotations

import hashlib
from typing import Any

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, TimeoutError, inlineCallbacks
from twisted.trial.unittest import TestCase

from smtphooks import Address, DataStream, Session, SMTPError, SMTPServer

from tests.wire import (
    Counter,
    connect,
    later,
    leaked_calls,
    open_session,
    start_server,
    still_serving,
)

MiB = 1024 * 1024

#: What a test waits at most for a condition it polls.
PATIENCE = 10.0


def bdat(*chunks: bytes) -> bytes:
    """
    The bytes of C{BDAT} commands carrying C{chunks}, the last one marked C{LAST}.
    """
    out = []
    for i, chunk in enumerate(chunks):
        last = " LAST" if i == len(chunks) - 1 else ""
        out.append(f"BDAT {len(chunk)}{last}\r\n".encode() + chunk)
    return b"".join(out)


ENVELOPE = b"MAIL FROM:<sender@example.com>\r\nRCPT TO:<rcpt@example.com>\r\n"
BINARY_ENVELOPE = (
    b"MAIL FROM:<sender@example.com> BODY=BINARYMIME\r\nRCPT TO:<rcpt@example.com>\r\n"
)


class Collector:
    """
    Hooks that keep each message as the chunks C{on_data} read, with its body type.

    @ivar messages: (body, body type, byte_length, size_exceeded) for each message.
    @ivar chunks: the chunks of each message as C{async for} gave them.
    @ivar started: counts calls of C{on_data}.
    @ivar senders: the address of each MAIL FROM the hook saw.
    """

    def __init__(self, answer: Any = None) -> None:
        self.answer = answer
        self.messages: list[tuple[bytes, str, int, bool]] = []
        self.chunks: list[list[bytes]] = []
        self.started = Counter()
        self.senders: list[str] = []

    def on_mail_from(self, address: Address, session: Session) -> None:
        self.senders.append(address.address)

    async def on_data(self, stream: DataStream, session: Session) -> Any:
        self.started()
        chunks: list[bytes] = []
        self.chunks.append(chunks)
        async for chunk in stream:
            chunks.append(chunk)
        self.messages.append(
            (b"".join(chunks), session.envelope.body_type, stream.byte_length, stream.size_exceeded)
        )
        return self.answer


def codes(replies: list[Any]) -> list[int]:
    return [r.code for r in replies]


def texts(replies: list[Any]) -> list[str]:
    return [str(r) for r in replies]


# -- byte-exact content ------------------------------------------------------------------


class ContentTests(TestCase):
    """
    A chunk is exactly C{n} bytes, taken as they are: no dot-stuffing, no end-of-data
    scanning, no line-ending changes.
    """

    timeout = 30

    @inlineCallbacks
    def test_binaryContentByteExact(self) -> Any:
        """
        Every byte value, bare CR, bare LF, NUL, lone-dot lines, C{CRLF.CRLF} and command
        lines inside chunks of a BINARYMIME message arrive byte-exact; the hook sees
        C{body_type == "BINARYMIME"}; nothing inside a chunk is run as a command.
        """
        hooks = Collector()
        port = yield start_server(self, hooks=hooks)
        client = yield open_session(self, port)
        body = (
            bytes(range(256))
            + b"\r\n.\r\n"
            + b"MAIL FROM:<evil@example.com>\r\n"
            + b".\r\n..\r\n.\n\r.\r\n.x\r\n"
            + b"bare CR\rbare LF\n\x00\x00NUL\x00\r\n"
            + b"\r\n.\r\nQUIT\r\n"
            + bytes(range(255, -1, -1))
        )
        chunks = [body[:1], body[1:300], body[300:301], body[301:]]
        client.send(BINARY_ENVELOPE + bdat(*chunks) + b"NOOP\r\n")
        replies = yield client.next_replies(2 + len(chunks) + 1)
        self.assertEqual(codes(replies), [250] * 7, texts(replies))
        self.assertEqual(
            [r.lines[-1] for r in replies[2:5]],
            ["2.0.0 1 octets received", "2.0.0 299 octets received", "2.0.0 1 octets received"],
        )
        self.assertEqual(replies[5].lines[-1], "2.0.0 OK: message queued")
        self.assertEqual(replies[6].lines[-1], "2.0.0 OK")
        self.assertEqual(hooks.messages, [(body, "BINARYMIME", len(body), False)])
        self.assertEqual(hooks.senders, ["sender@example.com"])

    @inlineCallbacks
    def test_boundariesInsideEndOfData(self) -> Any:
        """
        Chunk boundaries that fall inside C{CRLF.CRLF} (C{"...\\r" | "\\n." | "\\r" | "\\n..."})
        neither end the message nor lose a byte, and what follows is not a command.
        """
        hooks = Collector()
        port = yield start_server(self, hooks=hooks)
        client = yield open_session(self, port)
        chunks = [b"line\r", b"\n.", b"\r", b"\nMAIL FROM:<evil@example.com>\r\n", b".\r\n"]
        client.send(ENVELOPE + bdat(*chunks) + b"NOOP\r\n")
        replies = yield client.next_replies(2 + len(chunks) + 1)
        self.assertEqual(codes(replies), [250] * 8, texts(replies))
        self.assertEqual(hooks.messages[0][0], b"".join(chunks))
        self.assertEqual(hooks.senders, ["sender@example.com"])

    @inlineCallbacks
    def test_lowerCaseAndPlainBody(self) -> Any:
        """
        C{bdat 5 last} in lower case works, and a 7BIT transaction may use BDAT too.
        """
        hooks = Collector()
        port = yield start_server(self, hooks=hooks)
        client = yield open_session(self, port)
        client.send(ENVELOPE + b"bdat 5 last\r\nhello")
        replies = yield client.next_replies(3)
        self.assertEqual(codes(replies), [250, 250, 250], texts(replies))
        self.assertEqual(hooks.messages, [(b"hello", "7BIT", 5, False)])


# -- replies -----------------------------------------------------------------------------


class ReplyTests(TestCase):
    """
    Each non-LAST chunk is answered C{250 2.0.0 <n> octets received} (n counted from the
    start of the message), the LAST one by C{on_data}'s result, in order.
    """

    timeout = 30

    @inlineCallbacks
    def test_pipelinedChunksInOrder(self) -> Any:
        """
        Two messages of several chunks and a NOOP and QUIT in one write, with an
        C{on_data} that answers 50 ms after the end: every reply comes, in command order.
        """
        answers: list[bytes] = []

        async def on_data(stream: DataStream, session: Session) -> str:
            body = await stream.read()
            await later(0.05)
            answers.append(body)
            return f"got {len(body)}"

        port = yield start_server(self, on_data=on_data)
        client = yield open_session(self, port)
        client.send(
            ENVELOPE
            + bdat(b"12345", b"1234567", b"123")
            + b"NOOP\r\n"
            + ENVELOPE
            + bdat(b"abc", b"")
            + b"QUIT\r\n"
        )
        replies = yield client.next_replies(11)
        self.assertEqual(
            [r.lines[-1] for r in replies],
            [
                "2.1.0 Sender OK",
                "2.1.5 Recipient OK",
                "2.0.0 5 octets received",
                "2.0.0 7 octets received",
                "2.0.0 got 15",
                "2.0.0 OK",
                "2.1.0 Sender OK",
                "2.1.5 Recipient OK",
                "2.0.0 3 octets received",
                "2.0.0 got 3",
                "2.0.0 Bye",
            ],
        )
        self.assertEqual(answers, [b"123451234567123", b"abc"])

    @inlineCallbacks
    def test_bdatZeroLast(self) -> Any:
        """
        C{BDAT 0 LAST} alone is an empty message, accepted; after chunks, it ends the
        message; C{BDAT 0} (not last) is answered C{0 octets received}.
        """
        hooks = Collector()
        port = yield start_server(self, hooks=hooks)
        client = yield open_session(self, port)
        client.send(ENVELOPE + b"BDAT 0 LAST\r\n")
        client.send(ENVELOPE + b"BDAT 0\r\nBDAT 4\r\nabcdBDAT 0 LAST\r\n")
        replies = yield client.next_replies(3 + 5)
        self.assertEqual(codes(replies), [250] * 8, texts(replies))
        self.assertEqual(replies[5].lines[-1], "2.0.0 0 octets received")
        self.assertEqual(replies[6].lines[-1], "2.0.0 4 octets received")
        self.assertEqual(
            hooks.messages, [(b"", "7BIT", 0, False), (b"abcd", "7BIT", 4, False)]
        )

    @inlineCallbacks
    def test_hookRejectsAtLast(self) -> Any:
        """
        An C{on_data} that rejects at once, before reading: the earlier chunks are still
        read (and answered 250), the LAST one gets the rejection, and the next
        transaction works.
        """

        def on_data(stream: DataStream, session: Session) -> None:
            raise SMTPError("Not today", code=554, enhanced="5.7.1")

        port = yield start_server(self, on_data=on_data)
        client = yield open_session(self, port)
        client.send(ENVELOPE + bdat(b"x" * 100_000, b"y" * 100_000, b"z") + b"NOOP\r\n")
        replies = yield client.next_replies(6)
        self.assertEqual(codes(replies), [250, 250, 250, 250, 554, 250], texts(replies))
        self.assertEqual(replies[4].lines, ["5.7.1 Not today"])

    @inlineCallbacks
    def test_hookAnswersWithoutReading(self) -> Any:
        """
        An C{on_data} that returns at once without reading: the server discards the
        chunks itself, and the LAST chunk gets the hook's answer.
        """
        port = yield start_server(self, on_data=lambda stream, session: "thanks")
        client = yield open_session(self, port)
        client.send(ENVELOPE + bdat(b"a" * MiB, b"b" * MiB, b"c" * 10) + b"NOOP\r\n")
        replies = yield client.next_replies(6)
        self.assertEqual(codes(replies), [250] * 6, texts(replies))
        self.assertEqual(replies[4].lines, ["2.0.0 thanks"])

    @inlineCallbacks
    def test_noDataHook(self) -> Any:
        """
        Without an C{on_data} hook, chunked messages are accepted and discarded.
        """
        port = yield start_server(self)
        client = yield open_session(self, port)
        client.send(ENVELOPE + bdat(b"abc", b"def"))
        replies = yield client.next_replies(4)
        self.assertEqual(codes(replies), [250] * 4, texts(replies))
        self.assertEqual(replies[3].lines[-1], "2.0.0 OK: message queued")


# -- limits and refusals -----------------------------------------------------------------


class LimitTests(TestCase):
    """
    The size limit counts all chunks; a refused BDAT still consumes its bytes.
    """

    timeout = 30

    @inlineCallbacks
    def test_sizeLimitAcrossChunks(self) -> Any:
        """
        With C{size=1000}, three chunks of 1000 bytes: the first two are answered 250,
        the LAST C{552 5.3.4} although the hook accepts; the hook's stream ended early with
        C{size_exceeded}; the rest was consumed, so the next command and a new message on
        the same connection work.
        """
        hooks = Collector(answer="accepted anyway")
        port = yield start_server(self, hooks=hooks, size=1000)
        client = yield open_session(self, port)
        client.send(ENVELOPE + bdat(b"a" * 1000, b"b" * 1000, b"c" * 1000) + b"NOOP\r\n")
        replies = yield client.next_replies(6)
        self.assertEqual(codes(replies), [250, 250, 250, 250, 552, 250], texts(replies))
        self.assertEqual(replies[4].enhanced, "5.3.4")
        self.assertEqual(len(hooks.messages), 1)
        self.assertEqual(hooks.messages[0][3], True)
        self.assertLessEqual(len(hooks.messages[0][0]), 1000)
        client.send(ENVELOPE + bdat(b"small") + b"QUIT\r\n")
        replies = yield client.next_replies(4)
        self.assertEqual(codes(replies), [250, 250, 250, 221], texts(replies))
        self.assertEqual(hooks.messages[1], (b"small", "7BIT", 5, False))

    @inlineCallbacks
    def test_sizeLimitInOneChunk(self) -> Any:
        """
        One LAST chunk of 5000 bytes over a limit of 1000 is consumed whole and answered
        C{552 5.3.4}; the session goes on.
        """
        hooks = Collector()
        port = yield start_server(self, hooks=hooks, size=1000)
        client = yield open_session(self, port)
        client.send(ENVELOPE + bdat(b"NOOP\r\n" * 800) + b"NOOP\r\n")
        replies = yield client.next_replies(4)
        self.assertEqual(codes(replies), [250, 250, 552, 250], texts(replies))

    @inlineCallbacks
    def test_refusedBdatConsumesBytes(self) -> Any:
        """
        BDAT without MAIL is refused with C{503 5.5.1} only after its bytes were read:
        the C{NOOP} and C{QUIT} inside the chunk are not run, and the next command is.
        The same for BDAT before RCPT, and for a refused C{LAST} chunk.
        """
        hooks = Collector()
        port = yield start_server(self, hooks=hooks)
        client = yield open_session(self, port)
        smuggled = b"NOOP\r\nQUIT\r\n"
        client.send(bdat(smuggled, b"") + b"NOOP\r\n")
        replies = yield client.next_replies(3)
        self.assertEqual(codes(replies), [503, 503, 250], texts(replies))
        self.assertEqual(replies[0].enhanced, "5.5.1")
        self.assertEqual(replies[2].lines, ["2.0.0 OK"])
        client.send(b"MAIL FROM:<a@example.com>\r\n" + bdat(smuggled) + b"RSET\r\n")
        replies = yield client.next_replies(3)
        self.assertEqual(codes(replies), [250, 503, 250], texts(replies))
        self.assertEqual(hooks.started.count, 0)
        yield still_serving(self, port)

    @inlineCallbacks
    def test_refusedBeforeHello(self) -> Any:
        """
        BDAT before EHLO is refused with C{503} after its bytes were read.
        """
        port = yield start_server(self)
        client = yield connect(self, port)
        client.send(bdat(b"QUIT\r\n") + b"EHLO client.example.test\r\n")
        replies = yield client.next_replies(2)
        self.assertEqual(codes(replies), [503, 250], texts(replies))

    @inlineCallbacks
    def test_badSyntax(self) -> Any:
        """
        C{BDAT} without a count, with a bad count, or with something other than C{LAST}
        after it is C{501 5.5.4}; the session goes on and a message can follow.
        """
        hooks = Collector()
        port = yield start_server(self, hooks=hooks)
        client = yield open_session(self, port)
        client.send(ENVELOPE + b"BDAT\r\nBDAT x\r\nBDAT -1\r\nBDAT 1 FIRST\r\nBDAT 1.5\r\n")
        replies = yield client.next_replies(7)
        self.assertEqual(codes(replies), [250, 250, 501, 501, 501, 501, 501], texts(replies))
        self.assertEqual({r.enhanced for r in replies[2:]}, {"5.5.4"})
        client.send(bdat(b"ok"))
        reply = yield client.reply()
        self.assertEqual(reply.code, 250, str(reply))
        self.assertEqual(hooks.messages[0][0], b"ok")


# -- DATA, BINARYMIME and hide_chunking --------------------------------------------------


class MixingTests(TestCase):
    """
    DATA may not follow BDAT in one transaction; BINARYMIME needs BDAT; C{hide_chunking}
    turns both off.
    """

    timeout = 30

    @inlineCallbacks
    def test_dataAfterBdat(self) -> Any:
        """
        DATA after a first chunk is C{503 5.5.1}, and the chunked transaction goes on: its
        LAST chunk delivers the message made of both chunks.
        """
        hooks = Collector()
        port = yield start_server(self, hooks=hooks)
        client = yield open_session(self, port)
        client.send(ENVELOPE + b"BDAT 6\r\nhello DATA\r\n" + b"BDAT 6 LAST\r\nworld!")
        replies = yield client.next_replies(5)
        self.assertEqual(codes(replies), [250, 250, 250, 503, 250], texts(replies))
        self.assertEqual(replies[3].enhanced, "5.5.1")
        self.assertEqual(hooks.messages[0][0], b"hello world!")
        self.assertEqual(hooks.started.count, 1)

    @inlineCallbacks
    def test_binarymimeNeedsBdat(self) -> Any:
        """
        C{BODY=BINARYMIME} then DATA is C{503 5.5.1}; the transaction stays, and BDAT
        then delivers it.
        """
        hooks = Collector()
        port = yield start_server(self, hooks=hooks)
        client = yield open_session(self, port)
        client.send(BINARY_ENVELOPE + b"DATA\r\n")
        replies = yield client.next_replies(3)
        self.assertEqual(codes(replies), [250, 250, 503], texts(replies))
        self.assertEqual(replies[2].enhanced, "5.5.1")
        client.send(bdat(b"\x00\xff\r\n"))
        reply = yield client.reply()
        self.assertEqual(reply.code, 250, str(reply))
        self.assertEqual(hooks.messages, [(b"\x00\xff\r\n", "BINARYMIME", 4, False)])

    @inlineCallbacks
    def test_advertised(self) -> Any:
        """
        EHLO advertises CHUNKING and then BINARYMIME, after DSN.
        """
        port = yield start_server(self)
        client = yield open_session(self, port, helo="NOOP")
        reply = yield client.command("EHLO client.example.test")
        self.assertIn("CHUNKING", reply.lines)
        self.assertEqual(
            reply.lines.index("BINARYMIME"), reply.lines.index("CHUNKING") + 1, reply.lines
        )
        self.assertLess(reply.lines.index("DSN"), reply.lines.index("CHUNKING"))

    @inlineCallbacks
    def test_hideChunking(self) -> Any:
        """
        With C{hide_chunking=True}: no CHUNKING or BINARYMIME in EHLO; C{BODY=BINARYMIME}
        is C{501}; BDAT is an unknown command (C{500 5.5.2}), whose announced bytes are
        still skipped; a DATA message works.
        """
        hooks = Collector()
        port = yield start_server(self, hooks=hooks, hide_chunking=True)
        client = yield open_session(self, port, helo="NOOP")
        reply = yield client.command("EHLO client.example.test")
        self.assertNotIn("CHUNKING", reply.lines)
        self.assertNotIn("BINARYMIME", reply.lines)
        client.send(BINARY_ENVELOPE)
        replies = yield client.next_replies(2)
        self.assertEqual(codes(replies), [501, 503], texts(replies))
        client.send(ENVELOPE + b"BDAT 5 LAST\r\nxxxxxNOOP\r\n")
        replies = yield client.next_replies(4)
        self.assertEqual(codes(replies), [250, 250, 500, 250], texts(replies))
        self.assertEqual(replies[2].enhanced, "5.5.2")
        client.send(b"DATA\r\nvia DATA\r\n.\r\n")
        replies = yield client.next_replies(2)
        self.assertEqual(codes(replies), [354, 250], texts(replies))
        self.assertEqual(hooks.messages, [(b"via DATA\r\n", "7BIT", 10, False)])


# -- abandoned transactions --------------------------------------------------------------


class AbandonTests(TestCase):
    """
    A chunked message that never gets its LAST chunk fails the hook's stream, and the
    hook's late result is ignored.
    """

    timeout = 30

    @inlineCallbacks
    def _abandon(self, command: bytes, replies_to_command: int) -> Any:
        received = Counter()
        outcomes: list[Any] = []

        async def on_data(stream: DataStream, session: Session) -> str:
            chunks = []
            try:
                async for chunk in stream:
                    chunks.append(chunk)
                    received()
            except Exception as error:
                outcomes.append(error)
                return "ignored"
            outcomes.append(b"".join(chunks))
            return "delivered"

        port = yield start_server(self, on_data=on_data)
        client = yield open_session(self, port)
        client.send(ENVELOPE + b"BDAT 5\r\nfirst")
        replies = yield client.next_replies(3)
        self.assertEqual(codes(replies), [250, 250, 250], texts(replies))
        yield received.wait_for(1)
        client.send(command)
        replies = yield client.next_replies(replies_to_command)
        self.assertEqual(replies[-1].code, 250, texts(replies))
        client.send(ENVELOPE + bdat(b"second") + b"QUIT\r\n")
        replies = yield client.next_replies(4)
        self.assertEqual(
            [r.lines[-1] for r in replies],
            ["2.1.0 Sender OK", "2.1.5 Recipient OK", "2.0.0 delivered", "2.0.0 Bye"],
        )
        yield client.lost
        self.assertEqual(len(outcomes), 2, outcomes)
        self.assertIsInstance(outcomes[0], Exception)
        self.assertNotIsInstance(outcomes[0], StopAsyncIteration)
        self.assertEqual(outcomes[1], b"second")
        self.assertEqual(len(client.replies), 2 + 3 + replies_to_command + 4)

    def test_rsetBetweenChunks(self) -> Any:
        """
        RSET after a first chunk: C{250}; the hook's C{async for} raises; a new
        transaction on the connection delivers its own message, once.
        """
        return self._abandon(b"RSET\r\n", 1)

    def test_ehloBetweenChunks(self) -> Any:
        """
        EHLO after a first chunk abandons the message just as RSET does.
        """
        return self._abandon(b"EHLO again.example.test\r\n", 1)

    @inlineCallbacks
    def test_disconnectMidChunk(self) -> Any:
        """
        A client that goes away in the middle of a chunk fails the hook's stream,
        C{on_close} runs, the server keeps serving, and nothing is left scheduled once
        the hook has finished.
        """
        before = set(reactor.getDelayedCalls())
        failed: Deferred[BaseException] = Deferred()
        closed = Counter()

        async def on_data(stream: DataStream, session: Session) -> None:
            try:
                async for chunk in stream:
                    pass
            except Exception as error:
                failed.callback(error)

        port = yield start_server(self, on_data=on_data, on_close=closed)
        client = yield open_session(self, port)
        client.send(ENVELOPE + b"BDAT 1000 LAST\r\n" + b"x" * 10)
        yield client.next_replies(2)
        yield client.disconnect()
        error = yield failed
        self.assertIsInstance(error, Exception)
        yield closed.wait_for(1)
        yield still_serving(self, port)
        self.assertEqual(leaked_calls(before), [])



# -- flow control ------------------------------------------------------------------------


class _Server(SMTPServer):
    """
    An L{SMTPServer} that keeps the protocols it builds, so that a test can look at
    their transports.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.built: list[Any] = []

    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        self.built.append(protocol)
        return protocol


@inlineCallbacks
def poll(condition: Any, what: str) -> Any:
    """
    Wait until C{condition()} is true, checking every 10 ms for at most L{PATIENCE}
    seconds.

    @raise AssertionError: when it never becomes true.
    """
    for _ in range(int(PATIENCE / 0.01)):
        if condition():
            return
        yield task.deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"still waiting after {PATIENCE}s for {what}")


class BackpressureTests(TestCase):
    """
    While C{on_data} does not read, the server stops reading the client, chunk after
    chunk; it reads again as the hook reads.
    """

    timeout = 60

    @inlineCallbacks
    def test_chunksWaitForTheHook(self) -> Any:
        """
        Eight pipelined 1 MiB chunks and C{BDAT 0 LAST}, with an C{on_data} that reads
        only once the test lets it: the server stops reading its socket (it leaves the
        reactor's readers) with less than one chunk read, and no chunk is acknowledged;
        once the hook reads, every chunk is acknowledged in order and the 8 MiB arrive
        byte-exact.
        """
        release: Deferred[None] = Deferred()
        streams: list[DataStream] = []
        digests: list[tuple[int, str]] = []

        async def on_data(stream: DataStream, session: Session) -> str:
            streams.append(stream)
            await release
            digest = hashlib.sha256()
            n = 0
            async for chunk in stream:
                digest.update(chunk)
                n += len(chunk)
            digests.append((n, digest.hexdigest()))
            return "all read"

        server = _Server(on_data=on_data, disable_reverse_lookup=True, name="mx.example.test")
        port = yield start_server(self, server)
        client = yield open_session(self, port)
        protocol = server.built[0]
        chunks = [bytes([65 + i]) * MiB for i in range(8)]
        expected = hashlib.sha256(b"".join(chunks)).hexdigest()
        client.send(
            ENVELOPE
            + b"".join(f"BDAT {len(c)}\r\n".encode() + c for c in chunks)
            + b"BDAT 0 LAST\r\n"
        )
        replies = yield client.next_replies(2)
        self.assertEqual(codes(replies), [250, 250])
        yield poll(lambda: bool(streams), "on_data to start")
        yield poll(
            lambda: protocol.transport not in reactor.getReaders(),
            "the server to stop reading",
        )
        self.assertLess(streams[0].byte_length, MiB)
        self.assertEqual(len(client.replies), 4, texts(client.replies))
        release.callback(None)
        replies = yield client.next_replies(9)
        self.assertEqual(
            [r.lines[-1] for r in replies],
            [f"2.0.0 {MiB} octets received" for i in range(8)] + ["2.0.0 all read"],
        )
        self.assertEqual(digests, [(8 * MiB, expected)])

    @inlineCallbacks
    def test_stuckHookTimesOut(self) -> Any:
        """
        An C{on_data} that never reads and never answers, under a 2 MiB chunk, with
        C{hook_timeout=0.5}: within a few seconds the client gets a reply (a temporary
        failure, or 421) rather than a session that hangs for ever with its socket unread
        (SPEC §5: a hook may take C{hook_timeout} seconds, then C{451 4.3.0}).
        """
        never: Deferred[None] = Deferred()

        async def on_data(stream: DataStream, session: Session) -> None:
            await never

        port = yield start_server(self, on_data=on_data, hook_timeout=0.5, socket_timeout=1)
        client = yield open_session(self, port)
        def finish_hook() -> None:
            # Let the hook finish before the client goes, so that the test ends clean.
            if not never.called:
                never.callback(None)

        self.addCleanup(finish_hook)
        client.send(ENVELOPE + bdat(b"z" * (2 * MiB)))
        replies = yield client.next_replies(2)
        self.assertEqual(codes(replies), [250, 250])
        waiting = client.reply().addTimeout(4, reactor)
        try:
            reply = yield waiting
        except TimeoutError:
            self.fail("no reply 4 seconds after hook_timeout=0.5 expired: the session hangs")
        self.assertIn(reply.code, (421, 451), str(reply))

