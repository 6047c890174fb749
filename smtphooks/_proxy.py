"""
The PROXY protocol (HAProxy's proxy-protocol.txt), versions 1 and 2, in
front of any server factory.

Two halves:

  - L{parse_proxy_header}, sans-IO: bytes in, a L{ProxyInfo} (or "need more
    bytes") out, or L{ProxyError}.  Both versions, told apart by their first
    bytes, so one listener accepts either.
  - L{ProxyWrappingFactory}, a L{WrappingFactory} whose protocol reads the
    header before the wrapped protocol exists for the connection: the
    wrapped protocol's C{connectionMade} runs only once the header was read,
    and from then on its transport's C{getPeer()}/C{getHost()} give the
    addresses the header carried.

Why not C{twisted.protocols.haproxy}: its public API is only
C{proxyEndpoint()} (and the C{haproxy:} endpoint prefix).  It connects the
wrapped protocol before the header arrives (an SMTP server would greet, and
run its connect hook with the proxy's address), has no trusted peers, no
timeout, no way to see the real socket address, drops a header whose first
segment is shorter than 8 or 16 bytes, and lets some malformed v1 headers
raise out of C{dataReceived}.  See docs/proxies.md.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Any, Final, Iterable, Union

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress, IHandshakeListener, IProtocol, IReactorTime
from twisted.internet.interfaces import IDelayedCall, IStreamServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

from ._xclient import is_trusted

__all__ = [
    "HEADER_TIMEOUT",
    "MAX_V2_PAYLOAD",
    "V1_MAX_LENGTH",
    "V2_SIGNATURE",
    "ProxyError",
    "ProxyInfo",
    "ProxyProtocolWrapper",
    "ProxyWrappingFactory",
    "parse_proxy_header",
    "socket_peer",
    "split_haproxy",
]

log = Logger(namespace="smtphooks")

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Address = Union[IPv4Address, IPv6Address]

#: The longest v1 header, CRLF included (proxy-protocol.txt section 2.1).
V1_MAX_LENGTH: Final = 107
_V1_PREFIX: Final = b"PROXY "
#: The first 12 bytes of a v2 header.
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
#: The longest v2 address block plus TLVs we accept.  Addresses take at most
#: 216 bytes; the rest is room for TLVs (SSL details, unique ID, cloud
#: endpoint IDs), which proxies keep far below this.
MAX_V2_PAYLOAD: Final = 4096
#: Seconds a connection may take to send its header.  The sender writes it
#: at once on connect; the spec suggests "a few seconds (at least 3 ...)".
HEADER_TIMEOUT: Final = 10.0

# v2: the 13th byte is version << 4 | command, the 14th family << 4 | protocol.
_LOCAL: Final = 0x0
_PROXY: Final = 0x1
_INET: Final = 0x1
_INET6: Final = 0x2
_UNIX: Final = 0x3
_STREAM: Final = 0x1
_ADDRESS_LENGTH: Final = {_INET: 12, _INET6: 36, _UNIX: 216}


class ProxyError(Exception):
    """
    The bytes are not a valid PROXY header; the connection must be closed.
    """


@dataclass(frozen=True, slots=True)
class ProxyInfo:
    """
    What a PROXY header said.

    @ivar version: 1 or 2.
    @ivar command: C{"PROXY"} (a relayed connection) or C{"LOCAL"} (v2: the
        proxy's own connection, such as a health check).
    @ivar source: the client's address and port, or L{None} when the header
        gives none that applies (v1 C{UNKNOWN}, v2 C{LOCAL}, v2 UNSPEC, UDP or
        UNIX families): the socket's own addresses are kept then.
    @ivar destination: the address and port the client connected to, or
        L{None} like C{source}.
    @ivar tlvs: the v2 type-length-value fields, as C{(type, value)} pairs in
        order (empty for v1 and for LOCAL).
    """

    version: int
    command: str
    source: Address | None
    destination: Address | None
    tlvs: tuple[tuple[int, bytes], ...] = ()


def parse_proxy_header(data: bytes) -> tuple[ProxyInfo | None, int]:
    """
    Parse a PROXY header, v1 or v2, at the start of C{data}.

    @param data: every byte received on the connection so far.
    @return: C{(info, consumed)}: the header and its length in bytes (what
        follows belongs to the wrapped protocol), or C{(None, 0)} when
        C{data} is a valid beginning of a header that needs more bytes.
    @raise ProxyError: when C{data} cannot begin a valid header: another
        protocol, a malformed or unsupported header, a v1 line longer than
        107 bytes or not ended by CRLF, a v2 header longer than
        C{16 + MAX_V2_PAYLOAD} bytes.
    """
    if not data:
        return None, 0
    if data[0] == _V1_PREFIX[0]:
        if not data.startswith(_V1_PREFIX[: len(data)]):
            raise ProxyError("not a PROXY header")
        end = data.find(b"\r\n", 0, V1_MAX_LENGTH)
        if end < 0:
            if len(data) >= V1_MAX_LENGTH:
                raise ProxyError("PROXY v1 header without CRLF in 107 bytes")
            if b"\n" in data or b"\r" in data[:-1]:
                raise ProxyError("PROXY v1 header with a bare CR or LF")
            return None, 0
        return _parse_v1(data[:end]), end + 2
    if data[0] == V2_SIGNATURE[0]:
        if not data.startswith(V2_SIGNATURE[: len(data)]):
            raise ProxyError("not a PROXY header")
        return _parse_v2(data)
    raise ProxyError("not a PROXY header")


def _port(text: bytes) -> int:
    # Decimal, 0..65535, no leading zeros, no sign.
    if not text.isdigit() or len(text) > 5 or (len(text) > 1 and text[0] == 0x30):
        raise ProxyError("bad port in PROXY v1 header")
    port = int(text)
    if port > 65535:
        raise ProxyError("bad port in PROXY v1 header")
    return port


def _parse_v1(line: bytes) -> ProxyInfo:
    if b"\r" in line or b"\n" in line:
        raise ProxyError("PROXY v1 header with a bare CR or LF")
    parts = line.split(b" ")
    protocol = parts[1] if len(parts) > 1 else b""
    if protocol == b"UNKNOWN":
        # "the receiver must ignore anything presented before the CRLF"
        return ProxyInfo(1, "PROXY", None, None)
    if protocol not in (b"TCP4", b"TCP6") or len(parts) != 6:
        raise ProxyError("malformed PROXY v1 header")
    kind: type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address]
    kind = ipaddress.IPv4Address if protocol == b"TCP4" else ipaddress.IPv6Address
    try:
        source = kind(parts[2].decode("ascii"))
        destination = kind(parts[3].decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ProxyError("bad address in PROXY v1 header") from None
    if b"%" in parts[2] or b"%" in parts[3]:
        raise ProxyError("bad address in PROXY v1 header")
    sport, dport = _port(parts[4]), _port(parts[5])
    return ProxyInfo(1, "PROXY", _address(source, sport), _address(destination, dport))


def _address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> Address:
    if isinstance(ip, ipaddress.IPv4Address):
        return IPv4Address("TCP", str(ip), port)
    return IPv6Address("TCP", str(ip), port)


def _parse_v2(data: bytes) -> tuple[ProxyInfo | None, int]:
    if len(data) < 16:
        return None, 0
    version, command = data[12] >> 4, data[12] & 0x0F
    if version != 2:
        raise ProxyError("unsupported PROXY protocol version")
    if command not in (_LOCAL, _PROXY):
        raise ProxyError("unknown PROXY v2 command")
    (length,) = struct.unpack("!H", data[14:16])
    if length > MAX_V2_PAYLOAD:
        raise ProxyError("PROXY v2 header too long")
    size = 16 + length
    if len(data) < size:
        return None, 0
    if command == _LOCAL:
        # "must use the real connection endpoints and discard the protocol
        # block including the family which is ignored"
        return ProxyInfo(2, "LOCAL", None, None), size
    family, protocol = data[13] >> 4, data[13] & 0x0F
    if family > _UNIX or protocol > 2:
        raise ProxyError("unknown PROXY v2 address family or protocol")
    payload = data[16:size]
    if family == 0 or protocol == 0:
        # UNSPEC: keep the socket's addresses; the block has no known layout.
        return ProxyInfo(2, "PROXY", None, None), size
    used = _ADDRESS_LENGTH[family]
    if length < used:
        raise ProxyError("truncated PROXY v2 address block")
    tlvs = _parse_tlvs(payload[used:])
    if protocol != _STREAM or family == _UNIX:
        # Valid, but not a TCP client: fall back to the socket's addresses
        # as the spec allows.
        return ProxyInfo(2, "PROXY", None, None, tlvs), size
    if family == _INET:
        src, dst, sport, dport = struct.unpack("!4s4sHH", payload[:12])
        source: Address = IPv4Address("TCP", str(ipaddress.IPv4Address(src)), sport)
        destination: Address = IPv4Address("TCP", str(ipaddress.IPv4Address(dst)), dport)
    else:
        src, dst, sport, dport = struct.unpack("!16s16sHH", payload[:36])
        source = IPv6Address("TCP", str(ipaddress.IPv6Address(src)), sport)
        destination = IPv6Address("TCP", str(ipaddress.IPv6Address(dst)), dport)
    return ProxyInfo(2, "PROXY", source, destination, tlvs), size


def _parse_tlvs(data: bytes) -> tuple[tuple[int, bytes], ...]:
    out = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < 3:
            raise ProxyError("truncated PROXY v2 TLV")
        kind = data[pos]
        (length,) = struct.unpack("!H", data[pos + 1 : pos + 3])
        end = pos + 3 + length
        if end > len(data):
            raise ProxyError("truncated PROXY v2 TLV")
        out.append((kind, data[pos + 3 : end]))
        pos = end
    return tuple(out)


# -- the wrapper ---------------------------------------------------------------


def _describe(address: IAddress | None) -> str:
    host = getattr(address, "host", None)
    if host is not None:
        return f"{host}:{getattr(address, 'port', '')}"
    name = getattr(address, "name", None)
    return repr(name) if name is not None else repr(address)


# States of a ProxyProtocolWrapper
_HEADER: Final = 0  # waiting for the header
_RELAY: Final = 1  # header read, the wrapped protocol is connected
_REFUSED: Final = 2  # closing without the wrapped protocol ever connecting


@implementer(IHandshakeListener)
class ProxyProtocolWrapper(ProtocolWrapper):
    """
    Reads the PROXY header of one connection, then hands the connection to
    the wrapped protocol, acting as its transport.

    Every transport method the wrapped protocol uses passes through
    (C{write}, C{registerProducer}, C{pauseProducing}, C{abortConnection},
    C{startTLS}, C{getHandle}, ...); C{getPeer}/C{getHost} give the
    addresses from the header.  After C{startTLS} the TLS layer sits between
    the socket and this wrapper, and this wrapper relays
    C{handshakeCompleted} to the wrapped protocol.

    @ivar proxy_info: the header, once read.
    @ivar real_peer: the socket's peer address (the proxy).
    @ivar real_host: the socket's own address.
    """

    factory: ProxyWrappingFactory

    def __init__(self, factory: ProxyWrappingFactory, wrappedProtocol: IProtocol) -> None:
        super().__init__(factory, wrappedProtocol)
        self.proxy_info: ProxyInfo | None = None
        self.real_peer: IAddress | None = None
        self.real_host: IAddress | None = None
        self._state = _HEADER
        self._buffer = b""
        self._timer: IDelayedCall | None = None

    def makeConnection(self, transport: Any) -> None:
        """
        Check the peer and start waiting for the header; the wrapped protocol
        is connected later, by L{dataReceived}.
        """
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)  # type: ignore[no-untyped-call]
        self.factory.registerProtocol(self)  # type: ignore[no-untyped-call]
        self.real_peer = transport.getPeer()
        self.real_host = transport.getHost()
        if not self.factory.admits(self.real_peer):
            self._refuse("PROXY header from an untrusted peer")
            return
        self._timer = self.factory.clock.callLater(self.factory.timeout, self._timed_out)

    def dataReceived(self, data: bytes) -> None:
        if self._state == _RELAY:
            self.wrappedProtocol.dataReceived(data)
            return
        if self._state != _HEADER:
            return
        buffer = self._buffer + data if self._buffer else data
        try:
            info, used = parse_proxy_header(buffer)
        except ProxyError as e:
            self._refuse(str(e))
            return
        if info is None:
            self._buffer = buffer  # bounded: the parser refuses long headers
            return
        self._buffer = b""
        self._cancel_timer()
        self.proxy_info = info
        self._state = _RELAY
        self.wrappedProtocol.makeConnection(self)  # type: ignore[arg-type]
        rest = buffer[used:]
        if rest:
            self.wrappedProtocol.dataReceived(rest)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self._cancel_timer()
        self._buffer = b""
        self.factory.unregisterProtocol(self)  # type: ignore[no-untyped-call]
        if self._state == _RELAY:
            self.wrappedProtocol.connectionLost(reason)
        self._state = _REFUSED
        # Break the reference cycle, as ProtocolWrapper does.
        self.wrappedProtocol = None  # type: ignore[assignment]

    def getPeer(self) -> IAddress:
        info = self.proxy_info
        if info is not None and info.source is not None:
            return info.source
        assert self.transport is not None
        return self.transport.getPeer()

    def getHost(self) -> IAddress:
        info = self.proxy_info
        if info is not None and info.destination is not None:
            return info.destination
        assert self.transport is not None
        return self.transport.getHost()

    def handshakeCompleted(self) -> None:
        """
        The TLS layer that C{startTLS} put under this wrapper finished its
        handshake: tell the wrapped protocol.
        """
        wrapped = self.wrappedProtocol
        if wrapped is not None and IHandshakeListener.providedBy(wrapped):
            wrapped.handshakeCompleted()

    def close_pending(self) -> None:
        """
        Close the connection if it is still waiting for its header.
        """
        if self._state == _HEADER:
            self._refuse("server closing")

    def _timed_out(self) -> None:
        self._timer = None
        if self._state == _HEADER:
            self._refuse(f"no PROXY header within {self.factory.timeout:g} seconds")

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _refuse(self, reason: str) -> None:
        # Close without a word: nothing may be said before the header.
        self._state = _REFUSED
        self._buffer = b""
        self._cancel_timer()
        log.info(
            "{reason}; closing the connection from {peer}",
            reason=reason,
            peer=_describe(self.real_peer),
        )
        if self.transport is not None:
            self.transport.loseConnection()


class ProxyWrappingFactory(WrappingFactory[ProxyProtocolWrapper]):
    """
    Puts a PROXY protocol reader (v1 and v2) in front of every connection
    of a factory.

    The wrapped factory's protocol is connected once a valid header was
    read; a connection that is refused (peer not trusted, header missing,
    malformed, or late) is closed without the wrapped factory's protocol
    ever being connected, so it sees no C{connectionMade} and no
    C{connectionLost}.
    """

    protocol = ProxyProtocolWrapper

    def __init__(
        self,
        wrapped_factory: Factory,
        trusted: bool | Iterable[Network | str],
        clock: IReactorTime,
        timeout: float = HEADER_TIMEOUT,
    ) -> None:
        """
        @param wrapped_factory: the factory whose protocols get the
            connections once their header was read.
        @param trusted: L{True} to take a header from any peer, or the
            networks (C{ipaddress} networks or CIDR strings) of the proxies
            allowed to connect; other peers are closed at once.
        @param clock: the reactor's clock, for the header timeout.
        @param timeout: seconds a connection may take to send its header.
        @raise ValueError: if C{trusted} is L{False} or holds something that
            is not a network, or C{timeout} is not positive.
        """
        super().__init__(wrapped_factory)  # type: ignore[no-untyped-call]
        if trusted is False:
            raise ValueError("ProxyWrappingFactory needs trusted=True or a list of networks")
        self.trusted: bool | tuple[Network, ...]
        if trusted is True:
            self.trusted = True
        else:
            networks: list[Network] = []
            for entry in trusted:
                if isinstance(entry, str):
                    entry = ipaddress.ip_network(entry.strip(), strict=False)
                if not isinstance(entry, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
                    raise ValueError(f"trusted: {entry!r} is not a network")
                networks.append(entry)
            self.trusted = tuple(networks)
        if not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        self.clock = clock
        self.timeout = float(timeout)

    def buildProtocol(  # type: ignore[override]
        self, addr: IAddress | None
    ) -> ProxyProtocolWrapper | None:
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        return self.protocol(self, wrapped)

    def admits(self, peer: IAddress) -> bool:
        """
        Whether a peer may send a PROXY header at all.
        """
        if self.trusted is True:
            return True
        return is_trusted(str(getattr(peer, "host", "") or ""), self.trusted)

    def close_pending(self) -> None:
        """
        Close every connection still waiting for its header (for a server
        that is shutting down).
        """
        for protocol in list(self.protocols):
            protocol.close_pending()


def socket_peer(transport: Any) -> IAddress | None:
    """
    The address of the socket's peer under a transport: the proxy's, when
    the connection came through L{ProxyWrappingFactory}, else the same as
    C{transport.getPeer()}.  For logging.
    """
    real = getattr(transport, "real_peer", None)
    if real is not None:
        return real  # type: ignore[no-any-return]
    get = getattr(transport, "getPeer", None)
    return get() if get is not None else None


def split_haproxy(
    endpoint: str | IStreamServerEndpoint,
) -> tuple[str | IStreamServerEndpoint, bool]:
    """
    Take Twisted's own PROXY layer off an endpoint, so that
    L{ProxyWrappingFactory} can do the job instead.

    @param endpoint: an endpoint description (C{"haproxy:tcp:25"}) or an
        endpoint, possibly made by C{twisted.protocols.haproxy.proxyEndpoint}.
    @return: C{(endpoint without the PROXY layer, whether it had one)}.
    @raise ValueError: for C{haproxy:} with nothing after it, a nested
        C{haproxy:}, or C{haproxy:ssl:}/C{haproxy:tls:} (there the TLS layer
        would come before the PROXY header, which proxies send in clear;
        use C{haproxy:tcp:...} and the C{secure} option).
    """
    if isinstance(endpoint, str):
        head, _, rest = endpoint.partition(":")
        if head.strip().lower() != "haproxy":
            return endpoint, False
        inner = rest.partition(":")[0].strip().lower()
        if not inner:
            raise ValueError(f"endpoint {endpoint!r}: nothing after 'haproxy:'")
        if inner == "haproxy":
            raise ValueError(f"endpoint {endpoint!r}: 'haproxy:' given twice")
        if inner in ("ssl", "tls"):
            raise ValueError(
                f"endpoint {endpoint!r}: the PROXY header comes before TLS; "
                "use 'haproxy:tcp:...' with the 'secure' option for implicit TLS"
            )
        return rest, True
    try:
        from twisted.protocols.haproxy._wrapper import HAProxyWrappingFactory
    except ImportError:  # pragma: no cover - a Twisted without it
        return endpoint, False
    if getattr(endpoint, "_wrapperFactory", None) is HAProxyWrappingFactory:
        inner_endpoint = getattr(endpoint, "_wrappedEndpoint", None)
        if inner_endpoint is not None:
            return inner_endpoint, True
    return endpoint, False
