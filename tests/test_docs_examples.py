"""
The examples under docs/examples/ run, so the documentation cannot rot.
"""

from __future__ import annotations

import importlib.util
import smtplib
import sys
from pathlib import Path
from types import ModuleType

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"


def load_example(name: str) -> ModuleType:
    """
    Import docs/examples/NAME.py as a module.
    """
    spec = importlib.util.spec_from_file_location(f"docs_example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class HooksTourTests(TestCase):
    """
    docs/examples/hooks_tour.py, driven by smtplib over loopback.
    """

    @defer.inlineCallbacks
    def test_tour(self):  # type: ignore[no-untyped-def]
        """
        Known mailboxes and postmaster are accepted, unknown ones refused with
        the hook's code, a refused sender gets 550 5.7.1, and the message is
        stored byte-exact with the hook's custom 250 text.
        """
        tour = load_example("hooks_tour")
        server, hooks = tour.make_server(disable_reverse_lookup=True, name="tour.test")
        port = yield server.listen("tcp:0:interface=127.0.0.1")
        self.addCleanup(server.close)
        number = port.getHost().port

        def client() -> list[object]:
            results: list[object] = []
            with smtplib.SMTP("127.0.0.1", number, timeout=10) as smtp:
                smtp.ehlo("client.test")
                results.append(smtp.mail("eve@spam.example"))
                smtp.rset()
                refused = smtp.sendmail(
                    "carol@example.org",
                    ["alice@example.com", "nobody@example.com", "postmaster"],
                    b"Subject: tour\r\n\r\nhello\r\n",
                )
                results.append(refused)
                results.append(smtp.noop())
            return results

        mail_reply, refused, noop = yield deferToThread(client)
        self.assertEqual(mail_reply, (550, b"5.7.1 Sender refused"))
        self.assertEqual(refused, {"nobody@example.com": (550, b"5.1.1 No such user here")})
        self.assertEqual(noop[0], 250)
        self.assertEqual(
            hooks.messages,
            [
                (
                    "carol@example.org",
                    ["alice@example.com", "postmaster"],
                    b"Subject: tour\r\n\r\nhello\r\n",
                )
            ],
        )


class OptionsDocumentedTests(TestCase):
    """
    Every option of the option table is documented in docs/options.md.
    """

    def test_every_option_documented(self) -> None:
        """
        docs/options.md names each option in a table row.
        """
        from smtphooks._options import OPTIONS

        text = (EXAMPLES.parent / "options.md").read_text()
        missing = [spec.name for spec in OPTIONS if f"`{spec.name}`" not in text]
        self.assertEqual(missing, [])
