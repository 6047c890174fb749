"""
The lifecycle hooks: the L{ISMTPHooks} interface, the L{Hooks} base class,
and L{call_hook}, the one place where user code is called.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Union

from twisted.internet.defer import Deferred, TimeoutError, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface

from ._coroutine import run_coroutine
from ._observer import Observer
from ._session import Address, Session

if TYPE_CHECKING:
    from ._data import DataStream

__all__ = ["Hooks", "ISMTPHooks", "HOOK_NAMES", "call_hook", "HookTimeout"]

HOOK_NAMES = (
    "on_connect",
    "on_secure",
    "on_auth",
    "on_mail_from",
    "on_rcpt_to",
    "on_data",
    "on_close",
)

HookResult = Union[Any, Deferred[Any], Awaitable[Any]]
Hook = Callable[..., HookResult]


class HookTimeout(Exception):
    """
    A hook did not answer within C{hook_timeout} seconds.
    """


class ISMTPHooks(Interface):
    """
    The lifecycle hooks of an SMTP session.

    Each hook may return a value, return a L{Deferred}, or be a coroutine
    function.  Returning normally accepts; raising L{smtphooks.SMTPError}
    (or any exception with an integer C{response_code}) rejects with that
    reply; any other exception is logged and answered with a temporary
    failure.  Every hook is optional.
    """

    on_connect = Attribute("on_connect(session): after accept, before the greeting.")
    on_secure = Attribute("on_secure(transport, session): after each TLS handshake.")
    on_auth = Attribute("on_auth(auth, session) -> AuthResponse: on AUTH.")
    on_mail_from = Attribute("on_mail_from(address, session): on MAIL FROM.")
    on_rcpt_to = Attribute("on_rcpt_to(address, session): once per RCPT TO.")
    on_data = Attribute("on_data(stream, session) -> None | str | list: when DATA begins.")
    on_close = Attribute("on_close(session): exactly once, when the connection is gone.")


class Hooks:
    """
    A base class of hooks that accept everything.

    Subclass it and override the hooks you need, then pass an instance as
    C{SMTPServer(hooks=...)}.  It has no C{on_auth}: a server offers AUTH
    only when it is given one.
    """

    def on_connect(self, session: Session) -> None:
        """
        Accept every connection.
        """

    def on_secure(self, transport: Any, session: Session) -> None:
        """
        Accept every TLS session.
        """

    def on_mail_from(self, address: Address, session: Session) -> None:
        """
        Accept every sender.
        """

    def on_rcpt_to(self, address: Address, session: Session) -> None:
        """
        Accept every recipient.
        """

    def on_data(self, stream: DataStream, session: Session) -> None:
        """
        Accept every message and discard it (the server drains the stream).
        """

    def on_close(self, session: Session) -> None:
        """
        Do nothing.
        """


#: Results that are certainly not awaitable: checked first, by exact type.
PLAIN_RESULTS = frozenset((type(None), str, bool, int, list, tuple, dict))


def start_hook(hook: Hook, args: tuple[Any, ...]) -> Any:
    """
    Call a user hook.

    @return: its plain result; a L{Failure} if it raised; or, for a
        L{Deferred}, a coroutine or another awaitable, a L{Deferred} of its
        outcome (without a timeout).  Hooks that answer at once thus cost no
        Deferred at all.
    """
    try:
        result = hook(*args)
    except BaseException:
        return Failure()  # type: ignore[no-untyped-call]
    if type(result) in PLAIN_RESULTS:
        return result
    if isinstance(result, Deferred):
        return result
    if inspect.iscoroutine(result):
        return run_coroutine(result)
    if inspect.isawaitable(result):
        return run_coroutine(_await(result))
    return result


def call_hook(
    hook: Hook,
    args: tuple[Any, ...],
    clock: IReactorTime,
    timeout: float | None,
    observer: Observer | None = None,
    name: str = "",
) -> Deferred[Any]:
    """
    Call a user hook and give its outcome as a L{Deferred}, whatever it
    returned.

    A plain value gives a Deferred that has already fired, and no timer is
    set; a coroutine is run with L{run_coroutine} (as
    C{Deferred.fromCoroutine} would run it); a Deferred or
    coroutine still pending after C{timeout} seconds is cancelled, and the
    result fails with L{HookTimeout} (a late result is ignored).  An
    exception raised by the hook becomes a failed Deferred.

    @param hook: the user's callable.
    @param args: its arguments.
    @param clock: where the timeout's time comes from.
    @param timeout: seconds, or L{None} for no timeout.
    @param observer: told how long the hook took, as C{name}.
    """
    if observer is not None:
        return _observed(hook, args, clock, timeout, observer, name)
    result = start_hook(hook, args)
    if isinstance(result, Failure):
        return fail(result)
    if not isinstance(result, Deferred):
        return succeed(result)
    return with_timeout(result, clock, timeout)


def with_timeout(d: Deferred[Any], clock: IReactorTime, timeout: float | None) -> Deferred[Any]:
    """
    Give a hook's pending result C{timeout} seconds, then cancel it and fail
    with L{HookTimeout}.
    """
    if d.called or timeout is None:
        return d
    return d.addTimeout(timeout, clock, _on_timeout)


def _observed(
    hook: Hook,
    args: tuple[Any, ...],
    clock: IReactorTime,
    timeout: float | None,
    observer: Observer,
    name: str,
) -> Deferred[Any]:
    start = clock.seconds()
    d = call_hook(hook, args, clock, timeout)

    def finished(result: object) -> object:
        observer.hook_finished(name, clock.seconds() - start)
        return result

    return d.addBoth(finished)


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _on_timeout(result: object, timeout: float) -> object:
    # addTimeout calls this with the result after a cancellation caused by
    # the timer; turn it into an error of our own.
    raise HookTimeout(f"hook did not answer within {timeout:g} seconds")
