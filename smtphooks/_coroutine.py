"""
Running a hook's coroutine: L{run_coroutine}, and L{Wait}, which lets a
L{DataStream <smtphooks.DataStream>} resume it without a L{Deferred}.

L{run_coroutine} does what C{Deferred.fromCoroutine} does: it runs the
coroutine in a copy of the current C{contextvars} context until it awaits a
L{Deferred} that has not fired, resumes it with the Deferred's result (or
throws its failure in), and gives the coroutine's outcome as a L{Deferred}
that can be cancelled (which cancels what the coroutine waits for).  Values
that are not Deferreds are sent back, as Twisted does.

What it adds is L{Wait}: an awaitable of smtphooks' own (the stream's next
chunk) yields a L{Wait}, and the driver leaves it a way to resume the
coroutine directly, so that a chunk reaches an C{async for} loop without a
Deferred, a callback chain and a second trip through the driver for each.
Under any other driver (C{Deferred.fromCoroutine}, C{ensureDeferred}), which
sends an unknown yielded value back, the awaitable sees its own L{Wait}
come back and waits on a Deferred instead.
"""

from __future__ import annotations

from contextvars import copy_context
from typing import Any, Callable, Coroutine, Generator

from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure

__all__ = ["Wait", "run_coroutine"]

Resume = Callable[[Any, bool], None]


class Wait:
    """
    Yielded by an awaitable that is resumed directly; L{run_coroutine}'s
    driver sets C{resume}.  C{resume(value, False)} sends C{value} in;
    C{resume(exception, True)} throws C{exception} in.  C{resume} is
    L{None} under any other driver, and once the wait is over.
    """

    __slots__ = ("resume",)

    def __init__(self) -> None:
        self.resume: Resume | None = None


class _Driver:
    """
    One coroutine being run; C{result} fires with its outcome.
    """

    __slots__ = ("_coro", "_context", "_waiting", "_sync", "result")

    def __init__(self, coro: Coroutine[Any, Any, Any] | Generator[Any, Any, Any]) -> None:
        self._coro = coro
        self._context = copy_context()
        self._waiting: Wait | Deferred[Any] | None = None
        self._sync: Any = _IDLE
        self.result: Deferred[Any] = Deferred(self._cancel)

    def step(self, value: Any, failed: bool) -> None:
        """
        Resume the coroutine with C{value} (an exception to throw in when
        C{failed}) and run it until it waits or ends.
        """
        run = self._context.run
        coro = self._coro
        while True:
            try:
                if failed:
                    if isinstance(value, Failure):
                        yielded = run(value.throwExceptionIntoGenerator, coro)
                    else:
                        yielded = run(coro.throw, value)
                else:
                    yielded = run(coro.send, value)
            except StopIteration as e:
                self._finish(e.value)
                return
            except BaseException:
                self._finish(Failure())  # type: ignore[no-untyped-call]
                return
            if type(yielded) is Wait:
                yielded.resume = self._resume_wait
                self._waiting = yielded
                return
            if isinstance(yielded, Deferred):
                self._waiting = yielded
                self._sync = _PENDING
                yielded.addBoth(self._resume_deferred)
                if self._sync is _PENDING:
                    self._sync = _IDLE  # it fires later: _resume_deferred steps
                    return
                # It had fired already: go on here rather than recursing.
                value, self._sync = self._sync, _IDLE
                self._waiting = None
                failed = isinstance(value, Failure)
                continue
            value, failed = yielded, False  # sent back, as Twisted does

    def _resume_wait(self, value: Any, failed: bool) -> None:
        waiting = self._waiting
        if type(waiting) is Wait:
            waiting.resume = None
        self._waiting = None
        self.step(value, failed)

    def _resume_deferred(self, result: Any) -> None:
        if self._sync is _PENDING:
            self._sync = result
            return None
        self._waiting = None
        self.step(result, isinstance(result, Failure))
        return None  # the result is consumed (a failure is not "unhandled")

    def _finish(self, outcome: Any) -> None:
        result = self.result
        if result.called:
            return  # cancelled meanwhile, and the coroutine went on
        if isinstance(outcome, Failure):
            result.errback(outcome)
        else:
            result.callback(outcome)

    def _cancel(self, result: Deferred[Any]) -> None:
        waiting, self._waiting = self._waiting, None
        if isinstance(waiting, Wait):
            waiting.resume = None
            self.step(CancelledError(), True)
        elif waiting is not None:
            waiting.cancel()


_IDLE = object()
_PENDING = object()


def run_coroutine(coro: Coroutine[Any, Any, Any] | Generator[Any, Any, Any]) -> Deferred[Any]:
    """
    Run C{coro} as C{Deferred.fromCoroutine} does (see the module's
    documentation), resuming it directly where it waits on a L{Wait}.

    @return: a L{Deferred} of its outcome; cancelling it cancels what the
        coroutine waits for (a L{Wait} gets L{CancelledError} thrown in).
    """
    driver = _Driver(coro)
    driver.step(None, False)
    return driver.result
