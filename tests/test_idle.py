"""
L{IdleWatch}: the idle deadlines of many connections with one timer.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from smtphooks._idle import IdleWatch


class Conn:
    """
    A watched connection that records when it expired, and may ask to be
    watched again from its expiry.
    """

    def __init__(self, clock: Clock, watch: IdleWatch, again: int = 0) -> None:
        self.clock = clock
        self.watch = watch
        self.again = again
        self.expired: list[float] = []

    def idle_expired(self) -> None:
        self.expired.append(self.clock.seconds())
        if self.again:
            self.again -= 1
            self.watch.touch(self)


class IdleWatchTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.watch = IdleWatch(self.clock, 10)

    def conn(self, again: int = 0) -> Conn:
        return Conn(self.clock, self.watch, again)

    def test_deadlines(self) -> None:
        """
        Each connection expires C{timeout} after its last touch, in order,
        with one timer scheduled at any time.
        """
        a, b, c = self.conn(), self.conn(), self.conn()
        self.watch.touch(a)
        self.clock.advance(1)
        self.watch.touch(b)
        self.clock.advance(1)
        self.watch.touch(c)
        self.clock.advance(1)
        self.watch.touch(a)  # t=3: a's deadline is now 13
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(8)  # t=11
        self.assertEqual((a.expired, b.expired, c.expired), ([], [11], []))
        self.clock.advance(1)
        self.assertEqual(c.expired, [12])
        self.clock.advance(1)
        self.assertEqual(a.expired, [13])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.watch), 0)

    def test_forget(self) -> None:
        """
        A forgotten connection never expires; the timer goes with the last.
        """
        a, b = self.conn(), self.conn()
        self.watch.touch(a)
        self.watch.touch(b)
        self.watch.forget(a)
        self.watch.forget(a)
        self.clock.advance(10)
        self.assertEqual((a.expired, b.expired), ([], [10]))
        self.watch.touch(a)
        self.watch.forget(a)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_touchFromExpiry(self) -> None:
        """
        A connection that touches itself again when it expires (it waits
        for its own hook, not for the client) gets a full timeout more, and
        the timer still serves an earlier deadline first.
        """
        a, b = self.conn(again=1), self.conn()
        self.watch.touch(a)
        self.clock.advance(5)
        self.watch.touch(b)  # deadline 15
        self.clock.advance(5)  # t=10: a expires and asks again (deadline 20)
        self.assertEqual(a.expired, [10])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(5)
        self.assertEqual(b.expired, [15])
        self.clock.advance(5)
        self.assertEqual(a.expired, [10, 20])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_failingExpiry(self) -> None:
        """
        A connection whose expiry raises is logged; the others still expire.
        """
        a, b = self.conn(), self.conn()

        def boom() -> None:
            raise RuntimeError("boom")

        a.idle_expired = boom  # type: ignore[method-assign]
        self.watch.touch(a)
        self.watch.touch(b)
        self.clock.advance(10)
        self.assertEqual(b.expired, [10])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
