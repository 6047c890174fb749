"""
L{DataStream} on its own: how chunks and the end reach each kind of reader.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from smtphooks import DataStream


class Source:
    """
    A stream's source that records pause and resume requests.
    """

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause_body(self) -> None:
        self.calls.append("pause")

    def resume_body(self) -> None:
        self.calls.append("resume")


def iterate(stream: DataStream) -> Deferred[list[bytes]]:
    """
    Read C{stream} with C{async for}.
    """

    async def read() -> list[bytes]:
        chunks = []
        async for chunk in stream:
            chunks.append(chunk)
        return chunks

    return Deferred.fromCoroutine(read())


class WriteLastTests(SynchronousTestCase):
    """
    The server hands the last bytes of a body and its end over together.
    """

    def test_waitingReader(self) -> None:
        """
        A reader waiting for a chunk gets the last bytes and finds the end
        without waiting again: it never holds a waiter after them.
        """
        stream = DataStream()
        d = iterate(stream)
        stream.write(b"one\r\n")
        self.assertNoResult(d)
        waiter = stream._waiter
        stream._write_last(b"two\r\n")
        self.assertIsNone(stream._waiter)
        self.assertTrue(waiter is not None and waiter.called)
        self.assertEqual(self.successResultOf(d), [b"one\r\n", b"two\r\n"])
        self.assertTrue(stream.ended)
        self.assertEqual(stream.byte_length, 10)
        stream.end()  # the server's own end() afterwards changes nothing
        self.assertTrue(stream.ended)

    def test_otherReaders(self) -> None:
        """
        Without a waiting reader it is a write and an end: C{read()} started
        later, and C{pipe()}, get the same bytes.
        """
        later = DataStream()
        later._write_last(b"body\r\n")
        self.assertEqual(self.successResultOf(later.read()), b"body\r\n")

        class Consumer:
            def __init__(self) -> None:
                self.data = b""
                self.producer: object = None

            def registerProducer(self, producer: object, streaming: bool) -> None:
                self.producer = producer

            def unregisterProducer(self) -> None:
                self.producer = None

            def write(self, data: bytes) -> None:
                self.data += data

        consumer = Consumer()
        piped = DataStream()
        done = piped.pipe(consumer)  # type: ignore[arg-type]
        piped._write_last(b"body\r\n")
        self.assertIsNone(self.successResultOf(done))
        self.assertEqual(consumer.data, b"body\r\n")
        self.assertIsNone(consumer.producer)

    def test_discarding(self) -> None:
        """
        A stream whose reader gave up still counts the bytes and ends.
        """
        source = Source()
        stream = DataStream(source)
        stream.discard()
        stream._write_last(b"x" * 10)
        self.assertTrue(stream.ended)
        self.assertEqual(stream.byte_length, 10)
