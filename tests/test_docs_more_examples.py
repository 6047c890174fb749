"""
The spam filter and the webhook forwarder of C{docs/examples/}, run over loopback: a
real SMTP client talks to the example's server, which talks HTTP to a small web
service that the test starts on another loopback port.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib
import json
from types import ModuleType
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from smtphooks import DataStream, Session

from tests.support import REQUIRE_TOOLS_ENV, tools_required
from tests.test_docs_examples import load_example
from tests.wire import SERVER_NAME, open_session, start_server

MESSAGE = (
    b"From: Carol <carol@example.org>\r\n"
    b"To: Alice <alice@example.com>\r\n"
    b"Subject: lunch\r\n"
    b"\r\n"
    b"Lunch on Friday?\r\n"
    b"..a line that starts with a dot\r\n"
)
#: MESSAGE as the hooks receive it: dot-unstuffed.
RECEIVED = MESSAGE.replace(b"\r\n..", b"\r\n.")

SPAM = (
    b"From: Lucky <lucky@spam.example>\r\n"
    b"Subject: You won!\r\n"
    b"\r\n"
    b"Claim your lottery prize today.\r\n"
)


def require_module(name: str) -> ModuleType:
    """
    Import an optional dependency of an example.

    @raise SkipTest: when it is not installed.
    @raise AssertionError: instead of L{SkipTest} when C{SMTPHOOKS_REQUIRE_TOOLS=1}.
    """
    try:
        return importlib.import_module(name)
    except ImportError:
        if tools_required():
            raise AssertionError(
                f"{name} is required ({REQUIRE_TOOLS_ENV}=1) but not installed: pip install {name}"
            ) from None
        raise SkipTest(f"{name} not installed (an optional dependency of the example)") from None


# -- a web service on loopback -------------------------------------------------------------


class TrackingSite(Site):
    """
    A L{Site} that knows its open connections, so that a test can wait until the
    client's side has closed them all before the test ends.
    """

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource)
        self.channels: set[Any] = set()
        self._waiting: list[Deferred[None]] = []

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        self.channels.add(channel)
        lost = channel.connectionLost

        def connectionLost(reason: Any) -> None:
            lost(reason)
            self.channels.discard(channel)
            if not self.channels:
                waiting, self._waiting = self._waiting, []
                for d in waiting:
                    d.callback(None)

        channel.connectionLost = connectionLost
        return channel

    def all_closed(self) -> Deferred[None]:
        """
        @return: a L{Deferred} that fires once no connection is open.
        """
        d: Deferred[None] = Deferred()
        if self.channels:
            self._waiting.append(d)
        else:
            d.callback(None)
        return d


@inlineCallbacks
def start_web(test: TestCase, resource: Resource) -> Any:  # Deferred[str]
    """
    Serve C{resource} on a loopback port until the test ends.

    @return: a L{Deferred} that fires with the URL of the resource.
    """
    site = TrackingSite(resource)
    port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
    # Cleanups run last-in first-out: the clients added later close their connections
    # first, then the site waits for its side of them, then stops listening.
    test.addCleanup(port.stopListening)
    test.addCleanup(site.all_closed)
    return f"http://127.0.0.1:{port.getHost().port}/inbound"


@inlineCallbacks
def closed_port_url(test: TestCase) -> Any:  # Deferred[str]
    """
    @return: a L{Deferred} that fires with a URL on a loopback port where nothing
        listens (it was just closed), for a service that is down.
    """
    port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(Resource()))
    number = port.getHost().port
    yield port.stopListening()
    return f"http://127.0.0.1:{number}/inbound"


class Hanging(Resource):
    """
    A service that takes every request and never answers.

    @ivar arrived: fires when a request has been read.
    @ivar gone: fires when the client has given up on it (closed the connection).
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.arrived: Deferred[None] = Deferred()
        self.gone: Deferred[None] = Deferred()

    def render_POST(self, request: Request) -> Any:
        request.notifyFinish().addBoth(lambda _: self.gone.callback(None))
        self.arrived.callback(None)
        return NOT_DONE_YET


class Fixed(Resource):
    """
    A service that answers every request with the same status and body.
    """

    isLeaf = True

    def __init__(self, code: int, body: bytes) -> None:
        super().__init__()
        self.code = code
        self.body = body
        self.requests = 0

    def render_POST(self, request: Request) -> bytes:
        self.requests += 1
        request.setResponseCode(self.code)
        return self.body


class Recorder(Resource):
    """
    A web application that receives forwarded messages: it keeps each JSON document
    and its signature header, and answers with C{code}.
    """

    isLeaf = True

    def __init__(self, code: int = 200) -> None:
        super().__init__()
        self.code = code
        self.received: list[tuple[dict[str, Any], bytes, str | None]] = []

    def render_POST(self, request: Request) -> bytes:
        assert request.content is not None
        raw = request.content.read()
        signature = request.getHeader(b"x-smtphooks-signature")
        self.received.append(
            (json.loads(raw), raw, signature.decode() if signature is not None else None)
        )
        request.setResponseCode(self.code)
        return b'{"ok": true}'


@inlineCallbacks
def send(test: TestCase, client: Any, sender: str, recipients: list[str], body: bytes) -> Any:
    """
    One transaction on an open session; every command before the end of data must
    succeed.

    @return: a L{Deferred} that fires with the reply to the message.
    """
    reply = yield client.command(f"MAIL FROM:<{sender}>")
    test.assertEqual(reply.code, 250, str(reply))
    for rcpt in recipients:
        reply = yield client.command(f"RCPT TO:<{rcpt}>")
        test.assertEqual(reply.code, 250, str(reply))
    reply = yield client.command("DATA")
    test.assertEqual(reply.code, 354, str(reply))
    reply = yield client.command(body + b".")
    return reply


# -- the spam filter -------------------------------------------------------------------------


class SpamFilterTests(TestCase):
    """
    docs/examples/spam_filter.py: the verdict of an HTTP service, asked with a Deferred
    and a timeout, decides the reply to DATA.
    """

    def setUp(self) -> None:
        self.example = load_example("spam_filter")
        self.delivered: list[tuple[bytes, list[str]]] = []

    @inlineCallbacks
    def deliver(self, stream: DataStream, session: Session) -> Any:
        body = yield stream.read()
        self.delivered.append((body, [r.address for r in session.envelope.rcpt_to]))
        return "OK: queued as 1"

    @inlineCallbacks
    def start(self, url: str, **kwargs: Any) -> Any:  # Deferred[port]
        """
        Start the example's server, checking with the service at C{url}.
        """
        server, hooks = self.example.make_server(
            url, self.deliver, disable_reverse_lookup=True, name=SERVER_NAME, **kwargs
        )
        self.addCleanup(hooks.checker.close)
        port = yield start_server(self, server)
        return port

    @inlineCallbacks
    def test_hamIsDelivered(self) -> Any:
        """
        A message the service calls clean is handed to the delivery, byte-exact, and
        the client gets the delivery's 250; the service saw the envelope.
        """
        toy = self.example.ToyClassifier()
        port = yield self.start((yield start_web(self, toy)))
        client = yield open_session(self, port)
        reply = yield send(self, client, "carol@example.org", ["alice@example.com"], MESSAGE)
        self.assertEqual((reply.code, reply.text), (250, "2.0.0 OK: queued as 1"))
        self.assertEqual(self.delivered, [(RECEIVED, ["alice@example.com"])])
        envelope = ("carol@example.org", "alice@example.com", "127.0.0.1", "client.example.test")
        self.assertEqual(toy.seen, [envelope])

    @inlineCallbacks
    def test_spamIsRejected(self) -> Any:
        """
        A message the service calls spam gets 550 5.7.1 with the score and is not
        delivered; the session goes on, and the next (clean) message is delivered.
        """
        port = yield self.start((yield start_web(self, self.example.ToyClassifier())))
        client = yield open_session(self, port)
        reply = yield send(self, client, "lucky@spam.example", ["alice@example.com"], SPAM)
        self.assertEqual(
            (reply.code, reply.text), (550, "5.7.1 Message rejected as spam (score 5.0)")
        )
        self.assertEqual(self.delivered, [])
        reply = yield send(self, client, "carol@example.org", ["alice@example.com"], MESSAGE)
        self.assertEqual(reply.code, 250, str(reply))
        self.assertEqual(len(self.delivered), 1)

    @inlineCallbacks
    def test_serviceDown(self) -> Any:
        """
        When the service refuses connections the client gets 451 4.3.0 (try again
        later) and nothing is delivered.
        """
        port = yield self.start((yield closed_port_url(self)))
        client = yield open_session(self, port)
        reply = yield send(self, client, "carol@example.org", ["alice@example.com"], MESSAGE)
        self.assertEqual(
            (reply.code, reply.text), (451, "4.3.0 Spam filter unavailable, try again later")
        )
        self.assertEqual(self.delivered, [])

    @inlineCallbacks
    def test_serviceErrors(self) -> Any:
        """
        An HTTP error, or an answer that is not the expected JSON, is a temporary
        failure too.
        """
        broken = Fixed(500, b"oops")
        port = yield self.start((yield start_web(self, broken)))
        client = yield open_session(self, port)
        reply = yield send(self, client, "carol@example.org", ["alice@example.com"], MESSAGE)
        self.assertEqual(reply.code, 451, str(reply))
        broken.code, broken.body = 200, b"<html>not json</html>"
        reply = yield send(self, client, "carol@example.org", ["alice@example.com"], MESSAGE)
        self.assertEqual(reply.code, 451, str(reply))
        self.assertEqual(broken.requests, 2)
        self.assertEqual(self.delivered, [])

    @inlineCallbacks
    def test_serviceTimeout(self) -> Any:
        """
        A service that does not answer within the check's timeout gets its request
        cancelled (the connection is closed) and the client gets 451 4.3.0.  The
        timeout runs on a clock the test advances, so nothing waits for real time.
        """
        hanging = Hanging()
        clock = Clock()
        port = yield self.start(
            (yield start_web(self, hanging)), check_timeout=10, checker_clock=clock
        )
        client = yield open_session(self, port)
        replied = send(self, client, "carol@example.org", ["alice@example.com"], MESSAGE)
        yield hanging.arrived
        clock.advance(9)
        self.assertNoResult(replied)
        clock.advance(1)
        reply = yield replied
        self.assertEqual(
            (reply.code, reply.text), (451, "4.3.0 Spam filter unavailable, try again later")
        )
        yield hanging.gone
        self.assertEqual(self.delivered, [])


# -- the webhook forwarder ---------------------------------------------------------------------


class WebhookForwarderTests(TestCase):
    """
    docs/examples/webhook_forwarder.py: each message is POSTed as JSON with treq, and
    the application's answer decides the reply to DATA.
    """

    def setUp(self) -> None:
        require_module("treq")
        self.example = load_example("webhook_forwarder")

    @inlineCallbacks
    def start(self, url: str, **kwargs: Any) -> Any:  # Deferred[port]
        server, forwarder = self.example.make_server(
            url, disable_reverse_lookup=True, name=SERVER_NAME, **kwargs
        )
        self.addCleanup(forwarder.close)
        port = yield start_server(self, server)
        return port

    @inlineCallbacks
    def test_forwarded(self) -> Any:
        """
        A message is posted as JSON that carries the envelope, the client and the
        message itself (base64, byte-exact), signed with HMAC-SHA256 of the body; a 2xx
        answer accepts it.
        """
        app = Recorder(200)
        port = yield self.start((yield start_web(self, app)), secret=b"s3cret")
        client = yield open_session(self, port)
        reply = yield send(
            self, client, "carol@example.org", ["alice@example.com", "bob@example.com"], MESSAGE
        )
        self.assertEqual((reply.code, reply.text), (250, "2.0.0 OK: forwarded"))
        [(document, raw, signature)] = app.received
        self.assertEqual(base64.b64decode(document.pop("message")), RECEIVED)
        self.assertTrue(document.pop("id"))
        self.assertEqual(
            document,
            {
                "mail_from": "carol@example.org",
                "rcpt_to": ["alice@example.com", "bob@example.com"],
                "client": {
                    "address": "127.0.0.1",
                    "hostname": "[127.0.0.1]",
                    "helo": "client.example.test",
                },
                "secure": False,
                "size": len(RECEIVED),
            },
        )
        expected = "sha256=" + hmac.new(b"s3cret", raw, hashlib.sha256).hexdigest()
        self.assertEqual(signature, expected)

    @inlineCallbacks
    def test_refused(self) -> Any:
        """
        A 4xx answer refuses the message for good: 554 5.6.0 with the status.
        """
        port = yield self.start((yield start_web(self, Recorder(422))))
        client = yield open_session(self, port)
        reply = yield send(self, client, "carol@example.org", ["alice@example.com"], MESSAGE)
        self.assertEqual(
            (reply.code, reply.text),
            (554, "5.6.0 Message refused by the application (HTTP 422)"),
        )

    @inlineCallbacks
    def test_temporaryFailures(self) -> Any:
        """
        A 5xx answer, a 429 and an application that is down are temporary failures
        (451 4.3.0): the sending server will try again.
        """
        app = Recorder(503)
        port = yield self.start((yield start_web(self, app)))
        client = yield open_session(self, port)
        for code in (503, 429):
            app.code = code
            reply = yield send(self, client, "carol@example.org", ["alice@example.com"], MESSAGE)
            self.assertEqual(
                (reply.code, reply.text),
                (451, "4.3.0 Cannot forward the message now, try again later"),
                f"HTTP {code}",
            )
        self.assertEqual(len(app.received), 2)

        port = yield self.start((yield closed_port_url(self)))
        client = yield open_session(self, port)
        reply = yield send(self, client, "carol@example.org", ["alice@example.com"], MESSAGE)
        self.assertEqual(reply.code, 451, str(reply))

    @inlineCallbacks
    def test_timeout(self) -> Any:
        """
        An application that does not answer in time gets its request cancelled, and the
        client gets 451; the timeout runs on a clock the test advances.
        """
        hanging = Hanging()
        clock = Clock()
        url = yield start_web(self, hanging)
        forwarder = self.example.WebhookForwarder(url, timeout=30, clock=clock)
        self.addCleanup(forwarder.close)
        server = self.example.SMTPServer(
            on_data=forwarder.on_data, disable_reverse_lookup=True, name=SERVER_NAME
        )
        port = yield start_server(self, server)
        client = yield open_session(self, port)
        replied = send(self, client, "carol@example.org", ["alice@example.com"], MESSAGE)
        yield hanging.arrived
        clock.advance(30)
        reply = yield replied
        self.assertEqual(reply.code, 451, str(reply))
        yield hanging.gone
