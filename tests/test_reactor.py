"""
L{smtphooks.reactor}: the poll step of L{LeanEPollReactor} with a fake
poller; then, since trial runs on its own reactor, the reactor serving real
loopback connections in a child process (C{tests/reactor_child.py}) and
under C{twistd} (the C{smtphooks-epoll} plugin, the default of C{twistd
smtphooks}, and its workers).
"""

from __future__ import annotations

import errno
import json
import os
import re
import smtplib
import socket
import sys
from typing import Any

from twisted.application.reactors import getReactorTypes
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.error import ReactorAlreadyInstalledError
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from smtphooks import reactor as lean
from smtphooks._workers import WorkersService, reactor_name
from smtphooks.reactor import LeanEPollReactor
from smtphooks.tap import Options

from .support import run_process
from .test_twistd import (
    LISTENING,
    SERVER_NAME,
    STARTUP,
    ServerProcess,
    TwistdTestCase,
    _environment,
    _python,
    _reactor,
    free_port,
    twistd_argv,
)
from .test_workers import PoolReactor
from .wire import PATIENCE, with_smtp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEAN = "smtphooks.reactor.LeanEPollReactor"
STOCK = "twisted.internet.epollreactor.EPollReactor"


# -- the poll step, in memory -------------------------------------------------


class FakePoller:
    """
    An C{epoll} that gives prepared answers and records its calls.
    """

    def __init__(self, *answers: list[tuple[int, int]] | BaseException) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[float, int]] = []

    def poll(self, timeout: float, maxevents: int) -> list[tuple[int, int]]:
        self.calls.append((timeout, maxevents))
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


class Descriptor:
    """
    A selectable with a log prefix.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def logPrefix(self) -> str:
        return self.name


def bare_reactor(poller: FakePoller, selectables: dict[int, Any]) -> tuple[Any, list[Any]]:
    """
    A L{LeanEPollReactor} that owns no descriptor (not initialised), with a
    fake poller, and a C{_doReadOrWrite} that records what it is given.

    @return: the reactor and the list of recorded calls.
    """
    reactor: Any = LeanEPollReactor.__new__(LeanEPollReactor)
    reactor._poller = poller
    reactor._selectables = selectables
    handled: list[Any] = []
    reactor._doReadOrWrite = lambda selectable, fd, event: handled.append((selectable, fd, event))
    return reactor, handled


class PollTests(SynchronousTestCase):
    """
    L{LeanEPollReactor.doPoll} waits as Twisted's does and hands each ready
    descriptor to C{_doReadOrWrite} directly.
    """

    def test_dispatch(self) -> None:
        """
        Each ready descriptor goes to C{_doReadOrWrite} with its descriptor
        number and events, in the order epoll gave them; C{doIteration} is
        the same step.
        """
        a, b = Descriptor("a"), Descriptor("b")
        poller = FakePoller([(5, 1), (4, 4)])
        reactor, handled = bare_reactor(poller, {4: a, 5: b})
        reactor.doPoll(0.25)
        self.assertEqual(handled, [(b, 5, 1), (a, 4, 4)])
        self.assertEqual(poller.calls, [(0.25, 2)])
        self.assertIs(LeanEPollReactor.doIteration, LeanEPollReactor.doPoll)

    def test_wait_and_limit(self) -> None:
        """
        No timeout waits without limit (-1); the number of events asked for
        is the number of watched descriptors, and at least 1.
        """
        poller = FakePoller([], [])
        reactor, _ = bare_reactor(poller, {})
        reactor.doPoll(None)
        reactor._selectables = {n: Descriptor(str(n)) for n in range(3, 10)}
        reactor.doPoll(0)
        self.assertEqual(poller.calls, [(-1, 1), (0, 7)])

    def test_removed_during_batch(self) -> None:
        """
        A descriptor that an earlier one in the same batch removed is not
        handled.
        """
        a, b = Descriptor("a"), Descriptor("b")
        selectables: dict[int, Any] = {4: a, 5: b}
        reactor, handled = bare_reactor(FakePoller([(4, 1), (5, 1)]), selectables)

        def handle(selectable: Any, fd: int, event: int) -> None:
            handled.append(selectable)
            selectables.pop(5, None)

        reactor._doReadOrWrite = handle
        reactor.doPoll(0)
        self.assertEqual(handled, [a])

    def test_signal(self) -> None:
        """
        A wait cut short by a signal returns, handling nothing; any other
        error of epoll is raised.
        """
        broken = OSError(errno.EBADF, "Bad file descriptor")
        poller = FakePoller(InterruptedError(errno.EINTR, "Interrupted"), broken)
        reactor, handled = bare_reactor(poller, {4: Descriptor("a")})
        reactor.doPoll(1)
        self.assertEqual(handled, [])
        self.assertIs(self.assertRaises(OSError, reactor.doPoll, 1), broken)

    def test_escaped_error(self) -> None:
        """
        An error that escapes C{_doReadOrWrite} (raised by a descriptor's
        C{connectionLost}, say) is logged with the descriptor's log prefix
        as the system, and the other descriptors are still handled.
        """
        a, b = Descriptor("BoomProtocol,3,127.0.0.1"), Descriptor("b")
        reactor, handled = bare_reactor(FakePoller([(4, 1), (5, 1)]), {4: a, 5: b})

        def handle(selectable: Any, fd: int, event: int) -> None:
            if selectable is a:
                raise RuntimeError("lost badly")
            handled.append(selectable)

        reactor._doReadOrWrite = handle
        with capturedLogs() as events:
            reactor.doPoll(0)
        self.assertEqual(handled, [b])
        (event,) = events
        self.assertEqual(event["log_level"], LogLevel.critical)
        self.assertEqual(event["log_system"], "BoomProtocol,3,127.0.0.1")
        self.assertIsInstance(event["log_failure"].value, RuntimeError)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_keyboard_interrupt(self) -> None:
        """
        C{KeyboardInterrupt} is not swallowed (Twisted's C{callWithLogger}
        does not either).
        """
        reactor, _ = bare_reactor(FakePoller([(4, 1)]), {4: Descriptor("a")})

        def handle(selectable: Any, fd: int, event: int) -> None:
            raise KeyboardInterrupt()

        reactor._doReadOrWrite = handle
        self.assertRaises(KeyboardInterrupt, reactor.doPoll, 0)


class InstallTests(SynchronousTestCase):
    """
    L{install}, the plugin, and how C{twistd} names reactors for workers.
    """

    def test_already_installed(self) -> None:
        """
        With a reactor installed (trial's), L{install} refuses, naming it.
        """
        error = self.assertRaises(ReactorAlreadyInstalledError, lean.install)
        installed = sys.modules["twisted.internet.reactor"]
        self.assertIn(type(installed).__qualname__, str(error))

    def test_plugin(self) -> None:
        """
        A reactor plugin named C{smtphooks-epoll} installs this module's
        reactor.
        """
        (plugin,) = [r for r in getReactorTypes() if r.shortName == "smtphooks-epoll"]
        self.assertEqual(plugin.moduleName, "smtphooks.reactor")  # type: ignore[attr-defined]

    def test_reactor_name(self) -> None:
        """
        Workers are told the master's reactor by its C{--reactor} name;
        a reactor no plugin installs has none.
        """
        lean_reactor = LeanEPollReactor.__new__(LeanEPollReactor)
        self.assertEqual(reactor_name(lean_reactor), "smtphooks-epoll")
        self.assertEqual(reactor_name(EPollReactor.__new__(EPollReactor)), "epoll")
        self.assertIsNone(reactor_name(Clock()))

    def worker_reactors(self, reactor: PoolReactor) -> list[Any]:
        """
        Start a L{WorkersService} of 2 on C{reactor}.

        @return: the C{reactor} of each worker's configuration.
        """
        options = Options(reactor)
        options.parseOptions(["--maildir", self.mktemp(), "--workers", "2"])
        service = WorkersService(options)
        service.ports = []
        service._listeners = [([17], "AF_INET", "tcp:2525:interface=127.0.0.1")]
        with capturedLogs():
            service.startService()
        names = []
        for spawned in reactor.spawned:
            ((_, data),) = spawned["protocol"].transport.written
            names.append(json.loads(data)["reactor"])
        return names

    def test_worker_config(self) -> None:
        """
        Each worker's configuration names the master's reactor.
        """

        class PollLike(PoolReactor):
            pass

        PollLike.__module__ = "twisted.internet.pollreactor"
        self.assertEqual(self.worker_reactors(PollLike()), ["poll", "poll"])

    def test_worker_config_unknown(self) -> None:
        """
        For a master reactor that no plugin installs, the configuration
        names none: the workers then take C{twistd smtphooks}'s default.
        """
        self.assertEqual(self.worker_reactors(PoolReactor()), [None, None])


# -- real sockets, in a child process -----------------------------------------


class ChildTests(TwistdTestCase):
    """
    A server on L{LeanEPollReactor} in a child process, driven over
    loopback; the module and the plugin as programs import them.
    """

    async def start_child(self) -> tuple[ServerProcess, int, int]:
        """
        Start C{tests/reactor_child.py} and wait until it listens.

        @return: the process, its SMTP port and its failing port.
        """
        process = ServerProcess()
        argv = [_python(), "-m", "tests.reactor_child"]
        _reactor().spawnProcess(
            process, argv[0], argv, env=_environment(self.workdir), path=self.workdir
        )
        self.addCleanup(self._stop, process)
        await process.wait_for(b"READY\n")
        smtp = re.search(rb"^SMTP (\d+)$", process.output, re.MULTILINE)
        boom = re.search(rb"^BOOM (\d+)$", process.output, re.MULTILINE)
        assert smtp is not None and boom is not None, process.log()
        self.assertIn(f"REACTOR {LEAN}\n".encode(), process.output)
        return process, int(smtp.group(1)), int(boom.group(1))

    async def send(self, process: ServerProcess, port: int, body: bytes) -> None:
        """
        Send a message with smtplib; the child must have received it whole.
        """

        def use(smtp: smtplib.SMTP) -> Any:
            return smtp.sendmail("a@example.org", ["b@example.com"], body)

        self.assertEqual(await with_smtp(port, use), {})
        await process.wait_for(b"MESSAGE " + body.hex().encode())

    async def test_smtp_session(self) -> None:
        """
        smtplib delivers two messages, byte for byte, over one connection
        each; nothing is logged as an error.
        """
        process, port, _ = await self.start_child()
        await self.send(process, port, b"Subject: one\r\n\r\n.dot\r\nbody\r\n")
        await self.send(process, port, b"Subject: two\r\n\r\n" + b"x" * 100_000 + b"\r\n")
        self.assertNotIn(b"Traceback", process.output)

    async def test_read_raises(self) -> None:
        """
        A protocol that raises in C{dataReceived} (so in the connection's
        C{doRead}): the error is logged with its traceback, the connection
        is closed, and the reactor keeps serving.  As documented, the
        legacy log event has no per-connection system.
        """
        process, port, boom = await self.start_child()

        def provoke() -> bytes:
            with socket.create_connection(("127.0.0.1", boom), timeout=PATIENCE) as s:
                s.sendall(b"raise\n")
                return s.recv(100)

        self.assertEqual(await deferToThread(provoke), b"")
        await process.wait_for(b"RuntimeError: boom in dataReceived")
        self.assertRegex(process.log(), r"\[-\] Unhandled Error\n")
        await self.send(process, port, b"Subject: after\r\n\r\nstill here\r\n")

    async def test_connection_lost_raises(self) -> None:
        """
        A protocol that raises in C{connectionLost}, outside what
        C{_doReadOrWrite} catches: the error is logged with the connection's
        prefix as the system, and the reactor keeps serving.
        """
        process, port, boom = await self.start_child()

        def provoke() -> bytes:
            with socket.create_connection(("127.0.0.1", boom), timeout=PATIENCE) as s:
                s.sendall(b"lost\n")
                return s.recv(100)

        self.assertEqual(await deferToThread(provoke), b"armed\n")
        await process.wait_for(b"RuntimeError: boom in connectionLost")
        self.assertRegex(
            process.log(), r"\[Boom,\d+,127\.0\.0\.1\] unhandled error while handling <"
        )
        await self.send(process, port, b"Subject: after\r\n\r\nstill here\r\n")

    async def test_documented_install(self) -> None:
        """
        The operations guide's recipe for programs installs the lean
        reactor as the global one.
        """
        with open(os.path.join(ROOT, "docs", "operations.md"), encoding="utf-8") as f:
            guide = f.read()
        recipe = r"```python\n(from smtphooks\.reactor import install\n.*?)```"
        match = re.search(recipe, guide, re.S)
        assert match is not None, "no smtphooks.reactor recipe in docs/operations.md"
        code = match.group(1) + "print(type(reactor).__qualname__)\n"
        status, out, err = await run_process(
            [_python(), "-c", code], env=_environment(self.workdir), path=self.workdir
        )
        self.assertEqual((status, out), (0, b"LeanEPollReactor\n"), err.decode())

    async def test_plugin_is_lazy(self) -> None:
        """
        Importing the reactor plugin (as twistd does to list plugins)
        imports neither a reactor nor smtphooks.
        """
        code = (
            "import sys\n"
            "from twisted.plugins import smtphooks_reactors as p\n"
            "assert 'twisted.internet.reactor' not in sys.modules, 'reactor'\n"
            "assert not [m for m in sys.modules if m.startswith('smtphooks')], 'package'\n"
            "print(p.smtphooks_epoll.shortName)\n"
        )
        status, out, err = await run_process(
            [_python(), "-c", code], env=_environment(self.workdir), path=self.workdir
        )
        self.assertEqual((status, out), (0, b"smtphooks-epoll\n"), err.decode())

    async def test_without_epoll(self) -> None:
        """
        Where C{select.epoll} does not exist, importing the module fails
        with an L{ImportError} that says why.
        """
        code = "import select; del select.epoll; import smtphooks.reactor"
        status, out, err = await run_process(
            [_python(), "-c", code], env=_environment(self.workdir), path=self.workdir
        )
        self.assertEqual(status, 1, out + err)
        last = err.decode().strip().splitlines()[-1]
        self.assertIn("ImportError: smtphooks.reactor needs epoll(7)", last)


# -- twistd --------------------------------------------------------------------


class TwistdReactorTests(TwistdTestCase):
    """
    The reactor under C{twistd}: by name, by default, and in workers.
    """

    async def start_with(
        self, runner: list[str], *args: str, until: bytes = LISTENING, code: str = ""
    ) -> tuple[ServerProcess, int]:
        """
        Start C{twistd -n [runner options] smtphooks [args]} on a free port
        and wait for C{until}.

        @param code: Python run before twistd in the same process.
        """
        port = free_port()
        argv = twistd_argv(
            "-n", "--pidfile=", *runner, "smtphooks",
            "--listen", f"tcp:{port}:interface=127.0.0.1",
            "--name", SERVER_NAME, "--disable-reverse-lookup", *args,
        )  # fmt: skip
        if code:
            argv[2] = code + "; " + argv[2]
        process = ServerProcess()
        _reactor().spawnProcess(
            process, argv[0], argv, env=_environment(self.workdir), path=self.workdir
        )
        self.addCleanup(self._stop, process)
        await process.wait_for(until)
        return process, port

    def reactor_class(self, process: ServerProcess) -> str:
        """
        The reactor twistd says it runs.
        """
        match = re.search(r"reactor class: (\S+)\.\n", process.log())
        assert match is not None, process.log()
        return match.group(1)

    async def deliver(self, process: ServerProcess, port: int) -> None:
        """
        One message with smtplib lands in the Maildir; then stop.
        """

        def send(smtp: smtplib.SMTP) -> Any:
            return smtp.sendmail("a@example.org", ["b@example.com"], b"Subject: r\r\n\r\nr\r\n")

        self.assertEqual(await with_smtp(port, send), {})
        self.assertEqual(len(self.delivered()), 1)
        await self.stop(process)

    async def test_help_reactors(self) -> None:
        """
        C{twistd --help-reactors} lists C{smtphooks-epoll}.
        """
        code, out, err = await run_process(
            twistd_argv("--help-reactors"), env=_environment(self.workdir), path=self.workdir
        )
        self.assertEqual(code, 0, err)
        self.assertRegex(out.decode(), r"\n\s+smtphooks-epoll\s+epoll\(7\) reactor without")

    async def test_by_name(self) -> None:
        """
        C{twistd --reactor smtphooks-epoll smtphooks} runs on it and serves.
        """
        process, port = await self.start_with(["--reactor", "smtphooks-epoll"])
        self.assertEqual(self.reactor_class(process), LEAN)
        await self.deliver(process, port)

    async def test_default(self) -> None:
        """
        Without C{--reactor}, C{twistd smtphooks} runs on it (Linux) and
        serves.
        """
        process, port = await self.start_with([])
        self.assertEqual(self.reactor_class(process), LEAN)
        await self.deliver(process, port)

    async def test_given_reactor_wins(self) -> None:
        """
        C{twistd --reactor epoll smtphooks} runs on Twisted's own.
        """
        process, port = await self.start_with(["--reactor", "epoll"])
        self.assertEqual(self.reactor_class(process), STOCK)
        await self.deliver(process, port)

    async def test_default_without_epoll(self) -> None:
        """
        Where there is no epoll, C{twistd smtphooks} runs on Twisted's
        default reactor.
        """
        process, port = await self.start_with(
            [], code="import select; del select.epoll, select.EPOLLIN"
        )
        self.assertEqual(self.reactor_class(process), "twisted.internet.pollreactor.PollReactor")
        await self.deliver(process, port)

    async def test_workers(self) -> None:
        """
        With C{--workers}, the workers run on the master's reactor: the lean
        one by default, the one C{--reactor} names otherwise.
        """
        for runner, expected in [
            ([], LEAN),
            (["--reactor", "poll"], "twisted.internet.pollreactor.PollReactor"),
        ]:
            process, port = await self.start_with(
                runner, "--workers", "2", until=b"] worker 2 ready"
            )
            await process.wait_for(b"] worker 1 ready", STARTUP)
            self.assertEqual(self.reactor_class(process), expected)
            ready = re.findall(r"\] worker \d ready \(reactor (\S+)\)", process.log())
            self.assertEqual(ready, [expected, expected], process.log())
            process.signal("TERM")
            await process.ended.addTimeout(STARTUP, _reactor())
