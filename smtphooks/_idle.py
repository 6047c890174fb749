"""
Idle deadlines of a server's connections, kept with one timer.

Every connection of one server has the same idle timeout, so the order in
which the connections were last active is the order of their deadlines.  A
C{dict} keeps that order for free: a connection that shows activity is moved
to its end, and the one timer is set for the deadline of the first entry.
Marking activity is two C{dict} operations, and an idle connection costs a
C{dict} entry and a float instead of a L{DelayedCall <IDelayedCall>} with its
bound method, argument tuple and keyword C{dict}.
"""

from __future__ import annotations

from typing import Final, Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

__all__ = ["IdleWatch"]

log = Logger(namespace="smtphooks")

#: Deadlines are kept to this precision (seconds): a connection whose
#: deadline is less than this far away when the timer fires is due.  It keeps
#: float rounding in the clock's arithmetic from rescheduling the timer for a
#: few ulps, over and over.
_SLACK: Final = 0.001


class Watched(Protocol):
    """
    What an L{IdleWatch} watches.
    """

    def idle_expired(self) -> None:
        """
        The connection was not marked active for the whole timeout.  It is
        no longer watched; it may L{IdleWatch.touch} itself to be watched
        again.
        """


class IdleWatch:
    """
    The idle deadlines of many connections, with one L{IDelayedCall}.
    """

    __slots__ = ("_clock", "_timeout", "_seen", "_timer", "_firing")

    def __init__(self, clock: IReactorTime, timeout: float) -> None:
        """
        @param clock: where time and the timer come from.
        @param timeout: seconds without L{touch} after which a connection's
            C{idle_expired} is called.
        """
        self._clock = clock
        self._timeout = timeout
        self._seen: dict[Watched, float] = {}
        self._timer: IDelayedCall | None = None
        self._firing = False

    def touch(self, conn: Watched) -> None:
        """
        C{conn} is active now: its deadline is the timeout from now.
        """
        seen = self._seen
        seen.pop(conn, None)
        seen[conn] = self._clock.seconds()
        if self._timer is None and not self._firing:
            self._timer = self._clock.callLater(self._timeout, self._fire)

    def forget(self, conn: Watched) -> None:
        """
        Stop watching C{conn}.
        """
        self._seen.pop(conn, None)
        if not self._seen and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, conn: object) -> bool:
        """
        C{conn} is watched (it was touched since it last expired).
        """
        return conn in self._seen

    def _fire(self) -> None:
        self._timer = None
        seen = self._seen
        cutoff = self._clock.seconds() - self._timeout + _SLACK
        due = []
        for conn, when in seen.items():
            if when > cutoff:
                break
            due.append(conn)
        for conn in due:
            del seen[conn]
        # A connection may touch() itself again from idle_expired(): it goes
        # to the end, and the timer is set once, for the first deadline.
        self._firing = True
        try:
            for conn in due:
                try:
                    conn.idle_expired()
                except Exception:
                    log.failure("idle timeout of {conn!r} failed", conn=conn)
        finally:
            self._firing = False
        if seen and self._timer is None:
            first = seen[next(iter(seen))]
            self._timer = self._clock.callLater(
                max(first + self._timeout - self._clock.seconds(), 0.0), self._fire
            )
