"""
A server process on L{smtphooks.reactor.LeanEPollReactor}, for
C{tests/test_reactor.py}: C{python -m tests.reactor_child}.

It installs the reactor first, as a program following the performance guide
does, logs to standard output as text, and prints, one per line::

    REACTOR <module.Class>     the global reactor
    SMTP <port>                an SMTPServer listens here (127.0.0.1)
    BOOM <port>                a protocol that fails listens here
    READY                      both of the above are printed
    MESSAGE <hex>              the body of each message the SMTPServer got

A client of the C{BOOM} port that sends C{raise} makes the protocol's
C{dataReceived} (so the connection's C{doRead}) raise; one that sends
C{lost} makes its C{connectionLost} raise when the connection ends.
"""

from __future__ import annotations

import sys

from smtphooks.reactor import install

install()

from typing import Any  # noqa: E402

from twisted.internet import reactor  # noqa: E402
from twisted.internet.protocol import Protocol, ServerFactory  # noqa: E402
from twisted.logger import globalLogBeginner, textFileLogObserver  # noqa: E402
from twisted.python.failure import Failure  # noqa: E402

from smtphooks import SMTPServer  # noqa: E402

LOCAL = "tcp:0:interface=127.0.0.1"


class Boom(Protocol):
    """
    Fails on demand: in C{dataReceived} (C{raise}) or later in
    C{connectionLost} (C{lost}).
    """

    fail_when_lost = False

    def dataReceived(self, data: bytes) -> None:
        if data.startswith(b"raise"):
            raise RuntimeError("boom in dataReceived")
        if data.startswith(b"lost"):
            self.fail_when_lost = True
            self.transport.write(b"armed\n")  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:  # noqa: B008
        if self.fail_when_lost:
            raise RuntimeError("boom in connectionLost")


def say(*words: object) -> None:
    print(*words, flush=True)


async def on_data(stream: Any, session: Any) -> None:
    body = await stream.read()
    say("MESSAGE", body.hex())


def main() -> None:
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)], redirectStandardIO=False)
    say("REACTOR", f"{type(reactor).__module__}.{type(reactor).__qualname__}")
    server = SMTPServer(on_data=on_data, name="mx.example.test", disable_reverse_lookup=True)

    factory = ServerFactory()
    factory.protocol = Boom
    boom: Any = reactor.listenTCP(0, factory, interface="127.0.0.1")
    say("BOOM", boom.getHost().port)

    def listening(port: Any) -> None:
        say("SMTP", port.getHost().port)
        say("READY")  # both ports are printed, whole lines

    server.listen(LOCAL).addCallback(listening)
    reactor.run()


if __name__ == "__main__":
    main()
