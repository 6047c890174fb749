"""
SMTP AUTH over real loopback sockets: C{smtplib} logins after STARTTLS, PLAIN, LOGIN,
CRAM-MD5 and XOAUTH2 on the wire, the policy (AUTH only over TLS unless
C{allow_insecure_auth}; MAIL refused before AUTH when it is required, whatever order the
client tries), what C{on_auth} may answer, that credentials never reach the logs, swaks,
and the submission-server example in C{docs/examples/auth_server.py}.
"""

from __future__ import annotations

import base64
import hmac
import importlib.util
import json
import smtplib
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from cryptography.hazmat.primitives import hashes
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import eventAsText, globalLogPublisher
from twisted.trial.unittest import TestCase

from smtphooks import AuthRequest, AuthResponse, Session, SMTPError

from tests.certs import DEFAULT_NAME, test_pki
from tests.support import require_tool, run_process
from tests.test_tls import (
    MESSAGE,
    PATIENCE,
    BlockingClient,
    Messages,
    closed_within,
    in_thread,
    listen,
    starttls,
    tls_server,
)
from tests.wire import LineClient, connect

ALICE = ("alice@example.com", "correct horse battery")
SECRET = "hunter2-SECRET"

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "auth_server.py"


def b64(data: str | bytes) -> str:
    """
    Base64 of text (UTF-8) or bytes, as SASL puts it on the wire.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    return base64.b64encode(data).decode("ascii")


def plain(username: str, password: str, authzid: str = "") -> str:
    """
    An RFC 4616 PLAIN response, base64-encoded.
    """
    return b64(f"{authzid}\0{username}\0{password}")


#: A wrong and a right PLAIN response for ALICE, and a MAIL FROM line.
_BAD = plain(ALICE[0], "wrong password")
_GOOD = plain(*ALICE)
_MAIL = b"MAIL FROM:<alice@example.com>\r\n"


class Accounts:
    """
    An C{on_auth} hook with one account, L{ALICE}, that also knows a few special user
    names for tests: C{crash} raises, C{slow} answers later (and fails), C{none-response}
    returns C{AuthResponse(user=None)}.  XOAUTH2 accepts the token C{good-token}.

    @ivar requests: every L{AuthRequest} received.
    """

    def __init__(self) -> None:
        self.requests: list[AuthRequest] = []

    def __call__(self, auth: AuthRequest, session: Session) -> Any:
        self.requests.append(auth)
        if auth.username == "crash":
            raise RuntimeError("the account database is down")
        if auth.username == "slow":
            d: Deferred[None] = Deferred()
            reactor.callLater(0.05, d.callback, None)
            return d
        if auth.username == "none-response":
            return AuthResponse(user=None)
        if auth.method == "XOAUTH2":
            if auth.access_token == "good-token":
                return AuthResponse(user=auth.username)
            return AuthResponse(user=None, data={"status": "401", "schemes": "bearer"})
        if auth.method == "CRAM-MD5":
            if auth.username == ALICE[0] and auth.validate_password(ALICE[1]):
                return AuthResponse(user=auth.username)
            return None
        if (auth.username, auth.password) == ALICE:
            return AuthResponse(user=auth.username)
        return None


def auth_server(**kwargs: Any) -> Any:
    """
    A STARTTLS server with L{Accounts} as C{on_auth} and every mechanism enabled.
    """
    kwargs.setdefault("on_auth", Accounts())
    kwargs.setdefault("auth_methods", ["PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2"])
    return tls_server(**kwargs)


@inlineCallbacks
def tls_session(test: TestCase, port: int, *, ehlo: bool = True) -> Any:
    """
    Connect, EHLO, STARTTLS, and (with C{ehlo}) EHLO again over TLS.

    @return: a L{Deferred} firing with the L{LineClient}.
    """
    client = yield connect(test, port)
    reply = yield client.command("EHLO c.example.test")
    test.assertEqual(reply.code, 250, str(reply))
    yield starttls(test, client)
    if ehlo:
        reply = yield client.command("EHLO c.example.test")
        test.assertEqual(reply.code, 250, str(reply))
    return client


@inlineCallbacks
def exchange(client: LineClient, data: bytes, count: int) -> Any:
    """
    Send raw bytes in one write and collect the next C{count} replies (failing after a
    few seconds rather than at the test's timeout when fewer come).
    """
    client.send(data)
    replies = yield client.next_replies(count).addTimeout(5, reactor)
    return replies


# -- smtplib ---------------------------------------------------------------------------


class SmtplibLoginTests(TestCase):
    """
    C{smtplib.starttls()} then C{login()}: the mechanisms, and what the hooks see.
    """

    timeout = 30

    @inlineCallbacks
    def _login_and_send(self, mechanism: str, initial_response: bool) -> Any:
        messages = Messages()
        accounts = Accounts()
        port = yield listen(self, auth_server(on_auth=accounts, on_data=messages))
        context = test_pki().client_context()

        def send() -> tuple[dict[str, str], dict[str, str], tuple[int, bytes]]:
            with smtplib.SMTP(
                "127.0.0.1", port, local_hostname="c.example.test", timeout=PATIENCE
            ) as smtp:
                smtp.ehlo()
                clear = dict(smtp.esmtp_features)
                smtp.starttls(context=context)
                smtp.ehlo()
                secure = dict(smtp.esmtp_features)
                smtp.user, smtp.password = ALICE
                authobject = {"PLAIN": smtp.auth_plain, "LOGIN": smtp.auth_login}[mechanism]
                result = smtp.auth(mechanism, authobject, initial_response_ok=initial_response)
                smtp.sendmail(ALICE[0], ["b@example.com"], MESSAGE)
                return clear, secure, result

        clear, secure, (code, text) = yield in_thread(send)
        self.assertNotIn("auth", clear)
        self.assertEqual(secure["auth"].split(), ["PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2"])
        self.assertEqual((code, text), (235, b"2.7.0 Authentication successful"))
        self.assertEqual(
            [(r.method, r.username, r.password) for r in accounts.requests], [(mechanism, *ALICE)]
        )
        self.assertEqual(len(messages.got), 1)
        body, user, kind, secure_session, sender, _rcpts = messages.got[0]
        self.assertEqual(
            (user, kind, secure_session, sender), (ALICE[0], "ESMTPSA", True, ALICE[0])
        )
        self.assertEqual(body, MESSAGE)

    def test_plainInitialResponse(self) -> Any:
        """
        AUTH PLAIN with an initial response (C{AUTH PLAIN <base64>}) after STARTTLS;
        C{on_data} sees C{session.user} and C{ESMTPSA}.
        """
        return self._login_and_send("PLAIN", True)

    def test_plainChallenge(self) -> Any:
        """
        AUTH PLAIN in the challenge form (C{AUTH PLAIN}, C{334}, response).
        """
        return self._login_and_send("PLAIN", False)

    def test_loginChallenge(self) -> Any:
        """
        AUTH LOGIN: user name and password each asked for with C{334}.
        """
        return self._login_and_send("LOGIN", False)

    def test_loginInitialResponse(self) -> Any:
        """
        AUTH LOGIN with the user name as initial response (what smtplib sends by default).
        """
        return self._login_and_send("LOGIN", True)

    @inlineCallbacks
    def test_loginWithDefaultSmtplib(self) -> Any:
        """
        Plain C{smtplib.login()} picks a mechanism by itself (CRAM-MD5 here) and works;
        a wrong password raises C{SMTPAuthenticationError} with C{535 5.7.8}.
        """
        port = yield listen(self, auth_server())
        context = test_pki().client_context()

        def login(password: str) -> Any:
            with smtplib.SMTP(
                "127.0.0.1", port, local_hostname="c.example.test", timeout=PATIENCE
            ) as smtp:
                smtp.starttls(context=context)
                try:
                    return smtp.login(ALICE[0], password)
                except smtplib.SMTPAuthenticationError as e:
                    return e.smtp_code, e.smtp_error

        ok = yield in_thread(login, ALICE[1])
        self.assertEqual(ok, (235, b"2.7.0 Authentication successful"))
        bad = yield in_thread(login, "wrong")
        self.assertEqual(bad, (535, b"5.7.8 Authentication credentials invalid"))

    @inlineCallbacks
    def test_implicitTLSLogin(self) -> Any:
        """
        C{SMTP_SSL} against C{secure=True}: AUTH is offered at once, login and send work.
        """
        messages = Messages()
        port = yield listen(self, auth_server(secure=True, on_data=messages))
        context = test_pki().client_context()

        def send() -> None:
            with smtplib.SMTP_SSL(
                "127.0.0.1",
                port,
                local_hostname="c.example.test",
                context=context,
                timeout=PATIENCE,
            ) as smtp:
                smtp.login(*ALICE)
                smtp.sendmail(ALICE[0], ["b@example.com"], MESSAGE)

        yield in_thread(send)
        self.assertEqual([(m[1], m[2]) for m in messages.got], [(ALICE[0], "ESMTPSA")])


class PolicyTests(TestCase):
    """
    AUTH only over TLS by default; C{allow_insecure_auth}; MAIL refused before AUTH when
    AUTH is required; C{max_unauthenticated_commands}.
    """

    timeout = 30

    @inlineCallbacks
    def test_authBeforeStarttls(self) -> Any:
        """
        In the clear, EHLO does not offer AUTH and AUTH gets C{538 5.7.11}; smtplib's
        C{login()} refuses to send the password at all.
        """
        port = yield listen(self, auth_server())
        client = yield connect(self, port)
        reply = yield client.command("EHLO c.example.test")
        self.assertFalse([line for line in reply.lines if line.startswith("AUTH")], reply.lines)
        self.assertIn("STARTTLS", reply.lines)
        reply = yield client.command(f"AUTH PLAIN {plain(*ALICE)}")
        self.assertEqual((reply.code, reply.enhanced), (538, "5.7.11"), str(reply))

        def login() -> str:
            with smtplib.SMTP(
                "127.0.0.1", port, local_hostname="c.example.test", timeout=PATIENCE
            ) as smtp:
                try:
                    smtp.login(*ALICE)
                except smtplib.SMTPNotSupportedError as e:
                    return str(e)
                return "logged in"

        result = yield in_thread(login)
        self.assertIn("AUTH extension not supported", result)

    @inlineCallbacks
    def test_allowInsecureAuth(self) -> Any:
        """
        With C{allow_insecure_auth=True}, AUTH is offered and accepted in the clear; the
        session is C{ESMTPA}.
        """
        messages = Messages()
        port = yield listen(self, auth_server(allow_insecure_auth=True, on_data=messages))

        def send() -> str:
            with smtplib.SMTP(
                "127.0.0.1", port, local_hostname="c.example.test", timeout=PATIENCE
            ) as smtp:
                smtp.ehlo()
                offered = smtp.esmtp_features["auth"]
                smtp.login(*ALICE)
                smtp.sendmail(ALICE[0], ["b@example.com"], MESSAGE)
                return offered

        offered = yield in_thread(send)
        self.assertEqual(offered.split(), ["PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2"])
        self.assertEqual([(m[1], m[2], m[3]) for m in messages.got], [(ALICE[0], "ESMTPA", False)])

    @inlineCallbacks
    def test_authNotOfferedWithoutHook(self) -> Any:
        """
        Without C{on_auth} AUTH is neither offered nor known (C{500}), even over TLS, and
        MAIL needs no AUTH.
        """
        port = yield listen(self, tls_server())
        client = yield tls_session(self, port, ehlo=False)
        reply = yield client.command("EHLO c.example.test")
        self.assertFalse([line for line in reply.lines if line.startswith("AUTH")], reply.lines)
        reply = yield client.command(f"AUTH PLAIN {plain(*ALICE)}")
        self.assertEqual(reply.code, 500, str(reply))
        reply = yield client.command("MAIL FROM:<a@example.com>")
        self.assertEqual(reply.code, 250, str(reply))

    @inlineCallbacks
    def test_mailBeforeAuth(self) -> Any:
        """
        With an C{on_auth} and C{auth_optional=False}, MAIL before AUTH gets
        C{530 5.7.0} with the C{auth_required_message} text; after AUTH it is accepted.
        """
        text = "Submission needs AUTH: log in first"
        port = yield listen(self, auth_server(auth_required_message=text))
        client = yield tls_session(self, port)
        reply = yield client.command("MAIL FROM:<alice@example.com>")
        self.assertEqual((reply.code, reply.text), (530, f"5.7.0 {text}"))
        reply = yield client.command(f"AUTH PLAIN {plain(*ALICE)}")
        self.assertEqual(reply.code, 235, str(reply))
        reply = yield client.command("MAIL FROM:<alice@example.com>")
        self.assertEqual(reply.code, 250, str(reply))

    @inlineCallbacks
    def test_authOptional(self) -> Any:
        """
        With C{auth_optional=True}, MAIL is accepted without AUTH (C{session.user} stays
        L{None}, even with an C{AUTH=} parameter), and AUTH inside a transaction is 503.
        """
        users: list[Any] = []
        port = yield listen(
            self,
            auth_server(
                auth_optional=True, on_mail_from=lambda a, s: users.append((s.user, a.args))
            ),
        )
        client = yield tls_session(self, port)
        reply = yield client.command("MAIL FROM:<alice@example.com> AUTH=alice@example.com")
        self.assertEqual(reply.code, 250, str(reply))
        self.assertEqual(users, [(None, {"AUTH": "alice@example.com"})])
        reply = yield client.command(f"AUTH PLAIN {plain(*ALICE)}")
        self.assertEqual((reply.code, reply.enhanced), (503, "5.5.1"), str(reply))

    @inlineCallbacks
    def test_maxUnauthenticatedCommands(self) -> Any:
        """
        When AUTH is required, the command after C{max_unauthenticated_commands} others
        gets C{421 4.7.0} and the connection closes; an authenticated client is not
        limited.
        """
        port = yield listen(
            self, auth_server(max_unauthenticated_commands=3, allow_insecure_auth=True)
        )
        client = yield connect(self, port)
        replies = yield exchange(
            client, b"EHLO c.example.test\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\n", 4
        )
        self.assertEqual([r.code for r in replies], [250, 250, 250, 421])
        self.assertEqual(replies[-1].enhanced, "4.7.0")
        yield closed_within(client.lost)

        client = yield connect(self, port)
        replies = yield exchange(
            client, b"EHLO c.example.test\r\nAUTH PLAIN " + plain(*ALICE).encode() + b"\r\n", 2
        )
        self.assertEqual([r.code for r in replies], [250, 235])
        replies = yield exchange(client, b"NOOP\r\n" * 5, 5)
        self.assertEqual([r.code for r in replies], [250] * 5)


# -- the wire ----------------------------------------------------------------------------


class MechanismTests(TestCase):
    """
    SASL on the wire, over TLS.
    """

    timeout = 30

    @inlineCallbacks
    def _session(self, **kwargs: Any) -> Any:
        port = yield listen(self, auth_server(**kwargs))
        client = yield tls_session(self, port)
        return client

    @inlineCallbacks
    def test_secondAuth(self) -> Any:
        """
        AUTH after a successful AUTH is C{503 5.5.1}.
        """
        client = yield self._session()
        reply = yield client.command(f"AUTH PLAIN {plain(*ALICE)}")
        self.assertEqual(reply.code, 235, str(reply))
        reply = yield client.command(f"AUTH PLAIN {plain(*ALICE)}")
        self.assertEqual((reply.code, reply.enhanced), (503, "5.5.1"), str(reply))

    @inlineCallbacks
    def test_cancel(self) -> Any:
        """
        C{*} in place of a SASL response cancels the exchange with C{501}; C{on_auth} is
        not called; a new AUTH then works.
        """
        accounts = Accounts()
        client = yield self._session(on_auth=accounts)
        reply = yield client.command("AUTH LOGIN")
        self.assertEqual((reply.code, reply.text), (334, b64("Username:")))
        reply = yield client.command(b64(ALICE[0]))
        self.assertEqual((reply.code, reply.text), (334, b64("Password:")))
        reply = yield client.command("*")
        self.assertEqual((reply.code, reply.enhanced), (501, "5.0.0"), str(reply))
        self.assertEqual(accounts.requests, [])
        reply = yield client.command(f"AUTH PLAIN {plain(*ALICE)}")
        self.assertEqual(reply.code, 235, str(reply))

    @inlineCallbacks
    def test_badBase64(self) -> Any:
        """
        Invalid base64 as initial response or as a later response is C{501}; the session
        goes on unauthenticated.
        """
        client = yield self._session()
        reply = yield client.command("AUTH PLAIN not*base64!")
        self.assertEqual(reply.code, 501, str(reply))
        reply = yield client.command("AUTH LOGIN")
        self.assertEqual(reply.code, 334, str(reply))
        reply = yield client.command("%%%")
        self.assertEqual(reply.code, 501, str(reply))
        reply = yield client.command("MAIL FROM:<alice@example.com>")
        self.assertEqual(reply.code, 530, str(reply))

    @inlineCallbacks
    def test_unknownMechanism(self) -> Any:
        """
        A mechanism the server does not know, or knows but does not offer, is
        C{504 5.5.4}; AUTH without a mechanism is C{501}.
        """
        client = yield self._session(auth_methods=["PLAIN", "LOGIN"])
        for line in ("AUTH NTLM", "AUTH CRAM-MD5", "AUTH XOAUTH2 " + b64("x")):
            reply = yield client.command(line)
            self.assertEqual((reply.code, reply.enhanced), (504, "5.5.4"), f"{line}: {reply}")
        reply = yield client.command("AUTH")
        self.assertEqual(reply.code, 501, str(reply))

    @inlineCallbacks
    def test_lowerCaseMechanism(self) -> Any:
        """
        Mechanism names are case-insensitive: C{auth login} works.
        """
        client = yield self._session()
        for line, code in [("auth login", 334), (b64(ALICE[0]), 334), (b64(ALICE[1]), 235)]:
            reply = yield client.command(line)
            self.assertEqual(reply.code, code, f"{line}: {reply}")

    @inlineCallbacks
    def test_authRequestFields(self) -> Any:
        """
        C{on_auth} gets an C{AuthRequest} with the fields of each mechanism: PLAIN's
        authzid, user name and password (UTF-8); LOGIN's; XOAUTH2's access token; and its
        C{repr} shows no secret.
        """
        accounts = Accounts()
        client = yield self._session(on_auth=accounts)
        lines = [
            f"AUTH PLAIN {plain('bob', 'pässwörd', authzid='admin')}",
            "AUTH LOGIN " + b64("carol"),
            b64("s3cret"),
            "AUTH XOAUTH2 " + b64("user=dave@example.com\x01auth=Bearer bad-token\x01\x01"),
            "",
        ]
        for line in lines:
            yield client.command(line)
        fields = [
            (r.method, r.username, r.password, r.authzid, r.access_token) for r in accounts.requests
        ]
        self.assertEqual(
            fields,
            [
                ("PLAIN", "bob", "pässwörd", "admin", None),
                ("LOGIN", "carol", "s3cret", None, None),
                ("XOAUTH2", "dave@example.com", None, None, "bad-token"),
            ],
        )
        for request in accounts.requests:
            self.assertNotIn("s3cret", repr(request))
            self.assertNotIn("pässwörd", repr(request))
            self.assertNotIn("bad-token", repr(request))

    @inlineCallbacks
    def test_cramMD5(self) -> Any:
        """
        CRAM-MD5: the server's challenge is answered with C{user HMAC-MD5(password,
        challenge)}; C{validate_password} accepts the right password and refuses a wrong
        one (C{535}); C{password} is L{None}.
        """
        accounts = Accounts()
        client = yield self._session(on_auth=accounts)
        for password, code in [("wrong", 535), (ALICE[1], 235)]:
            reply = yield client.command("AUTH CRAM-MD5")
            self.assertEqual(reply.code, 334, str(reply))
            challenge = base64.b64decode(reply.text)
            self.assertTrue(challenge.startswith(b"<") and challenge.endswith(b">"), challenge)
            digest = hmac.new(password.encode(), challenge, "md5").hexdigest()
            reply = yield client.command(b64(f"{ALICE[0]} {digest}"))
            self.assertEqual(reply.code, code, str(reply))
        self.assertEqual(
            [(r.method, r.password) for r in accounts.requests], [("CRAM-MD5", None)] * 2
        )
        self.assertNotEqual(accounts.requests[0].challenge, accounts.requests[1].challenge)

    @inlineCallbacks
    def test_xoauth2Success(self) -> Any:
        """
        XOAUTH2 with a good bearer token, as initial response and in the challenge form.
        """
        for form in ("initial", "challenge"):
            client = yield self._session()
            token = b64(f"user={ALICE[0]}\x01auth=Bearer good-token\x01\x01")
            if form == "initial":
                reply = yield client.command(f"AUTH XOAUTH2 {token}")
            else:
                reply = yield client.command("AUTH XOAUTH2")
                self.assertEqual((reply.code, reply.text), (334, ""), form)
                reply = yield client.command(token)
            self.assertEqual((reply.code, reply.enhanced), (235, "2.7.0"), f"{form}: {reply}")

    @inlineCallbacks
    def test_xoauth2Failure(self) -> Any:
        """
        A failed XOAUTH2 (C{AuthResponse(user=None, data={...})}) gets the RFC 7628 error
        challenge: C{334} with the JSON in base64; the client's empty line then gets
        C{535 5.7.8}, and the session is still unauthenticated.
        """
        client = yield self._session()
        token = b64(f"user={ALICE[0]}\x01auth=Bearer expired\x01\x01")
        reply = yield client.command(f"AUTH XOAUTH2 {token}")
        self.assertEqual(reply.code, 334, str(reply))
        self.assertEqual(
            json.loads(base64.b64decode(reply.text)), {"status": "401", "schemes": "bearer"}
        )
        reply = yield client.command("")
        self.assertEqual((reply.code, reply.enhanced), (535, "5.7.8"), str(reply))
        reply = yield client.command("MAIL FROM:<alice@example.com>")
        self.assertEqual(reply.code, 530, str(reply))

    @inlineCallbacks
    def test_xoauth2FailureRawSocket(self) -> Any:
        """
        The same XOAUTH2 failure with a blocking stdlib socket over implicit TLS, reading
        the bytes exactly: C{334 <base64 JSON>}, then the empty line, then C{535}.
        """
        port = yield listen(self, auth_server(secure=True))
        context = test_pki().client_context()
        token = b64(f"user={ALICE[0]}\x01auth=Bearer expired\x01\x01")

        def run() -> list[tuple[int, str]]:
            client = BlockingClient(port, context=context)
            try:
                return [
                    client.command("EHLO c.example.test"),
                    client.command(f"AUTH XOAUTH2 {token}"),
                    client.command(""),
                ]
            finally:
                client.close()

        (ehlo, challenge, final) = yield in_thread(run)
        self.assertIn("AUTH PLAIN LOGIN CRAM-MD5 XOAUTH2", ehlo[1])
        self.assertEqual(challenge[0], 334)
        self.assertEqual(
            json.loads(base64.b64decode(challenge[1], validate=True)),
            {"status": "401", "schemes": "bearer"},
        )
        self.assertEqual(final, (535, "5.7.8 Authentication credentials invalid"))

    @inlineCallbacks
    def test_onAuthCrashes(self) -> Any:
        """
        An C{on_auth} that raises an ordinary exception gets C{454 4.7.0} (a temporary
        failure: the client may retry), the traceback is logged, and the session stays
        unauthenticated.
        """
        client = yield self._session()
        reply = yield client.command(f"AUTH PLAIN {plain('crash', 'x')}")
        self.assertEqual((reply.code, reply.enhanced), (454, "4.7.0"), str(reply))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        reply = yield client.command("MAIL FROM:<crash@example.com>")
        self.assertEqual(reply.code, 530, str(reply))

    @inlineCallbacks
    def test_onAuthAnswers(self) -> Any:
        """
        What C{on_auth} returns decides the reply: a user with a message (and code), a
        refusal with a message, L{None}, C{AuthResponse(user=None)}, C{SMTPError} with
        its own code; any object can be the user.
        """
        record = {"id": 7, "name": "bob"}
        answers: dict[str, Any] = {
            "welcome": AuthResponse(user=record, message="Welcome back, Bob", code=235),
            "locked": AuthResponse(user=None, message="Account locked, call the help desk"),
            "nothing": None,
            "user-none": AuthResponse(user=None),
            "slow-down": SMTPError("Too many failures, wait a minute", code=454, enhanced="4.7.0"),
            "plain-error": SMTPError("No such account"),
        }
        users: list[Any] = []

        def on_auth(auth: AuthRequest, session: Session) -> Any:
            answer = answers[auth.username]
            if isinstance(answer, Exception):
                raise answer
            return answer

        def on_mail_from(address: Any, session: Session) -> None:
            users.append(session.user)

        expected = [
            ("locked", "535 5.7.8 Account locked, call the help desk"),
            ("nothing", "535 5.7.8 Authentication credentials invalid"),
            ("user-none", "535 5.7.8 Authentication credentials invalid"),
            ("slow-down", "454 4.7.0 Too many failures, wait a minute"),
            ("plain-error", "535 5.7.8 No such account"),
            ("welcome", "235 2.7.0 Welcome back, Bob"),
        ]
        client = yield self._session(on_auth=on_auth, on_mail_from=on_mail_from)
        for username, text in expected:
            reply = yield client.command(f"AUTH PLAIN {plain(username, 'pw')}")
            self.assertEqual(f"{reply.code} {reply.text}", text, username)
        reply = yield client.command("MAIL FROM:<bob@example.com>")
        self.assertEqual(reply.code, 250, str(reply))
        self.assertEqual(users, [record])
        self.assertIs(users[0], record)

    @inlineCallbacks
    def test_pipelinedAfterSlowAuth(self) -> Any:
        """
        Commands pipelined after AUTH wait for a slow C{on_auth}: with good credentials
        the MAIL behind it is accepted, in order.
        """

        def on_auth(auth: AuthRequest, session: Session) -> Deferred[AuthResponse]:
            d: Deferred[AuthResponse] = Deferred()
            reactor.callLater(0.05, d.callback, AuthResponse(user=auth.username))
            return d

        client = yield self._session(on_auth=on_auth)
        replies = yield exchange(
            client,
            f"AUTH PLAIN {plain(*ALICE)}\r\n".encode() + _MAIL + b"RCPT TO:<b@example.com>\r\n",
            3,
        )
        self.assertEqual([r.code for r in replies], [235, 250, 250])


# -- refusing unauthenticated mail -----------------------------------------------------

#: Every way we thought of to get mail accepted without authenticating, on a server where
#: AUTH is required.  Each entry: a name, and the steps, each some bytes sent in ONE write
#: with the reply codes expected for them.  Each runs on a fresh connection over TLS after
#: EHLO (unless it starts with "clear:" or "no-ehlo:").
UNAUTHENTICATED_ATTEMPTS: list[tuple[str, list[tuple[bytes, list[int]]]]] = [
    ("MAIL before AUTH", [(_MAIL, [530])]),
    ("null sender before AUTH", [(b"MAIL FROM:<>\r\n", [530])]),
    ("lower-case mail from", [(b"mail from:<alice@example.com>\r\n", [530])]),
    (
        "MAIL with an AUTH= parameter",
        [(b"MAIL FROM:<alice@example.com> AUTH=alice@example.com\r\n", [530])],
    ),
    ("RCPT without MAIL", [(b"RCPT TO:<b@example.com>\r\n", [503])]),
    ("DATA without MAIL", [(b"DATA\r\n", [503]), (b"NOOP\r\n", [250])]),
    (
        "BDAT without MAIL",
        [(b"BDAT 18 LAST\r\nSubject: x\r\n\r\nhi\r\n", [503]), (b"NOOP\r\n", [250])],
    ),
    (
        "MAIL, RCPT, BDAT after the refused MAIL",
        [(_MAIL + b"RCPT TO:<b@example.com>\r\nBDAT 4 LAST\r\nhi\r\n", [530, 503, 503])],
    ),
    ("MAIL after failed AUTH PLAIN", [(f"AUTH PLAIN {_BAD}\r\n".encode(), [535]), (_MAIL, [530])]),
    (
        "MAIL after failed AUTH LOGIN",
        [
            (b"AUTH LOGIN\r\n", [334]),
            (b64(ALICE[0]).encode() + b"\r\n", [334]),
            (b64("wrong").encode() + b"\r\n", [535]),
            (_MAIL, [530]),
        ],
    ),
    (
        "MAIL after cancelled AUTH PLAIN",
        [(b"AUTH PLAIN\r\n", [334]), (b"*\r\n", [501]), (_MAIL, [530])],
    ),
    (
        "MAIL after AUTH LOGIN cancelled at the password",
        [
            (b"AUTH LOGIN " + b64(ALICE[0]).encode() + b"\r\n", [334]),
            (b"*\r\n", [501]),
            (_MAIL, [530]),
        ],
    ),
    ("MAIL as the SASL response", [(b"AUTH LOGIN\r\n", [334]), (_MAIL, [501]), (_MAIL, [530])]),
    (
        "MAIL in place of the XOAUTH2 error acknowledgement",
        [
            (
                b"AUTH XOAUTH2 "
                + b64(f"user={ALICE[0]}\x01auth=Bearer bad\x01\x01").encode()
                + b"\r\n",
                [334],
            ),
            (_MAIL, [535]),
            (_MAIL, [530]),
        ],
    ),
    (
        "pipelined AUTH (bad password) + MAIL + RCPT + DATA + body",
        [
            (
                f"AUTH PLAIN {_BAD}\r\n".encode()
                + _MAIL
                + b"RCPT TO:<b@example.com>\r\nDATA\r\nSubject: x\r\n\r\nbody\r\n.\r\n",
                [535, 530, 503, 503, 500, 500, 500, 500],
            )
        ],
    ),
    (
        "pipelined AUTH (slow on_auth, fails) + MAIL + RCPT",
        [
            (
                f"AUTH PLAIN {plain('slow', 'x')}\r\n".encode()
                + _MAIL
                + b"RCPT TO:<b@example.com>\r\n",
                [535, 530, 503],
            )
        ],
    ),
    (
        "pipelined MAIL before a good AUTH, then RCPT + DATA",
        [
            (
                _MAIL + f"AUTH PLAIN {_GOOD}\r\n".encode() + b"RCPT TO:<b@example.com>\r\nDATA\r\n",
                [530, 235, 503, 503],
            )
        ],
    ),
    (
        "MAIL after on_auth crashed",
        [(f"AUTH PLAIN {plain('crash', 'x')}\r\n".encode(), [454]), (_MAIL, [530])],
    ),
    (
        "MAIL after AuthResponse(user=None)",
        [(f"AUTH PLAIN {plain('none-response', 'x')}\r\n".encode(), [535]), (_MAIL, [530])],
    ),
    (
        "MAIL after malformed PLAIN",
        [(f"AUTH PLAIN {b64('alice password')}\r\n".encode(), [501]), (_MAIL, [530])],
    ),
    ("MAIL after empty PLAIN (=)", [(b"AUTH PLAIN =\r\n", [501]), (_MAIL, [530])]),
    ("MAIL after unknown mechanism", [(b"AUTH NTLM\r\n", [504]), (_MAIL, [530])]),
    (
        "MAIL after wrong CRAM-MD5",
        [
            (b"AUTH CRAM-MD5\r\n", [334]),
            (b64(f"{ALICE[0]} {'0' * 32}").encode() + b"\r\n", [535]),
            (_MAIL, [530]),
        ],
    ),
    (
        "MAIL after RSET",
        [(f"AUTH PLAIN {_BAD}\r\n".encode(), [535]), (b"RSET\r\n", [250]), (_MAIL, [530])],
    ),
    ("MAIL after a new EHLO", [(b"EHLO again.example.test\r\n", [250]), (_MAIL, [530])]),
    (
        "no-ehlo: HELO instead of EHLO",
        [
            (b"HELO c.example.test\r\n", [250]),
            (f"AUTH PLAIN {_GOOD}\r\n".encode(), [503]),
            (_MAIL, [530]),
        ],
    ),
    (
        "no-ehlo: MAIL without any EHLO after STARTTLS",
        [(_MAIL, [503]), (b"RCPT TO:<b@example.com>\r\n", [503])],
    ),
    (
        "clear: AUTH in the clear, then MAIL",
        [
            (b"EHLO c.example.test\r\n", [250]),
            (f"AUTH PLAIN {_GOOD}\r\n".encode(), [538]),
            (_MAIL, [530]),
        ],
    ),
    (
        "clear: DATA and BDAT in the clear",
        [(b"EHLO c.example.test\r\n", [250]), (b"DATA\r\nBDAT 2 LAST\r\nhi", [503, 503])],
    ),
]


class UnauthenticatedMailTests(TestCase):
    """
    When AUTH is required, no order of commands gets mail accepted without it.
    """

    timeout = 30

    @inlineCallbacks
    def test_everyOrderRefused(self) -> Any:
        """
        Each attempt in L{UNAUTHENTICATED_ATTEMPTS} gets exactly the refusals listed, and
        no C{on_mail_from}, C{on_rcpt_to} or C{on_data} ever runs.
        """
        reached: list[str] = []
        port = yield listen(
            self,
            auth_server(
                max_unauthenticated_commands=100,
                on_mail_from=lambda a, s: reached.append(f"MAIL {a.address}"),
                on_rcpt_to=lambda a, s: reached.append(f"RCPT {a.address}"),
                on_data=lambda stream, s: reached.append("DATA"),
            ),
        )
        mismatches = []
        for name, steps in UNAUTHENTICATED_ATTEMPTS:
            if name.startswith("clear:"):
                client = yield connect(self, port)
            else:
                client = yield tls_session(self, port, ehlo=not name.startswith("no-ehlo:"))
            got: list[list[int]] = []
            for data, codes in steps:
                replies = yield exchange(client, data, len(codes))
                got.append([r.code for r in replies])
            wanted = [codes for _, codes in steps]
            if got != wanted:
                mismatches.append(f"{name}: got {got}, wanted {wanted}")
            yield client.disconnect()
        self.assertEqual(mismatches, [])
        self.assertEqual(reached, [])
        self.flushLoggedErrors(RuntimeError)  # the "crash" user

    @inlineCallbacks
    def test_starttlsDropsAuthentication(self) -> Any:
        """
        With C{allow_insecure_auth}, a client that authenticated in the clear and then
        says STARTTLS starts over: after the handshake MAIL gets C{530} until it
        authenticates again.
        """
        port = yield listen(self, auth_server(allow_insecure_auth=True))
        client = yield connect(self, port)
        replies = yield exchange(
            client, f"EHLO c.example.test\r\nAUTH PLAIN {_GOOD}\r\n".encode(), 2
        )
        self.assertEqual([r.code for r in replies], [250, 235])
        yield starttls(self, client)
        replies = yield exchange(client, b"EHLO c.example.test\r\n" + _MAIL, 2)
        self.assertEqual([r.code for r in replies], [250, 530])
        replies = yield exchange(client, f"AUTH PLAIN {_GOOD}\r\n".encode() + _MAIL, 2)
        self.assertEqual([r.code for r in replies], [235, 250])

    @inlineCallbacks
    def test_otherSessionUnaffected(self) -> Any:
        """
        One client's AUTH does not authenticate another client.
        """
        port = yield listen(self, auth_server())
        first = yield tls_session(self, port)
        second = yield tls_session(self, port)
        reply = yield first.command(f"AUTH PLAIN {_GOOD}")
        self.assertEqual(reply.code, 235, str(reply))
        reply = yield second.command("MAIL FROM:<alice@example.com>")
        self.assertEqual(reply.code, 530, str(reply))


# -- logs ------------------------------------------------------------------------------


class CredentialsNotLoggedTests(TestCase):
    """
    Passwords and SASL payloads never reach the log, whatever happens.
    """

    timeout = 30

    def _capture(self) -> list[str]:
        """
        Record every log event of the test as text: the formatted message, the traceback
        of a failure, and the repr of each field.
        """
        texts: list[str] = []

        def observer(event: dict[str, Any]) -> None:
            texts.append(eventAsText(event, includeTraceback=True, includeTimestamp=False))
            failure = event.get("log_failure")
            if failure is not None:
                texts.append(failure.getTraceback(detail="verbose"))
            texts.append(repr(event))

        provider: Any = observer
        globalLogPublisher.addObserver(provider)
        self.addCleanup(globalLogPublisher.removeObserver, provider)
        return texts

    @inlineCallbacks
    def test_noSecretInLogs(self) -> Any:
        """
        AUTH PLAIN and LOGIN with the password C{hunter2-SECRET} — accepted, refused,
        crashing C{on_auth} (traceback logged), a client sending the password un-encoded,
        a client out of step that sends its base64 credentials as commands, and over
        XOAUTH2 as the token — leave neither the password nor any base64 form of it in
        any log event.
        """
        texts = self._capture()

        def on_auth(auth: AuthRequest, session: Session) -> Any:
            if auth.username == "crash":
                raise RuntimeError(f"backend failed for {auth!r}")
            if auth.password == SECRET and auth.username == "alice":
                return AuthResponse(user="alice")
            return None

        port = yield listen(
            self, auth_server(on_auth=on_auth, auth_methods=["PLAIN", "LOGIN", "XOAUTH2"])
        )
        port_plain_only = yield listen(self, auth_server(on_auth=on_auth, auth_methods=["PLAIN"]))
        sessions = [
            (port, [f"AUTH PLAIN {plain('alice', SECRET)}"]),
            (port, [f"AUTH PLAIN {plain('mallory', SECRET)}"]),
            (port, [f"AUTH PLAIN {plain('crash', SECRET)}"]),
            (port, ["AUTH LOGIN", b64("alice"), b64(SECRET)]),
            (port, ["AUTH LOGIN", b64("crash"), b64(SECRET)]),
            (port, ["AUTH LOGIN", b64("alice"), SECRET]),
            (
                port,
                [
                    "AUTH XOAUTH2 " + b64(f"user=alice\x01auth=Bearer {SECRET}\x01\x01"),
                    "",
                ],
            ),
            (port_plain_only, ["AUTH LOGIN", b64("alice"), b64(SECRET)]),
        ]
        for number, lines in sessions:
            client = yield tls_session(self, number)
            for line in lines:
                yield client.command(line)
            yield client.command("QUIT")
            yield client.disconnect()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
        self.assertTrue(
            any("backend failed" in text for text in texts), "the traceback was not logged"
        )
        forbidden = {
            SECRET,
            b64(SECRET),
            plain("alice", SECRET),
            plain("mallory", SECRET),
            plain("crash", SECRET),
        }
        # base64 of the secret at the three possible alignments inside a longer blob
        for prefix in ("", "x", "xy"):
            encoded = b64(prefix + SECRET)
            forbidden.add(encoded[len(prefix) * 4 // 3 + 2 : -4])
        leaks = [(secret, text) for text in texts for secret in forbidden if secret in text]
        self.assertEqual(leaks, [])


# -- swaks -----------------------------------------------------------------------------


class SwaksAuthTests(TestCase):
    """
    swaks authenticates after STARTTLS.
    """

    timeout = 30

    @inlineCallbacks
    def test_swaksCramMD5(self) -> Any:
        """
        C{swaks --tls --auth CRAM-MD5} logs in (C{validate_password} in C{on_auth}) and
        the message arrives with C{session.user} set; a wrong password makes swaks fail
        with the 535.
        """
        swaks = require_tool("swaks")
        messages = Messages()
        accounts = Accounts()
        port = yield listen(self, auth_server(on_auth=accounts, on_data=messages))

        def argv(password: str) -> list[str]:
            return [
                swaks, "--server", "127.0.0.1", "--port", str(port), "--tls",
                "--auth", "CRAM-MD5", "--auth-user", ALICE[0], "--auth-password", password,
                "--from", ALICE[0], "--to", "b@example.com", "--helo", "c.example.test",
                "--body", "Hello from swaks with CRAM-MD5.",
            ]  # fmt: skip

        code, out, err = yield run_process(argv(ALICE[1]), timeout=20)
        self.assertEqual(code, 0, (out + err).decode("utf-8", "replace"))
        self.assertIn(b"AUTH CRAM-MD5", out)
        self.assertEqual([(m[1], m[2]) for m in messages.got], [(ALICE[0], "ESMTPSA")])
        self.assertIn(b"Hello from swaks with CRAM-MD5.", messages.got[0][0])

        code, out, err = yield run_process(argv("wrong"), timeout=20)
        self.assertNotEqual(code, 0)
        self.assertIn(b"535 5.7.8", out)
        self.assertEqual(len(messages.got), 1)
        self.assertEqual([r.method for r in accounts.requests], ["CRAM-MD5", "CRAM-MD5"])


# -- the example -------------------------------------------------------------------------


def load_example() -> ModuleType:
    """
    Import C{docs/examples/auth_server.py}.
    """
    spec = importlib.util.spec_from_file_location("docs_example_auth_server", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class SubmissionExampleTests(TestCase):
    """
    C{docs/examples/auth_server.py}, driven by C{smtplib}.
    """

    timeout = 30

    @inlineCallbacks
    def test_submission(self) -> Any:
        """
        The example server offers AUTH only after STARTTLS, accepts the right password
        (checked with scrypt), refuses a wrong one and an unknown user (535), lets alice
        send as herself and refuses her as someone else (553 5.7.1), and refuses a PLAIN
        authorization identity that is not the user.
        """
        example = load_example()
        pki = test_pki()
        users = {ALICE[0]: example.hash_password(ALICE[1], n=2**10)}
        messages = Messages()
        server = example.make_server(
            users, pki.server.cert_path, pki.server.key_path, on_data=messages,
            disable_reverse_lookup=True, name=DEFAULT_NAME,
        )  # fmt: skip
        port = yield listen(self, server)
        context = pki.client_context()

        def session() -> dict[str, Any]:
            out: dict[str, Any] = {}
            with smtplib.SMTP(
                "127.0.0.1", port, local_hostname="c.example.test", timeout=PATIENCE
            ) as smtp:
                smtp.ehlo()
                out["auth in clear"] = "auth" in smtp.esmtp_features
                out["mail in clear"] = smtp.mail(ALICE[0])[0]
                smtp.starttls(context=context)
                smtp.ehlo()
                out["mechanisms"] = smtp.esmtp_features["auth"].split()
                for user, password in [(ALICE[0], "wrong"), ("nobody@example.com", ALICE[1])]:
                    try:
                        smtp.login(user, password)
                    except smtplib.SMTPAuthenticationError as e:
                        out.setdefault("refused", []).append(e.smtp_code)
                out["impersonation"] = smtp.docmd(
                    "AUTH", "PLAIN " + plain(ALICE[0], ALICE[1], authzid="bob@example.com")
                )[0]
                out["login"] = smtp.login(ALICE[0].upper(), ALICE[1])[0]
                try:
                    smtp.sendmail("bob@example.com", ["x@example.com"], MESSAGE)
                except smtplib.SMTPSenderRefused as e:
                    out["as bob"] = (e.smtp_code, e.smtp_error)
                smtp.sendmail(ALICE[0], ["x@example.com"], MESSAGE)
            return out

        out = yield in_thread(session)
        self.assertEqual(
            out,
            {
                "auth in clear": False,
                "mail in clear": 530,
                "mechanisms": ["PLAIN", "LOGIN"],
                "refused": [535, 535],
                "impersonation": 535,
                "login": 235,
                "as bob": (553, b"5.7.1 Sender address rejected: not owned by alice@example.com"),
            },
        )
        self.assertEqual(
            [(m[1], m[2], m[4]) for m in messages.got], [(ALICE[0], "ESMTPSA", ALICE[0])]
        )

    def test_passwordHashes(self) -> None:
        """
        The example's hashes verify the right password only, and a malformed hash
        verifies nothing.
        """
        example = load_example()
        encoded = example.hash_password("pässwörd", n=2**10)
        self.assertTrue(encoded.startswith("scrypt$1024$8$1$"))
        self.assertTrue(example.verify_password("pässwörd", encoded))
        self.assertFalse(example.verify_password("passwörd", encoded))
        self.assertFalse(example.verify_password("pässwörd", "scrypt$x$8$1$AAAA$AAAA"))
        self.assertFalse(example.verify_password("pässwörd", "md5$abc"))

    @inlineCallbacks
    def test_reloadCertificate(self) -> Any:
        """
        C{reload_tls} (what the example runs on SIGHUP) makes new connections see the
        renewed certificate; a key that does not match is refused and the old
        certificate kept.
        """
        example = load_example()
        pki = test_pki()
        server = example.make_server(
            {}, pki.server.cert_path, pki.server.key_path, on_data=Messages(),
            disable_reverse_lookup=True, name=DEFAULT_NAME,
        )  # fmt: skip
        port = yield listen(self, server)
        context = pki.client_context()

        def fingerprint() -> bytes:
            client = BlockingClient(port)
            try:
                client.command("EHLO c.example.test")
                client.starttls(context)
                client.command("QUIT")
                return client.peer_certificate().fingerprint(hashes.SHA256())
            finally:
                client.close()

        example.reload_tls(server, pki.server2.cert_path, pki.alpha.key_path)
        self.assertEqual(len(self.flushLoggedErrors()), 0)
        before = yield in_thread(fingerprint)
        self.assertEqual(before, pki.server.fingerprint)
        example.reload_tls(server, pki.server2.cert_path, pki.server2.key_path)
        after = yield in_thread(fingerprint)
        self.assertEqual(after, pki.server2.fingerprint)
