"""
Tests for L{tests.support}, the helpers other tests use to run external programs.
"""

from __future__ import annotations

import os
import stat
from typing import cast

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, TestCase

from tests import support
from tests.support import REQUIRE_TOOLS_ENV, ProcessTimeout, require_tool, run_process

_MISSING = "smtphooks-test-no-such-program"


class RunProcessTests(TestCase):
    """
    L{run_process} runs a program through the reactor and reports its exit code and output.
    """

    def test_echo(self) -> Deferred[None]:
        """
        The output of C{/bin/echo} arrives with exit code 0 and empty stderr.
        """
        d = run_process(["/bin/echo", "hello", "world"])

        def check(result: tuple[int, bytes, bytes]) -> None:
            self.assertEqual(result, (0, b"hello world\n", b""))

        return d.addCallback(check)

    def test_stdin(self) -> Deferred[None]:
        """
        The bytes given as C{stdin} are what the program reads, and then end of file.
        """
        payload = b"line one\r\nline two\r\n" + bytes(range(256)) * 100
        d = run_process([require_tool("cat")], stdin=payload)

        def check(result: tuple[int, bytes, bytes]) -> None:
            self.assertEqual(result, (0, payload, b""))

        return d.addCallback(check)

    def test_exitCodeAndStderr(self) -> Deferred[None]:
        """
        A non-zero exit code and the standard error output are reported separately from
        the standard output.
        """
        d = run_process(["/bin/sh", "-c", "echo out; echo err >&2; exit 3"])

        def check(result: tuple[int, bytes, bytes]) -> None:
            self.assertEqual(result, (3, b"out\n", b"err\n"))

        return d.addCallback(check)

    def test_environment(self) -> Deferred[None]:
        """
        C{env} replaces the program's environment.
        """
        d = run_process(
            ["/bin/sh", "-c", 'printf %s "$SMTPHOOKS_TEST_VALUE"'],
            env={"SMTPHOOKS_TEST_VALUE": "x y", "PATH": "/usr/bin:/bin"},
        )

        def check(result: tuple[int, bytes, bytes]) -> None:
            self.assertEqual(result, (0, b"x y", b""))

        return d.addCallback(check)

    def test_timeoutKills(self) -> Deferred[None]:
        """
        When the timeout passes, the program is killed and the L{Deferred} fails with
        L{ProcessTimeout}, only once the program is gone.  The timeout is measured on the
        given clock, so the test does not wait for it.
        """
        clock = Clock()
        d = run_process([require_tool("sleep"), "600"], timeout=5, clock=clock)
        self.assertEqual([call.getTime() for call in clock.getDelayedCalls()], [5])
        clock.advance(4)
        self.assertNoResult(d)
        clock.advance(1)
        failed = cast("Deferred[ProcessTimeout]", self.assertFailure(d, ProcessTimeout))

        def check(error: ProcessTimeout) -> None:
            self.assertEqual(error.timeout, 5)
            self.assertIsInstance(error.stdout, bytes)
            self.assertIsInstance(error.stderr, bytes)
            self.assertIn("600", str(error))
            self.assertEqual(clock.getDelayedCalls(), [])

        return failed.addCallback(check)

    def test_cancelKills(self) -> Deferred[None]:
        """
        Cancelling the L{Deferred} kills the program and cancels the timeout.
        """
        clock = Clock()
        d = run_process([require_tool("sleep"), "600"], timeout=5, clock=clock)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        # The process is reaped through the reactor; wait until the timer is gone with it.
        from twisted.internet import reactor

        done: Deferred[None] = Deferred()
        remaining = [200]

        def poll() -> None:
            if not clock.getDelayedCalls():
                done.callback(None)
            elif remaining[0] <= 0:
                done.errback(AssertionError("the cancelled program did not end"))
            else:
                remaining[0] -= 1
                reactor.callLater(0.05, poll)

        poll()
        return done

    def test_emptyArgv(self) -> None:
        """
        An empty command line is a programming error, reported at once.
        """
        self.assertRaises(ValueError, run_process, [])


class RequireToolTests(TestCase):
    """
    L{require_tool} finds programs, and skips or fails the test when they are missing.
    """

    def setEnv(self, name: str, value: str | None) -> None:
        """
        Set (or, with C{None}, remove) an environment variable for this test only.
        """
        old = os.environ.get(name)

        def restore() -> None:
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old

        self.addCleanup(restore)
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value

    def test_foundOnPath(self) -> None:
        """
        A program on C{PATH} is returned as an absolute path to an executable file.
        """
        found = require_tool("sh")
        self.assertTrue(os.path.isabs(found))
        self.assertTrue(os.access(found, os.X_OK))

    def test_foundInExtraDirectory(self) -> None:
        """
        A program outside C{PATH} is found in the extra system directories (where Debian
        puts C{smtp-source}).
        """
        directory = self.mktemp()
        os.makedirs(directory)
        program = os.path.join(directory, "fake-smtp-source")
        with open(program, "w") as f:
            f.write("#!/bin/sh\n")
        os.chmod(program, stat.S_IRWXU)
        self.setEnv("PATH", "")
        self.patch(support, "_EXTRA_DIRS", ("/nonexistent", directory))
        self.assertEqual(require_tool("fake-smtp-source"), os.path.abspath(program))

    def test_nonExecutableIgnored(self) -> None:
        """
        A file of that name that is not executable does not count.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        with open(os.path.join(directory, _MISSING), "w") as f:
            f.write("#!/bin/sh\n")
        self.setEnv("PATH", directory)
        self.setEnv(REQUIRE_TOOLS_ENV, None)
        self.patch(support, "_EXTRA_DIRS", (directory,))
        self.assertRaises(SkipTest, require_tool, _MISSING)

    def test_missingSkips(self) -> None:
        """
        Without C{SMTPHOOKS_REQUIRE_TOOLS}, a missing program skips the test, saying which.
        """
        self.setEnv(REQUIRE_TOOLS_ENV, None)
        error = self.assertRaises(SkipTest, require_tool, _MISSING)
        self.assertEqual(str(error), f"{_MISSING} not installed")

    def test_missingSkipsWhenZero(self) -> None:
        """
        C{SMTPHOOKS_REQUIRE_TOOLS=0} is the same as unset.
        """
        self.setEnv(REQUIRE_TOOLS_ENV, "0")
        self.assertRaises(SkipTest, require_tool, _MISSING)

    def test_missingFailsWhenRequired(self) -> None:
        """
        With C{SMTPHOOKS_REQUIRE_TOOLS=1}, a missing program fails the test instead of
        skipping it, and the message names the program and the variable.
        """
        self.setEnv(REQUIRE_TOOLS_ENV, "1")
        error = self.assertRaises(AssertionError, require_tool, _MISSING)
        self.assertNotIsInstance(error, SkipTest)
        self.assertIn(_MISSING, str(error))
        self.assertIn(REQUIRE_TOOLS_ENV, str(error))
