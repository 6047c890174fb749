"""
L{Session}: what hooks are told about a connection.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from smtphooks import Envelope, Session


class SessionTests(SynchronousTestCase):
    def test_lazyAttributes(self) -> None:
        """
        C{id}, C{xclient}, C{xforward} and C{extra} behave as plain
        attributes though they are made when first read: the id is stable
        and unique, and what is put into a dict stays there.
        """
        one, two = Session(), Session()
        self.assertEqual(one.id, one.id)
        self.assertNotEqual(one.id, two.id)
        self.assertRegex(one.id, "^[0-9a-f]{16}$")
        one.extra["seen"] = 1
        one.xclient["ADDR"] = "192.0.2.1"
        one.xforward["HELO"] = "h.example"
        self.assertEqual(
            (one.extra, one.xclient, one.xforward),
            ({"seen": 1}, {"ADDR": "192.0.2.1"}, {"HELO": "h.example"}),
        )
        self.assertEqual((two.extra, two.xclient, two.xforward), ({}, {}, {}))
        two.extra = {"replaced": True}
        self.assertEqual(two.extra, {"replaced": True})

    def test_keywords(self) -> None:
        """
        Every attribute can be given to the constructor; the defaults are
        those of a connection before anything happened.
        """
        envelope = Envelope()
        session = Session(
            id="abc", remote_address="192.0.2.1", envelope=envelope, extra={"k": "v"},
            xclient={"NAME": "n"},
        )
        self.assertEqual(session.id, "abc")
        self.assertIs(session.envelope, envelope)
        self.assertEqual((session.extra, session.xclient), ({"k": "v"}, {"NAME": "n"}))
        fresh = Session()
        self.assertEqual(
            (fresh.remote_address, fresh.transaction, fresh.user, fresh.secure, fresh.error),
            ("", 1, None, False, None),
        )
        self.assertIsNone(fresh.envelope.mail_from)
        self.assertIn(fresh.id, repr(fresh))

    def test_derivedAttributes(self) -> None:
        """
        Until set, C{client_hostname} is C{"[address]"} of the current
        C{remote_address} (C{"localhost"} without one), and C{envelope} is an
        empty L{Envelope} that stays the same object once read.
        """
        session = Session()
        self.assertEqual(session.client_hostname, "localhost")
        session.remote_address = "192.0.2.7"
        self.assertEqual(session.client_hostname, "[192.0.2.7]")
        session.client_hostname = "mail.example"
        session.remote_address = "192.0.2.8"
        self.assertEqual(session.client_hostname, "mail.example")
        self.assertEqual(Session(client_hostname="").client_hostname, "")
        envelope = session.envelope
        self.assertIs(session.envelope, envelope)
        self.assertIsNone(envelope.mail_from)
        self.assertEqual(envelope.rcpt_to, [])

    def test_noInstanceDict(self) -> None:
        """
        A session has no instance dict (it is kept per connection): setting
        an attribute that is not one of its own fails.
        """
        with self.assertRaises(AttributeError):
            Session().nonsense = 1  # type: ignore[attr-defined]
