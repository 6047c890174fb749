"""
Tests of my_hooks.py with trial: run them with
C{python -m twisted.trial test_my_hooks} from this directory.

Each test builds a server with a clock of its own, connects an in-memory
client, and checks the replies: no sockets, no running reactor.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from my_hooks import MyHooks, make_server, on_auth
from smtphooks import SMTPError
from smtphooks.testing import (
    ReplyPending,
    SMTPTestClient,
    make_address,
    make_session,
    make_stream,
    make_test_server,
    run_hook,
)

MESSAGE = b"From: carol@example.org\r\nSubject: hello\r\n\r\nHi Alice!\r\n"


def ham(body: bytes) -> Deferred[float]:
    """
    A scorer that answers at once: not spam.
    """
    return succeed(0.0)


class SessionTests(SynchronousTestCase):
    """
    Whole SMTP sessions against the server of my_hooks.py.
    """

    def setUp(self) -> None:
        self.hooks = MyHooks(scorer=ham)
        self.server = make_server(self.hooks, reactor=Clock(), disable_reverse_lookup=True)
        self.client = SMTPTestClient(self.server)

    def test_delivery(self) -> None:
        """
        A message to a known mailbox is queued, with the hook's text.
        """
        reply = self.client.send("carol@example.org", ["alice@example.com"], MESSAGE)
        self.assertEqual(reply, (250, "2.0.0 Queued as 1"))
        self.assertEqual(
            self.hooks.delivered, [("carol@example.org", ["alice@example.com"], MESSAGE)]
        )

    def test_unknownRecipient(self) -> None:
        """
        An unknown recipient is refused with 550 5.1.1.
        """
        self.client.ehlo()
        self.client.mail("carol@example.org")
        self.assertEqual(
            self.client.rcpt("nobody@example.com"), (550, "5.1.1 No such user here")
        )
        self.assertEqual(self.client.rcpt("bob@example.com").code, 250)

    def test_blockedNetwork(self) -> None:
        """
        A client from the blocked network is refused at once.
        """
        client = SMTPTestClient(self.server, remote_address="203.0.113.7")
        self.assertEqual(client.greeting, (554, "Your network is not welcome here"))
        self.assertFalse(client.connected)

    def test_onCloseOnce(self) -> None:
        """
        QUIT ends the session, and on_close runs once.
        """
        self.client.ehlo()
        self.assertEqual(self.client.quit().code, 221)
        self.assertEqual(self.hooks.closed, 1)


class SlowScorerTests(SynchronousTestCase):
    """
    A scorer that answers later: the test decides when, or lets the server's
    clock run out.
    """

    def setUp(self) -> None:
        self.scores: list[Deferred[float]] = []

        def scorer(body: bytes) -> Deferred[float]:
            d: Deferred[float] = Deferred()
            self.scores.append(d)
            return d

        self.hooks = MyHooks(scorer=scorer)
        self.server = make_test_server(self.hooks, hook_timeout=30)
        self.client = SMTPTestClient(self.server)
        self.client.ehlo()
        self.client.mail("carol@example.org")
        self.client.rcpt("alice@example.com")

    def test_spam(self) -> None:
        """
        The reply to the message waits for the scorer; a high score is a
        permanent rejection.
        """
        with self.assertRaises(ReplyPending):
            self.client.data(MESSAGE)
        self.scores[0].callback(9.5)
        self.assertEqual(self.client.wait(), (554, "5.7.1 Spam score 9.5 is too high"))
        self.assertEqual(self.hooks.delivered, [])

    def test_scorerTooSlow(self) -> None:
        """
        A scorer that never answers: after hook_timeout the client gets a
        temporary failure, so it will retry.
        """
        with self.assertRaises(ReplyPending):
            self.client.data(MESSAGE)
        self.client.clock.advance(30)
        self.assertEqual(self.client.wait().code, 451)


class AuthTests(SynchronousTestCase):
    """
    on_auth, through the SASL exchange of each mechanism.
    """

    def test_mechanisms(self) -> None:
        """
        Alice gets in with her password, whatever the mechanism; a wrong
        password gets 535.
        """
        for method in ["PLAIN", "LOGIN", "CRAM-MD5"]:
            server = make_test_server(
                on_auth=on_auth,
                allow_insecure_auth=True,  # in memory there is no TLS
                auth_methods=["PLAIN", "LOGIN", "CRAM-MD5"],
            )
            client = SMTPTestClient(server)
            client.ehlo()
            self.assertEqual(client.auth("alice", "wrong", method=method).code, 535)
            self.assertEqual(client.auth("alice", "correct horse", method=method).code, 235)
            self.assertEqual(client.session.user, "alice")


class HookUnitTests(SynchronousTestCase):
    """
    One hook at a time, without a server.
    """

    def test_rcptHook(self) -> None:
        """
        on_rcpt_to rejects unknown addresses with 550 and accepts known ones.
        """
        hooks = MyHooks(scorer=ham)
        with self.assertRaises(SMTPError) as caught:
            run_hook(hooks.on_rcpt_to, make_address("eve@example.com"), make_session())
        self.assertEqual(caught.exception.code, 550)
        self.assertIsNone(
            run_hook(hooks.on_rcpt_to, make_address("Alice@Example.com"), make_session())
        )

    def test_dataHook(self) -> None:
        """
        on_data reads the stream and records the message with its envelope.
        """
        hooks = MyHooks(scorer=ham)
        session = make_session(mail_from="carol@example.org", rcpt_to=["bob@example.com"])
        result = run_hook(hooks.on_data, make_stream(MESSAGE, chunk_size=10), session)
        self.assertEqual(result, "Queued as 1")
        self.assertEqual(
            hooks.delivered, [("carol@example.org", ["bob@example.com"], MESSAGE)]
        )
