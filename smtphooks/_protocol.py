"""
The SMTP protocol: one instance per connection.

Bytes come in through L{SMTPProtocol.dataReceived}, are split into command
lines (or scanned as message data), checked for sequence and syntax, handed
to the user's hooks through L{call_hook}, and answered with catalogue
replies, strictly in command order.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import fcntl
import json
import os
import sys
import termios
from typing import TYPE_CHECKING, Any, Callable, Final

from twisted.internet import tcp
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IHandshakeListener, IPushProducer, ISSLTransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from . import _errors as R
from ._auth import AuthRequest, AuthResponse, Challenge, SASLError, new_mechanism
from ._data import DataStream
from ._errors import Reply, clean_text, is_rejection, reply_for_error
from ._hooks import PLAIN_RESULTS, HookTimeout, call_hook, start_hook, with_timeout
from ._parse import DataScanner, ParseError, parse_mail, parse_rcpt, xtext_decode
from ._session import Address, Envelope, RecipientDSN, Session
from ._tls import tls_info
from ._xclient import apply_xclient, apply_xforward, is_trusted, parse_xclient, parse_xforward

if TYPE_CHECKING:
    from ._server import SMTPServer

__all__ = ["SMTPProtocol"]

log = Logger(namespace="smtphooks")

# Phases of a connection
_GREETING: Final = 0  # before the greeting was sent
_COMMAND: Final = 1  # reading command lines
_DATA: Final = 2  # reading message data after DATA
_CLOSED: Final = 3  # closing: nothing more is read
_TLS: Final = 4  # a TLS handshake is under way
_BDAT: Final = 5  # reading the bytes of a BDAT chunk

# Reasons to stop reading from the transport (a bit mask)
_HOOK: Final = 1  # a hook is pending: stop processing input too
_BODY: Final = 2  # the DataStream's consumer is behind
_WRITE: Final = 4  # the client does not read its replies

#: When a connection reaches its idle deadline with replies still queued in
#: the kernel, the queue is looked at again after this many seconds: a
#: client that reads them makes it move, one that does not is timed out.
_UNSENT_PROBE: Final = 1.0

#: Replies to pipelined commands are handed to the transport once this many
#: bytes of them are waiting.
_OUT_CHUNK: Final = 2048

# Replies are sent straight to the socket of Twisted's TCP transport when
# nothing is queued in it (SMTPProtocol._send), which needs these attributes.
_DIRECT_SEND: Final = all(
    hasattr(tcp.Server, name) for name in ("TLS", "dataBuffer", "connected", "disconnecting")
)

_HTTP_VERBS: Final = frozenset(
    (b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH")
)
_NOTIFY_VALUES: Final = frozenset(("SUCCESS", "FAILURE", "DELAY"))
#: The longest AUTH command or SASL response line (RFC 4954 section 4).
_SASL_LINE: Final = 12288

Done = Callable[[Any], None]
_DONE: Final = Failure(ConnectionDone())  # type: ignore[no-untyped-call]


class TransactionAbandoned(Exception):
    """
    The client reset the transaction before the last BDAT chunk.
    """


def _unsent_bytes(transport: object) -> int:
    """
    How many bytes of replies wait in the kernel's send queue of this
    connection (Linux), or 0 when that cannot be known.
    """
    for candidate in (transport, getattr(transport, "transport", None)):
        sock = getattr(candidate, "socket", None)
        if sock is not None:
            try:
                data = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
            except (OSError, AttributeError, ValueError):
                return 0
            return int.from_bytes(data, sys.byteorder, signed=True)
    return 0


def _address_text(address: object) -> str:
    # IPv4Address/IPv6Address have a host; UNIXAddress a name (bytes or str).
    host = getattr(address, "host", None)
    if host is None:
        host = getattr(address, "name", None)
    if isinstance(host, bytes):
        return os.fsdecode(host)
    return str(host) if host is not None else ""


def _reverse_name(ip: str) -> str | None:
    try:
        return ipaddress.ip_address(ip).reverse_pointer
    except ValueError:
        return None


def _valid_hostname(name: str) -> bool:
    if not name or len(name) > 253:
        return False
    labels = name.rstrip(".").split(".")
    for label in labels:
        if not label or len(label) > 63:
            return False
        if label[0] == "-" or label[-1] == "-":
            return False
        if not all(c.isascii() and (c.isalnum() or c == "-") for c in label):
            return False
    return True


@implementer(IPushProducer, IHandshakeListener)
class SMTPProtocol(Protocol):
    """
    One SMTP session.

    It registers itself as the transport's streaming producer, so that a
    client which does not read its replies stops being read from, and it
    stops reading while a hook is pending, so that replies go out in command
    order however long hooks take.
    """

    # Slots keep an idle connection small: with Protocol's own attributes
    # (factory, transport, connected) among them, no instance dict is made.
    __slots__ = (
        "factory",
        "transport",
        "connected",
        "_bdat_last",
        "_bdat_left",
        "_bdat_refusal",
        "_bdat_size",
        "_body_paused_at",
        "_buffer",
        "_busy",
        "_clock",
        "_counted_ip",
        "_data_deadline",
        "_data_hook",
        "_data_outcome",
        "_data_timer",
        "_direct",
        "_discarding_line",
        "_enhanced",
        "_handlers",
        "_auth_required",
        "_helo",
        "_implicit_tls",
        "_line_deadline",
        "_lost",
        "_observer",
        "_opts",
        "_out",
        "_over_limit",
        "_paused",
        "_pending",
        "_phase",
        "_sasl",
        "_sasl_failure",
        "_scanner",
        "_shutdown_requested",
        "_stall_timer",
        "_stream",
        "_unauthenticated",
        "_unrecognized",
        "_unsent",
        "_unsent_probe",
        "_watch",
        "session",
    )

    factory: SMTPServer

    def __init__(self, server: SMTPServer) -> None:
        self.factory = server
        self.session = Session()
        self._opts = server.options
        self._clock = server.clock
        self._handlers = server._handlers
        # Clients must authenticate before they may send.
        self._auth_required = server.on_auth is not None and not self._opts.auth_optional
        self._observer = server.observer
        self._buffer = b""
        self._phase = _GREETING
        self._paused = 0
        self._busy = False
        # Replies not sent yet (usually one: appending to bytes is cheaper
        # than a list to join, and an idle connection holds no list).
        self._out = b""
        self._enhanced = False
        self._helo = False
        self._unrecognized = 0
        self._discarding_line = False
        self._watch = server._idle_watch()
        self._direct = False
        self._pending: Deferred[Any] | None = None
        self._scanner: DataScanner | None = None
        self._stream: DataStream | None = None
        self._data_hook: Deferred[Any] | None = None
        self._data_outcome: list[Any] | None = None
        self._data_timer: IDelayedCall | None = None
        self._over_limit = False
        self._shutdown_requested = False
        self._lost = False
        # The address the server counted this connection under.
        self._counted_ip: str | None = None
        self._unauthenticated = 0
        self._sasl: Any = None
        self._sasl_failure: Reply | None = None
        self._implicit_tls = False
        self._bdat_left = self._bdat_size = 0
        self._bdat_last = False
        self._bdat_refusal: Reply | None = None
        self._line_deadline = 0.0
        self._data_deadline = 0.0
        self._stall_timer: IDelayedCall | None = None
        self._body_paused_at = 0.0
        self._unsent = 0
        self._unsent_probe: IDelayedCall | None = None

    # -- connection ------------------------------------------------------

    def connectionMade(self) -> None:
        transport = self.transport
        assert transport is not None
        session = self.session
        host, peer = transport.getHost(), transport.getPeer()
        session.local_address = _address_text(host)
        session.local_port = int(getattr(host, "port", 0) or 0)
        session.remote_address = _address_text(peer) if hasattr(peer, "host") else ""
        session.remote_port = int(getattr(peer, "port", 0) or 0)
        # (client_hostname is "[address]" until a reverse lookup names it.)
        transport.registerProducer(self, True)  # type: ignore[attr-defined]
        if type(transport) is tcp.Server:
            # Replies go out with one send() when nothing is queued before
            # them (see _send), and must not wait for Nagle's algorithm.
            self._direct = _DIRECT_SEND and hasattr(transport, "_tempDataBuffer")
            transport.setTcpNoDelay(True)
        self._watch.touch(self)
        refusal = self.factory._admit(self)
        if refusal is not None:
            session.error = refusal.text
            self._reply(refusal)
            self._flush()
            return
        if ISSLTransport.providedBy(transport):
            # Implicit TLS: the session starts once the handshake is done.
            self._implicit_tls = True
            self._phase = _TLS
            return
        self._start_session()

    def _start_session(self) -> None:
        if self._opts.disable_reverse_lookup or not self.session.remote_address:
            self._connect_hook()
        else:
            self._reverse_lookup()

    def _reverse_lookup(self) -> None:
        ip = self.session.remote_address
        name = _reverse_name(ip)
        if name is None:
            self._connect_hook()
            return
        try:
            if ipaddress.ip_address(ip).is_loopback:
                self.session.client_hostname = "localhost"
                self._connect_hook()
                return
        except ValueError:
            pass
        d = self.factory._get_resolver().lookupPointer(name)
        d.addTimeout(self.factory._reverse_lookup_timeout, self._clock)
        self._pending = d

        def found(result: Any) -> None:
            answers = result[0] if isinstance(result, tuple) else []
            for record in answers:
                payload = getattr(record, "payload", None)
                ptr = str(getattr(getattr(payload, "name", ""), "name", b"").decode("ascii", "replace"))
                if _valid_hostname(ptr):
                    self.session.client_hostname = ptr.rstrip(".").lower()
                    break

        def done(_: object) -> None:
            self._pending = None
            if not self._lost:
                self._connect_hook()

        d.addCallbacks(found, lambda f: None)
        d.addBoth(done)

    def _connect_hook(self) -> None:
        hook = self.factory.on_connect
        if hook is None:
            self._greet()
            return
        self._run_hook(hook, (self.session,), self._connect_done, "on_connect")

    def _connect_done(self, result: Any) -> None:
        if isinstance(result, Failure):
            error: BaseException = result.value  # type: ignore[assignment]
            if isinstance(error, HookTimeout):
                self._reply(R.CONNECT_HOOK_FAILED)
            elif is_rejection(error):
                self._reply(reply_for_error(error, R.CONNECT_REJECTED).closing())
            else:
                self._hook_crashed(result, "on_connect")
                self._reply(R.CONNECT_HOOK_FAILED)
            self.session.error = "connection rejected"
            self._flush()
            return
        self._greet()

    def _greet(self) -> None:
        if self._lost or self._phase != _GREETING:
            return
        if self._buffer:
            # The client talked before the greeting.
            self.session.error = "early talker"
            self._reply(R.EARLY_TALKER)
        else:
            self._phase = _COMMAND
            self._send_raw(self.factory._greeting, 220)
        self._flush()

    def connectionLost(self, reason: Failure = _DONE) -> None:
        if self._lost:
            return
        self._lost = True
        self._phase = _CLOSED
        self._watch.forget(self)
        for timer in (self._data_timer, self._stall_timer, self._unsent_probe):
            if timer is not None and timer.active():
                timer.cancel()
        self._data_timer = self._stall_timer = self._unsent_probe = None
        stream = self._stream
        if stream is not None and not stream.ended:
            if self.session.error is None:
                self.session.error = "connection lost during DATA"
            stream.fail(reason)
        clean = reason.check(ConnectionDone)  # type: ignore[no-untyped-call]
        if clean is None and self.session.error is None:
            self.session.error = reason.getErrorMessage()
        # A pending hook is left to finish (its result is ignored); one
        # that never does is cancelled after hook_timeout.
        self._pending = None
        data_hook = self._data_hook
        if data_hook is not None and not data_hook.called:
            cancel = self._clock.callLater(self._opts.hook_timeout, data_hook.cancel)

            def finished(result: object) -> object:
                if cancel.active():
                    cancel.cancel()
                return result

            data_hook.addBoth(finished)
        if self._counted_ip is not None:
            self.factory._release(self)
        hook = self.factory.on_close
        if hook is not None:
            d = call_hook(
                hook,
                (self.session,),
                self._clock,
                self._opts.hook_timeout,
                self._observer,
                "on_close",
            )
            d.addErrback(self._hook_crashed, "on_close")
        self.factory._forget(self)

    # -- flow control ----------------------------------------------------

    def _pause(self, reason: int) -> None:
        was = self._paused
        self._paused = was | reason
        if not was and self.transport is not None and not self._lost:
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def _unpause(self, reason: int) -> None:
        if not self._paused & reason:
            return
        self._paused &= ~reason
        if self._lost or self._phase == _CLOSED:
            return
        if not self._paused and self.transport is not None:
            self.transport.resumeProducing()  # type: ignore[attr-defined]
        if reason != _BODY and self._buffer:
            self._process()

    # IPushProducer, for the transport: the client stopped reading replies.
    def pauseProducing(self) -> None:
        """
        The transport's write buffer is full: stop reading the client.
        """
        self._pause(_WRITE)

    def resumeProducing(self) -> None:
        """
        The transport's write buffer drained: read the client again.  A
        client that reads its replies is not idle.
        """
        if self._phase != _CLOSED and not self._lost:
            self._watch.touch(self)
        self._unpause(_WRITE)

    def stopProducing(self) -> None:
        """
        The transport is going away; L{connectionLost} follows.
        """

    # The DataStream's source interface.
    def pause_body(self) -> None:
        self._pause(_BODY)
        if self._stall_timer is None and not self._lost:
            self._body_paused_at = self._clock.seconds()
            self._stall_timer = self._clock.callLater(self._opts.hook_timeout, self._body_stalled)

    def resume_body(self) -> None:
        timer, self._stall_timer = self._stall_timer, None
        if timer is not None:
            if timer.active():
                timer.cancel()
            if self._data_deadline:
                # The time the server held the client back is not the
                # client's: the message's deadline moves by as much.
                self._data_deadline += self._clock.seconds() - self._body_paused_at
        self._unpause(_BODY)

    def _body_stalled(self) -> None:
        # on_data stopped reading its stream for hook_timeout: it counts as
        # a hook that does not answer.  The rest of the body is discarded.
        self._stall_timer = None
        stream = self._stream
        if stream is not None and self._give_up_on_data_hook("on_data stopped reading"):
            stream.discard()

    # -- input -----------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._buffer:
            self._buffer += data
        else:
            self._buffer = data
        if self._phase != _CLOSED:
            # (A client that keeps talking after its 421 or 221 does not
            # keep the connection: it is cut off socket_timeout after it.)
            self._watch.touch(self)
        if self._line_deadline or self._data_deadline:
            # A client that trickles bytes is not idle, but a command line
            # and a message each have a deadline.
            now = self._clock.seconds()
            if (self._line_deadline and now > self._line_deadline) or (
                self._data_deadline and now > self._data_deadline
            ):
                self.session.error = "too slow"
                self._reply(R.TOO_SLOW)
                self._flush()
                return
        if not self._busy and not self._paused & _HOOK:
            self._process()

    def _process(self) -> None:
        if self._busy:
            return
        self._busy = True
        try:
            while self._buffer and not self._paused & (_HOOK | _WRITE):
                phase = self._phase
                if phase == _COMMAND:
                    self._process_lines()
                    if self._phase == _COMMAND and not self._paused & (_HOOK | _WRITE):
                        break  # the rest is a partial line: wait for more
                elif phase == _DATA:
                    self._process_data()
                elif phase == _BDAT:
                    self._process_bdat()
                elif phase == _TLS:
                    break
                elif phase == _GREETING:
                    # Data before the greeting: answered when the greeting is
                    # due, unless the client floods us meanwhile.
                    if len(self._buffer) > self._opts.max_command_length:
                        self.session.error = "early talker"
                        self._reply(R.EARLY_TALKER)
                    break
                else:
                    self._buffer = b""
        finally:
            self._busy = False
            self._flush()
            if self._phase == _DATA and self._stream is None and not self._lost:
                self._start_message()

    def _process_lines(self) -> None:
        buf = self._buffer
        pos = 0
        size = len(buf)
        limit = self._opts.max_command_length
        while pos < size and self._phase == _COMMAND and not self._paused & (_HOOK | _WRITE):
            end = buf.find(b"\n", pos)
            if end < 0:
                if not self._line_deadline:
                    self._line_deadline = self._clock.seconds() + self._opts.command_timeout
                if size - pos > limit and size - pos > self._line_limit(buf, pos):
                    if not self._discarding_line:
                        self._discarding_line = True
                        self._sasl = self._sasl_failure = None
                        self._reply(R.LINE_TOO_LONG)
                    pos = size
                break
            if self._discarding_line:
                self._discarding_line = False
                pos = end + 1
                continue
            stop = end - 1 if end > pos and buf[end - 1] == 13 else end
            if stop - pos > limit and stop - pos > self._line_limit(buf, pos):
                self._sasl = self._sasl_failure = None  # an AUTH exchange ends here
                self._reply(R.LINE_TOO_LONG)
                pos = end + 1
                continue
            line = buf[pos:stop]
            pos = end + 1
            self._line_deadline = 0.0
            self._line(line)
            if len(self._out) >= _OUT_CHUNK:
                # A client pipelining a flood of commands: hand the replies
                # to the transport now, which pauses us if it is full.
                self._send()
        if pos < size and self._phase != _CLOSED and self._phase != _TLS:
            self._buffer = buf[pos:]
        else:
            self._line_deadline = 0.0
            # Closing, or STARTTLS: what was pipelined after it is dropped.
            self._buffer = b""

    def _line_limit(self, buf: bytes, pos: int) -> int:
        # AUTH commands and SASL responses may be longer than commands.
        if self._sasl is not None or buf[pos : pos + 5].upper() == b"AUTH ":
            return _SASL_LINE
        return self._opts.max_command_length

    def _line(self, line: bytes) -> None:
        if self._sasl is not None:
            self._sasl_line(line)
            return
        # (split_command, inlined: this runs for every command)
        verb, _, argument = line.rstrip(b" \t").partition(b" ")
        verb = verb.upper()
        argument = argument.lstrip(b" ")
        handler = self._handlers.get(verb)
        if handler is not None:
            if self._auth_required and self.session.user is None:
                self._unauthenticated += 1
                if self._unauthenticated > self._opts.max_unauthenticated_commands:
                    self.session.error = "too many unauthenticated commands"
                    self._reply(R.TOO_MANY_UNAUTHENTICATED)
                    return
            handler(self, argument)
            return
        if verb in _HTTP_VERBS:
            self.session.error = "HTTP request"
            self._reply(R.HTTP_REQUEST)
            return
        self._unknown(verb)

    # -- output ----------------------------------------------------------

    def _reply(self, reply: Reply) -> None:
        if self._phase == _CLOSED:
            return
        self._out += reply.extended if self._enhanced else reply.plain
        if self._observer is not None:
            self._observer.reply(reply.code)
        if reply.close:
            self._close()

    def _send_raw(self, data: bytes, code: int) -> None:
        # A reply rendered elsewhere (greeting, EHLO, SASL challenge).
        self._out += data
        if self._observer is not None:
            self._observer.reply(code)

    def _close(self) -> None:
        self._phase = _CLOSED
        self._buffer = b""
        self._send()
        transport = self.transport
        if transport is not None and not self._lost:
            # A TLS transport does not shut down while a producer is
            # registered with it.
            transport.unregisterProducer()  # type: ignore[attr-defined]
            transport.loseConnection()
            # A client that does not read its last replies does not keep
            # the connection: it is cut off after socket_timeout (see
            # idle_expired).
            self._watch.touch(self)

    def _flush(self) -> None:
        """
        Send the replies produced so far, unless input is being processed:
        L{_process} sends all the replies to one read together when it is
        done, in one segment (a pipelining client waits for all of them).
        """
        if not self._busy:
            self._send()

    def _send(self) -> None:
        data = self._out
        transport = self.transport
        if not data or transport is None or self._lost:
            return
        self._out = b""
        if (
            self._direct
            and not transport.TLS  # type: ignore[attr-defined]
            and not transport.dataBuffer  # type: ignore[attr-defined]
            and not transport._tempDataBuffer  # type: ignore[attr-defined]
            and transport.connected  # type: ignore[attr-defined]
            and not transport.disconnecting  # type: ignore[attr-defined]
        ):
            # Nothing is queued before these bytes: send them now, instead
            # of registering for writability and sending on the reactor's
            # next turn (an epoll_ctl pair and a reactor event per reply).
            try:
                sent = transport.socket.send(data)  # type: ignore[attr-defined]
            except OSError:
                sent = 0  # EAGAIN, or an error that the transport will find
            if sent == len(data):
                return
            data = data[sent:]
        transport.write(data)

    # -- hooks -----------------------------------------------------------

    def _run_hook(
        self, hook: Callable[..., Any], args: tuple[Any, ...], done: Done, name: str
    ) -> None:
        """
        Call a hook; give its outcome (a value or a L{Failure}) to C{done},
        now if it answered at once, else when it does, with input paused
        meanwhile so that replies stay in order.
        """
        if self._observer is None:
            result = start_hook(hook, args)
            # (Deferred's metaclass is ABCMeta: isinstance() on it is slow,
            # so the plain results, the common case, are told apart first.)
            if type(result) in PLAIN_RESULTS or not isinstance(result, Deferred):
                done(result)  # answered at once: the common case, kept cheap
                return
            d = with_timeout(result, self._clock, self._opts.hook_timeout)
        else:
            d = call_hook(hook, args, self._clock, self._opts.hook_timeout, self._observer, name)
        if d.called:
            d.addBoth(done)
            return
        self._pending = d
        if self._phase == _GREETING:
            # Keep reading: whatever the client sends before the greeting
            # makes it an early talker.
            d.addBoth(self._connect_hook_finished, done)
            return
        self._pause(_HOOK)

        def finished(result: Any) -> None:
            if self._lost:
                return
            self._pending = None
            done(result)
            # Input pipelined behind the hook's command is processed now,
            # and its replies leave with the hook's, in one send.
            self._unpause(_HOOK)
            self._flush()

        d.addBoth(finished)

    def _connect_hook_finished(self, result: Any, done: Done) -> None:
        self._pending = None
        if not self._lost:
            done(result)
            self._flush()

    def _hook_crashed(self, failure: Failure, name: str) -> None:
        if failure.check(CancelledError) and self._lost:  # type: ignore[no-untyped-call]
            return
        log.failure(
            "hook {hook} raised an unexpected error (session {session_id})",
            failure,
            hook=name,
            session_id=self.session.id,
        )

    def _rejection(self, result: Failure, default: Reply, name: str) -> Reply:
        error: BaseException = result.value  # type: ignore[assignment]
        if isinstance(error, HookTimeout):
            log.warn(
                "hook {hook} timed out (session {session_id})", hook=name, session_id=self.session.id
            )
            return R.HOOK_TIMEOUT
        if is_rejection(error):
            return reply_for_error(error, default)
        self._hook_crashed(result, name)
        return R.HOOK_FAILED

    # -- timeouts and shutdown -------------------------------------------

    def idle_expired(self) -> None:
        """
        Nothing was heard from the client for C{socket_timeout} seconds
        (called by the server's L{IdleWatch}).
        """
        if self._lost:
            return
        if self._phase == _CLOSED:
            # The client did not read its last replies.
            if self.transport is not None:
                self.transport.abortConnection()  # type: ignore[attr-defined]
            return
        if self._pending is not None or self._paused & (_HOOK | _BODY):
            # Waiting for our own hook is not the client's idleness.
            self._watch.touch(self)
            return
        if self._unsent_probe is None:
            unsent = _unsent_bytes(self.transport)
            if unsent:
                # Replies wait in the kernel: the client may be reading them
                # slowly, or not at all.  Look again shortly: the queue moves
                # if it reads.
                self._unsent = unsent
                self._unsent_probe = self._clock.callLater(
                    min(_UNSENT_PROBE, self._opts.socket_timeout), self._probe_unsent
                )
                return
        self._time_out()

    def _probe_unsent(self) -> None:
        self._unsent_probe = None
        if self._lost or self._phase == _CLOSED or self in self._watch:
            return  # gone, closing, or heard from meanwhile
        if _unsent_bytes(self.transport) != self._unsent:
            # The client is reading its replies: it is not idle.
            self._watch.touch(self)
            return
        self._time_out()

    def _time_out(self) -> None:
        self.session.error = "timeout"
        if self._phase == _TLS:
            # Nothing can be said in the middle of a handshake.
            if self.transport is not None:
                self.transport.abortConnection()  # type: ignore[attr-defined]
            return
        self._reply(R.TIMEOUT)
        self._flush()

    def in_transaction(self) -> bool:
        """
        L{True} while a mail transaction is under way.
        """
        return (
            self._phase == _DATA
            or self._phase == _BDAT
            or self._data_hook is not None
            or self._has_sender()
        )

    def _has_sender(self) -> bool:
        """
        A sender was accepted (MAIL) and its transaction is open; asked
        without making an envelope for a session between transactions.
        """
        envelope = self.session._envelope
        return envelope is not None and envelope.mail_from is not None

    def shutdown(self, force: bool = False) -> None:
        """
        The server is closing: say 421 and close now if no transaction is
        under way (or C{force}), else after the transaction ends.
        """
        if self._lost or self._phase == _CLOSED:
            if force and self.transport is not None:
                self.transport.abortConnection()  # type: ignore[attr-defined]
            return
        self._shutdown_requested = True
        if force or self._phase == _GREETING or (not self.in_transaction() and self._pending is None):
            self.session.error = self.session.error or "server shutting down"
            self._reply(R.SHUTTING_DOWN)
            self._flush()

    def _transaction_ended(self) -> None:
        if self._shutdown_requested:
            self.session.error = self.session.error or "server shutting down"
            self._reply(R.SHUTTING_DOWN)

    # -- commands --------------------------------------------------------

    def _hello(self, argument: bytes, command: str) -> None:
        if not argument:
            self._reply(R.HELO_SYNTAX.with_text(f"Syntax: {command} hostname"))
            return
        session = self.session
        session.opening_command = command
        session.host_name_appears_as = clean_text(argument.decode("utf-8", "replace"))
        had = self._has_sender()
        self._reset_envelope()
        self._helo = True
        if command != "HELO":
            self._enhanced = not self._opts.hide_enhancedstatuscodes
            self._send_raw(self.factory._ehlo_reply(self.session), 250)
        else:
            self._enhanced = False
            self._send_raw(self.factory._helo_reply, 250)
        if had:
            self._transaction_ended()

    def do_EHLO(self, argument: bytes) -> None:
        self._hello(argument, "EHLO")

    def do_HELO(self, argument: bytes) -> None:
        self._hello(argument, "HELO")

    def do_LHLO(self, argument: bytes) -> None:
        self._hello(argument, "LHLO")

    def _reset_envelope(self) -> None:
        if self._stream is not None:
            self._abandon_message()
        # A new envelope is made when next asked for: an idle session holds
        # none (a hook that kept the old one keeps it as it was).
        self.session._envelope = None
        if self.session._xforward:
            # XFORWARD attributes last one transaction (a new dict: a hook
            # that kept the old one keeps its values).
            self.session.xforward = {}

    def do_RSET(self, argument: bytes) -> None:
        if argument:
            self._reply(R.NO_ARGUMENTS)
            return
        had = self._has_sender()
        self._reset_envelope()
        self._reply(R.OK)
        if had:
            self._transaction_ended()

    # -- XCLIENT / XFORWARD (Postfix) ----------------------------------------

    def _trusted_attributes(
        self,
        argument: bytes,
        setting: Any,
        parse: Callable[[bytes], dict[str, str]],
    ) -> dict[str, str] | None:
        # XCLIENT and XFORWARD: only from trusted clients, outside a
        # transaction, with valid attributes; else the reply says why.
        if not is_trusted(self.session.remote_address, setting):
            self._reply(R.XCLIENT_DENIED)
            return None
        if self.in_transaction():
            self._reply(R.XCLIENT_IN_TRANSACTION)
            return None
        try:
            return parse(argument)
        except ParseError as e:
            self._reply(e.reply)
            return None

    def do_XCLIENT(self, argument: bytes) -> None:
        session = self.session
        attributes = self._trusted_attributes(argument, self._opts.use_xclient, parse_xclient)
        if attributes is None:
            return
        log.info(
            "XCLIENT {attributes} from {peer} (session {session_id})",
            attributes=attributes,
            peer=session.remote_address,
            session_id=session.id,
        )
        self._reset_envelope()
        apply_xclient(session, attributes)
        self._helo = False
        self._enhanced = False
        # Start over as Postfix does: the connection-level decision again,
        # with the new client, then a new greeting.
        hook = self.factory.on_connect
        if hook is None:
            self._send_raw(self.factory._greeting, 220)
            return

        def greeted(result: Any) -> None:
            if isinstance(result, Failure):
                self._connect_done(result)  # the connect-time rejection, and close
            else:
                self._send_raw(self.factory._greeting, 220)

        self._run_hook(hook, (session,), greeted, "on_connect")

    def do_XFORWARD(self, argument: bytes) -> None:
        attributes = self._trusted_attributes(argument, self._opts.use_xforward, parse_xforward)
        if attributes is None:
            return
        apply_xforward(self.session, attributes)
        self._reply(R.OK)

    def do_NOOP(self, argument: bytes) -> None:
        self._reply(R.OK)

    def do_QUIT(self, argument: bytes) -> None:
        self._reply(R.CLOSING)

    def do_VRFY(self, argument: bytes) -> None:
        self._reply(R.VRFY if argument else R.SYNTAX)

    def do_HELP(self, argument: bytes) -> None:
        self._reply(self.factory._help_reply(self.session))

    def do_MAIL(self, argument: bytes) -> None:
        if not self._helo:
            self._reply(R.NEED_HELO)
            return
        if self._has_sender():
            self._reply(R.NESTED_MAIL)
            return
        if self._auth_required and self.session.user is None:
            self._reply(self.factory._auth_required_reply)
            return
        opts = self._opts
        try:
            path = parse_mail(argument, lenient=opts.lenient_addresses)
        except ParseError as e:
            self._reply(e.reply)
            return
        params = path.params
        if params and _has_control_characters(params):
            self._reply(R.BAD_PARAMETER_VALUE.with_text("Control characters in a parameter"))
            return
        new = Envelope()
        for key, value in params.items():
            reply = self._mail_param(key, value, new)
            if reply is not None:
                self._reply(reply)
                return
        if not path.address.isascii() and not new.smtputf8:
            self._reply(R.NON_ASCII_ADDRESS)
            return
        address = Address(path.address, params)
        hook = self.factory.on_mail_from
        if hook is None:
            self._mail_accepted(address, new)
            return

        def done(result: Any) -> None:
            if isinstance(result, Failure):
                reply = self._rejection(result, R.MAIL_REJECTED, "on_mail_from")
                self._mail_rejected(new, reply)
            else:
                self._mail_accepted(address, new)

        # The hook sees the transaction's parameters (body type, DSN...);
        # mail_from is set once it accepts.
        self.session.envelope = new
        self._run_hook(hook, (address, self.session), done, "on_mail_from")

    def _mail_accepted(self, address: Address, envelope: Envelope) -> None:
        envelope.mail_from = address
        self.session.envelope = envelope
        self._reply(R.MAIL_OK)
        if self._observer is not None:
            self._observer.transaction()

    def _mail_rejected(self, envelope: Envelope, reply: Reply) -> None:
        if self.session._envelope is envelope:
            self.session._envelope = None
        self._reply(reply)

    def _mail_param(self, key: str, value: str | bool, envelope: Envelope) -> Reply | None:
        opts = self._opts
        if key == "SIZE":
            if not isinstance(value, str) or not value.isdigit() or len(value) > 20:
                return R.BAD_PARAMETER_VALUE.with_text("Bad SIZE value")
            if opts.size and int(value) > opts.size:
                return R.SIZE_EXCEEDED
            return None
        if key == "BODY":
            body = value.upper() if isinstance(value, str) else ""
            if (
                body == "7BIT"
                or (body == "8BITMIME" and not opts.hide_8bitmime)
                or (body == "BINARYMIME" and not opts.hide_chunking)
            ):
                envelope.body_type = body
                return None
            return R.BAD_PARAMETER_VALUE.with_text("Unsupported BODY type")
        if key == "SMTPUTF8" and not opts.hide_smtputf8:
            if value is not True:
                return R.BAD_PARAMETER_VALUE.with_text("SMTPUTF8 takes no value")
            envelope.smtputf8 = True
            return None
        if key == "RET" and not opts.hide_dsn:
            ret = value.upper() if isinstance(value, str) else ""
            if ret not in ("FULL", "HDRS"):
                return R.BAD_PARAMETER_VALUE.with_text("RET must be FULL or HDRS")
            envelope.dsn.ret = ret
            return None
        if key == "AUTH" and self.factory._offers_auth(self.session):
            return None  # RFC 4954 section 5: accepted; trust is ours to decide
        if key == "REQUIRETLS" and self.session.secure:
            if value is not True:
                return R.BAD_PARAMETER_VALUE.with_text("REQUIRETLS takes no value")
            envelope.require_tls = True
            return None
        if key == "ENVID" and not opts.hide_dsn:
            if not isinstance(value, str) or not value or len(value) > 100:
                return R.BAD_PARAMETER_VALUE.with_text("Bad ENVID value")
            if not all(32 <= ord(c) < 127 for c in value):
                return R.BAD_PARAMETER_VALUE.with_text("Bad ENVID value")
            envelope.dsn.envid = value
            return None
        return R.UNKNOWN_PARAMETER.with_text(f"Unsupported parameter: {key}")

    def do_RCPT(self, argument: bytes) -> None:
        if not self._helo:
            self._reply(R.NEED_HELO)
            return
        envelope = self.session.envelope
        if envelope.mail_from is None:
            self._reply(R.NEED_MAIL)
            return
        if self._stream is not None:
            # BDAT has begun: the recipients are fixed (RFC 3030).
            self._reply(R.BAD_SEQUENCE)
            return
        opts = self._opts
        try:
            path = parse_rcpt(argument, lenient=opts.lenient_addresses)
        except ParseError as e:
            self._reply(e.reply)
            return
        if path.params and _has_control_characters(path.params):
            self._reply(R.BAD_PARAMETER_VALUE.with_text("Control characters in a parameter"))
            return
        dsn: RecipientDSN | None = None
        for key, value in path.params.items():
            if key in ("NOTIFY", "ORCPT") and not opts.hide_dsn and isinstance(value, str):
                if dsn is None:
                    dsn = RecipientDSN()
                if key == "NOTIFY":
                    notify = [v.strip().upper() for v in value.split(",")]
                    if notify == ["NEVER"] or (
                        notify and all(v in _NOTIFY_VALUES for v in notify)
                        and len(set(notify)) == len(notify)
                    ):
                        dsn.notify = notify
                        continue
                    self._reply(R.BAD_PARAMETER_VALUE.with_text("Bad NOTIFY value"))
                    return
                addr_type, sep, rest = value.partition(";")
                if (
                    not sep
                    or not rest
                    or len(value) > 500
                    or not addr_type.replace("-", "").isalnum()
                    or not addr_type.isascii()
                ):
                    self._reply(R.BAD_PARAMETER_VALUE.with_text("Bad ORCPT value"))
                    return
                dsn.orcpt = value
                continue
            self._reply(R.UNKNOWN_PARAMETER.with_text(f"Unsupported parameter: {key}"))
            return
        if not path.address.isascii() and not envelope.smtputf8:
            self._reply(
                R.NON_ASCII_ADDRESS if not opts.hide_smtputf8 else R.NON_ASCII_ADDRESS_NO_UTF8
            )
            return
        if opts.max_recipients and len(envelope.rcpt_to) >= opts.max_recipients:
            self._reply(R.TOO_MANY_RECIPIENTS)
            return
        address = Address(path.address, path.params, dsn)
        hook = self.factory.on_rcpt_to
        if hook is None:
            envelope.rcpt_to.append(address)
            self._reply(R.RCPT_OK)
            return

        def done(result: Any) -> None:
            if isinstance(result, Failure):
                self._reply(self._rejection(result, R.RCPT_REJECTED, "on_rcpt_to"))
            else:
                envelope.rcpt_to.append(address)
                self._reply(R.RCPT_OK)

        self._run_hook(hook, (address, self.session), done, "on_rcpt_to")

    def _can_start_data(self) -> Reply | None:
        if not self._helo:
            return R.NEED_HELO
        envelope = self.session.envelope
        if envelope.mail_from is None:
            return R.NEED_MAIL
        if not envelope.rcpt_to:
            return R.NEED_RCPT
        return None

    def do_DATA(self, argument: bytes) -> None:
        if argument:
            self._reply(R.NO_ARGUMENTS)
            return
        refusal = self._can_start_data()
        if refusal is None:
            if self._stream is not None:
                refusal = R.DATA_AFTER_BDAT
            elif self.session.envelope.body_type == "BINARYMIME":
                refusal = R.BINARYMIME_NEEDS_BDAT
        if refusal is not None:
            self._reply(refusal)
            return
        self._reply(R.START_DATA)
        self._phase = _DATA
        self._scanner = DataScanner()
        # The message starts (on_data is called) once the 354 is sent, at
        # the end of _process, or when body bytes follow in the same read:
        # the client can send the body meanwhile.

    def _start_message(self) -> None:
        """
        A message body begins (DATA, or the first BDAT): open its stream and
        call C{on_data}, which reads it while it arrives.
        """
        self._over_limit = False
        self._data_deadline = self._clock.seconds() + self._opts.data_timeout
        stream = self._stream = DataStream(self)
        self._data_outcome = None
        hook = self.factory.on_data
        if hook is None:
            stream.discard()
            self._data_outcome = [None]
            return
        d = self._data_hook = call_hook(
            hook, (stream, self.session), self._clock, None, self._observer, "on_data"
        )
        d.addBoth(self._data_hook_done, stream)

    def _data_hook_done(self, result: Any, stream: DataStream) -> None:
        if self._lost or stream is not self._stream or self._data_outcome is not None:
            return  # the transaction was abandoned, or the hook timed out
        self._data_outcome = [result]
        if not stream.ended:
            # The hook is done with the stream: the server reads the rest.
            stream.discard()
            return
        if self._phase == _COMMAND and self._bdat_last:
            self._finish_data()

    def _body(self, body: bytes, last: bool = False) -> None:
        """
        Bytes of the message body, dot-unstuffed: into the stream, or
        dropped once the size limit is passed.  C{last}: they end the body.
        """
        if self._over_limit:
            return
        stream = self._stream
        assert stream is not None
        limit = self._opts.size
        if limit and stream.byte_length + len(body) > limit:
            self._over_limit = True
            stream.end(size_exceeded=True)
        elif not stream.ended:
            if last:
                stream._write_last(body)
            else:
                stream.write(body)

    def _process_data(self) -> None:
        if self._stream is None:
            self._start_message()
        scanner = self._scanner
        assert scanner is not None
        body, rest = scanner.feed(self._buffer)
        self._buffer = b""
        if body:
            self._body(body, rest is not None)
        if rest is not None:
            self._buffer = rest
            self._scanner = None
            self._bdat_last = True
            self._end_of_message()

    def _end_of_message(self) -> None:
        self._phase = _COMMAND
        self._data_deadline = 0.0
        self._unpause(_BODY)
        stream = self._stream
        assert stream is not None
        if not stream.ended:
            stream.end()
        if self._stream is None:
            return  # the hook finished as the stream ended
        if self._data_outcome is not None:
            self._finish_data()
            return
        self._pause(_HOOK)
        self._data_timer = self._clock.callLater(self._opts.hook_timeout, self._data_timed_out)

    def _data_timed_out(self) -> None:
        self._data_timer = None
        if self._give_up_on_data_hook("on_data did not answer in time"):
            self._finish_data()

    def _give_up_on_data_hook(self, why: str) -> bool:
        """
        Count a pending C{on_data} as timed out (the client will get
        C{451}, and the final reply logs it), and cancel it; its late result
        is ignored.

        @return: L{False} if it was not pending.
        """
        d = self._data_hook
        if d is None or self._data_outcome is not None:
            return False
        self._data_outcome = [Failure(HookTimeout(why))]  # type: ignore[no-untyped-call]
        d.cancel()
        return True

    def _data_replies(self, result: Any, stream: DataStream) -> list[Reply]:
        """
        The replies that end a message: one, or in LMTP one per recipient.
        """
        count = len(self.session.envelope.rcpt_to) if self._opts.lmtp else 1
        if stream.size_exceeded:
            return [R.SIZE_EXCEEDED] * count
        if isinstance(result, Failure):
            return [self._rejection(result, R.DATA_REJECTED, "on_data")] * count
        if result is None:
            return [R.QUEUED] * count
        if isinstance(result, str):
            return [R.QUEUED.with_text(result)] * count
        if self._opts.lmtp and isinstance(result, (list, tuple)) and len(result) == count:
            replies = []
            for entry in result:
                if entry is None:
                    replies.append(R.QUEUED)
                elif isinstance(entry, str):
                    replies.append(R.QUEUED.with_text(entry))
                elif isinstance(entry, BaseException) and is_rejection(entry):
                    replies.append(reply_for_error(entry, R.DATA_REJECTED))
                else:
                    break
            else:
                return replies
        expected = f"None, a string, or a list of {count} entries" if self._opts.lmtp else (
            "None or a string"
        )
        error = TypeError(f"on_data returned {result!r}; expected {expected}")
        self._hook_crashed(Failure(error), "on_data")  # type: ignore[no-untyped-call]
        return [R.HOOK_FAILED] * count

    def _finish_data(self) -> None:
        outcome, stream = self._data_outcome, self._stream
        assert outcome is not None and stream is not None
        timer, self._data_timer = self._data_timer, None
        if timer is not None and timer.active():
            timer.cancel()
        self._data_hook = None
        self._data_outcome = None
        self._stream = None
        self._bdat_last = False
        result = outcome[0]
        if result is None and not self._opts.lmtp and not stream.size_exceeded:
            self._reply(R.QUEUED)  # the common case, without a list
            if self._observer is not None:
                self._observer.message(True, stream.byte_length)
        else:
            replies = self._data_replies(result, stream)
            for reply in replies:
                self._reply(reply)
            if self._observer is not None:
                accepted = any(reply.code < 300 for reply in replies)
                self._observer.message(accepted, stream.byte_length)
        self._reset_envelope()
        self.session.transaction += 1
        self._transaction_ended()
        # The reply that tells the client what became of its message leaves
        # now, even if pipelined commands follow in the same read (their
        # replies go in a second send): the client can read it while the
        # server works on the rest.  That was about 1.1-1.2x the messages a
        # second with a pipelining client (benchmarks/micro/patches.py,
        # variant "early").
        self._send()
        self._unpause(_HOOK)

    def _abandon_message(self) -> None:
        """
        A BDAT transaction ends without its LAST chunk (RSET, EHLO): the
        hook's stream fails and its result is ignored.
        """
        stream = self._stream
        if stream is None:
            return
        self._data_deadline = 0.0
        self._stream = None
        self._data_hook = None
        self._data_outcome = None
        self._bdat_last = False
        if not stream.ended:
            stream.fail(Failure(TransactionAbandoned()))  # type: ignore[no-untyped-call]

    # -- BDAT (RFC 3030) -------------------------------------------------

    def do_BDAT(self, argument: bytes) -> None:
        size_text, _, last_text = argument.partition(b" ")
        last_text = last_text.strip()
        if (
            not size_text.isdigit()
            or len(size_text) > 18
            or (last_text and last_text.upper() != b"LAST")
        ):
            # Without a byte count nothing can be skipped: the client has to
            # recover by itself.
            self._reply(R.BDAT_SYNTAX)
            return
        refusal = None
        if self._opts.hide_chunking:
            refusal = R.UNKNOWN_COMMAND
        elif self._stream is None:
            refusal = self._can_start_data()
        self._bdat_left = self._bdat_size = int(size_text)
        self._bdat_last = bool(last_text)
        self._bdat_refusal = refusal
        if refusal is None and self._stream is None:
            self._start_message()
        self._phase = _BDAT
        if self._bdat_left == 0:
            self._end_of_chunk()

    def _process_bdat(self) -> None:
        buf = self._buffer
        take = self._bdat_left
        if len(buf) <= take:
            chunk, self._buffer = buf, b""
        else:
            chunk, self._buffer = buf[:take], buf[take:]
        self._bdat_left -= len(chunk)
        if self._bdat_refusal is None and chunk:
            self._body(chunk, self._bdat_left == 0 and self._bdat_last)
        if self._bdat_left == 0:
            self._end_of_chunk()

    def _end_of_chunk(self) -> None:
        refusal = self._bdat_refusal
        if refusal is not None:
            # The chunk of a refused BDAT was read and dropped.
            self._phase = _COMMAND
            self._bdat_refusal = None
            self._bdat_last = False
            self._reply(refusal)
            return
        if self._bdat_last:
            self._end_of_message()
            return
        self._phase = _COMMAND
        self._reply(R.CHUNK_OK.with_text(f"{self._bdat_size} octets received"))

    # -- TLS -------------------------------------------------------------

    def do_STARTTLS(self, argument: bytes) -> None:
        if not self.factory._offers_starttls(self.session):
            if self.session.secure:
                self._reply(R.TLS_ACTIVE)
            else:
                self._unknown(b"STARTTLS")
            return
        if argument:
            self._reply(R.NO_ARGUMENTS)
            return
        if self._has_sender():
            self._reply(R.BAD_SEQUENCE)
            return
        self._reply(R.READY_FOR_TLS)
        self._send()  # in plaintext, before the handshake
        # Whatever the client pipelined after STARTTLS in plaintext is
        # dropped: it must not be taken as coming over TLS (CVE-2011-0411).
        self._phase = _TLS
        self._buffer = b""
        assert self.transport is not None
        creator = self.factory._tls_creator
        assert creator is not None
        self.transport.startTLS(creator)  # type: ignore[attr-defined]

    def handshakeCompleted(self) -> None:
        """
        The TLS handshake finished: reset the session and tell C{on_secure}.
        """
        if self._lost or self._phase != _TLS:
            return
        session = self.session
        session.secure = True
        session.tls = tls_info(self.transport)
        session.user = None
        session.opening_command = ""
        session.host_name_appears_as = ""
        self._helo = False
        self._reset_envelope()
        hook = self.factory.on_secure
        if hook is None:
            self._secured(None)
        else:
            self._run_hook(hook, (self.transport, session), self._secured, "on_secure")

    def _secured(self, result: Any) -> None:
        if isinstance(result, Failure):
            error: BaseException = result.value  # type: ignore[assignment]
            if is_rejection(error):
                reply = reply_for_error(error, R.TLS_REJECTED).closing()
            else:
                if not isinstance(error, HookTimeout):
                    self._hook_crashed(result, "on_secure")
                reply = R.TLS_REJECTED
            self.session.error = "TLS session rejected"
            self._phase = _COMMAND
            self._reply(reply)
            self._flush()
            return
        if self._implicit_tls:
            self._implicit_tls = False
            self._phase = _GREETING
            self._start_session()
            return
        self._phase = _COMMAND
        if self._buffer and not self._paused & _HOOK:
            self._process()

    # -- AUTH ------------------------------------------------------------

    def do_AUTH(self, argument: bytes) -> None:
        session = self.session
        if not self.factory._offers_auth(session):
            if self.factory.on_auth is not None and not session.secure:
                self._reply(R.ENCRYPTION_REQUIRED)
            else:
                self._unknown(b"AUTH")
            return
        if not self._helo or session.opening_command == "HELO":
            self._reply(R.AUTH_NEEDS_EHLO)
            return
        if session.user is not None:
            self._reply(R.AUTH_ALREADY)
            return
        if self._has_sender():
            self._reply(R.AUTH_IN_TRANSACTION)
            return
        name, _, initial = argument.partition(b" ")
        if not name:
            self._reply(R.AUTH_SYNTAX)
            return
        method = name.decode("ascii", "replace").upper()
        if method not in self._opts.auth_methods:
            self._reply(R.AUTH_UNKNOWN_MECHANISM)
            return
        mechanism = new_mechanism(method, self.factory._cram_challenge)
        data: bytes | None = None
        initial = initial.strip()
        if initial:
            if initial == b"=":
                data = b""
            else:
                decoded = _b64decode(initial)
                if decoded is None:
                    self._reply(R.AUTH_BAD_BASE64)
                    return
                data = decoded
        self._sasl = mechanism
        try:
            self._sasl_result(mechanism.start(data))
        except SASLError:
            self._sasl = None
            self._reply(R.AUTH_MALFORMED)

    def _sasl_line(self, line: bytes) -> None:
        mechanism = self._sasl
        if line.strip() == b"*":
            self._sasl = None
            self._sasl_failure = None
            self._reply(R.AUTH_CANCELLED)
            return
        failure = self._sasl_failure
        if failure is not None:
            # The client acknowledged an XOAUTH2 error challenge.
            self._sasl = None
            self._sasl_failure = None
            self._reply(failure)
            return
        decoded = _b64decode(line.strip())
        if decoded is None:
            self._sasl = None
            self._reply(R.AUTH_BAD_BASE64)
            return
        try:
            self._sasl_result(mechanism.step(decoded))
        except SASLError:
            self._sasl = None
            self._reply(R.AUTH_MALFORMED)

    def _sasl_result(self, step: Challenge | AuthRequest) -> None:
        if isinstance(step, Challenge):
            self._send_raw(b"334 " + base64.b64encode(step.data) + b"\r\n", 334)
            return
        hook = self.factory.on_auth
        assert hook is not None

        def done(result: Any) -> None:
            if isinstance(result, Failure):
                self._sasl = None
                error: BaseException = result.value  # type: ignore[assignment]
                if isinstance(error, HookTimeout) or not is_rejection(error):
                    if not isinstance(error, HookTimeout):
                        self._hook_crashed(result, "on_auth")
                    self._reply(R.AUTH_TEMPORARY)
                else:
                    self._reply(reply_for_error(error, R.AUTH_FAILED))
                return
            self._auth_answer(result, step)

        self._run_hook(hook, (step, self.session), done, "on_auth")

    def _auth_answer(self, result: Any, request: AuthRequest) -> None:
        if isinstance(result, AuthResponse) and result.user is not None:
            self._sasl = None
            self.session.user = result.user
            reply = R.AUTH_OK
            if result.code is not None or result.message:
                code = result.code if result.code is not None else 235
                reply = Reply(code, f"{code // 100}.7.0", result.message or reply.text)
            self._reply(reply)
            return
        data = result.data if isinstance(result, AuthResponse) else None
        if request.method == "XOAUTH2" and data:
            # RFC 7628 3.2.2: an error challenge, then 535 once the client
            # answers it with an empty response.
            blob = json.dumps(data, separators=(",", ":")).encode("utf-8")
            self._sasl_failure = R.AUTH_FAILED
            self._send_raw(b"334 " + base64.b64encode(blob) + b"\r\n", 334)
            return
        self._sasl = None
        message = result.message if isinstance(result, AuthResponse) else None
        self._reply(R.AUTH_FAILED.with_text(message) if message else R.AUTH_FAILED)

    def _unknown(self, verb: bytes) -> None:
        self._unrecognized += 1
        if self._unrecognized > self._opts.max_unrecognized_commands:
            self.session.error = "too many unrecognized commands"
            self._reply(R.TOO_MANY_UNRECOGNIZED)
        else:
            self._reply(R.UNKNOWN_COMMAND)


def _has_control_characters(params: dict[str, str | bool]) -> bool:
    # xtext can smuggle CR, LF and NUL into decoded values; none of them
    # may reach a hook that could write them into a header or a log.
    for value in params.values():
        if isinstance(value, str) and not value.isprintable():
            return True
    return False


def _b64decode(data: bytes) -> bytes | None:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None


def _command_table(server: SMTPServer) -> dict[bytes, Callable[[SMTPProtocol, bytes], None]]:
    """
    The commands a server answers, by upper-case verb, without the disabled
    ones.
    """
    table: dict[bytes, Callable[[SMTPProtocol, bytes], None]] = {}
    disabled = set(server.options.disabled_commands)
    # LMTP opens with LHLO only; SMTP never with LHLO (RFC 2033 section 4.1).
    disabled |= {"HELO", "EHLO"} if server.options.lmtp else {"LHLO"}
    for name in dir(SMTPProtocol):
        if name.startswith("do_"):
            verb = name[3:]
            if verb not in disabled:
                table[verb.encode("ascii")] = getattr(SMTPProtocol, name)
    return table
