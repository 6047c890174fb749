"""
Prometheus metrics for an L{smtphooks.SMTPServer}.

    from prometheus_client import CollectorRegistry
    from smtphooks.metrics import PrometheusObserver, serve_metrics

    registry = CollectorRegistry()
    server.observer = PrometheusObserver(registry)      # before listening
    await serve_metrics(reactor, "tcp:9100:interface=127.0.0.1", registry)

This module needs C{prometheus_client}, which the optional extra installs:
C{pip install 'smtphooks[metrics]'}.  Importing it without raises
L{ImportError} saying so.

The metrics (with the default namespace C{smtphooks}):

  - C{smtphooks_connections_open}: connections open now (gauge);
  - C{smtphooks_connections_total}: connections accepted, refused ones
    included;
  - C{smtphooks_transactions_total}: accepted C{MAIL FROM} commands;
  - C{smtphooks_messages_total{result="accepted|rejected"}}: messages whose
    data was received, by the reply they got (2xx, or not);
  - C{smtphooks_message_bytes_total{result="accepted|rejected"}}: their
    bytes;
  - C{smtphooks_replies_total{code="250"}}: replies sent, by code;
  - C{smtphooks_hook_duration_seconds{hook="on_rcpt_to"}}: how long each
    hook took (histogram).
"""

from __future__ import annotations

from typing import Any, Sequence

try:
    from prometheus_client import (
        REGISTRY,
        CollectorRegistry,
        Counter,
        Gauge,
        Histogram,
    )
    from prometheus_client.exposition import choose_encoder
except ImportError as e:  # pragma: no cover - exercised in a subprocess
    raise ImportError(
        "smtphooks.metrics needs prometheus_client, which is not installed; "
        "install it with: pip install 'smtphooks[metrics]'"
    ) from e

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

__all__ = ["HOOK_BUCKETS", "MetricsResource", "PrometheusObserver", "serve_metrics"]

#: The histogram buckets of hook durations, in seconds: from half a
#: millisecond (a hook that answers at once) to the default hook timeout.
HOOK_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


class PrometheusObserver:
    """
    An observer (see L{smtphooks.SMTPServer.observer}) that counts what a
    server does in Prometheus metrics.  One observer may watch several
    servers; its metrics are registered once, in C{registry}.

    Each method is called by the engine and is quick: it increments
    counters that are looked up once per label value.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        namespace: str = "smtphooks",
        hook_buckets: Sequence[float] = HOOK_BUCKETS,
    ) -> None:
        """
        @param registry: where the metrics are registered (default:
            C{prometheus_client.REGISTRY}, the one C{prometheus_client}'s
            own servers expose, with the process metrics).
        @param namespace: the prefix of every metric name.
        @param hook_buckets: the upper bounds of the hook duration buckets.
        @raise ValueError: if C{registry} already has metrics with these
            names (from another observer with the same namespace).
        """
        if registry is None:
            registry = REGISTRY
        self.registry = registry
        common: dict[str, Any] = {"namespace": namespace, "registry": registry}
        self._open = Gauge(
            "connections_open",
            "SMTP connections open now.",
            multiprocess_mode="livesum",
            **common,
        )
        self._connections = Counter(
            "connections", "SMTP connections accepted (refused ones included).", **common
        )
        self._transactions = Counter(
            "transactions", "Mail transactions begun (MAIL FROM accepted).", **common
        )
        messages = Counter(
            "messages",
            "Messages received, by result: accepted (2xx) or rejected.",
            ["result"],
            **common,
        )
        size = Counter(
            "message_bytes",
            "Bytes of the messages received, by result.",
            ["result"],
            **common,
        )
        self._replies = Counter("replies", "SMTP replies sent, by code.", ["code"], **common)
        self._hooks = Histogram(
            "hook_duration_seconds",
            "Seconds each hook took to answer.",
            ["hook"],
            buckets=list(hook_buckets),
            **common,
        )
        # Children are looked up once: labels() costs a lock and a dict.
        self._messages = {True: messages.labels("accepted"), False: messages.labels("rejected")}
        self._bytes = {True: size.labels("accepted"), False: size.labels("rejected")}
        self._reply_children: dict[int, Any] = {}
        self._hook_children: dict[str, Any] = {}

    def connection_opened(self) -> None:
        """
        A client connected.
        """
        self._connections.inc()
        self._open.inc()

    def connection_closed(self) -> None:
        """
        A connection ended.
        """
        self._open.dec()

    def reply(self, code: int) -> None:
        """
        A reply with C{code} was sent.
        """
        child = self._reply_children.get(code)
        if child is None:
            child = self._reply_children[code] = self._replies.labels(str(code))
        child.inc()

    def hook_finished(self, name: str, seconds: float) -> None:
        """
        The hook C{name} answered after C{seconds}.
        """
        child = self._hook_children.get(name)
        if child is None:
            child = self._hook_children[name] = self._hooks.labels(name)
        child.observe(max(seconds, 0.0))

    def transaction(self) -> None:
        """
        A transaction began.
        """
        self._transactions.inc()

    def message(self, accepted: bool, size: int) -> None:
        """
        A message of C{size} bytes ended, C{accepted} or not.
        """
        accepted = bool(accepted)
        self._messages[accepted].inc()
        self._bytes[accepted].inc(size)


class MetricsResource(Resource):
    """
    A L{twisted.web} resource that renders a registry in the Prometheus
    text format (or OpenMetrics, when the scraper asks for it in its
    C{Accept} header), in the reactor thread: collecting the few metrics
    of a server takes far less than a thread hand-off.

    (C{prometheus_client.twisted.MetricsResource} is not used: it binds the
    global reactor when imported and renders in a thread pool.)
    """

    isLeaf = True

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        """
        @param registry: what to render (default: C{prometheus_client.REGISTRY}).
        """
        super().__init__()  # type: ignore[no-untyped-call]
        self.registry = registry if registry is not None else REGISTRY

    def render_GET(self, request: Request) -> bytes:
        """
        @return: the exposition of every metric of the registry.
        """
        accept = request.getHeader("accept") or ""
        encoder, content_type = choose_encoder(accept)
        request.setHeader("Content-Type", content_type)  # type: ignore[no-untyped-call]
        return encoder(self.registry)

    render_HEAD = render_GET


class _QuietSite(Site):
    """
    A L{Site} that writes no access log line per scrape.
    """

    noisy = False

    def log(self, request: Any) -> None:
        pass


def serve_metrics(
    reactor: Any,
    endpoint: str | IStreamServerEndpoint,
    registry: CollectorRegistry | None = None,
) -> Deferred[IListeningPort]:
    """
    Serve C{registry} over HTTP: C{GET /metrics} (any path, in fact) answers
    the Prometheus text exposition.

    @param reactor: the reactor to listen with.
    @param endpoint: where: an endpoint description (C{"tcp:9100"}) or an
        L{IStreamServerEndpoint}.
    @param registry: the metrics (default: C{prometheus_client.REGISTRY}).
    @return: a L{Deferred} that fires with the listening port (stop it with
        C{stopListening()}), or fails if the endpoint cannot listen.
    @raise ValueError: for a malformed endpoint description.
    """
    if isinstance(endpoint, str):
        where: IStreamServerEndpoint = serverFromString(  # type: ignore[no-untyped-call]
            reactor, endpoint
        )
    else:
        where = endpoint
    site = _QuietSite(MetricsResource(registry), reactor=reactor)  # type: ignore[no-untyped-call]
    d: Deferred[IListeningPort] = where.listen(site)
    return d
