"""
The documentation site builds, with every Sphinx warning treated as an error, and the
API reference is rendered from the epytext docstrings (no raw C{L{...}} or C{@param} left).
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from tests.support import REQUIRE_TOOLS_ENV, run_process, tools_required

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

#: What building the documentation needs (the C{docs} extra).
DOCS_MODULES = {"sphinx": "sphinx", "myst_parser": "myst-parser"}


def require_docs_tools() -> None:
    """
    @raise SkipTest: when Sphinx or MyST-Parser is not installed.
    @raise AssertionError: instead of L{SkipTest} when C{SMTPHOOKS_REQUIRE_TOOLS=1}.
    """
    missing = [
        dist for module, dist in DOCS_MODULES.items() if importlib.util.find_spec(module) is None
    ]
    if not missing:
        return
    message = f"{', '.join(missing)} not installed (pip install '.[docs]')"
    if tools_required():
        raise AssertionError(f"{message}, but {REQUIRE_TOOLS_ENV}=1")
    raise SkipTest(message)


def load_conf() -> ModuleType:
    """
    Import docs/conf.py, for its epytext conversion.
    """
    spec = importlib.util.spec_from_file_location("smtphooks_docs_conf", DOCS / "conf.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildTests(TestCase):
    """
    C{sphinx-build -W -b html docs <dir>}, as the README tells a new user to run it.
    """

    @inlineCallbacks
    def test_buildIsClean(self) -> Any:
        """
        The site builds with warnings as errors, from a fresh environment; the guides,
        the migration page and the API reference are there, and the API pages show
        rendered fields rather than epytext.
        """
        require_docs_tools()
        out = Path(self.mktemp()).resolve()
        argv = [
            sys.executable, "-m", "sphinx",
            "-W", "--keep-going", "-E", "-q",
            "-b", "html",
            "-d", str(out / "doctrees"),
            str(DOCS), str(out / "html"),
        ]  # fmt: skip
        code, _, stderr = yield run_process(argv, timeout=300, path=str(ROOT))
        self.assertEqual(
            code, 0, f"sphinx-build failed ({code}):\n{stderr.decode(errors='replace')}"
        )
        html = out / "html"
        for page in [
            "index", "quickstart", "hooks", "datastream", "migration", "testing",
            "api/index", "api/server", "api/session", "api/data", "api/testing", "api/reactor",
        ]:  # fmt: skip
            self.assertTrue((html / f"{page}.html").is_file(), page)

        server = (html / "api" / "server.html").read_text(encoding="utf-8")
        self.assertIn('id="smtphooks.SMTPServer"', server)
        self.assertIn('id="smtphooks.SMTPServer.listen"', server)
        self.assertIn("Parameters", server)
        self.assertIn("Raises", server)
        for page in ("server", "session", "data", "testing", "reactor"):
            text = re.sub(r"<[^>]+>", "", (html / "api" / f"{page}.html").read_text("utf-8"))
            for raw in ("L{", "C{", "@param", "@return", "@raise", "@ivar", "InterfaceClass"):
                self.assertNotIn(raw, text, f"api/{page}.html shows {raw!r} as it is")


class EpytextTests(SynchronousTestCase):
    """
    The conversion of epytext docstrings to reST in docs/conf.py.
    """

    def setUp(self) -> None:
        require_docs_tools()
        self.convert = load_conf().epytext_to_rest

    def check(self, source: str, expected: str) -> None:
        self.assertEqual("\n".join(self.convert(source.split("\n"))), expected)

    def test_inline(self) -> None:
        """
        C{}, L{}, I{}, B{}, U{} become reST roles and inline markup; braces nest.
        """
        for source, expected in [
            ("C{x}", "``x``"),
            ("L{SMTPServer}", ":py:obj:`SMTPServer`"),
            ("L{the server <smtphooks.SMTPServer>}", ":py:obj:`the server <smtphooks.SMTPServer>`"),
            ("I{yours}, B{now}", "*yours*, **now**"),
            ("U{https://example.com}", "`<https://example.com>`__"),
            ('C{{"spam": true}}', '``{"spam": true}``'),
            ("a C{x}s b", "a ``x``\\ s b"),
            ("C{<CRLF>.<CRLF>}", "``<CRLF>.<CRLF>``"),
        ]:
            self.check(source, expected)

    def test_markupAcrossLines(self) -> None:
        """
        Inline markup that spans two lines of the docstring is kept whole.
        """
        self.check("see L{twisted.internet.\n    interfaces.IConsumer} here", (
            "see :py:obj:`twisted.internet. interfaces.IConsumer` here"
        ))

    def test_escapes(self) -> None:
        """
        Characters that start reST markup are escaped in plain text.
        """
        self.check("SMTPServer(hooks, **options) and on_ *x*", (
            "SMTPServer(hooks, \\*\\*options) and on\\_ \\*x\\*"
        ))

    def test_fields(self) -> None:
        """
        Epytext fields become reST fields; a blank line separates them from the
        paragraph (or the multi-line field) before them.
        """
        self.check(
            "Do it.\n@param name: the name,\n    on two lines.\n@return: a L{Deferred}.\n"
            "@raise ValueError: if not.\n@ivar size: the size.",
            "Do it.\n\n:param name: the name,\n    on two lines.\n\n"
            ":returns: a :py:obj:`Deferred`.\n:raises ValueError: if not.\n:ivar size: the size.",
        )

    def test_literalBlocks(self) -> None:
        """
        Literal blocks and doctests are left alone.
        """
        self.check(
            "Run it::\n\n    C{x} *y*\n\nthen C{z}.\n\n>>> f(C{x})\n1\n",
            "Run it::\n\n    C{x} *y*\n\nthen ``z``.\n\n>>> f(C{x})\n1\n",
        )
