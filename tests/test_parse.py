"""
Tests for L{smtphooks._parse}: command lines, MAIL/RCPT paths and
parameters, xtext, and the DATA end-of-message scanner.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from smtphooks import _errors
from smtphooks._errors import Reply
from smtphooks._parse import (
    DataScanner,
    ParseError,
    PathArgs,
    dot_stuff,
    parse_mail,
    parse_rcpt,
    split_command,
    xtext_decode,
    xtext_encode,
)

bounded = settings(max_examples=200, derandomize=True, deadline=None, database=None)

BAD_SENDER = _errors.BAD_SENDER
BAD_RECIPIENT = _errors.BAD_RECIPIENT
MAIL_SYNTAX = _errors.MAIL_SYNTAX
RCPT_SYNTAX = _errors.RCPT_SYNTAX

LONG_PATH = b"l" * 64 + b"@" + b"d." * 94 + b"d"

# (argument of MAIL, result in strict mode, result in lenient mode): a result
# is the address, or the Reply of the ParseError.
MAIL_PATHS: list[tuple[bytes, str | Reply, str | Reply]] = [
    (b"FROM:<a@example.com>", "a@example.com", "a@example.com"),
    (b"from:<a@example.com>", "a@example.com", "a@example.com"),
    (b"From:<a@example.com>", "a@example.com", "a@example.com"),
    (b"FROM: <a@example.com>", "a@example.com", "a@example.com"),
    (b"FROM:   <a@example.com>  ", "a@example.com", "a@example.com"),
    (
        b"FROM:<A.B+tag@Sub-Domain.Example>",
        "A.B+tag@Sub-Domain.Example",
        "A.B+tag@Sub-Domain.Example",
    ),
    (
        b"FROM:<!#$%&'*+/=?^_`{|}~-@example.com>",
        "!#$%&'*+/=?^_`{|}~-@example.com",
        "!#$%&'*+/=?^_`{|}~-@example.com",
    ),
    (b"FROM:<a@localhost>", "a@localhost", "a@localhost"),
    (b"FROM:<a@a--b.1.example>", "a@a--b.1.example", "a@a--b.1.example"),
    (b"FROM:<>", "", ""),
    (b"FROM: <>", "", ""),
    # Source routes are accepted and dropped.
    (b"FROM:<@a.example,@b.example:joe@c.example>", "joe@c.example", "joe@c.example"),
    (b"FROM:<@a.example:joe@c.example>", "joe@c.example", "joe@c.example"),
    # Quoted local parts keep their quotes.
    (b'FROM:<"john doe"@example.com>', '"john doe"@example.com', '"john doe"@example.com'),
    (b'FROM:<"a\\"b"@x>', '"a\\"b"@x', '"a\\"b"@x'),
    (b'FROM:<"a>b"@x>', '"a>b"@x', '"a>b"@x'),
    (b'FROM:<"a@b"@x>', '"a@b"@x', '"a@b"@x'),
    (b'FROM:<""@x>', '""@x', '""@x'),
    # Address literals.
    (b"FROM:<a@[192.0.2.1]>", "a@[192.0.2.1]", "a@[192.0.2.1]"),
    (b"FROM:<a@[255.255.255.255]>", "a@[255.255.255.255]", "a@[255.255.255.255]"),
    (b"FROM:<a@[IPv6:2001:db8::1]>", "a@[IPv6:2001:db8::1]", "a@[IPv6:2001:db8::1]"),
    (b"FROM:<a@[ipv6:::1]>", "a@[ipv6:::1]", "a@[ipv6:::1]"),
    (b"FROM:<a@[IPv6:::ffff:192.0.2.1]>", "a@[IPv6:::ffff:192.0.2.1]", "a@[IPv6:::ffff:192.0.2.1]"),
    (b"FROM:<a@[x-tag:any.thing]>", "a@[x-tag:any.thing]", "a@[x-tag:any.thing]"),
    (b"FROM:<a@[300.1.1.1]>", BAD_SENDER, BAD_SENDER),
    (b"FROM:<a@[1.2.3]>", BAD_SENDER, BAD_SENDER),
    (b"FROM:<a@[IPv6:1:2:3]>", BAD_SENDER, BAD_SENDER),
    (b"FROM:<a@[IPv6:fe80::1%eth0]>", BAD_SENDER, BAD_SENDER),
    (b"FROM:<a@[IPv6:]>", BAD_SENDER, BAD_SENDER),
    (b"FROM:<a@[:abc]>", BAD_SENDER, BAD_SENDER),
    (b"FROM:<a@[tag-:abc]>", BAD_SENDER, BAD_SENDER),
    (b"FROM:<a@[1.2.3.4>", BAD_SENDER, BAD_SENDER),
    # SMTPUTF8 (RFC 6531).
    ("FROM:<用户@例子.广告>".encode(), "用户@例子.广告", "用户@例子.广告"),
    ("FROM:<josé@exämple.com>".encode(), "josé@exämple.com", "josé@exämple.com"),
    ('FROM:<"jo sé"@x>'.encode(), '"jo sé"@x', '"jo sé"@x'),
    (b"FROM:<\xff@example.com>", BAD_SENDER, BAD_SENDER),
    (b"FROM:<\xc3@example.com>", BAD_SENDER, BAD_SENDER),
    (b"FROM:<\xc2\x85@example.com>", BAD_SENDER, BAD_SENDER),
    # Malformed but common: lenient only, handed on as given.
    (b"FROM:<ilo.@host>", BAD_SENDER, "ilo.@host"),
    (b"FROM:<a..b@host>", BAD_SENDER, "a..b@host"),
    (b"FROM:<.a@host>", BAD_SENDER, ".a@host"),
    (b"FROM:<a@host.>", BAD_SENDER, "a@host."),
    (b"FROM:a@b", BAD_SENDER, "a@b"),
    (b"FROM: a@b", BAD_SENDER, "a@b"),
    (b'FROM:<"john@x>', BAD_SENDER, '"john@x'),
    (b'FROM:<jo"hn@x>', BAD_SENDER, 'jo"hn@x'),
    (b'FROM:<"a b".c@x>', BAD_SENDER, '"a b".c@x'),
    (b"FROM:<a@-host>", BAD_SENDER, "a@-host"),
    (b"FROM:<a@ho_st.example>", BAD_SENDER, "a@ho_st.example"),
    (b"FROM:<postmaster>", BAD_SENDER, "postmaster"),
    (b"FROM:<@route.example:ilo.@host>", BAD_SENDER, "ilo.@host"),
    # Bad in both modes.
    (b"FROM:<a b@x>", BAD_SENDER, BAD_SENDER),
    (b"FROM:<a@b c>", BAD_SENDER, BAD_SENDER),
    (b'FROM:<"a b@x>', BAD_SENDER, BAD_SENDER),
    (b"FROM:<a\x01b@x>", BAD_SENDER, BAD_SENDER),
    (b"FROM:<a\x7fb@x>", BAD_SENDER, BAD_SENDER),
    (b'FROM:<"a\x00"@x>', BAD_SENDER, BAD_SENDER),
    (b"FROM:<<a@b>>", BAD_SENDER, BAD_SENDER),
    (b"FROM:<a@b>>", BAD_SENDER, BAD_SENDER),
    (b"FROM:<a<b@c>", BAD_SENDER, BAD_SENDER),
    (b"FROM:<a@b", BAD_SENDER, BAD_SENDER),
    (b"FROM:a@b>", BAD_SENDER, BAD_SENDER),
    (b"FROM:<a@b>x", BAD_SENDER, BAD_SENDER),
    (b"FROM:<a@b>\tSIZE=1", BAD_SENDER, BAD_SENDER),
    (b"FROM:<a@>", BAD_SENDER, BAD_SENDER),
    (b"FROM:<@b>", BAD_SENDER, BAD_SENDER),
    (b"FROM:<@a.example:>", BAD_SENDER, BAD_SENDER),
    (b"FROM:<<>>", BAD_SENDER, BAD_SENDER),
    (b"FROM:<>x", BAD_SENDER, BAD_SENDER),
    # Length limits: 64 octets of local part, 255 of domain, 256 of path.
    (b"FROM:<" + b"l" * 64 + b"@x>", "l" * 64 + "@x", "l" * 64 + "@x"),
    (b"FROM:<" + b"l" * 65 + b"@x>", BAD_SENDER, BAD_SENDER),
    ("FROM:<".encode() + "é".encode() * 32 + b"@x>", "é" * 32 + "@x", "é" * 32 + "@x"),
    ("FROM:<".encode() + "é".encode() * 33 + b"@x>", BAD_SENDER, BAD_SENDER),
    (b"FROM:<l.@" + b"d" * 256 + b">", BAD_SENDER, BAD_SENDER),
    # "<" + 64 + "@" + 189 + ">" is 256 octets.
    (b"FROM:<" + LONG_PATH + b">", LONG_PATH.decode(), LONG_PATH.decode()),
    (b"FROM:<" + LONG_PATH + b"d>", BAD_SENDER, BAD_SENDER),
    (b"FROM:" + LONG_PATH, BAD_SENDER, LONG_PATH.decode()),
    (b"FROM:" + LONG_PATH + b"d", BAD_SENDER, BAD_SENDER),
    # No FROM:, or no path.
    (b"", MAIL_SYNTAX, MAIL_SYNTAX),
    (b"FROM", MAIL_SYNTAX, MAIL_SYNTAX),
    (b"FROM <a@b>", MAIL_SYNTAX, MAIL_SYNTAX),
    (b"FROM;<a@b>", MAIL_SYNTAX, MAIL_SYNTAX),
    (b"TO:<a@b>", MAIL_SYNTAX, MAIL_SYNTAX),
    (b"\xff", MAIL_SYNTAX, MAIL_SYNTAX),
    (b"FROM:", MAIL_SYNTAX, MAIL_SYNTAX),
    (b"FROM:   ", MAIL_SYNTAX, MAIL_SYNTAX),
]

RCPT_PATHS: list[tuple[bytes, str | Reply, str | Reply]] = [
    (b"TO:<a@example.com>", "a@example.com", "a@example.com"),
    (b"to: <a@example.com>", "a@example.com", "a@example.com"),
    (b"TO:<postmaster>", "postmaster", "postmaster"),
    (b"TO:<Postmaster>", "Postmaster", "Postmaster"),
    (b"TO:<POSTMASTER> NOTIFY=NEVER", "POSTMASTER", "POSTMASTER"),
    (b"TO:<Postmaster@example.com>", "Postmaster@example.com", "Postmaster@example.com"),
    (b"TO:<@a.example:joe@c.example>", "joe@c.example", "joe@c.example"),
    ("TO:<用户@例子.广告>".encode(), "用户@例子.广告", "用户@例子.广告"),
    (b"TO:<>", BAD_RECIPIENT, BAD_RECIPIENT),
    (b"TO: <>", BAD_RECIPIENT, BAD_RECIPIENT),
    (b"TO:<postmaster", BAD_RECIPIENT, BAD_RECIPIENT),
    (b"TO:<postmasterx>", BAD_RECIPIENT, "postmasterx"),
    (b"TO:<user>", BAD_RECIPIENT, "user"),
    (b"TO:<ilo.@host>", BAD_RECIPIENT, "ilo.@host"),
    (b"TO:a@b", BAD_RECIPIENT, "a@b"),
    (b"TO:<a b@c>", BAD_RECIPIENT, BAD_RECIPIENT),
    (b"TO:<\xff@x>", BAD_RECIPIENT, BAD_RECIPIENT),
    (b"TO:<<a@b>>", BAD_RECIPIENT, BAD_RECIPIENT),
    (b"TO:", RCPT_SYNTAX, RCPT_SYNTAX),
    (b"TO", RCPT_SYNTAX, RCPT_SYNTAX),
    (b"FROM:<a@b>", RCPT_SYNTAX, RCPT_SYNTAX),
    (b"", RCPT_SYNTAX, RCPT_SYNTAX),
]

# (argument of MAIL, parameters or the Reply of the ParseError)
PARAMS: list[tuple[bytes, dict[str, str | bool] | Reply]] = [
    (b"FROM:<a@b>", {}),
    (b"FROM:<a@b> ", {}),
    (
        b"FROM:<a@b> SIZE=1000 BODY=8BITMIME SMTPUTF8",
        {"SIZE": "1000", "BODY": "8BITMIME", "SMTPUTF8": True},
    ),
    (b"FROM:<> size=1 smtputf8 Body=7BIT", {"SIZE": "1", "SMTPUTF8": True, "BODY": "7BIT"}),
    (b"FROM:<a@b>  SIZE=1   RET=HDRS  ", {"SIZE": "1", "RET": "HDRS"}),
    (b"FROM:<a@b> ENVID=a+2Bb", {"ENVID": "a+b"}),
    (b"FROM:<a@b> ENVID=a+2bb", {"ENVID": "a+b"}),
    (b"FROM:<a@b> ENVID=+3D+20+2B", {"ENVID": "= +"}),
    (b"FROM:<a@b> AUTH=<>", {"AUTH": "<>"}),
    (b"FROM:<a@b> X-PARAM-1=a<b>c", {"X-PARAM-1": "a<b>c"}),
    (b"FROM:<a@b> 1X", {"1X": True}),
    ("FROM:<a@b> X=é+C3+A9".encode(), {"X": "éé"}),
    (b"FROM:<a@b> SIZE=1 size=2", _errors.SYNTAX.with_text("Duplicate parameter SIZE")),
    (b"FROM:<a@b> SMTPUTF8 smtputf8", _errors.SYNTAX.with_text("Duplicate parameter SMTPUTF8")),
    (b"FROM:<a@b> =x", _errors.SYNTAX.with_text("Bad parameter syntax: =x")),
    (b"FROM:<a@b> A==", _errors.SYNTAX.with_text("Bad parameter syntax: A==")),
    (b"FROM:<a@b> A=", _errors.SYNTAX.with_text("Bad parameter syntax: A=")),
    (b"FROM:<a@b> A=b=c", _errors.SYNTAX.with_text("Bad parameter syntax: A=b=c")),
    (b"FROM:<a@b> -A", _errors.SYNTAX.with_text("Bad parameter syntax: -A")),
    (b"FROM:<a@b> A_B=1", _errors.SYNTAX.with_text("Bad parameter syntax: A_B=1")),
    (b"FROM:<a@b> A=\x01", _errors.SYNTAX.with_text("Bad parameter syntax: A=\x01")),
    (b"FROM:<a@b> A=b\tB=c", _errors.SYNTAX.with_text("Bad parameter syntax: A=b\tB=c")),
    (b"FROM:<a@b> \xc3\xa9", _errors.SYNTAX.with_text("Bad parameter syntax: \xe9")),
    (b"FROM:<a@b> SIZE=1 \xff", BAD_SENDER),
    (
        b"FROM:<a@b> ENVID=a+2",
        _errors.BAD_PARAMETER_VALUE.with_text("Bad xtext in the value of parameter ENVID"),
    ),
    (
        b"FROM:<a@b> ENVID=a+ZZb",
        _errors.BAD_PARAMETER_VALUE.with_text("Bad xtext in the value of parameter ENVID"),
    ),
    (
        b"FROM:<a@b> ENVID=+FF",
        _errors.BAD_PARAMETER_VALUE.with_text("Bad xtext in the value of parameter ENVID"),
    ),
]


class SplitCommandTests(SynchronousTestCase):
    """
    Tests for L{split_command}.
    """

    def test_table(self) -> None:
        """
        The verb is upper-cased; the argument starts after the first run of
        spaces and loses its trailing spaces and tabs.
        """
        table = [
            (b"MAIL FROM:<a@b>", (b"MAIL", b"FROM:<a@b>")),
            (b"mail from:<a@b>", (b"MAIL", b"from:<a@b>")),
            (b"QUIT", (b"QUIT", b"")),
            (b"QUIT ", (b"QUIT", b"")),
            (b"QUIT\t", (b"QUIT", b"")),
            (b"quit \t \t", (b"QUIT", b"")),
            (b"EHLO   host.example  ", (b"EHLO", b"host.example")),
            (b"NOOP a  b\t", (b"NOOP", b"a  b")),
            (b"NOOP \ta", (b"NOOP", b"\ta")),
            (b"", (b"", b"")),
            (b" ", (b"", b"")),
            (b"\xc3\xa9hlo x", (b"\xc3\xa9HLO", b"x")),
            (b"ehlo \xc3\xa9", (b"EHLO", b"\xc3\xa9")),
        ]
        for line, expected in table:
            self.assertEqual(split_command(line), expected, line)


class PathTests(SynchronousTestCase):
    """
    Tests for the paths of L{parse_mail} and L{parse_rcpt}.
    """

    def check(
        self,
        parse: object,
        table: list[tuple[bytes, str | Reply, str | Reply]],
    ) -> None:
        """
        Check every row of C{table} in both modes.
        """
        assert callable(parse)
        for argument, strict, lenient in table:
            for mode, expected in ((False, strict), (True, lenient)):
                case = (argument, "lenient" if mode else "strict")
                if isinstance(expected, Reply):
                    with self.assertRaises(ParseError, msg=case) as caught:
                        parse(argument, lenient=mode)
                    self.assertEqual(caught.exception.reply, expected, case)
                else:
                    self.assertEqual(parse(argument, lenient=mode).address, expected, case)

    def test_mail(self) -> None:
        """
        L{parse_mail} accepts valid reverse-paths (and malformed but common
        ones in lenient mode), and rejects the rest with the right reply.
        """
        self.check(parse_mail, MAIL_PATHS)

    def test_rcpt(self) -> None:
        """
        L{parse_rcpt} accepts valid forward-paths and C{<postmaster>}, never
        C{<>}, and rejects the rest with the right reply.
        """
        self.check(parse_rcpt, RCPT_PATHS)

    def test_result(self) -> None:
        """
        The result is a L{PathArgs} with the address and parameters.
        """
        result = parse_rcpt(b"TO:<a@b> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+2Bb@x")
        self.assertIsInstance(result, PathArgs)
        self.assertEqual(result.address, "a@b")
        self.assertEqual(result.params, {"NOTIFY": "SUCCESS,FAILURE", "ORCPT": "rfc822;a+b@x"})
        self.assertEqual(
            result, PathArgs("a@b", {"NOTIFY": "SUCCESS,FAILURE", "ORCPT": "rfc822;a+b@x"})
        )
        self.assertFalse(hasattr(result, "__dict__"))

    def test_error(self) -> None:
        """
        L{ParseError} carries its reply.
        """
        error = ParseError(_errors.SYNTAX)
        self.assertIs(error.reply, _errors.SYNTAX)
        self.assertIsInstance(error, Exception)


class ParamTests(SynchronousTestCase):
    """
    Tests for the ESMTP parameters of L{parse_mail} and L{parse_rcpt}.
    """

    def test_table(self) -> None:
        """
        Keywords are upper-cased, values xtext-decoded, bare keywords
        L{True}; bad syntax and duplicates are syntax errors, bad xtext a
        bad value, in both modes.
        """
        for argument, expected in PARAMS:
            for mode in (False, True):
                case = (argument, mode)
                if isinstance(expected, Reply):
                    with self.assertRaises(ParseError, msg=case) as caught:
                        parse_mail(argument, lenient=mode)
                    self.assertEqual(caught.exception.reply, expected, case)
                else:
                    self.assertEqual(parse_mail(argument, lenient=mode).params, expected, case)

    def test_rcpt(self) -> None:
        """
        RCPT parameters are parsed the same way.
        """
        self.assertEqual(
            parse_rcpt(b"TO:<postmaster> notify=NEVER orcpt=rfc822;+2B").params,
            {"NOTIFY": "NEVER", "ORCPT": "rfc822;+"},
        )
        with self.assertRaises(ParseError) as caught:
            parse_rcpt(b"TO:<a@b> NOTIFY=NEVER NOTIFY=NEVER")
        self.assertEqual(
            caught.exception.reply, _errors.SYNTAX.with_text("Duplicate parameter NOTIFY")
        )

    def test_lenient_unbracketed(self) -> None:
        """
        Without angle brackets (lenient mode) the path ends at the first
        space and parameters follow.
        """
        self.assertEqual(
            parse_mail(b"FROM:a@b SIZE=10", lenient=True), PathArgs("a@b", {"SIZE": "10"})
        )


class XtextTests(SynchronousTestCase):
    """
    Tests for L{xtext_decode} and L{xtext_encode}.
    """

    def test_decode(self) -> None:
        """
        C{"+XX"} becomes the octet C{XX}; the octets are UTF-8.
        """
        table = [
            ("", ""),
            ("abc", "abc"),
            ("a+2Bb", "a+b"),
            ("+2B+3D", "+="),
            ("+2b", "+"),
            ("+C3+A9", "é"),
            ("é", "é"),
            ("rfc822;user+2Btag@example.com", "rfc822;user+tag@example.com"),
        ]
        for value, expected in table:
            self.assertEqual(xtext_decode(value), expected, value)

    def test_decode_errors(self) -> None:
        """
        A C{"+"} without two hexadecimal digits, or octets that are not
        UTF-8, are a bad parameter value.
        """
        for value in ["+", "a+", "+2", "+2G", "+G2", "a++2B", "+ 1", "+-1", "+C3", "+FF"]:
            with self.assertRaises(ParseError, msg=value) as caught:
                xtext_decode(value)
            self.assertIs(caught.exception.reply, _errors.BAD_PARAMETER_VALUE)

    def test_encode(self) -> None:
        """
        C{"+"}, C{"="}, space, controls and non-ASCII are escaped with
        upper-case hexadecimal digits; other printable ASCII is kept.
        """
        table = [
            ("", ""),
            ("abc<>!~", "abc<>!~"),
            ("a+b", "a+2Bb"),
            ("a=b c", "a+3Db+20c"),
            ("\r\n", "+0D+0A"),
            ("é", "+C3+A9"),
        ]
        for value, expected in table:
            self.assertEqual(xtext_encode(value), expected, value)

    @bounded
    @given(st.text())
    def test_round_trip(self, value: str) -> None:
        """
        L{xtext_decode} inverts L{xtext_encode}, whose output is xtext:
        printable ASCII without C{"="}.
        """
        encoded = xtext_encode(value)
        self.assertTrue(all("!" <= c <= "~" and c != "=" for c in encoded), encoded)
        self.assertEqual(xtext_decode(encoded), value)


ATEXT = "abcXYZ019!#$%&'*+/=?^_`{|}~-éü用"
LET_DIG = "abcXYZ019éü例"

atoms = st.text(ATEXT, min_size=1, max_size=8)
dot_strings = st.lists(atoms, min_size=1, max_size=4).map(".".join)
quoted = st.lists(
    st.sampled_from([" ", "!", "#", "a", "[", "]", "~", "é", '\\"', "\\\\", "@", "<", ">"]),
    max_size=8,
).map(lambda parts: '"' + "".join(parts) + '"')
labels = st.builds(
    lambda first, middle, last: first + middle + last,
    st.text(LET_DIG, min_size=1, max_size=4),
    st.text(LET_DIG + "-", max_size=4),
    st.text(LET_DIG, max_size=1),
).filter(lambda label: not label.endswith("-"))
domains = st.lists(labels, min_size=1, max_size=4).map(".".join)
literals = st.one_of(
    st.ip_addresses(v=4).map(lambda a: f"[{a}]"),
    st.ip_addresses(v=6).map(lambda a: f"[IPv6:{a}]"),
)
mailboxes = st.builds(
    lambda local, domain: f"{local}@{domain}",
    st.one_of(dot_strings, quoted),
    st.one_of(domains, literals),
)


class PathPropertyTests(SynchronousTestCase):
    """
    Properties of L{parse_mail} and L{parse_rcpt}.
    """

    @bounded
    @given(mailboxes, st.lists(domains, max_size=2))
    def test_valid(self, mailbox: str, route: list[str]) -> None:
        """
        Every valid mailbox, with or without a source route, is accepted in
        both modes, as given and without the route.
        """
        path = (",".join("@" + d for d in route) + ":" if route else "") + mailbox
        for mode in (False, True):
            self.assertEqual(
                parse_mail(f"FROM:<{path}>".encode(), lenient=mode), PathArgs(mailbox, {})
            )
            self.assertEqual(
                parse_rcpt(f"TO:<{path}> X=1".encode(), lenient=mode),
                PathArgs(mailbox, {"X": "1"}),
            )

    @bounded
    @given(st.binary(max_size=80) | st.text(max_size=40).map(str.encode))
    def test_never_crashes(self, tail: bytes) -> None:
        """
        Any input gives a L{PathArgs} or a L{ParseError}; what strict mode
        accepts, lenient mode accepts the same way.
        """
        for parse, prefix in ((parse_mail, b"FROM:<"), (parse_rcpt, b"TO:")):
            for argument in (prefix + tail, tail):
                try:
                    strict: PathArgs | None = parse(argument)
                except ParseError:
                    strict = None
                try:
                    lenient: PathArgs | None = parse(argument, lenient=True)
                except ParseError:
                    lenient = None
                if strict is not None:
                    self.assertEqual(lenient, strict)


def scan(chunks: list[bytes]) -> tuple[bytes, bytes | None, int]:
    """
    Feed C{chunks} to a new L{DataScanner} until it is done.

    @return: the body, the rest (with the chunks not fed appended), and the
        number of chunks fed.
    """
    scanner = DataScanner()
    body = []
    for n, chunk in enumerate(chunks):
        part, rest = scanner.feed(chunk)
        body.append(part)
        if rest is not None:
            assert scanner.done
            return b"".join(body), rest + b"".join(chunks[n + 1:]), n + 1
        assert not scanner.done
    return b"".join(body), None, len(chunks)


class DataScannerTests(SynchronousTestCase):
    """
    Tests for L{DataScanner}.
    """

    def test_simple(self) -> None:
        """
        The body ends with the CRLF before the terminating C{"."}; the bytes
        after C{".\\r\\n"} are the rest.
        """
        self.assertEqual(
            scan([b"Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n"]),
            (b"Subject: x\r\n\r\nhello\r\n", b"QUIT\r\n", 1),
        )

    def test_empty(self) -> None:
        """
        C{".\\r\\n"} at the very start ends an empty message: the CRLF of
        the DATA line counts as the preceding line end.
        """
        self.assertEqual(scan([b".\r\n"]), (b"", b"", 1))
        self.assertEqual(scan([b".\r\nMAIL FROM:<>\r\n"]), (b"", b"MAIL FROM:<>\r\n", 1))
        self.assertEqual(scan([b"", b".", b"", b"\r", b"\n"]), (b"", b"", 5))
        self.assertEqual(scan([b"\r\n.\r\n"]), (b"\r\n", b"", 1))

    def test_unstuffing(self) -> None:
        """
        A C{"."} that starts a line (at the start, or after a CRLF) is
        removed; only CRLF starts a line.
        """
        table = [
            (b"..x\r\n.\r\n", b".x\r\n"),
            (b".x\r\n.\r\n", b"x\r\n"),
            (b"a\r\n..\r\n.\r\n", b"a\r\n.\r\n"),
            (b"a\r\n...\r\n.\r\n", b"a\r\n..\r\n"),
            (b"a\r\n.b\r\n..c\r\n.\r\n", b"a\r\nb\r\n.c\r\n"),
            (b"a\r\n. \r\n.\r\n", b"a\r\n \r\n"),
            (b"a.\r\nb..\r\n.\r\n", b"a.\r\nb..\r\n"),
            (b"a\n..\r\n.\r\n", b"a\n..\r\n"),
            (b"a\r..\r\n.\r\n", b"a\r..\r\n"),
            (b"a\r\n.\rb\r\n.\r\n", b"a\r\n\rb\r\n"),
            (b"a\r\n.\nb\r\n.\r\n", b"a\r\n\nb\r\n"),
        ]
        for wire, body in table:
            for chunks in ([wire], [bytes((c,)) for c in wire]):
                self.assertEqual(scan(chunks), (body, b"", len(chunks)), wire)

    def test_no_smuggling(self) -> None:
        """
        Only C{<CRLF>.<CRLF>} ends the message: bare LF and bare CR neither
        end it nor start a line, and are delivered byte-exact.
        """
        for sequence in [b"\n.\n", b"\r.\r\n", b"\n.\r\n", b"\r.\n", b"\r\n.\n", b"\r\n.\r\r\n"]:
            body = b"From: a\r\n\r\nx" + sequence + b"MAIL FROM:<evil@example.com>\r\n"
            wire = dot_stuff(body)
            self.assertEqual(scan([wire]), (body, b"", 1), sequence)
            self.assertEqual(scan([bytes((c,)) for c in wire]), (body, b"", len(wire)), sequence)
            # Sent raw, without stuffing: not the end of the message either.
            raw = b"x" + sequence + b"y"
            self.assertEqual(scan([raw])[1], None, sequence)
            if not sequence.startswith(b"\r\n"):
                self.assertEqual(scan([raw + b"\r\n.\r\n"]), (raw + b"\r\n", b"", 1), sequence)

    def test_every_split(self) -> None:
        """
        The result does not depend on where the input is split: byte by
        byte, or in two pieces at every offset.
        """
        body = b".a\r\n\r\n..\r\n.\rb\nc\r\n.d\r\r\n\n.\n\r\n.."
        wire = dot_stuff(body) + b"RSET\r\n"
        expected = (body + b"\r\n", b"RSET\r\n")
        self.assertEqual(scan([bytes((c,)) for c in wire])[:2], expected)
        for offset in range(len(wire) + 1):
            self.assertEqual(scan([wire[:offset], wire[offset:]])[:2], expected, offset)
            for second in range(offset, len(wire) + 1):
                chunks = [wire[:offset], wire[offset:second], wire[second:]]
                self.assertEqual(scan(chunks)[:2], expected, (offset, second))

    def test_many_dot_lines(self) -> None:
        """
        A buffer with many lines starting with C{"."} (which are unstuffed
        in bulk) gives the same result, however split.
        """
        body = b"".join(b".%d\r\n..\r\n\r\n" % n for n in range(40)) + b"."
        wire = dot_stuff(body) + b"NOOP"
        expected = (body + b"\r\n", b"NOOP")
        self.assertEqual(scan([wire])[:2], expected)
        for offset in range(len(wire) + 1):
            self.assertEqual(scan([wire[:offset], wire[offset:]])[:2], expected, offset)

    def test_holds_back_little(self) -> None:
        """
        At most a possible partial terminator (four bytes) is held back.
        """
        table = [
            (b"abc", b"abc"),
            (b"abc\r", b"abc"),
            (b"abc\r\n", b"abc"),
            (b"abc\r\n.", b"abc"),
            (b"abc\r\n.\r", b"abc"),
            (b"abc\r\n.x", b"abc\r\nx"),
            (b"abc\r\n.\rx", b"abc\r\n\rx"),
            (b"abc\n", b"abc\n"),
            (b"abc\r\n\r", b"abc\r\n"),
            (b"", b""),
            (b"\r", b""),
            (b".", b""),
            (b".\r", b""),
            (b"..", b"."),
        ]
        for data, delivered in table:
            scanner = DataScanner()
            self.assertEqual(scanner.feed(data), (delivered, None), data)
            self.assertFalse(scanner.done)
        scanner = DataScanner()
        big = b"x" * 70000 + b"\r\n" + b"y" * 70000 + b"\r\n.\r"
        body, rest = scanner.feed(big)
        self.assertEqual(body, big[:-4])
        self.assertEqual(scanner.feed(b"\n"), (b"\r\n", b""))

    def test_feed_after_done(self) -> None:
        """
        Feeding a finished scanner is an error.
        """
        scanner = DataScanner()
        self.assertFalse(scanner.done)
        self.assertEqual(scanner.feed(b"a\r\n.\r\n"), (b"a\r\n", b""))
        self.assertTrue(scanner.done)
        self.assertRaises(RuntimeError, scanner.feed, b"")
        self.assertRaises(RuntimeError, scanner.feed, b"x")

    def test_big(self) -> None:
        """
        A large message in 64 KiB chunks comes back whole.
        """
        line = b"The quick brown fox jumps over the lazy dog. 0123456789\r\n"
        body = (line * 3 + b".leading dot\r\n") * 5000
        wire = dot_stuff(body) + b"QUIT\r\n"
        chunks = [wire[i:i + 65536] for i in range(0, len(wire), 65536)]
        self.assertEqual(scan(chunks), (body, b"QUIT\r\n", len(chunks)))

    def test_slots(self) -> None:
        """
        The scanner has no instance dictionary.
        """
        self.assertFalse(hasattr(DataScanner(), "__dict__"))


class DotStuffTests(SynchronousTestCase):
    """
    Tests for L{dot_stuff}.
    """

    def test_table(self) -> None:
        """
        Line-leading dots are doubled, a final CRLF is added when missing,
        then the terminator.
        """
        table = [
            (b"", b"\r\n.\r\n"),
            (b"a", b"a\r\n.\r\n"),
            (b"a\r\n", b"a\r\n.\r\n"),
            (b".", b"..\r\n.\r\n"),
            (b".a\r\n.b\r\n", b"..a\r\n..b\r\n.\r\n"),
            (b"a\r\n.\r\n.\r\n", b"a\r\n..\r\n..\r\n.\r\n"),
            (b"a\n.b\r.c", b"a\n.b\r.c\r\n.\r\n"),
            (b"a\r", b"a\r\r\n.\r\n"),
        ]
        for body, wire in table:
            self.assertEqual(dot_stuff(body), wire, body)


bodies = st.lists(
    st.sampled_from([b"\r", b"\n", b".", b"\r\n", b"\r\n.", b" ", b"a", b"\x00", b"\xff", b"..."]),
    max_size=120,
).map(b"".join)


def splits(data: bytes, cuts: list[int]) -> list[bytes]:
    """
    @return: C{data} cut at the offsets C{cuts} (taken modulo its length + 1).
    """
    offsets = sorted({cut % (len(data) + 1) for cut in cuts})
    return [data[a:b] for a, b in zip([0] + offsets, offsets + [len(data)])]


class DataPropertyTests(SynchronousTestCase):
    """
    Round-trip properties of L{dot_stuff} and L{DataScanner}.
    """

    @bounded
    @given(bodies, st.lists(st.integers(min_value=0), max_size=12), st.binary(max_size=8))
    def test_round_trip(self, body: bytes, cuts: list[int], extra: bytes) -> None:
        """
        C{dot_stuff(body)} fed in any split gives back C{body} (with a final
        CRLF added if it had none), and what follows the terminator comes
        back as the rest.
        """
        expected = body if body.endswith(b"\r\n") else body + b"\r\n"
        wire = dot_stuff(body)
        self.assertEqual(scan(splits(wire, cuts))[:2], (expected, b""))
        self.assertEqual(scan(splits(wire + extra, cuts))[:2], (expected, extra))

    @bounded
    @given(bodies, st.lists(st.integers(min_value=0), max_size=12))
    def test_split_independent(self, data: bytes, cuts: list[int]) -> None:
        """
        For any input (terminated or not), the result is the same as when
        the input is fed whole.
        """
        self.assertEqual(scan(splits(data, cuts))[:2], scan([data])[:2])
