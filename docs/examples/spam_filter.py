"""
A spam filter in on_data: every message is sent to a classification service over
HTTP before it is accepted.  The client is told the verdict in the same SMTP
dialogue:

    - C{550 5.7.1} when the service says the message is spam (the sending server
      bounces it: nothing is silently dropped);
    - C{451 4.3.0} when the service is down, slow or answers nonsense (the sending
      server keeps the message and tries again later: nothing is lost);
    - otherwise the message is delivered to a Maildir and the client gets C{250}.

The service speaks a small JSON protocol: C{POST} the raw message to its URL, with
the envelope in C{X-Mail-From}, C{X-Rcpt-To}, C{X-Client-IP} and C{X-Helo} headers,
and it answers C{200} with C{{"spam": true, "score": 9.5}}.  Adapting the example to
a real filter (rspamd's C{/checkv2}, a SpamAssassin bridge) means changing
L{SpamChecker.check} only.

The request is an ordinary Twisted L{Deferred} with a deadline
(L{Deferred.addTimeout}): while it is pending the server goes on serving every other
client, and this client waits for its reply.  Keep the deadline well below the
server's C{hook_timeout} (60 seconds by default), so that a slow service gets this
hook's own C{451} rather than the server's generic one.

Try it with the toy classifier that this file also contains (it calls spam every
message that mentions "lottery")::

    python docs/examples/spam_filter.py --toy-service tcp:8080:interface=127.0.0.1 &
    python docs/examples/spam_filter.py --service http://127.0.0.1:8080/check \\
        --listen tcp:2525:interface=127.0.0.1 --maildir ./Maildir
    swaks --server 127.0.0.1:2525 --to you@example.com --body "You won the lottery"

The test suite (C{tests/test_docs_more_examples.py}) imports this file and runs it
over loopback, so what you read here works.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from dataclasses import dataclass
from io import BytesIO
from typing import Any, Awaitable, Callable

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse
from twisted.web.resource import Resource
from twisted.web.server import Request

from smtphooks import DataStream, MaildirDelivery, Session, SMTPError, SMTPServer

log = Logger(namespace="spamfilter")

#: What C{on_data} hands an accepted message to: called like an C{on_data} hook
#: (a stream and the session), it returns the text of the C{250} reply or L{None}.
Deliver = Callable[[DataStream, Session], "Awaitable[str | None] | str | None"]


@dataclass(frozen=True)
class Verdict:
    """
    What the service said about one message.

    @ivar spam: reject the message.
    @ivar score: the service's score, for the logs and the reply text.
    """

    spam: bool
    score: float


class SpamCheckUnavailable(Exception):
    """
    The service could not give a verdict: refused connection, timeout, an HTTP error,
    or an answer that is not the expected JSON.
    """


class SpamChecker:
    """
    A client of the classification service.

    @ivar url: where messages are posted.
    @ivar timeout: seconds one check may take, connection included.
    """

    def __init__(
        self, url: str, *, timeout: float = 10.0, reactor: Any = None, clock: Any = None
    ) -> None:
        """
        @param url: the service's URL (C{http://host:port/path}).
        @param timeout: seconds after which a check gives up.
        @param reactor: the reactor to connect with; by default the global one.
        @param clock: the L{IReactorTime} that measures C{timeout}; by default
            C{reactor} (tests pass a L{twisted.internet.task.Clock}).
        """
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.url = url
        self.timeout = timeout
        self._clock = clock if clock is not None else reactor
        # A pool of kept-alive connections: a busy server does not open one TCP
        # connection per message.  close() empties it.
        self._pool = HTTPConnectionPool(reactor, persistent=True)  # type: ignore[no-untyped-call]
        self._agent = Agent(reactor, pool=self._pool, connectTimeout=timeout)  # type: ignore[no-untyped-call]

    def check(self, body: bytes, session: Session) -> Deferred[Verdict]:
        """
        Ask the service about one message.

        @param body: the message as received.
        @param session: its session, for the envelope headers.
        @return: a L{Deferred} that fires with the L{Verdict}, or fails with
            L{SpamCheckUnavailable} (after C{timeout} seconds at most).
        """
        envelope = session.envelope
        sender = envelope.mail_from.address if envelope.mail_from is not None else ""
        headers = Headers(
            {
                b"Content-Type": [b"message/rfc822"],
                b"X-Mail-From": [sender.encode("utf-8")],
                b"X-Rcpt-To": [",".join(r.address for r in envelope.rcpt_to).encode("utf-8")],
                b"X-Client-IP": [session.remote_address.encode("ascii")],
                b"X-Helo": [session.host_name_appears_as.encode("utf-8")],
            }
        )
        body_producer = FileBodyProducer(BytesIO(body))  # type: ignore[no-untyped-call]
        d: Deferred[Verdict] = self._agent.request(
            b"POST", self.url.encode("ascii"), headers, body_producer
        ).addCallback(self._read)
        # On timeout the request is cancelled (its connection is closed) and the
        # Deferred fails with twisted.internet.defer.TimeoutError.
        d.addTimeout(self.timeout, self._clock)
        d.addErrback(self._unavailable)
        return d

    def _read(self, response: IResponse) -> Deferred[Verdict]:
        def parse(data: bytes) -> Verdict:
            if response.code != 200:
                raise SpamCheckUnavailable(f"HTTP {response.code}")
            try:
                answer = json.loads(data)
                return Verdict(spam=bool(answer["spam"]), score=float(answer.get("score", 0)))
            except (ValueError, TypeError, KeyError, AttributeError):
                raise SpamCheckUnavailable(f"unexpected answer {data[:100]!r}") from None

        # Read the body even for an error status, so the connection can be reused.
        return readBody(response).addCallback(parse)

    @staticmethod
    def _unavailable(failure: Failure) -> Failure:
        if failure.check(SpamCheckUnavailable, CancelledError):  # type: ignore[no-untyped-call]
            # CancelledError: the hook itself was cancelled (the server's
            # hook_timeout); let it through as it is.
            return failure
        raise SpamCheckUnavailable(failure.getErrorMessage())

    def close(self) -> Deferred[None]:
        """
        Close the kept-alive connections (at shutdown, and at the end of a test).
        """
        return self._pool.closeCachedConnections()  # type: ignore[no-untyped-call,no-any-return]


class SpamFilter:
    """
    The hooks: pass an instance as C{hooks=} to L{SMTPServer} (L{make_server} does).

    @ivar checker: the L{SpamChecker}.
    @ivar deliver: where accepted messages go.
    """

    def __init__(self, checker: SpamChecker, deliver: Deliver) -> None:
        self.checker = checker
        self.deliver = deliver

    async def on_data(self, stream: DataStream, session: Session) -> str | None:
        """
        Read the message, ask the service, then reject it or deliver it.

        @raise SMTPError: C{550 5.7.1} for spam, C{451 4.3.0} when there is no
            verdict.
        """
        # The whole message is needed for the verdict; the server's `size`
        # option bounds what this can cost.
        body = await stream.read()
        if stream.size_exceeded:
            return None  # the server answers 552 5.3.4 whatever this returns
        try:
            verdict = await self.checker.check(body, session)
        except SpamCheckUnavailable as error:
            log.warn(
                "spam check failed (session {session_id}): {error}",
                session_id=session.id,
                error=str(error),
            )
            raise SMTPError(
                "Spam filter unavailable, try again later", code=451, enhanced="4.3.0"
            ) from None
        if verdict.spam:
            log.info(
                "rejected spam (score {score}) from {ip}",
                score=verdict.score,
                ip=session.remote_address,
            )
            raise SMTPError(
                f"Message rejected as spam (score {verdict.score:.1f})", code=550, enhanced="5.7.1"
            )
        # The stream is used up: hand the delivery a new one holding the same bytes.
        result = self.deliver(DataStream.from_bytes(body), session)
        if inspect.isawaitable(result):
            result = await result
        return result


def make_server(
    service_url: str,
    deliver: Deliver,
    *,
    check_timeout: float = 10.0,
    checker_reactor: Any = None,
    checker_clock: Any = None,
    **options: Any,
) -> tuple[SMTPServer, SpamFilter]:
    """
    A receiving server whose messages pass the spam filter.

    @param service_url: the classification service.
    @param deliver: where accepted messages go, such as a L{MaildirDelivery}.
    @param check_timeout: seconds one check may take.
    @param checker_reactor: the reactor the checker connects with (default: global).
    @param checker_clock: the clock of C{check_timeout} (default: that reactor).
    @param options: more L{SMTPServer} options; C{size} defaults to 25 MiB, since the
        whole message is held in memory for the check.
    @return: the server and its hooks.
    """
    options.setdefault("size", 25 * 1024 * 1024)
    checker = SpamChecker(
        service_url, timeout=check_timeout, reactor=checker_reactor, clock=checker_clock
    )
    hooks = SpamFilter(checker, deliver)
    return SMTPServer(hooks, **options), hooks


# -- a toy service, to try the filter out ------------------------------------------------


class ToyClassifier(Resource):
    """
    A stand-in for a real classifier: a message that mentions any of L{WORDS} is
    spam.  C{POST} a message to it; it answers C{{"spam": ..., "score": ...}}.
    """

    isLeaf = True
    WORDS = (b"lottery", b"viagra", b"wire transfer")

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        #: The envelopes it was asked about: (sender, recipients, client IP, HELO).
        self.seen: list[tuple[str, str, str, str]] = []

    def render_POST(self, request: Request) -> bytes:
        assert request.content is not None
        body = request.content.read().lower()

        def header(name: bytes) -> str:
            value = request.getHeader(name)
            return value.decode("utf-8") if value is not None else ""

        names = (b"x-mail-from", b"x-rcpt-to", b"x-client-ip", b"x-helo")
        sender, recipients, ip, helo = (header(name) for name in names)
        self.seen.append((sender, recipients, ip, helo))
        score = 5.0 * sum(body.count(word) for word in self.WORDS)
        request.setHeader(b"Content-Type", b"application/json")  # type: ignore[no-untyped-call]
        return json.dumps({"spam": score >= 5.0, "score": score}).encode()


def main(argv: list[str] | None = None) -> None:
    """
    The command line: run the filtering server, or the toy service.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="tcp:2525:interface=127.0.0.1")
    parser.add_argument("--service", help="URL of the classification service")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per check")
    parser.add_argument("--maildir", default="Maildir", help="where accepted mail goes")
    parser.add_argument("--toy-service", metavar="ENDPOINT", help="run the toy service instead")
    args = parser.parse_args(argv)

    from twisted.internet import endpoints
    from twisted.internet import reactor as _reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver
    from twisted.web.server import Site

    reactor: Any = _reactor
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    if args.toy_service:
        site = Site(ToyClassifier())  # type: ignore[no-untyped-call]
        endpoints.serverFromString(reactor, args.toy_service).listen(site)  # type: ignore[no-untyped-call]
    else:
        if not args.service:
            parser.error("--service or --toy-service is required")
        server, hooks = make_server(
            args.service, MaildirDelivery(args.maildir), check_timeout=args.timeout
        )
        server.listen(args.listen)
        reactor.addSystemEventTrigger("before", "shutdown", server.close)
        reactor.addSystemEventTrigger("before", "shutdown", hooks.checker.close)
    reactor.run()


if __name__ == "__main__":
    main()
