"""
Postfix XCLIENT and XFORWARD, sans-IO: parsing and checking their attributes,
applying them to a L{Session}, and deciding which clients may send them.

Nothing here does I/O or imports Twisted.  The parsers take the argument of
the command (the bytes after the verb) and return the attributes, or raise
L{ParseError} carrying the catalogue reply (C{501 5.5.4}) the protocol
sends.  Every value that comes back is ASCII without spaces or control
characters (only C{LOGIN} may hold other printable text), so none of them can
break a header line or a log line.

References: Postfix's XCLIENT_README and XFORWARD_README.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Callable, Final, Iterable, Mapping, Union

from . import _errors as R
from ._parse import ParseError, xtext_decode
from ._session import Envelope, Session

__all__ = [
    "TEMPUNAVAIL",
    "UNAVAILABLE",
    "XCLIENT_ATTRIBUTES",
    "XCLIENT_KEYWORD",
    "XFORWARD_ATTRIBUTES",
    "XFORWARD_KEYWORD",
    "apply_xclient",
    "apply_xforward",
    "is_trusted",
    "parse_xclient",
    "parse_xforward",
]

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

#: The value that says an attribute is not known.
UNAVAILABLE: Final = "[UNAVAILABLE]"
#: The XCLIENT C{NAME} value that says the name lookup failed temporarily.
TEMPUNAVAIL: Final = "[TEMPUNAVAIL]"

#: Attributes of XCLIENT, in the order the EHLO keyword lists them.
XCLIENT_ATTRIBUTES: Final = (
    "NAME", "ADDR", "PORT", "PROTO", "HELO", "LOGIN", "DESTADDR", "DESTPORT"
)
#: Attributes of XFORWARD, in the order the EHLO keyword lists them.
XFORWARD_ATTRIBUTES: Final = ("NAME", "ADDR", "PORT", "PROTO", "HELO", "IDENT", "SOURCE")
#: The EHLO lines that advertise the two extensions (to trusted clients only).
XCLIENT_KEYWORD: Final = "XCLIENT " + " ".join(XCLIENT_ATTRIBUTES)
XFORWARD_KEYWORD: Final = "XFORWARD " + " ".join(XFORWARD_ATTRIBUTES)

#: The longest attribute value, before xtext decoding (Postfix's limit).
MAX_VALUE: Final = 255
#: The longest XFORWARD PROTO value.
MAX_PROTO: Final = 64
#: Characters Postfix "neuters" in HELO and similar values because they are
#: special in message headers; we refuse them instead.
_HEADER_SPECIALS: Final = frozenset('<>()\\";@')
_LABEL: Final = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?\Z")


# -- values ------------------------------------------------------------------

# A check takes the decoded value and returns it normalized, or None.
Check = Callable[[str], Union[str, None]]


def _hostname(value: str) -> str | None:
    """
    A host name as Postfix's valid_hostname() accepts it: labels of letters,
    digits, C{_} and inner C{-}, at most 63 long, separated by single dots,
    255 in all, and not all digits (that would be an address).
    """
    if not value.isascii() or len(value) > MAX_VALUE:
        return None
    labels = value.split(".")
    if not all(len(label) <= 63 and _LABEL.match(label) for label in labels):
        return None
    if all(label.isdigit() for label in labels):
        return None
    return value


def _address(value: str) -> str | None:
    """
    An IPv4 address, or an IPv6 address with or without its C{IPV6:} prefix
    (any case); normalized to the plain compressed form.
    """
    text = value
    v6 = text[:5].upper() == "IPV6:"
    if v6:
        text = text[5:]
    if not text.isascii() or "%" in text:
        return None
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if v6 and ip.version != 6:
        return None
    return str(ip)


def _port(value: str) -> str | None:
    if value.isascii() and value.isdigit() and len(value) <= 5 and int(value) <= 65535:
        return str(int(value))
    return None


def _token(limit: int) -> Check:
    """
    Printable ASCII without spaces and without the characters that are
    special in headers, at most C{limit} long.
    """

    def check(value: str) -> str | None:
        if not value or len(value) > limit:
            return None
        for c in value:
            if not "!" <= c <= "~" or c in _HEADER_SPECIALS:
                return None
        return value

    return check


def _login(value: str) -> str | None:
    """
    A SASL login name: any printable text (UTF-8 allowed), no control
    characters, at most 255 characters.
    """
    if not value or len(value) > MAX_VALUE or not value.isprintable():
        return None
    return value


def _one_of(*words: str) -> Check:
    def check(value: str) -> str | None:
        upper = value.upper()
        return upper if upper in words else None

    return check


_XCLIENT_CHECKS: Final[Mapping[str, Check]] = {
    "NAME": _hostname,
    "ADDR": _address,
    "PORT": _port,
    "PROTO": _one_of("SMTP", "ESMTP"),
    "HELO": _token(MAX_VALUE),
    "LOGIN": _login,
    "DESTADDR": _address,
    "DESTPORT": _port,
}

_XFORWARD_CHECKS: Final[Mapping[str, Check]] = {
    "NAME": _hostname,
    "ADDR": _address,
    "PORT": _port,
    "PROTO": _token(MAX_PROTO),
    "HELO": _token(MAX_VALUE),
    "IDENT": _token(MAX_VALUE),
    "SOURCE": _one_of("LOCAL", "REMOTE"),
}

#: Special values, upper-cased, each with the attributes that accept it.
_XCLIENT_SPECIAL: Final[Mapping[str, frozenset[str]]] = {
    UNAVAILABLE: frozenset(XCLIENT_ATTRIBUTES) - {"PROTO"},
    TEMPUNAVAIL: frozenset({"NAME"}),
}
_XFORWARD_SPECIAL: Final[Mapping[str, frozenset[str]]] = {
    UNAVAILABLE: frozenset(XFORWARD_ATTRIBUTES),
}


def _parse(
    command: str,
    argument: bytes,
    checks: Mapping[str, Check],
    special: Mapping[str, frozenset[str]],
) -> dict[str, str]:
    if not argument or any(not 0x20 <= byte < 0x7F for byte in argument):
        # xtext is printable ASCII; anything else is not this command.
        raise ParseError(R.XCLIENT_SYNTAX.with_text(f"Syntax: {command} attribute=value ..."))
    attributes: dict[str, str] = {}
    for item in argument.decode("ascii").split():
        name, sep, raw = item.partition("=")
        if not sep or not raw:
            raise ParseError(R.XATTR_EXPECTED)
        key = name.upper()
        check = checks.get(key)
        if check is None:
            shown = name if len(name) <= 32 else name[:32] + "..."
            raise ParseError(R.XATTR_BAD_NAME.with_text(f"Bad {command} attribute name: {shown}"))
        if len(raw) > MAX_VALUE:
            raise ParseError(R.XATTR_TOO_LONG)
        bad = R.XATTR_BAD_VALUE.with_text(f"Bad {key} syntax")
        try:
            value = xtext_decode(raw)
        except ParseError:
            raise ParseError(bad) from None
        token = value.upper()
        if token in special:
            if key not in special[token]:
                raise ParseError(bad)
            attributes[key] = token
            continue
        checked = check(value)
        if checked is None:
            raise ParseError(bad)
        attributes[key] = checked
    return attributes


def parse_xclient(argument: bytes) -> dict[str, str]:
    """
    Parse the argument of an XCLIENT command.

    @param argument: what follows C{XCLIENT }: attribute=value pairs,
        separated by spaces, values in xtext.
    @return: the attributes by upper-case name (C{NAME}, C{ADDR}, C{PORT},
        C{PROTO}, C{HELO}, C{LOGIN}, C{DESTADDR}, C{DESTPORT}); a name given
        twice keeps its last value.  Values are xtext-decoded and normalized:
        addresses without their C{IPV6:} prefix, ports without leading zeros,
        C{PROTO} upper-cased, C{[UNAVAILABLE]} (and C{[TEMPUNAVAIL]} for
        C{NAME}) upper-cased.
    @raise ParseError: with a C{501 5.5.4} reply for a missing argument, an
        unknown attribute, a pair without value, or a value that is too long
        or not valid for its attribute.
    """
    return _parse("XCLIENT", argument, _XCLIENT_CHECKS, _XCLIENT_SPECIAL)


def parse_xforward(argument: bytes) -> dict[str, str]:
    """
    Parse the argument of an XFORWARD command.

    @param argument: what follows C{XFORWARD }: attribute=value pairs,
        separated by spaces, values in xtext.
    @return: the attributes by upper-case name (C{NAME}, C{ADDR}, C{PORT},
        C{PROTO}, C{HELO}, C{IDENT}, C{SOURCE}), normalized as by
        L{parse_xclient}; C{SOURCE} is C{LOCAL} or C{REMOTE}.
    @raise ParseError: with a C{501 5.5.4} reply, as L{parse_xclient}.
    """
    return _parse("XFORWARD", argument, _XFORWARD_CHECKS, _XFORWARD_SPECIAL)


# -- applying them -----------------------------------------------------------


def _known(value: str | None) -> str | None:
    return None if value is None or value in (UNAVAILABLE, TEMPUNAVAIL) else value


def apply_xclient(session: Session, attributes: Mapping[str, str]) -> None:
    """
    Make a session what an accepted XCLIENT says it is, and start it over.

    The attributes are added to C{session.xclient} (they accumulate over
    several XCLIENT commands).  C{ADDR}, C{PORT}, C{DESTADDR}, C{DESTPORT}
    replace C{remote_address}, C{remote_port}, C{local_address},
    C{local_port} (C{""} and C{0} when unavailable).  C{NAME} replaces
    C{client_hostname}; when C{NAME} is unavailable, or C{ADDR} comes
    without C{NAME}, it becomes C{"[address]"} like a client without a
    reverse name (no lookup is made), or C{"[UNAVAILABLE]"} when the address
    is unknown too.  As Postfix does, C{HELO} and C{LOGIN} are reset
    unless given: C{host_name_appears_as} becomes C{HELO} (or C{""}),
    C{session.user} becomes C{LOGIN} (or L{None}).  The opening command, the
    envelope and the XFORWARD attributes are cleared: the client must send
    HELO/EHLO again.

    @param session: the session to change.
    @param attributes: what L{parse_xclient} returned.
    """
    session.xclient.update(attributes)
    if "ADDR" in attributes:
        session.remote_address = _known(attributes["ADDR"]) or ""
    if "PORT" in attributes:
        session.remote_port = int(_known(attributes["PORT"]) or 0)
    if "DESTADDR" in attributes:
        session.local_address = _known(attributes["DESTADDR"]) or ""
    if "DESTPORT" in attributes:
        session.local_port = int(_known(attributes["DESTPORT"]) or 0)
    if "NAME" in attributes or "ADDR" in attributes:
        address = session.remote_address
        session.client_hostname = _known(attributes.get("NAME")) or (
            f"[{address}]" if address else UNAVAILABLE
        )
    session.host_name_appears_as = _known(attributes.get("HELO")) or ""
    session.user = _known(attributes.get("LOGIN"))
    session.opening_command = ""
    session.envelope = Envelope()
    session.xforward = {}


def apply_xforward(session: Session, attributes: Mapping[str, str]) -> None:
    """
    Record the attributes of an accepted XFORWARD in C{session.xforward}.

    They accumulate until the transaction ends (end of data, RSET, HELO/EHLO,
    STARTTLS, XCLIENT), when the protocol replaces C{session.xforward} with
    an empty dict.  Nothing else in the session changes: XFORWARD only tells
    what an upstream MTA saw, for logging and headers.

    @param session: the session.
    @param attributes: what L{parse_xforward} returned.
    """
    session.xforward.update(attributes)


# -- trust -------------------------------------------------------------------


def is_trusted(address: str, setting: bool | Iterable[Network]) -> bool:
    """
    Whether a client address is allowed by a C{use_xclient}/C{use_xforward}
    style setting.

    @param address: the client's IP address as text (an IPv4-mapped IPv6
        address counts as its IPv4 address, a zone index is ignored).  An
        empty string or anything that is not an IP address (a UNIX socket
        peer, an address XCLIENT made unavailable) is never trusted.
    @param setting: L{False} (nobody), L{True} (loopback addresses only), or
        networks (C{ipaddress} objects, as the options hold them).
    @return: L{True} when the address is allowed.
    """
    if setting is False or not address:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if setting is True:
        return ip.is_loopback
    return any(ip in network for network in setting)

