#!/usr/bin/env python3
"""
Python memory per idle session (after EHLO), smtphooks against twisted.mail,
without sockets: where the idle scenario's KiB per connection go.

    python benchmarks/micro/session_memory.py [--conns 2000] [--top 25]

For each server, --conns protocols are built by the server's factory,
connected to a fake transport, greeted with EHLO, and kept; tracemalloc
measures what they allocated (the transport object and the socket, the same
for both servers, are not included; neither is the kernel's socket memory,
which is not in RSS). Then the growth is listed by allocation line, per
connection. The reactor is the real one, not running: timers are created and
kept exactly as in a server, and runUntilCurrent() moves new timers into the
reactor's heap as a running reactor would.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tracemalloc

from twisted.internet import reactor
from twisted.internet.address import IPv4Address

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


class FakeTransport:
    disconnecting = False

    def __init__(self):
        self.producer = None

    def write(self, data):
        pass

    def writeSequence(self, seq):
        pass

    def getPeer(self):
        return IPv4Address("TCP", "127.0.0.1", 40000)

    def getHost(self):
        return IPv4Address("TCP", "127.0.0.1", 2525)

    def registerProducer(self, producer, streaming):
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass

    def loseConnection(self):
        self.disconnecting = True

    def setTcpNoDelay(self, enabled):
        pass


def smtphooks_factory():
    from protocol_cost import make_server

    return make_server()


def twisted_mail_factory():
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sinks")
    sys.path.insert(0, here)
    import twisted_mail_sink

    return twisted_mail_sink.Factory()


def measure(name, make_factory, conns, top):
    factory = make_factory()
    keep = []

    def one():
        p = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        t = FakeTransport()
        p.makeConnection(t)
        p.dataReceived(b"EHLO idle.bench.test\r\n")
        keep.append((p, t))

    for _ in range(50):  # warm caches (first-use allocations are not per connection)
        one()
    reactor.runUntilCurrent()
    gc.collect()
    tracemalloc.start(1)
    before = tracemalloc.take_snapshot()
    for _ in range(conns):
        one()
    reactor.runUntilCurrent()
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    stats = after.compare_to(before, "lineno")
    fake = os.path.abspath(__file__)
    total = sum(s.size_diff for s in stats if s.traceback[0].filename != fake)
    print(f"\n## {name}: {total / conns:,.0f} B of Python objects per idle session "
          f"(fake transport excluded)\n")
    print("  B/conn  objects/conn  allocated at")
    for s in stats[:top]:
        frame = s.traceback[0]
        if frame.filename == fake:
            continue
        where = frame.filename
        for marker in ("site-packages/", "lib/python3.11/"):
            if marker in where:
                where = where.split(marker, 1)[1]
        print(f"  {s.size_diff / conns:6.0f}  {s.count_diff / conns:12.2f}  {where}:{frame.lineno}")
    for p, t in keep:
        p.connectionLost(__import__("twisted.python.failure", fromlist=["Failure"]).Failure(
            __import__("twisted.internet.error", fromlist=["ConnectionDone"]).ConnectionDone()))
    reactor.runUntilCurrent()
    return total / conns


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--conns", type=int, default=2000)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--patch", default="", help="candidate changes from patches.py")
    a = p.parse_args()
    if a.patch:
        import patches

        for name in a.patch.split(","):
            for apply in patches.VARIANTS[name]:
                apply([])
    import smtphooks

    print(f"smtphooks from {os.path.dirname(smtphooks.__file__)}; python "
          f"{sys.version.split()[0]}; patches: {a.patch or 'none'}")
    a_ = measure("smtphooks", smtphooks_factory, a.conns, a.top)
    b_ = measure("twisted.mail ESMTP", twisted_mail_factory, a.conns, a.top)
    print(f"\nsmtphooks / twisted.mail: {a_ / b_:.2f}")


if __name__ == "__main__":
    main()
