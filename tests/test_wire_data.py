"""
Real-socket tests of message data: the end of DATA (no SMTP smuggling), dot-unstuffing,
the size limit, and streaming of big bodies without holding them in memory.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import Logger
from twisted.trial.unittest import TestCase

from smtphooks import Address, DataStream, Session, SMTPError

from tests.wire import (
    BodyProducer,
    Counter,
    current_rss,
    later,
    max_rss,
    open_session,
    start_server,
    still_serving,
)

log = Logger()

MiB = 1024 * 1024

# 1 MiB of 1024-byte lines, none of which starts with a dot.
_LINE = b"0123456789abcdef" * 63 + b"0123456789abcd\r\n"
assert len(_LINE) == 1024
CHUNK = _LINE * 1024
assert len(CHUNK) == MiB


class Collector:
    """
    Hooks that keep every message's envelope and body.
    """

    def __init__(self) -> None:
        self.senders: list[str] = []
        self.messages: list[tuple[str, list[str], bytes]] = []

    def on_mail_from(self, address: Address, session: Session) -> None:
        self.senders.append(address.address)

    async def on_data(self, stream: DataStream, session: Session) -> None:
        body = await stream.read()
        assert stream.byte_length == len(body)
        envelope = session.envelope
        assert envelope.mail_from is not None
        self.messages.append(
            (envelope.mail_from.address, [r.address for r in envelope.rcpt_to], body)
        )


class SmugglingTests(TestCase):
    """
    Only CRLF.CRLF ends DATA: bare CR or LF around a dot is message content, delivered
    byte-exact, and what follows it is never run as commands.
    """

    timeout = 60

    @inlineCallbacks
    def _smuggle(self, separator: bytes) -> Any:
        hooks = Collector()
        port = yield start_server(self, hooks=hooks)
        client = yield open_session(self, port)
        body = (
            b"Subject: smuggling " + separator.replace(b"\r", b"CR").replace(b"\n", b"LF") + b"\r\n"
            b"\r\n"
            b"innocent" + separator + b"MAIL FROM:<evil@example.com>\r\n"
            b"RCPT TO:<victim@example.com>\r\n"
            b"DATA\r\n"
            b"smuggled" + separator + b"QUIT\r\n"
            b"tail\r\n"
        )
        client.send(
            b"MAIL FROM:<honest@example.com>\r\nRCPT TO:<rcpt@example.com>\r\nDATA\r\n"
        )
        replies = yield client.next_replies(3)
        self.assertEqual([r.code for r in replies], [250, 250, 354])
        client.send(body + b".\r\nNOOP\r\n")
        replies = yield client.next_replies(2)
        self.assertEqual([r.code for r in replies], [250, 250], [str(r) for r in replies])
        self.assertEqual(replies[0].enhanced, "2.0.0")
        reply = yield client.command("QUIT")
        self.assertEqual(reply.code, 221)
        self.assertEqual(hooks.senders, ["honest@example.com"])
        self.assertEqual(hooks.messages, [("honest@example.com", ["rcpt@example.com"], body)])
        # greeting, EHLO, MAIL, RCPT, DATA, end of data, NOOP, QUIT: nothing else
        self.assertEqual(len(client.replies), 8, [str(r) for r in client.replies])

    def test_lfDotLf(self) -> Any:
        """
        C{\\n.\\n} does not end the message.
        """
        return self._smuggle(b"\n.\n")

    def test_crDotCrLf(self) -> Any:
        """
        C{\\r.\\r\\n} does not end the message.
        """
        return self._smuggle(b"\r.\r\n")

    def test_lfDotCrLf(self) -> Any:
        """
        C{\\n.\\r\\n} does not end the message.
        """
        return self._smuggle(b"\n.\r\n")

    def test_crDotLf(self) -> Any:
        """
        C{\\r.\\n} does not end the message.
        """
        return self._smuggle(b"\r.\n")

    def test_crLfDotLf(self) -> Any:
        """
        C{\\r\\n.\\n} (a proper line start, a bare LF after the dot) does not end the
        message either; the dot, at the start of a line, is removed as a stuffed dot would
        be, so the body arrives with C{\\r\\n\\n}.
        """
        return self._crlfDotLf()

    @inlineCallbacks
    def _crlfDotLf(self) -> Any:
        hooks = Collector()
        port = yield start_server(self, hooks=hooks)
        client = yield open_session(self, port)
        client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
        yield client.next_replies(3)
        client.send(b"one\r\n.\nMAIL FROM:<evil@example.com>\r\ntwo\r\n.\r\n")
        reply = yield client.reply()
        self.assertEqual(reply.code, 250, str(reply))
        self.assertEqual(hooks.senders, ["a@example.com"])
        self.assertEqual(len(hooks.messages), 1)
        self.assertEqual(hooks.messages[0][2], b"one\r\n\nMAIL FROM:<evil@example.com>\r\ntwo\r\n")

    @inlineCallbacks
    def test_dotUnstuffing(self) -> Any:
        """
        A dot that starts a line is removed (RFC 5321 4.5.2): C{..x} arrives as C{.x},
        C{...} as C{..}, a stuffed lone dot as C{.}, also on the very first line; a dot
        elsewhere in a line is kept.
        """
        hooks = Collector()
        port = yield start_server(self, hooks=hooks)
        client = yield open_session(self, port)
        client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
        yield client.next_replies(3)
        client.send(b"..first\r\nmid.dle\r\n..x\r\n...\r\n..\r\n.. y\r\nlast.\r\n.\r\n")
        reply = yield client.reply()
        self.assertEqual(reply.code, 250, str(reply))
        self.assertEqual(
            hooks.messages[0][2], b".first\r\nmid.dle\r\n.x\r\n..\r\n.\r\n. y\r\nlast.\r\n"
        )

    @inlineCallbacks
    def test_emptyBody(self) -> Any:
        """
        A message that is only the terminator is an empty body, accepted.
        """
        hooks = Collector()
        port = yield start_server(self, hooks=hooks)
        client = yield open_session(self, port)
        client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n.\r\n")
        replies = yield client.next_replies(4)
        self.assertEqual([r.code for r in replies], [250, 250, 354, 250])
        self.assertEqual(hooks.messages[0][2], b"")

    @inlineCallbacks
    def test_pipelinedAfterData(self) -> Any:
        """
        Commands pipelined in the same packet as the end of data are run after the
        message: a second message sent in one write is delivered too, each byte-exact.
        """
        hooks = Collector()
        port = yield start_server(self, hooks=hooks)
        client = yield open_session(self, port)
        client.send(
            b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"
            b"first\r\n.\r\n"
            b"MAIL FROM:<c@example.com>\r\nRCPT TO:<d@example.com>\r\nDATA\r\n"
            b"second\r\n.\r\nQUIT\r\n"
        )
        replies = yield client.next_replies(9)
        self.assertEqual([r.code for r in replies], [250, 250, 354, 250] * 2 + [221])
        self.assertEqual(
            hooks.messages,
            [
                ("a@example.com", ["b@example.com"], b"first\r\n"),
                ("c@example.com", ["d@example.com"], b"second\r\n"),
            ],
        )


class SizeTests(TestCase):
    """
    The size limit is enforced at MAIL (the SIZE parameter) and during DATA, where a body
    over the limit is read and thrown away, never held.
    """

    timeout = 60

    @inlineCallbacks
    def test_sizeParameterOverLimit(self) -> Any:
        """
        C{MAIL FROM:<a> SIZE=99999999} against C{size=1 MiB} is C{552 5.3.4}, and
        C{on_mail_from} is not called; a SIZE within the limit is accepted; the EHLO reply
        advertises C{SIZE 1048576}.
        """
        calls = Counter()
        port = yield start_server(self, size=MiB, on_mail_from=lambda a, s: calls())
        client = yield open_session(self, port)
        reply = yield client.command("EHLO client.example.test")
        self.assertIn("SIZE 1048576", reply.lines)
        reply = yield client.command("MAIL FROM:<a@example.com> SIZE=99999999")
        self.assertEqual((reply.code, reply.enhanced), (552, "5.3.4"), str(reply))
        self.assertEqual(calls.count, 0)
        reply = yield client.command("MAIL FROM:<a@example.com> SIZE=1000")
        self.assertEqual(reply.code, 250, str(reply))
        self.assertEqual(calls.count, 1)

    @inlineCallbacks
    def test_bigBodyRefusedInFlatMemory(self) -> Any:
        """
        A 50 MiB body sent against C{size=1 MiB} is answered C{552 5.3.4} at its end; the
        server reads and discards it, so this process (server and client together) grows by
        far less than the body: under 20 MiB both by peak RSS (C{ru_maxrss}) and by the
        current RSS sampled at every 1 MiB sent.  The session and the server go on.
        """
        hook_chunks: list[int] = []

        async def on_data(stream: DataStream, session: Session) -> None:
            async for chunk in stream:
                hook_chunks.append(len(chunk))

        port = yield start_server(self, size=MiB, on_data=on_data)
        client = yield open_session(self, port)
        client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
        replies = yield client.next_replies(3)
        self.assertEqual([r.code for r in replies], [250, 250, 354])

        peak_before = max_rss()
        start = current_rss()
        samples: list[int] = []

        def sample() -> None:
            rss = current_rss()
            if rss is not None:
                samples.append(rss)

        producer = BodyProducer(client.transport, CHUNK, 50, b".\r\n", on_chunk=sample)
        yield producer.start()
        reply = yield client.reply()
        peak_after = max_rss()
        sample()
        self.assertEqual((reply.code, reply.enhanced), (552, "5.3.4"), str(reply))

        peak_growth = peak_after - peak_before
        current_growth = max(samples) - start if samples and start is not None else None
        log.info(
            "50 MiB over size=1 MiB: ru_maxrss {before} -> {after} (+{growth} bytes); "
            "current RSS {start} -> max {top} (+{current} bytes)",
            before=peak_before,
            after=peak_after,
            growth=peak_growth,
            start=start,
            top=max(samples) if samples else None,
            current=current_growth,
        )
        self.assertLess(peak_growth, 20 * MiB)
        if current_growth is not None:
            self.assertLess(current_growth, 20 * MiB)
        self.assertLessEqual(sum(hook_chunks), MiB)

        reply = yield client.command("NOOP")
        self.assertEqual(reply.code, 250)
        yield still_serving(self, port)

    @inlineCallbacks
    def test_bodyJustOverLimit(self) -> Any:
        """
        A body one line over the limit is C{552 5.3.4} even though the hook accepted;
        the same body under a bigger limit is accepted.
        """
        body = _LINE * 4
        port = yield start_server(self, size=len(body) - 1)
        client = yield open_session(self, port)
        client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
        yield client.next_replies(3)
        client.send(body + b".\r\n")
        reply = yield client.reply()
        self.assertEqual((reply.code, reply.enhanced), (552, "5.3.4"), str(reply))

        port = yield start_server(self, size=len(body))
        client = yield open_session(self, port)
        client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
        yield client.next_replies(3)
        client.send(body + b".\r\n")
        reply = yield client.reply()
        self.assertEqual(reply.code, 250, str(reply))

    @inlineCallbacks
    def test_streamedInChunks(self) -> Any:
        """
        A 20 MiB body that is accepted reaches C{on_data} as a stream of chunks, each far
        smaller than the body (at most 1 MiB), whose lengths add up to the exact size; the
        hook sees C{byte_length} equal to it.
        """
        sizes: list[int] = []
        lengths: list[int] = []
        head = b"Subject: big\r\n\r\n"

        async def on_data(stream: DataStream, session: Session) -> None:
            async for chunk in stream:
                sizes.append(len(chunk))
            lengths.append(stream.byte_length)

        port = yield start_server(self, on_data=on_data)
        client = yield open_session(self, port)
        client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
        yield client.next_replies(3)
        client.send(head)
        peak_before = max_rss()
        yield BodyProducer(client.transport, CHUNK, 20, b".\r\n").start()
        reply = yield client.reply()
        self.assertEqual(reply.code, 250, str(reply))
        log.info(
            "20 MiB accepted: {n} chunks, largest {largest}, ru_maxrss +{growth} bytes",
            n=len(sizes),
            largest=max(sizes),
            growth=max_rss() - peak_before,
        )
        expected = len(head) + 20 * MiB
        self.assertEqual(sum(sizes), expected)
        self.assertEqual(lengths, [expected])
        self.assertGreater(len(sizes), 1)
        self.assertLessEqual(max(sizes), MiB)


class OnDataTests(TestCase):
    """
    How the server treats C{on_data} hooks that do not simply read the whole body.
    """

    timeout = 60

    @inlineCallbacks
    def _send(self, port: int, body: bytes) -> Any:
        client = yield open_session(self, port)
        client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
        replies = yield client.next_replies(3)
        self.assertEqual([r.code for r in replies], [250, 250, 354])
        yield BodyProducer(client.transport, body, 1, b".\r\n").start()
        reply = yield client.reply()
        return client, reply

    @inlineCallbacks
    def test_rejectBeforeReading(self) -> Any:
        """
        A hook that rejects at once, without reading: the server still reads the whole
        body, and the rejection is the reply to the end of data (not sent early, which
        would desynchronise the client); the session goes on.
        """
        calls = Counter()

        def on_data(stream: DataStream, session: Session) -> None:
            calls()
            raise SMTPError("No thanks", code=554, enhanced="5.7.1")

        port = yield start_server(self, on_data=on_data)
        client, reply = yield self._send(port, CHUNK * 2)
        self.assertEqual((reply.code, reply.enhanced), (554, "5.7.1"), str(reply))
        self.assertEqual(calls.count, 1)
        reply = yield client.command("NOOP")
        self.assertEqual(reply.code, 250, str(reply))
        self.assertEqual(len(client.replies), 7)  # greeting EHLO MAIL RCPT DATA 554 NOOP

    @inlineCallbacks
    def test_hookIgnoresStream(self) -> Any:
        """
        A hook that returns without touching the stream: the server discards the 2 MiB
        body itself and answers C{250}; the next transaction works.
        """
        lengths: list[DataStream] = []

        def on_data(stream: DataStream, session: Session) -> str:
            lengths.append(stream)
            return "ignored but fine"

        port = yield start_server(self, on_data=on_data)
        client, reply = yield self._send(port, CHUNK * 2)
        self.assertEqual(reply.code, 250, str(reply))
        self.assertEqual(reply.text, "2.0.0 ignored but fine")
        self.assertEqual(lengths[0].byte_length, 2 * MiB)
        reply = yield client.command("MAIL FROM:<again@example.com>")
        self.assertEqual(reply.code, 250, str(reply))

    @inlineCallbacks
    def test_slowConsumer(self) -> Any:
        """
        A hook that takes a reactor turn for every chunk still gets all of a 4 MiB body,
        in order (flow control: the server stops reading meanwhile instead of buffering).
        """
        received: list[bytes] = []

        async def on_data(stream: DataStream, session: Session) -> None:
            async for chunk in stream:
                received.append(chunk[:16])
                received.append(chunk[-2:])
                await later(0)
                received.append(b"")
            received.append(b"%d" % stream.byte_length)

        port = yield start_server(self, on_data=on_data)
        client, reply = yield self._send(port, CHUNK * 4)
        self.assertEqual(reply.code, 250, str(reply))
        self.assertEqual(received[-1], b"%d" % (4 * MiB))

    @inlineCallbacks
    def test_onDataTimeout(self) -> Any:
        """
        An C{on_data} that reads the body but never answers is given up after
        C{hook_timeout}: C{451 4.3.0}; the session goes on.
        """

        async def on_data(stream: DataStream, session: Session) -> None:
            await stream.read()
            await Deferred()

        port = yield start_server(self, on_data=on_data, hook_timeout=0.3)
        client, reply = yield self._send(port, b"small body\r\n")
        self.assertEqual((reply.code, reply.enhanced), (451, "4.3.0"), str(reply))
        reply = yield client.command("NOOP")
        self.assertEqual(reply.code, 250, str(reply))
        # A timeout is not a crash: nothing is logged as an error.
        logged = self.flushLoggedErrors()
        self.assertEqual([f"{e.type.__name__}: {e.value}" for e in logged], [])
