"""
Helpers shared by the test suite: finding external programs and running them
from a trial test without blocking the reactor.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest

__all__ = [
    "REQUIRE_TOOLS_ENV",
    "ProcessTimeout",
    "require_tool",
    "run_process",
    "tools_required",
]

#: Environment variable that turns a missing external program from a skip into a failure.
REQUIRE_TOOLS_ENV = "SMTPHOOKS_REQUIRE_TOOLS"

# Directories searched after PATH.  Debian installs Postfix's smtp-source and smtp-sink in
# /usr/sbin, which is not on an ordinary user's PATH, and some packagings keep them with
# the other Postfix daemons.
_EXTRA_DIRS: tuple[str, ...] = (
    "/usr/local/sbin",
    "/usr/sbin",
    "/sbin",
    "/usr/lib/postfix/sbin",
    "/usr/libexec/postfix",
)


def tools_required() -> bool:
    """
    Say whether missing external programs must fail the tests rather than skip them.

    @return: C{True} when C{SMTPHOOKS_REQUIRE_TOOLS} is set to C{1} (or C{true}/C{yes}).
    """
    return os.environ.get(REQUIRE_TOOLS_ENV, "").strip().lower() in {"1", "true", "yes"}


def require_tool(name: str) -> str:
    """
    Find an external program that a test needs.

    The program is looked up on C{PATH}, then in the system directories where Debian puts
    administrative and Postfix programs (C{/usr/sbin}, C{/usr/lib/postfix/sbin}, ...).

    @param name: the program's file name, such as C{"swaks"} or C{"smtp-source"}.
    @return: the absolute path of the program.
    @raise SkipTest: when the program is not installed.
    @raise AssertionError: instead of L{SkipTest} when C{SMTPHOOKS_REQUIRE_TOOLS=1}, so
        that a machine that is meant to run every test cannot silently skip some.
    """
    found = shutil.which(name)
    if found is None:
        for directory in _EXTRA_DIRS:
            candidate = os.path.join(directory, name)
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                found = candidate
                break
    if found is not None:
        return os.path.abspath(found)
    searched = os.pathsep.join([os.environ.get("PATH", ""), *_EXTRA_DIRS])
    if tools_required():
        raise AssertionError(
            f"{name} is required ({REQUIRE_TOOLS_ENV}=1) but not installed; "
            f"searched {searched}"
        )
    raise SkipTest(f"{name} not installed")


class ProcessTimeout(Exception):
    """
    A process started by L{run_process} ran past its timeout and was killed.

    @ivar argv: the command line.
    @ivar timeout: the timeout in seconds.
    @ivar stdout: what the process wrote to its standard output before it was killed.
    @ivar stderr: what the process wrote to its standard error before it was killed.
    """

    def __init__(self, argv: Sequence[str], timeout: float, stdout: bytes, stderr: bytes):
        super().__init__(f"{list(argv)!r} still running after {timeout} seconds; killed")
        self.argv = list(argv)
        self.timeout = timeout
        self.stdout = stdout
        self.stderr = stderr


class _Collector(ProcessProtocol):
    """
    Feed a process its standard input, collect its output, and report how it ended.
    """

    def __init__(self, stdin: bytes, finished: Deferred[tuple[int, bytes, bytes]]):
        self._stdin = stdin
        self._finished = finished
        self._stdout: list[bytes] = []
        self._stderr: list[bytes] = []
        self.timedOut: ProcessTimeout | None = None
        self.timer: IDelayedCall | None = None

    @property
    def stdout(self) -> bytes:
        return b"".join(self._stdout)

    @property
    def stderr(self) -> bytes:
        return b"".join(self._stderr)

    def connectionMade(self) -> None:
        assert self.transport is not None
        if self._stdin:
            self.transport.write(self._stdin)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self._stdout.append(data)

    def errReceived(self, data: bytes) -> None:
        self._stderr.append(data)

    def kill(self) -> None:
        """
        Kill the process and close our ends of its pipes, so that L{processEnded} comes
        even when a child of the process still holds them open.
        """
        transport = self.transport
        if transport is None:
            return
        try:
            transport.signalProcess("KILL")
        except ProcessExitedAlready:
            pass
        transport.loseConnection()

    def processEnded(self, reason: Failure) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        if self._finished.called:
            # Cancelled by the caller: nothing more to report.
            return
        if self.timedOut is not None:
            self.timedOut.stdout = self.stdout
            self.timedOut.stderr = self.stderr
            self._finished.errback(self.timedOut)
            return
        value = reason.value
        if isinstance(value, ProcessDone):
            code = 0
        elif isinstance(value, ProcessTerminated):
            if value.exitCode is not None:
                code = value.exitCode
            else:
                # Like subprocess: a process killed by signal N exits with -N.
                code = -(value.signal or 0)
        else:
            self._finished.errback(reason)
            return
        self._finished.callback((code, self.stdout, self.stderr))


def run_process(
    argv: Sequence[str],
    stdin: bytes = b"",
    timeout: float = 30,
    env: Mapping[str, str] | None = None,
    *,
    path: str | None = None,
    reactor: Any = None,
    clock: Any = None,
) -> Deferred[tuple[int, bytes, bytes]]:
    """
    Run a program to completion without blocking the reactor.

    @param argv: the command line; C{argv[0]} is looked up on C{PATH} when it is not a path.
    @param stdin: bytes written to the program's standard input, which is then closed.
    @param timeout: seconds after which the program is killed (C{SIGKILL}).
    @param env: the program's environment; by default, a copy of this process's.
    @param path: the working directory of the program; by default, the current one.
    @param reactor: the L{IReactorProcess} to spawn with; by default, the global reactor.
    @param clock: the L{IReactorTime} that measures the timeout; by default, C{reactor}.
    @return: a L{Deferred} that fires with C{(exit code, stdout, stderr)} once the program
        has exited and its output is closed; the exit code is C{-N} when it was killed by
        signal C{N}.  It fails with L{ProcessTimeout} when the timeout killed the program
        (after the program is gone, so no process outlives the test), and cancelling it
        kills the program.
    """
    if reactor is None:
        from twisted.internet import reactor as globalReactor

        reactor = globalReactor
    if clock is None:
        clock = reactor
    args = [os.fsdecode(arg) for arg in argv]
    if not args:
        raise ValueError("run_process needs a non-empty argv")
    executable = args[0]
    if os.sep not in executable:
        resolved = shutil.which(executable)
        if resolved is None:
            raise FileNotFoundError(f"{executable}: not found on PATH")
        executable = resolved
    environment = dict(os.environ if env is None else env)

    def cancel(d: Deferred[tuple[int, bytes, bytes]]) -> None:
        collector.kill()

    finished: Deferred[tuple[int, bytes, bytes]] = Deferred(cancel)
    collector = _Collector(stdin, finished)

    def onTimeout() -> None:
        collector.timedOut = ProcessTimeout(args, timeout, collector.stdout, collector.stderr)
        collector.kill()

    reactor.spawnProcess(collector, executable, args, env=environment, path=path)
    collector.timer = clock.callLater(timeout, onTimeout)
    return finished
