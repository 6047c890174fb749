"""
Mail to a web application: every message is forwarded as an HTTP POST (with treq)
and the SMTP client learns the application's answer before it disconnects:

    - a C{2xx} answer accepts the message (C{250});
    - a C{4xx} answer (but C{408} and C{429}) refuses it for good (C{554 5.6.0}): the
      application does not want it, and the sending server bounces it;
    - anything else — C{5xx}, C{408}, C{429}, a refused connection, no answer within
      the timeout — is a temporary failure (C{451 4.3.0}): the sending server keeps
      the message and tries again later, so nothing is lost while the application
      is down.

The request body is JSON::

    {"id": "3f9c0a6d1e2b4c58.1",            # session id . transaction number
     "mail_from": "alice@example.org",
     "rcpt_to": ["support@example.com"],
     "client": {"address": "192.0.2.7", "hostname": "mail.example.org",
                "helo": "mail.example.org"},
     "secure": true, "size": 1234,
     "message": "UmVjZWl2ZWQ6IGZyb20g..."}   # the raw message, base64

With a secret (C{--secret-file}), each request carries
C{X-Smtphooks-Signature: sha256=<hex HMAC-SHA256 of the body>}, so that the
application can check that the request comes from this server (compare with
C{hmac.compare_digest}).

treq is a dependency of this example only, not of smtphooks: C{pip install treq}.
Run it::

    python docs/examples/webhook_forwarder.py --url https://app.example.com/inbound \\
        --listen tcp:2525:interface=127.0.0.1 --secret-file webhook.key

The test suite (C{tests/test_docs_more_examples.py}) imports this file and runs it
over loopback against a small web application, so what you read here works.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import sys
from typing import Any

import treq
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool

from smtphooks import DataStream, Session, SMTPError, SMTPServer

log = Logger(namespace="webhook")

#: The header that carries the signature of the request body.
SIGNATURE_HEADER = "X-Smtphooks-Signature"


class WebhookUnavailable(Exception):
    """
    No usable answer from the application: the message is to be tried again later.
    """


class WebhookForwarder:
    """
    The C{on_data} hook: pass C{forwarder.on_data} to L{SMTPServer} (L{make_server}
    does).

    @ivar url: where messages are posted.
    @ivar timeout: seconds one request may take, answer included.
    """

    def __init__(
        self,
        url: str,
        *,
        secret: bytes | None = None,
        timeout: float = 30.0,
        reactor: Any = None,
        clock: Any = None,
    ) -> None:
        """
        @param url: the application's URL.
        @param secret: the key of the request signature, or L{None} for none.
        @param timeout: seconds after which a request gives up (keep it below the
            server's C{hook_timeout}).
        @param reactor: the reactor to connect with; by default the global one.
        @param clock: the L{IReactorTime} that measures C{timeout}; by default
            C{reactor}.
        """
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.url = url
        self.timeout = timeout
        self._secret = secret
        self._clock = clock if clock is not None else reactor
        # A pool of its own, closed by close(): treq's default pool is global and
        # keeps connections open for as long as the process lives.
        self._pool = HTTPConnectionPool(reactor, persistent=True)  # type: ignore[no-untyped-call]
        agent = Agent(reactor, pool=self._pool, connectTimeout=timeout)  # type: ignore[no-untyped-call]
        self._http = HTTPClient(agent)

    def payload(self, body: bytes, session: Session) -> bytes:
        """
        The JSON document posted for one message.
        """
        envelope = session.envelope
        document = {
            "id": f"{session.id}.{session.transaction}",
            "mail_from": envelope.mail_from.address if envelope.mail_from is not None else "",
            "rcpt_to": [rcpt.address for rcpt in envelope.rcpt_to],
            "client": {
                "address": session.remote_address,
                "hostname": session.client_hostname,
                "helo": session.host_name_appears_as,
            },
            "secure": session.secure,
            "size": len(body),
            "message": base64.b64encode(body).decode("ascii"),
        }
        return json.dumps(document).encode("utf-8")

    def sign(self, payload: bytes) -> str | None:
        """
        The value of the signature header for C{payload}, or L{None} without a secret.
        """
        if self._secret is None:
            return None
        return "sha256=" + hmac.new(self._secret, payload, hashlib.sha256).hexdigest()

    def post(self, payload: bytes) -> Deferred[int]:
        """
        Post one payload.

        @return: a L{Deferred} that fires with the HTTP status of a final answer
            (C{2xx}, or a C{4xx} other than C{408}/C{429}), or fails with
            L{WebhookUnavailable}.
        """
        headers: dict[bytes | str, list[bytes | str]] = {"Content-Type": ["application/json"]}
        signature = self.sign(payload)
        if signature is not None:
            headers[SIGNATURE_HEADER] = [signature]
        d = self._http.post(self.url, data=payload, headers=headers, allow_redirects=False)

        def answered(response: Any) -> Deferred[int]:
            # Read the answer in full, so the connection can be reused.
            def status(_: bytes) -> int:
                code = int(response.code)
                if 200 <= code < 300 or (400 <= code < 500 and code not in (408, 429)):
                    return code
                raise WebhookUnavailable(f"HTTP {code}")

            result: Deferred[int] = treq.content(response).addCallback(status)
            return result

        d.addCallback(answered)
        d.addTimeout(self.timeout, self._clock)
        d.addErrback(self._unavailable)
        return d  # type: ignore[return-value]

    @staticmethod
    def _unavailable(failure: Failure) -> Failure:
        if failure.check(WebhookUnavailable, CancelledError):  # type: ignore[no-untyped-call]
            return failure  # CancelledError: the server gave up on the hook itself
        raise WebhookUnavailable(failure.getErrorMessage())

    async def on_data(self, stream: DataStream, session: Session) -> str | None:
        """
        Forward one message and answer with the application's verdict.

        @raise SMTPError: C{554 5.6.0} when the application refuses the message,
            C{451 4.3.0} when it cannot be reached.
        """
        # The message is held in memory (and base64 makes it a third bigger): the
        # server's `size` option bounds it.
        body = await stream.read()
        if stream.size_exceeded:
            return None  # the server answers 552 5.3.4 anyway
        try:
            code = await self.post(self.payload(body, session))
        except WebhookUnavailable as error:
            log.warn(
                "webhook failed (session {session_id}): {error}",
                session_id=session.id,
                error=str(error),
            )
            raise SMTPError(
                "Cannot forward the message now, try again later", code=451, enhanced="4.3.0"
            ) from None
        if code >= 400:
            raise SMTPError(
                f"Message refused by the application (HTTP {code})", code=554, enhanced="5.6.0"
            )
        return "OK: forwarded"

    def close(self) -> Deferred[None]:
        """
        Close the kept-alive connections (at shutdown, and at the end of a test).
        """
        return self._pool.closeCachedConnections()  # type: ignore[no-untyped-call,no-any-return]


def make_server(
    url: str, *, secret: bytes | None = None, timeout: float = 30.0, **options: Any
) -> tuple[SMTPServer, WebhookForwarder]:
    """
    A receiving server that forwards every message to C{url}.

    @param options: more L{SMTPServer} options; C{size} defaults to 10 MiB.
    @return: the server and its forwarder.
    """
    options.setdefault("size", 10 * 1024 * 1024)
    forwarder = WebhookForwarder(url, secret=secret, timeout=timeout)
    return SMTPServer(on_data=forwarder.on_data, **options), forwarder


def main(argv: list[str] | None = None) -> None:
    """
    The command line.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="where to POST each message")
    parser.add_argument("--listen", default="tcp:2525:interface=127.0.0.1")
    parser.add_argument("--secret-file", help="file holding the signature key")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    args = parser.parse_args(argv)

    from twisted.internet import reactor as _reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    reactor: Any = _reactor
    secret = None
    if args.secret_file:
        with open(args.secret_file, "rb") as f:
            secret = f.read().strip()
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    server, forwarder = make_server(args.url, secret=secret, timeout=args.timeout)
    server.listen(args.listen)
    reactor.addSystemEventTrigger("before", "shutdown", server.close)
    reactor.addSystemEventTrigger("before", "shutdown", forwarder.close)
    reactor.run()


if __name__ == "__main__":
    main()
