"""
L{SMTPError} and the reply catalogue.

Every reply the server sends is a L{Reply}; every fixed reply lives in this
module, so the whole client-visible behaviour can be reviewed in one screen.
"""

from __future__ import annotations

import re
import textwrap
from typing import Final

__all__ = ["SMTPError", "Reply"]

_UNSAFE = re.compile(r"[\x00-\x1f\x7f]+")


def clean_text(text: str) -> str:
    """
    Make C{text} safe to put in one reply line or header: every run of
    control characters (CR and LF included) becomes one space.
    """
    return _UNSAFE.sub(" ", text).strip()


def _wrap(line: str) -> list[str]:
    # RFC 5321 4.5.3.1.5: a reply line is at most 512 octets.
    if len(line.encode("utf-8")) <= 480:
        return [line]
    return textwrap.wrap(line, 110, break_long_words=True, break_on_hyphens=False) or [""]


class Reply:
    """
    One SMTP reply: a three-digit code, an optional RFC 3463 enhanced status
    code, and text, which may span several lines.

    The wire form is computed once, with and without the enhanced code, so
    sending a catalogue reply costs one dictionary-free attribute read.

    @ivar code: the reply code.
    @ivar enhanced: the enhanced status code (C{"5.5.1"}), or L{None}.
    @ivar text: the text; line breaks make a multi-line reply.
    @ivar close: L{True} when the server closes the connection after it.
    """

    __slots__ = ("code", "enhanced", "text", "close", "plain", "extended")

    def __init__(
        self, code: int, enhanced: str | None, text: str, close: bool = False
    ) -> None:
        if not 200 <= code <= 599:
            raise ValueError(f"reply code {code!r} is not between 200 and 599")
        self.code = code
        self.enhanced = enhanced
        self.text = text
        self.close = close
        self.plain = self._render(False)
        self.extended = self._render(True)

    def _render(self, enhanced: bool) -> bytes:
        lines = [
            piece
            for line in self.text.splitlines()
            for piece in _wrap(clean_text(line))
        ] or [""]
        prefix = f"{self.enhanced} " if enhanced and self.enhanced else ""
        out = []
        last = len(lines) - 1
        for i, line in enumerate(lines):
            sep = " " if i == last else "-"
            out.append(f"{self.code}{sep}{prefix}{line}".rstrip() + "\r\n")
        return "".join(out).encode("utf-8")

    def wire(self, enhanced: bool) -> bytes:
        """
        @param enhanced: include the enhanced status code.
        @return: the reply as it goes on the wire, CRLF-terminated.
        """
        return self.extended if enhanced else self.plain

    def with_text(self, text: str) -> Reply:
        """
        @return: the same code and enhanced code with other text.
        """
        return Reply(self.code, self.enhanced, text, self.close)

    def closing(self) -> Reply:
        """
        @return: the same reply, marked to close the connection after it.
        """
        return Reply(self.code, self.enhanced, self.text, True)

    def __repr__(self) -> str:
        return f"Reply({self.code}, {self.enhanced!r}, {self.text!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Reply):
            return NotImplemented
        return (self.code, self.enhanced, self.text, self.close) == (
            other.code,
            other.enhanced,
            other.text,
            other.close,
        )

    def __hash__(self) -> int:
        return hash((self.code, self.enhanced, self.text, self.close))


_ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")


class SMTPError(Exception):
    """
    Raise this from a hook (or fail its Deferred with it) to reject the
    command with a reply the client sees.

    @ivar message: the reply text; line breaks make a multi-line reply;
        control characters are replaced before it is sent.
    @ivar code: the reply code, or L{None} for the hook's default rejection
        code (see the hooks guide).
    @ivar enhanced: the RFC 3463 enhanced status code, or L{None} to derive
        one from the code (C{"5.0.0"} for a 5xx reply).
    """

    def __init__(
        self, message: str = "", code: int | None = None, enhanced: str | None = None
    ) -> None:
        """
        @raise ValueError: if C{code} is not an integer reply code from 200
            to 599, or C{enhanced} is not of the form C{"5.7.1"}.
        """
        if code is not None and (
            isinstance(code, bool) or not isinstance(code, int) or not 200 <= code <= 599
        ):
            raise ValueError(f"SMTPError code must be an int from 200 to 599, not {code!r}")
        if enhanced is not None and not _ENHANCED.match(enhanced):
            raise ValueError(f"SMTPError enhanced code must look like '5.7.1', not {enhanced!r}")
        super().__init__(message)
        self.message = message
        self.code = code
        self.enhanced = enhanced

    @property
    def response_code(self) -> int | None:
        """
        The reply code; the same as C{code} (the name nodemailer users know).
        """
        return self.code

    def __repr__(self) -> str:
        return f"SMTPError({self.message!r}, code={self.code!r}, enhanced={self.enhanced!r})"


def reply_for_error(error: BaseException, default: Reply) -> Reply:
    """
    The reply for a rejection raised by a hook.

    @param error: an L{SMTPError}, or any exception with an integer
        C{response_code} attribute.
    @param default: the hook's default rejection, for what C{error} leaves
        unsaid.
    """
    code = getattr(error, "code", None) if isinstance(error, SMTPError) else None
    if code is None:
        code = getattr(error, "response_code", None)
    if not isinstance(code, int) or isinstance(code, bool) or not 200 <= code <= 599:
        code = default.code
    enhanced = getattr(error, "enhanced", None)
    if not isinstance(enhanced, str) or not _ENHANCED.match(enhanced):
        if code == default.code:
            enhanced = default.enhanced
        else:
            enhanced = f"{code // 100}.0.0"
    elif enhanced[0] != str(code)[0]:
        enhanced = f"{code // 100}{enhanced[1:]}"
    if isinstance(error, SMTPError):
        text = error.message
    else:
        text = str(error)
    return Reply(code, enhanced, text or default.text, default.close)


def is_rejection(error: BaseException) -> bool:
    """
    L{True} for an exception that rejects on purpose: an L{SMTPError}, or one
    with an integer C{response_code}.
    """
    if isinstance(error, SMTPError):
        return True
    code = getattr(error, "response_code", None)
    return isinstance(code, int) and not isinstance(code, bool)


# -- The catalogue ---------------------------------------------------------
# Connection-level
CLOSING: Final = Reply(221, "2.0.0", "Bye", close=True)
SHUTTING_DOWN: Final = Reply(421, "4.3.2", "Service shutting down, closing connection", close=True)
TOO_MANY_CLIENTS: Final = Reply(421, "4.7.0", "Too many connections, try again later", close=True)
TOO_MANY_FROM_IP: Final = Reply(
    421, "4.7.0", "Too many connections from your address, try again later", close=True
)
TIMEOUT: Final = Reply(421, "4.4.2", "Timeout, closing connection", close=True)
TOO_MANY_UNRECOGNIZED: Final = Reply(
    421, "4.7.0", "Too many unrecognized commands, closing connection", close=True
)
HTTP_REQUEST: Final = Reply(
    421, "4.7.0", "This is an SMTP server, not an HTTP server; closing connection", close=True
)
EARLY_TALKER: Final = Reply(
    421, "4.7.0", "Protocol error: data sent before the greeting; closing connection", close=True
)
CONNECT_REJECTED: Final = Reply(554, "5.7.1", "Connection rejected", close=True)
CONNECT_HOOK_FAILED: Final = Reply(
    421, "4.3.0", "Temporary server error, try again later", close=True
)

# Hook results
HOOK_FAILED: Final = Reply(451, "4.3.0", "Temporary server error, try again later")
HOOK_TIMEOUT: Final = Reply(451, "4.3.0", "Timed out processing the command, try again later")
MAIL_REJECTED: Final = Reply(550, "5.7.1", "Sender rejected")
RCPT_REJECTED: Final = Reply(550, "5.1.1", "Recipient rejected")
DATA_REJECTED: Final = Reply(450, "4.7.1", "Message rejected")

# Positive replies
OK: Final = Reply(250, "2.0.0", "OK")
MAIL_OK: Final = Reply(250, "2.1.0", "Sender OK")
RCPT_OK: Final = Reply(250, "2.1.5", "Recipient OK")
QUEUED: Final = Reply(250, "2.0.0", "OK: message queued")
START_DATA: Final = Reply(354, None, "End data with <CR><LF>.<CR><LF>")
VRFY: Final = Reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")

# Sequencing and syntax
NEED_HELO: Final = Reply(503, "5.5.1", "Error: send HELO/EHLO first")
NESTED_MAIL: Final = Reply(503, "5.5.1", "Error: nested MAIL command")
NEED_MAIL: Final = Reply(503, "5.5.1", "Error: need MAIL command")
NEED_RCPT: Final = Reply(503, "5.5.1", "Error: need RCPT command")
BAD_SEQUENCE: Final = Reply(503, "5.5.1", "Error: bad sequence of commands")
UNKNOWN_COMMAND: Final = Reply(500, "5.5.2", "Error: command not recognized")
LINE_TOO_LONG: Final = Reply(500, "5.5.2", "Line too long")
SYNTAX: Final = Reply(501, "5.5.4", "Syntax error in parameters or arguments")
HELO_SYNTAX: Final = Reply(501, "5.5.4", "Syntax: HELO hostname")
NO_ARGUMENTS: Final = Reply(501, "5.5.4", "Syntax error: this command takes no arguments")
MAIL_SYNTAX: Final = Reply(501, "5.5.4", "Syntax: MAIL FROM:<address>")
RCPT_SYNTAX: Final = Reply(501, "5.5.4", "Syntax: RCPT TO:<address>")
BAD_SENDER: Final = Reply(501, "5.1.7", "Bad sender address syntax")
BAD_RECIPIENT: Final = Reply(501, "5.1.3", "Bad recipient address syntax")
BAD_PARAMETER_VALUE: Final = Reply(501, "5.5.4", "Bad parameter value")
UNKNOWN_PARAMETER: Final = Reply(555, "5.5.4", "Unsupported parameter")
NON_ASCII_ADDRESS: Final = Reply(
    553, "5.6.7", "Non-ASCII address requires the SMTPUTF8 parameter"
)
NON_ASCII_ADDRESS_NO_UTF8: Final = Reply(
    553, "5.6.7", "Non-ASCII addresses are not accepted here"
)

# Limits
SIZE_EXCEEDED: Final = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
TOO_MANY_RECIPIENTS: Final = Reply(452, "4.5.3", "Too many recipients")

# TLS
READY_FOR_TLS: Final = Reply(220, "2.0.0", "Ready to start TLS")
TLS_ACTIVE: Final = Reply(503, "5.5.1", "Error: TLS already active")
TLS_REJECTED: Final = Reply(554, "5.7.0", "TLS session rejected", close=True)

# AUTH
AUTH_OK: Final = Reply(235, "2.7.0", "Authentication successful")
AUTH_FAILED: Final = Reply(535, "5.7.8", "Authentication credentials invalid")
AUTH_TEMPORARY: Final = Reply(454, "4.7.0", "Temporary authentication failure")
AUTH_CANCELLED: Final = Reply(501, "5.0.0", "Authentication cancelled")
AUTH_BAD_BASE64: Final = Reply(501, "5.5.2", "Invalid base64 data")
AUTH_MALFORMED: Final = Reply(501, "5.5.4", "Malformed authentication data")
AUTH_SYNTAX: Final = Reply(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")
AUTH_UNKNOWN_MECHANISM: Final = Reply(504, "5.5.4", "Unrecognized authentication type")
AUTH_ALREADY: Final = Reply(503, "5.5.1", "Error: already authenticated")
AUTH_IN_TRANSACTION: Final = Reply(
    503, "5.5.1", "Error: AUTH is not permitted during a mail transaction"
)
ENCRYPTION_REQUIRED: Final = Reply(
    538, "5.7.11", "Encryption required for requested authentication mechanism"
)
AUTH_REQUIRED: Final = Reply(530, "5.7.0", "Authentication required")
TOO_MANY_UNAUTHENTICATED: Final = Reply(
    421, "4.7.0", "Too many unauthenticated commands, closing connection", close=True
)

# CHUNKING
CHUNK_OK: Final = Reply(250, "2.0.0", "Chunk received")
BDAT_SYNTAX: Final = Reply(501, "5.5.4", "Syntax: BDAT size [LAST]")
DATA_AFTER_BDAT: Final = Reply(503, "5.5.1", "Error: DATA is not allowed after BDAT")
BINARYMIME_NEEDS_BDAT: Final = Reply(503, "5.5.1", "Error: BODY=BINARYMIME requires BDAT")
TOO_SLOW: Final = Reply(
    421, "4.4.2", "Timeout: the command or message took too long, closing connection", close=True
)

# XCLIENT and XFORWARD (Postfix's XCLIENT_README and XFORWARD_README)
XCLIENT_DENIED: Final = Reply(550, "5.7.0", "Error: insufficient authorization")
XCLIENT_IN_TRANSACTION: Final = Reply(503, "5.5.1", "Error: MAIL transaction in progress")
XCLIENT_SYNTAX: Final = Reply(501, "5.5.4", "Syntax: XCLIENT attribute=value ...")
XATTR_EXPECTED: Final = Reply(501, "5.5.4", "Error: attribute=value expected")
XATTR_TOO_LONG: Final = Reply(501, "5.5.4", "Error: attribute value too long")
XATTR_BAD_NAME: Final = Reply(501, "5.5.4", "Error: bad attribute name")
XATTR_BAD_VALUE: Final = Reply(501, "5.5.4", "Error: bad attribute value")
AUTH_NEEDS_EHLO: Final = Reply(503, "5.5.1", "Error: AUTH needs EHLO first")
