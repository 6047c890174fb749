#!/usr/bin/env python3
"""
Protocol-only cost of smtphooks per message, and what proposed changes would
save: the SMTP engine driven in-process, without sockets or a running reactor.

    python benchmarks/micro/protocol_cost.py                # every scenario, every variant
    python benchmarks/micro/protocol_cost.py --scenario persistent --variant base,hooks
    python benchmarks/micro/protocol_cost.py --list

An SMTPServer with the benchmark sink's hooks (sinks/smtphooks_sink.py: every
envelope hook set, on_data reading the stream with `async for`, a 50 MiB size
limit, enhanced status codes on) builds protocols that are connected to a
fake transport (it counts the bytes written; getPeer/getHost build a new
address each call like tcp.Server). The client's bytes are fed with
dataReceived exactly as the benchmark's clients send them:

  small       connection, HELO, MAIL, RCPT, DATA, 1 KiB body, QUIT, lost: one
              dataReceived per command (smtp-source)
  persistent  the same without the connection: MAIL, RCPT, DATA, body
  pipelined   EHLO once, then one dataReceived per message: body + "." + MAIL +
              RCPT + DATA (clients/pipelined.py)
  large       one 10 MiB message in 64 KiB reads (Twisted's read size); MB/s

The clock is the real reactor (not running: Deferreds fire synchronously);
reactor.runUntilCurrent() runs every 100 connections so that cancelled
timers are reaped as they are in a running reactor. The figure is the median
of --repeat timings of --n messages, in microseconds per message (MB/s for
large). What it leaves out -- the reactor's per-event dispatch, the
transport's write path and the syscalls -- is the same for every variant.

Variants are the candidate changes of micro/patches.py (monkeypatches of the
engine's private functions; "base" is the engine as it is); the replies
written and the bodies on_data receives are checked to be byte-identical to
the first variant's. A variant
whose target is gone from the engine is reported as not applicable. ("eager"
changes only the transport path, which the fake transport does not model.)
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import time

import smtphooks
from smtphooks import SMTPError, SMTPServer
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

SENDER, RCPT = b"sender@bench.test", b"rcpt@bench.test"


def body_1k():
    """What smtp-source -l 1024 sends after DATA (headers, 1 KiB of lines, '.')."""
    head = (b"From: <sender@bench.test>\r\nTo: <rcpt@bench.test>\r\n"
            b"Date: Thu, 26 Nov 2026 05:53:56 +0000 (UTC)\r\n"
            b"Message-Id: <303d.0003.0000@bench.test>\r\n\r\n")
    lines = b"".join(b"%dXXX" % (i % 10) + b"X" * 74 + b"\r\n" for i in range(13))
    return head + lines[:1024] + b"\r\n.\r\n"


# -- the sink's hooks (as sinks/smtphooks_sink.py) -----------------------------

stats = {"messages": 0, "bytes": 0}
RECORD = [None]  # a hash that on_data feeds the body into, while recording


def on_connect(session):
    pass


def on_mail_from(address, session):
    if address.address.endswith("@reject.invalid"):
        raise SMTPError("Sender rejected", code=550)


def on_rcpt_to(address, session):
    if address.address.endswith("@reject.invalid"):
        raise SMTPError("No such user", code=550)


def on_close(session):
    pass


async def on_data(stream, session):
    n = 0
    record = RECORD[0]
    async for chunk in stream:
        n += len(chunk)
        if record is not None:
            record.update(chunk)
    stats["messages"] += 1
    stats["bytes"] += n


def make_server():
    return SMTPServer(on_connect=on_connect, on_mail_from=on_mail_from, on_rcpt_to=on_rcpt_to,
                      on_close=on_close, on_data=on_data, name="localhost",
                      size=50 * 1024 * 1024, disable_reverse_lookup=True,
                      auth_optional=True, reactor=reactor)


class FakeTransport:
    """Just enough of tcp.Server for SMTPProtocol; counts and hashes output."""

    disconnecting = False

    def __init__(self, record):
        self.written = 0
        self.record = record
        self.hash = hashlib.sha256() if record else None
        RECORD[0] = self.hash  # the bodies on_data receives go into the same hash
        self.producer = None

    def write(self, data):
        self.written += len(data)
        if self.record:
            self.hash.update(data)

    def writeSequence(self, seq):
        for data in seq:
            self.write(data)

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

    def loseConnection(self):
        self.disconnecting = True

    def abortConnection(self):
        self.disconnecting = True


_DONE = Failure(ConnectionDone())


# -- scenarios -------------------------------------------------------------------

def run_small(server, n, record):
    t = FakeTransport(record)
    body = body_1k()
    helo = b"HELO bench.test\r\n"
    mail = b"MAIL FROM:<" + SENDER + b">\r\n"
    rcpt = b"RCPT TO:<" + RCPT + b">\r\n"
    t0 = time.perf_counter()
    for i in range(n):
        p = server.buildProtocol(None)
        p.makeConnection(t)
        p.dataReceived(helo)
        p.dataReceived(mail)
        p.dataReceived(rcpt)
        p.dataReceived(b"DATA\r\n")
        p.dataReceived(body)
        p.dataReceived(b"QUIT\r\n")
        p.connectionLost(_DONE)
        if i % 100 == 99:
            reactor.runUntilCurrent()
    return time.perf_counter() - t0, t


def _connected(server, t, hello):
    p = server.buildProtocol(None)
    p.makeConnection(t)
    p.dataReceived(hello)
    return p


def run_persistent(server, n, record):
    t = FakeTransport(record)
    p = _connected(server, t, b"HELO bench.test\r\n")
    body = body_1k()
    mail = b"MAIL FROM:<" + SENDER + b">\r\n"
    rcpt = b"RCPT TO:<" + RCPT + b">\r\n"
    t0 = time.perf_counter()
    for _ in range(n):
        p.dataReceived(mail)
        p.dataReceived(rcpt)
        p.dataReceived(b"DATA\r\n")
        p.dataReceived(body)
    elapsed = time.perf_counter() - t0
    p.connectionLost(_DONE)
    return elapsed, t


def run_pipelined(server, n, record):
    t = FakeTransport(record)
    p = _connected(server, t, b"EHLO bench.test\r\n")
    envelope = b"MAIL FROM:<" + SENDER + b">\r\nRCPT TO:<" + RCPT + b">\r\nDATA\r\n"
    chunk = body_1k() + envelope
    t0 = time.perf_counter()
    p.dataReceived(envelope)
    for _ in range(n - 1):
        p.dataReceived(chunk)
    p.dataReceived(body_1k())
    elapsed = time.perf_counter() - t0
    p.connectionLost(_DONE)
    return elapsed, t


def run_large(server, n, record, size=10 * 1048576, read=65536):
    t = FakeTransport(record)
    p = _connected(server, t, b"HELO bench.test\r\n")
    line = b"X" * 78 + b"\r\n"
    message = line * (size // len(line)) + b".\r\n"
    reads = [message[i:i + read] for i in range(0, len(message), read)]
    mail = b"MAIL FROM:<" + SENDER + b">\r\n"
    rcpt = b"RCPT TO:<" + RCPT + b">\r\n"
    t0 = time.perf_counter()
    for _ in range(n):
        p.dataReceived(mail)
        p.dataReceived(rcpt)
        p.dataReceived(b"DATA\r\n")
        for r in reads:
            p.dataReceived(r)
    elapsed = time.perf_counter() - t0
    p.connectionLost(_DONE)
    return elapsed, t


SCENARIOS = {
    "small": (run_small, 4000, "µs/msg"),
    "persistent": (run_persistent, 10000, "µs/msg"),
    "pipelined": (run_pipelined, 10000, "µs/msg"),
    "large": (run_large, 4, "MB/s"),
}


from patches import VARIANTS, NotApplicable


def timed(scenario, variant, n, record=False):
    """One timing of N messages with VARIANT applied; (CPU seconds, transcript hash)."""
    runner = SCENARIOS[scenario][0]
    undo = []
    try:
        for apply in VARIANTS[variant]:
            apply(undo)
        server = make_server()
        c0 = time.process_time()
        _, t = runner(server, n, record)
        return time.process_time() - c0, (t.hash.hexdigest() if record else None)
    finally:
        for target, name, old in reversed(undo):
            setattr(target, name, old)


def measure(scenario, variants, n, repeat):
    """Interleaved (A B C, A B C, ...) CPU timings; per variant: median figure,
    median of same-round ratios to the first variant, transcript hash."""
    unit = SCENARIOS[scenario][2]
    digests, times, skipped = {}, {v: [] for v in variants}, {}
    for v in variants:
        try:
            _, digests[v] = timed(scenario, v, min(n, 200), record=True)  # warm-up
        except NotApplicable as e:
            skipped[v] = str(e)
    live = [v for v in variants if v not in skipped]
    for _ in range(repeat):
        for v in live:
            times[v].append(timed(scenario, v, n)[0])

    def figure(seconds):
        return n * 10 * 1048576 / 1e6 / seconds if unit == "MB/s" else seconds / n * 1e6

    out = {}
    for v in live:
        ref = times[live[0]]
        gains = [ref[i] / times[v][i] for i in range(repeat)]  # > 1: faster than the first
        out[v] = (figure(statistics.median(times[v])), statistics.median(gains), digests[v])
    return out, skipped


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", default="small,persistent,pipelined,large")
    p.add_argument("--variant", default="base,hooks,stream,parse,idle,all")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--scale", type=float, default=1.0, help="multiply the message counts")
    p.add_argument("--list", action="store_true")
    a = p.parse_args()
    if a.list:
        print(__doc__)
        return
    print(f"smtphooks {smtphooks.__version__} from {os.path.dirname(smtphooks.__file__)}; "
          f"python {sys.version.split()[0]}; median of {a.repeat}")
    for scenario in a.scenario.split(","):
        _, n, unit = SCENARIOS[scenario]
        n = max(1, int(n * a.scale))
        print(f"\n{scenario} ({n} messages per timing, CPU time, {unit}; "
              f"{'higher' if unit == 'MB/s' else 'lower'} is better; speed-up = median of "
              f"same-round ratios to {a.variant.split(',')[0]})")
        results, skipped = measure(scenario, a.variant.split(","), n, a.repeat)
        first = next(iter(results.values()), None)
        for v, (figure, gain, digest) in results.items():
            same = "same replies+bodies" if digest == first[2] else "OUTPUT DIFFERS"
            print(f"  {v:8s} {figure:9.2f} {unit}  speed-up {gain:5.2f}x  {same}")
        for v, why in skipped.items():
            print(f"  {v:8s} not applicable: {why}")


if __name__ == "__main__":
    main()
