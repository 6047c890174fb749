"""
twisted.mail sink for the benchmark (started by ../run.py).

Usage: twisted_mail_sink.py PORT

twisted.mail.smtp.ESMTP with an IMessageDelivery that accepts every sender
and recipient; each message counts the bytes of its lines (plus the CRLF the
line receiver strips). twisted.mail has no size limit and no reverse lookup;
the domain is fixed to "localhost"; the per-message log line is off and only
warnings reach stderr.

Prints "bench-adapter twisted-mail ..." once listening and
"BENCH messages=N bytes=B" when SIGTERM/SIGINT stops the reactor.
"""

import os
import sys

import twisted
from twisted.internet import defer, reactor
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.mail import smtp
from zope.interface import implementer

counts = {"messages": 0, "bytes": 0}


@implementer(smtp.IMessage)
class Message:
    __slots__ = ("n",)

    def __init__(self):
        self.n = 0

    def lineReceived(self, line):
        self.n += len(line) + 2

    def eomReceived(self):
        counts["messages"] += 1
        counts["bytes"] += self.n
        return defer.succeed(b"OK")

    def connectionLost(self):
        pass


@implementer(smtp.IMessageDelivery)
class Delivery:
    def receivedHeader(self, helo, origin, recipients):
        return None

    def validateFrom(self, helo, origin):
        return origin

    def validateTo(self, user):
        return Message


class Quiet(smtp.ESMTP):
    noisy = False


class Factory(smtp.SMTPFactory):
    protocol = Quiet
    domain = b"localhost"
    noisy = False

    def buildProtocol(self, addr):
        p = smtp.SMTPFactory.buildProtocol(self, addr)
        p.delivery = DELIVERY
        return p


DELIVERY = Delivery()


def main():
    port = int(sys.argv[1])
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stderr),
                              [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)])],
        redirectStandardIO=False)
    reactor.listenTCP(port, Factory(), backlog=511, interface="127.0.0.1")
    print(f"bench-adapter twisted-mail twisted {twisted.__version__} python "
          f"{sys.version.split()[0]} reactor={type(reactor).__name__} port={port}", flush=True)
    reactor.run()
    print(f"BENCH messages={counts['messages']} bytes={counts['bytes']}", flush=True)
    os._exit(0)


if __name__ == "__main__":
    main()
