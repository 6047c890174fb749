"""
L{SMTPServer}: the factory that holds the options and hooks, counts
connections, and closes gracefully.
"""

from __future__ import annotations

import secrets
from typing import Any, Callable, cast

from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from . import _errors as R
from ._errors import Reply
from ._hooks import HOOK_NAMES
from ._idle import IdleWatch
from ._observer import Observer
from ._options import Options
from ._protocol import SMTPProtocol, _command_table
from ._session import Session
from ._proxy import HEADER_TIMEOUT, ProxyWrappingFactory, split_haproxy
from ._tls import ServerTLS, load_pem
from ._xclient import XCLIENT_KEYWORD, XFORWARD_KEYWORD, is_trusted

__all__ = ["SMTPServer"]

log = Logger(namespace="smtphooks")

Hook = Callable[..., Any]

#: Seconds the reverse lookup of a client's address may take.
REVERSE_LOOKUP_TIMEOUT = 5.0


class SMTPServer(ServerFactory):
    """
    A mail-receiving SMTP server: a Twisted L{ServerFactory} that runs the
    SMTP dialogue and hands each phase of a session to your hooks.

    Hooks can be given as keyword arguments, assigned as attributes after
    construction (C{server.on_data = f}), defined as methods of a subclass,
    or taken from any object passed as C{hooks} (such as an instance of
    L{smtphooks.Hooks}).  A keyword argument wins over C{hooks}, which wins
    over a subclass method.  A hook that is not given accepts.

    Options are keyword arguments (see the options guide for each): the
    greeting (C{name}, C{banner}); limits (C{size}, C{max_recipients},
    C{max_clients}, C{max_clients_per_ip}, C{max_command_length},
    C{max_unrecognized_commands}, C{max_unauthenticated_commands}); timeouts
    (C{socket_timeout}, C{command_timeout}, C{data_timeout},
    C{hook_timeout}, C{close_timeout}); TLS (C{tls}, C{tls_cert},
    C{tls_key}, C{secure}, C{sni}, C{request_cert}); AUTH (C{auth_methods},
    C{auth_optional}, C{auth_required_message}, C{allow_insecure_auth});
    protocol switches (C{lmtp}, C{hide_*}, C{disabled_commands},
    C{lenient_addresses}); reverse lookups (C{disable_reverse_lookup},
    C{resolver}); proxies (C{use_proxy}, C{use_xclient}, C{use_xforward}).

    @ivar on_connect: the hooks (see L{smtphooks.ISMTPHooks}); L{None}
        accepts.

    @ivar options: the checked options.
    @ivar clock: the reactor's clock, for timeouts.
    """

    protocol = SMTPProtocol  # type: ignore[assignment]
    noisy = False

    on_connect: Hook | None = None
    on_secure: Hook | None = None
    on_auth: Hook | None = None
    on_mail_from: Hook | None = None
    on_rcpt_to: Hook | None = None
    on_data: Hook | None = None
    on_close: Hook | None = None

    #: An L{smtphooks._observer.Observer} told about connections, replies,
    #: hook latency and messages (see L{smtphooks.metrics}); set it before
    #: listening.
    observer: Observer | None = None

    def __init__(
        self,
        hooks: object | None = None,
        *,
        on_connect: Hook | None = None,
        on_secure: Hook | None = None,
        on_auth: Hook | None = None,
        on_mail_from: Hook | None = None,
        on_rcpt_to: Hook | None = None,
        on_data: Hook | None = None,
        on_close: Hook | None = None,
        reactor: Any = None,
        **options: Any,
    ) -> None:
        """
        @param hooks: an object whose C{on_*} attributes are hooks.
        @param reactor: the reactor to listen and keep time with (default:
            the global one).
        @param options: see the options guide.
        @raise TypeError: for an unknown option, a value of the wrong type, or
            a hook that is not callable.
        @raise ValueError: for a bad or contradictory value, or an option
            this version does not support yet.
        """
        self.options = Options(options)
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self._reactor = reactor
        self.clock: IReactorTime = reactor
        given = {
            "on_connect": on_connect,
            "on_secure": on_secure,
            "on_auth": on_auth,
            "on_mail_from": on_mail_from,
            "on_rcpt_to": on_rcpt_to,
            "on_data": on_data,
            "on_close": on_close,
        }
        for name in HOOK_NAMES:
            hook = given[name]
            if hook is None and hooks is not None:
                hook = getattr(hooks, name, None)
            if hook is not None:
                if not callable(hook):
                    raise TypeError(f"hook {name!r} must be callable, not {hook!r}")
                setattr(self, name, hook)
        self._protocols: set[SMTPProtocol] = set()
        self._per_ip: dict[str, int] = {}
        self._ports: list[IListeningPort] = []
        self._closing = False
        self._watch: IdleWatch | None = None
        self._all_gone: list[Deferred[None]] = []
        self._resolver: Any = self.options.resolver
        self._reverse_lookup_timeout = REVERSE_LOOKUP_TIMEOUT
        self._handlers = _command_table(self)
        opts = self.options
        self._tls_creator: ServerTLS | None = None
        default_tls = opts.tls
        if opts.tls_cert is not None and opts.tls_key is not None:
            default_tls = load_pem(opts.tls_cert, opts.tls_key)
        if default_tls is not None:
            self._tls_creator = ServerTLS(default_tls, opts.sni, opts.request_cert)
        message = opts.auth_required_message
        self._auth_required_reply = (
            R.AUTH_REQUIRED.with_text(message) if message else R.AUTH_REQUIRED
        )
        self._ehlo_tails: dict[tuple[bool, bool, bool, bool, bool], bytes] = {}
        self._proxy_factories: list[ProxyWrappingFactory] = []
        self._build_replies()

    # -- replies that depend on the options --------------------------------

    def _build_replies(self) -> None:
        opts = self.options
        name = opts.name
        greeting = f"{name} {'LMTP' if opts.lmtp else 'ESMTP'} {opts.banner}".rstrip()
        self._greeting = Reply(220, None, greeting).plain
        self._helo_reply = Reply(250, None, name).plain

    def _help_reply(self, session: Session) -> Reply:
        """
        The HELP reply: the commands this session may use now.
        """
        commands = []
        for verb in sorted(self._handlers):
            name = verb.decode("ascii")
            if name == "STARTTLS" and not self._offers_starttls(session):
                continue
            if name == "AUTH" and not self._offers_auth(session):
                continue
            if name == "BDAT" and self.options.hide_chunking:
                continue
            commands.append(name)
        return Reply(214, "2.0.0", "Commands: " + " ".join(commands) + "\nSee RFC 5321")

    def _offers_starttls(self, session: Session) -> bool:
        """
        Whether STARTTLS is offered to this session now.
        """
        return (
            self._tls_creator is not None
            and not session.secure
            and not self.options.hide_starttls
            and b"STARTTLS" in self._handlers
        )

    def _offers_auth(self, session: Session) -> bool:
        """
        Whether AUTH is offered to this session now.
        """
        return (
            self.on_auth is not None
            and b"AUTH" in self._handlers
            and (session.secure or self.options.allow_insecure_auth)
        )

    def _offers_xclient(self, session: Session) -> bool:
        """
        Whether XCLIENT is offered to (and accepted from) this session now.
        """
        return b"XCLIENT" in self._handlers and is_trusted(
            session.remote_address, self.options.use_xclient
        )

    def _offers_xforward(self, session: Session) -> bool:
        """
        Whether XFORWARD is offered to (and accepted from) this session now.
        """
        return b"XFORWARD" in self._handlers and is_trusted(
            session.remote_address, self.options.use_xforward
        )

    def _extensions(
        self, starttls: bool, auth: bool, secure: bool, xclient: bool, xforward: bool
    ) -> list[str]:
        opts = self.options
        extensions = []
        if not opts.hide_pipelining:
            extensions.append("PIPELINING")
        if not opts.hide_8bitmime:
            extensions.append("8BITMIME")
        if not opts.hide_smtputf8:
            extensions.append("SMTPUTF8")
        if not opts.hide_size:
            extensions.append(f"SIZE {opts.size}" if opts.size else "SIZE")
        if auth:
            extensions.append("AUTH " + " ".join(opts.auth_methods))
        if starttls:
            extensions.append("STARTTLS")
        if not opts.hide_enhancedstatuscodes:
            extensions.append("ENHANCEDSTATUSCODES")
        if not opts.hide_dsn:
            extensions.append("DSN")
        if not opts.hide_chunking:
            extensions.append("CHUNKING")
            extensions.append("BINARYMIME")
        if secure:
            extensions.append("REQUIRETLS")
        if xclient:
            extensions.append(XCLIENT_KEYWORD)
        if xforward:
            extensions.append(XFORWARD_KEYWORD)
        return extensions

    def _ehlo_reply(self, session: Session) -> bytes:
        """
        The EHLO reply for one session, as it stands now.
        """
        key = (
            self._offers_starttls(session),
            self._offers_auth(session),
            session.secure,
            self._offers_xclient(session),
            self._offers_xforward(session),
        )
        tail = self._ehlo_tails.get(key)
        if tail is None:
            lines = self._extensions(*key)
            tail = self._ehlo_tails[key] = "".join(
                f"250{'-' if i < len(lines) - 1 else ' '}{line}\r\n"
                for i, line in enumerate(lines)
            ).encode("ascii")
        first = f"{self.options.name} greets {session.client_hostname}"
        if not tail:
            return Reply(250, None, first).plain
        return b"250-" + first.encode("utf-8") + b"\r\n" + tail

    def _cram_challenge(self) -> str:
        """
        A new CRAM-MD5 challenge.
        """
        return f"<{secrets.randbelow(10**12)}.{int(self.clock.seconds())}@{self.options.name}>"

    def update_tls(self, context_factory: Any) -> None:
        """
        Use another certificate for new connections (STARTTLS, and listeners
        with C{secure=True}), without a restart; sessions already secured
        keep theirs.

        @param context_factory: anything with C{getContext()}, such as a
            L{twisted.internet.ssl.CertificateOptions}.
        @raise ValueError: if the server was built without TLS.
        """
        if self._tls_creator is None:
            raise ValueError("update_tls: this server was built without TLS")
        self._tls_creator.update(context_factory)

    # -- connections ---------------------------------------------------------

    def buildProtocol(self, addr: IAddress | None) -> SMTPProtocol:  # type: ignore[override]
        """
        A new L{SMTPProtocol} for a connection.
        """
        return SMTPProtocol(self)

    def _idle_watch(self) -> IdleWatch:
        """
        The one L{IdleWatch} of this server's connections, made when the
        first connection is (after tests may have replaced C{clock}).
        """
        watch = self._watch
        if watch is None:
            watch = self._watch = IdleWatch(self.clock, self.options.socket_timeout)
        return watch

    def _admit(self, protocol: SMTPProtocol) -> Reply | None:
        """
        Count a new connection, or say why it is refused.
        """
        self._protocols.add(protocol)
        if self.observer is not None:
            self.observer.connection_opened()
        if self._closing:
            return R.SHUTTING_DOWN
        opts = self.options
        if opts.max_clients and len(self._protocols) > opts.max_clients:
            return R.TOO_MANY_CLIENTS
        ip = protocol.session.remote_address
        count = self._per_ip.get(ip, 0)
        if opts.max_clients_per_ip and count >= opts.max_clients_per_ip:
            return R.TOO_MANY_FROM_IP
        self._per_ip[ip] = count + 1
        protocol._counted_ip = ip
        return None

    def _release(self, protocol: SMTPProtocol) -> None:
        """
        Uncount a connection that L{admit} counted.
        """
        # The address admit() counted: XCLIENT may have changed the session's.
        ip = protocol._counted_ip
        if ip is None:
            return
        protocol._counted_ip = None
        count = self._per_ip.get(ip, 0) - 1
        if count > 0:
            self._per_ip[ip] = count
        else:
            self._per_ip.pop(ip, None)

    def _forget(self, protocol: SMTPProtocol) -> None:
        """
        A connection is gone.
        """
        if protocol in self._protocols and self.observer is not None:
            self.observer.connection_closed()
        self._protocols.discard(protocol)
        if not self._protocols and self._all_gone:
            waiting, self._all_gone = self._all_gone, []
            for d in waiting:
                d.callback(None)

    def _get_resolver(self) -> Any:
        """
        The L{IResolver} for reverse lookups.
        """
        if self._resolver is None:
            from twisted.names import client

            self._resolver = client.getResolver()  # type: ignore[no-untyped-call]
        return self._resolver

    @property
    def connections(self) -> list[Session]:
        """
        The sessions of the live connections (not of one being closed,
        whose C{on_close} may be running).
        """
        return [protocol.session for protocol in self._protocols if not protocol._lost]

    # -- listening and closing -----------------------------------------------

    def listen(self, endpoint: str | IStreamServerEndpoint) -> Deferred[IListeningPort]:
        """
        Start listening.  May be called several times.

        @param endpoint: an endpoint description (C{"tcp:2525"},
            C{"ssl:465:privateKey=k.pem:certKey=c.pem"},
            C{"unix:/run/smtp.sock"}, C{"systemd:domain=INET:index=0"},
            C{"haproxy:tcp:25"} for a PROXY header on every connection) or an
            L{IStreamServerEndpoint}.
        @return: a L{Deferred} that fires with the listening port.
        @raise ValueError: for a malformed endpoint description, or
            C{haproxy:ssl:} (TLS would come before the PROXY header: use
            C{haproxy:tcp:} with C{secure=True}).
        """
        proxy = self.options.use_proxy
        # "haproxy:tcp:25" (or Twisted's proxyEndpoint()) means use_proxy=True
        # for this listener; our wrapper replaces Twisted's.
        endpoint, prefixed = split_haproxy(endpoint)
        if prefixed and proxy is False:
            proxy = True
        if isinstance(endpoint, str):
            endpoint = cast(
                IStreamServerEndpoint,
                serverFromString(self._reactor, endpoint),  # type: ignore[no-untyped-call]
            )
        factory: Any = self
        if self.options.secure:
            assert self._tls_creator is not None
            factory = TLSMemoryBIOFactory(self._tls_creator, False, self)
        if proxy is not False:
            # Outermost: the header comes in clear, before any TLS byte.
            timeout = min(HEADER_TIMEOUT, self.options.socket_timeout)
            wrapper = ProxyWrappingFactory(factory, proxy, self.clock, timeout)
            self._proxy_factories.append(wrapper)
            factory = wrapper
        d: Deferred[IListeningPort] = endpoint.listen(factory)

        def listening(port: IListeningPort) -> IListeningPort:
            self._ports.append(port)
            return port

        return d.addCallback(listening)

    def close(self, timeout: float | None = None) -> Deferred[None]:
        """
        Stop listening and end every session gracefully: sessions without a
        transaction get C{421} now; the others may finish the transaction in
        progress for up to C{timeout} seconds, then get C{421} too.

        @param timeout: seconds to wait (default: the C{close_timeout}
            option).
        @return: a L{Deferred} that fires when every connection is gone.
        """
        if timeout is None:
            timeout = self.options.close_timeout
        self._closing = True
        for wrapper in self._proxy_factories:
            wrapper.close_pending()
        ports, self._ports = self._ports, []
        stopped = DeferredList([maybeDeferred(port.stopListening) for port in ports])
        for protocol in list(self._protocols):
            protocol.shutdown()
        gone: Deferred[None] = Deferred()
        if self._protocols:
            self._all_gone.append(gone)
            force = self.clock.callLater(timeout, self._force_close)
            abort = self.clock.callLater(timeout + 5, self._abort_all)

            def cancel_timers(result: None) -> None:
                for call in (force, abort):
                    if call.active():
                        call.cancel()

            gone.addCallback(cancel_timers)
        else:
            gone.callback(None)

        def both(_: object) -> Deferred[None]:
            return stopped.addCallback(lambda _: None)

        return gone.addCallback(both)

    def _force_close(self) -> None:
        for protocol in list(self._protocols):
            protocol.shutdown(force=True)

    def _abort_all(self) -> None:
        # Clients that do not read their 421 are cut off.
        for protocol in list(self._protocols):
            if protocol.transport is not None:
                protocol.transport.abortConnection()  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"<SMTPServer {self.options!r} connections={len(self._protocols)}>"

