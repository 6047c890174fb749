"""
Tests for L{smtphooks.metrics}: the Prometheus observer (unit, and over a
real loopback server driven by smtplib), the HTTP exposition, and the error
given when C{prometheus_client} is missing.
"""

from __future__ import annotations

import os
import smtplib
import sys
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase, TestCase

from smtphooks import SMTPError, SMTPServer

from .support import run_process
from .test_workers import poll_until
from .wire import SERVER_NAME, start_server, with_smtp

SKIP: str | None
try:
    from prometheus_client import CollectorRegistry

    from smtphooks.metrics import HOOK_BUCKETS, PrometheusObserver, serve_metrics
except ImportError:
    SKIP = "prometheus_client is not installed (pip install 'smtphooks[metrics]')"
else:
    SKIP = None

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sample(registry: Any, name: str, **labels: str) -> float | None:
    value: float | None = registry.get_sample_value(name, labels)
    return value


class ObserverTests(SynchronousTestCase):
    """
    Each observer event moves the metric it is meant to.
    """

    skip = SKIP

    def setUp(self) -> None:
        self.registry = CollectorRegistry()
        self.observer = PrometheusObserver(self.registry)

    def value(self, name: str, **labels: str) -> float | None:
        return sample(self.registry, name, **labels)

    def test_initial(self) -> None:
        """
        A fresh observer exposes zeros, and both message results exist from
        the start (so that rates work before the first rejection).
        """
        self.assertEqual(self.value("smtphooks_connections_open"), 0)
        self.assertEqual(self.value("smtphooks_connections_total"), 0)
        self.assertEqual(self.value("smtphooks_transactions_total"), 0)
        for result in ("accepted", "rejected"):
            self.assertEqual(self.value("smtphooks_messages_total", result=result), 0)
            self.assertEqual(self.value("smtphooks_message_bytes_total", result=result), 0)

    def test_events(self) -> None:
        """
        Connections count up and the gauge follows them; messages and their
        bytes count by result; replies by code; hook durations go to the
        histogram of their hook.
        """
        o = self.observer
        o.connection_opened()
        o.connection_opened()
        o.connection_closed()
        o.transaction()
        o.message(True, 100)
        o.message(False, 7)
        o.message(True, 20)
        for code in (250, 250, 550, 354):
            o.reply(code)
        o.hook_finished("on_rcpt_to", 0.0001)
        o.hook_finished("on_rcpt_to", 2.0)
        o.hook_finished("on_data", 0.003)
        self.assertEqual(self.value("smtphooks_connections_total"), 2)
        self.assertEqual(self.value("smtphooks_connections_open"), 1)
        self.assertEqual(self.value("smtphooks_transactions_total"), 1)
        self.assertEqual(self.value("smtphooks_messages_total", result="accepted"), 2)
        self.assertEqual(self.value("smtphooks_messages_total", result="rejected"), 1)
        self.assertEqual(self.value("smtphooks_message_bytes_total", result="accepted"), 120)
        self.assertEqual(self.value("smtphooks_message_bytes_total", result="rejected"), 7)
        self.assertEqual(self.value("smtphooks_replies_total", code="250"), 2)
        self.assertEqual(self.value("smtphooks_replies_total", code="550"), 1)
        self.assertEqual(self.value("smtphooks_replies_total", code="354"), 1)
        self.assertIsNone(self.value("smtphooks_replies_total", code="221"))
        hist = "smtphooks_hook_duration_seconds"
        self.assertEqual(self.value(f"{hist}_count", hook="on_rcpt_to"), 2)
        self.assertAlmostEqual(self.value(f"{hist}_sum", hook="on_rcpt_to") or 0, 2.0001)
        self.assertEqual(self.value(f"{hist}_bucket", hook="on_rcpt_to", le="0.0005"), 1)
        self.assertEqual(self.value(f"{hist}_bucket", hook="on_rcpt_to", le="2.5"), 2)
        self.assertEqual(self.value(f"{hist}_count", hook="on_data"), 1)
        self.assertEqual(
            self.value(f"{hist}_bucket", hook="on_data", le="+Inf"), 1
        )
        self.assertEqual(HOOK_BUCKETS[-1], 60.0)

    def test_namespace(self) -> None:
        """
        C{namespace} prefixes every name; a second observer with the same
        names in one registry is refused.
        """
        PrometheusObserver(self.registry, namespace="mx").transaction()
        self.assertEqual(sample(self.registry, "mx_transactions_total"), 1)
        self.assertRaises(ValueError, PrometheusObserver, self.registry)


class ServerMetricsTests(TestCase):
    """
    A real L{SMTPServer} on loopback, with the observer set, driven by
    smtplib: the metrics say what happened on the wire.
    """

    skip = SKIP

    async def test_accepted_and_rejected(self) -> None:
        """
        One connection: a message accepted for one of two recipients (the
        other refused by C{on_rcpt_to}), then a message that C{on_data}
        rejects.  Counters, the histogram of each hook, and the replies by
        code match.
        """
        registry = CollectorRegistry()
        sizes: list[int] = []

        def on_rcpt_to(address: Any, session: Any) -> None:
            if address.address.startswith("nobody@"):
                raise SMTPError("No such user here", code=550, enhanced="5.1.1")

        async def on_data(stream: Any, session: Any) -> None:
            body = await stream.read()
            sizes.append(len(body))
            if b"Subject: reject" in body:
                raise SMTPError("Looks like spam", code=554, enhanced="5.7.1")

        server = SMTPServer(
            on_rcpt_to=on_rcpt_to, on_data=on_data, disable_reverse_lookup=True, name=SERVER_NAME
        )
        server.observer = PrometheusObserver(registry)
        port = await start_server(self, server)

        def send(smtp: smtplib.SMTP) -> Any:
            refused = smtp.sendmail(
                "a@example.org", ["ok@example.com", "nobody@example.com"],
                b"Subject: hello\r\n\r\nhello\r\n",
            )
            try:
                smtp.sendmail("a@example.org", ["ok@example.com"], b"Subject: reject\r\n\r\nx\r\n")
            except smtplib.SMTPDataError as e:
                return refused, e.smtp_code
            return refused, None

        refused, code = await with_smtp(port, send)
        self.assertEqual(list(refused), ["nobody@example.com"])
        self.assertEqual(code, 554)

        def value(name: str, **labels: str) -> float | None:
            return sample(registry, name, **labels)

        await poll_until(lambda: value("smtphooks_connections_open") == 0)
        self.assertEqual(value("smtphooks_connections_total"), 1)
        self.assertEqual(value("smtphooks_transactions_total"), 2)
        self.assertEqual(value("smtphooks_messages_total", result="accepted"), 1)
        self.assertEqual(value("smtphooks_messages_total", result="rejected"), 1)
        self.assertEqual(value("smtphooks_message_bytes_total", result="accepted"), sizes[0])
        self.assertEqual(value("smtphooks_message_bytes_total", result="rejected"), sizes[1])
        hist = "smtphooks_hook_duration_seconds_count"
        self.assertEqual(value(hist, hook="on_rcpt_to"), 3)
        self.assertEqual(value(hist, hook="on_data"), 2)
        self.assertIsNone(value(hist, hook="on_mail_from"))
        # MAIL, RCPT, end of DATA, MAIL, RCPT, RSET (smtplib resets after
        # the 554); 7 when the engine also reports its EHLO reply.
        self.assertIn(value("smtphooks_replies_total", code="250"), (6, 7))
        self.assertEqual(value("smtphooks_replies_total", code="550"), 1)
        self.assertEqual(value("smtphooks_replies_total", code="354"), 2)
        self.assertEqual(value("smtphooks_replies_total", code="554"), 1)
        self.assertEqual(value("smtphooks_replies_total", code="221"), 1)


class ServeMetricsTests(TestCase):
    """
    L{serve_metrics} answers HTTP scrapes with the registry.
    """

    skip = SKIP

    async def fetch(self, port: int, accept: str | None = None) -> tuple[int, str, bytes]:
        from twisted.internet import reactor
        from twisted.web.client import Agent, HTTPConnectionPool, readBody
        from twisted.web.http_headers import Headers

        agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
        headers = Headers({b"Accept": [accept.encode()]} if accept else {})
        response = await agent.request(
            b"GET", f"http://127.0.0.1:{port}/metrics".encode(), headers
        )
        body = await readBody(response)
        (content_type,) = response.headers.getRawHeaders(b"content-type")
        return response.code, content_type.decode(), body

    async def test_text_and_openmetrics(self) -> None:
        """
        A plain scrape gets the Prometheus text format; one that asks for
        OpenMetrics gets it (ending in C{# EOF}).
        """
        from twisted.internet import reactor

        registry = CollectorRegistry()
        observer = PrometheusObserver(registry)
        observer.message(True, 42)
        port = await serve_metrics(reactor, "tcp:0:interface=127.0.0.1", registry)
        self.addCleanup(port.stopListening)
        number = port.getHost().port  # type: ignore[attr-defined]
        code, content_type, body = await self.fetch(number)
        self.assertEqual(code, 200)
        self.assertTrue(content_type.startswith("text/plain; version="), content_type)
        self.assertIn(b'smtphooks_messages_total{result="accepted"} 1.0\n', body)
        self.assertIn(b'smtphooks_message_bytes_total{result="accepted"} 42.0\n', body)
        code, content_type, body = await self.fetch(
            number, "application/openmetrics-text; version=1.0.0"
        )
        self.assertEqual(code, 200)
        self.assertTrue(content_type.startswith("application/openmetrics-text"), content_type)
        self.assertTrue(body.endswith(b"# EOF\n"), body[-50:])

    def test_bad_endpoint(self) -> None:
        """
        A malformed endpoint description is a L{ValueError}.
        """
        from twisted.internet import reactor

        self.assertRaises(ValueError, serve_metrics, reactor, "bogus:1", CollectorRegistry())


class MissingPrometheusTests(TestCase):
    """
    Without C{prometheus_client}, importing the module says which extra to
    install.
    """

    def test_import_error(self) -> Deferred[None]:
        code = (
            "import sys; sys.modules['prometheus_client'] = None\n"
            "try:\n"
            "    import smtphooks.metrics\n"
            "except ImportError as e:\n"
            "    print(e)\n"
            "else:\n"
            "    print('imported')\n"
        )
        env = dict(os.environ, PYTHONPATH=ROOT)
        d = run_process([sys.executable, "-c", code], env=env)

        def check(result: tuple[int, bytes, bytes]) -> None:
            status, out, err = result
            self.assertEqual(status, 0, err)
            self.assertIn(b"pip install 'smtphooks[metrics]'", out)

        return d.addCallback(check)
