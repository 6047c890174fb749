"""
smtphooks sink for the benchmark (started by ../run.py).

Usage: smtphooks_sink.py PORT [--consume async-for|read|pipe] [--hooks sync|async]
                              [--size BYTES] [--profile FILE] [--default-reactor]
                              [--workers N]

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

--workers N serves the port from N forked processes, as docs/operations.md
("Several processes", "The same in your own program") tells a program to:
the parent listens once (127.0.0.1:PORT, backlog 511) and never imports the
reactor; each child installs its own reactor (smtphooks.reactor unless
--default-reactor), builds the same server (same hooks, same options) and
adopts the socket with AdoptedStreamServerEndpoint; the kernel gives each
connection to the child that accepts it first.  Children report "ready" and,
when they stop, their counts to the parent over a pipe.  The parent prints
the "bench-adapter" line (with workers=N) once every child is listening; on
SIGTERM/SIGINT it passes SIGTERM on to the children (SIGKILL after
STOP_GRACE seconds), waits for them, and prints ONE "BENCH messages=N
bytes=B ..." line with the sums over the children (per_worker=a/b/...
shows how the messages were spread).  --profile FILE and --tracemalloc FILE
write FILE.1, FILE.2, ... (one per child; the parent passes SIGUSR1 on).
With --reuse-port, the parent opens one SO_REUSEPORT socket per child on the
same port instead (as twistd smtphooks --workers N --reuse-port does), and
the kernel spreads the connections over them by address, so that 20
connections opened at once do not all land on the child that woke first.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import socket
import sys
import traceback

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
HOST = "127.0.0.1"
#: --workers: seconds the parent gives its children to stop before SIGKILL
#: (run.py kills the whole process group after 10 s).
STOP_GRACE = 7


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


def parse_args():
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
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help="serve the port from N forked processes (default: this one)")
    p.add_argument("--reuse-port", action="store_true",
                   help="with --workers: one SO_REUSEPORT socket per child")
    a = p.parse_args()
    if a.workers < 0:
        p.error("--workers wants N >= 1")
    return a


def install_reactor(a):
    """The reactor of this process: chosen before anything imports it."""
    if not a.default_reactor:
        try:
            from smtphooks.reactor import install
        except ImportError as e:  # no epoll, or an smtphooks without the module
            print(f"smtphooks.reactor unavailable ({e}); using the default reactor",
                  file=sys.stderr, flush=True)
        else:
            install()
    from twisted.internet import reactor

    return reactor


def make_server(a, tracemalloc_path=None):
    """Logging at "warn", the --patch changes, and the sink's SMTPServer."""
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
    if tracemalloc_path:
        watch_memory(server, tracemalloc_path)
    return server


def adapter_line(a, reactor_name, extra=""):
    return (f"bench-adapter smtphooks {smtphooks.__version__} src={package_fingerprint()} "
            f"from={os.path.dirname(os.path.dirname(smtphooks.__file__))} "
            f"python {sys.version.split()[0]} reactor={reactor_name} "
            f"consume={a.consume} hooks={a.hooks} size={a.size} "
            f"{'patch=' + a.patch + ' ' if a.patch else ''}{extra}port={a.port}")


def run_reactor(reactor, profile):
    if profile:
        import cProfile

        prof = cProfile.Profile()
        prof.runcall(reactor.run)
        prof.dump_stats(profile)
    else:
        reactor.run()  # SIGTERM / SIGINT stop the reactor


def stats_text():
    return (f"messages={stats['messages']} bytes={stats['bytes']} "
            f"connections={stats['connections']} closed={stats['closed']} "
            f"rcpts={stats['rcpts']}")


def main():
    a = parse_args()
    if a.workers:
        sys.exit(run_workers(a))

    # Choose the reactor before anything imports twisted.internet.reactor.
    reactor = install_reactor(a)
    server = make_server(a, a.tracemalloc)

    def listening(port):
        print(adapter_line(a, type(reactor).__name__), flush=True)

    def failed(f):
        print(f"listen failed: {f.getErrorMessage()}", file=sys.stderr, flush=True)
        reactor.stop()

    reactor.callWhenRunning(
        lambda: server.listen(f"tcp:{a.port}:interface={HOST}:backlog=511")
        .addCallbacks(listening, failed))
    run_reactor(reactor, a.profile)
    print(f"BENCH {stats_text()}", flush=True)
    os._exit(0)  # do not wait for idle sessions


# -- --workers N: one listening socket, N forked processes --------------------


def worker(a, number, fd, report):
    """
    One child: its own reactor and server; adopt the inherited listening
    socket FD; write "ready" and, once stopped, its counts to REPORT (a pipe
    to the parent; each line is one write below PIPE_BUF, so atomic).
    """
    reactor = install_reactor(a)
    from twisted.internet.endpoints import AdoptedStreamServerEndpoint

    server = make_server(a, a.tracemalloc and f"{a.tracemalloc}.{number}")
    # The endpoint makes the socket non-blocking, adopts a copy and closes fd.
    endpoint = AdoptedStreamServerEndpoint(reactor, fd, socket.AF_INET)
    stopping = []

    def stop(signum, frame):
        # SIGTERM may come twice (from the parent, and from whoever signalled
        # the whole process group, as run.py does): stop once, or the second
        # reactor.stop() would log ReactorNotRunning.
        if not stopping:
            stopping.append(signum)
            reactor.callFromThread(reactor.stop)

    def listening(port):
        os.write(report, f"ready {number} pid={os.getpid()} "
                         f"reactor={type(reactor).__name__}\n".encode())

    def failed(f):
        print(f"worker {number}: adopting the socket failed: {f.getErrorMessage()}",
              file=sys.stderr, flush=True)
        reactor.stop()

    def started():
        # Twisted's handlers are in place by now (callWhenRunning runs after
        # them); replace the SIGTERM / SIGINT ones with the idempotent stop.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, stop)
        server.listen(endpoint).addCallbacks(listening, failed)

    reactor.callWhenRunning(started)
    run_reactor(reactor, a.profile and f"{a.profile}.{number}")
    os.write(report, f"stats {number} {stats_text()}\n".encode())
    return 0


def run_workers(a):
    """The parent of --workers: listen, fork, relay signals, sum the counts."""
    if "twisted.internet.reactor" in sys.modules:  # each child needs its own
        raise RuntimeError("the reactor was imported before the fork")
    if a.reuse_port:
        listeners = [socket.create_server((HOST, a.port), backlog=511, reuse_port=True)
                     for _ in range(a.workers)]
    else:
        listeners = [socket.create_server((HOST, a.port), backlog=511)] * a.workers
    readable, report = os.pipe()
    relayed = [signal.SIGTERM, signal.SIGINT] + ([signal.SIGUSR1] if a.tracemalloc else [])
    # No signal between the first fork and our handlers: until then they wait.
    signal.pthread_sigmask(signal.SIG_BLOCK, relayed)
    sys.stdout.flush()
    sys.stderr.flush()
    children = {}  # pid: worker number
    for number in range(1, a.workers + 1):
        pid = os.fork()
        if pid == 0:
            code = 70
            try:
                os.close(readable)
                for sig in relayed:
                    signal.signal(sig, signal.SIG_DFL if sig != signal.SIGINT
                                  else signal.default_int_handler)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, relayed)
                # detach(): the child's socket object must not close the
                # descriptor again once the endpoint has closed it.
                mine = listeners[number - 1]
                for other in set(listeners) - {mine}:
                    other.close()
                code = worker(a, number, mine.detach(), report)
            except BaseException:  # noqa: BLE001 - a child never returns into the parent
                traceback.print_exc()
                sys.stderr.flush()
            finally:
                os._exit(code)
        children[pid] = number
    os.close(report)  # EOF on `readable` once every child has exited
    for listener in set(listeners):
        listener.close()  # only the children accept

    stopping = []

    def kill_all(sig):
        for pid in children:  # unreaped until the end: no pid can be reused
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def on_signal(signum, frame):
        if signum == getattr(signal, "SIGUSR1", None):
            kill_all(signal.SIGUSR1)
        elif not stopping:
            stopping.append(signum)
            kill_all(signal.SIGTERM)
            signal.alarm(STOP_GRACE)

    def overdue(signum, frame):
        print(f"workers still running {STOP_GRACE} s after SIGTERM: killed",
              file=sys.stderr, flush=True)
        kill_all(signal.SIGKILL)

    for sig in relayed:
        signal.signal(sig, on_signal)
    signal.signal(signal.SIGALRM, overdue)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, relayed)

    ready, totals, pending = {}, {}, b""
    while True:
        chunk = os.read(readable, 65536)  # retried after a signal handler (PEP 475)
        if not chunk:
            break
        pending += chunk
        while b"\n" in pending:
            raw, pending = pending.split(b"\n", 1)
            kind, number, *rest = raw.decode().split()
            fields = dict(kv.split("=", 1) for kv in rest)
            if kind == "ready":
                ready[int(number)] = fields
                if len(ready) == a.workers:
                    reactors = sorted({f["reactor"] for f in ready.values()})
                    pids = ",".join(ready[n]["pid"] for n in sorted(ready))
                    print(adapter_line(a, "/".join(reactors),
                                       f"workers={a.workers} worker_pids={pids} "),
                          flush=True)
            elif kind == "stats":
                totals[int(number)] = {k: int(v) for k, v in fields.items()}
    signal.alarm(0)
    failed = 0
    for pid, number in children.items():
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if code or number not in totals:
            failed += 1
            print(f"worker {number} (pid {pid}) exited with {code}"
                  f"{'' if number in totals else ', no counts'}"
                  f"{'' if number in ready else ', never listening'}",
                  file=sys.stderr, flush=True)
    keys = list(stats)
    summed = {k: sum(t.get(k, 0) for t in totals.values()) for k in keys}
    spread = "/".join(str(totals.get(n, {}).get("messages", "?"))
                      for n in range(1, a.workers + 1))
    print("BENCH " + " ".join(f"{k}={summed[k]}" for k in keys)
          + f" workers={a.workers} per_worker={spread}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    main()
