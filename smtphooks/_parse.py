"""
The sans-IO parsing half of the server: command lines, MAIL/RCPT paths and
their ESMTP parameters, xtext, and the end-of-data scanner for DATA.

Nothing here does I/O or imports Twisted: every function takes bytes (or
text) and returns values, or raises L{ParseError} carrying the catalogue
reply the protocol should send.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final

from . import _errors
from ._errors import Reply

__all__ = [
    "ParseError",
    "PathArgs",
    "DataScanner",
    "split_command",
    "parse_mail",
    "parse_rcpt",
    "xtext_decode",
    "xtext_encode",
    "dot_stuff",
]


class ParseError(Exception):
    """
    The input is not valid; the client gets C{reply}.

    @ivar reply: the catalogue reply to send.
    """

    reply: Reply

    def __init__(self, reply: Reply) -> None:
        """
        @param reply: the catalogue reply to send (a constant of
            L{smtphooks._errors}, possibly with more precise text).
        """
        super().__init__(reply)
        self.reply = reply


# -- Command lines -----------------------------------------------------------


def split_command(line: bytes) -> tuple[bytes, bytes]:
    """
    Split one command line into its verb and its argument.

    @param line: the command line, without its line ending.
    @return: C{(verb, argument)}: the verb upper-cased (ASCII only), the
        argument with the run of spaces after the verb and the trailing
        spaces and tabs removed (C{b""} if there is none). C{b"mail
        from:<a@b>"} gives C{(b"MAIL", b"from:<a@b>")}.
    """
    verb, _, argument = line.rstrip(b" \t").partition(b" ")
    return verb.upper(), argument.lstrip(b" ")


# -- Paths ---------------------------------------------------------------------

# RFC 6531 UTF8-non-ascii, without the C1 control characters.
_NON_ASCII = "\u00a0-\U0010ffff"
# RFC 5322 atext (the "-" escaped for the character class).
_ATEXT = "A-Za-z0-9!#$%&'*+/=?^_`{|}~\\-" + _NON_ASCII
_ATOM = f"[{_ATEXT}]+"
_DOT_STRING = f"{_ATOM}(?:\\.{_ATOM})*"
# RFC 5321 Quoted-string: qtextSMTP (%d32-33 / %d35-91 / %d93-126) or a
# quoted-pairSMTP (backslash and %d32-126).
_QUOTED = '"(?:[ !#-\\[\\]-~' + _NON_ASCII + ']|\\\\[ -~])*"'
_LET_DIG = "A-Za-z0-9" + _NON_ASCII
# Let-dig [Ldh-str], written so that it cannot backtrack.
_LABEL = f"[{_LET_DIG}]+(?:-+[{_LET_DIG}]+)*"
_DOMAIN = f"{_LABEL}(?:\\.{_LABEL})*"
# "[" 1*dcontent "]"; the content is checked by _valid_literal.
_LITERAL = "\\[[!-Z^-~]+\\]"
_ROUTE = f"@{_DOMAIN}(?:,@{_DOMAIN})*:"

_PATH: Final = re.compile(
    f"<(?:{_ROUTE})?"
    f"(?P<mailbox>(?P<local>{_DOT_STRING}|{_QUOTED})@(?P<domain>{_DOMAIN}|{_LITERAL}))>"
)
_IPV4: Final = re.compile("([0-9]{1,3})\\.([0-9]{1,3})\\.([0-9]{1,3})\\.([0-9]{1,3})")
_IPV6_CHARS: Final = re.compile("[0-9A-Fa-f:.]+")
_TAG: Final = re.compile("-*[A-Za-z0-9]+(?:-+[A-Za-z0-9]+)*")

# Lenient mode.
_CONTROL: Final = re.compile("[\x00-\x1f\x7f-\x9f]")
_QUOTED_RUN: Final = re.compile('"(?:[^"\\\\]|\\\\.)*"', re.DOTALL)
_LENIENT_ROUTE: Final = re.compile("@[^,:@\\[\\]]+(?:,@[^,:@\\[\\]]+)*:")

_MAX_LOCAL: Final = 64
_MAX_DOMAIN: Final = 255
_MAX_PATH: Final = 256


def _octets(text: str) -> int:
    """
    @return: the length of C{text} in UTF-8 octets.
    """
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def _valid_literal(content: str) -> bool:
    """
    @param content: an address literal without its brackets, made of
        RFC 5321 dcontent characters.
    @return: L{True} for an IPv4 literal, a valid C{IPv6:} literal, or a
        general literal C{tag:content}.
    """
    tag, colon, rest = content.partition(":")
    if not colon:
        match = _IPV4.fullmatch(content)
        return match is not None and all(int(part) <= 255 for part in match.groups())
    if tag.lower() == "ipv6":
        if _IPV6_CHARS.fullmatch(rest) is None:
            return False
        try:
            ipaddress.IPv6Address(rest)
        except ValueError:
            return False
        return True
    return bool(rest) and _TAG.fullmatch(tag) is not None


def _within_limits(path: int, local: str, domain: str) -> bool:
    """
    @param path: the length in octets of the path, angle brackets included.
    @return: L{True} when the path, the local part and the domain are within
        the limits of RFC 5321 section 4.5.3.1.
    """
    return (
        path <= _MAX_PATH
        and _octets(local) <= _MAX_LOCAL
        and _octets(domain) <= _MAX_DOMAIN
    )


def _mask_quotes(text: str) -> str:
    """
    @return: C{text} with every balanced quoted string replaced by as many
        C{"x"}, so that delimiters inside quotes are not seen.
    """
    if '"' not in text:
        return text
    return _QUOTED_RUN.sub(lambda m: "x" * len(m.group()), text)


def _parse_path(
    text: str, *, null: bool, postmaster: bool, lenient: bool, bad: Reply
) -> tuple[str, int]:
    """
    Parse the path at the start of C{text}.

    @param text: the argument after C{FROM:}/C{TO:} and the spaces after it;
        not empty.
    @param null: allow the null path C{<>}.
    @param postmaster: allow C{<postmaster>} without a domain.
    @param lenient: accept malformed but common addresses.
    @param bad: the reply for a bad path.
    @return: the address, and the index in C{text} after the path.
    @raise ParseError: with C{bad}.
    """
    end = 0
    address = ""
    if text[0] == "<":
        if text[1:2] == ">":
            if null:
                end = 2
        elif postmaster and text[1:11].lower() == "postmaster" and text[11:12] == ">":
            end = 12
            address = text[1:11]
        else:
            match = _PATH.match(text)
            if match is not None:
                domain = match.group("domain")
                if domain[0] != "[" or _valid_literal(domain[1:-1]):
                    end = match.end()
                    address = match.group("mailbox")
                    if not _within_limits(
                        _octets(match.group()), match.group("local"), domain
                    ):
                        raise ParseError(bad)
        if end and (end == len(text) or text[end] == " "):
            return address, end
    if lenient:
        return _parse_lenient_path(text, bad)
    raise ParseError(bad)


def _parse_lenient_path(text: str, bad: Reply) -> tuple[str, int]:
    """
    Parse a path that is not valid, but common enough to accept in lenient
    mode: the address is handed on as given (without angle brackets and
    source route).

    @param text: as for L{_parse_path}.
    @param bad: the reply for a bad path.
    @return: the address, and the index in C{text} after the path.
    @raise ParseError: with C{bad} for an empty address, local part or
        domain, control characters, spaces outside quotes, nested angle
        brackets, an address literal that is not valid, or a part over its
        length limit.
    """
    if text[0] == "<":
        # The path ends at the first ">" followed by a space or the end,
        # preferably outside quotes.
        for haystack in (_mask_quotes(text), text):
            close = haystack.find(">")
            while close >= 0 and close + 1 < len(text) and text[close + 1] != " ":
                close = haystack.find(">", close + 1)
            if close >= 0:
                break
        else:
            raise ParseError(bad)
        content = text[1:close]
        end = close + 1
    else:
        # No angle brackets: the path ends at the first space.
        end = text.find(" ")
        if end < 0:
            end = len(text)
        content = text[:end]
    masked = _mask_quotes(content)
    if (
        not content
        or _CONTROL.search(content) is not None
        or " " in masked
        or "<" in masked
        or ">" in masked
    ):
        raise ParseError(bad)
    address = content
    if content[0] == "@":
        route = _LENIENT_ROUTE.match(masked)
        if route is not None:
            address = content[route.end():]
            if not address:
                raise ParseError(bad)
    at = _mask_quotes(address).rfind("@")
    if at < 0:
        local, domain = address, ""
    else:
        local, domain = address[:at], address[at + 1:]
        if not local or not domain:
            raise ParseError(bad)
    if not _within_limits(_octets(content) + 2, local, domain) or (
        ("[" in domain or "]" in domain)
        and not (domain[0] == "[" and domain[-1] == "]" and _valid_literal(domain[1:-1]))
    ):
        raise ParseError(bad)
    return address, end


# -- ESMTP parameters ----------------------------------------------------------

# esmtp-keyword ["=" esmtp-value]; the value is printable ASCII except "="
# and space, or UTF-8 (RFC 6531).
_PARAM: Final = re.compile(
    "([A-Za-z0-9][A-Za-z0-9-]*)(?:(=)([!-<>-~" + _NON_ASCII + "]+))?"
)


def _parse_params(text: str) -> dict[str, str | bool]:
    """
    Parse ESMTP parameters.

    @param text: the parameters, separated by spaces.
    @return: the parameters: keys upper-cased, values xtext-decoded, L{True}
        for a keyword without value.
    @raise ParseError: with L{_errors.SYNTAX} for a malformed or duplicate
        parameter, with L{_errors.BAD_PARAMETER_VALUE} for bad xtext.
    """
    params: dict[str, str | bool] = {}
    for token in text.split(" "):
        if not token:
            continue
        match = _PARAM.fullmatch(token)
        if match is None:
            raise ParseError(_errors.SYNTAX.with_text(f"Bad parameter syntax: {token[:64]}"))
        keyword = match.group(1).upper()
        if keyword in params:
            raise ParseError(_errors.SYNTAX.with_text(f"Duplicate parameter {keyword}"))
        if match.group(2) is None:
            params[keyword] = True
        else:
            value = match.group(3)
            if "+" in value:
                try:
                    value = xtext_decode(value)
                except ParseError:
                    raise ParseError(
                        _errors.BAD_PARAMETER_VALUE.with_text(
                            f"Bad xtext in the value of parameter {keyword}"
                        )
                    ) from None
            params[keyword] = value
    return params


class PathArgs:
    """
    The argument of MAIL or RCPT: a path and its ESMTP parameters.

    @ivar address: the address without angle brackets and source route;
        C{""} for the null sender C{<>}; quotes of a quoted local part kept as
        given.
    @ivar params: the ESMTP parameters: keys upper-cased, values
        xtext-decoded, L{True} for a keyword without value.
    """

    __slots__ = ("address", "params")

    def __init__(self, address: str, params: dict[str, str | bool]) -> None:
        self.address = address
        self.params = params

    def __repr__(self) -> str:
        return f"PathArgs({self.address!r}, {self.params!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PathArgs):
            return NotImplemented
        return self.address == other.address and self.params == other.params

    __hash__ = None  # type: ignore[assignment]


def _parse_path_args(
    argument: bytes,
    prefix: bytes,
    syntax: Reply,
    bad: Reply,
    *,
    null: bool,
    postmaster: bool,
    lenient: bool,
) -> PathArgs:
    """
    The common part of L{parse_mail} and L{parse_rcpt}.
    """
    size = len(prefix)
    if argument[:size].upper() != prefix:
        raise ParseError(syntax)
    try:
        text = argument[size:].decode("utf-8").strip(" ")
    except UnicodeDecodeError:
        raise ParseError(bad) from None
    if not text:
        raise ParseError(syntax)
    address, end = _parse_path(text, null=null, postmaster=postmaster, lenient=lenient, bad=bad)
    if end == len(text):
        return PathArgs(address, {})
    return PathArgs(address, _parse_params(text[end:]))


# The common case, an ASCII dot-atom address without parameters, matched by
# one regular expression (a strict subset of what the full parser accepts,
# giving the same result); anything else goes to the full parser.
_ATEXT_B = rb"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL_B = rb"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_SIMPLE_PATH = (
    rb" ?<((" + _ATEXT_B + rb"(?:\." + _ATEXT_B + rb")*)@(" + _LABEL_B + rb"(?:\." + _LABEL_B + rb")*))>"
)
_SIMPLE_FROM: Final = re.compile(rb"[Ff][Rr][Oo][Mm]:" + _SIMPLE_PATH).fullmatch
_SIMPLE_TO: Final = re.compile(rb"[Tt][Oo]:" + _SIMPLE_PATH).fullmatch


def _simple_fits(match: re.Match[bytes]) -> bool:
    # RFC 5321 section 4.5.3.1: local part, domain and path lengths.
    return len(match.group(2)) <= 64 and len(match.group(3)) <= 255 and len(match.group(1)) <= 254


def parse_mail(argument: bytes, *, lenient: bool = False) -> PathArgs:
    """
    Parse the argument of MAIL: C{FROM:<reverse-path> [parameters]}.

    C{FROM:} may be in any case and be followed by spaces. The null sender
    C{<>} is allowed.

    @param argument: the argument, as returned by L{split_command}.
    @param lenient: accept malformed but common addresses (dots out of
        place, stray quotes, no angle brackets, a trailing dot on the
        domain, no domain) and hand them on as given.
    @return: the address and the parameters.
    @raise ParseError: with L{_errors.MAIL_SYNTAX} when C{FROM:} or the path
        is missing, L{_errors.BAD_SENDER} for a bad path (or invalid UTF-8),
        L{_errors.SYNTAX} for bad parameter syntax or a duplicate parameter,
        L{_errors.BAD_PARAMETER_VALUE} for a value that is not valid xtext.
    """
    simple = _SIMPLE_FROM(argument)
    if simple is not None and _simple_fits(simple):
        return PathArgs(simple.group(1).decode("ascii"), {})
    return _parse_path_args(
        argument,
        b"FROM:",
        _errors.MAIL_SYNTAX,
        _errors.BAD_SENDER,
        null=True,
        postmaster=False,
        lenient=lenient,
    )


def parse_rcpt(argument: bytes, *, lenient: bool = False) -> PathArgs:
    """
    Parse the argument of RCPT: C{TO:<forward-path> [parameters]}.

    C{TO:} may be in any case and be followed by spaces. C{<postmaster>}
    (in any case) is allowed without a domain; C{<>} is not.

    @param argument: the argument, as returned by L{split_command}.
    @param lenient: as for L{parse_mail}.
    @return: the address and the parameters.
    @raise ParseError: with L{_errors.RCPT_SYNTAX} when C{TO:} or the path is
        missing, L{_errors.BAD_RECIPIENT} for a bad path (or invalid UTF-8),
        otherwise as for L{parse_mail}.
    """
    simple = _SIMPLE_TO(argument)
    if simple is not None and _simple_fits(simple):
        return PathArgs(simple.group(1).decode("ascii"), {})
    return _parse_path_args(
        argument,
        b"TO:",
        _errors.RCPT_SYNTAX,
        _errors.BAD_RECIPIENT,
        null=False,
        postmaster=True,
        lenient=lenient,
    )


# -- xtext (RFC 3461 section 4) ------------------------------------------------

_HEX: Final = frozenset(b"0123456789ABCDEFabcdef")
_XTEXT_UNSAFE: Final = re.compile("[^!-*,-<>-~]+")


def xtext_decode(value: str) -> str:
    """
    Decode RFC 3461 xtext: each C{"+"} and two hexadecimal digits is the
    octet they name. The octets are decoded as UTF-8, so non-ASCII text
    encoded by L{xtext_encode} comes back, and so does non-ASCII text given
    as is. Lower-case hexadecimal digits are accepted.

    @param value: the xtext.
    @return: the decoded text.
    @raise ParseError: with L{_errors.BAD_PARAMETER_VALUE} when a C{"+"} is
        not followed by two hexadecimal digits, or the octets are not
        UTF-8.
    """
    if "+" not in value:
        return value
    first, *escaped = value.encode("utf-8").split(b"+")
    out = [first]
    for part in escaped:
        if len(part) < 2 or part[0] not in _HEX or part[1] not in _HEX:
            raise ParseError(_errors.BAD_PARAMETER_VALUE)
        out.append(bytes((int(part[:2], 16),)))
        out.append(part[2:])
    try:
        return b"".join(out).decode("utf-8")
    except UnicodeDecodeError:
        raise ParseError(_errors.BAD_PARAMETER_VALUE) from None


def _hexchars(match: re.Match[str]) -> str:
    return "".join(f"+{octet:02X}" for octet in match.group().encode("utf-8"))


def xtext_encode(value: str) -> str:
    """
    Encode text as RFC 3461 xtext: C{"+"}, C{"="}, and every character that
    is not printable ASCII becomes C{"+XX"} for each octet of its UTF-8
    encoding.

    @param value: the text.
    @return: the xtext.
    """
    return _XTEXT_UNSAFE.sub(_hexchars, value)


# -- DATA (RFC 5321 section 4.5.2) ---------------------------------------------


# DataScanner loops over the lines that start with "." (one bytes.find each),
# unless they are dense: when _DOT_LINES of them fit in _DOT_SPAN bytes, it
# unstuffs the rest of the buffer with bytes.replace, which is faster then.
_DOT_LINES: Final = 32
_DOT_SPAN: Final = 32 * 160


def _partial_terminator(buf: bytes) -> int:
    """
    @return: the length of the longest end of C{buf} that is the beginning
        of a terminating C{<CRLF>.<CRLF>}: 0 to 4.
    """
    last = buf[-1:]
    if last == b"\r":
        return 4 if buf.endswith(b"\r\n.\r") else 1
    if last == b"\n":
        return 2 if buf.endswith(b"\r\n") else 0
    if last == b".":
        return 3 if buf.endswith(b"\r\n.") else 0
    return 0


class DataScanner:
    """
    Incremental end-of-data finder and dot-unstuffer for SMTP DATA (RFC 5321
    section 4.5.2).

    Feed it the bytes received after the 354 reply to DATA, split anywhere.
    Only C{<CRLF>.<CRLF>} ends the message, and only a C{"."} after a CRLF
    (or at the very start) is removed: bare CR and bare LF are data, so
    C{"\\n.\\n"} and its kin are delivered byte-exact (no SMTP smuggling).

    The work is done by C{bytes.find} over whole buffers (and
    C{bytes.replace} where many lines start with C{"."}), in time linear in
    the input; at most four bytes (a possible partial terminator) are held
    back between calls.

    @ivar done: L{True} once the end of the message has been seen; then
        L{feed} must not be called again.
    """

    __slots__ = ("done", "_pending", "_skip")

    def __init__(self) -> None:
        self.done = False
        # The CRLF that ended the DATA command line starts the first line;
        # it is held back like real data, but never delivered (_skip).
        self._pending = b"\r\n"
        self._skip = 2

    def feed(self, data: bytes) -> tuple[bytes, bytes | None]:
        """
        Scan more of the message.

        @param data: the next bytes from the client.
        @return: C{(body, rest)}: C{body} is message bytes ready to hand on,
            dot-unstuffed (possibly C{b""}); C{rest} is L{None} while the
            message continues, and the bytes after the terminating
            C{<CRLF>.<CRLF>} (possibly C{b""}) once it has been seen. The
            message includes the CRLF before the terminating C{"."}.
        @raise RuntimeError: if the message has already ended.
        """
        if self.done:
            raise RuntimeError("DataScanner.feed() called after the end of the message")
        pending = self._pending
        buf = pending + data if pending else data
        size = len(buf)
        start = self._skip
        i = buf.find(b"\r\n.")
        if i < 0:
            # The common case: no line starts with "." (so no end either).
            # Hand on all but a trailing CR or CRLF.
            hold = size - _partial_terminator(buf)
            if hold > start:
                self._skip = 0
                self._pending = buf[hold:]
                return buf[start:hold], None
            self._skip = start - hold
            self._pending = buf[hold:]
            return b"", None
        pieces: list[bytes] = []
        budget = _DOT_LINES
        mark = i
        while True:
            after = i + 3
            if after + 2 <= size:
                if buf[after] == 13 and buf[after + 1] == 10:
                    pieces.append(buf[start:i + 2])
                    return self._finish(pieces, buf[after + 2:])
            elif after == size or buf[after] == 13:
                # ".", or ".\r" at the end: it may be the terminator.
                hold = i
                break
            # A line that starts with "." and goes on: drop the ".".
            pieces.append(buf[start:i + 2])
            start = after
            budget -= 1
            if not budget and after - mark > _DOT_SPAN:
                budget = _DOT_LINES
                mark = after
            elif not budget:
                # Many lines start with ".": do the rest in bulk.
                end = buf.find(b"\r\n.\r\n", start)
                if end >= 0:
                    pieces.append(buf[start:end + 2].replace(b"\r\n.", b"\r\n"))
                    return self._finish(pieces, buf[end + 5:])
                hold = max(start, size - _partial_terminator(buf))
                pieces.append(buf[start:hold].replace(b"\r\n.", b"\r\n"))
                start = hold
                break
            i = buf.find(b"\r\n.", after)
            if i < 0:
                hold = size - _partial_terminator(buf)
                break
        # hold < start only while the initial CRLF is held back.
        if hold > start:
            pieces.append(buf[start:hold])
            self._skip = 0
        else:
            self._skip = start - hold
        self._pending = buf[hold:]
        return b"".join(pieces), None

    def _finish(self, pieces: list[bytes], rest: bytes) -> tuple[bytes, bytes]:
        """
        The end of the message has been seen.

        @param pieces: the last pieces of the body.
        @param rest: the bytes after the terminator.
        @return: the result of L{feed}.
        """
        self.done = True
        self._pending = b""
        self._skip = 0
        return b"".join(pieces), rest


def dot_stuff(body: bytes) -> bytes:
    """
    The inverse of L{DataScanner}, for clients and tests: the bytes to send
    after the 354 reply to deliver C{body}.

    @param body: the message.
    @return: C{body} with a C{"."} added before every C{"."} that starts a
        line (at the start, or after a CRLF), a CRLF added if C{body} does
        not end with one, and the terminating C{".\\r\\n"}.
    """
    stuffed = body.replace(b"\r\n.", b"\r\n..")
    if stuffed[:1] == b".":
        stuffed = b"." + stuffed
    if not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    return stuffed + b".\r\n"
