"""
Real-socket tests of the DSN extension (RFC 3461): C{RET} and C{ENVID} on MAIL become
C{envelope.dsn}, C{NOTIFY} and C{ORCPT} on RCPT become C{Address.dsn}, values are
xtext-decoded and checked (C{501} for bad ones), and C{hide_dsn} turns it all off
(C{555}).
"""

from __future__ import annotations

import smtplib
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from smtphooks import Address, DataStream, Session

from tests.wire import open_session, start_server, with_smtp


class Recorder:
    """
    Hooks that record what they are shown: the envelope's DSN fields at RCPT and DATA
    time, and each recipient's L{Address}.

    @ivar mail: (ret, envid) of C{session.envelope.dsn} as C{on_rcpt_to} saw it.
    @ivar rcpts: the L{Address} of each recipient C{on_rcpt_to} was called with.
    @ivar data: (ret, envid, [(address, notify, orcpt)]) for each message, at DATA.
    """

    def __init__(self) -> None:
        self.mail: list[tuple[str | None, str | None]] = []
        self.rcpts: list[Address] = []
        self.data: list[tuple[str | None, str | None, list[tuple[str, Any, Any]]]] = []

    def on_rcpt_to(self, address: Address, session: Session) -> None:
        dsn = session.envelope.dsn
        self.mail.append((dsn.ret, dsn.envid))
        self.rcpts.append(address)

    async def on_data(self, stream: DataStream, session: Session) -> None:
        await stream.read()
        envelope = session.envelope
        self.data.append(
            (
                envelope.dsn.ret,
                envelope.dsn.envid,
                [
                    (
                        r.address,
                        r.dsn.notify if r.dsn is not None else None,
                        r.dsn.orcpt if r.dsn is not None else None,
                    )
                    for r in envelope.rcpt_to
                ],
            )
        )


def codes(replies: list[Any]) -> list[int]:
    return [r.code for r in replies]


def texts(replies: list[Any]) -> list[str]:
    return [str(r) for r in replies]


class DSNFieldsTests(TestCase):
    """
    Well-formed DSN parameters reach the hooks, decoded.
    """

    timeout = 30

    @inlineCallbacks
    def _send(self, mail: str, rcpts: list[str], hooks: Recorder | None = None) -> Any:
        hooks = hooks or Recorder()
        port = yield start_server(self, hooks=hooks)
        client = yield open_session(self, port)
        lines = [f"MAIL FROM:<sender@example.com>{mail}"]
        lines += [f"RCPT TO:{r}" for r in rcpts]
        lines += ["DATA"]
        client.send(("\r\n".join(lines) + "\r\nbody\r\n.\r\n").encode())
        replies = yield client.next_replies(len(lines) + 1)
        self.assertEqual(codes(replies), [250] * (len(lines) - 1) + [354, 250], texts(replies))
        return hooks

    @inlineCallbacks
    def test_advertised(self) -> Any:
        """
        EHLO advertises DSN, after ENHANCEDSTATUSCODES.
        """
        port = yield start_server(self)
        client = yield open_session(self, port, helo="NOOP")
        reply = yield client.command("EHLO client.example.test")
        self.assertIn("DSN", reply.lines)
        self.assertLess(reply.lines.index("ENHANCEDSTATUSCODES"), reply.lines.index("DSN"))

    @inlineCallbacks
    def test_retAndEnvid(self) -> Any:
        """
        C{RET=HDRS ENVID=QQ314159} (RFC 3461's own example) gives C{envelope.dsn.ret ==
        "HDRS"} and C{envelope.dsn.envid == "QQ314159"}, from RCPT on and at DATA.
        """
        hooks = yield self._send(" RET=HDRS ENVID=QQ314159", ["<bob@example.com>"])
        self.assertEqual(hooks.mail, [("HDRS", "QQ314159")])
        self.assertEqual(hooks.data[0][:2], ("HDRS", "QQ314159"))

    @inlineCallbacks
    def test_retIsCaseInsensitive(self) -> Any:
        """
        C{ret=full} is C{RET=FULL}.
        """
        hooks = yield self._send(" ret=full", ["<bob@example.com>"])
        self.assertEqual(hooks.mail, [("FULL", None)])

    @inlineCallbacks
    def test_envidXtextDecoded(self) -> Any:
        """
        ENVID is xtext: C{a+2Bb} is C{a+b}, and C{+3D} is C{=}.
        """
        hooks = yield self._send(" ENVID=a+2Bb+3Dc", ["<bob@example.com>"])
        self.assertEqual(hooks.mail, [(None, "a+b=c")])

    @inlineCallbacks
    def test_notifyAndOrcpt(self) -> Any:
        """
        C{NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@example.com} gives C{Address.dsn.notify
        == ["SUCCESS", "FAILURE"]} and C{Address.dsn.orcpt == "rfc822;bob@example.com"};
        C{NOTIFY=NEVER} alone is C{["NEVER"]}; ORCPT is xtext-decoded; lower-case keywords
        are upper-cased; a recipient without DSN parameters has C{dsn is None}; ORCPT
        alone leaves C{notify} L{None}.  The hooks see the same at RCPT and at DATA.
        """
        hooks = yield self._send(
            "",
            [
                "<bob@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@example.com",
                "<carol@example.com> NOTIFY=NEVER",
                "<dave@example.com> ORCPT=rfc822;d+2Bx@example.com",
                "<erin@example.com> notify=delay,failure",
                "<frank@example.com>",
            ],
        )
        expected = [
            ("bob@example.com", ["SUCCESS", "FAILURE"], "rfc822;bob@example.com"),
            ("carol@example.com", ["NEVER"], None),
            ("dave@example.com", None, "rfc822;d+x@example.com"),
            ("erin@example.com", ["DELAY", "FAILURE"], None),
            ("frank@example.com", None, None),
        ]
        self.assertEqual(hooks.data, [(None, None, expected)])
        self.assertIsNone(hooks.rcpts[4].dsn)
        self.assertEqual(
            [
                (a.address, a.dsn.notify if a.dsn else None, a.dsn.orcpt if a.dsn else None)
                for a in hooks.rcpts
            ],
            expected,
        )
        self.assertEqual(hooks.rcpts[0].args.get("NOTIFY"), "SUCCESS,FAILURE")

    @inlineCallbacks
    def test_newEnvelopeForgetsDSN(self) -> Any:
        """
        The DSN fields belong to one transaction: the next MAIL without them has
        C{ret} and C{envid} L{None}.
        """
        hooks = Recorder()
        port = yield start_server(self, hooks=hooks)
        client = yield open_session(self, port)
        client.send(
            b"MAIL FROM:<a@example.com> RET=FULL ENVID=first\r\n"
            b"RCPT TO:<b@example.com> NOTIFY=SUCCESS\r\nDATA\r\nx\r\n.\r\n"
            b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\ny\r\n.\r\n"
        )
        replies = yield client.next_replies(8)
        self.assertEqual(codes(replies), [250, 250, 354, 250] * 2, texts(replies))
        self.assertEqual(
            hooks.data,
            [
                ("FULL", "first", [("b@example.com", ["SUCCESS"], None)]),
                (None, None, [("b@example.com", None, None)]),
            ],
        )

    def test_smtplib(self) -> Any:
        """
        Python's smtplib, passing the parameters as C{mail()} and C{rcpt()} options, is
        accepted and the hooks see them.
        """
        hooks = Recorder()

        def use(smtp: smtplib.SMTP) -> Any:
            smtp.ehlo()
            assert smtp.has_extn("dsn")
            return (
                smtp.mail("a@example.com", ["RET=HDRS", "ENVID=msg+2D42"]),
                smtp.rcpt("b@example.com", ["NOTIFY=FAILURE,DELAY", "ORCPT=rfc822;b@example.com"]),
                smtp.data(b"Subject: dsn\r\n\r\nbody\r\n"),
            )

        @inlineCallbacks
        def run() -> Any:
            port = yield start_server(self, hooks=hooks)
            mail, rcpt, data = yield with_smtp(port, use)
            self.assertEqual((mail[0], rcpt[0], data[0]), (250, 250, 250))
            self.assertEqual(
                hooks.data,
                [
                    (
                        "HDRS",
                        "msg-42",
                        [("b@example.com", ["FAILURE", "DELAY"], "rfc822;b@example.com")],
                    )
                ],
            )

        return run()


class BadDSNTests(TestCase):
    """
    Bad DSN values are C{501 5.5.4}, before any hook; the session goes on.
    """

    timeout = 30

    @inlineCallbacks
    def _refused(self, mail: str, rcpt: str | None, code: int = 501) -> Any:
        """
        Send MAIL (and RCPT, when given): the last of them must get C{code}; then check
        that the session still works: with a good MAIL or RCPT, then a message.
        """
        hooks = Recorder()
        port = yield start_server(self, hooks=hooks)
        client = yield open_session(self, port)
        if rcpt is None:
            reply = yield client.command(f"MAIL FROM:<a@example.com>{mail}")
        else:
            reply = yield client.command(f"MAIL FROM:<a@example.com>{mail}")
            self.assertEqual(reply.code, 250, str(reply))
            reply = yield client.command(f"RCPT TO:<b@example.com>{rcpt}")
        self.assertEqual(reply.code, code, str(reply))
        if code == 501:
            self.assertEqual(reply.enhanced, "5.5.4", str(reply))
        if rcpt is None:
            reply = yield client.command("MAIL FROM:<a@example.com>")
            self.assertEqual(reply.code, 250, str(reply))
        client.send(b"RCPT TO:<c@example.com>\r\nDATA\r\nx\r\n.\r\n")
        replies = yield client.next_replies(3)
        self.assertEqual(codes(replies), [250, 354, 250], texts(replies))
        # Only the good recipient ever reached a hook.
        self.assertEqual([a.address for a in hooks.rcpts], ["c@example.com"])
        return reply

    def test_notifyNeverWithOthers(self) -> Any:
        """
        C{NOTIFY=NEVER,SUCCESS}: NEVER must stand alone.
        """
        return self._refused("", " NOTIFY=NEVER,SUCCESS")

    def test_notifyBogus(self) -> Any:
        """
        C{NOTIFY=BOGUS} is not a NOTIFY keyword.
        """
        return self._refused("", " NOTIFY=BOGUS")

    def test_notifyRepeated(self) -> Any:
        """
        C{NOTIFY=SUCCESS,SUCCESS} repeats a keyword.
        """
        return self._refused("", " NOTIFY=SUCCESS,SUCCESS")

    def test_notifyEmptyItem(self) -> Any:
        """
        C{NOTIFY=SUCCESS,} has an empty item.
        """
        return self._refused("", " NOTIFY=SUCCESS,")

    def test_notifyWithoutValue(self) -> Any:
        """
        A bare C{NOTIFY} keyword, without a value, is refused (501, or 555 as an
        unusable parameter), not taken as "no NOTIFY".
        """
        return self._notifyWithoutValue()

    @inlineCallbacks
    def _notifyWithoutValue(self) -> Any:
        port = yield start_server(self)
        client = yield open_session(self, port)
        client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com> NOTIFY\r\n")
        replies = yield client.next_replies(2)
        self.assertEqual(replies[0].code, 250)
        self.assertIn(replies[1].code, (501, 555), str(replies[1]))

    def test_retBogus(self) -> Any:
        """
        C{RET=X}: RET is FULL or HDRS.
        """
        return self._refused(" RET=X", None)

    def test_orcptWithoutType(self) -> Any:
        """
        C{ORCPT=bob@example.com}: an ORCPT needs C{addr-type;}.
        """
        return self._refused("", " ORCPT=bob@example.com")

    def test_orcptEmptyAddress(self) -> Any:
        """
        C{ORCPT=rfc822;}: nothing after the type.
        """
        return self._refused("", " ORCPT=rfc822;")

    def test_orcptControlCharacters(self) -> Any:
        """
        C{ORCPT=rfc822;a+0D+0Ab@example.com}: xtext that decodes to CR LF must not reach a
        hook (or a DSN header written from it).
        """
        return self._refused("", " ORCPT=rfc822;a+0D+0Ab@example.com")

    def test_envidControlCharacters(self) -> Any:
        """
        C{ENVID=a+0D+0Ab}: the same for ENVID.
        """
        return self._refused(" ENVID=a+0D+0Ab", None)

    def test_envidNul(self) -> Any:
        """
        C{ENVID=a+00b}: a NUL is a control character too.
        """
        return self._refused(" ENVID=a+00b", None)

    def test_envidTooLong(self) -> Any:
        """
        An ENVID of 101 characters is over RFC 3461's 100.
        """
        return self._refused(" ENVID=" + "x" * 101, None)

    def test_envidBadXtext(self) -> Any:
        """
        C{ENVID=a+zz} is not xtext.
        """
        return self._refused(" ENVID=a+zz", None)

    def test_retTwice(self) -> Any:
        """
        C{RET=FULL RET=HDRS}: a parameter given twice.
        """
        return self._refused(" RET=FULL RET=HDRS", None)

    def test_notifyOnMail(self) -> Any:
        """
        NOTIFY belongs to RCPT: on MAIL it is an unknown parameter, C{555}.
        """
        return self._refused(" NOTIFY=SUCCESS", None, code=555)

    def test_retOnRcpt(self) -> Any:
        """
        RET belongs to MAIL: on RCPT it is an unknown parameter, C{555}.
        """
        return self._refused("", " RET=FULL", code=555)


class HideDSNTests(TestCase):
    """
    With C{hide_dsn=True}, DSN is not advertised and its parameters are unknown (C{555}).
    """

    timeout = 30

    @inlineCallbacks
    def test_hidden(self) -> Any:
        """
        No DSN in EHLO; C{RET}, C{ENVID} on MAIL and C{NOTIFY}, C{ORCPT} on RCPT each get
        C{555 5.5.4}; without them the transaction works and the hooks see no DSN fields.
        """
        hooks = Recorder()
        port = yield start_server(self, hooks=hooks, hide_dsn=True)
        client = yield open_session(self, port, helo="NOOP")
        reply = yield client.command("EHLO client.example.test")
        self.assertNotIn("DSN", reply.lines)
        client.send(
            b"MAIL FROM:<a@example.com> RET=FULL\r\n"
            b"MAIL FROM:<a@example.com> ENVID=QQ314159\r\n"
            b"MAIL FROM:<a@example.com>\r\n"
            b"RCPT TO:<b@example.com> NOTIFY=SUCCESS\r\n"
            b"RCPT TO:<b@example.com> ORCPT=rfc822;b@example.com\r\n"
            b"RCPT TO:<b@example.com>\r\n"
            b"DATA\r\nx\r\n.\r\n"
        )
        replies = yield client.next_replies(8)
        self.assertEqual(codes(replies), [555, 555, 250, 555, 555, 250, 354, 250], texts(replies))
        for i in (0, 1, 3, 4):
            self.assertEqual(replies[i].enhanced, "5.5.4", str(replies[i]))
        self.assertEqual(hooks.data, [(None, None, [("b@example.com", None, None)])])
