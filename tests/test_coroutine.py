"""
L{run_coroutine}: hooks' coroutines run as C{Deferred.fromCoroutine} runs
them, and a L{DataStream} resumes them without a Deferred per chunk.
"""

from __future__ import annotations

import contextvars
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase

from smtphooks import DataStream
from smtphooks._coroutine import run_coroutine

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="outside")


class Boom(Exception):
    pass


class Yields:
    """
    An awaitable that yields a plain value: drivers send it back.
    """

    def __await__(self) -> Any:
        sent = yield "plain"
        return sent


class RunCoroutineTests(SynchronousTestCase):
    def test_value(self) -> None:
        """
        A coroutine that waits on Deferreds gets their results; its return
        value is the result.
        """
        gate: Deferred[int] = Deferred()

        async def hook() -> int:
            first = await gate
            second = await succeed(2)
            return first + second

        d = run_coroutine(hook())
        self.assertNoResult(d)
        gate.callback(40)
        self.assertEqual(self.successResultOf(d), 42)

    def test_error(self) -> None:
        """
        What the coroutine raises, and the failure of a Deferred it awaits
        (which it may catch), become the outcome.
        """
        gate: Deferred[int] = Deferred()

        async def hook() -> None:
            try:
                await gate
            except Boom:
                raise ValueError("after boom") from None

        d = run_coroutine(hook())
        gate.errback(Boom())
        self.failureResultOf(d, ValueError)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_cancelWaitingOnDeferred(self) -> None:
        """
        Cancelling the result cancels the Deferred the coroutine waits on;
        the coroutine sees L{CancelledError} and may answer anyway.
        """
        cancelled: list[bool] = []
        gate: Deferred[int] = Deferred(lambda d: cancelled.append(True))

        async def hook() -> str:
            try:
                await gate
            except CancelledError:
                return "cleaned up"
            return "no"

        d = run_coroutine(hook())
        d.cancel()
        self.assertEqual(cancelled, [True])
        self.assertEqual(self.successResultOf(d), "cleaned up")

    def test_cancelWaitingOnStream(self) -> None:
        """
        A coroutine waiting for a stream's chunk gets L{CancelledError};
        later bytes of the stream are queued, not sent to it.
        """
        stream = DataStream()
        seen: list[object] = []

        async def hook() -> None:
            try:
                async for chunk in stream:
                    seen.append(chunk)
            except CancelledError:
                seen.append("cancelled")
                raise

        d = run_coroutine(hook())
        d.cancel()
        self.failureResultOf(d, CancelledError)
        stream.write(b"late\r\n")
        stream.end()
        self.assertEqual(seen, ["cancelled"])

    def test_cancelIgnored(self) -> None:
        """
        A coroutine that goes on waiting after a cancellation does not make
        the (already failed) result fire twice.
        """
        later: Deferred[int] = Deferred()

        async def hook() -> int:
            try:
                await Deferred()
            except CancelledError:
                pass
            return await later

        d = run_coroutine(hook())
        d.cancel()
        self.failureResultOf(d, CancelledError)
        later.callback(1)  # the coroutine ends now; nothing is raised

    def test_context(self) -> None:
        """
        The coroutine runs in a copy of the caller's context: what it sets
        stays with it across waits and does not leak out.
        """
        gate: Deferred[None] = Deferred()
        seen: list[str] = []

        async def hook() -> None:
            VAR.set("inside")
            await gate
            seen.append(VAR.get())

        d = run_coroutine(hook())
        self.assertEqual(VAR.get(), "outside")
        gate.callback(None)
        self.successResultOf(d)
        self.assertEqual(seen, ["inside"])

    def test_plainValuesSentBack(self) -> None:
        """
        A value that is not a Deferred is sent back, as Twisted does.
        """

        async def hook() -> object:
            return await Yields()

        self.assertEqual(self.successResultOf(run_coroutine(hook())), "plain")

    def test_manyReadyDeferreds(self) -> None:
        """
        Awaiting many Deferreds that have fired does not recurse.
        """

        async def hook() -> int:
            total = 0
            for i in range(20000):
                total += await succeed(i)
            return total

        self.assertEqual(self.successResultOf(run_coroutine(hook())), sum(range(20000)))


class StreamDriverTests(SynchronousTestCase):
    """
    A L{DataStream} read with C{async for} under smtphooks' driver and under
    Twisted's gives the same chunks, the same end and the same errors.
    """

    def read_under(self, drive: Any) -> tuple[DataStream, Deferred[list[bytes]]]:
        stream = DataStream()

        async def hook() -> list[bytes]:
            return [chunk async for chunk in stream]

        return stream, drive(hook())

    def test_bothDrivers(self) -> None:
        for drive in (run_coroutine, Deferred.fromCoroutine):
            stream, d = self.read_under(drive)
            stream.write(b"a\r\n")
            stream.write(b"b\r\n")
            self.assertNoResult(d)
            stream._write_last(b"c\r\n")
            self.assertEqual(self.successResultOf(d), [b"a\r\n", b"b\r\n", b"c\r\n"])

    def test_failureBothDrivers(self) -> None:
        from twisted.python.failure import Failure

        for drive in (run_coroutine, Deferred.fromCoroutine):
            stream, d = self.read_under(drive)
            stream.write(b"a\r\n")
            stream.fail(Failure(Boom()))
            self.failureResultOf(d, Boom)

    def test_readUnderTwistedDriver(self) -> None:
        """
        C{read()} inside a coroutine that Twisted drives gets the body.
        """
        stream = DataStream()

        async def hook() -> bytes:
            return await stream.read()

        d = Deferred.fromCoroutine(hook())
        stream.write(b"x")
        stream.end()
        self.assertEqual(self.successResultOf(d), b"x")
