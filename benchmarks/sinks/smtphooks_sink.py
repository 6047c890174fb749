"""
smtphooks sink for the benchmark (started by ../run.py).

Usage: smtphooks_sink.py PORT [--consume async-for|read|pipe] [--hooks sync|async]
                              [--size BYTES] [--profile FILE] [--default-reactor]

The full feature path, as a real receiving server would run it: every
envelope hook is set (on_connect, on_mail_from, on_rcpt_to, on_close, each
doing a little work), on_data consumes the whole body, enhanced status codes
are on (the default), a size limit is set and enforced (50 MiB by default,
advertised as SIZE), logging is at "warn". Reverse DNS is off (loopback
would short-cut it anyway) and AUTH/STARTTLS are not configured, like the
peers.

--consume picks one of the documented ways to read a DataStream:
  async-for   async for chunk in stream        (default)
  read        body = await stream.read()
  pipe        await stream.pipe(consumer)      (an IConsumer that counts)
--hooks async makes the envelope hooks coroutine functions (async def).
--patch NAME[,NAME] applies candidate engine changes from ../micro/patches.py
(monkeypatches, for measuring them before the engine is edited).

The sink runs on smtphooks.reactor.LeanEPollReactor, installed before
anything imports twisted.internet.reactor, as docs/operations.md ("The
reactor") tells a program to do, and as `twistd smtphooks` does by default;
--default-reactor runs it on Twisted's default reactor instead (the patch
"reactor" only changes that one).  The reactor's class is printed as
reactor=... in the "bench-adapter" line.

Prints "bench-adapter smtphooks ..." once listening and
"BENCH messages=N bytes=B" when SIGTERM/SIGINT stops the reactor.
--profile FILE runs the reactor under cProfile and dumps the stats there.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys

import smtphooks
from smtphooks import SMTPError, SMTPServer
from twisted.internet.interfaces import IConsumer
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from zope.interface import implementer

stats = {"messages": 0, "bytes": 0, "connections": 0, "closed": 0, "rcpts": 0}
REJECT_DOMAIN = "reject.invalid"


# -- envelope hooks: cheap, but real work (a policy check each) -------------


def on_connect(session):
    stats["connections"] += 1


def on_mail_from(address, session):
    if address.address.endswith("@" + REJECT_DOMAIN):
        raise SMTPError("Sender rejected", code=550)


def on_rcpt_to(address, session):
    if address.address.endswith("@" + REJECT_DOMAIN):
        raise SMTPError("No such user", code=550)
    stats["rcpts"] += 1


def on_close(session):
    stats["closed"] += 1


async def on_connect_async(session):
    on_connect(session)


async def on_mail_from_async(address, session):
    on_mail_from(address, session)


async def on_rcpt_to_async(address, session):
    on_rcpt_to(address, session)


async def on_close_async(session):
    on_close(session)


# -- on_data: the three documented ways to consume the stream ----------------


def _delivered(stream, n):
    stats["messages"] += 1
    stats["bytes"] += n
    assert n == stream.byte_length or stream.size_exceeded


async def on_data_async_for(stream, session):
    n = 0
    async for chunk in stream:
        n += len(chunk)
    _delivered(stream, n)


async def on_data_read(stream, session):
    body = await stream.read()
    _delivered(stream, len(body))


@implementer(IConsumer)
class CountingConsumer:
    """An IConsumer that counts what it is given (a file would write it)."""

    __slots__ = ("n", "producer")

    def __init__(self):
        self.n = 0
        self.producer = None

    def registerProducer(self, producer, streaming):
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None

    def write(self, data):
        self.n += len(data)


async def on_data_pipe(stream, session):
    consumer = CountingConsumer()
    await stream.pipe(consumer)
    _delivered(stream, consumer.n)


CONSUMERS = {"async-for": on_data_async_for, "read": on_data_read, "pipe": on_data_pipe}


def package_fingerprint():
    """A short hash of the smtphooks sources, so a figure names its engine."""
    root = os.path.dirname(smtphooks.__file__)
    h = hashlib.sha256()
    for name in sorted(os.listdir(root)):
        if name.endswith(".py"):
            with open(os.path.join(root, name), "rb") as f:
                h.update(name.encode() + b"\0" + f.read())
    return h.hexdigest()[:10]


def watch_memory(server, path):
    """SIGUSR1 once: baseline; twice: write the top growth per connection."""
    import signal
    import tracemalloc

    if not tracemalloc.is_tracing():
        tracemalloc.start()
    snaps = []

    def snap(signum, frame):
        snaps.append((tracemalloc.take_snapshot(), len(server.connections)))
        if len(snaps) < 2:
            return
        (before, n0), (after, n1) = snaps[0], snaps[-1]
        conns = max(1, n1 - n0)
        stats = after.compare_to(before, "lineno")
        grown = sum(s.size_diff for s in stats)
        lines = [f"{conns} connections more than at the baseline; traced Python memory grew "
                 f"{grown / 1024:.0f} KiB = {grown / conns:.0f} B per connection", "",
                 "  B/conn  objs/conn  where"]
        for s in stats[:40]:
            frame = s.traceback[0]
            lines.append(f"{s.size_diff / conns:8.0f}  {s.count_diff / conns:9.2f}  "
                         f"{frame.filename}:{frame.lineno}")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")

    signal.signal(signal.SIGUSR1, snap)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("port", type=int)
    p.add_argument("--consume", choices=sorted(CONSUMERS), default="async-for")
    p.add_argument("--hooks", choices=("sync", "async"), default="sync")
    p.add_argument("--size", type=int, default=50 * 1024 * 1024)
    p.add_argument("--profile", metavar="FILE")
    p.add_argument("--patch", default="", help="candidate changes from ../micro/patches.py")
    p.add_argument("--tracemalloc", metavar="FILE",
                   help="on SIGUSR1: first a baseline snapshot, then the growth since it, "
                   "per live connection, to FILE (start with PYTHONTRACEMALLOC=1)")
    p.add_argument("--default-reactor", action="store_true",
                   help="run on Twisted's default reactor, not smtphooks.reactor's")
    a = p.parse_args()

    # Choose the reactor before anything imports twisted.internet.reactor.
    if not a.default_reactor:
        try:
            from smtphooks.reactor import install
        except ImportError as e:  # no epoll, or an smtphooks without the module
            print(f"smtphooks.reactor unavailable ({e}); using the default reactor",
                  file=sys.stderr, flush=True)
        else:
            install()
    from twisted.internet import reactor

    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stderr),
                              [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)])],
        redirectStandardIO=False)
    if a.patch:
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                        "micro"))
        import patches

        for name in a.patch.split(","):
            for apply in patches.VARIANTS[name]:
                apply([])
    if a.hooks == "async":
        hooks = dict(on_connect=on_connect_async, on_mail_from=on_mail_from_async,
                     on_rcpt_to=on_rcpt_to_async, on_close=on_close_async)
    else:
        hooks = dict(on_connect=on_connect, on_mail_from=on_mail_from,
                     on_rcpt_to=on_rcpt_to, on_close=on_close)
    server = SMTPServer(
        on_data=CONSUMERS[a.consume],
        name="localhost",
        size=a.size,
        disable_reverse_lookup=True,
        auth_optional=True,
        **hooks,
    )

    if a.tracemalloc:
        watch_memory(server, a.tracemalloc)

    def listening(port):
        print(f"bench-adapter smtphooks {smtphooks.__version__} src={package_fingerprint()} "
              f"from={os.path.dirname(os.path.dirname(smtphooks.__file__))} "
              f"python {sys.version.split()[0]} reactor={type(reactor).__name__} "
              f"consume={a.consume} hooks={a.hooks} size={a.size} "
              f"{'patch=' + a.patch + ' ' if a.patch else ''}port={a.port}", flush=True)

    def failed(f):
        print(f"listen failed: {f.getErrorMessage()}", file=sys.stderr, flush=True)
        reactor.stop()

    reactor.callWhenRunning(
        lambda: server.listen(f"tcp:{a.port}:interface=127.0.0.1:backlog=511")
        .addCallbacks(listening, failed))
    if a.profile:
        import cProfile

        prof = cProfile.Profile()
        prof.runcall(reactor.run)
        prof.dump_stats(a.profile)
    else:
        reactor.run()  # SIGTERM / SIGINT stop the reactor
    print(f"BENCH messages={stats['messages']} bytes={stats['bytes']} "
          f"connections={stats['connections']} closed={stats['closed']} rcpts={stats['rcpts']}",
          flush=True)
    os._exit(0)  # do not wait for idle sessions


if __name__ == "__main__":
    main()
