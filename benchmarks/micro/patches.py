"""
Candidate changes to the smtphooks engine, as monkeypatches of its private
functions, so that their effect can be measured before anyone edits the
engine: by micro/protocol_cost.py (protocol-only CPU per message) and by the
benchmark itself (run.py --servers smtphooks+hooks+eager,... starts the sink
with --patch hooks,eager).

Each patch function takes an `undo` list and appends (target, name, old
value) for every attribute it replaces; it raises NotApplicable when what it
patches is no longer in the engine. None of this is used by smtphooks itself.

  hooks   _run_hook fast path: a hook that returns a plain value (None) is
          answered at once -- no Deferred, no addBoth, no inspect.isawaitable
          (on_connect, on_mail_from, on_rcpt_to, on_auth, on_secure; not
          on_close, and not while an observer times hooks)
  stream  DataStream end without a Failure: __anext__ raises StopAsyncIteration
          itself once the stream has ended, and a waiting reader is woken with
          a sentinel (callback) that the awaitable turns into
          StopAsyncIteration, instead of errback(StopAsyncIteration())
  parse   MAIL/RCPT fast path: one bytes regex for the plain
          "FROM:<dot-atom@domain>" form (a subset of what the full parser
          accepts, with the same length limits), else the full parser
  idle    no DelayedCall.reset per dataReceived (only the saving is modelled:
          the idle timer would check an activity flag when it fires)
  eager   replies are sent with one send() at once when the TCP transport's
          buffer is empty (no addWriter/removeWriter epoll_ctl pair, no extra
          reactor event per reply); the rest, if any, goes through
          transport.write as before. Replies produced while one input packet
          is processed are still sent together (one send at the end of
          _process); STARTTLS's 220 and closing replies are sent before the
          transport changes. Plain TCP only (not TLS). With it, one test
          fails: tests.test_wire_lifecycle ... test_liveSessions -- the client
          now reads 221 before the server has run connectionLost, and on_close
          runs before the session leaves server.connections
  slots   SMTPProtocol with __slots__ for the engine's own attributes (a
          subclass that the factory builds): on CPython 3.11 an instance dict
          with more than 30 keys stops sharing its keys with the class and
          costs ~1.5 KiB more per connection
  scan    DataScanner.feed looks for "\r\n." with a compiled regex search
          (sre finds the "\r" with memchr) instead of bytes.find, which is a
          Horspool loop at ~1 GB/s; see micro/scan.py
  early   the final reply to a message (250 after the body) is sent at
          once, in a segment of its own, even when pipelined commands follow
          in the same read (the client reads it while the server works on
          the rest; one more send per message). In the engine since; the
          patch changes nothing now
  each    every reply is sent as soon as it is made (one send per reply)
  reactor (not an engine change: a reactor option) EPollReactor.doPoll
          dispatches each I/O event with a direct call instead of
          log.callWithLogger, which builds and pushes a logging context per
          event (~15% of the Python time in the persistent scenario); log
          events emitted while handling I/O then lack the legacy "system"
          prefix. Measures what a leaner reactor subclass would give; that
          subclass is now smtphooks.reactor.LeanEPollReactor, which the sink
          runs on unless given --default-reactor (run.py's
          smtphooks-default-reactor), so this patch only changes anything
          together with --default-reactor
  all     hooks + stream + parse + idle + scan + slots (the protocol-only
          changes; "idle" is only a model of the saving, so the test suite is
          run without it: see check_patches.py)
"""

from __future__ import annotations

import inspect
import re
import textwrap

from smtphooks import _data, _parse, _protocol, _server
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure


class NotApplicable(Exception):
    pass


def _need(obj, *names):
    for name in names:
        if not hasattr(obj, name):
            raise NotApplicable(f"{getattr(obj, '__name__', obj)}.{name} is gone")


def patch(target, name, value, undo):
    own = getattr(target, "__dict__", {})
    old = own[name] if name in own else getattr(target, name)
    undo.append((target, name, old))
    setattr(target, name, value)


def variant_hooks(undo):
    P = _protocol.SMTPProtocol
    _need(P, "_run_hook", "connectionLost")
    original_run_hook = P._run_hook
    plain = (type(None), str, bool, int, list, tuple, dict)

    def _run_hook(self, hook, args, done, *rest):
        if getattr(self, "_observer", None) is not None:
            # Hook latency is being observed (metrics): keep the full path.
            return original_run_hook(self, hook, args, done, *rest)
        try:
            result = hook(*args)
        except BaseException:
            done(Failure())
            return None
        if type(result) in plain:
            done(result)  # answered at once: no Deferred at all
            return None
        # Anything else: exactly what call_hook does today, with a hook that
        # returns what we already have.
        return original_run_hook(self, lambda *_: result, args, done, *rest)

    patch(P, "_run_hook", _run_hook, undo)

    # (on_close in connectionLost also goes through call_hook, once per
    # connection; it is left alone: the order of on_close and of close()
    # firing is part of the contract.)


_END = object()


class _Next:
    """What __anext__ returns while it waits: the end sentinel becomes StopAsyncIteration."""

    __slots__ = ("d",)

    def __init__(self, d):
        self.d = d

    def __await__(self):
        chunk = yield from self.d.__await__()
        if chunk is _END:
            raise StopAsyncIteration
        return chunk


def variant_stream(undo):
    S = _data.DataStream
    _need(S, "__anext__", "end", "_waiter", "_chunks", "_ended", "_failure")
    succeed = _data.succeed
    low = _data.LOW_WATER

    def __anext__(self):
        if self._chunks:
            chunk = self._chunks.popleft()
            self._queued -= len(chunk)
            if self._paused_source and self._queued <= low:
                self._resume_source()
            return succeed(chunk)
        if self._ended:
            if self._failure is not None:
                d = Deferred()
                d.errback(self._failure)
                return d
            raise StopAsyncIteration  # async for ends here: no Deferred, no Failure
        if self._waiter is not None:
            raise RuntimeError("DataStream: __anext__ called while a chunk is awaited")
        self._waiter = Deferred()
        return _Next(self._waiter)

    def end(self, size_exceeded=False):
        if self._ended:
            return
        self._ended = True
        self.size_exceeded = self.size_exceeded or size_exceeded
        self._resume_source()
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            waiter.callback(_END)  # was: waiter.errback(StopAsyncIteration())
        if self._consumer is not None and not self._chunks:
            self._finish_pipe()
        if self._discarding:
            self._chunks.clear()
            self._queued = 0

    patch(S, "__anext__", __anext__, undo)
    patch(S, "end", end, undo)


_ATEXT = rb"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = rb"[A-Za-z0-9]+(?:-+[A-Za-z0-9]+)*"
_SIMPLE_PATH = (rb"<(" + _ATEXT + rb"(?:\." + _ATEXT + rb")*)"
                rb"@(" + _LABEL + rb"(?:\." + _LABEL + rb")*)>")
_SIMPLE_FROM = re.compile(rb"[Ff][Rr][Oo][Mm]:" + _SIMPLE_PATH)
_SIMPLE_TO = re.compile(rb"[Tt][Oo]:" + _SIMPLE_PATH)


def variant_parse(undo):
    _need(_protocol, "parse_mail", "parse_rcpt")
    _need(_parse, "PathArgs")
    PathArgs = _parse.PathArgs
    full_mail, full_rcpt = _protocol.parse_mail, _protocol.parse_rcpt

    def fast(regex, full):
        match = regex.fullmatch

        def parse(argument, *, lenient=False):
            m = match(argument)
            # RFC 5321 4.5.3.1 limits, as the full parser applies them.
            if m is not None and len(m.group(1)) <= 64 and len(m.group(2)) <= 255 \
                    and m.end() - m.start(1) + 1 <= 256:
                return PathArgs(m.group(1).decode("ascii") + "@" + m.group(2).decode("ascii"),
                                {})
            return full(argument, lenient=lenient)
        return parse

    patch(_protocol, "parse_mail", fast(_SIMPLE_FROM, full_mail), undo)
    patch(_protocol, "parse_rcpt", fast(_SIMPLE_TO, full_rcpt), undo)


def variant_idle(undo):
    P = _protocol.SMTPProtocol
    _need(P, "dataReceived", "_timed_out")
    src = inspect.getsource(P.dataReceived)
    if "idle.reset(self._opts.socket_timeout)" not in src:
        raise NotApplicable("dataReceived no longer resets the idle timer")
    # The same method without the reset: the idle timer, when it fires, looks
    # at a flag set here (cost of the check itself: one attribute store).
    new_src = src.replace("idle = self._idle\n", "self._seen = True\n")
    new_src = re.sub(r"\n\s*if idle is not None:\n\s*idle.reset\(self._opts.socket_timeout\)",
                     "", new_src)
    ns = {}
    exec(compile(_dedent(new_src), "<idle variant>", "exec"), vars(_protocol), ns)
    patch(P, "dataReceived", ns["dataReceived"], undo)


def _dedent(src):
    return textwrap.dedent(src)


def variant_eager(undo):
    from twisted.internet import tcp

    P = _protocol.SMTPProtocol
    _need(P, "_flush")
    _need(tcp.Server, "dataBuffer", "TLS", "connected", "disconnecting")
    Server = tcp.Server

    closed = _protocol._CLOSED

    def _flush(self):
        out = self._out
        transport = self.transport
        if self._busy and self._phase != closed and not self.__dict__.get("_flush_now"):
            # Inside _process: its own final _flush sends everything at once.
            # (Sending now would split the replies to one pipelined packet
            # into several segments, and Nagle + delayed ACK then stall the
            # client for 40 ms. Twisted's buffered write coalesces them by
            # waiting for the next reactor iteration.)
            return
        if out and transport is not None and not self._lost:
            self._out = []
            data = out[0] if len(out) == 1 else b"".join(out)
            if (type(transport) is Server and not transport.TLS
                    and not transport.dataBuffer
                    and not getattr(transport, "_tempDataBuffer", True)
                    and transport.connected and not transport.disconnecting):
                try:
                    sent = transport.socket.send(data)
                except OSError:
                    sent = 0  # EAGAIN or an error: transport.write deals with it
                if sent == len(data):
                    return
                data = data[sent:]
            transport.write(data)

    patch(P, "_flush", _flush, undo)

    # STARTTLS: its 220 must leave in plaintext before startTLS().
    original_starttls = P.do_STARTTLS

    def do_STARTTLS(self, argument):
        self.__dict__["_flush_now"] = True
        try:
            original_starttls(self, argument)
        finally:
            self.__dict__["_flush_now"] = False

    patch(P, "do_STARTTLS", do_STARTTLS, undo)


def variant_slots(undo):
    P = _protocol.SMTPProtocol
    _need(_server.SMTPServer, "buildProtocol")
    source = inspect.getsource(P)
    names = sorted(set(re.findall(r"\bself\.(\w+)\s*(?::[^=\n]+)?=(?!=)", source))
                   - {"transport", "connected"})
    names = [n for n in names if not isinstance(getattr(P, n, None), property)]

    class SlottedSMTPProtocol(P):
        __slots__ = tuple(names)

    patch(_server.SMTPServer, "buildProtocol",
          lambda self, addr: SlottedSMTPProtocol(self), undo)


_DOT_LINE = re.compile(rb"\r\n\.").search


def _find_dot_line(buf, pos=0):
    m = _DOT_LINE(buf, pos)
    return -1 if m is None else m.start()


def variant_scan(undo):
    D = _parse.DataScanner
    _need(D, "feed")
    src = inspect.getsource(D.feed)
    if 'buf.find(b"\\r\\n.")' not in src:
        raise NotApplicable("DataScanner.feed no longer calls buf.find(b'\\r\\n.')")
    new_src = src.replace('buf.find(b"\\r\\n.")', "_find_dot_line(buf)")
    new_src = new_src.replace('buf.find(b"\\r\\n.", after)', "_find_dot_line(buf, after)")
    ns = {}
    env = dict(vars(_parse), _find_dot_line=_find_dot_line)
    exec(compile(_dedent(new_src), "<scan variant>", "exec"), env, ns)
    patch(D, "feed", ns["feed"], undo)


def variant_early(undo):
    P = _protocol.SMTPProtocol
    _need(P, "_finish_data", "_send")
    original = P._finish_data

    def _finish_data(self):
        # Send the message's final reply at once, in its own segment, even
        # when pipelined commands follow in the same read: the client can
        # read it while the server works on the rest.
        original(self)
        self._send()

    patch(P, "_finish_data", _finish_data, undo)


def variant_each(undo):
    P = _protocol.SMTPProtocol
    _need(P, "_reply", "_send")
    original = P._reply

    def _reply(self, reply):
        # Every reply is sent as soon as it is made (one send each).
        original(self, reply)
        self._send()

    patch(P, "_reply", _reply, undo)


def variant_reactor(undo):
    from twisted.internet import epollreactor

    R = epollreactor.EPollReactor
    src = inspect.getsource(R.doPoll)
    call = "log.callWithLogger(selectable, _drdw, selectable, fd, event)"
    if call not in src:
        raise NotApplicable("EPollReactor.doPoll changed")
    ns = {}
    exec(compile(_dedent(src.replace(call, "_drdw(selectable, fd, event)")),
                 "<reactor variant>", "exec"), vars(epollreactor), ns)
    patch(R, "doPoll", ns["doPoll"], undo)
    patch(R, "doIteration", ns["doPoll"], undo)


VARIANTS = {
    "base": [],
    "hooks": [variant_hooks],
    "stream": [variant_stream],
    "parse": [variant_parse],
    "idle": [variant_idle],
    "eager": [variant_eager],
    "slots": [variant_slots],
    "scan": [variant_scan],
    "reactor": [variant_reactor],
    "early": [variant_early],
    "each": [variant_each],
    "all": [variant_hooks, variant_stream, variant_parse, variant_idle, variant_scan,
            variant_slots],
}


