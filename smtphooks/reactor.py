"""
A leaner epoll reactor for Linux: L{LeanEPollReactor}, and L{install}.

Twisted's C{EPollReactor} hands every I/O event to its descriptor through
C{twisted.python.log.callWithLogger}, which asks the descriptor for its
log prefix and pushes a legacy logging context around the call, so that
C{twisted.python.log} messages emitted meanwhile are tagged with the
connection (the C{[SMTPProtocol,3,127.0.0.1]} prefix in twistd's log).
That is done for every read and every write, whether anything is logged or
not.  L{LeanEPollReactor} calls the descriptor directly instead; with
persistent connections that was about 19% more messages a second (see
C{docs/performance.md}).

What changes: legacy C{twisted.python.log} events emitted while a
descriptor is handled carry C{-} as their system instead of the
connection's prefix.  Events of C{twisted.logger} (everything smtphooks
logs, each naming its session) are not affected.  What a descriptor's
C{doRead} or C{doWrite} raises is still logged, with its traceback, and the
connection is closed, as with the stock reactor.

Install it before anything imports C{twisted.internet.reactor}::

    from smtphooks.reactor import install
    install()

    from twisted.internet import reactor

or, with twistd, C{twistd --reactor smtphooks-epoll ...}.  C{twistd
smtphooks} uses it by default on Linux, unless C{--reactor} names another.

Importing this module raises L{ImportError} where C{select.epoll} does not
exist (anything but Linux), as C{twisted.internet.epollreactor} does.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.logger import Logger

try:
    from twisted.internet.epollreactor import EPollReactor
except ImportError as e:
    raise ImportError(
        f"smtphooks.reactor needs epoll(7), which this platform ({sys.platform}) does not "
        f"have; use Twisted's default reactor instead ({e})"
    ) from e

__all__ = ["LeanEPollReactor", "install"]

log = Logger()


class LeanEPollReactor(EPollReactor):
    """
    An C{EPollReactor} that dispatches I/O events without setting up a
    legacy logging context for each (see the module's documentation).
    Everything but L{doPoll} is Twisted's.
    """

    def doPoll(self, timeout: float | None) -> None:
        """
        Wait until a watched descriptor is ready, or for C{timeout}
        seconds, and handle every descriptor that is ready: read, write,
        or notice that it was closed.

        An exception raised by a descriptor's C{doRead} or C{doWrite} is
        logged and that connection is closed (Twisted's
        C{_doReadOrWrite} does both).  Anything else raised while handling
        one descriptor (its C{connectionLost}, say) is logged, and the
        others are still handled.

        @param timeout: the longest wait in seconds, or L{None} to wait
            until something is ready.
        @raise OSError: when C{epoll_wait} fails for another reason than a
            signal (a bug: a closed or invalid epoll descriptor).
        """
        # epoll takes -1 for "no time limit".
        wait = -1 if timeout is None else timeout
        # At most one event per watched descriptor; epoll wants at least 1.
        limit = max(1, len(self._selectables))
        try:
            ready: list[tuple[int, int]] = self._poller.poll(wait, limit)
        except InterruptedError:
            # A signal arrived (and its handler has run): back to the loop,
            # which runs what is due and polls again.
            return
        selectables = self._selectables
        handle = self._doReadOrWrite
        for fd, event in ready:
            # Handling one descriptor may remove another one that is ready in
            # the same batch: look each up when its turn comes.
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            try:
                handle(selectable, fd, event)  # type: ignore[no-untyped-call]
            except KeyboardInterrupt:
                raise
            except BaseException:
                log.failure(
                    "unhandled error while handling {descriptor}",
                    descriptor=selectable,
                    log_system=_prefix(selectable),
                )

    doIteration = doPoll


def _prefix(selectable: Any) -> str:
    """
    The log prefix of a descriptor (for an error: the stock reactor tags
    every event with it).
    """
    try:
        return str(selectable.logPrefix())
    except Exception:
        return "(buggy logPrefix method)"


def install() -> LeanEPollReactor:
    """
    Make a L{LeanEPollReactor} the global reactor, the one that
    C{from twisted.internet import reactor} gives.  Call it before anything
    imports C{twisted.internet.reactor}.

    @return: the reactor.
    @raise twisted.internet.error.ReactorAlreadyInstalledError: when a
        reactor is installed already (something imported
        C{twisted.internet.reactor} first).
    """
    from twisted.internet.error import ReactorAlreadyInstalledError
    from twisted.internet.main import installReactor

    installed = sys.modules.get("twisted.internet.reactor")
    if installed is not None:
        raise ReactorAlreadyInstalledError(
            f"a reactor is installed already ({type(installed).__module__}."
            f"{type(installed).__qualname__}): install smtphooks.reactor before anything "
            "imports twisted.internet.reactor"
        )
    reactor = LeanEPollReactor()  # type: ignore[no-untyped-call]
    installReactor(reactor)  # type: ignore[no-untyped-call]
    return reactor
