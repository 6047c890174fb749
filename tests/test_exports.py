"""
The public names of smtphooks are exactly those of the SPEC, and each is the
object its private module defines (klein's C{test_exports} style).
"""

from __future__ import annotations

import importlib

from twisted.trial.unittest import SynchronousTestCase

import smtphooks
import smtphooks.testing

#: SPEC section 1: the package's __all__, in the SPEC's order.
SPEC_ALL = [
    "SMTPServer",
    "SMTPError",
    "Hooks",
    "ISMTPHooks",
    "AuthRequest",
    "AuthResponse",
    "Session",
    "Envelope",
    "Address",
    "TLSInfo",
    "DataStream",
    "MaildirDelivery",
    "__version__",
]

#: Where each public name is defined.
HOMES = {
    "SMTPServer": "smtphooks._server",
    "SMTPError": "smtphooks._errors",
    "Hooks": "smtphooks._hooks",
    "ISMTPHooks": "smtphooks._hooks",
    "AuthRequest": "smtphooks._auth",
    "AuthResponse": "smtphooks._auth",
    "Session": "smtphooks._session",
    "Envelope": "smtphooks._session",
    "Address": "smtphooks._session",
    "TLSInfo": "smtphooks._session",
    "DataStream": "smtphooks._data",
    "MaildirDelivery": "smtphooks.maildir",
    "__version__": "smtphooks._version",
}

#: The public names of smtphooks.testing.
TESTING_ALL = [
    "ConnectionClosed",
    "HookPending",
    "Reply",
    "ReplyPending",
    "SMTPTestClient",
    "make_address",
    "make_session",
    "make_stream",
    "make_test_server",
    "run_hook",
]


class ExportTests(SynchronousTestCase):
    """
    C{smtphooks.__all__} is the SPEC's list, and every name in it is there.
    """

    def test_all(self) -> None:
        """
        C{__all__} holds exactly the names of SPEC section 1.
        """
        self.assertEqual(sorted(smtphooks.__all__), sorted(SPEC_ALL))
        self.assertEqual(len(smtphooks.__all__), len(set(smtphooks.__all__)))

    def test_namesExist(self) -> None:
        """
        Each name in C{__all__} is an attribute of the package (so
        C{from smtphooks import *} works).
        """
        missing = [name for name in smtphooks.__all__ if not hasattr(smtphooks, name)]
        self.assertEqual(missing, [])

    def test_sameObjects(self) -> None:
        """
        Each public name is the very object its defining module holds: the
        package re-exports, it does not copy or wrap.
        """
        self.assertEqual(sorted(HOMES), sorted(SPEC_ALL))
        for name, home in HOMES.items():
            module = importlib.import_module(home)
            self.assertIs(getattr(smtphooks, name), getattr(module, name), name)

    def test_definedWhereExported(self) -> None:
        """
        The classes say they live in their private module (no
        C{__module__} games), so tracebacks and pickles point to the code.
        """
        for name, home in HOMES.items():
            value = getattr(smtphooks, name)
            if isinstance(value, type):
                self.assertEqual(value.__module__, home, name)

    def test_docstrings(self) -> None:
        """
        Every public class has a docstring, for C{help()} and the API
        reference.
        """
        for name in SPEC_ALL:
            value = getattr(smtphooks, name)
            if name != "__version__":
                self.assertTrue((value.__doc__ or "").strip(), name)

    def test_version(self) -> None:
        """
        C{__version__} is a non-empty string.
        """
        self.assertIsInstance(smtphooks.__version__, str)
        self.assertTrue(smtphooks.__version__)

    def test_noPrivateNames(self) -> None:
        """
        The package does not export private names.
        """
        self.assertEqual([n for n in smtphooks.__all__ if n.startswith("_") and n != "__version__"], [])


class TestingExportTests(SynchronousTestCase):
    """
    C{smtphooks.testing} exports its helpers and nothing else.
    """

    def test_all(self) -> None:
        """
        C{smtphooks.testing.__all__} is the documented list, every name is
        there and documented.
        """
        self.assertEqual(sorted(smtphooks.testing.__all__), sorted(TESTING_ALL))
        for name in TESTING_ALL:
            value = getattr(smtphooks.testing, name)
            self.assertTrue((value.__doc__ or "").strip(), name)

    def test_notInPackageAll(self) -> None:
        """
        The test helpers are not in the package's C{__all__}: they live in
        their own module.
        """
        for name in TESTING_ALL:
            self.assertNotIn(name, smtphooks.__all__)
