"""
The package type-checks with C{mypy --strict}, as STYLE.md requires.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SkipTest, TestCase

from tests.support import REQUIRE_TOOLS_ENV, run_process, tools_required

ROOT = Path(__file__).resolve().parent.parent


def _need_mypy() -> None:
    """
    @raise SkipTest: if mypy is not installed.
    @raise AssertionError: instead, when C{SMTPHOOKS_REQUIRE_TOOLS=1}.
    """
    if importlib.util.find_spec("mypy") is None:
        message = f"mypy is not installed for {sys.executable}"
        if tools_required():
            raise AssertionError(f"{message} ({REQUIRE_TOOLS_ENV}=1)")
        raise SkipTest(message)


class MypyTests(TestCase):
    """
    Run mypy on the source tree, with the project's configuration
    (C{pyproject.toml}: strict, the mypy-zope plugin).
    """

    def test_strict(self) -> Deferred[None]:
        """
        C{mypy --strict smtphooks} exits 0; on failure, its report is the
        test's message.
        """
        _need_mypy()
        argv = [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "smtphooks",
        ]
        env = dict(os.environ)
        env.pop("MYPYPATH", None)
        d = run_process(argv, timeout=300, env=env, path=str(ROOT))

        def check(result: tuple[int, bytes, bytes]) -> None:
            code, out, err = result
            report = (out + err).decode("utf-8", "replace")
            self.assertEqual(code, 0, f"mypy --strict smtphooks failed:\n{report}")

        return d.addCallback(check)
