"""
L{DataStream}: the message body as C{on_data} receives it, with flow control.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Awaitable, Generator, Protocol as TypingProtocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from ._coroutine import Wait, run_coroutine

__all__ = ["DataStream"]

#: Unread bytes a stream holds before it asks its source to stop reading.
HIGH_WATER = 256 * 1024
#: Unread bytes below which a paused source is asked to read again.
LOW_WATER = 64 * 1024


class _Source(TypingProtocol):
    """
    Where a stream's bytes come from (the protocol), as the stream sees it.
    """

    def pause_body(self) -> None: ...

    def resume_body(self) -> None: ...


#: What a waiting reader is woken with at the end (cheaper than a Failure).
_END: bytes = b"\x00end of stream"


class _NextChunk:
    """
    The awaitable C{__anext__} returns while a chunk is awaited.

    Under smtphooks' own driver (L{run_coroutine}, which runs C{on_data}),
    it yields a L{Wait} that the stream resumes directly; under any other,
    which sends the L{Wait} back, it waits on a L{Deferred}.
    """

    __slots__ = ("_stream",)

    def __init__(self, stream: DataStream) -> None:
        self._stream = stream

    def __await__(self) -> Generator[Any, Any, bytes]:
        stream = self._stream
        wait = Wait()
        stream._waiter = wait
        chunk = yield wait
        if chunk is wait:
            waiter: Deferred[bytes] = Deferred()
            stream._waiter = waiter
            chunk = yield from waiter.__await__()
        if chunk is _END:
            raise StopAsyncIteration
        return chunk  # type: ignore[no-any-return]


@implementer(IPushProducer)
class DataStream:
    """
    The body of one message, in chunks, as the client sends it.

    Consume it in one of three ways, once:

        - C{async for chunk in stream: ...}
        - C{body = await stream.read()} (the whole body; mind the memory)
        - C{await stream.pipe(consumer)}, to an L{IConsumer} that may pause
          it

    The bytes are the message after dot-unstuffing, CRLF line endings kept.
    While the consumer lags, the server stops reading from the client.  A
    hook that returns without reading the stream leaves the rest to the
    server, which discards it.

    If the client disconnects before the end, or resets a BDAT transaction,
    iteration raises that error instead of ending: what was read is not a
    message.  If the hook stops reading for C{hook_timeout} seconds, the
    rest is discarded and the client gets C{451}.

    @ivar byte_length: the bytes put into the stream so far; final once the
        stream has ended.
    @ivar size_exceeded: L{True} when the message went over the server's
        size limit; the stream then ends early and the client gets C{552}.
    """

    __slots__ = (
        "byte_length",
        "size_exceeded",
        "_source",
        "_chunks",
        "_queued",
        "_ended",
        "_discarding",
        "_paused_source",
        "_waiter",
        "_consumer",
        "_consumer_paused",
        "_pipe_done",
        "_mode",
        "_failure",
        "__provides__",
    )

    def __init__(self, source: _Source | None = None) -> None:
        """
        @param source: where the bytes come from, told to pause and resume;
            the server passes its protocol, tests pass nothing.
        """
        self.byte_length = 0
        self.size_exceeded = False
        self._source = source
        self._chunks: deque[bytes] = deque()
        self._queued = 0
        self._ended = False
        self._discarding = False
        self._paused_source = False
        self._waiter: Wait | Deferred[bytes] | None = None
        self._consumer: IConsumer | None = None
        self._consumer_paused = False
        self._pipe_done: Deferred[None] | None = None
        self._mode: str | None = None
        self._failure: Failure | None = None

    # -- consumer side -----------------------------------------------------

    @property
    def ended(self) -> bool:
        """
        L{True} once the last byte has been put into the stream.
        """
        return self._ended

    def _claim(self, mode: str) -> None:
        if self._mode is not None:
            raise RuntimeError(f"this DataStream is already consumed by {self._mode}")
        self._mode = mode

    def __aiter__(self) -> DataStream:
        if self._mode != "iteration":
            self._claim("iteration")
        return self

    def __anext__(self) -> Awaitable[bytes]:
        """
        @return: an awaitable of the next chunk, which raises
            L{StopAsyncIteration} at the end, or the error that cut the
            message short.
        @raise StopAsyncIteration: at once, when the stream has ended.
        """
        if self._chunks:
            chunk = self._chunks.popleft()
            self._queued -= len(chunk)
            if self._paused_source and self._queued <= LOW_WATER:
                self._resume_source()
            return succeed(chunk)
        if self._ended:
            if self._failure is not None:
                d: Deferred[bytes] = Deferred()
                d.errback(self._failure)
                return d
            raise StopAsyncIteration
        if self._waiter is not None:
            raise RuntimeError("DataStream: __anext__ called while a chunk is awaited")
        return _NextChunk(self)

    def read(self) -> Deferred[bytes]:
        """
        Read the whole body.

        @return: a L{Deferred} that fires with the body once it has ended.
        @raise RuntimeError: if the stream is already being consumed.
        """
        self._claim("read")
        parts: list[bytes] = []

        async def collect() -> bytes:
            while True:
                try:
                    parts.append(await self.__anext__())
                except StopAsyncIteration:
                    return b"".join(parts)

        return run_coroutine(collect())

    def pipe(self, consumer: IConsumer) -> Deferred[None]:
        """
        Write the body to C{consumer}, registering this stream as its
        streaming producer, so that the consumer can pause it.  The producer
        is unregistered at the end.

        @return: a L{Deferred} that fires when all of the body was written.
        @raise RuntimeError: if the stream is already being consumed.
        """
        self._claim("pipe")
        self._consumer = consumer
        done: Deferred[None] = Deferred()
        self._pipe_done = done
        consumer.registerProducer(self, True)
        while self._chunks and not self._consumer_paused:
            chunk = self._chunks.popleft()
            self._queued -= len(chunk)
            consumer.write(chunk)
        if self._paused_source and self._queued <= LOW_WATER and not self._consumer_paused:
            self._resume_source()
        if self._ended and not self._chunks:
            self._finish_pipe()
        return done

    # IPushProducer, for pipe()'s consumer
    def pauseProducing(self) -> None:
        """
        The consumer is full: stop handing it chunks (and the server stops
        reading from the client).
        """
        self._consumer_paused = True
        self._pause_source()

    def resumeProducing(self) -> None:
        """
        The consumer wants more.
        """
        self._consumer_paused = False
        consumer = self._consumer
        while consumer is not None and self._chunks and not self._consumer_paused:
            chunk = self._chunks.popleft()
            self._queued -= len(chunk)
            consumer.write(chunk)
        if self._consumer_paused:
            return
        if self._ended and not self._chunks:
            self._finish_pipe()
        elif self._queued <= LOW_WATER:
            self._resume_source()

    def stopProducing(self) -> None:
        """
        The consumer gives up: the rest of the body is discarded.
        """
        self._consumer = None
        self.discard()
        if self._pipe_done is not None:
            done, self._pipe_done = self._pipe_done, None
            done.callback(None)

    def discard(self) -> None:
        """
        Throw away what is queued and what is still to come; the server
        keeps reading the client until the end of the message.
        """
        self._discarding = True
        self._chunks.clear()
        self._queued = 0
        self._consumer_paused = False
        self._resume_source()

    # -- source side (the protocol) ----------------------------------------

    def _pause_source(self) -> None:
        if not self._paused_source and self._source is not None and not self._ended:
            self._paused_source = True
            self._source.pause_body()

    def _resume_source(self) -> None:
        if self._paused_source:
            self._paused_source = False
            if self._source is not None:
                self._source.resume_body()

    def write(self, chunk: bytes) -> None:
        """
        Put bytes into the stream (for the server, and for tests that build
        a stream by hand).
        """
        if self._ended:
            raise RuntimeError("DataStream: write after the end")
        if not chunk:
            return
        self.byte_length += len(chunk)
        if self._discarding:
            return
        if self._waiter is not None and self._wake(chunk):
            return
        consumer = self._consumer
        if consumer is not None and not self._consumer_paused:
            consumer.write(chunk)
            return
        self._chunks.append(chunk)
        self._queued += len(chunk)
        if self._queued > HIGH_WATER:
            self._pause_source()

    def _write_last(self, chunk: bytes) -> None:
        """
        The last bytes of the body and its end, together (for the server,
        when one read holds both): a reader waiting for a chunk gets these
        bytes and then finds the end at once, without waiting a second time.
        """
        waiter = self._waiter
        if (
            waiter is None
            or not chunk
            or self._ended
            or self._discarding
            or (type(waiter) is Wait and waiter.resume is None)
        ):
            self.write(chunk)
            self.end()
            return
        self.byte_length += len(chunk)
        self._ended = True
        self._resume_source()
        self._wake(chunk)

    def _wake(self, value: Any, failed: bool = False) -> bool:
        """
        Give the waiting reader C{value} (a L{Failure} when C{failed}).

        @return: L{False} if no reader waits any more.
        """
        waiter, self._waiter = self._waiter, None
        if isinstance(waiter, Wait):
            resume = waiter.resume
            if resume is None:
                return False  # its coroutine was cancelled
            resume(value, failed)
        elif waiter is None:
            return False
        elif failed:
            waiter.errback(value)
        else:
            waiter.callback(value)
        return True

    def end(self, size_exceeded: bool = False) -> None:
        """
        Mark the end of the body (for the server, and for tests).
        """
        if self._ended:
            return
        self._ended = True
        self.size_exceeded = self.size_exceeded or size_exceeded
        self._resume_source()
        if self._waiter is not None:
            self._wake(_END)  # _NextChunk turns it into StopAsyncIteration
        if self._consumer is not None and not self._chunks:
            self._finish_pipe()
        if self._discarding:
            self._chunks.clear()
            self._queued = 0

    def fail(self, reason: Failure) -> None:
        """
        End the stream because the message will never be complete (the
        client went away): the consumer gets C{reason} instead of the end.
        """
        if self._ended:
            return
        self._ended = True
        self._failure = reason
        self._chunks.clear()
        self._queued = 0
        self._resume_source()
        if self._waiter is not None:
            self._wake(reason, failed=True)
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.unregisterProducer()
        done, self._pipe_done = self._pipe_done, None
        if done is not None:
            done.errback(reason)

    def _finish_pipe(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.unregisterProducer()
        done, self._pipe_done = self._pipe_done, None
        if done is not None:
            done.callback(None)

    @classmethod
    def from_bytes(cls, body: bytes) -> DataStream:
        """
        A stream that holds C{body} and has ended: for testing a hook.
        """
        stream = cls()
        stream.write(body)
        stream.end()
        return stream

    def __repr__(self) -> str:
        state = "ended" if self._ended else "open"
        return f"<DataStream {state} byte_length={self.byte_length}>"

